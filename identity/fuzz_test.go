package identity

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

// FuzzParseID: any string either fails or parses to an ID that prints
// back to itself and validates.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/web",
		"spiffe://example.org/ns/a/sa/b",
		"spiffe://cluster.local/ns//sa/web",
		"spiffe://Cluster.local/ns/a/sa/b",
		"spiffe://cluster.local:443/ns/a/sa/b",
		"http://cluster.local/ns/a/sa/b",
		"spiffe://cluster.local/ns/a/sa/b?x=1",
		"spiffe://cluster.local/ns/%61/sa/b",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("ParseID(%q) = %v, which does not validate: %v", s, id, err)
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q).String() = %q", s, id.String())
		}
	})
}

// FuzzToken: arbitrary tokens never authenticate (the fuzzer cannot forge
// an ECDSA signature), never panic, and a real token with any byte changed
// is refused.
func FuzzToken(f *testing.F) {
	ca, err := NewCA("cluster.local")
	if err != nil {
		f.Fatal(err)
	}
	want := MustParseID("spiffe://cluster.local/ns/demo/sa/web")
	good, err := ca.IssueToken(want, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	auth := ca.TokenAuthenticator()
	f.Add(good)
	f.Add("mpt1..")
	f.Add("mpt1.e30.AAAA")
	f.Add(strings.Replace(good, "mpt1.", "mpt2.", 1))
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		TokenIdentity(tok) // must not panic
		err := auth.Authenticate(context.Background(), tok, want)
		if err == nil && tok != good {
			t.Fatalf("a token that is not the issued one authenticated: %q", tok)
		}
	})
}

// FuzzParseCSR: whatever bytes arrive as a CSR, parsing and identity
// extraction fail cleanly or yield a valid ID; Sign refuses any CSR whose
// identity is not the one asked for.
func FuzzParseCSR(f *testing.F) {
	ca, err := NewCA("cluster.local")
	if err != nil {
		f.Fatal(err)
	}
	id := MustParseID("spiffe://cluster.local/ns/demo/sa/web")
	_, der, err := NewCSR(id)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte("not a csr"))
	other := MustParseID("spiffe://cluster.local/ns/demo/sa/other")
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := x509.ParseCertificateRequest(data)
		if err != nil {
			return
		}
		if got, err := IDFromCSR(csr); err == nil {
			if err := got.Validate(); err != nil {
				t.Fatalf("IDFromCSR gave an invalid ID %v: %v", got, err)
			}
		}
		if _, err := ca.Sign(csr, other, time.Hour); err == nil {
			if got, _ := IDFromCSR(csr); got != other {
				t.Fatalf("Sign issued %v for a CSR naming %v", other, got)
			}
		}
	})
}
