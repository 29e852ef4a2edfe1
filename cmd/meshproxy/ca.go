package main

import (
	"crypto/ecdsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"meshproxy/identity"
)

func init() {
	register("ca", command{
		summary: "manage the built-in CA: init, token, issue",
		run:     runCA,
	})
}

const caUsage = `usage: meshproxy ca <init|token|issue> [flags]

  init   --dir D [--trust-domain cluster.local] [--force]
         make a new CA in D (anchor.pem is the trust anchor bundle to hand out)
  token  --dir D --identity spiffe://TD/ns/NS/sa/SA [--ttl 24h]
         print a join token bound to that identity
  issue  --dir D --identity ID --out PREFIX [--ttl 24h]
         write PREFIX.crt (chain) and PREFIX.key (mode 0600) for offline use
`

// runCA dispatches "meshproxy ca <sub>".
func runCA(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, caUsage)
		return 2
	}
	switch args[0] {
	case "init":
		return caInit(args[1:], stdout, stderr)
	case "token":
		return caToken(args[1:], stdout, stderr)
	case "issue":
		return caIssue(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, caUsage)
		return 0
	}
	fmt.Fprintf(stderr, "meshproxy ca: unknown subcommand %q (want init, token or issue)\n", args[0])
	return 2
}

// idParseFlags parses args into fs, printing one clear line on error. It
// returns -1 to go on, or the exit code to return (0 after -h, 2 on bad
// flags or stray arguments).
func idParseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) int {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, "usage: meshproxy %s [flags]\n", fs.Name())
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy %s: %v (run \"meshproxy %s -h\" for the flags)\n", fs.Name(), err, fs.Name())
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshproxy %s: unexpected argument %q (all settings are flags)\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

// idRequire prints an error and returns 2 if any named flag is empty.
func idRequire(fs *flag.FlagSet, stderr io.Writer, names ...string) int {
	for _, n := range names {
		if fs.Lookup(n).Value.String() == "" {
			fmt.Fprintf(stderr, "meshproxy %s: --%s is required: %s\n", fs.Name(), n, fs.Lookup(n).Usage)
			return 2
		}
	}
	return -1
}

// idParseIdentity parses a --identity value, or prints why not.
func idParseIdentity(fs *flag.FlagSet, s string, stderr io.Writer) (identity.ID, bool) {
	id, err := identity.ParseID(s)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy %s: --identity: %v (want spiffe://<trust-domain>/ns/<namespace>/sa/<account>)\n", fs.Name(), err)
		return identity.ID{}, false
	}
	return id, true
}

func caInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ca init", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to write the CA files into")
	td := fs.String("trust-domain", identity.DefaultTrustDomain, "trust domain of the mesh")
	force := fs.Bool("force", false, "replace an existing CA in --dir (everything it issued stops being trusted)")
	if c := idParseFlags(fs, args, stdout, stderr); c >= 0 {
		return c
	}
	if c := idRequire(fs, stderr, "dir"); c >= 0 {
		return c
	}
	if err := identity.ValidateTrustDomain(*td); err != nil {
		fmt.Fprintf(stderr, "meshproxy ca init: --trust-domain: %v\n", err)
		return 2
	}
	ca, err := identity.InitCA(*dir, *td, *force)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy ca init: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "CA for trust domain %s written to %s\ntrust anchors to distribute: %s\n",
		ca.TrustDomain(), *dir, filepath.Join(*dir, identity.AnchorFile))
	return 0
}

func caToken(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ca token", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the CA (made by \"meshproxy ca init\")")
	idFlag := fs.String("identity", "", "SPIFFE ID the token is bound to, spiffe://<trust-domain>/ns/<namespace>/sa/<account>")
	ttl := fs.Duration("ttl", identity.DefaultTokenTTL, "how long the token stays valid")
	if c := idParseFlags(fs, args, stdout, stderr); c >= 0 {
		return c
	}
	if c := idRequire(fs, stderr, "dir", "identity"); c >= 0 {
		return c
	}
	id, ok := idParseIdentity(fs, *idFlag, stderr)
	if !ok {
		return 2
	}
	if *ttl <= 0 {
		fmt.Fprintln(stderr, "meshproxy ca token: --ttl must be positive, e.g. 24h")
		return 2
	}
	ca, err := identity.LoadCA(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy ca token: %v\n", err)
		return 1
	}
	tok, err := ca.IssueToken(id, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy ca token: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

func caIssue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ca issue", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the CA (made by \"meshproxy ca init\")")
	idFlag := fs.String("identity", "", "SPIFFE ID to issue for, spiffe://<trust-domain>/ns/<namespace>/sa/<account>")
	out := fs.String("out", "", "path prefix of the files to write: PREFIX.crt and PREFIX.key")
	ttl := fs.Duration("ttl", identity.DefaultLeafTTL, "lifetime of the certificate")
	if c := idParseFlags(fs, args, stdout, stderr); c >= 0 {
		return c
	}
	if c := idRequire(fs, stderr, "dir", "identity", "out"); c >= 0 {
		return c
	}
	id, ok := idParseIdentity(fs, *idFlag, stderr)
	if !ok {
		return 2
	}
	if *ttl <= 0 {
		fmt.Fprintln(stderr, "meshproxy ca issue: --ttl must be positive, e.g. 24h")
		return 2
	}
	ca, err := identity.LoadCA(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy ca issue: %v\n", err)
		return 1
	}
	cert, err := ca.Issue(id, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy ca issue: %v\n", err)
		return 1
	}
	key, err := identity.EncodeKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy ca issue: %v\n", err)
		return 1
	}
	chain := identity.EncodeCerts(cert.Leaf, ca.Issuer())
	// Key first: a .crt without its key is useless, the reverse is harmless.
	if err := identity.WriteFileAtomic(*out+".key", key, 0o600); err != nil {
		fmt.Fprintf(stderr, "meshproxy ca issue: %v\n", err)
		return 1
	}
	if err := identity.WriteFileAtomic(*out+".crt", chain, 0o644); err != nil {
		fmt.Fprintf(stderr, "meshproxy ca issue: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s valid until %s: wrote %s.crt and %s.key\n",
		id, cert.Leaf.NotAfter.UTC().Format(time.RFC3339), *out, *out)
	return 0
}
