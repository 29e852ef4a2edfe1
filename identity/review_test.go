package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRenewalWithoutTokenFile: once a proxy holds a valid certificate it
// renews with it; a join token file removed after joining (a spent
// bootstrap secret) must not stop the renewal.
func TestRenewalWithoutTokenFile(t *testing.T) {
	ca := mustCA(t, "")
	_, addr := startService(t, ca, nil)
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	tok, _ := ca.IssueToken(web, time.Hour)
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	client := &Client{Addr: addr, Anchors: ca.Anchors(), TokenFile: tokFile}
	cert, err := Obtain(t.Context(), client, web, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(tokFile); err != nil {
		t.Fatal(err)
	}
	renewed, err := Obtain(t.Context(), client, web, time.Hour, cert)
	if err != nil {
		t.Fatalf("renewal with a valid certificate after the token file was removed: %v", err)
	}
	if renewed.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
		t.Error("renewal returned the old certificate")
	}
	// Without a certificate the missing file is still the reported problem.
	if _, err := Obtain(t.Context(), client, web, time.Hour, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("join without token file: err = %v; want the file's not-exist error", err)
	}
}

// TestSignRefusesOutsideIssuerValidity: once the issuer has expired the
// CA issues nothing: no leaf that is dead on arrival, and the service says
// why instead of a 200 or a "bad request".
func TestSignRefusesOutsideIssuerValidity(t *testing.T) {
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	for _, tc := range []struct {
		name string
		now  func(ca *CA) time.Time
		want string
	}{
		{"issuer expired", func(ca *CA) time.Time { return ca.issuer.NotAfter.Add(time.Second) }, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := mustCA(t, "")
			at := tc.now(ca)
			ca.now = func() time.Time { return at }
			cert, err := ca.Issue(web, time.Hour)
			if err == nil {
				t.Fatalf("issued a leaf valid %v..%v with the issuer valid %v..%v at %v",
					cert.Leaf.NotBefore, cert.Leaf.NotAfter, ca.issuer.NotBefore, ca.issuer.NotAfter, at)
			}
			if !strings.Contains(err.Error(), "issuer") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v; want it to say the issuer is %s", err, tc.want)
			}

			tok, err := ca.IssueToken(web, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			_, der, _ := NewCSR(web)
			body, _ := json.Marshal(signRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), Token: tok})
			rec := httptest.NewRecorder()
			NewService(ca, nil, quietLog()).Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, CertificatePath, bytes.NewReader(body)))
			var out signResponse
			json.NewDecoder(rec.Body).Decode(&out)
			if rec.Code != http.StatusServiceUnavailable || !strings.Contains(out.Error, "issuer") {
				t.Errorf("service answered %d %q; want 503 naming the issuer", rec.Code, out.Error)
			}

			// Over TLS the service cannot even renew its own certificate:
			// handshakes fail, and its log (at the default level) says why.
			var logBuf bytes.Buffer
			svc := NewService(ca, nil, slog.New(slog.NewTextHandler(&logBuf, nil)))
			if _, err := svc.TLSConfig().GetCertificate(&tls.ClientHelloInfo{}); err == nil {
				t.Fatal("service got its own certificate from an expired issuer")
			}
			if !strings.Contains(logBuf.String(), "level=ERROR") || !strings.Contains(logBuf.String(), "issuer certificate expired") {
				t.Errorf("service log %q; want an error naming the expired issuer", logBuf.String())
			}
		})
	}
}

// TestServiceRefusesRSACSRUnverified: the service refuses a CSR whose key
// is not ECDSA P-256 before checking its signature. Verifying an RSA
// signature costs time in the modulus size, which the sender picks: a
// 180,000-bit modulus (a 61 KB PEM CSR, within the 64 KiB body limit)
// cost about 2 s of CPU per request, before any credential was looked at.
func TestServiceRefusesRSACSRUnverified(t *testing.T) {
	ca := mustCA(t, "")
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	tok, _ := ca.IssueToken(web, time.Hour)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*urlT{web.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-1] ^= 0xff // a signature that does not verify
	body, _ := json.Marshal(signRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), Token: tok})
	rec := httptest.NewRecorder()
	NewService(ca, nil, quietLog()).Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, CertificatePath, bytes.NewReader(body)))
	var out signResponse
	json.NewDecoder(rec.Body).Decode(&out)
	if rec.Code != http.StatusBadRequest || !strings.Contains(out.Error, "ECDSA P-256") {
		t.Errorf("service answered %d %q; want 400 about the key type, decided before the signature check", rec.Code, out.Error)
	}
	// The CA itself decides on the key first, too.
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Sign(csr, web, time.Hour); err == nil || !strings.Contains(err.Error(), "ECDSA P-256") {
		t.Errorf("Sign: err = %v; want a refusal of the key type", err)
	}
}

// TestInitCAConcurrent: two "ca init" runs without --force racing on one
// directory (two automation runs, two init containers on a shared volume)
// must not both succeed and leave a CA whose files come from both: one
// wins, the others are refused, and the CA on disk loads.
func TestInitCAConcurrent(t *testing.T) {
	for round := 0; round < 5; round++ {
		dir := filepath.Join(t.TempDir(), "ca")
		const n = 4
		start := make(chan struct{})
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			go func() {
				<-start
				_, err := InitCA(dir, "", false)
				errs <- err
			}()
		}
		close(start)
		ok := 0
		for i := 0; i < n; i++ {
			if err := <-errs; err == nil {
				ok++
			}
		}
		if ok != 1 {
			t.Errorf("round %d: %d of %d concurrent InitCA calls succeeded; want exactly 1", round, ok, n)
		}
		if _, err := LoadCA(dir); err != nil {
			t.Fatalf("round %d: the CA left on disk does not load: %v", round, err)
		}
	}
}

// TestNoResumptionNearServerCertExpiry: the client side of
// TestNoResumptionNearClientCertExpiry. A cached session carries the
// server's certificate of its first handshake (the server may have
// renewed long since); the library checks it has not expired before
// resuming, VerifyConnection checks it again later by the real clock. A
// session whose server certificate expires within ResumeMargin must not
// be resumed, so that race is never run.
func TestNoResumptionNearServerCertExpiry(t *testing.T) {
	expectNoResumption(t, ResumeMargin-2*time.Second, time.Hour, "server")
}

// TestSignIgnoresCSRExtensions: nothing a CSR asks for besides its key
// and its one URI SAN reaches the leaf: not a CA bit, not extra key
// usages, not a subject name.
func TestSignIgnoresCSRExtensions(t *testing.T) {
	ca := mustCA(t, "")
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTrue, _ := asn1.Marshal(struct {
		IsCA    bool
		PathLen int
	}{true, 5})
	keyUsage, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}) // keyCertSign, cRLSign
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "evil", Organization: []string{"meshproxy"}},
		URIs:    []*urlT{web.URL()},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caTrue},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: keyUsage},
		},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(csr, web, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature || leaf.Subject.CommonName != "" || len(leaf.Subject.Organization) != 0 {
		t.Errorf("leaf took the CSR's asks: IsCA %v, KeyUsage %b, Subject %q", leaf.IsCA, leaf.KeyUsage, leaf.Subject)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != web.String() {
		t.Errorf("leaf URIs %v; want only %s", leaf.URIs, web)
	}
}
