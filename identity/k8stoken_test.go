package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testIssuer = "https://kubernetes.default.svc.cluster.local"

// testKeys are the "cluster's" ServiceAccount signing keys: RSA-2048 made
// once per test binary (slow to generate), and a P-256 key.
var testKeys = sync.OnceValue(func() struct {
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
} {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	e, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return struct {
		rsa *rsa.PrivateKey
		ec  *ecdsa.PrivateKey
	}{r, e}
})

// kidOf computes a kid as the API server does: base64url(SHA-256(PKIX DER)).
func kidOf(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// jwkOf renders pub as a JWKS entry the way /openid/v1/jwks does.
func jwkOf(t testing.TB, pub crypto.PublicKey, kid string) map[string]any {
	t.Helper()
	b := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *rsa.PublicKey:
		e := big2bytes(int64(k.E))
		return map[string]any{"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": b(k.N.Bytes()), "e": b(e)}
	case *ecdsa.PublicKey:
		raw, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		size := (len(raw) - 1) / 2
		crv, alg := "P-256", "ES256"
		if k.Curve == elliptic.P384() {
			crv, alg = "P-384", "ES384"
		}
		return map[string]any{"use": "sig", "kty": "EC", "kid": kid, "crv": crv, "alg": alg, "x": b(raw[1 : 1+size]), "y": b(raw[1+size:])}
	}
	t.Fatalf("no JWK for %T", pub)
	return nil
}

func big2bytes(v int64) []byte {
	var out []byte
	for ; v > 0; v >>= 8 {
		out = append([]byte{byte(v)}, out...)
	}
	return out
}

func jwksJSON(t testing.TB, keys ...map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// saClaims are the claims of a projected ServiceAccount token as the
// kubelet requests them (audience meshproxy, one hour).
func saClaims(ns, sa string, now time.Time) map[string]any {
	return map[string]any{
		"aud": []string{"meshproxy"},
		"exp": now.Add(time.Hour).Unix(),
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"iss": testIssuer,
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"kubernetes.io": map[string]any{
			"namespace": ns,
			"node":      map[string]any{"name": "node-1", "uid": "5d1c6a47-0d55-4f5e-9c43-2b0fb2c1a9e1"},
			"pod":       map[string]any{"name": sa + "-7d9c8b6f5-x2k4q", "uid": "0b6f3c1e-9a44-4a57-8f0e-6c2d9d7c1f30"},
			"serviceaccount": map[string]any{
				"name": sa, "uid": "c5b1b8a2-3e0d-4b8e-9f67-1a2b3c4d5e6f",
			},
			"warnafter": now.Add(45 * time.Minute).Unix(),
		},
	}
}

// signJWT makes a compact JWS. key is an *rsa.PrivateKey (RS256), an
// *ecdsa.PrivateKey (ES256, raw r||s), a []byte (HMAC-SHA256) or nil (no
// signature).
func signJWT(t testing.TB, header, claims map[string]any, key any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(header) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signed))
	var sig []byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:]); err != nil {
			t.Fatal(err)
		}
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		sig = make([]byte, 2*size)
		r.FillBytes(sig[:size])
		s.FillBytes(sig[size:])
	case []byte:
		m := hmac.New(sha256.New, k)
		m.Write([]byte(signed))
		sig = m.Sum(nil)
	case nil:
	default:
		t.Fatalf("signJWT: key %T", key)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// k8sFixture is a cluster: its keys as a JWKS and an authenticator for it.
type k8sFixture struct {
	rsaKid, ecKid string
	jwks          []byte
	auth          *K8sTokenAuthenticator
}

func newK8sFixture(t testing.TB) *k8sFixture {
	t.Helper()
	k := testKeys()
	f := &k8sFixture{rsaKid: kidOf(t, &k.rsa.PublicKey), ecKid: kidOf(t, &k.ec.PublicKey)}
	f.jwks = jwksJSON(t, jwkOf(t, &k.rsa.PublicKey, f.rsaKid), jwkOf(t, &k.ec.PublicKey, f.ecKid))
	keys, err := ParseJWKS(f.jwks)
	if err != nil {
		t.Fatal(err)
	}
	if keys.Len() != 2 {
		t.Fatalf("JWKS has %d usable keys; want 2", keys.Len())
	}
	f.auth = &K8sTokenAuthenticator{Issuer: testIssuer, Keys: keys}
	return f
}

func (f *k8sFixture) rs256(t testing.TB, claims map[string]any) string {
	return signJWT(t, map[string]any{"alg": "RS256", "kid": f.rsaKid}, claims, testKeys().rsa)
}

func (f *k8sFixture) es256(t testing.TB, claims map[string]any) string {
	return signJWT(t, map[string]any{"alg": "ES256", "kid": f.ecKid}, claims, testKeys().ec)
}

// with returns claims with key set to v (or deleted when v is nil).
func with(claims map[string]any, key string, v any) map[string]any {
	c := make(map[string]any, len(claims))
	for k, x := range claims {
		c[k] = x
	}
	if v == nil {
		delete(c, key)
	} else {
		c[key] = v
	}
	return c
}

func TestK8sToken(t *testing.T) {
	f := newK8sFixture(t)
	now := time.Now()
	web := MustParseID("spiffe://cluster.local/ns/shop/sa/web")
	db := MustParseID("spiffe://cluster.local/ns/shop/sa/db")
	good := saClaims("shop", "web", now)
	k := testKeys()

	// Payload swapped for one naming db, keeping web's signature.
	webTok := f.rs256(t, good)
	parts := strings.Split(webTok, ".")
	dbPayload := strings.Split(f.rs256(t, saClaims("shop", "db", now)), ".")[1]
	tamperedPayload := parts[0] + "." + dbPayload + "." + parts[2]
	// One bit of the signature flipped.
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[len(sig)/2] ^= 0x01
	tamperedSig := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	// The classic confusion: HS256 keyed with the (public) RSA key.
	pubDER, _ := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	// ES256 signed in ASN.1 DER form instead of JOSE r||s.
	esParts := strings.Split(f.es256(t, good), ".")
	sum := sha256.Sum256([]byte(esParts[0] + "." + esParts[1]))
	der, _ := ecdsa.SignASN1(rand.Reader, k.ec, sum[:])
	esDER := esParts[0] + "." + esParts[1] + "." + base64.RawURLEncoding.EncodeToString(der)
	joinCA := mustCA(t, "")
	joinTok, _ := joinCA.IssueToken(web, time.Hour)

	tests := []struct {
		name  string
		token string
		want  ID
		err   error // nil: accepted
	}{
		{"RS256 projected token", webTok, web, nil},
		{"ES256 projected token", f.es256(t, good), web, nil},
		{"aud as a string", f.rs256(t, with(good, "aud", "meshproxy")), web, nil},
		{"aud among several", f.rs256(t, with(good, "aud", []string{"vault", "meshproxy"})), web, nil},
		{"no kid, RSA among several keys", signJWT(t, map[string]any{"alg": "RS256"}, good, k.rsa), web, nil},
		{"no kid, EC among several keys", signJWT(t, map[string]any{"alg": "ES256"}, good, k.ec), web, nil},
		{"no kubernetes.io claim", f.rs256(t, with(good, "kubernetes.io", nil)), web, nil},
		{"expired within leeway", f.rs256(t, with(good, "exp", now.Add(-10*time.Second).Unix())), web, nil},
		{"whitespace around", "\n" + webTok + "\n", web, nil},

		{"for another identity", webTok, db, ErrTokenIdentity},
		{"another trust domain", webTok, MustParseID("spiffe://other.test/ns/shop/sa/web"), ErrTokenIdentity},
		{"not a ServiceAccount", f.rs256(t, with(good, "sub", "system:node:node-1")), web, ErrTokenIdentity},
		{"the identity service's own ID", f.rs256(t, saClaims("meshproxy", "identity", now)), ServiceID("cluster.local"), ErrTokenIdentity},
		{"wrong audience", f.rs256(t, with(good, "aud", []string{"https://kubernetes.default.svc"})), web, ErrTokenAudience},
		{"wrong issuer", f.rs256(t, with(good, "iss", "https://oidc.other.example")), web, ErrTokenIssuer},
		{"expired", f.rs256(t, with(with(good, "exp", now.Add(-time.Hour).Unix()), "iat", now.Add(-2*time.Hour).Unix())), web, ErrTokenExpired},
		{"not yet valid", f.rs256(t, with(good, "nbf", now.Add(time.Hour).Unix())), web, ErrTokenNotYetValid},
		{"issued in the future", f.rs256(t, with(good, "iat", now.Add(time.Hour).Unix())), web, ErrTokenNotYetValid},
		{"tampered payload", tamperedPayload, db, ErrTokenSignature},
		{"tampered signature", tamperedSig, web, ErrTokenSignature},
		{"alg none", signJWT(t, map[string]any{"alg": "none"}, good, nil), web, ErrTokenSignature},
		{"alg none with kid", signJWT(t, map[string]any{"alg": "none", "kid": f.rsaKid}, good, nil), web, ErrTokenSignature},
		{"HS256 keyed with the public key", signJWT(t, map[string]any{"alg": "HS256", "kid": f.rsaKid}, good, pubPEM), web, ErrTokenSignature},
		{"HS256 keyed with n", signJWT(t, map[string]any{"alg": "HS256"}, good, k.rsa.N.Bytes()), web, ErrTokenSignature},
		{"RS384", signJWT(t, map[string]any{"alg": "RS384", "kid": f.rsaKid}, good, k.rsa), web, ErrTokenSignature},
		{"RS256 header on the EC key", signJWT(t, map[string]any{"alg": "RS256", "kid": f.ecKid}, good, k.rsa), web, ErrTokenSignature},
		{"unknown kid", signJWT(t, map[string]any{"alg": "RS256", "kid": "rotated-away"}, good, k.rsa), web, ErrTokenSignature},
		{"another cluster's key, same kid", signJWT(t, map[string]any{"alg": "RS256", "kid": f.rsaKid}, good, other), web, ErrTokenSignature},
		{"ES256 signature in DER", esDER, web, ErrTokenSignature},
		{"malformed: one part", "eyJhbGciOiJSUzI1NiJ9", web, ErrTokenMalformed},
		{"malformed: empty", "", web, ErrTokenMalformed},
		{"malformed: header not JSON", "bm90IGpzb24." + parts[1] + "." + parts[2], web, ErrTokenMalformed},
		{"malformed: signature not base64url", parts[0] + "." + parts[1] + ".!!!", web, ErrTokenMalformed},
		{"malformed: join token", joinTok, web, ErrTokenMalformed},
		{"malformed: crit header", signJWT(t, map[string]any{"alg": "RS256", "kid": f.rsaKid, "crit": []string{"b64"}, "b64": false}, good, k.rsa), web, ErrTokenMalformed},
		{"missing exp", f.rs256(t, with(good, "exp", nil)), web, ErrTokenMalformed},
		{"missing iss", f.rs256(t, with(good, "iss", nil)), web, ErrTokenMalformed},
		{"missing sub", f.rs256(t, with(good, "sub", nil)), web, ErrTokenMalformed},
		{"missing aud", f.rs256(t, with(good, "aud", nil)), web, ErrTokenMalformed},
		{"exp not a number", f.rs256(t, with(good, "exp", "tomorrow")), web, ErrTokenMalformed},
		{"namespace disagrees with sub", f.rs256(t, with(good, "kubernetes.io", map[string]any{"namespace": "kube-system"})), web, ErrTokenMalformed},
		{"account disagrees with sub", f.rs256(t, with(good, "kubernetes.io", map[string]any{"namespace": "shop", "serviceaccount": map[string]any{"name": "admin"}})), web, ErrTokenMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.auth.Authenticate(t.Context(), tt.token, tt.want)
			if tt.err == nil {
				if err != nil {
					t.Fatalf("refused: %v; want accepted", err)
				}
				return
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v; want one wrapping %q", err, tt.err)
			}
			if !strings.HasPrefix(err.Error(), "ServiceAccount token: ") {
				t.Errorf("err = %q; want it to say it is about a ServiceAccount token", err)
			}
			t.Logf("refused: %v", err)
		})
	}

	// A key verifies only its own algorithm, even when its signature is good.
	lying := signJWT(t, map[string]any{"alg": "ES256", "kid": f.rsaKid}, good, k.rsa)
	if err := f.auth.Authenticate(t.Context(), lying, web); !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "is RS256") {
		t.Errorf("RS256 signature under an ES256 header: err = %v; want ErrTokenSignature saying the key is RS256", err)
	}
}

func TestK8sTokenSettings(t *testing.T) {
	f := newK8sFixture(t)
	now := time.Now()
	good := saClaims("shop", "web", now)
	web := MustParseID("spiffe://cluster.local/ns/shop/sa/web")

	t.Run("trust domain", func(t *testing.T) {
		a := &K8sTokenAuthenticator{Issuer: testIssuer, Keys: f.auth.Keys, TrustDomain: "mesh.test"}
		if err := a.Authenticate(t.Context(), f.rs256(t, good), MustParseID("spiffe://mesh.test/ns/shop/sa/web")); err != nil {
			t.Errorf("refused in trust domain mesh.test: %v", err)
		}
		if err := a.Authenticate(t.Context(), f.rs256(t, good), web); !errors.Is(err, ErrTokenIdentity) {
			t.Errorf("cluster.local ID under trust domain mesh.test: err = %v; want ErrTokenIdentity", err)
		}
	})
	t.Run("audience", func(t *testing.T) {
		a := &K8sTokenAuthenticator{Issuer: testIssuer, Keys: f.auth.Keys, Audience: "mesh-ca"}
		if err := a.Authenticate(t.Context(), f.rs256(t, good), web); !errors.Is(err, ErrTokenAudience) {
			t.Errorf("aud meshproxy with Audience mesh-ca: err = %v; want ErrTokenAudience", err)
		}
		if err := a.Authenticate(t.Context(), f.rs256(t, with(good, "aud", []string{"mesh-ca"})), web); err != nil {
			t.Errorf("aud mesh-ca: %v", err)
		}
	})
	t.Run("clock and leeway", func(t *testing.T) {
		tok := f.rs256(t, good) // valid [now, now+1h]
		for _, c := range []struct {
			name   string
			at     time.Time
			leeway time.Duration
			err    error
		}{
			{"just before nbf, default leeway", now.Add(-20 * time.Second), 0, nil},
			{"before nbf beyond leeway", now.Add(-time.Minute), 0, ErrTokenNotYetValid},
			{"before nbf, no leeway", now.Add(-time.Second), -1, ErrTokenNotYetValid},
			{"just after exp, default leeway", now.Add(time.Hour + 20*time.Second), 0, nil},
			{"at exp, no leeway", now.Add(time.Hour), -1, ErrTokenExpired},
			{"after exp, larger leeway", now.Add(time.Hour + 2*time.Minute), 5 * time.Minute, nil},
		} {
			a := &K8sTokenAuthenticator{Issuer: testIssuer, Keys: f.auth.Keys, Leeway: c.leeway, Now: func() time.Time { return c.at }}
			err := a.Authenticate(t.Context(), tok, web)
			if (c.err == nil) != (err == nil) || (c.err != nil && !errors.Is(err, c.err)) {
				t.Errorf("%s: err = %v; want %v", c.name, err, c.err)
			}
		}
	})
	t.Run("not configured", func(t *testing.T) {
		for name, a := range map[string]*K8sTokenAuthenticator{
			"no keys":   {Issuer: testIssuer},
			"no issuer": {Keys: f.auth.Keys},
		} {
			if err := a.Authenticate(t.Context(), f.rs256(t, good), web); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
	})
}

func TestParseJWKS(t *testing.T) {
	k := testKeys()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsaJWK := jwkOf(t, &k.rsa.PublicKey, "r")
	ecJWK := jwkOf(t, &k.ec.PublicKey, "e")
	with := func(m map[string]any, key string, v any) map[string]any { return with(m, key, v) }

	t.Run("skips what it cannot use", func(t *testing.T) {
		set, err := ParseJWKS(jwksJSON(t, rsaJWK, jwkOf(t, &p384.PublicKey, "p384"),
			with(ecJWK, "use", "enc"), map[string]any{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"}))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(set.KeyIDs(), ","); got != "r" {
			t.Fatalf("usable kids = %q; want r", got)
		}
		// A token signed by the P-384 key says why it is refused.
		a := &K8sTokenAuthenticator{Issuer: testIssuer, Keys: set}
		tok := signJWT(t, map[string]any{"alg": "ES384", "kid": "p384"}, saClaims("shop", "web", time.Now()), p384)
		if err := a.Authenticate(t.Context(), tok, MustParseID("spiffe://cluster.local/ns/shop/sa/web")); !errors.Is(err, ErrTokenSignature) {
			t.Errorf("ES384 token: err = %v; want ErrTokenSignature", err)
		}
		tok = signJWT(t, map[string]any{"alg": "ES256", "kid": "p384"}, saClaims("shop", "web", time.Now()), k.ec)
		err = a.Authenticate(t.Context(), tok, MustParseID("spiffe://cluster.local/ns/shop/sa/web"))
		if !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "P-384") {
			t.Errorf("token naming the P-384 key: err = %v; want ErrTokenSignature saying it is P-384", err)
		}
	})
	bad := []struct {
		name string
		data []byte
		msg  string
	}{
		{"not JSON", []byte("-----BEGIN PUBLIC KEY-----"), "kubectl get --raw /openid/v1/jwks"},
		{"no keys", []byte(`{"keys":[]}`), "no usable"},
		{"only unusable keys", jwksJSON(t, jwkOf(t, &p384.PublicKey, "p384")), "P-384"},
		{"private RSA key", jwksJSON(t, with(rsaJWK, "d", "AAAA")), "private"},
		{"private EC key", jwksJSON(t, with(ecJWK, "d", "AAAA")), "private"},
		{"small RSA key", jwksJSON(t, jwkOf(t, &small.PublicKey, "small")), "2048"},
		{"even exponent", jwksJSON(t, with(rsaJWK, "e", "Ag")), "exponent"},
		{"n not base64url", jwksJSON(t, with(rsaJWK, "n", "+/+/")), "base64url"},
		{"missing x", jwksJSON(t, with(ecJWK, "x", nil)), "missing"},
		{"point off the curve", jwksJSON(t, with(ecJWK, "y", base64.RawURLEncoding.EncodeToString(make([]byte, 32)))), "EC key"},
		{"short coordinate", jwksJSON(t, with(ecJWK, "x", "AAAA")), "32 bytes"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseJWKS(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v; want one mentioning %q", err, tt.msg)
			}
		})
	}
	if _, err := LoadJWKS(filepath.Join(t.TempDir(), "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadJWKS of a missing file: err = %v; want ErrNotExist", err)
	}
}

// TestK8sTokenKeysFile: keys come from the file and follow its changes
// (rotation); a broken rewrite keeps the previous keys.
func TestK8sTokenKeysFile(t *testing.T) {
	k := testKeys()
	next, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	web := MustParseID("spiffe://cluster.local/ns/shop/sa/web")
	claims := saClaims("shop", "web", time.Now())
	oldTok := signJWT(t, map[string]any{"alg": "RS256", "kid": "old"}, claims, k.rsa)
	newTok := signJWT(t, map[string]any{"alg": "ES256", "kid": "new"}, claims, next)

	path := filepath.Join(t.TempDir(), "jwks.json")
	a := &K8sTokenAuthenticator{Issuer: testIssuer, KeysFile: path, Log: quietLog()}
	if err := a.Authenticate(t.Context(), oldTok, web); !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("no file yet: err = %v; want ErrTokenSignature naming the missing file", err)
	}
	mtime := time.Now().Add(-time.Hour)
	write := func(data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		mtime = mtime.Add(time.Minute) // a distinct mtime for every version
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	write(jwksJSON(t, jwkOf(t, &k.rsa.PublicKey, "old")))
	if err := a.Authenticate(t.Context(), oldTok, web); err != nil {
		t.Fatalf("old key: %v", err)
	}
	if err := a.Authenticate(t.Context(), newTok, web); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("new key before rotation: err = %v; want ErrTokenSignature", err)
	}
	// Rotation: both keys published, then only the new one.
	write(jwksJSON(t, jwkOf(t, &k.rsa.PublicKey, "old"), jwkOf(t, &next.PublicKey, "new")))
	for _, tok := range []string{oldTok, newTok} {
		if err := a.Authenticate(t.Context(), tok, web); err != nil {
			t.Fatalf("during rotation: %v", err)
		}
	}
	write(jwksJSON(t, jwkOf(t, &next.PublicKey, "new")))
	if err := a.Authenticate(t.Context(), oldTok, web); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("old key after rotation: err = %v; want ErrTokenSignature", err)
	}
	// A broken rewrite, then the file gone: the last good keys stay.
	write([]byte("{"))
	if err := a.Authenticate(t.Context(), newTok, web); err != nil {
		t.Fatalf("after a broken rewrite: %v; want the previous keys kept", err)
	}
	os.Remove(path)
	if err := a.Authenticate(t.Context(), newTok, web); err != nil {
		t.Fatalf("after the file vanished: %v; want the previous keys kept", err)
	}
}

func TestAnyAuthenticator(t *testing.T) {
	f := newK8sFixture(t)
	ca := mustCA(t, "")
	web := MustParseID("spiffe://cluster.local/ns/shop/sa/web")
	db := MustParseID("spiffe://cluster.local/ns/shop/sa/db")
	joinWeb, _ := ca.IssueToken(web, time.Hour)
	saWeb := f.rs256(t, saClaims("shop", "web", time.Now()))
	saExpired := f.rs256(t, with(saClaims("shop", "web", time.Now()), "exp", time.Now().Add(-time.Hour).Unix()))
	both := AnyAuthenticator(ca.TokenAuthenticator(), f.auth)

	for _, tok := range []string{joinWeb, saWeb} {
		if err := both.Authenticate(t.Context(), tok, web); err != nil {
			t.Errorf("refused: %v", err)
		}
	}
	tests := []struct {
		name        string
		token       string
		want        ID
		err         error
		contains    string
		notContains string
	}{
		{"join token for another identity", joinWeb, db, ErrTokenIdentity, "token is for spiffe://cluster.local/ns/shop/sa/web", "ServiceAccount"},
		{"ServiceAccount token for another identity", saWeb, db, ErrTokenIdentity, "ServiceAccount token: token is for", "join token"},
		{"expired ServiceAccount token", saExpired, web, ErrTokenExpired, "ServiceAccount token: expired", "mpt1"},
		{"garbage", "hello", web, ErrTokenMalformed, "every check", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := both.Authenticate(t.Context(), tt.token, tt.want)
			if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.contains) ||
				(tt.notContains != "" && strings.Contains(err.Error(), tt.notContains)) {
				t.Fatalf("err = %v; want %q containing %q and not %q", err, tt.err, tt.contains, tt.notContains)
			}
		})
	}
	if err := AnyAuthenticator().Authenticate(t.Context(), saWeb, web); err == nil {
		t.Error("an empty AnyAuthenticator accepted a token")
	}
}

// TestServiceK8sToken: through the real identity service over TLS, a
// proxy holding a ServiceAccount token (read from its file, as injected)
// gets a certificate for its ServiceAccount's identity and no other, and
// join tokens keep working beside it.
func TestServiceK8sToken(t *testing.T) {
	f := newK8sFixture(t)
	ca := mustCA(t, "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwksFile, f.jwks, 0o644); err != nil {
		t.Fatal(err)
	}
	k8s := &K8sTokenAuthenticator{Issuer: testIssuer, KeysFile: jwksFile, TrustDomain: ca.TrustDomain(), Log: quietLog()}
	s := NewService(ca, AnyAuthenticator(ca.TokenAuthenticator(), k8s), quietLog())
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() { s.Close(); <-done })
	addr := l.Addr().String()

	web := MustParseID("spiffe://cluster.local/ns/shop/sa/web")
	db := MustParseID("spiffe://cluster.local/ns/shop/sa/db")
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(f.es256(t, saClaims("shop", "web", time.Now()))), 0o600); err != nil {
		t.Fatal(err)
	}
	proxy := &Client{Addr: addr, Anchors: ca.Anchors(), TokenFile: tokFile}
	cert, err := Obtain(t.Context(), proxy, web, time.Hour, nil)
	if err != nil {
		t.Fatalf("ServiceAccount token: %v", err)
	}
	if got, _ := IDFromCert(cert.Leaf); got != web {
		t.Errorf("issued for %v; want %v", got, web)
	}
	var chain []*x509.Certificate
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	v, _ := NewVerifier(ca.Anchors(), ca.TrustDomain())
	if _, err := v.Verify(chain, &web, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("issued certificate does not verify as %v: %v", web, err)
	}

	refusals := []struct {
		name   string
		token  string
		id     ID
		status int
		reason string
	}{
		{"web's token, CSR for db", "", db, http.StatusForbidden, "token is for spiffe://cluster.local/ns/shop/sa/web (ServiceAccount shop/web), not spiffe://cluster.local/ns/shop/sa/db"},
		{"expired", f.rs256(t, with(saClaims("shop", "web", time.Now()), "exp", time.Now().Add(-time.Hour).Unix())), web, http.StatusUnauthorized, "expired"},
		{"wrong audience", f.rs256(t, with(saClaims("shop", "web", time.Now()), "aud", []string{"vault"})), web, http.StatusUnauthorized, "audience"},
		{"alg none", signJWT(t, map[string]any{"alg": "none"}, saClaims("shop", "web", time.Now()), nil), web, http.StatusUnauthorized, "unsigned"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			c := &Client{Addr: addr, Anchors: ca.Anchors(), Token: tt.token, TokenFile: tokFile}
			_, err := Obtain(t.Context(), c, tt.id, 0, nil)
			var se *ServiceError
			if !errors.As(err, &se) || se.Status != tt.status || !strings.Contains(se.Reason, tt.reason) {
				t.Fatalf("err = %v; want HTTP %d containing %q", err, tt.status, tt.reason)
			}
		})
	}

	// Join tokens still work with both authenticators configured.
	join, _ := ca.IssueToken(db, time.Hour)
	if _, err := Obtain(t.Context(), &Client{Addr: addr, Anchors: ca.Anchors(), Token: join}, db, 0, nil); err != nil {
		t.Errorf("join token beside ServiceAccount tokens: %v", err)
	}
	joinWeb, _ := ca.IssueToken(web, time.Hour)
	_, err = Obtain(t.Context(), &Client{Addr: addr, Anchors: ca.Anchors(), Token: joinWeb}, db, 0, nil)
	var se *ServiceError
	if !errors.As(err, &se) || se.Status != http.StatusForbidden || strings.Contains(se.Reason, "ServiceAccount") {
		t.Errorf("join token for web, CSR for db: err = %v; want 403 about the join token only", err)
	}
}
