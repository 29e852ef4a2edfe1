package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"meshproxy/identity"
)

// handleMeshInbound terminates a mesh connection (the original
// destination is the mesh port): TLS handshake with a required, verified
// client certificate, then the transport header, both within the
// handshake timeout; then the loop guard and authorization, then delivery
// to the local application on the header's port. Every refusal is
// counted by reason and logged once; it never affects other connections.
func (s *Server) handleMeshInbound(k *conn) error {
	if s.mesh.serverTLS == nil {
		k.begin(connLabels{tls: TLSTrue})
		return s.refuse(k, reasonHandshake, errors.New("mesh: no server TLS configured (Mesh.ServerTLS is nil)"))
	}
	tc := tls.Server(newBatchConn(k.c), s.mesh.serverTLS)
	k.track(tc)
	// The client's hello, a handshake slot (Mesh.MaxHandshakes) and the
	// handshake all fit in one handshake timeout from the connection's
	// arrival: past it the client gave up, and a slot spent on it would
	// be wasted on a dead connection. The slot is taken only once the
	// hello is there, so clients slow to send it hold none.
	deadline := k.start.Add(s.mesh.hsTimeout)
	k.c.SetReadDeadline(deadline)
	if err := waitReadable(k.c); err != nil {
		k.begin(connLabels{tls: TLSTrue})
		return s.refuse(k, handshakeReason(err), fmt.Errorf("mesh handshake: waiting for the client hello: %w", err))
	}
	release, err := s.mesh.handshakeSlot(k.ctx, time.Until(deadline))
	if err != nil {
		k.begin(connLabels{tls: TLSTrue})
		return s.refuse(k, handshakeReason(err), fmt.Errorf("mesh handshake: %w", err))
	}
	tc.SetDeadline(deadline)
	err = s.mesh.handshake(k.ctx, tc)
	release()
	if err != nil {
		k.begin(connLabels{tls: TLSTrue})
		return s.refuse(k, handshakeReason(err), fmt.Errorf("mesh handshake: %w", err))
	}
	id, err := identity.PeerID(tc.ConnectionState())
	if err != nil {
		k.begin(connLabels{tls: TLSTrue})
		return s.refuse(k, reasonUntrusted, err)
	}
	client := id.String()
	k.begin(connLabels{tls: TLSTrue, clientID: client})
	hdr, err := DecodeHeader(tc)
	if err != nil {
		return s.refuse(k, reasonBadHeader, fmt.Errorf("from %s: %w", client, err))
	}
	tc.SetDeadline(time.Time{})
	s.m.detect.WithLabelValues(s.m.dir, string(hdr.Protocol)).Inc()
	if slices.Contains(s.mesh.proxyPorts, hdr.Port) {
		return s.refuse(k, reasonLoop, fmt.Errorf("%s asked for port %d, one of the proxy's own ports", client, hdr.Port))
	}
	ok, portLabel := s.mesh.authorize(client, hdr.Port)
	if !ok {
		s.m.authzDeny.WithLabelValues(client, portLabel).Inc()
		s.log.Warn("refusing connection", "src", k.src, "dst", k.orig.String(), "reason", "unauthorized",
			"error", fmt.Errorf("no authorization rule lets %s reach port %d", client, hdr.Port), "client_id", client)
		k.abort()
		return errors.New("unauthorized")
	}
	s.m.authzAllow.WithLabelValues(client, portLabel).Inc()
	target := s.target(netip.AddrPortFrom(k.orig.Addr(), hdr.Port))
	xfcc := "URI=" + client
	if s.mesh.localID != "" {
		xfcc = "By=" + s.mesh.localID + ";" + xfcc
	}
	if hdr.Protocol == ProtocolMeshH2 || hdr.Protocol == ProtocolH2 {
		// h2 (the client app's own prior knowledge, through a client
		// proxy without HTTP-aware outbound) is served as HTTP/2 too,
		// not copied as bytes: the app must see our
		// x-forwarded-client-cert, never one the client sent.
		s.log.Debug("connection opened", "src", k.src, "dst", k.orig.String(), "target", target.String(),
			"protocol", string(hdr.Protocol), "tls", TLSTrue, "client_id", client)
		return s.serveH2(k, tc, target, xfcc, hdr.Protocol == ProtocolH2)
	}
	if hdr.Protocol == ProtocolHTTP1 {
		s.log.Debug("connection opened", "src", k.src, "dst", k.orig.String(), "target", target.String(),
			"protocol", string(hdr.Protocol), "tls", TLSTrue, "client_id", client)
		return s.serveH1Inbound(k, tc, target, xfcc)
	}
	up, err := s.dial(k.ctx, target)
	if err != nil {
		s.connectFailed(k, target, &connectError{err})
		return &connectError{err}
	}
	k.track(up)
	s.log.Debug("connection opened", "src", k.src, "dst", k.orig.String(), "target", target.String(),
		"protocol", string(hdr.Protocol), "tls", TLSTrue, "client_id", client)
	return s.forwardBuffered(k, tc, up)
}

// handleInboundPlain handles a connection to an application port with the
// mesh on: forwarded (permissive) or refused (strict).
func (s *Server) handleInboundPlain(k *conn) error {
	if s.mesh.policy != Strict {
		if s.mesh.covers(k.orig.Port()) {
			// A plaintext client has no identity, so no rule can
			// allow it: a port the rules guard is closed to it, as to
			// a mesh client no rule names.
			k.begin(connLabels{tls: TLSNoIdentity})
			s.log.Warn("refusing connection", "src", k.src, "dst", k.orig.String(), "reason", "unauthorized",
				"error", fmt.Errorf("a plaintext client has no mesh identity, and inbound-authz rules cover port %d", k.orig.Port()))
			s.m.authzDeny.WithLabelValues("", s.mesh.portLabel(k.orig.Port())).Inc()
			k.abort()
			return errors.New("unauthorized: plaintext")
		}
		return s.handlePlain(k, TLSNoIdentity)
	}
	// Strict: nothing but mesh mTLS. Read what the client starts with,
	// only to say what was refused.
	proto := ProtocolNone
	if !slices.Contains(s.cfg.OpaquePorts, k.orig.Port()) {
		buf := make([]byte, detectBufSize)
		proto, _, _ = Detect(k.c, s.cfg.detectTimeout(), buf)
		s.m.detect.WithLabelValues(s.m.dir, string(proto)).Inc()
	}
	reason, label := reasonPlaintext, TLSNoIdentity
	if proto == ProtocolTLS {
		reason, label = reasonAppTLS, TLSOpaque
	}
	k.begin(connLabels{tls: label})
	return s.refuse(k, reason, fmt.Errorf("inbound policy is strict: only mesh mTLS on port %d is accepted (client sent %s)", s.mesh.port, proto))
}

// refuse counts and logs (one warn line) an inbound connection refused
// before delivery, and closes it.
func (s *Server) refuse(k *conn, reason string, err error) error {
	// Log before counting: whoever sees the count also finds the line.
	s.log.Warn("refusing connection", "src", k.src, "dst", k.orig.String(), "reason", reason, "error", err)
	s.m.refused.WithLabelValues(reason).Inc()
	k.abort()
	return fmt.Errorf("refused (%s): %w", reason, err)
}
