package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInitCAFilesAndOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := InitCA(dir, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if ca.TrustDomain() != DefaultTrustDomain {
		t.Errorf("trust domain = %q; want %q", ca.TrustDomain(), DefaultTrustDomain)
	}
	modes := map[string]os.FileMode{
		AnchorFile: 0o644, AnchorKeyFile: 0o600, IssuerFile: 0o644, IssuerKeyFile: 0o600, TokenKeyFile: 0o600,
	}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %o; want %o", name, got, want)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("CA dir mode = %v (%v); want 0700", fi.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != len(modes) {
		t.Errorf("CA dir holds %d entries; want %d (no temp files left)", len(entries), len(modes))
	}

	before, _ := os.ReadFile(filepath.Join(dir, IssuerKeyFile))
	if _, err := InitCA(dir, "", false); err == nil {
		t.Fatal("second InitCA without force succeeded; want a refusal")
	}
	after, _ := os.ReadFile(filepath.Join(dir, IssuerKeyFile))
	if string(before) != string(after) {
		t.Fatal("refused InitCA still changed the issuer key")
	}
	if _, err := InitCA(dir, "", true); err != nil {
		t.Fatalf("InitCA with force: %v", err)
	}
	forced, _ := os.ReadFile(filepath.Join(dir, IssuerKeyFile))
	if string(forced) == string(before) {
		t.Fatal("InitCA with force kept the old issuer key")
	}
}

func TestLoadCARoundTrip(t *testing.T) {
	dir := t.TempDir()
	orig, err := InitCA(dir, "mesh.test", false)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.TrustDomain() != "mesh.test" {
		t.Errorf("loaded trust domain = %q; want mesh.test", loaded.TrustDomain())
	}
	if !loaded.Issuer().Equal(orig.Issuer()) || !loaded.Anchors()[0].Equal(orig.Anchors()[0]) {
		t.Error("loaded issuer/anchor differ from the written ones")
	}
	// A leaf from the loaded CA verifies under the original anchors, and a
	// token from the loaded CA is accepted by the original's authenticator.
	id := MustParseID("spiffe://mesh.test/ns/default/sa/web")
	cert, err := loaded.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := NewVerifier(orig.Anchors(), "mesh.test")
	if _, err := v.Verify(certChain(cert), &id, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("leaf from loaded CA: %v", err)
	}
	tok, err := loaded.IssueToken(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := orig.TokenAuthenticator().Authenticate(t.Context(), tok, id); err != nil {
		t.Errorf("token from loaded CA: %v", err)
	}

	// The anchor key is optional.
	os.Remove(filepath.Join(dir, AnchorKeyFile))
	if _, err := LoadCA(dir); err != nil {
		t.Errorf("LoadCA without anchor key: %v", err)
	}
	// An issuer key that does not match is refused.
	other := mustCA(t, "mesh.test")
	WriteFileAtomic(filepath.Join(dir, IssuerKeyFile), mustKeyPEM(other.issuerKey), 0o600)
	if _, err := LoadCA(dir); err == nil {
		t.Error("LoadCA with a foreign issuer key succeeded; want an error")
	}
	if _, err := LoadCA(t.TempDir()); err == nil {
		t.Error("LoadCA of an empty dir succeeded; want an error")
	}
}

func TestLeaf(t *testing.T) {
	ca := mustCA(t, "")
	id := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	key, csrDER, err := NewCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)
	start := time.Now()
	chain, err := ca.Sign(csr, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(ca.Issuer()) {
		t.Fatalf("chain = %d certs; want leaf + issuer", len(chain))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("leaf URIs = %v; want [%s]", leaf.URIs, id)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || !pub.Equal(&key.PublicKey) {
		t.Errorf("leaf key is %T; want our P-256 key", leaf.PublicKey)
	}
	if life := leaf.NotAfter.Sub(start); life < 24*time.Hour-2*time.Second || life > 24*time.Hour+time.Second {
		t.Errorf("leaf lifetime = %v; want 24h", life)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	// Chains to the anchor through the issuer, and not without it.
	opts := x509.VerifyOptions{Roots: ca.Roots(), Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if _, err := leaf.Verify(opts); err == nil {
		t.Error("leaf verified without its issuer; want failure")
	}
	opts.Intermediates.AddCert(chain[1])
	chains, err := leaf.Verify(opts)
	if err != nil {
		t.Fatalf("leaf does not chain to the anchor: %v", err)
	}
	if got := chains[0]; len(got) != 3 || !got[2].Equal(ca.Anchors()[0]) {
		t.Errorf("verified chain has %d certs; want leaf, issuer, anchor", len(got))
	}
}

func TestSignRefuses(t *testing.T) {
	ca := mustCA(t, "")
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	db := MustParseID("spiffe://cluster.local/ns/default/sa/db")
	_, csrDER, _ := NewCSR(web)

	csr, _ := x509.ParseCertificateRequest(csrDER)
	if _, err := ca.Sign(csr, db, 0); !errors.Is(err, ErrTokenIdentity) {
		t.Errorf("CSR for web signed as db: err = %v; want ErrTokenIdentity", err)
	}
	foreign := MustParseID("spiffe://other.test/ns/default/sa/web")
	if _, err := ca.Sign(csr, foreign, 0); !errors.Is(err, ErrTrustDomain) {
		t.Errorf("other trust domain: err = %v; want ErrTrustDomain", err)
	}
	// Corrupt the signature (last byte of the DER is in the signature).
	bad := append([]byte(nil), csrDER...)
	bad[len(bad)-1] ^= 0xff
	badCSR, err := x509.ParseCertificateRequest(bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Sign(badCSR, web, 0); err == nil {
		t.Error("CSR with a bad signature was signed")
	}
	// Not P-256.
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*urlT{web.URL()}}, k384)
	c384, _ := x509.ParseCertificateRequest(der)
	if _, err := ca.Sign(c384, web, 0); err == nil {
		t.Error("P-384 CSR was signed; want P-256 only")
	}
	// Extra DNS SAN.
	kp, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*urlT{web.URL()}, DNSNames: []string{"evil.example"}}, kp)
	cdns, _ := x509.ParseCertificateRequest(der)
	if _, err := ca.Sign(cdns, web, 0); err == nil {
		t.Error("CSR with a DNS SAN was signed")
	}
}

// TestAnchorRotation: a bundle with the old and the new anchor accepts
// leaves from both CAs; a single-anchor bundle accepts only its own.
func TestAnchorRotation(t *testing.T) {
	oldCA, newCA := mustCA(t, ""), mustCA(t, "")
	id := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	bundle, err := ParseCerts(append(EncodeCerts(oldCA.Anchors()...), EncodeCerts(newCA.Anchors()...)...))
	if err != nil || len(bundle) != 2 {
		t.Fatalf("bundle: %d certs, %v", len(bundle), err)
	}
	both, _ := NewVerifier(bundle, DefaultTrustDomain)
	onlyOld, _ := NewVerifier(oldCA.Anchors(), DefaultTrustDomain)
	for name, ca := range map[string]*CA{"old": oldCA, "new": newCA} {
		c, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := both.Verify(certChain(c), &id, x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("%s leaf under the two-anchor bundle: %v", name, err)
		}
		_, err = onlyOld.Verify(certChain(c), &id, x509.ExtKeyUsageServerAuth)
		if (err == nil) != (name == "old") {
			t.Errorf("%s leaf under the old anchor only: err = %v", name, err)
		}
	}

	// LoadCA of a directory whose anchor.pem holds both anchors.
	dir := t.TempDir()
	if _, err := InitCA(dir, "", false); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(filepath.Join(dir, AnchorFile))
	WriteFileAtomic(filepath.Join(dir, AnchorFile), append(cur, EncodeCerts(newCA.Anchors()...)...), 0o644)
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(loaded.Anchors()); n != 2 {
		t.Errorf("loaded %d anchors; want 2", n)
	}
}

// TestInitCAParentsStayTraversable: ca init --dir /etc/meshproxy/ca must
// not leave /etc/meshproxy private, or a proxy user owning the CA
// directory (a single-host mesh) could not reach it.
func TestInitCAParentsStayTraversable(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "etc", "meshproxy")
	dir := filepath.Join(parent, "ca")
	if _, err := InitCA(dir, "", false); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(parent); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("created parent %s: mode %v (%v); want 0755", parent, fi.Mode().Perm(), err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("CA dir mode = %v (%v); want 0700", fi.Mode().Perm(), err)
	}
}
