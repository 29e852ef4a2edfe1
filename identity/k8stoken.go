package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kubernetes ServiceAccount tokens.
//
// A pod's proxy proves who it is with a projected ServiceAccount token (a
// JWT signed by the cluster's ServiceAccount issuer, audience "meshproxy").
// The identity service checks it offline against the issuer's public keys,
// the JWKS the API server publishes at /openid/v1/jwks, so it needs no
// access to the API server. (A TokenReview would also notice a deleted pod
// or ServiceAccount before the token expires; this check cannot, which is
// why the injected tokens live only one hour.)

// DefaultK8sAudience is the audience a ServiceAccount token must carry
// when none is configured; "meshproxy inject" asks the kubelet for it.
const DefaultK8sAudience = "meshproxy"

// DefaultK8sLeeway is the clock skew tolerated on a token's exp, nbf and
// iat when none is configured.
const DefaultK8sLeeway = 30 * time.Second

// maxTokenLen bounds the credential size; Kubernetes tokens are ~1 KiB.
const maxTokenLen = 16 << 10

// k8sTokenError is a refusal of a ServiceAccount token: a clear message
// of its own, matching a sentinel with errors.Is.
type k8sTokenError struct {
	kind error
	msg  string
}

func (e *k8sTokenError) Error() string { return "ServiceAccount token: " + e.msg }
func (e *k8sTokenError) Unwrap() error { return e.kind }

func k8sErr(kind error, format string, args ...any) error {
	return &k8sTokenError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// JWKS is a parsed JSON Web Key Set holding the public keys a
// ServiceAccount issuer signs with: RSA keys (RS256, at least 2048 bits)
// and EC P-256 keys (ES256). Keys of other kinds are remembered only to
// explain why a token signed with one is refused. A JWKS is immutable and
// safe for concurrent use.
type JWKS struct {
	keys    []jwk
	skipped map[string]string // kid -> why the key cannot be used
}

type jwk struct {
	kid string
	alg string // "RS256" or "ES256": the one algorithm this key verifies
	rsa *rsa.PublicKey
	ec  *ecdsa.PublicKey
}

// Len returns the number of usable keys.
func (s *JWKS) Len() int { return len(s.keys) }

// KeyIDs returns the kids of the usable keys, in file order.
func (s *JWKS) KeyIDs() []string {
	ids := make([]string, len(s.keys))
	for i, k := range s.keys {
		ids[i] = k.kid
	}
	return ids
}

// LoadJWKS reads and parses a JWKS file (see ParseJWKS).
func LoadJWKS(path string) (*JWKS, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading JWKS: %w", err)
	}
	s, err := ParseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("JWKS %s: %w", path, err)
	}
	return s, nil
}

// ParseJWKS parses a JSON Web Key Set ({"keys": [...]}) as served by the
// Kubernetes API server at /openid/v1/jwks. Keys with use other than
// "sig" and keys of unsupported types or curves are skipped; it is an
// error if no usable key remains, or if any key carries private material.
func ParseJWKS(data []byte) (*JWKS, error) {
	var doc struct {
		Keys []map[string]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %w (want the output of \"kubectl get --raw /openid/v1/jwks\")", err)
	}
	s := &JWKS{skipped: map[string]string{}}
	for i, raw := range doc.Keys {
		k, skip, err := parseJWK(raw)
		if err != nil {
			return nil, fmt.Errorf("key %d (kid %q): %w", i, k.kid, err)
		}
		if skip != "" {
			s.skipped[k.kid] = skip
			continue
		}
		s.keys = append(s.keys, k)
	}
	if len(s.keys) == 0 {
		why := ""
		for kid, reason := range s.skipped {
			why = fmt.Sprintf(" (key %q: %s)", kid, reason)
			break
		}
		return nil, fmt.Errorf("no usable RS256 or ES256 signing key among %d keys%s", len(doc.Keys), why)
	}
	return s, nil
}

// parseJWK returns the key, or a reason to skip it, or an error that
// makes the whole set unusable.
func parseJWK(raw map[string]json.RawMessage) (jwk, string, error) {
	str := func(name string) (string, error) {
		v, ok := raw[name]
		if !ok {
			return "", nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", fmt.Errorf("%q is not a string", name)
		}
		return s, nil
	}
	var k jwk
	var err error
	if k.kid, err = str("kid"); err != nil {
		return k, "", err
	}
	for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
		if _, ok := raw[private]; ok {
			return k, "", fmt.Errorf("holds private key material (%q): publish only the public keys", private)
		}
	}
	kty, err := str("kty")
	if err != nil {
		return k, "", err
	}
	use, err := str("use")
	if err != nil {
		return k, "", err
	}
	alg, err := str("alg")
	if err != nil {
		return k, "", err
	}
	if use != "" && use != "sig" {
		return k, fmt.Sprintf("use %q is not \"sig\"", use), nil
	}
	b64 := func(name string) ([]byte, error) {
		s, err := str(name)
		if err != nil {
			return nil, err
		}
		if s == "" {
			return nil, fmt.Errorf("missing %q", name)
		}
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not base64url: %w", name, err)
		}
		return b, nil
	}
	switch kty {
	case "RSA":
		if alg != "" && alg != "RS256" {
			return k, fmt.Sprintf("RSA key for alg %q; only RS256 is supported", alg), nil
		}
		n, err := b64("n")
		if err != nil {
			return k, "", err
		}
		e, err := b64("e")
		if err != nil {
			return k, "", err
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n)}
		eb := new(big.Int).SetBytes(e)
		if !eb.IsInt64() || eb.Int64() < 3 || eb.Int64() > 1<<31-1 || eb.Bit(0) == 0 {
			return k, "", fmt.Errorf("RSA exponent %v is not a usable public exponent", eb)
		}
		pub.E = int(eb.Int64())
		if pub.N.BitLen() < 2048 {
			return k, "", fmt.Errorf("RSA key of %d bits; at least 2048 are required", pub.N.BitLen())
		}
		k.alg, k.rsa = "RS256", pub
	case "EC":
		crv, err := str("crv")
		if err != nil {
			return k, "", err
		}
		if crv != "P-256" || (alg != "" && alg != "ES256") {
			return k, fmt.Sprintf("EC key on curve %q for alg %q; only P-256 with ES256 is supported", crv, alg), nil
		}
		x, err := b64("x")
		if err != nil {
			return k, "", err
		}
		y, err := b64("y")
		if err != nil {
			return k, "", err
		}
		if len(x) != 32 || len(y) != 32 {
			return k, "", fmt.Errorf("P-256 coordinates must be 32 bytes each, got %d and %d", len(x), len(y))
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return k, "", fmt.Errorf("EC key: %w", err)
		}
		k.alg, k.ec = "ES256", pub
	default:
		return k, fmt.Sprintf("key type %q is not supported (only RSA and EC P-256)", kty), nil
	}
	return k, "", nil
}

var _ Authenticator = (*K8sTokenAuthenticator)(nil)

// K8sTokenAuthenticator accepts Kubernetes ServiceAccount tokens (JWTs
// signed RS256 or ES256 by the cluster's ServiceAccount issuer) as proof
// of the identity spiffe://<TrustDomain>/ns/<namespace>/sa/<account>
// named by the token's subject system:serviceaccount:<namespace>:<account>.
// It checks the signature against the issuer's public keys, iss, aud,
// exp, nbf and iat; it never accepts alg "none" or HMAC algorithms.
// The identity the service itself presents (ServiceID) is never granted.
//
// Set the fields before the first Authenticate and do not copy the value
// afterwards. It is safe for concurrent use.
type K8sTokenAuthenticator struct {
	// Issuer must equal the token's iss claim exactly: the API server's
	// --service-account-issuer, e.g.
	// https://kubernetes.default.svc.cluster.local. Required.
	Issuer string
	// Audience must be one of the token's aud values. Empty means
	// DefaultK8sAudience ("meshproxy").
	Audience string
	// Keys are the issuer's public keys. Used when KeysFile is empty.
	Keys *JWKS
	// KeysFile is a JWKS file to take the keys from instead of Keys. It
	// is read on first use and again whenever its modification time,
	// size or inode changes (a refreshed ConfigMap), so rotated keys are
	// picked up without a restart. If a re-read fails, the last good keys
	// stay in use and the failure is logged.
	KeysFile string
	// TrustDomain is the trust domain of the identities granted. Empty
	// means DefaultTrustDomain.
	TrustDomain string
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Leeway is the clock skew tolerated on exp, nbf and iat. Zero means
	// DefaultK8sLeeway; negative means none.
	Leeway time.Duration
	// Log receives warnings about KeysFile. Nil means slog.Default().
	Log *slog.Logger

	mu       sync.Mutex
	fileKeys *JWKS
	fileInfo os.FileInfo // of the file fileKeys came from
	badInfo  os.FileInfo // of the last file version that failed to load
	badErr   error       // why badInfo failed
	warned   string      // last warning logged, to log each problem once
}

// k8sClaims is the part of a ServiceAccount token's payload we read.
type k8sClaims struct {
	Issuer     string       `json:"iss"`
	Subject    string       `json:"sub"`
	Audience   audience     `json:"aud"`
	Expiry     *numericDate `json:"exp"`
	NotBefore  *numericDate `json:"nbf"`
	IssuedAt   *numericDate `json:"iat"`
	Kubernetes *struct {
		Namespace      string `json:"namespace"`
		ServiceAccount *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"serviceaccount"`
		Pod *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

// audience is the aud claim: a string or an array of strings.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud is neither a string nor an array of strings")
	}
	*a = many
	return nil
}

// numericDate is a JWT time: seconds since the epoch, possibly fractional.
type numericDate struct{ time.Time }

func (d *numericDate) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || f < 0 || f > 1e11 {
		return fmt.Errorf("time %s is not a number of seconds since 1970", b)
	}
	sec := int64(f)
	d.Time = time.Unix(sec, int64((f-float64(sec))*1e9))
	return nil
}

// jwsHeader is the protected header of the token.
type jwsHeader struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

var b64url = base64.RawURLEncoding.Strict()

// Authenticate implements Authenticator.
func (a *K8sTokenAuthenticator) Authenticate(_ context.Context, token string, want ID) error {
	claims, err := a.verify(strings.TrimSpace(token))
	if err != nil {
		return err
	}
	if err := a.checkClaims(claims); err != nil {
		return err
	}
	id, err := a.subjectID(claims)
	if err != nil {
		return err
	}
	if id == ServiceID(id.TrustDomain) {
		return k8sErr(ErrTokenIdentity, "%s is the identity service's own identity, which ServiceAccount tokens never obtain", id)
	}
	if id != want {
		return k8sErr(ErrTokenIdentity, "token is for %s (ServiceAccount %s/%s), not %s", id, id.Namespace, id.ServiceAccount, want)
	}
	return nil
}

// verify parses the compact JWS and checks its signature; it returns the
// decoded claims.
func (a *K8sTokenAuthenticator) verify(token string) (*k8sClaims, error) {
	if strings.HasPrefix(token, tokenPrefix) {
		return nil, k8sErr(ErrTokenMalformed, "this is a meshproxy join token, not a ServiceAccount token")
	}
	if len(token) > maxTokenLen {
		return nil, k8sErr(ErrTokenMalformed, "%d bytes long, more than the %d allowed", len(token), maxTokenLen)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, k8sErr(ErrTokenMalformed, "want a JWT <header>.<payload>.<signature>, got %d dot-separated parts", len(parts))
	}
	headerJSON, err := b64url.DecodeString(parts[0])
	if err != nil {
		return nil, k8sErr(ErrTokenMalformed, "header is not base64url")
	}
	var h jwsHeader
	if err := json.Unmarshal(headerJSON, &h); err != nil {
		return nil, k8sErr(ErrTokenMalformed, "header is not a JSON object: %v", err)
	}
	switch {
	case h.Alg == "RS256" || h.Alg == "ES256":
	case h.Alg == "" || strings.EqualFold(h.Alg, "none"):
		return nil, k8sErr(ErrTokenSignature, "alg %q: unsigned tokens are never accepted", h.Alg)
	case strings.HasPrefix(strings.ToUpper(h.Alg), "HS"):
		return nil, k8sErr(ErrTokenSignature, "alg %q: HMAC is refused (the issuer's keys are public, not shared secrets)", h.Alg)
	default:
		return nil, k8sErr(ErrTokenSignature, "alg %q is not supported (only RS256 and ES256)", h.Alg)
	}
	if len(h.Crit) > 0 {
		return nil, k8sErr(ErrTokenMalformed, "header lists critical extensions %s, which are not understood", h.Crit)
	}
	sig, err := b64url.DecodeString(parts[2])
	if err != nil {
		return nil, k8sErr(ErrTokenMalformed, "signature is not base64url")
	}
	keys, err := a.keys()
	if err != nil {
		return nil, k8sErr(ErrTokenSignature, "%v", err)
	}
	if err := keys.verify(h, []byte(parts[0]+"."+parts[1]), sig); err != nil {
		return nil, err
	}
	payload, err := b64url.DecodeString(parts[1])
	if err != nil {
		return nil, k8sErr(ErrTokenMalformed, "payload is not base64url")
	}
	var c k8sClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, k8sErr(ErrTokenMalformed, "claims: %v", err)
	}
	return &c, nil
}

// verify checks sig over signed with the key h names (or, without a kid,
// with each key of h.Alg in turn).
func (s *JWKS) verify(h jwsHeader, signed, sig []byte) error {
	var candidates []jwk
	for _, k := range s.keys {
		if h.Kid == "" || k.kid == h.Kid {
			candidates = append(candidates, k)
		}
	}
	if len(candidates) == 0 {
		if why, ok := s.skipped[h.Kid]; ok {
			return k8sErr(ErrTokenSignature, "signing key %q cannot be used: %s", h.Kid, why)
		}
		return k8sErr(ErrTokenSignature, "signing key %q is not in the JWKS (another cluster, or rotated keys: refresh the JWKS)", h.Kid)
	}
	sum := sha256.Sum256(signed)
	tried := 0
	for _, k := range candidates {
		if k.alg != h.Alg {
			continue
		}
		tried++
		switch {
		case k.rsa != nil:
			if rsa.VerifyPKCS1v15(k.rsa, crypto.SHA256, sum[:], sig) == nil {
				return nil
			}
		case k.ec != nil:
			if len(sig) == 64 {
				r := new(big.Int).SetBytes(sig[:32])
				ss := new(big.Int).SetBytes(sig[32:])
				if ecdsa.Verify(k.ec, sum[:], r, ss) {
					return nil
				}
			}
		}
	}
	if tried == 0 {
		return k8sErr(ErrTokenSignature, "token says alg %s but key %q is %s", h.Alg, h.Kid, candidates[0].alg)
	}
	if h.Kid == "" {
		return k8sErr(ErrTokenSignature, "signature does not verify with any of the %d %s keys (altered, or signed by another issuer)", tried, h.Alg)
	}
	return k8sErr(ErrTokenSignature, "signature does not verify with key %q (altered, or signed by another issuer)", h.Kid)
}

// checkClaims checks iss, aud and the validity period.
func (a *K8sTokenAuthenticator) checkClaims(c *k8sClaims) error {
	switch {
	case c.Issuer == "":
		return k8sErr(ErrTokenMalformed, "no iss claim")
	case c.Subject == "":
		return k8sErr(ErrTokenMalformed, "no sub claim")
	case len(c.Audience) == 0:
		return k8sErr(ErrTokenMalformed, "no aud claim")
	case c.Expiry == nil:
		return k8sErr(ErrTokenMalformed, "no exp claim (legacy Secret-based tokens never expire and are not accepted; use a projected token)")
	}
	if a.Issuer == "" {
		return k8sErr(ErrTokenIssuer, "no issuer configured on the identity service (--k8s-issuer)")
	}
	if c.Issuer != a.Issuer {
		return k8sErr(ErrTokenIssuer, "issued by %q, but this service trusts %q (check --k8s-issuer against the cluster's /.well-known/openid-configuration)", c.Issuer, a.Issuer)
	}
	aud := a.Audience
	if aud == "" {
		aud = DefaultK8sAudience
	}
	found := false
	for _, v := range c.Audience {
		found = found || v == aud
	}
	if !found {
		return k8sErr(ErrTokenAudience, "audience %q does not include %q (project the token with audience: %s)", []string(c.Audience), aud, aud)
	}
	now := time.Now()
	if a.Now != nil {
		now = a.Now()
	}
	leeway := a.Leeway
	if leeway == 0 {
		leeway = DefaultK8sLeeway
	} else if leeway < 0 {
		leeway = 0
	}
	if !now.Before(c.Expiry.Add(leeway)) {
		return k8sErr(ErrTokenExpired, "expired at %s (the kubelet refreshes projected tokens; a stale copy was sent)", c.Expiry.UTC().Format(time.RFC3339))
	}
	if c.NotBefore != nil && now.Add(leeway).Before(c.NotBefore.Time) {
		return k8sErr(ErrTokenNotYetValid, "not valid before %s (clocks out of sync?)", c.NotBefore.UTC().Format(time.RFC3339))
	}
	if c.IssuedAt != nil && now.Add(leeway).Before(c.IssuedAt.Time) {
		return k8sErr(ErrTokenNotYetValid, "issued in the future, at %s (clocks out of sync?)", c.IssuedAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// subjectID maps sub (and the kubernetes.io claim, when present) to the
// SPIFFE ID the token proves.
func (a *K8sTokenAuthenticator) subjectID(c *k8sClaims) (ID, error) {
	f := strings.Split(c.Subject, ":")
	if len(f) != 4 || f[0] != "system" || f[1] != "serviceaccount" {
		return ID{}, k8sErr(ErrTokenIdentity, "subject %q is not a ServiceAccount (want system:serviceaccount:<namespace>:<name>)", c.Subject)
	}
	td := a.TrustDomain
	if td == "" {
		td = DefaultTrustDomain
	}
	id := ID{TrustDomain: td, Namespace: f[2], ServiceAccount: f[3]}
	if err := id.Validate(); err != nil {
		return ID{}, k8sErr(ErrTokenMalformed, "subject %q: %v", c.Subject, err)
	}
	if k := c.Kubernetes; k != nil {
		if k.Namespace != "" && k.Namespace != id.Namespace {
			return ID{}, k8sErr(ErrTokenMalformed, "subject %q disagrees with kubernetes.io namespace %q", c.Subject, k.Namespace)
		}
		if k.ServiceAccount != nil && k.ServiceAccount.Name != "" && k.ServiceAccount.Name != id.ServiceAccount {
			return ID{}, k8sErr(ErrTokenMalformed, "subject %q disagrees with kubernetes.io serviceaccount %q", c.Subject, k.ServiceAccount.Name)
		}
	}
	return id, nil
}

// keys returns Keys, or the current contents of KeysFile.
func (a *K8sTokenAuthenticator) keys() (*JWKS, error) {
	if a.KeysFile == "" {
		if a.Keys == nil || a.Keys.Len() == 0 {
			return nil, errors.New("no issuer keys configured on the identity service (--k8s-jwks)")
		}
		return a.Keys, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	fi, err := os.Stat(a.KeysFile)
	switch {
	case err != nil:
		err = fmt.Errorf("reading JWKS: %w", err)
	case sameVersion(fi, a.fileInfo):
		return a.fileKeys, nil
	case sameVersion(fi, a.badInfo):
		err = a.badErr // unchanged since it failed: do not parse it again
	default:
		var keys *JWKS
		if keys, err = LoadJWKS(a.KeysFile); err == nil {
			if a.fileKeys != nil {
				a.log().Info("JWKS file reloaded", "file", a.KeysFile, "kids", strings.Join(keys.KeyIDs(), ","))
			}
			a.fileKeys, a.fileInfo, a.badInfo, a.badErr, a.warned = keys, fi, nil, nil, ""
			return keys, nil
		}
		a.badInfo, a.badErr = fi, err
	}
	if a.fileKeys == nil {
		return nil, fmt.Errorf("issuer keys unavailable: %w", err)
	}
	if msg := err.Error(); msg != a.warned {
		a.log().Warn("JWKS file cannot be used; keeping the previous keys", "file", a.KeysFile, "err", err)
		a.warned = msg
	}
	return a.fileKeys, nil
}

func (a *K8sTokenAuthenticator) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

// sameVersion reports whether a and b describe the same version of a file.
func sameVersion(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

// AnyAuthenticator returns an Authenticator that accepts a credential if
// any of auths accepts it, trying them in order. When all refuse, the
// error comes from the ones that recognised the credential's shape: a
// refusal wrapping ErrTokenMalformed (say, the ServiceAccount check
// looking at a join token) is dropped when another authenticator gave a
// more specific reason. Several remaining reasons are listed together,
// and errors.Is sees each of them.
func AnyAuthenticator(auths ...Authenticator) Authenticator {
	return anyAuthenticator(auths)
}

type anyAuthenticator []Authenticator

func (as anyAuthenticator) Authenticate(ctx context.Context, credential string, want ID) error {
	if len(as) == 0 {
		return errors.New("no credential checks are configured")
	}
	var all, specific []error
	for _, a := range as {
		err := a.Authenticate(ctx, credential, want)
		if err == nil {
			return nil
		}
		all = append(all, err)
		if !errors.Is(err, ErrTokenMalformed) {
			specific = append(specific, err)
		}
	}
	if len(specific) == 0 {
		specific = all
	}
	if len(specific) == 1 {
		return specific[0]
	}
	return allRefused(specific)
}

// allRefused is the refusals of several authenticators.
type allRefused []error

func (e allRefused) Error() string {
	var b bytes.Buffer
	b.WriteString("credential refused by every check: ")
	for i, err := range e {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e allRefused) Unwrap() []error { return e }
