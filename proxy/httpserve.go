package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// instrument counts next's requests and responses in the HTTP metrics
// of s's direction: requests_total when a request arrives;
// response_latency_seconds when its response headers go out;
// responses_total when the handler is done. The authority label is the
// request's Host as the client wrote it.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authority := r.Host
		s.m.requests.WithLabelValues(s.m.dir, authority).Inc()
		sw := &statusWriter{ResponseWriter: w, start: time.Now(), s: s, authority: authority}
		aborted := true
		defer func() {
			if aborted {
				// The handler ended the exchange without finishing it
				// (http.ErrAbortHandler: a response body broken off, or
				// a client that broke off its request): a failure, with
				// the status sent, if any.
				if sw.status == 0 {
					sw.status = http.StatusBadGateway
					sw.observe()
				}
				s.m.responses.WithLabelValues(s.m.dir, authority, strconv.Itoa(sw.status), classFailure).Inc()
			}
		}()
		next.ServeHTTP(sw, r)
		aborted = false
		if sw.status == 0 {
			sw.status = http.StatusOK
			sw.observe()
		}
		s.m.responses.WithLabelValues(s.m.dir, authority, strconv.Itoa(sw.status), sw.class()).Inc()
	})
}

// statusWriterOf returns instrument's statusWriter under w (through
// Unwrap), or nil.
func statusWriterOf(w http.ResponseWriter) *statusWriter {
	for w != nil {
		if sw, ok := w.(*statusWriter); ok {
			return sw
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}

// statusWriter records the status a handler writes.
type statusWriter struct {
	http.ResponseWriter
	s         *Server
	authority string
	start     time.Time
	status    int
	proxyErr  bool
}

func (w *statusWriter) class() string {
	if w.status >= 500 || w.proxyErr {
		return classFailure
	}
	return classSuccess
}

func (w *statusWriter) observe() {
	w.s.m.latency.WithLabelValues(w.s.m.dir, w.authority, strconv.Itoa(w.status), w.class()).
		Observe(time.Since(w.start).Seconds())
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		w.proxyErr = w.Header().Get(headerProxyError) != ""
		w.observe()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Flush passes flushes on (ReverseProxy flushes streamed responses).
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack lets upgrades take the connection over.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// rotating hands out a transport, replaced by a new one every half
// lifetime; the one before is told to close its idle connections then
// and at the next turn. A connection is so reused for at most about
// lifetime after it was dialed (plus the requests in flight on it).
// http.Transport and http2.Transport have no per-connection lifetime;
// rotation gives one without reimplementing their pools.
type rotating[T any] struct {
	half  time.Duration // 0: never rotate
	mk    func() T
	close func(T)

	mu        sync.Mutex
	cur, prev T
	hasPrev   bool
	next      time.Time
}

func newRotating[T any](lifetime time.Duration, mk func() T, close func(T)) *rotating[T] {
	r := &rotating[T]{mk: mk, close: close, cur: mk()}
	if lifetime > 0 {
		r.half = lifetime / 2
		r.next = time.Now().Add(r.half)
	}
	return r
}

// get returns the current transport.
func (r *rotating[T]) get() T {
	r.mu.Lock()
	if r.half <= 0 || time.Now().Before(r.next) {
		t := r.cur
		r.mu.Unlock()
		return t
	}
	old, hadOld := r.prev, r.hasPrev
	r.prev, r.hasPrev = r.cur, true
	r.cur = r.mk()
	r.next = time.Now().Add(r.half)
	t, prev := r.cur, r.prev
	r.mu.Unlock()
	if hadOld {
		r.close(old)
	}
	r.close(prev)
	return t
}

// closeAll closes the idle connections of the current and previous
// transports.
func (r *rotating[T]) closeAll() {
	r.mu.Lock()
	cur, prev, hasPrev := r.cur, r.prev, r.hasPrev
	r.mu.Unlock()
	r.close(cur)
	if hasPrev {
		r.close(prev)
	}
}

// sharedServer is one net/http server for many client connections, each
// handed to it with serve: a connection then costs the one goroutine
// net/http serves it on, and no server of its own. Its requests' context
// is the connection's httpConn.base, which also answers for the values
// net/http puts in a connection's context (http.ServerContextKey: without
// it ReverseProxy finishes a response whose upstream body broke off as if
// it were complete, instead of aborting it). The Serve loop starts with
// the first connection.
type sharedServer struct {
	srv  *http.Server
	l    *chanListener
	once sync.Once
}

func newSharedServer(srv *http.Server) *sharedServer {
	ss := &sharedServer{srv: srv, l: newChanListener()}
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if hc, ok := c.(*httpConn); ok && hc.base != nil {
			return valuesBehind{Context: hc.base, behind: ctx}
		}
		return ctx
	}
	return ss
}

// valuesBehind is its Context (deadline, cancellation, values) with the
// values of behind as a fallback for keys the Context does not have.
type valuesBehind struct {
	context.Context
	behind context.Context
}

// Value returns the Context's value for key, or behind's.
func (v valuesBehind) Value(key any) any {
	if x := v.Context.Value(key); x != nil {
		return x
	}
	return v.behind.Value(key)
}

// serve hands c to the server; false when the server was shut down (c is
// then not taken).
func (ss *sharedServer) serve(c *httpConn) bool {
	ss.once.Do(func() { go ss.srv.Serve(ss.l) })
	return ss.l.push(c)
}

// shutdown stops taking connections and closes the idle ones; a busy
// connection closes when its response is done (keep-alive is off).
func (ss *sharedServer) shutdown() {
	ss.l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // close the idle ones once, wait for none
	ss.srv.Shutdown(ctx)
}

// chanListener is a net.Listener whose connections are pushed to it.
type chanListener struct {
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

var _ net.Listener = (*chanListener)(nil)

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to Accept; false when the listener is closed.
func (l *chanListener) push(c net.Conn) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return dummyAddr{} }
