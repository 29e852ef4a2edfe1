package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshproxy/balancer"
)

// The HTTP/1.1 fast path: one goroutine per client connection reads a
// request head with the strict parser (h1parse.go), forwards it with its
// body to an upstream connection, and relays the response, one request
// at a time; no hand-off between goroutines. Buffers are taken from a
// pool only while a request is in flight: an idle client connection
// holds none (it waits for readability first) and costs its goroutine.
// What the fast path does not do (upgrades, CONNECT, HTTP/1.0, Expect,
// heads it does not strictly accept, routed hosts...) is handed, with
// the bytes read so far, to the net/http path, which keeps the
// connection for good.

// h1BufSize is the size of the client and upstream read buffers; a
// request head that does not fit goes to net/http.
const h1BufSize = 16 << 10

// h1MaxReplay is the largest request body kept to send again when a
// reused upstream connection turns out dead.
const h1MaxReplay = 8 << 10

// h1MaxResponseHead bounds a response head (net/http's client default).
const h1MaxResponseHead = 1 << 20

// h1Bufs are the buffers of one request in flight.
type h1Bufs struct {
	in, up    []byte
	out       []byte // heads being written
	req, resp h1Msg
}

// h1Held counts the request buffers taken and not returned: the tests'
// check that idle connections hold none.
var h1Held atomic.Int64

var h1Pool = sync.Pool{New: func() any {
	return &h1Bufs{in: make([]byte, h1BufSize), up: make([]byte, h1BufSize), out: make([]byte, 0, 2*h1BufSize)}
}}

// Errors of the fast path.
var (
	errBadResponse   = errors.New("malformed response from the upstream")
	errTooMany1xx    = errors.New("too many 1xx responses")
	errClientBody    = errors.New("reading the request body from the client")
	errFastClosing   = errors.New("the proxy is shutting down")
	errUpstreamWrite = errors.New("writing the request to the upstream")
	// errStaleConn: a reused upstream connection was found closed
	// before any response byte, and the request may not be sent again.
	errStaleConn = errors.New("the kept upstream connection was closed")
)

// h1Conn is one client connection on the fast path.
type h1Conn struct {
	s   *Server
	k   *conn
	c   net.Conn     // the client
	tcp *net.TCPConn // c when it is a plain TCP socket; nil for TLS
	bc  *batchConn   // the socket under c when c is TLS over a batchConn
	rc  syscall.RawConn
	h   *httpRuntime // outbound; nil inbound

	// inbound: the app, its connection (nil until dialed) and the
	// x-forwarded-client-cert value.
	target     netip.AddrPort
	app        net.Conn // written under mu
	appTracked bool     // the conn tracks h1AppCloser
	xfcc       string

	b  *h1Bufs  // nil while idle
	cr h1Reader // the client
	ur h1Reader // the upstream of the request in flight

	// unread: the client may still be sending the request in flight
	// (its body is not all read); see lingerClose.
	unread bool

	mu   sync.Mutex
	idle bool
	dead bool
	cur  net.Conn // the upstream in use

	// The client's read and write deadlines as this connection last set
	// them (zero: none known; see stale), and (inbound) the app
	// connection's (dlCache).
	rdl, wdl time.Time
	appDL    upDeadlines

	// readIdle's callback, made once, and its results: the read's error,
	// and whether the requests it served inside the wait (serveHeld)
	// ended the connection.
	idleRead func(fd uintptr) bool
	rerr     error
	heldStop bool
	maxHead  int
	inq      bool // TCP_INQ is on for a plain client (sysReadInq)

	met h1MetricCache

	one [1]byte // waitIdle's read from a TLS client

	// outbound: the context for dials, naming the last request's host
	dialCtx  context.Context
	dialHost string

	// sendRequest's write when it awaits the response (awaitAfter): the
	// upstream, the bytes, and the write itself, made once.
	awUp    net.Conn
	awBuf   []byte
	awWrite func() error
}

// h1MetricCache holds the metric children of the labels of this
// connection's last request and response: a client connection sends
// most of its requests to one authority, and resolving the children
// (hashing the label values, formatting the status) per request shows
// in the profile.
type h1MetricCache struct {
	authority string
	requests  prometheus.Counter

	respAuthority string
	respStatus    int
	respClass     string
	responses     prometheus.Counter

	latAuthority string
	latStatus    int
	latClass     string
	latency      prometheus.Observer
}

// upDeadlines is what an upstream connection's deadlines were last set
// to by the fast path (zero: not known), so that fresh ones are not set
// again (stale). A pooled connection's live with it, as it moves between
// client connections through the pool (a mesh connection's in its
// batchConn, a plaintext one's in its rawTCPConn); the inbound app
// connection's in the h1Conn. They are read and written under the mu of
// the h1Conn using the connection (the pool orders the hand-overs).
type upDeadlines struct{ r, w time.Time }

// Which deadlines of an upstream upSet and upBound set.
const (
	dlRead  = 1
	dlWrite = 2
	dlBoth  = dlRead | dlWrite
)

// dlCache returns the deadline cache of the upstream up, or nil (a
// connection of another kind: its deadlines are always set).
func (c *h1Conn) dlCache(up net.Conn) *upDeadlines {
	if c.h == nil {
		return &c.appDL // inbound: the upstream is the app connection
	}
	switch v := up.(type) {
	case *tls.Conn:
		if bc, ok := v.NetConn().(*batchConn); ok {
			return &bc.h1dl
		}
	case *rawTCPConn: // a pooled plaintext connection (dialH1)
		return &v.h1dl
	}
	return nil
}

// upSet sets the deadlines (which) of the upstream up in use to t,
// unless the exchange was killed (its past deadline stays), and notes
// them in up's cache.
func (c *h1Conn) upSet(up net.Conn, which int, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dead {
		c.setLocked(up, which, t)
	}
}

func (c *h1Conn) setLocked(up net.Conn, which int, t time.Time) {
	switch which {
	case dlRead:
		up.SetReadDeadline(t)
	case dlWrite:
		up.SetWriteDeadline(t)
	default:
		up.SetDeadline(t)
	}
	if dc := c.dlCache(up); dc != nil {
		if which&dlRead != 0 {
			dc.r = t
		}
		if which&dlWrite != 0 {
			dc.w = t
		}
	}
}

// upBound bounds the reads or writes (which) of the upstream up in use
// at d from now (no bound when d <= 0), as upSet does, but lazily: not
// while the deadlines noted in up's cache are fresh (stale). Both ways
// at once share one runtime timer.
func (c *h1Conn) upBound(up net.Conn, which int, d time.Duration) {
	var want time.Time
	if d > 0 {
		want = time.Now().Add(d)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return
	}
	if dc := c.dlCache(up); d > 0 && dc != nil &&
		(which&dlRead == 0 || !stale(dc.r, want, d)) && (which&dlWrite == 0 || !stale(dc.w, want, d)) {
		return
	}
	c.setLocked(up, which, want)
}

// upForget notes that up's read deadline is no longer known (relayBody
// sets it).
func (c *h1Conn) upForget(up net.Conn) {
	c.mu.Lock()
	if dc := c.dlCache(up); dc != nil {
		dc.r = time.Time{}
	}
	c.mu.Unlock()
}

// stale reports whether a deadline last set to last must be set again
// to want (now plus d): not when last is at most want and less than
// d/64 before it. Each set updates a runtime timer, which showed in the
// profile when done per request; a stall or idle bound of d is then
// enforced between d - d/64 and d.
func stale(last, want time.Time, d time.Duration) bool {
	return last.IsZero() || last.After(want) || want.Sub(last) >= d/64
}

// take gets the request buffers.
func (c *h1Conn) take() {
	if c.b == nil {
		c.b = h1Pool.Get().(*h1Bufs)
		h1Held.Add(1)
		c.cr = h1Reader{c: c.c, buf: c.b.in}
	}
}

// release returns the buffers (only when no client byte is pending).
func (c *h1Conn) release() {
	if c.b != nil {
		c.b.out = c.b.out[:0]
		h1Pool.Put(c.b)
		h1Held.Add(-1)
		c.b = nil
		c.cr, c.ur = h1Reader{}, h1Reader{}
	}
}

// kill stops the upstream exchange in flight (the connection's context
// ended; the client conn is closed by the conn's abort).
func (c *h1Conn) kill() {
	c.mu.Lock()
	c.dead = true
	if c.cur != nil {
		c.setLocked(c.cur, dlBoth, time.Unix(1, 0))
	}
	c.mu.Unlock()
}

func (c *h1Conn) setCur(up net.Conn) {
	c.mu.Lock()
	c.cur = up
	if c.dead && up != nil {
		c.setLocked(up, dlBoth, time.Unix(1, 0))
	}
	c.mu.Unlock()
}

// poke wakes the connection if it is idle (shutdown).
func (c *h1Conn) poke() {
	c.mu.Lock()
	if c.idle {
		c.c.SetReadDeadline(time.Unix(1, 0))
		c.rdl = time.Time{}
	}
	c.mu.Unlock()
}

// consume takes n bytes from the client buffer, counting them.
func (c *h1Conn) consume(n int) {
	if n <= 0 {
		return
	}
	c.cr.r += n
	c.countIn(n)
}

// countIn counts n bytes read from the client.
func (c *h1Conn) countIn(n int) {
	c.k.m.readBytes.Add(float64(n))
	c.k.bytesIn.Add(int64(n))
}

// writeClient writes b to the client, counting it.
func (c *h1Conn) writeClient(b []byte) error {
	if d := c.s.cfg.idleTimeout(); d > 0 {
		if want := time.Now().Add(d); stale(c.wdl, want, d) {
			c.c.SetWriteDeadline(want)
			c.wdl = want
		}
	}
	n, err := c.c.Write(b)
	if n > 0 {
		c.k.m.writeBytes.Add(float64(n))
		c.k.bytesOut.Add(int64(n))
	}
	return err
}

// h1Registry tracks the fast-path connections of a Server, to close the
// idle ones at shutdown.
type h1Registry struct {
	mu    sync.Mutex
	conns map[*h1Conn]struct{}
	// closing is set under mu (so that add sees it) and read without
	// it: every request checks it, and a mutex all connections share
	// showed in the profile.
	closing atomic.Bool
}

func (r *h1Registry) add(c *h1Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing.Load() {
		return false
	}
	if r.conns == nil {
		r.conns = map[*h1Conn]struct{}{}
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *h1Registry) remove(c *h1Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *h1Registry) isClosing() bool {
	return r.closing.Load()
}

// shutdown closes the idle connections now; busy ones close after their
// response.
func (r *h1Registry) shutdown() {
	r.mu.Lock()
	r.closing.Store(true)
	cs := make([]*h1Conn, 0, len(r.conns))
	for c := range r.conns {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	for _, c := range cs {
		c.poke()
	}
}

// waitIdle waits, holding no buffer, for the client's next request (up
// to the idle timeout). It takes the buffers once bytes are there.
func (c *h1Conn) waitIdle() error {
	if !c.beginIdle() {
		return errFastClosing
	}
	defer func() {
		c.mu.Lock()
		c.idle = false
		c.mu.Unlock()
	}()
	if c.tcp != nil || c.bc != nil {
		return c.readIdle()
	}
	n, err := c.c.Read(c.one[:])
	if n == 1 {
		c.take()
		c.cr.buf[0] = c.one[0]
		c.cr.w = 1
		c.readDecrypted()
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// beginIdle marks the connection idle, with the idle timeout as its
// read deadline, before a wait for the next request: false when the
// proxy is closing it (shutdown then finds it idle and wakes it, poke).
func (c *h1Conn) beginIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead || c.s.in.fast.isClosing() {
		return false
	}
	c.idle = true
	if d := c.s.cfg.idleTimeout(); d > 0 {
		if want := time.Now().Add(d); stale(c.rdl, want, d) {
			c.c.SetReadDeadline(want)
			c.rdl = want
		}
	} else {
		c.c.SetReadDeadline(time.Time{})
		c.rdl = time.Time{}
	}
	return true
}

// readDecrypted adds to the client buffer, without waiting, what the TLS
// client's record after waitIdle's one byte already holds (and whatever
// else the socket has): the rest of the request head, usually, which
// then needs no header deadline (serve). A failure is left for the next
// read to find again (a TLS error is kept; not waiting is not one).
func (c *h1Conn) readDecrypted() {
	tc, ok := c.c.(*tls.Conn)
	if !ok {
		return
	}
	bc, ok := tc.NetConn().(*batchConn)
	if !ok {
		return
	}
	n, _ := bc.readTLSNoWait(tc, c.cr.buf[c.cr.w:])
	c.cr.w += n
}

// readIdle waits for the client's bytes and reads them, taking the
// buffers only once bytes are there: the read is tried with a buffer,
// which goes back to its pool while the socket has nothing.
//
// The requests a read brings are served inside the same wait while each
// is simple (serveHeld), and the wait goes on for the next one: readIdle
// returns when bytes are left for serve (nil), when a served exchange
// ended the connection (nil, heldStop set), or with the error that ended
// the wait (io.EOF at the client's end).
func (c *h1Conn) readIdle() error {
	if c.rc == nil {
		if c.tcp != nil {
			rc, err := c.tcp.SyscallConn()
			if err != nil {
				return err
			}
			c.rc, c.idleRead = rc, c.readOnce
			c.inq = enableInq(rc)
		} else {
			c.rc, c.idleRead = c.bc.s.rc, c.readOnceTLS
			c.bc.inq = enableInq(c.rc)
		}
	}
	c.rerr = nil
	err := c.rc.Read(c.idleRead)
	if err == nil {
		err = c.rerr
	}
	if c.heldStop || c.b != nil && c.cr.r < c.cr.w {
		return nil
	}
	if err == nil {
		err = io.EOF
	}
	return err
}

// readOnce is readIdle's RawConn callback: a read into the buffers,
// which go back to their pool when the socket had nothing, then the
// requests it brought, served here when they are simple (serveHeld).
// Once those are answered it waits again (false) without trying a read
// first: the poller's readiness was reset only when readIdle began, so
// whatever came since the last read, even during the exchanges, ends the
// wait at once. That saves the read(2) that finds nothing (EAGAIN) which
// a fresh wait per request costs. But only a read that left nothing
// (sysReadInq: no bytes, no end of stream) allows it: otherwise the
// socket is read again before any wait, as what a read leaves is not
// signalled again (an end of stream taken with the last bytes, bytes
// past a full buffer or urgent data).
func (c *h1Conn) readOnce(fd uintptr) bool {
	for {
		c.take() // the buffer is empty here: readIdle starts with none
		var n int
		var e syscall.Errno
		more := true
		if c.inq {
			n, more, e = sysReadInq(fd, c.cr.buf)
		} else {
			n, e = sysRead(fd, c.cr.buf)
		}
		if e == syscall.EAGAIN {
			return c.waitNext()
		}
		if e != 0 {
			c.rerr = e
			return true
		}
		if n == 0 {
			return true // the client's end (io.EOF)
		}
		c.cr.w = n
		c.busy()
		if !c.serveHeld() {
			return true // serve takes what is left, or ends (heldStop)
		}
		if more {
			c.release()
			continue
		}
		return c.waitNext()
	}
}

// busy marks the connection no longer idle: a held read brought a
// request.
func (c *h1Conn) busy() {
	if c.idle {
		c.mu.Lock()
		c.idle = false
		c.mu.Unlock()
	}
}

// waitNext readies a held read's callback to wait for the next request
// (the buffer back to its pool, the connection idle with its deadline,
// beginIdle) and returns the callback's answer: false, wait; true when
// the proxy is closing the connection (errFastClosing).
func (c *h1Conn) waitNext() bool {
	c.release()
	if !c.idle && !c.beginIdle() {
		c.rerr = errFastClosing
		return true
	}
	return false
}

// readOnceTLS is readOnce for a TLS client over a batchConn: the TLS
// layer reads the socket inside the callback (batchConn.held). Before
// the wait goes on, what the TLS layer already holds (a pipelined
// request that came in a record with the last one) is served without a
// read; the wait then starts only once a read since the callback began
// (since the poller's reset, or since the wake-up that consumed its
// readiness) found the socket drained, so nothing that came before is
// left unseen.
func (c *h1Conn) readOnceTLS(fd uintptr) bool {
	sock := int(fd) + 1
	held := sock
	c.bc.drained = false
	for {
		c.take() // the buffer is empty here, as in readOnce
		c.bc.held = held
		n, err := c.c.Read(c.cr.buf)
		c.bc.held = 0
		if n == 0 && err == errWouldBlock {
			if !c.bc.drained {
				held = sock // no read has seen the socket empty yet
				continue
			}
			c.bc.drained = false // for the call after the wait
			return c.waitNext()
		}
		if n == 0 {
			c.rerr = err // the TLS layer's Read returns bytes or an error
			return true
		}
		c.cr.w = n
		if err != nil && err != errWouldBlock {
			// Bytes, then the end (an alert after them): serve takes
			// the bytes; the next read finds the error again.
			c.rerr = err
			return true
		}
		c.busy()
		if !c.serveHeld() {
			return true
		}
		c.release()
		held = -1 // what the TLS layer holds, without a read
	}
}

// serveHeld serves, inside readIdle's wait, the requests in the client
// buffer while each one's head is whole there and nothing of the client
// is to be read for it: no body, nothing serve would hand to net/http
// (an unparsed or too large head, an upgrade, Expect, a routed request).
// Bodies and the rest go to serve, outside the wait, which reads the
// client as it needs. It reports whether it served everything buffered;
// heldStop says an exchange ended the connection.
func (c *h1Conn) serveHeld() bool {
	for c.cr.r < c.cr.w {
		buf := c.cr.buffered()
		n := headEnd(buf, 0)
		if n < 0 || n > c.maxHead {
			return false
		}
		m := &c.b.req
		if !parseRequestHead(buf[:n], m) || m.upgrade || m.expect || m.hasBody() ||
			c.h != nil && c.h.routed(m, c.k.orig) {
			return false
		}
		if !c.exchange(n) || c.s.in.fast.isClosing() {
			c.heldStop = true
			return false
		}
	}
	return true
}

// serve runs the client's requests until the connection is done. A
// non-nil handoff is what was read of a request the fast path leaves to
// net/http (nothing of it was sent): the caller hands the connection
// over with these bytes first.
func (c *h1Conn) serve(peek []byte) (handoff []byte, err error) {
	if !c.s.in.fast.add(c) {
		return nil, errFastClosing
	}
	defer c.s.in.fast.remove(c)
	stop := context.AfterFunc(c.k.ctx, c.kill)
	defer stop()
	defer c.release()
	if len(peek) > 0 {
		c.take()
		c.cr.w = copy(c.cr.buf, peek)
	}
	maxHead := DefaultMaxHeaderBytes
	if c.h != nil {
		maxHead = c.h.cfg.MaxHeaderBytes
	}
	c.maxHead = maxHead
	for {
		if c.b == nil || c.cr.r == c.cr.w {
			c.release()
			if err := c.waitIdle(); err != nil {
				if errors.Is(err, io.EOF) || isTimeout(err) || errors.Is(err, errFastClosing) {
					return nil, nil
				}
				return nil, err
			}
			if c.heldStop {
				c.lingerClose()
				return nil, nil
			}
		}
		// The head usually came whole with the first read: no header
		// deadline to set then (a runtime timer update each way).
		waited := headEnd(c.cr.buffered(), 0) < 0
		if waited {
			c.c.SetReadDeadline(time.Now().Add(c.s.cfg.headerTimeout()))
			c.rdl = time.Time{}
		}
		n, err := readHead(&c.cr, 0, requestLineOK)
		if err != nil {
			if isTimeout(err) || c.cr.r == c.cr.w {
				return nil, nil // a slow or silent client: closed as net/http does
			}
			return c.handoffBytes(), nil // too large, or cut short: net/http answers
		}
		m := &c.b.req
		if n > maxHead || !parseRequestHead(c.cr.buf[c.cr.r:c.cr.r+n], m) || m.upgrade || m.expect ||
			c.h != nil && c.h.routed(m, c.k.orig) {
			return c.handoffBytes(), nil
		}
		if waited {
			c.c.SetReadDeadline(time.Time{})
		}
		if !c.exchange(n) || c.s.in.fast.isClosing() {
			c.lingerClose()
			return nil, nil
		}
	}
}

// h1LingerTime and h1LingerBytes bound lingerClose: net/http's server
// waits 500 ms after a half-close; 256 KiB is what it reads of a body
// its handler left.
const (
	h1LingerTime  = 500 * time.Millisecond
	h1LingerBytes = 256 << 10
)

// lingerClose prepares the close of a client connection whose request
// is not all read (an early answer: 400, a proxy error, an upstream's
// 413...), or with bytes after it: closing a socket with unread bytes
// makes the kernel send a reset, and a client still writing its body
// then sees its write fail, which clients take as the outcome (Go's
// Transport does) and drop the answer. So, as net/http does, it
// half-closes (CloseWrite: the client reads the end of the answer),
// then reads and discards what the client still sends until it closes
// its side, for at most h1LingerTime and h1LingerBytes (past those
// bytes, on the client side, the rest of the time is waited without
// reading). The connection's goroutine is held that long, no more; the
// caller closes.
func (c *h1Conn) lingerClose() {
	if !c.unread && (c.b == nil || c.cr.r == c.cr.w) || c.k.ctx.Err() != nil {
		return
	}
	c.unread = false
	end := time.Now().Add(h1LingerTime)
	cw, ok := c.c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	c.take()
	buf := c.b.in
	c.c.SetReadDeadline(end)
	c.rdl = time.Time{}
	for got := 0; got < h1LingerBytes; {
		n, err := c.c.Read(buf)
		got += n
		c.countIn(n)
		if err != nil {
			return // the client closed (or reset), or the time is up
		}
	}
	if c.h == nil {
		// The server side's client is a client-side proxy, which
		// reads an early answer once its write fails: waiting would
		// only delay the answer.
		return
	}
	t := time.NewTimer(time.Until(end))
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.k.ctx.Done():
	}
}

// handoffBytes copies the unconsumed client bytes (the head of a request
// the fast path leaves to net/http, and anything after it).
func (c *h1Conn) handoffBytes() []byte {
	b := append([]byte(nil), c.cr.buffered()...)
	if len(b) == 0 {
		b = []byte{}
	}
	c.cr.r = c.cr.w
	return b
}

// h1Result is the outcome of a request, for the metrics.
type h1Result struct {
	status    int
	proxyErr  bool
	authority string
	counted   bool
}

func (r h1Result) class() string {
	if r.status >= 500 || r.proxyErr {
		return classFailure
	}
	return classSuccess
}

// exchange serves the request whose head (n bytes) is at the start of
// the client buffer, with the metrics instrument records: false when the
// client connection must close.
func (c *h1Conn) exchange(n int) bool {
	start := time.Now()
	m := &c.met
	if m.requests == nil || string(c.b.req.host) != m.authority {
		m.authority = string(c.b.req.host)
		m.requests = c.s.m.requests.WithLabelValues(c.s.m.dir, m.authority)
	}
	authority := m.authority
	c.unread = c.b.req.hasBody()
	m.requests.Inc()
	res := h1Result{authority: authority}
	var keep bool
	if c.h != nil {
		keep = c.exchangeOut(n, authority, start, &res)
	} else {
		keep = c.exchangeIn(n, authority, start, &res)
	}
	c.countResponse(&res)
	return keep
}

// countResponse counts the response in responses_total, once: before its
// last bytes go to the client (so a client that read it sees it
// counted), or when the exchange ends.
func (c *h1Conn) countResponse(res *h1Result) {
	if res.status != 0 && !res.counted {
		res.counted = true
		m, class := &c.met, res.class()
		if m.responses == nil || m.respStatus != res.status || m.respClass != class || m.respAuthority != res.authority {
			m.responses = c.s.m.responses.WithLabelValues(c.s.m.dir, res.authority, strconv.Itoa(res.status), class)
			m.respAuthority, m.respStatus, m.respClass = res.authority, res.status, class
		}
		m.responses.Inc()
	}
}

// observe records the latency of a response whose head goes out now.
func (c *h1Conn) observe(authority string, start time.Time, res *h1Result) {
	m, class := &c.met, res.class()
	if m.latency == nil || m.latStatus != res.status || m.latClass != class || m.latAuthority != authority {
		m.latency = c.s.m.latency.WithLabelValues(c.s.m.dir, authority, strconv.Itoa(res.status), class)
		m.latAuthority, m.latStatus, m.latClass = authority, res.status, class
	}
	m.latency.Observe(time.Since(start).Seconds())
}

// bodyKind is how a request's body is framed.
func (m *h1Msg) hasBody() bool { return m.chunked || m.cl > 0 }

// replayable reports whether the request (head of n bytes) can be sent
// again from the client buffer: no body, or a small one already there.
func (c *h1Conn) replayable(n int) bool {
	m := &c.b.req
	if m.chunked {
		return false
	}
	if m.cl <= 0 {
		return true
	}
	return m.cl <= h1MaxReplay && int64(c.cr.w-c.cr.r-n) >= m.cl
}

// idempotencyKey reports whether the request carries an
// Idempotency-Key or X-Idempotency-Key field: as net/http's Transport
// does, such a request counts as idempotent whatever its method.
func (m *h1Msg) idempotencyKey() bool {
	for _, f := range m.fields {
		if asciiEqualFold(f.name, "Idempotency-Key") || asciiEqualFold(f.name, "X-Idempotency-Key") {
			return true
		}
	}
	return false
}

// canResend reports whether the request, replay saying it is all in the
// client buffer (replayable), may be sent again on another connection
// when a reused one turned out dead before any byte of the response: its
// method is idempotent (RFC 9110 section 9.2.2) or it carries an
// idempotency key. The upstream may have acted on it before closing.
func (c *h1Conn) canResend(replay bool) bool {
	m := &c.b.req
	return replay && (idempotentMethod(m.method) || m.idempotencyKey())
}

// buildRequestHead writes the outgoing head of the request into c.b.out:
// the request line and fields, less hop-by-hop ones and those drop
// names, then extra lines.
func (c *h1Conn) buildRequestHead(drop func(name []byte) bool, extra func(out []byte) []byte) {
	m := &c.b.req
	out := c.b.out[:0]
	out = append(out, m.method...)
	out = append(out, ' ')
	out = append(out, m.target...)
	out = append(out, " HTTP/1.1\r\n"...)
	for _, f := range m.fields {
		if m.hopByHop(f.name) && !isTrailersTE(f) || drop(f.name) {
			continue
		}
		out = appendField(out, f)
	}
	out = extra(out)
	out = append(out, "\r\n"...)
	c.b.out = out
}

// isTrailersTE is "TE: trailers", which passes (as in ReverseProxy).
func isTrailersTE(f h1Field) bool {
	return asciiEqualFold(f.name, "Te") && asciiEqualFold(f.value, "trailers")
}

func appendField(out []byte, f h1Field) []byte {
	out = append(out, f.name...)
	out = append(out, ": "...)
	out = append(out, f.value...)
	return append(out, "\r\n"...)
}

// upWrite writes b to the upstream up, within the idle timeout: a
// request's upload is bounded per write, not as a whole (the response
// timeout starts once it is sent).
//
// A pooled connection keeps the deadlines of its last use: every use
// sets those it needs.
func (c *h1Conn) upWrite(up net.Conn, b []byte) error {
	c.upBound(up, dlWrite, c.s.cfg.idleTimeout())
	_, err := up.Write(b)
	return err
}

// sendRequest writes the request (head in c.b.out, n bytes of client
// head) and its body to up. A replayable request is written from the
// client buffer without consuming it (consumeSent does that once a
// response comes); others are consumed as they stream, and touched says
// whether any body byte was taken from the client.
//
// With check, up is a kept plaintext connection whose peer may have
// closed it or sent bytes nobody asked for (an HTTP/1 server says
// nothing between requests): it is peeked first, and errNotQuiet (not
// an errUpstreamWrite: nothing was sent) says it must not be used. The
// peek of a request whose response is awaited (awaitAfter) is made in
// the wait itself, where an end of stream it finds cannot go unseen.
func (c *h1Conn) sendRequest(up net.Conn, n int, replay, check bool) (touched bool, err error) {
	m := &c.b.req
	var await *rawSock // the socket of a response awaited (awaitAfter)
	if replay && c.oneWrite(n) {
		await = upSock(up)
	}
	if check && await == nil && !balancer.ConnQuiet(up) {
		return false, errNotQuiet
	}
	if replay {
		c.unread = false // all of it is in the buffer
		body := c.cr.buf[c.cr.r+n : c.cr.r+n+int(max(m.cl, 0))]
		out := c.b.out
		if len(body) > 0 && len(out)+len(body) <= cap(out) {
			out = append(out, body...)
			body = nil
		}
		if await != nil { // one write (oneWrite): body is in out
			// The wait for the response starts with the write, and
			// so does the response timeout.
			c.upBound(up, dlRead, c.respTimeout())
			if c.awWrite == nil {
				c.awWrite = c.writeAwaited
			}
			c.awUp, c.awBuf = up, out
			err := await.awaitAfter(c.awWrite, check)
			c.awUp, c.awBuf = nil, nil
			if err == errNotQuiet {
				return false, err
			}
			if err != nil {
				return false, fmt.Errorf("%w: %w", errUpstreamWrite, err)
			}
			return false, nil
		}
		if err := c.upWrite(up, out); err != nil {
			return false, fmt.Errorf("%w: %w", errUpstreamWrite, err)
		}
		if len(body) > 0 {
			if err := c.upWrite(up, body); err != nil {
				return false, fmt.Errorf("%w: %w", errUpstreamWrite, err)
			}
		}
		return false, nil
	}
	c.consume(n)
	write := func(b []byte) error { return c.upWrite(up, b) }
	// The head goes with what is buffered of the body.
	out := c.b.out
	buf := c.cr.buffered()
	if m.cl > 0 && len(out)+len(buf) <= cap(out) {
		k := int(min(int64(len(buf)), m.cl))
		out = append(out, buf[:k]...)
		c.consume(k)
		m.cl -= int64(k)
	}
	if err := c.upWrite(up, out); err != nil {
		return true, fmt.Errorf("%w: %w", errUpstreamWrite, err)
	}
	cl := m.cl
	if m.chunked {
		cl = -1
	}
	if cl == 0 {
		c.unread = false
		return true, nil
	}
	c.rdl = time.Time{} // relayBody sets the client's read deadline
	err = relayBody(&c.cr, write, cl, m.chunked, c.s.cfg.idleTimeout(), c.countIn, nil)
	var we *writeError
	switch {
	case errors.As(err, &we):
		return true, fmt.Errorf("%w: %w", errUpstreamWrite, we.err)
	case err != nil:
		return true, fmt.Errorf("%w: %w", errClientBody, err)
	}
	c.unread = false
	return true, nil
}

// oneWrite reports whether sendRequest writes the replayable request
// (n bytes of client head) in one write: its body, if any, fits in the
// head's buffer after the head.
func (c *h1Conn) oneWrite(n int) bool {
	cl := int(max(c.b.req.cl, 0))
	return cl == 0 || len(c.b.out)+cl <= cap(c.b.out)
}

// writeAwaited is sendRequest's write under awaitAfter.
func (c *h1Conn) writeAwaited() error { return c.upWrite(c.awUp, c.awBuf) }

// upSock returns the socket under the upstream up when its response can
// be awaited (awaitAfter): a raw TCP connection, or TLS over a batchConn
// that has read nothing ahead; else nil.
func upSock(up net.Conn) *rawSock {
	switch v := up.(type) {
	case *rawTCPConn:
		return v.s
	case *tls.Conn:
		if bc, ok := v.NetConn().(*batchConn); ok && bc.rbuf == nil {
			return bc.s
		}
	}
	return nil
}

// respTimeout bounds the wait for a response head once the request is
// sent: the client side's ResponseHeaderTimeout, the server side's
// inboundResponseTimeout.
func (c *h1Conn) respTimeout() time.Duration {
	if c.h != nil {
		return c.h.cfg.ResponseHeaderTimeout
	}
	return c.s.inboundResponseTimeout()
}

// consumeSent consumes a replayable request (head of n bytes and body)
// once it is sent for good.
func (c *h1Conn) consumeSent(n int) {
	c.consume(n + int(max(c.b.req.cl, 0)))
}

// readResponse reads the final response head from up into c.b.resp,
// relaying 1xx responses to the client; it returns the head's length.
// got says whether any response byte came.
func (c *h1Conn) readResponse(up net.Conn) (n int, got bool, err error) {
	c.ur = h1Reader{c: up, buf: c.b.up}
	m := &c.b.resp
	for i := 0; ; i++ {
		n, err := readHead(&c.ur, h1MaxResponseHead, statusLineOK)
		if err != nil {
			if errors.Is(err, errHeadTooLarge) || errors.Is(err, errNotStrict) {
				err = errBadResponse
			}
			return 0, c.ur.w > 0, err
		}
		head := c.ur.buf[c.ur.r : c.ur.r+n]
		if !parseResponseHead(head, m) {
			return 0, true, errBadResponse
		}
		switch {
		case m.status == http.StatusSwitchingProtocols:
			return 0, true, errUnaskedUpgrade
		case m.status >= 200:
			return n, true, nil
		case i >= 5:
			return 0, true, errTooMany1xx
		}
		// Relayed as the final head is: HTTP/1.1, without hop-by-hop
		// fields (those the 1xx's Connection names included).
		if err := c.writeClient(c.responseHead(head, false)); err != nil {
			return 0, true, fmt.Errorf("relaying a %d response: %w", m.status, err)
		}
		c.ur.r += n
	}
}

// responseHead builds in c.b.out the head to relay for the response
// head parsed into c.b.resp: HTTP/1.1, its fields less hop-by-hop ones
// (and, from an app, meshproxy-error app-unreachable: dropAppUnreachable),
// and "Connection: close" when closing.
func (c *h1Conn) responseHead(head []byte, closing bool) []byte {
	m := &c.b.resp
	line, _, _ := nextLine(head)
	out := c.b.out[:0]
	out = append(out, "HTTP/1.1"...)
	out = append(out, line[8:]...)
	out = append(out, "\r\n"...)
	for _, f := range m.fields {
		if m.hopByHop(f.name) || m.proxyErr != nil && c.h == nil && isAppUnreachable(f) {
			continue
		}
		out = appendField(out, f)
	}
	if closing {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	c.b.out = out
	return out
}

// writeError marks a failure to write the relayed bytes.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// relayBody copies a body from src to write: n bytes (n >= 0), chunked,
// or until src's end (n < 0, not chunked), each read within rd (0: no
// limit). consumed is told of the bytes taken from src; onEnd, if not
// nil, runs once the last byte is read, before it is written. Failures to
// write come back as *writeError.
func relayBody(src *h1Reader, write func([]byte) error, n int64, chunked bool, rd time.Duration, consumed func(int), onEnd func()) error {
	var cs chunkScanner
	for {
		b := src.buffered()
		var take int
		done := false
		switch {
		case chunked:
			k, err := cs.scan(b)
			if err != nil {
				return err
			}
			take, done = k, cs.state == csDone
		case n >= 0:
			take = int(min(int64(len(b)), n))
			n -= int64(take)
			done = n == 0
		default:
			take = len(b)
		}
		src.r += take
		if consumed != nil && take > 0 {
			consumed(take)
		}
		if done && onEnd != nil {
			onEnd()
		}
		if take > 0 {
			if err := write(b[:take]); err != nil {
				return &writeError{err}
			}
		}
		if done {
			return nil
		}
		if rd > 0 {
			src.c.SetReadDeadline(time.Now().Add(rd))
		}
		if _, err := src.fill(); err != nil {
			if errors.Is(err, io.EOF) {
				if n < 0 && !chunked {
					return nil // the body ends with the connection
				}
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
}

// relayResponse relays the response whose head (n bytes) is in c.ur to
// the client. release is called once, as soon as the whole response is
// read from the upstream (before its last bytes are written to the
// client, so the next request finds the connection back in its pool),
// or when the relay failed: keep says whether the upstream connection
// may be used again. clientKeep says whether the client connection stays
// open; bodyErr is why the body broke off (the client then closes), if
// it did.
func (c *h1Conn) relayResponse(n int, authority string, start time.Time, res *h1Result, release func(keep bool)) (clientKeep bool, bodyErr error) {
	req, m := &c.b.req, &c.b.resp
	res.status = m.status
	res.proxyErr = m.proxyErr != nil
	noBody := string(req.method) == http.MethodHead || m.status == http.StatusNoContent || m.status == http.StatusNotModified
	untilClose := !noBody && !m.chunked && m.cl < 0
	clientKeep = !req.connClose && !untilClose && !c.s.in.fast.isClosing()
	upKeep := !untilClose && !m.connClose && !m.http10
	released := false
	end := func() {
		c.countResponse(res)
		if !released {
			released = true
			// Bytes past the response: never reuse.
			release(upKeep && c.ur.r == c.ur.w)
		}
	}

	out := c.responseHead(c.ur.buf[c.ur.r:c.ur.r+n], !clientKeep)
	c.ur.r += n

	rd := c.s.cfg.idleTimeout()
	if c.h != nil && c.h.cfg.StreamIdleTimeout > 0 {
		rd = c.h.cfg.StreamIdleTimeout
	}
	if rd <= 0 {
		// No per-read bound on the body: the response header
		// timeout's deadline must not cut it.
		c.upSet(c.ur.c, dlRead, time.Time{})
	}
	c.observe(authority, start, res)
	cl := m.cl
	switch {
	case noBody:
		cl = 0
	case m.chunked:
		cl = -1
	}
	// The head goes out with the body bytes already read, or alone at
	// once when none are.
	pending := out
	if cl == 0 {
		end()
	}
	if cl == 0 || len(c.ur.buffered()) == 0 {
		pending = nil
		if err := c.writeClient(out); err != nil {
			upKeep = false
			end()
			return false, &writeError{err}
		}
	}
	write := func(b []byte) error {
		if pending != nil {
			p := pending
			pending = nil
			if len(p)+len(b) <= cap(p) {
				return c.writeClient(append(p, b...))
			}
			if err := c.writeClient(p); err != nil {
				return err
			}
		}
		return c.writeClient(b)
	}
	var err error
	if cl != 0 {
		if cl < 0 || int64(len(c.ur.buffered())) < cl {
			c.upForget(c.ur.c) // relayBody may read, setting the read deadline
		}
		err = relayBody(&c.ur, write, cl, m.chunked, rd, nil, end)
	}
	if err != nil {
		upKeep = false
		var we *writeError
		if !res.counted && !errors.As(err, &we) {
			// The upstream broke its body off: the client sees it
			// cut short (the connection closes), and it counts as a
			// failure, whatever its status (as Linkerd classifies a
			// response stream that fails).
			res.proxyErr = true
		}
	}
	end()
	if err == nil && pending != nil {
		if err = c.writeClient(pending); err != nil {
			err = &writeError{err}
		}
	}
	if err != nil {
		return false, err
	}
	return clientKeep, nil
}

// clientBodyFailed ends a request whose body could not be read from the
// client (the upstream saw it cut short; nothing was written to the
// client yet). A body whose chunked framing is malformed is the client's
// error: it gets 400 bad-request, counted, and the connection closes. A
// client that went away (end of file, reset, idle timeout) gets no
// answer; the response is counted with status_code 499
// (statusClientClosed), a failure, as the net/http path counts its 502
// for it. Both are logged once. The upstream connection, its request
// cut short, was closed by the caller.
func (c *h1Conn) clientBodyFailed(err error, authority string, start time.Time, res *h1Result) {
	if errors.Is(err, errBadChunk) {
		c.s.log.Debug("http request refused", "src", c.k.src, "authority", authority, "status", http.StatusBadRequest, "reason", "bad-request", "error", err)
		c.writeProxyError(http.StatusBadRequest, "bad-request", false, authority, start, res)
		return
	}
	res.status, res.proxyErr = statusClientClosed, true
	c.s.log.Debug("http request abandoned by the client", "src", c.k.src, "authority", authority, "status", statusClientClosed, "error", err)
}

// writeError writes a response the proxy makes itself.
func (c *h1Conn) writeProxyError(status int, reason string, keep bool, authority string, start time.Time, res *h1Result) {
	res.status, res.proxyErr = status, true
	c.observe(authority, start, res)
	out := c.b.out[:0]
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(status)...)
	out = append(out, "\r\nMeshproxy-Error: "...)
	out = append(out, reason...)
	out = append(out, "\r\nContent-Length: 0\r\n"...)
	if !keep {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	c.b.out = out
	c.countResponse(res)
	c.writeClient(out)
}
