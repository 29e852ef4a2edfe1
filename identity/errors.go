package identity

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch with errors.Is; the wrapped message says
// what exactly went wrong.
var (
	// ErrNotReady means no valid certificate is held yet (or it expired).
	ErrNotReady = errors.New("identity: no valid certificate yet")
	// ErrNoIdentity means a certificate or CSR carries no usable SPIFFE ID.
	ErrNoIdentity = errors.New("no SPIFFE identity")
	// ErrTokenMalformed means a join token could not be parsed.
	ErrTokenMalformed = errors.New("join token is malformed")
	// ErrTokenSignature means a join token's signature does not verify:
	// it was altered or signed by another CA.
	ErrTokenSignature = errors.New("join token signature does not verify (altered, or issued by another CA)")
	// ErrTokenExpired means a join token is past its expiry.
	ErrTokenExpired = errors.New("join token has expired")
	// ErrTokenIdentity means a join token is bound to another identity than
	// the one requested.
	ErrTokenIdentity = errors.New("join token is for another identity")
	// ErrUntrusted means a peer's certificate chain does not lead to a
	// trust anchor, or is expired or otherwise invalid.
	ErrUntrusted = errors.New("certificate is not trusted")
	// ErrTrustDomain means a peer's identity is in another trust domain.
	ErrTrustDomain = errors.New("identity is in another trust domain")
	// ErrUnexpectedPeer means a peer's identity is not the expected one.
	ErrUnexpectedPeer = errors.New("peer is not the expected identity")

	// The errors below only ServiceAccount tokens produce; their other
	// refusals wrap the join-token sentinels above.

	// ErrTokenIssuer means a token was issued by another issuer than the
	// configured one (another cluster, or a misconfigured --k8s-issuer).
	ErrTokenIssuer = errors.New("token is from another issuer")
	// ErrTokenAudience means a token is not meant for this service.
	ErrTokenAudience = errors.New("token is not for this audience")
	// ErrTokenNotYetValid means a token's nbf or iat is in the future.
	ErrTokenNotYetValid = errors.New("token is not valid yet")
)

// ServiceError is a refusal from the identity service, as seen by a Client.
type ServiceError struct {
	// Status is the HTTP status code of the reply.
	Status int
	// Reason is the service's explanation.
	Reason string
}

// Error implements error.
func (e *ServiceError) Error() string {
	return fmt.Sprintf("identity service refused the request (HTTP %d): %s", e.Status, e.Reason)
}
