package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Verifier checks peer certificate chains against a set of trust anchors
// and a trust domain. The zero value trusts nothing. It is safe for
// concurrent use once built.
type Verifier struct {
	roots       *x509.CertPool
	trustDomain string
	now         func() time.Time
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
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	now := time.Now()
	if v.now != nil {
		now = v.now()
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
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
