package identity

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Request is what a Source needs to issue a certificate.
type Request struct {
	// ID is the identity asked for; the CSR's URI SAN must equal it.
	ID ID
	// CSR is the DER of the certificate signing request.
	CSR []byte
	// TTL is the wanted lifetime; zero means the source's default (24h).
	TTL time.Duration
	// Current is the certificate currently held for ID, or nil. A remote
	// source presents it as a client certificate so that renewal works
	// after the join token has expired.
	Current *tls.Certificate
}

// Source issues certificates from CSRs. A Manager fetches through one.
type Source interface {
	// Issue returns the certificate chain for req, leaf first.
	Issue(ctx context.Context, req *Request) ([]*x509.Certificate, error)
}

var (
	_ Source = (*LocalSource)(nil)
	_ Source = (*Client)(nil)
)

// LocalSource signs with a CA held by this process (the "identity-dir"
// single-host setup). It trusts its caller: the process owns the CA key.
type LocalSource struct {
	// CA signs the requests. Required.
	CA *CA
}

// Issue implements Source.
func (s *LocalSource) Issue(_ context.Context, req *Request) ([]*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("local CA: parsing CSR: %w", err)
	}
	return s.CA.Sign(csr, req.ID, req.TTL)
}

// Client fetches certificates from a remote identity service (see Service)
// over TLS, verifying the service's certificate against Anchors. It
// authenticates with the current certificate when it has one, else with
// the join token.
type Client struct {
	// Addr is the service's host:port. Required.
	Addr string
	// Anchors are the trust anchors the service's certificate must chain
	// to (the "trust-anchors" bundle). Required.
	Anchors []*x509.Certificate
	// ServerID is the identity the service must present. Nil means
	// ServiceID(trust domain of the requested identity).
	ServerID *ID
	// Token is the join token. If empty, TokenFile is read on every
	// request (so a refreshed token file is picked up). Both may be empty
	// when renewing with a current certificate.
	Token string
	// TokenFile is a file holding the join token; used when Token is empty.
	// A renewal that holds an unexpired certificate goes on without a token
	// when the file cannot be read (say, removed after joining).
	TokenFile string
	// Timeout bounds one request. Zero means 10s; negative means none
	// beyond the context's.
	Timeout time.Duration
}

// CertificatePath is the identity service's endpoint: POST a JSON
// {"csr": "<PEM>", "token": "...", "ttl_seconds": N} and receive
// {"chain": "<PEM leaf then issuer>"} or {"error": "<reason>"}.
const CertificatePath = "/v1/certificate"

type signRequest struct {
	CSR        string `json:"csr"`
	Token      string `json:"token,omitempty"`
	TTLSeconds int64  `json:"ttl_seconds,omitempty"`
}

type signResponse struct {
	Chain string `json:"chain,omitempty"`
	Error string `json:"error,omitempty"`
}

func (c *Client) token() (string, error) {
	if c.Token != "" {
		return c.Token, nil
	}
	if c.TokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("reading join token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Issue implements Source: it POSTs the CSR to the service.
func (c *Client) Issue(ctx context.Context, req *Request) ([]*x509.Certificate, error) {
	verifier, err := NewVerifier(c.Anchors, req.ID.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity client: %w", err)
	}
	want := ServiceID(req.ID.TrustDomain)
	if c.ServerID != nil {
		want = *c.ServerID
	}
	tok, err := c.token()
	if err != nil {
		// A valid current certificate is credential enough (renewal): a
		// token file removed or unreadable after joining must not stop it.
		if req.Current == nil || req.Current.Leaf == nil || !time.Now().Before(req.Current.Leaf.NotAfter) {
			return nil, fmt.Errorf("identity client: %w", err)
		}
		tok = ""
	}
	if tok == "" && req.Current == nil {
		return nil, errors.New("identity client: no join token and no current certificate: set the token (meshproxy ca token) or token file")
	}
	current := req.Current
	tlsConf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified in VerifyConnection against the anchors and service identity
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := verifier.Verify(cs.PeerCertificates, &want, x509.ExtKeyUsageServerAuth); err != nil {
				return fmt.Errorf("identity service at %s is not trusted: %w", c.Addr, err)
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if current == nil {
				return &tls.Certificate{}, nil
			}
			return current, nil
		},
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	body, _ := json.Marshal(signRequest{
		CSR:        string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR})),
		Token:      tok,
		TTLSeconds: int64(req.TTL / time.Second),
	})
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+c.Addr+CertificatePath, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("identity client: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	tr := &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true, Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("identity client: contacting %s: %w", c.Addr, err)
	}
	defer resp.Body.Close()
	var out signResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("identity client: reading reply from %s (HTTP %d): %w", c.Addr, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &ServiceError{Status: resp.StatusCode, Reason: out.Error}
	}
	chain, err := ParseCerts([]byte(out.Chain))
	if err != nil {
		return nil, fmt.Errorf("identity client: reply from %s: %w", c.Addr, err)
	}
	return chain, nil
}

// Obtain makes a fresh P-256 key in memory, sends a CSR for id through src,
// checks that the returned leaf carries id and the new key, and returns the
// result as a tls.Certificate with Leaf set. ttl and current are passed on
// as in Request.
func Obtain(ctx context.Context, src Source, id ID, ttl time.Duration, current *tls.Certificate) (*tls.Certificate, error) {
	key, csr, err := NewCSR(id)
	if err != nil {
		return nil, err
	}
	chain, err := src.Issue(ctx, &Request{ID: id, CSR: csr, TTL: ttl, Current: current})
	if err != nil {
		return nil, err
	}
	if len(chain) == 0 {
		return nil, errors.New("obtain: source returned an empty chain")
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("obtain: issued certificate does not hold the key we sent")
	}
	got, err := IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("obtain: issued certificate: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("obtain: issued certificate is for %s, asked for %s", got, id)
	}
	return tlsCert(key, chain), nil
}
