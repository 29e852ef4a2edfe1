package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"meshproxy/balancer"
	"meshproxy/identity"
)

// meshDial is the outcome of dialing a destination's mesh port.
type meshDial struct {
	tc       *tls.Conn // the handshaken mesh connection, or nil
	serverID string    // the server proxy's identity
	plain    bool      // nothing on the mesh port: the destination is not meshed
	err      error     // the mesh transport failed: close, never plaintext
	reason   string    // the meshproxy_outbound_mesh_errors_total reason of err
}

// handleOutboundMesh forwards an outbound connection with the mesh on.
// Destinations known (or forced) unmeshed go in plaintext, or are refused
// under RequireOutboundTLS. Others get a dial of their mesh port, in
// parallel with protocol detection: nothing listening there (refused,
// unreachable, timeout) on a destination not known meshed means unmeshed
// (cached, plaintext); a TCP connection means the TLS handshake must
// succeed, and any failure after that closes the client connection. Once
// both are done the transport header is sent, then the peeked bytes, and
// bytes are copied both ways.
func (s *Server) handleOutboundMesh(k *conn) error {
	state, forced := s.mesh.meshState(k.orig.Addr())
	if state == balancer.Unmeshed {
		if s.mesh.cfg.RequireOutboundTLS {
			k.begin(connLabels{tls: TLSNoIdentity})
			return s.meshError(k, reasonNotMeshed, fmt.Errorf("destination %s is not meshed and outbound TLS is required", k.orig.Addr()))
		}
		return s.handlePlain(k, TLSNoIdentity)
	}

	dialCtx, cancelDial := context.WithCancel(k.ctx)
	defer cancelDial()
	dialc := make(chan meshDial, 1)
	go func() { dialc <- s.dialMesh(dialCtx, k.orig.Addr(), state == balancer.Meshed, forced) }()

	var (
		md    meshDial
		proto = ProtocolOpaque
		peek  []byte
	)
	if d := k.detected; d != nil {
		proto, peek = d.proto, d.peek
		md = <-dialc
	} else if slices.Contains(s.cfg.OpaquePorts, k.orig.Port()) {
		md = <-dialc
	} else {
		var err error
		md, proto, peek, err = s.detectWhileDialing(k, dialc, cancelDial)
		s.m.detect.WithLabelValues(s.m.dir, string(proto)).Inc()
		if err != nil {
			if md.tc != nil {
				md.tc.Close()
			}
			k.begin(connLabels{tls: TLSTrue, serverID: md.serverID})
			k.abort()
			return err
		}
	}
	switch {
	case md.err != nil:
		k.begin(connLabels{tls: TLSTrue})
		return s.meshError(k, md.reason, md.err)
	case md.plain:
		if s.mesh.cfg.RequireOutboundTLS {
			k.begin(connLabels{tls: TLSNoIdentity})
			return s.meshError(k, reasonNotMeshed, fmt.Errorf("destination %s is not meshed (nothing on port %d) and outbound TLS is required", k.orig.Addr(), s.mesh.port))
		}
		up, err := s.dial(k.ctx, k.orig)
		k.begin(connLabels{tls: TLSNoIdentity})
		if err != nil {
			s.connectFailed(k, k.orig, &connectError{err})
			return &connectError{err}
		}
		k.track(up)
		s.log.Debug("connection opened", "src", k.src, "dst", k.orig.String(), "target", k.orig.String(),
			"protocol", string(proto), "tls", TLSNoIdentity)
		return s.forward(k, up, peek, nil)
	}
	tc := md.tc
	k.track(tc)
	k.begin(connLabels{tls: TLSTrue, serverID: md.serverID})
	hdr, err := EncodeHeader(Header{Port: k.orig.Port(), Protocol: headerProtocol(proto)})
	if err != nil {
		return s.meshError(k, reasonHeaderWrite, err)
	}
	tc.SetWriteDeadline(time.Now().Add(s.mesh.hsTimeout))
	if _, err := tc.Write(append(hdr, peek...)); err != nil {
		return s.meshError(k, reasonHeaderWrite, fmt.Errorf("sending the transport header to %s: %w", tc.RemoteAddr(), err))
	}
	k.m.readBytes.Add(float64(len(peek)))
	k.bytesIn.Add(int64(len(peek)))
	s.log.Debug("connection opened", "src", k.src, "dst", k.orig.String(), "target", tc.RemoteAddr().String(),
		"protocol", string(proto), "tls", TLSTrue, "server_id", md.serverID)
	return s.forwardBuffered(k, k.c, tc)
}

// detectWhileDialing reads the client's first bytes (up to the detect
// timeout) while the mesh dial runs. A failed mesh dial ends detection at
// once (there is nothing to forward to); a client that fails (not just
// closes) cancels the dial.
func (s *Server) detectWhileDialing(k *conn, dialc <-chan meshDial, cancelDial context.CancelFunc) (md meshDial, proto Protocol, peek []byte, err error) {
	buf := make([]byte, detectBufSize)
	if err := k.c.SetReadDeadline(time.Now().Add(s.cfg.detectTimeout())); err != nil {
		cancelDial()
		md = <-dialc
		return md, ProtocolNone, nil, err
	}
	type readResult struct {
		n   int
		err error
	}
	detc := make(chan readResult, 1)
	go func() {
		n, err := readFirst(k.c, buf)
		detc <- readResult{n, err}
	}()
	var det *readResult
	dialed := false
	for det == nil || !dialed {
		select {
		case r := <-detc:
			det = &r
			if r.n == 0 && r.err != nil && !isTimeout(r.err) && !errors.Is(r.err, io.EOF) {
				cancelDial()
			}
		case md = <-dialc:
			dialed = true
			if md.err != nil && det == nil {
				k.c.SetReadDeadline(time.Unix(1, 0))
			}
		}
	}
	k.c.SetReadDeadline(time.Time{})
	if det.n > 0 {
		return md, classify(buf[:det.n]), buf[:det.n], nil
	}
	// A client that failed cancelled the dial: its error is the one to
	// report, not the cancelled dial's (which would count as a mesh
	// failure).
	if det.err != nil && !isTimeout(det.err) && !errors.Is(det.err, io.EOF) && (md.err == nil || errors.Is(md.err, context.Canceled)) {
		return md, ProtocolNone, nil, fmt.Errorf("reading from client: %w", det.err)
	}
	return md, ProtocolNone, nil, nil
}

// dialMesh connects to ip's mesh port and runs the client handshake.
// known says ip is known meshed (cached or forced): then a mesh port that
// does not answer is an error. Otherwise it means ip is not meshed, which
// is cached unless forced.
func (s *Server) dialMesh(ctx context.Context, ip netip.Addr, known, forced bool) meshDial {
	ip = ip.Unmap()
	addr := netip.AddrPortFrom(ip, s.mesh.port)
	// Wait for a handshake slot (bounded concurrency, see
	// Mesh.MaxHandshakes) before connecting, so the server proxy sees the
	// connection only when its hello follows, and the connect timeout
	// covers the TCP connect only.
	release, err := s.mesh.handshakeSlot(ctx, slotQueueFactor)
	if err != nil {
		return meshDial{err: fmt.Errorf("mesh handshake with %s: %w", addr, err), reason: reasonTimeout}
	}
	defer release()
	d := net.Dialer{Timeout: s.connectTimeoutFor(ctx)}
	raw, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		if !known && ctx.Err() == nil && notListening(err) && s.mesh.cache.SetUnmeshed(ip) {
			return meshDial{plain: true}
		}
		what := "dialing mesh port %s"
		if known {
			what += " of a meshed destination"
		}
		return meshDial{err: fmt.Errorf(what+": %w", addr, err), reason: reasonConnect}
	}
	if s.mesh.cfg.ClientTLS == nil {
		raw.Close()
		return meshDial{err: errors.New("mesh: no client TLS configured (Mesh.ClientTLS is nil)"), reason: reasonHandshake}
	}
	tc := tls.Client(newBatchConn(raw.(*net.TCPConn)), s.mesh.cfg.ClientTLS(nil))
	tc.SetDeadline(time.Now().Add(s.mesh.hsTimeout))
	err = tc.HandshakeContext(ctx)
	if err != nil && ctx.Err() == nil {
		// A resumed session carries the certificates of the handshake that
		// made it; one whose peer certificate expires between the resume
		// offer and verification fails by milliseconds. Retry once with a
		// full handshake, without the session cache: a genuine failure
		// fails again, and no application byte has been sent yet.
		raw.Close()
		cfg := s.mesh.cfg.ClientTLS(nil)
		cfg.ClientSessionCache = nil
		raw, err = d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return meshDial{err: fmt.Errorf("dialing mesh port %s again for a full handshake: %w", addr, err), reason: reasonConnect}
		}
		tc = tls.Client(newBatchConn(raw.(*net.TCPConn)), cfg)
		tc.SetDeadline(time.Now().Add(s.mesh.hsTimeout))
		err = tc.HandshakeContext(ctx)
	}
	if err != nil {
		raw.Close()
		reason := handshakeReason(err)
		if reason == reasonNoClientCert || reason == reasonNoALPN || reason == reasonNotTLS {
			reason = reasonHandshake // inbound-only reasons
		}
		return meshDial{err: fmt.Errorf("mesh handshake with %s: %w", addr, err), reason: reason}
	}
	tc.SetDeadline(time.Time{})
	id, err := identity.PeerID(tc.ConnectionState())
	if err != nil {
		tc.Close()
		return meshDial{err: fmt.Errorf("mesh handshake with %s: %w", addr, err), reason: reasonUntrusted}
	}
	if !forced {
		s.mesh.cache.SetMeshed(ip)
	}
	return meshDial{tc: tc, serverID: id.String()}
}

// notListening reports a dial error meaning nothing serves the port:
// refused, unreachable, or no answer before the timeout.
func notListening(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || (errors.As(err, &ne) && ne.Timeout())
}

// meshError counts, logs and closes an outbound connection the mesh
// transport failed.
func (s *Server) meshError(k *conn, reason string, err error) error {
	s.m.meshErrors.WithLabelValues(reason).Inc()
	s.log.Warn("closing outbound connection: mesh transport failed", "src", k.src, "dst", k.orig.String(),
		"reason", reason, "error", err)
	k.abort()
	return err
}
