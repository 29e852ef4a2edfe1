package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Renewal timing.
const (
	// renewFraction is the part of a certificate's remaining lifetime
	// (measured from when it was received) after which it is renewed.
	renewFraction = 0.7
	// renewJitter spreads renewals by +-10% so a fleet does not renew at once.
	renewJitter = 0.1
	// DefaultMinBackoff is the first retry delay after a failed fetch.
	DefaultMinBackoff = 500 * time.Millisecond
	// DefaultMaxBackoff caps the retry delay.
	DefaultMaxBackoff = 30 * time.Second
)

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	// ID is the identity to hold a certificate for. Required.
	ID ID
	// Source issues the certificates (a *Client for a remote identity
	// service, a *LocalSource for a local CA). Required.
	Source Source
	// Anchors are the trust anchors peers must chain to. Required.
	Anchors []*x509.Certificate
	// TTL is the leaf lifetime asked for. Zero means the source's default.
	TTL time.Duration
	// MinBackoff is the first retry delay after a failure; it doubles up to
	// MaxBackoff, but while the certificate in use is valid a retry waits
	// at most half its remaining life (not below MinBackoff). Zero means
	// DefaultMinBackoff / DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Log receives refresh events. Nil means slog.Default().
	Log *slog.Logger
	// OnRefresh, if set, is called after every fetch attempt with its
	// result (nil on success); for the identity_cert_refresh_total metric.
	OnRefresh func(err error)
	// OnCertificate, if set, is called with each new leaf; for the
	// identity_cert_expiration_timestamp_seconds metric.
	OnCertificate func(leaf *x509.Certificate)
}

// Manager holds the workload's current certificate and renews it: Run
// fetches one at once, then again at 70% (+-10% jitter) of its remaining
// lifetime, retrying with exponential backoff on failure. TLS configs from
// the Manager read the current certificate at every handshake, so rotation
// never disturbs open connections. Its methods are safe for concurrent use.
type Manager struct {
	cfg      ManagerConfig
	log      *slog.Logger
	verifier *Verifier
	sessions tls.ClientSessionCache

	mu   sync.RWMutex
	cert *tls.Certificate

	// installed holds one wake-up after each installed certificate.
	installed chan struct{}
}

// NewManager checks cfg and returns a Manager holding no certificate yet.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if err := cfg.ID.Validate(); err != nil {
		return nil, fmt.Errorf("identity manager: identity: %w", err)
	}
	if cfg.Source == nil {
		return nil, errors.New("identity manager: no certificate source: set identity-dir (local CA) or identity-addr (identity service)")
	}
	v, err := NewVerifier(cfg.Anchors, cfg.ID.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity manager: %w", err)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Manager{
		cfg:       cfg,
		log:       log.With("identity", cfg.ID.String()),
		verifier:  v,
		sessions:  tls.NewLRUClientSessionCache(256),
		installed: make(chan struct{}, 1),
	}, nil
}

// ID returns the identity the Manager holds certificates for.
func (m *Manager) ID() ID { return m.cfg.ID }

// Verifier returns the verifier built from the Manager's trust anchors.
func (m *Manager) Verifier() *Verifier { return m.verifier }

// Certificate returns the current certificate, or nil if there is none.
// The result must not be modified.
func (m *Manager) Certificate() *tls.Certificate {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cert
}

func (m *Manager) certOrErr() (*tls.Certificate, error) {
	c := m.Certificate()
	if c == nil || !time.Now().Before(c.Leaf.NotAfter) {
		return nil, fmt.Errorf("%w for %s", ErrNotReady, m.cfg.ID)
	}
	return c, nil
}

// Ready reports whether the Manager holds an unexpired certificate.
func (m *Manager) Ready() bool {
	_, err := m.certOrErr()
	return err == nil
}

// Installed returns a channel that receives after a new certificate is
// installed, so a watcher of Ready need not wait for its next poll. Wake-ups
// coalesce: several installs between two receives give one.
func (m *Manager) Installed() <-chan struct{} { return m.installed }

// Current describes the held certificate: its identity, serial number (hex)
// and expiry. All are zero when there is no certificate.
func (m *Manager) Current() (id ID, serial string, notAfter time.Time) {
	c := m.Certificate()
	if c == nil {
		return ID{}, "", time.Time{}
	}
	return m.cfg.ID, fmt.Sprintf("%x", c.Leaf.SerialNumber), c.Leaf.NotAfter
}

// Refresh fetches a new certificate now and installs it.
func (m *Manager) Refresh(ctx context.Context) error {
	c, err := Obtain(ctx, m.cfg.Source, m.cfg.ID, m.cfg.TTL, m.Certificate())
	if err == nil {
		if _, verr := m.verifier.Verify(certChain(c), &m.cfg.ID, x509.ExtKeyUsageClientAuth); verr != nil {
			err = fmt.Errorf("new certificate does not verify against the configured trust anchors: %w", verr)
		}
	}
	if m.cfg.OnRefresh != nil {
		m.cfg.OnRefresh(err)
	}
	if err != nil {
		return fmt.Errorf("refreshing certificate for %s: %w", m.cfg.ID, err)
	}
	m.mu.Lock()
	m.cert = c
	m.mu.Unlock()
	select {
	case m.installed <- struct{}{}:
	default:
	}
	if m.cfg.OnCertificate != nil {
		m.cfg.OnCertificate(c.Leaf)
	}
	m.log.Info("certificate installed", "serial", fmt.Sprintf("%x", c.Leaf.SerialNumber), "not_after", c.Leaf.NotAfter)
	return nil
}

// Run keeps a fresh certificate until ctx is done, then returns ctx.Err().
func (m *Manager) Run(ctx context.Context) error {
	backoff := m.cfg.MinBackoff
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		received := time.Now()
		var wait time.Duration
		if err := m.Refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			wait = jitter(backoff, 0.2)
			if c := m.Certificate(); c != nil {
				wait = beforeExpiry(wait, time.Until(c.Leaf.NotAfter), m.cfg.MinBackoff)
			}
			m.log.Warn("certificate refresh failed", "err", err, "retry_in", wait)
			backoff = min(backoff*2, m.cfg.MaxBackoff)
		} else {
			backoff = m.cfg.MinBackoff
			life := m.Certificate().Leaf.NotAfter.Sub(received)
			wait = jitter(time.Duration(float64(life)*renewFraction), renewJitter)
		}
		timer.Reset(wait)
	}
}

// beforeExpiry returns the wait before retrying a failed refresh while
// the certificate in use has left to live: wait, shortened to half of
// left (but not below floor) when it is longer, so that a backoff grown
// past the certificate's remaining life does not let it lapse while the
// service may already be back. An expired certificate leaves wait as it is.
func beforeExpiry(wait, left, floor time.Duration) time.Duration {
	if left > 0 {
		return min(wait, max(left/2, floor))
	}
	return wait
}

// jitter returns d scaled by a random factor in [1-f, 1+f].
func jitter(d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*rand.Float64()))
}

// certChain returns the parsed chain of c (leaf first); unparsable
// elements are skipped, which makes verification fail as it should.
func certChain(c *tls.Certificate) []*x509.Certificate {
	chain := []*x509.Certificate{c.Leaf}
	for _, der := range c.Certificate[1:] {
		if x, err := x509.ParseCertificate(der); err == nil {
			chain = append(chain, x)
		}
	}
	return chain
}
