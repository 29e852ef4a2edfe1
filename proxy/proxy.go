// Package proxy holds the proxy's traffic pipelines. Every accepted
// connection is detected (HTTP/1, HTTP/2, TLS, other, or nothing) while the
// target is dialed, then forwarded: between raw TCP sockets so Linux
// splices them, with half-close, connect and idle timeouts, and live byte
// counters.
//
// With the mesh on (Config.Mesh), proxies talk to each other over mutual
// TLS: outbound, a destination whose mesh port answers (probed once,
// remembered in a balancer.MeshCache) is reached by TLS to that port, a
// transport header (header.go) naming the target port and protocol, and
// the client's bytes; inbound, the mesh port terminates TLS, checks the
// client certificate, the header, the loop guard and the authorization
// rules, and delivers to the local application, adding
// x-forwarded-client-cert to HTTP/1 requests. A TLS failure never falls
// back to plaintext.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"meshproxy/listener"
)

// Direction is the side of the application a server proxies for.
type Direction string

const (
	// Outbound handles connections the local application makes.
	Outbound Direction = "outbound"
	// Inbound handles connections to the local application.
	Inbound Direction = "inbound"
)

// DefaultOpaquePorts are server-speaks-first or otherwise non-HTTP ports
// that skip protocol detection (SMTP, submission, MySQL, Galera, Postgres,
// Redis, Elasticsearch transport, memcached), as in Linkerd.
var DefaultOpaquePorts = []uint16{25, 587, 3306, 4444, 5432, 6379, 9300, 11211}

// Config tunes a Server. The zero value works.
type Config struct {
	// DetectTimeout is how long to wait for the client's first bytes.
	// Zero means 1s. When it passes with nothing read (and the server has
	// not spoken first), the connection is forwarded opaquely.
	DetectTimeout time.Duration
	// HeaderTimeout bounds how long an HTTP client may take to send a
	// request's headers once it has started one (slowloris); the idle time
	// between keep-alive requests is IdleTimeout's. Zero means 10s.
	HeaderTimeout time.Duration
	// InboundPoolIdleTimeout closes the inbound side's pooled connections
	// to the application (used by mesh HTTP/2 delivery) idle this long.
	// Zero means the smaller of IdleTimeout and 90s.
	InboundPoolIdleTimeout time.Duration
	// InboundResponseTimeout bounds the server side's wait for the app's
	// response head to a mesh HTTP request. Zero takes
	// HTTP.ResponseHeaderTimeout when HTTP is set, else
	// DefaultResponseHeaderTimeout; negative means no bound but
	// IdleTimeout. It exists apart from HTTP because a proxy whose
	// outbound HTTP handling is off still delivers its peers' HTTP.
	InboundResponseTimeout time.Duration
	// ConnectTimeout bounds dialing the target. Zero means 3s.
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection with no bytes in either direction
	// for this long (detected within about twice this). Zero means 1h;
	// negative disables it, and the check for a peer that stops reading
	// (no write progress for about this long).
	IdleTimeout time.Duration
	// OpaquePorts skip detection entirely. Nil means DefaultOpaquePorts;
	// an empty non-nil slice means none.
	OpaquePorts []uint16
	// InboundHost is where inbound connections are delivered, on the
	// original port. The zero Addr means 127.0.0.1 for IPv4 originals and
	// ::1 for IPv6 originals.
	InboundHost netip.Addr
	// Mesh turns on the mesh transport (mutual TLS between proxies). Nil
	// means the mesh is off: plaintext everywhere, tls="disabled".
	Mesh *Mesh
	// HTTP turns on HTTP-aware outbound proxying (see HTTPConfig): HTTP
	// requests are balanced per request over the endpoints of their
	// authority, on pooled connections. Nil means off: outbound HTTP is
	// forwarded opaquely to the original destination. An inbound Server
	// always serves the HTTP/1.1 and mesh-h2 connections such an outbound
	// proxy sends; of HTTP it uses only ResponseHeaderTimeout (its wait
	// for the app's response head on HTTP/1.1; nil: the default).
	HTTP *HTTPConfig
}

func (c *Config) headerTimeout() time.Duration {
	if c.HeaderTimeout <= 0 {
		return 10 * time.Second
	}
	return c.HeaderTimeout
}

func (c *Config) detectTimeout() time.Duration {
	if c.DetectTimeout <= 0 {
		return time.Second
	}
	return c.DetectTimeout
}

func (c *Config) connectTimeout() time.Duration {
	if c.ConnectTimeout <= 0 {
		return 3 * time.Second
	}
	return c.ConnectTimeout
}

func (c *Config) idleTimeout() time.Duration {
	switch {
	case c.IdleTimeout == 0:
		return time.Hour
	case c.IdleTimeout < 0:
		return 0
	}
	return c.IdleTimeout
}

func (c *Config) opaquePorts() []uint16 {
	if c.OpaquePorts == nil {
		return DefaultOpaquePorts
	}
	return c.OpaquePorts
}

// Server proxies the connections of one direction. Serve may run for
// several listeners at once (IPv4 and IPv6); all methods are safe for
// concurrent use.
type Server struct {
	dir  Direction
	cfg  Config
	mesh *meshRuntime // nil: mesh off
	http *httpRuntime // nil: HTTP-aware outbound off
	in   inboundHTTP  // transports to the local application for mesh-h2
	m    *dirMetrics
	log  *slog.Logger

	// hardCtx is cancelled when Shutdown gives up waiting; every
	// connection closes then.
	hardCtx    context.Context
	hardCancel context.CancelFunc

	mu        sync.Mutex
	listeners map[*listener.Listener]struct{}
	shutdown  bool
	active    atomic.Int64
}

// NewServer returns a server for direction dir. A nil m uses unregistered
// metrics; a nil log discards logs. A Mesh in cfg is copied; its ServerTLS
// is cloned once (and shared by every connection of the Server).
func NewServer(dir Direction, cfg Config, m *Metrics, log *slog.Logger) *Server {
	if m == nil {
		m, _ = NewMetrics(nil) // cannot fail without a registry
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.OpaquePorts = slices.Clone(cfg.opaquePorts())
	hard, cancel := context.WithCancel(context.Background())
	var mesh *meshRuntime
	if cfg.Mesh != nil {
		mesh = newMeshRuntime(*cfg.Mesh)
	}
	s := &Server{
		dir:        dir,
		cfg:        cfg,
		mesh:       mesh,
		m:          m.forDirection(dir),
		log:        log.With("direction", string(dir)),
		hardCtx:    hard,
		hardCancel: cancel,
		listeners:  make(map[*listener.Listener]struct{}),
	}
	if cfg.HTTP != nil && dir == Outbound {
		s.http = newHTTPRuntime(s, *cfg.HTTP)
	}
	return s
}

// OpenConnections returns the number of connections being handled.
func (s *Server) OpenConnections() int { return int(s.active.Load()) }

// Serve accepts connections from l and handles each in its own goroutine
// until l fails or Shutdown is called. It returns nil after Shutdown, once
// l is closed, and the accept error otherwise.
func (s *Server) Serve(l *listener.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isShutdown() {
				// Shutdown is closing l. The Accept it woke returns before
				// the socket is released; Close (once, in Shutdown) returns
				// after: wait for it, so l no longer accepts when Serve
				// returns.
				l.Close()
				return nil
			}
			return fmt.Errorf("%s proxy: %w", s.dir, err)
		}
		go s.Handle(s.hardCtx, c.TCPConn, c.OriginalDst)
	}
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// DrainError is Shutdown's error when its context ended before the open
// connections finished: how many were still open then (Shutdown closed
// them), and the context's error.
type DrainError struct {
	Open int
	Err  error
}

// Error says how many connections were open and why the wait ended.
func (e *DrainError) Error() string {
	return fmt.Sprintf("%d connections still open: %v", e.Open, e.Err)
}

// Unwrap returns the context's error.
func (e *DrainError) Unwrap() error { return e.Err }

// Shutdown stops accepting (closes every listener given to Serve) and waits
// for open connections to finish. When ctx ends first it closes the
// remaining connections and returns a *DrainError wrapping ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	ls := make([]*listener.Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	s.in.shutdown(s)
	poll := time.Millisecond
	t := time.NewTimer(poll)
	defer t.Stop()
	for {
		if s.active.Load() == 0 {
			s.closeIdleHTTP()
			return nil
		}
		select {
		case <-ctx.Done():
			open := int(s.active.Load()) // before closing them: the count to report
			s.hardCancel()
			s.closeIdleHTTP()
			return &DrainError{Open: open, Err: ctx.Err()}
		case <-t.C:
			poll = min(2*poll, 200*time.Millisecond)
			t.Reset(poll)
		}
	}
}

// target is where a connection to orig is forwarded.
func (s *Server) target(orig netip.AddrPort) netip.AddrPort {
	if s.dir != Inbound {
		return orig
	}
	host := s.cfg.InboundHost
	if !host.IsValid() {
		host = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if orig.Addr().Unmap().Is6() {
			host = netip.IPv6Loopback()
		}
	}
	return netip.AddrPortFrom(host, orig.Port())
}

// dial connects to target within the connect timeout.
func (s *Server) dial(ctx context.Context, target netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: s.connectTimeoutFor(ctx)}
	c, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// connectTimeoutFor is the connect timeout of a dial: the HTTP path's
// own (HTTPConfig.ConnectTimeout, carried by ctx) or Config's.
func (s *Server) connectTimeoutFor(ctx context.Context) time.Duration {
	if d, ok := ctx.Value(connectTimeoutKey{}).(time.Duration); ok && d > 0 {
		return d
	}
	return s.cfg.connectTimeout()
}

// connectError marks a failure to reach the target.
type connectError struct{ err error }

func (e *connectError) Error() string { return "connect: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// Handle proxies one accepted connection c whose original destination is
// orig, and closes c before returning; except an HTTP/1 client
// connection of HTTP-aware outbound, which Handle hands to the Server's
// shared HTTP server and returns at once (so that an idle one costs one
// goroutine): it is closed, counted and logged when that server is done
// with it, and OpenConnections and Shutdown count it until then.
// Cancelling ctx closes the connection.
//
// With the mesh off (Config.Mesh nil) every connection is forwarded in
// plaintext. With it on, outbound connections to meshed destinations go
// over mutual TLS to the destination's mesh port (see handleOutboundMesh),
// and inbound connections to the mesh port are terminated, authorized and
// delivered (handleMeshInbound); other inbound connections are forwarded
// (permissive) or refused (strict).
func (s *Server) Handle(ctx context.Context, c *net.TCPConn, orig netip.AddrPort) {
	s.active.Add(1)
	stopCtx, stop := context.WithCancel(ctx)
	k := &conn{s: s, c: c, orig: orig, src: c.RemoteAddr().String(), start: time.Now(), ctx: stopCtx}
	k.track(c)
	// Close everything if ctx or a hard shutdown ends the connection
	// (ctx is hardCtx itself when Serve calls: nothing to add then).
	unhard := func() bool { return true }
	if ctx != s.hardCtx {
		unhard = context.AfterFunc(s.hardCtx, stop)
	}
	unabort := context.AfterFunc(stopCtx, k.abort)
	k.end = func() {
		unabort()
		unhard()
		k.finish(ctx)
		stop()
		s.active.Add(-1)
	}

	var err error
	switch {
	case s.http != nil:
		err = s.handleOutboundHTTP(k)
	case s.mesh == nil:
		err = s.handlePlain(k, TLSDisabled)
	case s.dir == Outbound:
		err = s.handleOutboundMesh(k)
	case orig.Port() == s.mesh.port:
		err = s.handleMeshInbound(k)
	default:
		err = s.handleInboundPlain(k)
	}
	if k.handedOff {
		return // k.end runs when the shared HTTP server is done with it
	}
	k.err = err
	k.end()
}

// conn is the state of one connection in Handle.
type conn struct {
	s     *Server
	c     *net.TCPConn // the accepted connection
	orig  netip.AddrPort
	src   string
	start time.Time
	ctx   context.Context // ends when the connection must close
	m     *connMetrics    // set by begin
	err   error           // what ended the connection, for the log
	// detected is set when detection already ran (HTTP-aware outbound
	// saw something other than HTTP): the handlers then dial without
	// detecting again and forward these bytes first.
	detected *detected

	bytesIn, bytesOut atomic.Int64

	// end closes what is left, counts and logs the connection, and
	// releases it from Handle's contexts and the Server's count, once.
	end func()
	// handedOff: the shared HTTP server took the connection over; it
	// calls end (Handle does not).
	handedOff bool

	mu      sync.Mutex
	closers []net.Conn
	aborted bool
}

// track registers a conn to close when the connection ends; when it
// already ended, nc is closed at once.
func (k *conn) track(nc net.Conn) {
	k.mu.Lock()
	if k.aborted {
		k.mu.Unlock()
		resetClose(nc)
		return
	}
	k.closers = append(k.closers, nc)
	k.mu.Unlock()
}

// abort closes every tracked conn with a reset.
func (k *conn) abort() {
	k.mu.Lock()
	k.aborted = true
	cs := k.closers
	k.closers = nil
	k.mu.Unlock()
	for _, c := range cs {
		resetClose(c)
	}
}

// closeAll closes every tracked conn normally.
func (k *conn) closeAll() {
	k.mu.Lock()
	cs := k.closers
	k.closers = nil
	k.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// resetClose closes c, with a reset (SO_LINGER 0) for TCP conns.
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// begin counts the connection as open under labels l; only the first call
// counts.
func (k *conn) begin(l connLabels) {
	if k.m != nil {
		return
	}
	k.m = k.s.m.conn(l)
	k.m.open.Inc()
	k.m.openConns.Inc()
}

// finish closes what is left, counts the connection closed (as open
// first, with the labels known so far, if nothing did) and logs it.
func (k *conn) finish(ctx context.Context) {
	k.closeAll()
	l := connLabels{tls: TLSDisabled}
	if k.s.mesh != nil {
		l.tls = TLSNoIdentity
	}
	k.begin(l)
	dur := time.Since(k.start)
	k.m.openConns.Dec()
	k.m.close.Inc()
	k.m.duration.Observe(dur.Seconds())
	err := k.err
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	attrs := []any{"src", k.src, "dst", k.orig.String(),
		"bytes_in", k.bytesIn.Load(), "bytes_out", k.bytesOut.Load(), "duration", dur}
	if err != nil {
		attrs = append(attrs, "error", err)
	}
	k.s.log.Debug("connection closed", attrs...)
}

// handlePlain forwards the connection in plaintext to s.target(orig):
// detection runs while dialing (unless the port is opaque), then bytes are
// spliced. tlsLabel is the tls label (TLSOpaque replaces it when the
// client starts TLS itself). Inbound with the mesh on, HTTP/1 and h2c go
// through the HTTP paths so x-forwarded-client-cert from outside is removed.
func (s *Server) handlePlain(k *conn, tlsLabel string) error {
	target := s.target(k.orig)
	var (
		up           *net.TCPConn
		proto        = ProtocolOpaque
		peek, banner []byte
		err          error
	)
	if d := k.detected; d != nil || slices.Contains(s.cfg.OpaquePorts, k.orig.Port()) {
		if d != nil {
			proto, peek = d.proto, d.peek
		}
		up, err = s.dial(k.ctx, target)
		if err != nil {
			err = &connectError{err}
		}
	} else {
		up, proto, peek, banner, err = s.detectAndDial(k.ctx, k.c, target)
		s.m.detect.WithLabelValues(s.m.dir, string(proto)).Inc()
	}
	if up != nil {
		k.track(up)
	}
	if proto == ProtocolTLS && tlsLabel == TLSNoIdentity {
		tlsLabel = TLSOpaque
	}
	k.begin(connLabels{tls: tlsLabel})
	if err != nil {
		s.connectFailed(k, target, err)
		return err
	}
	s.log.Debug("connection opened", "src", k.src, "dst", k.orig.String(), "target", target.String(),
		"protocol", string(proto), "server_first", len(banner) > 0, "tls", tlsLabel)
	if s.mesh != nil && s.dir == Inbound && proto == ProtocolHTTP1 && len(banner) == 0 {
		return s.serveHTTP1(k, k.c, peek, up, target, "")
	}
	if s.mesh != nil && s.dir == Inbound && proto == ProtocolH2 && len(banner) == 0 {
		// h2c prior knowledge likewise (as bytes, a forged
		// x-forwarded-client-cert reached the app): served as HTTP/2,
		// delivered as h2c over the inbound pool, so up goes unused.
		up.Close()
		return s.serveH2(k, &httpConn{Conn: k.c, peek: peek, k: k}, target, "", true)
	}
	return s.forward(k, up, peek, banner)
}

// connectFailed counts and logs a failure to reach target (other errors
// are only logged at close), and aborts the connection.
func (s *Server) connectFailed(k *conn, target netip.AddrPort, err error) {
	var ce *connectError
	if errors.As(err, &ce) && k.ctx.Err() == nil {
		k.m.connectErrors.Inc()
		s.log.Warn("connect failed", "src", k.src, "dst", k.orig.String(), "target", target.String(), "error", ce.err)
	}
	k.abort()
}

// forward writes the peeked bytes and the server's banner, then copies both
// ways between the raw sockets (spliced) until both directions end, and
// closes both conns.
func (s *Server) forward(k *conn, up *net.TCPConn, peek, banner []byte) error {
	c := k.c
	c.SetDeadline(time.Time{})
	up.SetDeadline(time.Time{})
	if len(peek) > 0 {
		n, err := up.Write(peek)
		k.m.readBytes.Add(float64(len(peek)))
		k.bytesIn.Add(int64(len(peek)))
		if err != nil {
			k.abort()
			return fmt.Errorf("writing %d detected bytes upstream (wrote %d): %w", len(peek), n, err)
		}
	}
	if len(banner) > 0 {
		n, err := c.Write(banner)
		k.m.writeBytes.Add(float64(n))
		k.bytesOut.Add(int64(n))
		if err != nil {
			k.abort()
			return fmt.Errorf("writing the server's first %d bytes to the client: %w", len(banner), err)
		}
	}
	idle := s.cfg.idleTimeout()
	return k.pump(c, up,
		func(self, other *halfState) error {
			return proxyCopy(up, c, self, other, idle, k.m.readBytes, &k.bytesIn)
		},
		func(self, other *halfState) error {
			return proxyCopy(c, up, self, other, idle, k.m.writeBytes, &k.bytesOut)
		})
}

// pump runs the two directions of a connection, client a and upstream b:
// toB copies a to b and toA copies b to a, each given its own and the other
// direction's state (for the shared idle check). A direction that ends
// cleanly half-closes its destination; one that fails aborts the whole
// connection. When both have ended it closes both conns and returns the
// error that ended the connection, not the "use of closed connection" the
// other copier saw afterwards.
func (k *conn) pump(a, b halfCloser, toB, toA func(self, other *halfState) error) error {
	var in, out halfState
	now := time.Now().UnixNano()
	in.last.Store(now)
	out.last.Store(now)
	var once sync.Once
	var firstErr error
	fail := func(err error) {
		once.Do(func() {
			firstErr = err
			k.abort()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := toB(&in, &out); err != nil {
			fail(err)
			return
		}
		b.CloseWrite()
	}()
	if err := toA(&out, &in); err != nil {
		fail(err)
	} else {
		a.CloseWrite()
	}
	<-done
	a.Close()
	b.Close()
	once.Do(func() {})
	return firstErr
}

// detectAndDial runs protocol detection on c while dialing target. If the
// dial completes first, it also watches the upstream for bytes: a server
// that speaks first (a banner) ends detection at once instead of after the
// detect timeout. It returns the dialed conn, the detected protocol, the
// bytes read from the client (peek) and from the server (banner), both of
// which must be forwarded first.
func (s *Server) detectAndDial(ctx context.Context, c *net.TCPConn, target netip.AddrPort) (up *net.TCPConn, proto Protocol, peek, banner []byte, err error) {
	deadline := time.Now().Add(s.cfg.detectTimeout())
	dialCtx, cancelDial := context.WithCancel(ctx)
	defer cancelDial()

	type dialResult struct {
		c   *net.TCPConn
		err error
	}
	dialc := make(chan dialResult, 1)
	go func() {
		u, err := s.dial(dialCtx, target)
		dialc <- dialResult{u, err}
	}()

	type readResult struct {
		n   int
		err error
	}
	buf := make([]byte, detectBufSize)
	// Deadlines are set here, before the reader goroutines start, so an
	// abort (a deadline in the past) set later always wins.
	if err := c.SetReadDeadline(deadline); err != nil {
		cancelDial()
		if r := <-dialc; r.c != nil {
			r.c.Close()
		}
		return nil, ProtocolNone, nil, nil, err
	}
	detc := make(chan readResult, 1)
	go func() {
		n, err := readFirst(c, buf)
		detc <- readResult{n, err}
	}()

	var (
		det      *readResult
		dialDone bool
		dialErr  error
		bannerc  chan readResult
		bbuf     []byte
		bres     *readResult
	)
	past := time.Unix(1, 0)
	for det == nil || !dialDone || (bannerc != nil && bres == nil) {
		select {
		case r := <-detc:
			det = &r
			if up != nil && bres == nil {
				up.SetReadDeadline(past) // the client spoke: stop waiting for a banner
			}
			if r.n == 0 && r.err != nil && !isTimeout(r.err) && !errors.Is(r.err, io.EOF) {
				cancelDial() // the client is gone
			}
		case r := <-dialc:
			dialDone = true
			if r.err != nil {
				dialErr = r.err
				if det == nil {
					c.SetReadDeadline(past) // nothing to forward to
				}
				continue
			}
			up = r.c
			if det == nil {
				bbuf = make([]byte, detectBufSize)
				bannerc = make(chan readResult, 1)
				if err := up.SetReadDeadline(deadline); err != nil {
					bres = &readResult{0, err}
					continue
				}
				go func() {
					n, err := up.Read(bbuf)
					bannerc <- readResult{n, err}
				}()
			}
		case r := <-bannerc:
			bres = &r
			if det == nil {
				c.SetReadDeadline(past) // the server spoke first: stop detecting
			}
		}
	}
	c.SetReadDeadline(time.Time{})
	if up != nil {
		up.SetReadDeadline(time.Time{})
	}

	if det.n > 0 {
		peek = buf[:det.n]
		proto = classify(peek)
	} else {
		proto = ProtocolNone
	}
	if bres != nil && bres.n > 0 {
		banner = bbuf[:bres.n]
	}
	fail := func(e error) (*net.TCPConn, Protocol, []byte, []byte, error) {
		if up != nil {
			up.SetLinger(0)
			up.Close()
		}
		return nil, proto, nil, nil, e
	}
	switch {
	case det.n == 0 && det.err != nil && !isTimeout(det.err) && !errors.Is(det.err, io.EOF):
		return fail(fmt.Errorf("reading from client: %w", det.err))
	case dialErr != nil:
		return fail(&connectError{dialErr})
	case bres != nil && bres.n == 0 && bres.err != nil && !isTimeout(bres.err) && !errors.Is(bres.err, io.EOF):
		return fail(fmt.Errorf("reading from upstream: %w", bres.err))
	}
	return up, proto, peek, banner, nil
}

// isTimeout reports a deadline expiry.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
