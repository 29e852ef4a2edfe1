package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// DefaultTokenTTL is the lifetime of a join token when none is asked for.
const DefaultTokenTTL = 24 * time.Hour

// tokenPrefix starts every join token; it names the format and its version.
const tokenPrefix = "mpt1."

// Authenticator decides whether a credential entitles its bearer to a
// certificate for want. It is an interface so that other credentials (for
// example a Kubernetes ServiceAccount token checked by TokenReview) can be
// added beside join tokens.
type Authenticator interface {
	// Authenticate returns nil if credential proves the right to want, and
	// otherwise an error saying why not (wrapping ErrToken* where it applies).
	Authenticate(ctx context.Context, credential string, want ID) error
}

var _ Authenticator = (*TokenAuthenticator)(nil)

// tokenClaims is the signed body of a join token.
type tokenClaims struct {
	Subject  string `json:"sub"` // the SPIFFE ID the token is bound to
	TokenID  string `json:"jti"` // random, for audit logs
	IssuedAt int64  `json:"iat"` // Unix seconds
	Expiry   int64  `json:"exp"` // Unix seconds
}

// IssueToken makes a join token bound to exactly id, valid for ttl (zero or
// negative means DefaultTokenTTL). The token is
// "mpt1.<base64url JSON claims>.<base64url ECDSA-SHA256 signature>", signed
// by the CA's token key; the claims hold the identity, a random token id,
// the issue time and the expiry. Treat it as a secret.
func (ca *CA) IssueToken(id ID, ttl time.Duration) (string, error) {
	if err := id.Validate(); err != nil {
		return "", fmt.Errorf("issue token: %w", err)
	}
	if id.TrustDomain != ca.trustDomain {
		return "", fmt.Errorf("issue token: %w: %s is not in this CA's trust domain %q", ErrTrustDomain, id, ca.trustDomain)
	}
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("issue token: %w", err)
	}
	now := ca.clock()
	body, err := json.Marshal(tokenClaims{
		Subject:  id.String(),
		TokenID:  hex.EncodeToString(jti[:]),
		IssuedAt: now.Unix(),
		Expiry:   now.Add(ttl).Unix(),
	})
	if err != nil {
		return "", fmt.Errorf("issue token: %w", err)
	}
	signed := tokenPrefix + base64.RawURLEncoding.EncodeToString(body)
	sum := sha256.Sum256([]byte(signed))
	sig, err := ecdsa.SignASN1(rand.Reader, ca.tokenKey, sum[:])
	if err != nil {
		return "", fmt.Errorf("issue token: signing: %w", err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// TokenAuthenticator returns an Authenticator that accepts join tokens
// signed by this CA.
func (ca *CA) TokenAuthenticator() *TokenAuthenticator {
	return &TokenAuthenticator{Key: &ca.tokenKey.PublicKey, now: ca.now}
}

// TokenAuthenticator checks join tokens made by CA.IssueToken: signature by
// Key, expiry, and that the token is bound to exactly the wanted identity.
// Tokens are bearer credentials and may be presented more than once until
// they expire (a proxy restarting reuses its token).
type TokenAuthenticator struct {
	// Key is the public half of the CA's token key. Required.
	Key *ecdsa.PublicKey
	// now is the clock; nil means time.Now.
	now func() time.Time
}

// Authenticate implements Authenticator.
func (a *TokenAuthenticator) Authenticate(_ context.Context, token string, want ID) error {
	claims, err := a.verify(token)
	if err != nil {
		return err
	}
	now := time.Now()
	if a.now != nil {
		now = a.now()
	}
	if exp := time.Unix(claims.Expiry, 0); !now.Before(exp) {
		return fmt.Errorf("%w: token %s expired at %s; ask for a new one with \"meshproxy ca token\"", ErrTokenExpired, claims.TokenID, exp.UTC().Format(time.RFC3339))
	}
	if claims.Subject != want.String() {
		return fmt.Errorf("%w: token is for %s, not %s", ErrTokenIdentity, claims.Subject, want)
	}
	return nil
}

func (a *TokenAuthenticator) verify(token string) (*tokenClaims, error) {
	token = strings.TrimSpace(token)
	if !strings.HasPrefix(token, tokenPrefix) {
		return nil, fmt.Errorf("%w: it does not start with %q", ErrTokenMalformed, tokenPrefix)
	}
	i := strings.LastIndexByte(token, '.')
	if i < len(tokenPrefix) {
		return nil, fmt.Errorf("%w: no signature part", ErrTokenMalformed)
	}
	signed, sigB64 := token[:i], token[i+1:]
	sig, err := base64.RawURLEncoding.DecodeString(sigB64)
	if err != nil {
		return nil, fmt.Errorf("%w: signature is not base64url", ErrTokenMalformed)
	}
	if a.Key == nil {
		return nil, fmt.Errorf("%w: no token key configured", ErrTokenSignature)
	}
	sum := sha256.Sum256([]byte(signed))
	if !ecdsa.VerifyASN1(a.Key, sum[:], sig) {
		return nil, ErrTokenSignature
	}
	body, err := base64.RawURLEncoding.DecodeString(signed[len(tokenPrefix):])
	if err != nil {
		return nil, fmt.Errorf("%w: claims are not base64url", ErrTokenMalformed)
	}
	var c tokenClaims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("%w: claims: %w", ErrTokenMalformed, err)
	}
	return &c, nil
}

// TokenIdentity reads the identity a join token claims, WITHOUT checking
// its signature: useful for a proxy to know which identity to ask for. The
// identity service does the real check.
func TokenIdentity(token string) (ID, error) {
	token = strings.TrimSpace(token)
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0]+"." != tokenPrefix {
		return ID{}, fmt.Errorf("%w: want %s<claims>.<signature>", ErrTokenMalformed, tokenPrefix)
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ID{}, fmt.Errorf("%w: claims are not base64url", ErrTokenMalformed)
	}
	var c tokenClaims
	if err := json.Unmarshal(body, &c); err != nil {
		return ID{}, fmt.Errorf("%w: claims: %w", ErrTokenMalformed, err)
	}
	id, err := ParseID(c.Subject)
	if err != nil {
		return ID{}, fmt.Errorf("%w: %w", ErrTokenMalformed, err)
	}
	return id, nil
}
