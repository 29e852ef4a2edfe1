package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshproxy/identity"
)

// idRunCmd runs the binary's dispatcher and returns exit code and outputs.
func idRunCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := dispatch(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCASubcommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if code, _, errs := idRunCmd("ca", "init", "--dir", dir, "--trust-domain", "mesh.test"); code != 0 {
		t.Fatalf("ca init = %d, %q", code, errs)
	}
	code, _, errs := idRunCmd("ca", "init", "--dir", dir)
	if code != 1 || !strings.Contains(errs, "--force") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("second ca init = %d, %q; want 1 and one line naming --force", code, errs)
	}
	if code, _, errs := idRunCmd("ca", "init", "--dir", dir, "--trust-domain", "mesh.test", "--force"); code != 0 {
		t.Fatalf("ca init --force = %d, %q", code, errs)
	}
	ca, err := identity.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}

	id := "spiffe://mesh.test/ns/default/sa/web"
	code, out, errs := idRunCmd("ca", "token", "--dir", dir, "--identity", id, "--ttl", "1h")
	if code != 0 {
		t.Fatalf("ca token = %d, %q", code, errs)
	}
	tok := strings.TrimSpace(out)
	if err := ca.TokenAuthenticator().Authenticate(context.Background(), tok, identity.MustParseID(id)); err != nil {
		t.Errorf("printed token refused: %v", err)
	}

	prefix := filepath.Join(t.TempDir(), "web")
	if code, _, errs := idRunCmd("ca", "issue", "--dir", dir, "--identity", id, "--out", prefix, "--ttl", "2h"); code != 0 {
		t.Fatalf("ca issue = %d, %q", code, errs)
	}
	fi, err := os.Stat(prefix + ".key")
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	chain, err := identity.LoadCertsFile(prefix + ".crt")
	if err != nil || len(chain) != 2 {
		t.Fatalf("chain file: %d certs, %v; want leaf + issuer", len(chain), err)
	}
	if got, _ := identity.IDFromCert(chain[0]); got.String() != id {
		t.Errorf("issued for %v; want %s", got, id)
	}
	if d := time.Until(chain[0].NotAfter); d > 2*time.Hour || d < 2*time.Hour-time.Minute {
		t.Errorf("lifetime %v; want 2h", d)
	}

	bad := []struct {
		name string
		args []string
		code int
	}{
		{"no subcommand", []string{"ca"}, 2},
		{"unknown subcommand", []string{"ca", "frob"}, 2},
		{"unknown flag", []string{"ca", "init", "--bogus"}, 2},
		{"missing dir", []string{"ca", "init"}, 2},
		{"stray argument", []string{"ca", "token", "--dir", dir, "--identity", id, "extra"}, 2},
		{"bad identity", []string{"ca", "token", "--dir", dir, "--identity", "web"}, 2},
		{"bad ttl", []string{"ca", "token", "--dir", dir, "--identity", id, "--ttl", "soon"}, 2},
		{"bad trust domain", []string{"ca", "init", "--dir", dir, "--trust-domain", "Bad Domain"}, 2},
		{"other trust domain", []string{"ca", "token", "--dir", dir, "--identity", "spiffe://other.test/ns/a/sa/b"}, 1},
		{"no CA", []string{"ca", "issue", "--dir", t.TempDir(), "--identity", id, "--out", prefix}, 1},
		{"missing out", []string{"ca", "issue", "--dir", dir, "--identity", id}, 2},
		{"identity no subcommand", []string{"identity"}, 2},
		{"identity serve missing listen", []string{"identity", "serve", "--dir", dir}, 2},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := idRunCmd(tt.args...)
			if code != tt.code {
				t.Fatalf("exit = %d; want %d (stderr %q)", code, tt.code, errs)
			}
			if out != "" {
				t.Errorf("stdout = %q; want nothing", out)
			}
			if tt.code == 2 && !strings.HasSuffix(tt.name, "no subcommand") && strings.Count(errs, "\n") != 1 {
				t.Errorf("stderr = %q; want one line", errs)
			}
		})
	}
}

func TestIdentityServe(t *testing.T) {
	dir := t.TempDir()
	if code, _, errs := idRunCmd("ca", "init", "--dir", dir); code != 0 {
		t.Fatalf("ca init: %q", errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	exit := make(chan int, 1)
	var out, errb bytes.Buffer
	go func() {
		exit <- identityServe(ctx, []string{"--dir", dir, "--listen", "127.0.0.1:0"}, &out, &errb, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case code := <-exit:
		t.Fatalf("serve exited %d early: %s", code, errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("serve not ready in 10s")
	}

	ca, err := identity.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := identity.MustParseID("spiffe://cluster.local/ns/default/sa/web")
	tok, _ := ca.IssueToken(id, time.Hour)
	anchors, err := identity.LoadCertsFile(filepath.Join(dir, identity.AnchorFile))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := identity.Obtain(context.Background(), &identity.Client{Addr: addr, Anchors: anchors, Token: tok}, id, 0, nil)
	if err != nil {
		t.Fatalf("fetching a certificate from the served service: %v", err)
	}
	if got, _ := identity.IDFromCert(cert.Leaf); got != id {
		t.Errorf("got %v; want %v", got, id)
	}

	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("serve exit = %d; want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s of cancel")
	}
}
