package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// File names inside a CA directory (see InitCA and LoadCA).
const (
	// AnchorFile holds the trust anchor bundle: one or more PEM root
	// certificates. During anchor rotation it holds the old and the new root;
	// every one of them is trusted. It is public and mode 0644.
	AnchorFile = "anchor.pem"
	// AnchorKeyFile holds the private key of the first anchor in AnchorFile
	// (PKCS#8 PEM, mode 0600). LoadCA does not read it: an operator may keep
	// the root key offline, or readable by root only, once the issuer is made.
	AnchorKeyFile = "anchor-key.pem"
	// IssuerFile holds the intermediate (issuer) certificate, mode 0644.
	IssuerFile = "issuer.pem"
	// IssuerKeyFile holds the issuer's private key (PKCS#8 PEM, mode 0600).
	IssuerKeyFile = "issuer-key.pem"
	// TokenKeyFile holds the key that signs join tokens (PKCS#8 PEM, mode 0600).
	TokenKeyFile = "token-key.pem"
)

// Lifetimes of what the CA makes.
const (
	// AnchorTTL is the lifetime of a trust anchor made by NewCA/InitCA.
	AnchorTTL = 10 * 365 * 24 * time.Hour
	// IssuerTTL is the lifetime of an issuer made by NewCA/InitCA.
	IssuerTTL = 365 * 24 * time.Hour
	// DefaultLeafTTL is the lifetime of a leaf when none is asked for.
	DefaultLeafTTL = 24 * time.Hour
	// clockSkew is how far back NotBefore is set to tolerate clock skew.
	clockSkew = time.Minute
)

// CA is the built-in certificate authority: a trust anchor bundle, the
// issuer (intermediate) certificate and key that sign leaves, and the key
// that signs join tokens. It is safe for concurrent use.
type CA struct {
	trustDomain string
	anchors     []*x509.Certificate
	anchorKey   *ecdsa.PrivateKey // nil after LoadCA
	issuer      *x509.Certificate
	issuerKey   *ecdsa.PrivateKey
	tokenKey    *ecdsa.PrivateKey
	roots       *x509.CertPool

	// now is the clock; tests replace it. nil means time.Now.
	now func() time.Time
}

func (ca *CA) clock() time.Time {
	if ca.now != nil {
		return ca.now()
	}
	return time.Now()
}

// NewCA makes a CA in memory: a fresh anchor, issuer and token key for
// trustDomain ("" means DefaultTrustDomain). Use it for tests and
// single-host setups; InitCA also writes it to disk.
func NewCA(trustDomain string) (*CA, error) {
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	now := time.Now()
	tdURL := ID{TrustDomain: trustDomain}.URL()
	tdURL.Path = ""

	anchorKey, err := newKey()
	if err != nil {
		return nil, err
	}
	anchorTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"meshproxy"}, CommonName: "meshproxy trust anchor " + trustDomain},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(AnchorTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*urlT{tdURL},
	}
	anchor, err := createCert(anchorTmpl, anchorTmpl, &anchorKey.PublicKey, anchorKey)
	if err != nil {
		return nil, fmt.Errorf("new CA: making trust anchor: %w", err)
	}

	issuerKey, err := newKey()
	if err != nil {
		return nil, err
	}
	issuerTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"meshproxy"}, CommonName: "meshproxy issuer " + trustDomain},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(IssuerTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*urlT{tdURL},
	}
	issuer, err := createCert(issuerTmpl, anchor, &issuerKey.PublicKey, anchorKey)
	if err != nil {
		return nil, fmt.Errorf("new CA: making issuer: %w", err)
	}
	tokenKey, err := newKey()
	if err != nil {
		return nil, err
	}
	return newCA(trustDomain, []*x509.Certificate{anchor}, anchorKey, issuer, issuerKey, tokenKey)
}

func newCA(td string, anchors []*x509.Certificate, anchorKey *ecdsa.PrivateKey, issuer *x509.Certificate, issuerKey, tokenKey *ecdsa.PrivateKey) (*CA, error) {
	roots := x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	ca := &CA{trustDomain: td, anchors: anchors, anchorKey: anchorKey, issuer: issuer,
		issuerKey: issuerKey, tokenKey: tokenKey, roots: roots}
	if _, err := issuer.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("issuer certificate does not chain to any trust anchor: %w", err)
	}
	if !issuerKey.PublicKey.Equal(issuer.PublicKey) {
		return nil, errors.New("issuer key does not match the issuer certificate")
	}
	return ca, nil
}

// InitCA makes a new CA for trustDomain ("" means DefaultTrustDomain) and
// writes it to dir (created with mode 0700 if missing): AnchorFile,
// AnchorKeyFile, IssuerFile, IssuerKeyFile and TokenKeyFile, keys with mode
// 0600. It refuses to overwrite an existing CA unless force is set.
func InitCA(dir, trustDomain string, force bool) (*CA, error) {
	if !force {
		for _, name := range []string{AnchorFile, AnchorKeyFile, IssuerFile, IssuerKeyFile, TokenKeyFile} {
			p := filepath.Join(dir, name)
			if _, err := os.Stat(p); err == nil {
				return nil, fmt.Errorf("%s already exists: %s already holds a CA; pass --force to replace it (every certificate it issued stops being trusted)", p, dir)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("checking %s: %w", p, err)
			}
		}
	}
	ca, err := NewCA(trustDomain)
	if err != nil {
		return nil, err
	}
	// Only the CA directory itself is private. Parents it has to create
	// (say /etc/meshproxy for /etc/meshproxy/ca) stay traversable, or the
	// proxy's own user could never reach a CA directory chowned to it.
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o755); err != nil {
		return nil, fmt.Errorf("creating the parent of CA directory %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating CA directory: %w", err)
	} else if err == nil {
		if err := syncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
			return nil, fmt.Errorf("creating CA directory: %w", err)
		}
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{AnchorKeyFile, mustKeyPEM(ca.anchorKey), 0o600},
		{IssuerKeyFile, mustKeyPEM(ca.issuerKey), 0o600},
		{TokenKeyFile, mustKeyPEM(ca.tokenKey), 0o600},
		{IssuerFile, EncodeCerts(ca.issuer), 0o644},
		{AnchorFile, EncodeCerts(ca.anchors...), 0o644},
	}
	// Without force, no file is ever replaced: of several "ca init" runs
	// racing on one directory, the first to write the first file is the
	// only one to get past it, so the CA on disk is never a mix.
	var written []string
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := writeFile(p, f.data, f.mode, force); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("%s appeared while making the CA (another \"meshproxy ca init\" at the same time?): %w", p, err)
			}
			// A new CA is all or nothing: a partial one would make the
			// next try refuse as "already holds a CA".
			for _, w := range written {
				os.Remove(w)
			}
			return nil, err
		}
		if !force {
			written = append(written, p)
		}
	}
	return ca, nil
}

// LoadCA reads a CA written by InitCA from dir. AnchorKeyFile is not read
// (it may be missing or unreadable); AnchorFile may hold several anchors
// (rotation), all trusted.
// The trust domain is read from the issuer certificate's URI SAN.
func LoadCA(dir string) (*CA, error) {
	anchors, err := LoadCertsFile(filepath.Join(dir, AnchorFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s (run \"meshproxy ca init --dir %s\" to make one): %w", dir, dir, err)
	}
	issuers, err := LoadCertsFile(filepath.Join(dir, IssuerFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	issuerKey, err := loadKeyFile(filepath.Join(dir, IssuerKeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	tokenKey, err := loadKeyFile(filepath.Join(dir, TokenKeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	issuer := issuers[0]
	if len(issuer.URIs) != 1 || issuer.URIs[0].Scheme != "spiffe" {
		return nil, fmt.Errorf("loading CA from %s: %s has no spiffe://<trust-domain> URI SAN", dir, IssuerFile)
	}
	td := issuer.URIs[0].Host
	if err := ValidateTrustDomain(td); err != nil {
		return nil, fmt.Errorf("loading CA from %s: %s: %w", dir, IssuerFile, err)
	}
	// The anchor key is not read: it signs nothing after InitCA, so the
	// service and the proxies need no access to it (and do not hold it).
	ca, err := newCA(td, anchors, nil, issuer, issuerKey, tokenKey)
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	return ca, nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() string { return ca.trustDomain }

// Anchors returns the trust anchors (a copy of the slice).
func (ca *CA) Anchors() []*x509.Certificate { return append([]*x509.Certificate(nil), ca.anchors...) }

// Roots returns a pool of the trust anchors. Callers must not modify it.
func (ca *CA) Roots() *x509.CertPool { return ca.roots }

// Issuer returns the issuer (intermediate) certificate.
func (ca *CA) Issuer() *x509.Certificate { return ca.issuer }

// Sign issues a leaf certificate for id from csr, valid for ttl (zero or
// negative means DefaultLeafTTL; capped at the issuer's expiry). It checks
// the CSR's signature, that its key is ECDSA P-256, and that its only URI
// SAN equals id exactly. It returns the chain leaf first, then the issuer.
func (ca *CA) Sign(csr *x509.CertificateRequest, id ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if id.TrustDomain != ca.trustDomain {
		return nil, fmt.Errorf("sign: %w: %s is not in this CA's trust domain %q", ErrTrustDomain, id, ca.trustDomain)
	}
	// The key type first: the cost of checking an RSA signature grows
	// with a modulus the sender chooses.
	pub, err := csrKey(csr)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign: CSR signature does not verify: %w", err)
	}
	got, err := IDFromCSR(csr)
	if err != nil {
		return nil, fmt.Errorf("sign: CSR: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("sign: %w: CSR asks for %s, authorized identity is %s", ErrTokenIdentity, got, id)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return nil, errors.New("sign: CSR may carry only the URI SAN of its identity (no DNS, IP or e-mail names)")
	}
	return ca.signKey(pub, id, ttl)
}

// csrKey returns the CSR's key if it is ECDSA P-256, the only kind the CA
// signs for.
func csrKey(csr *x509.CertificateRequest) (*ecdsa.PublicKey, error) {
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("CSR key must be ECDSA P-256, not %s", csr.PublicKeyAlgorithm)
	}
	if pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("CSR key must be ECDSA P-256, not ECDSA %s", pub.Curve.Params().Name)
	}
	return pub, nil
}

func (ca *CA) signKey(pub *ecdsa.PublicKey, id ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if ttl <= 0 {
		ttl = DefaultLeafTTL
	}
	now := ca.clock()
	if !now.Before(ca.issuer.NotAfter) {
		return nil, fmt.Errorf("sign %s: %w at %s: make a new CA (meshproxy ca init --force) and hand out its anchor.pem",
			id, errIssuerExpired, ca.issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.issuer.NotAfter) {
		notAfter = ca.issuer.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*urlT{id.URL()},
	}
	leaf, err := createCert(tmpl, ca.issuer, pub, ca.issuerKey)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	return []*x509.Certificate{leaf, ca.issuer}, nil
}

// errIssuerExpired means the CA's issuer certificate has expired: nothing
// it signed would verify. The service answers 503 for it.
var errIssuerExpired = errors.New("the CA's issuer certificate expired")

// Issue makes a fresh key and a leaf for id valid for ttl (see Sign) and
// returns them as a tls.Certificate with Leaf set. It is for offline
// issuance ("meshproxy ca issue") and for the CA's own service identity;
// workloads should create their own key and send a CSR instead.
func (ca *CA) Issue(id ID, ttl time.Duration) (*tls.Certificate, error) {
	key, csrDER, err := NewCSR(id)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	chain, err := ca.Sign(csr, id, ttl)
	if err != nil {
		return nil, err
	}
	return tlsCert(key, chain), nil
}

// NewCSR makes a new ECDSA P-256 key in memory and a CSR for id signed by
// it, whose only SAN is id's URI. It returns the key and the CSR's DER.
func NewCSR(id ID) (*ecdsa.PrivateKey, []byte, error) {
	if err := id.Validate(); err != nil {
		return nil, nil, fmt.Errorf("new CSR: %w", err)
	}
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*urlT{id.URL()}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("new CSR for %s: %w", id, err)
	}
	return key, der, nil
}

func tlsCert(key *ecdsa.PrivateKey, chain []*x509.Certificate) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating P-256 key: %w", err)
	}
	return k, nil
}

func mustSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("identity: crypto/rand failed: " + err.Error())
	}
	return n.Add(n, big.NewInt(1))
}

func createCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
