package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"slices"
	"sync"
	"syscall"
	"time"
)

// headerXFCC is the header that tells the application who the mesh client
// is (Envoy/Istio format).
const headerXFCC = "X-Forwarded-Client-Cert"

// serveHTTP1 proxies HTTP/1 requests read from client (after the peeked
// bytes) to target, through net/http's server and httputil.ReverseProxy:
// every request loses any x-forwarded-client-cert it came with and, when
// xfcc is not empty, gets ours. Keep-alive, chunked bodies, trailers and
// upgrades (WebSocket) are handled by the library; Host and the
// X-Forwarded-* headers pass unchanged, none is added. The first request
// uses up, the connection dialed during detection; should it close, the
// next request dials target again. It returns when the client connection
// is done.
func (s *Server) serveHTTP1(k *conn, client net.Conn, peek []byte, up net.Conn, target netip.AddrPort, xfcc string) error {
	client.SetDeadline(time.Time{})
	hc := &httpConn{Conn: client, peek: peek, k: k, closed: make(chan struct{})}
	l := &oneConnListener{c: hc, done: make(chan struct{})}

	var upOnce sync.Once
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var c net.Conn
			upOnce.Do(func() { c = up })
			if c != nil {
				return c, nil
			}
			nc, err := s.dial(ctx, target)
			if err != nil {
				return nil, err
			}
			k.track(nc)
			return nc, nil
		},
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		IdleConnTimeout:     s.cfg.idleTimeout(),
	}
	defer tr.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = target.String()
			// Rewrite mode drops these from Out; a transparent proxy
			// passes them on as they came.
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				}
			}
			pr.Out.Header.Del(headerXFCC)
			if xfcc != "" {
				pr.Out.Header.Set(headerXFCC, xfcc)
			}
		},
		Transport:     tr,
		FlushInterval: -1,
		BufferPool:    bytePool{},
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.log.Debug("http upstream error", "src", k.src, "dst", k.orig.String(), "target", target.String(), "error", err)
			w.Header().Set("meshproxy-error", "upstream: "+err.Error())
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	idle := s.cfg.idleTimeout()
	srv := &http.Server{
		Handler:                      rp,
		IdleTimeout:                  idle,
		ReadHeaderTimeout:            s.cfg.headerTimeout(),
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     log.New(io.Discard, "", 0),
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(l)
	}()
	select {
	case <-hc.closed:
	case <-k.ctx.Done():
	}
	l.Close()
	srv.Close()
	<-served
	client.Close()
	if k.ctx.Err() != nil {
		return k.ctx.Err()
	}
	return nil
}

// bytePool lends the copy buffers to ReverseProxy.
type bytePool struct{}

func (bytePool) Get() []byte  { return *bufPool.Get().(*[]byte) }
func (bytePool) Put(b []byte) { bufPool.Put(&b) }

// httpConn is the client connection as net/http sees it: the peeked bytes
// come first, bytes are counted, and Close is reported.
type httpConn struct {
	net.Conn
	peek   []byte
	k      *conn
	once   sync.Once
	closed chan struct{}
	frames *frameChecker   // nil: framing not followed
	base   context.Context // a shared server's requests' context; nil: the server's own
}

func (c *httpConn) Read(b []byte) (int, error) {
	var n int
	var err error
	if len(c.peek) > 0 {
		n = copy(b, c.peek)
		c.peek = c.peek[n:]
		if len(c.peek) == 0 {
			c.peek = nil // let the detection buffer go
		}
	} else {
		n, err = c.Conn.Read(b)
	}
	if n > 0 {
		c.k.m.readBytes.Add(float64(n))
		c.k.bytesIn.Add(int64(n))
		if c.frames != nil {
			c.frames.observe(b[:n])
		}
	}
	return n, err
}

func (c *httpConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.k.m.writeBytes.Add(float64(n))
		c.k.bytesOut.Add(int64(n))
	}
	return n, err
}

func (c *httpConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	mu   sync.Mutex
	c    net.Conn
	once sync.Once
	done chan struct{}
}

var _ net.Listener = (*oneConnListener)(nil)

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return dummyAddr{} }

// dummyAddr is the address of a oneConnListener.
type dummyAddr struct{}

func (dummyAddr) Network() string { return "tcp" }
func (dummyAddr) String() string  { return "meshproxy-http" }

// h1Client sends HTTP/1.1 requests without a body (the common GET) on
// pooled connections from the calling goroutine: it writes the request
// and reads the response itself, where http.Transport hands both to two
// goroutines of its own per connection. Requests with a body, upgrades
// and anything not plain http go to fallback, which keeps net/http's
// full-duplex body handling for them.
//
// An idle connection is checked (a non-blocking peek) before reuse, so
// one the server closed is not used; should a reused connection still
// end before any response byte, a replayable request is sent once more
// on a new one, as http.Transport does.
type h1Client struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback    func() http.RoundTripper
	maxIdle     int           // per address; 0 keeps none
	idleTimeout time.Duration // 0: no limit
	lifetime    time.Duration // 0: no limit

	mu   sync.Mutex
	idle map[string][]*h1Conn // most recently used last
}

// h1Conn is one upstream connection of an h1Client.
type h1Conn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	addr   string
	born   time.Time
	timer  *time.Timer // closes it when idle too long
	inPool bool        // guarded by h1Client.mu
}

// RoundTrip implements http.RoundTripper.
func (t *h1Client) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Body != nil && req.Body != http.NoBody) || req.URL.Scheme != "http" || isUpgrade(req) || req.Method == http.MethodConnect {
		return t.fallback().RoundTrip(req)
	}
	addr := req.URL.Host
	for try := 0; ; try++ {
		pc, reused, err := t.get(req.Context(), addr)
		if err != nil {
			return nil, err
		}
		resp, err := t.send(pc, req)
		if err == nil {
			return resp, nil
		}
		pc.c.Close()
		if ctx := req.Context(); ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if !reused || try > 0 || !replayable(req) || !nothingRead(err) {
			return nil, err
		}
	}
}

// replayable reports a request http.Transport would send again after a
// reused connection failed.
func replayable(r *http.Request) bool {
	switch r.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return r.Header.Get("Idempotency-Key") != "" || r.Header.Get("X-Idempotency-Key") != ""
}

// nothingRead reports an error of a connection that ended before any
// response byte.
func nothingRead(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// send writes req on pc and reads the response head; the body, when there
// is one, gives pc back to the pool at its end.
func (t *h1Client) send(pc *h1Conn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	stop := context.AfterFunc(ctx, func() { pc.c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		return nil, err
	}
	if err := req.Write(pc.bw); err != nil {
		return fail(err)
	}
	if err := pc.bw.Flush(); err != nil {
		return fail(err)
	}
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return fail(err)
			}
		}
	}
	reuse := !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols &&
		(resp.ContentLength >= 0 || slices.Contains(resp.TransferEncoding, "chunked") || resp.Body == http.NoBody)
	done := func(ok bool) {
		if stop() && ok && reuse {
			t.put(pc)
		} else {
			pc.c.Close()
		}
	}
	if resp.Body == http.NoBody || resp.Body == nil {
		done(true)
		return resp, nil
	}
	resp.Body = &h1Body{rc: resp.Body, ctx: ctx, done: done}
	return resp, nil
}

// h1Body is a response body of an h1Client: its end decides the
// connection's fate.
type h1Body struct {
	rc   io.ReadCloser
	ctx  context.Context
	done func(ok bool)
	mu   sync.Mutex
	end  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.end {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err != nil {
		b.end = true
		b.done(err == io.EOF)
		if err != io.EOF && b.ctx.Err() != nil {
			err = context.Cause(b.ctx)
		}
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.end {
		b.end = true
		b.done(false) // abandoned mid-body: the connection cannot be reused
	}
	return nil
}

// get returns an idle connection to addr that is still open, or dials one.
func (t *h1Client) get(ctx context.Context, addr string) (*h1Conn, bool, error) {
	for {
		t.mu.Lock()
		var pc *h1Conn
		if l := t.idle[addr]; len(l) > 0 {
			pc = l[len(l)-1]
			l[len(l)-1] = nil
			t.idle[addr] = l[:len(l)-1]
			pc.inPool = false
		}
		t.mu.Unlock()
		if pc == nil {
			break
		}
		if pc.timer != nil {
			pc.timer.Stop()
		}
		if (t.lifetime > 0 && time.Since(pc.born) > t.lifetime) || !pc.open() {
			pc.c.Close()
			continue
		}
		return pc, true, nil
	}
	c, err := t.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{c: c, br: bufio.NewReader(c), bw: bufio.NewWriter(c), addr: addr, born: time.Now()}, false, nil
}

// open reports whether an idle connection is still open and quiet: the
// server neither closed it nor sent anything unasked.
func (pc *h1Conn) open() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	sc, ok := pc.c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true
	})
	return alive
}

// put keeps pc for reuse, or closes it when the pool is full.
func (t *h1Client) put(pc *h1Conn) {
	t.mu.Lock()
	l := t.idle[pc.addr]
	if len(l) >= t.maxIdle {
		t.mu.Unlock()
		pc.c.Close()
		return
	}
	if t.idle == nil {
		t.idle = make(map[string][]*h1Conn)
	}
	t.idle[pc.addr] = append(l, pc)
	pc.inPool = true
	if t.idleTimeout > 0 {
		if pc.timer == nil {
			pc.timer = time.AfterFunc(t.idleTimeout, func() { t.expire(pc) })
		} else {
			pc.timer.Reset(t.idleTimeout)
		}
	}
	t.mu.Unlock()
}

// expire closes pc if it is still idle.
func (t *h1Client) expire(pc *h1Conn) {
	t.mu.Lock()
	if !pc.inPool {
		t.mu.Unlock()
		return
	}
	pc.inPool = false
	l := t.idle[pc.addr]
	if i := slices.Index(l, pc); i >= 0 {
		t.idle[pc.addr] = slices.Delete(l, i, i+1)
	}
	t.mu.Unlock()
	pc.c.Close()
}

// closeIdle closes every idle connection.
func (t *h1Client) closeIdle() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	for _, l := range idle {
		for _, pc := range l {
			pc.inPool = false
		}
	}
	t.mu.Unlock()
	for _, l := range idle {
		for _, pc := range l {
			if pc.timer != nil {
				pc.timer.Stop()
			}
			pc.c.Close()
		}
	}
}
