package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshproxy/identity"
	"meshproxy/proxy"
)

// meshSettings are the identity and mTLS settings of "meshproxy run". The
// mesh is on when a certificate source is configured (identity-dir or
// identity-addr); otherwise traffic stays plaintext and metrics say
// tls="disabled".
type meshSettings struct {
	Identity          string
	IdentityDir       string
	IdentityAddr      string
	IdentityTokenFile string
	TrustAnchors      string
	IdentityTTL       time.Duration
	MeshPort          uint
	InboundPolicy     string
	InboundAuthz      []string
	MeshedCIDRs       []string
	UnmeshedCIDRs     []string
	RequireTLS        bool
}

func (m *meshSettings) enabled() bool { return m.IdentityDir != "" || m.IdentityAddr != "" }

func (m *meshSettings) validate() error {
	if m.IdentityDir != "" && m.IdentityAddr != "" {
		return errors.New("identity-dir and identity-addr are exclusive: use a local CA or an identity service, not both")
	}
	if m.InboundPolicy != string(proxy.Permissive) && m.InboundPolicy != string(proxy.Strict) {
		return fmt.Errorf("inbound-policy %q is neither permissive nor strict", m.InboundPolicy)
	}
	if m.MeshPort == 0 || m.MeshPort > 65535 {
		return fmt.Errorf("mesh-port %d is not in 1-65535", m.MeshPort)
	}
	if _, err := proxy.ParseAuthz(strings.Join(m.InboundAuthz, ",")); err != nil {
		return fmt.Errorf("inbound-authz: %w", err)
	}
	if _, err := parseCIDRs(m.MeshedCIDRs); err != nil {
		return fmt.Errorf("meshed-cidrs: %w", err)
	}
	if _, err := parseCIDRs(m.UnmeshedCIDRs); err != nil {
		return fmt.Errorf("unmeshed-cidrs: %w", err)
	}
	if !m.enabled() {
		if m.InboundPolicy == string(proxy.Strict) {
			return errors.New("inbound-policy strict needs mTLS: set identity-dir or identity-addr")
		}
		// Without the mesh these would be ignored while every connection
		// goes in plaintext: an allow-list that allows everyone.
		for _, s := range []struct {
			name string
			set  bool
		}{
			{"inbound-authz", len(m.InboundAuthz) > 0},
			{"outbound-require-tls", m.RequireTLS},
			{"meshed-cidrs", len(m.MeshedCIDRs) > 0},
		} {
			if s.set {
				return fmt.Errorf("%s needs mTLS, which is off: set identity-dir or identity-addr (without them every connection is plaintext and %s would be ignored)", s.name, s.name)
			}
		}
		return nil
	}
	if m.Identity == "" {
		return errors.New("identity is required with identity-dir or identity-addr (for example spiffe://cluster.local/ns/default/sa/web)")
	}
	if _, err := identity.ParseID(m.Identity); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if m.IdentityAddr != "" && m.TrustAnchors == "" {
		return errors.New("identity-addr needs trust-anchors: the PEM file of the CA's trust anchors, to verify the identity service and peers")
	}
	if m.IdentityTTL < 0 {
		return errors.New("identity-ttl must not be negative")
	}
	return nil
}

func parseCIDRs(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR (for example 198.18.0.0/15)", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// identityMetrics are the certificate metrics of DESIGN.md.
type identityMetrics struct {
	expiry  prometheus.Gauge
	refresh *prometheus.CounterVec
}

func newIdentityMetrics(reg prometheus.Registerer) (*identityMetrics, error) {
	m := &identityMetrics{
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshproxy_identity_cert_expiration_timestamp_seconds",
			Help: "Expiry of the proxy's current leaf certificate, as a Unix timestamp.",
		}),
		refresh: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshproxy_identity_cert_refresh_total",
			Help: "Certificate fetches, by result (ok or error).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.expiry, m.refresh} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering identity metrics: %w", err)
		}
	}
	m.refresh.WithLabelValues("ok")
	m.refresh.WithLabelValues("error")
	return m, nil
}

// newIdentityManager builds the certificate manager from the settings.
func newIdentityManager(s *meshSettings, reg prometheus.Registerer, log *slog.Logger) (*identity.Manager, error) {
	id, err := identity.ParseID(s.Identity)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	var (
		src     identity.Source
		anchors []*x509.Certificate
	)
	if s.IdentityDir != "" {
		ca, err := identity.LoadCA(s.IdentityDir)
		if err != nil {
			return nil, fmt.Errorf("identity-dir: %w", err)
		}
		src, anchors = &identity.LocalSource{CA: ca}, ca.Anchors()
	}
	if s.TrustAnchors != "" {
		anchors, err = identity.LoadCertsFile(s.TrustAnchors)
		if err != nil {
			return nil, fmt.Errorf("trust-anchors: %w", err)
		}
	}
	if s.IdentityAddr != "" {
		serviceID := identity.ServiceID(id.TrustDomain)
		src = &identity.Client{Addr: s.IdentityAddr, Anchors: anchors, ServerID: &serviceID, TokenFile: s.IdentityTokenFile}
	}
	m, err := newIdentityMetrics(reg)
	if err != nil {
		return nil, err
	}
	return identity.NewManager(identity.ManagerConfig{
		ID:      id,
		Source:  src,
		Anchors: anchors,
		TTL:     s.IdentityTTL,
		Log:     log,
		OnRefresh: func(err error) {
			if err != nil {
				m.refresh.WithLabelValues("error").Inc()
				return
			}
			m.refresh.WithLabelValues("ok").Inc()
		},
		OnCertificate: func(leaf *x509.Certificate) {
			m.expiry.Set(float64(leaf.NotAfter.Unix()))
		},
	})
}

// meshConfig turns the settings and a running manager into the proxy's
// mesh configuration. proxyPorts are ports a mesh peer may never target
// (the proxy's own listeners).
func meshConfig(s *meshSettings, mgr *identity.Manager, proxyPorts []uint16) (*proxy.Mesh, error) {
	authz, err := proxy.ParseAuthz(strings.Join(s.InboundAuthz, ","))
	if err != nil {
		return nil, err
	}
	meshed, _ := parseCIDRs(s.MeshedCIDRs)
	unmeshed, _ := parseCIDRs(s.UnmeshedCIDRs)
	return &proxy.Mesh{
		Port:               uint16(s.MeshPort),
		ClientTLS:          mgr.ClientTLSConfig,
		ServerTLS:          mgr.ServerTLSConfig(),
		LocalID:            mgr.ID(),
		Meshed:             meshed,
		Unmeshed:           unmeshed,
		RequireOutboundTLS: s.RequireTLS,
		InboundPolicy:      proxy.InboundPolicy(s.InboundPolicy),
		Authz:              authz,
		ProxyPorts:         proxyPorts,
	}, nil
}

// watchIdentity runs the manager until ctx ends, and keeps readiness in
// step with the certificate: not ready until the first one arrives, not
// ready again while the held one has expired (the identity service was
// down past its lifetime: the mesh refuses every connection then, so the
// proxy must not look ready), ready once a valid one is back. firstReady
// runs once, at the first certificate; setReady(ok, reason) on every
// change after that.
func watchIdentity(ctx context.Context, mgr *identity.Manager, firstReady func(), setReady func(ok bool, reason string), log *slog.Logger) {
	go mgr.Run(ctx) // returns only when ctx ends; it logs failed refreshes itself
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	seen, ready := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-mgr.Installed():
		}
		ok := mgr.Ready()
		if ok == ready || ctx.Err() != nil {
			continue
		}
		ready = ok
		id, serial, notAfter := mgr.Current()
		switch {
		case ok && !seen:
			seen = true
			log.Info("certificate ready", "identity", id.String(), "serial", serial, "expires", notAfter.UTC().Format(time.RFC3339))
			firstReady()
			// Expiry needs no finer polling than this.
			t.Reset(250 * time.Millisecond)
		case ok:
			log.Info("certificate valid again: ready", "identity", id.String(), "serial", serial, "expires", notAfter.UTC().Format(time.RFC3339))
			setReady(true, "")
		default:
			log.Error("certificate expired and no new one yet: not ready, the mesh refuses connections until the identity service answers",
				"identity", id.String(), "serial", serial, "expired", notAfter.UTC().Format(time.RFC3339))
			setReady(false, "certificate expired")
		}
	}
}

func portList(ports ...int) []uint16 {
	var out []uint16
	for _, p := range ports {
		if p > 0 && p < 65536 {
			out = append(out, uint16(p))
		}
	}
	return out
}

func portOf(addr string) int {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return 0
	}
	return int(ap.Port())
}
