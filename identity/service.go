package identity

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Service is the identity service: HTTPS (TLS 1.3, with a certificate the
// CA issues for ServiceID(trust domain)) on CertificatePath. A caller
// POSTs a CSR and a credential; the service signs only when the CSR's
// signature verifies and either
//   - the credential is accepted by the Authenticator for exactly the
//     identity in the CSR's URI SAN, or
//   - the caller presents, as TLS client certificate, a valid certificate
//     of this mesh for that same identity (renewal).
//
// Refusals carry a clear reason: 400 bad request or CSR, 401 missing or
// invalid credential, 403 credential for another identity.
type Service struct {
	ca       *CA
	auth     Authenticator
	log      *slog.Logger
	verifier *Verifier

	// MaxTTL caps the lifetime a caller may ask for. Zero means
	// DefaultLeafTTL. Set it before Serve.
	MaxTTL time.Duration

	srv       *http.Server
	closeOnce sync.Once
	closeErr  error

	certMu sync.Mutex
	cert   *tls.Certificate
}

// NewService returns a Service signing with ca and checking credentials
// with auth (nil means ca.TokenAuthenticator()), logging to log (nil means
// slog.Default()).
func NewService(ca *CA, auth Authenticator, log *slog.Logger) *Service {
	if auth == nil {
		auth = ca.TokenAuthenticator()
	}
	if log == nil {
		log = slog.Default()
	}
	v, err := NewVerifier(ca.Anchors(), ca.TrustDomain())
	if err != nil {
		panic("identity: CA without anchors: " + err.Error()) // a CA always has anchors
	}
	s := &Service{ca: ca, auth: auth, log: log, verifier: v}
	s.srv = &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s
}

// TLSConfig returns the service's server TLS config: TLS 1.3, its own
// certificate (renewed on demand at 70% of its life), and an optional
// client certificate that the handler verifies itself.
func (s *Service) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.serviceCert() },
		ClientAuth:     tls.RequestClientCert,
	}
}

func (s *Service) serviceCert() (*tls.Certificate, error) {
	s.certMu.Lock()
	defer s.certMu.Unlock()
	now := time.Now()
	if c := s.cert; c != nil {
		life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore.Add(clockSkew))
		if now.Before(c.Leaf.NotBefore.Add(clockSkew).Add(time.Duration(float64(life) * renewFraction))) {
			return c, nil
		}
	}
	c, err := s.ca.Issue(ServiceID(s.ca.TrustDomain()), DefaultLeafTTL)
	if err != nil {
		// The handshake's own error only reaches the debug log.
		s.log.Error("identity service cannot issue its own certificate: TLS handshakes fail", "err", err)
		return nil, fmt.Errorf("identity service: issuing own certificate: %w", err)
	}
	s.cert = c
	return c, nil
}

// Serve accepts TLS connections on l until Close. It returns nil after
// Close, or the error that stopped it.
func (s *Service) Serve(l net.Listener) error {
	s.log.Info("identity service listening", "addr", l.Addr().String(), "trust_domain", s.ca.TrustDomain())
	err := s.srv.Serve(tls.NewListener(l, s.srv.TLSConfig))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("identity service: %w", err)
}

// Close stops the service and closes its connections. It is safe to call
// more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.srv.Close() })
	return s.closeErr
}

// Handler returns the HTTP handler serving CertificatePath. Renewal by
// client certificate needs the request to have come over TLS.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+CertificatePath, s.handleSign)
	return mux
}

func (s *Service) handleSign(w http.ResponseWriter, r *http.Request) {
	var req signRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		s.refuse(w, r, http.StatusBadRequest, ID{}, fmt.Sprintf("request body is not the expected JSON: %v", err))
		return
	}
	block, _ := pem.Decode([]byte(req.CSR))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		s.refuse(w, r, http.StatusBadRequest, ID{}, "csr is not a PEM CERTIFICATE REQUEST")
		return
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		s.refuse(w, r, http.StatusBadRequest, ID{}, fmt.Sprintf("parsing CSR: %v", err))
		return
	}
	// The key type before the signature: the cost of checking an RSA
	// signature grows with a modulus the sender chooses.
	if _, err := csrKey(csr); err != nil {
		s.refuse(w, r, http.StatusBadRequest, ID{}, err.Error())
		return
	}
	if err := csr.CheckSignature(); err != nil {
		s.refuse(w, r, http.StatusBadRequest, ID{}, fmt.Sprintf("CSR signature does not verify: %v", err))
		return
	}
	id, err := IDFromCSR(csr)
	if err != nil {
		s.refuse(w, r, http.StatusBadRequest, ID{}, fmt.Sprintf("CSR: %v", err))
		return
	}
	if id.TrustDomain != s.ca.TrustDomain() {
		s.refuse(w, r, http.StatusForbidden, id, fmt.Sprintf("%s is not in this CA's trust domain %q", id, s.ca.TrustDomain()))
		return
	}

	method, err := s.authorize(r, req.Token, id)
	if err != nil {
		status := http.StatusUnauthorized
		if errors.Is(err, ErrTokenIdentity) {
			status = http.StatusForbidden
		}
		s.refuse(w, r, status, id, err.Error())
		return
	}

	ttl := time.Duration(req.TTLSeconds) * time.Second
	maxTTL := s.MaxTTL
	if maxTTL <= 0 {
		maxTTL = DefaultLeafTTL
	}
	if ttl <= 0 || ttl > maxTTL {
		ttl = maxTTL
	}
	chain, err := s.ca.Sign(csr, id, ttl)
	if err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, errIssuerExpired) {
			status = http.StatusServiceUnavailable
		}
		s.refuse(w, r, status, id, err.Error())
		return
	}
	s.log.Info("certificate issued", "identity", id.String(), "auth", method,
		"serial", fmt.Sprintf("%x", chain[0].SerialNumber), "not_after", chain[0].NotAfter, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, signResponse{Chain: string(EncodeCerts(chain...))})
}

// authorize returns how the caller proved its right to id.
func (s *Service) authorize(r *http.Request, token string, id ID) (string, error) {
	var certErr error
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		_, certErr = s.verifier.Verify(r.TLS.PeerCertificates, &id, x509.ExtKeyUsageClientAuth)
		if certErr == nil {
			return "certificate", nil
		}
	}
	if token == "" {
		if certErr != nil {
			return "", fmt.Errorf("no join token, and the client certificate is not valid for %s: %w", id, certErr)
		}
		return "", fmt.Errorf("no join token: create one with \"meshproxy ca token --identity %s\"", id)
	}
	if err := s.auth.Authenticate(r.Context(), token, id); err != nil {
		return "", err
	}
	return "token", nil
}

func (s *Service) refuse(w http.ResponseWriter, r *http.Request, status int, id ID, reason string) {
	attrs := []any{"status", status, "reason", reason, "remote", r.RemoteAddr}
	if !id.IsZero() {
		attrs = append(attrs, "identity", id.String())
	}
	s.log.Warn("certificate request refused", attrs...)
	writeJSON(w, status, signResponse{Error: reason})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
