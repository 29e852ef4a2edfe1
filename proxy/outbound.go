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
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
	d := net.Dialer{Timeout: s.connectTimeoutFor(ctx)}
	raw, release, queued, err := s.connectInSlot(ctx, &d, addr)
	if queued {
		return meshDial{err: fmt.Errorf("mesh handshake with %s: %w", addr, err), reason: reasonTimeout}
	}
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
		release()
		raw.Close()
		return meshDial{err: errors.New("mesh: no client TLS configured (Mesh.ClientTLS is nil)"), reason: reasonHandshake}
	}
	tc, resumed, err := s.clientHandshake(ctx, raw, release, s.mesh.cfg.ClientTLS(nil))
	if err != nil && resumed && ctx.Err() == nil {
		// A resumed session carries the certificates of the handshake that
		// made it; one whose peer certificate expires between the resume
		// offer and verification fails by milliseconds. Retry once with a
		// full handshake, without the session cache: no application byte
		// has been sent yet. Only a refused resumption is retried: any
		// other failure (an untrusted peer, a timeout) would fail again.
		cfg := s.mesh.cfg.ClientTLS(nil)
		cfg.ClientSessionCache = nil
		raw, release, queued, err = s.connectInSlot(ctx, &d, addr)
		if queued {
			return meshDial{err: fmt.Errorf("mesh handshake with %s, again in full: %w", addr, err), reason: reasonTimeout}
		}
		if err != nil {
			return meshDial{err: fmt.Errorf("dialing mesh port %s again for a full handshake: %w", addr, err), reason: reasonConnect}
		}
		tc, _, err = s.clientHandshake(ctx, raw, release, cfg)
	}
	if err != nil {
		reason := handshakeReason(err)
		if reason == reasonNoClientCert || reason == reasonNoALPN || reason == reasonNotTLS {
			reason = reasonHandshake // inbound-only reasons
		}
		return meshDial{err: fmt.Errorf("mesh handshake with %s: %w", addr, err), reason: reason}
	}
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

// connectSlotGrace is how long a mesh dial keeps its handshake slot
// while the kernel is still trying to connect: far longer than a connect
// takes when the peer answers, far shorter than the connect timeout of
// one that drops SYNs (its first retransmission is after 1s).
const connectSlotGrace = 250 * time.Millisecond

// connectInSlot takes a handshake slot (Mesh.MaxHandshakes), waiting up to
// slotQueueFactor handshake timeouts (queued reports a failure of that
// wait), then connects to addr with d. The slot is taken before the
// connect so that the server proxy sees the connection only when the
// hello follows: a dial queued after connecting would leave the server
// waiting for its hello, and under a burst the server gives up first.
// But a connect the kernel is still trying after connectSlotGrace (a
// destination dropping SYNs waits out its connect timeout) gives its
// slot back, so a few such dials cannot hold every slot; once connected
// it queues for another, for up to half a handshake timeout. A connect
// the kernel finished keeps its slot however late the dial notices (a
// runtime busy with a burst's handshakes can take seconds). On success
// the caller owns the connection and the slot (release).
func (s *Server) connectInSlot(ctx context.Context, d *net.Dialer, addr netip.AddrPort) (raw *net.TCPConn, release func(), queued bool, err error) {
	release, err = s.mesh.handshakeSlot(ctx, slotQueueFactor*s.mesh.hsTimeout)
	if err != nil {
		return nil, nil, true, err
	}
	var (
		sock     atomic.Value // syscall.RawConn of the connecting socket
		gaveBack atomic.Bool
		decided  = make(chan struct{})
	)
	dd := *d
	dd.Control = func(_, _ string, rc syscall.RawConn) error {
		sock.Store(rc)
		return nil
	}
	grace := time.AfterFunc(connectSlotGrace, func() {
		defer close(decided)
		if rc, ok := sock.Load().(syscall.RawConn); ok && synSent(rc) {
			gaveBack.Store(true)
			release()
		}
	})
	c, err := dd.DialContext(ctx, "tcp", addr.String())
	if !grace.Stop() {
		<-decided
	}
	if err != nil {
		if !gaveBack.Load() {
			release()
		}
		return nil, nil, false, err
	}
	raw = c.(*net.TCPConn)
	if !gaveBack.Load() {
		return raw, release, false, nil
	}
	release, err = s.mesh.handshakeSlot(ctx, s.mesh.hsTimeout/2)
	if err != nil {
		raw.Close()
		return nil, nil, true, err
	}
	return raw, release, false, nil
}

// synSent reports whether the kernel is still trying to connect the
// socket rc (state SYN_SENT). A closed socket is not.
func synSent(rc syscall.RawConn) bool {
	var state uint8
	err := rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return err == nil && state == tcpSynSent
}

// tcpSynSent is the kernel's TCP_SYN_SENT socket state (include/net/tcp_states.h).
const tcpSynSent = 2

// clientHandshake runs the mesh client handshake with cfg on the
// connected raw, holding the slot that release frees; the handshake has
// one handshake timeout. It closes raw on failure, and then reports
// whether the server had taken the session cfg offered (the failure is a
// refused resumption).
func (s *Server) clientHandshake(ctx context.Context, raw *net.TCPConn, release func(), cfg *tls.Config) (tc *tls.Conn, resumed bool, err error) {
	defer release()
	tc = tls.Client(newBatchConn(raw), cfg)
	tc.SetDeadline(time.Now().Add(s.mesh.hsTimeout))
	if err := s.mesh.handshake(ctx, tc); err != nil {
		raw.Close()
		return nil, tc.ConnectionState().DidResume, err
	}
	tc.SetDeadline(time.Time{})
	return tc, false, nil
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
