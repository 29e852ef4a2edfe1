package identity

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"
)

// verifyCacheSize bounds the Verifier's cache of verified chains; when
// full, it is emptied (simple, and peers re-verify at most once more).
const verifyCacheSize = 4096

// Verifier checks peer certificate chains against a set of trust anchors
// and a trust domain. The zero value trusts nothing. It is safe for
// concurrent use once built.
type Verifier struct {
	roots       *x509.CertPool
	trustDomain string
	now         func() time.Time

	// cache remembers chains that verified, until the first expiry in the
	// verified chain, so a peer reconnecting (or resuming a session) does
	// not pay for the ECDSA signature checks again.
	mu    sync.Mutex
	cache map[verifyKey]time.Time
}

// verifyKey names a presented chain and the usage it was checked for.
type verifyKey struct {
	chain [sha256.Size]byte
	usage x509.ExtKeyUsage
}

// NewVerifier returns a Verifier trusting every certificate in anchors (a
// bundle of several anchors is how anchor rotation works) for identities in
// trustDomain.
func NewVerifier(anchors []*x509.Certificate, trustDomain string) (*Verifier, error) {
	if len(anchors) == 0 {
		return nil, errors.New("no trust anchors given: pass the CA's anchor.pem bundle")
	}
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, a := range anchors {
		pool.AddCert(a)
	}
	return &Verifier{roots: pool, trustDomain: trustDomain}, nil
}

// TrustDomain returns the trust domain v accepts.
func (v *Verifier) TrustDomain() string { return v.trustDomain }

// Verify checks that chain (leaf first, then intermediates) leads to a trust
// anchor at the current time, that the leaf may be used for usage
// (x509.ExtKeyUsageServerAuth or ClientAuth), that its single URI SAN is a
// SPIFFE ID in v's trust domain, and, when want is not nil, that it equals
// *want. It returns the peer's identity.
func (v *Verifier) Verify(chain []*x509.Certificate, want *ID, usage x509.ExtKeyUsage) (ID, error) {
	if v == nil || v.roots == nil {
		return ID{}, fmt.Errorf("%w: no trust anchors configured", ErrUntrusted)
	}
	if len(chain) == 0 {
		return ID{}, fmt.Errorf("%w: peer presented no certificate", ErrUntrusted)
	}
	now := time.Now()
	if v.now != nil {
		now = v.now()
	}
	if err := v.verifyChain(chain, usage, now); err != nil {
		return ID{}, fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	id, err := IDFromCert(chain[0])
	if err != nil {
		return ID{}, fmt.Errorf("%w: peer certificate: %w", ErrUntrusted, err)
	}
	if id.TrustDomain != v.trustDomain {
		return ID{}, fmt.Errorf("%w: peer is %s, this mesh trusts %q", ErrTrustDomain, id, v.trustDomain)
	}
	if want != nil && id != *want {
		return ID{}, fmt.Errorf("%w: peer is %s, expected %s", ErrUnexpectedPeer, id, *want)
	}
	return id, nil
}

// verifyChain checks chain against the anchors at now, consulting and
// filling the cache.
func (v *Verifier) verifyChain(chain []*x509.Certificate, usage x509.ExtKeyUsage, now time.Time) error {
	h := sha256.New()
	for _, c := range chain {
		var n [4]byte
		l := len(c.Raw)
		n[0], n[1], n[2], n[3] = byte(l>>24), byte(l>>16), byte(l>>8), byte(l)
		h.Write(n[:])
		h.Write(c.Raw)
	}
	key := verifyKey{usage: usage}
	h.Sum(key.chain[:0])

	v.mu.Lock()
	until, ok := v.cache[key]
	v.mu.Unlock()
	// The cached chain is valid from its latest NotBefore (already passed
	// when it was cached) to its earliest NotAfter.
	if ok && now.Before(until) {
		return nil
	}

	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verified, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return err
	}
	if v.now != nil {
		return nil // tests with a fake clock do not cache
	}
	// Any verified chain will do; take the earliest expiry over all of
	// them so the entry never outlives a chain that is still needed.
	until = chain[0].NotAfter
	for _, vc := range verified {
		for _, c := range vc {
			if c.NotAfter.Before(until) {
				until = c.NotAfter
			}
		}
	}
	v.mu.Lock()
	if v.cache == nil || len(v.cache) >= verifyCacheSize {
		v.cache = make(map[verifyKey]time.Time)
	}
	v.cache[key] = until
	v.mu.Unlock()
	return nil
}
