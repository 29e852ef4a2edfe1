// Package identity is meshproxy's workload identity: SPIFFE IDs, the built-in
// certificate authority (trust anchor -> issuer -> leaf, ECDSA P-256), signed
// join tokens, the identity service that turns a token plus a CSR into a
// certificate chain, the client side that fetches and rotates certificates
// (Manager), and the tls.Config builders for the mesh's mutual TLS.
//
// Private keys of workloads are created in memory and never leave the
// process; only the CA's own keys are written to disk, with mode 0600.
package identity

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// DefaultTrustDomain is the trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

// ID is a workload identity, the SPIFFE ID
// spiffe://<TrustDomain>/ns/<Namespace>/sa/<ServiceAccount>.
// The zero value is not a valid ID; see Validate.
type ID struct {
	// TrustDomain is the DNS-like name of the trust domain, e.g. "cluster.local".
	TrustDomain string
	// Namespace is the workload's namespace, e.g. "default".
	Namespace string
	// ServiceAccount is the workload's account name within Namespace.
	ServiceAccount string
}

// ParseID parses a SPIFFE ID of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<account>. It is strict: no
// port, user info, query, fragment, trailing slash, empty, "." or ".."
// segments, and only the characters SPIFFE allows.
func ParseID(s string) (ID, error) {
	const scheme = "spiffe://"
	if !strings.HasPrefix(s, scheme) {
		return ID{}, fmt.Errorf("identity %q: must start with %q", s, scheme)
	}
	rest := s[len(scheme):]
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ID{}, fmt.Errorf("identity %q: missing path /ns/<namespace>/sa/<account>", s)
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return ID{}, fmt.Errorf("identity %q: path must be exactly /ns/<namespace>/sa/<account>", s)
	}
	id := ID{TrustDomain: td, Namespace: parts[1], ServiceAccount: parts[3]}
	if err := id.Validate(); err != nil {
		return ID{}, fmt.Errorf("identity %q: %w", s, err)
	}
	return id, nil
}

// MustParseID is ParseID that panics on error; for constants and tests.
func MustParseID(s string) ID {
	id, err := ParseID(s)
	if err != nil {
		panic(err)
	}
	return id
}

// Validate reports whether every part of id is well formed.
func (id ID) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if err := validSegment("namespace", id.Namespace); err != nil {
		return err
	}
	return validSegment("service account", id.ServiceAccount)
}

// ValidateTrustDomain reports whether td is a valid SPIFFE trust domain
// name: lower-case letters, digits, '.', '-' and '_' only.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return fmt.Errorf("trust domain is empty")
	}
	if len(td) > 255 {
		return fmt.Errorf("trust domain is longer than 255 characters")
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("trust domain %q: character %q not allowed (use lower-case letters, digits, '.', '-', '_')", td, r)
		}
	}
	return nil
}

func validSegment(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%s %q is not allowed", what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("%s %q: character %q not allowed (use letters, digits, '.', '-', '_')", what, s, r)
		}
	}
	return nil
}

// String returns the SPIFFE ID as a URI string.
func (id ID) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns the SPIFFE ID as a URL, the form carried in a URI SAN.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// ServiceID is the identity the identity service itself presents:
// spiffe://<trustDomain>/ns/meshproxy/sa/identity.
func ServiceID(trustDomain string) ID {
	return ID{TrustDomain: trustDomain, Namespace: "meshproxy", ServiceAccount: "identity"}
}

// IDFromCert returns the SPIFFE ID carried by cert, which must have exactly
// one URI SAN.
func IDFromCert(cert *x509.Certificate) (ID, error) {
	return idFromURIs(cert.URIs)
}

// IDFromCSR returns the SPIFFE ID requested by csr, which must have exactly
// one URI SAN.
func IDFromCSR(csr *x509.CertificateRequest) (ID, error) {
	return idFromURIs(csr.URIs)
}

func idFromURIs(uris []*url.URL) (ID, error) {
	if len(uris) != 1 {
		return ID{}, fmt.Errorf("%w: want exactly one URI SAN, found %d", ErrNoIdentity, len(uris))
	}
	id, err := ParseID(uris[0].String())
	if err != nil {
		return ID{}, fmt.Errorf("%w: %w", ErrNoIdentity, err)
	}
	return id, nil
}
