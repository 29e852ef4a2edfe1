package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"meshproxy/identity"
)

func init() {
	register("identity", command{
		summary: "run the identity service: serve --dir D --listen ADDR",
		run:     runIdentity,
	})
}

const identityUsage = `usage: meshproxy identity serve --dir D --listen ADDR [--max-ttl 24h]
           [--k8s-jwks FILE --k8s-issuer URL [--k8s-audience meshproxy]]

  serve  sign certificate requests for proxies holding a join token (or a
         still-valid certificate) with the CA in D, over TLS on ADDR, until
         SIGTERM or SIGINT; with --k8s-jwks, Kubernetes ServiceAccount
         tokens signed by the cluster's issuer keys are accepted as well
`

// runIdentity dispatches "meshproxy identity <sub>".
func runIdentity(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, identityUsage)
		return 2
	}
	switch args[0] {
	case "serve":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return identityServe(ctx, args[1:], stdout, stderr, nil)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, identityUsage)
		return 0
	}
	fmt.Fprintf(stderr, "meshproxy identity: unknown subcommand %q (want serve)\n", args[0])
	return 2
}

// identityServe runs the identity service until ctx is done. If ready is
// not nil it receives the listening address once the service accepts.
func identityServe(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- string) int {
	fs := flag.NewFlagSet("identity serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the CA (made by \"meshproxy ca init\")")
	listen := fs.String("listen", "", "address to serve on, e.g. 0.0.0.0:8083")
	maxTTL := fs.Duration("max-ttl", identity.DefaultLeafTTL, "longest certificate lifetime to grant")
	k8sJWKS := fs.String("k8s-jwks", "", "JWKS file of the cluster's ServiceAccount issuer keys (kubectl get --raw /openid/v1/jwks); accept ServiceAccount tokens signed by them, re-reading the file when it changes")
	k8sIssuer := fs.String("k8s-issuer", "", "the cluster's ServiceAccount token issuer, the \"issuer\" of kubectl get --raw /.well-known/openid-configuration (required with --k8s-jwks)")
	k8sAudience := fs.String("k8s-audience", identity.DefaultK8sAudience, "audience ServiceAccount tokens must carry")
	if c := idParseFlags(fs, args, stdout, stderr); c >= 0 {
		return c
	}
	if c := idRequire(fs, stderr, "dir", "listen"); c >= 0 {
		return c
	}
	if *maxTTL <= 0 {
		fmt.Fprintln(stderr, "meshproxy identity serve: --max-ttl must be positive, e.g. 24h")
		return 2
	}
	if c := checkK8sFlags(fs, stderr); c >= 0 {
		return c
	}
	ca, err := identity.LoadCA(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy identity serve: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var auth identity.Authenticator // nil: join tokens only
	if *k8sJWKS != "" {
		// Read once now so that a wrong path or a bad file stops the start.
		keys, err := identity.LoadJWKS(*k8sJWKS)
		if err != nil {
			fmt.Fprintf(stderr, "meshproxy identity serve: --k8s-jwks: %v\n", err)
			return 1
		}
		k8s := &identity.K8sTokenAuthenticator{
			Issuer: *k8sIssuer, Audience: *k8sAudience, KeysFile: *k8sJWKS,
			TrustDomain: ca.TrustDomain(), Log: log,
		}
		auth = identity.AnyAuthenticator(ca.TokenAuthenticator(), k8s)
		log.Info("accepting Kubernetes ServiceAccount tokens", "issuer", *k8sIssuer, "audience", *k8sAudience,
			"jwks", *k8sJWKS, "kids", strings.Join(keys.KeyIDs(), ","))
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy identity serve: %v\n", err)
		return 1
	}
	svc := identity.NewService(ca, auth, log)
	svc.MaxTTL = *maxTTL
	done := make(chan error, 1)
	go func() { done <- svc.Serve(l) }()
	if ready != nil {
		ready <- l.Addr().String()
	}
	select {
	case <-ctx.Done():
		log.Info("identity service stopping")
		svc.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		return 0
	case err := <-done:
		if err != nil {
			fmt.Fprintf(stderr, "meshproxy identity serve: %v\n", err)
			return 1
		}
		return 0
	}
}

// checkK8sFlags checks that the --k8s-* flags of "identity serve" go
// together: --k8s-jwks and --k8s-issuer both or neither, --k8s-audience
// only with them. It prints one line and returns 2 if not, else -1.
func checkK8sFlags(fs *flag.FlagSet, stderr io.Writer) int {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	jwks, issuer := fs.Lookup("k8s-jwks").Value.String(), fs.Lookup("k8s-issuer").Value.String()
	fail := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "meshproxy identity serve: "+format+"\n", args...)
		return 2
	}
	switch {
	case jwks != "" && issuer == "":
		return fail("--k8s-issuer is required with --k8s-jwks: tokens are only trusted from the named issuer (see \"issuer\" in kubectl get --raw /.well-known/openid-configuration)")
	case jwks == "" && issuer != "":
		return fail("--k8s-issuer needs --k8s-jwks, the issuer's public keys (kubectl get --raw /openid/v1/jwks > jwks.json)")
	case jwks == "" && set["k8s-audience"]:
		return fail("--k8s-audience needs --k8s-jwks and --k8s-issuer (it applies to ServiceAccount tokens only)")
	case strings.TrimSpace(issuer) != issuer:
		return fail("--k8s-issuer %q has surrounding spaces; it must equal the tokens' iss claim exactly", issuer)
	case fs.Lookup("k8s-audience").Value.String() == "":
		return fail("--k8s-audience must not be empty (the injected proxies' tokens carry %q)", identity.DefaultK8sAudience)
	}
	return -1
}
