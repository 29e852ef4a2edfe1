package proxy

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"time"
)

// headerXFCC is the header that tells the application who the mesh client
// is (Envoy/Istio format).
const headerXFCC = "X-Forwarded-Client-Cert"

// isXFCCName reports a field name an app may take for
// x-forwarded-client-cert: any case, and underscores for dashes, since
// CGI-style servers (WSGI, Rack, PHP's FastCGI) give X_Forwarded_Client_Cert
// and X-Forwarded-Client-Cert the same variable
// (HTTP_X_FORWARDED_CLIENT_CERT). A client's copy in any of them is
// removed, or it could forge an identity.
func isXFCCName[T []byte | string](name T) bool {
	if len(name) != len(headerXFCC) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '_' {
			c = '-'
		}
		if lowerASCII(c) != lowerASCII(headerXFCC[i]) {
			return false
		}
	}
	return true
}

// delXFCC removes every field of h that isXFCCName.
func delXFCC(h http.Header) {
	for k := range h {
		if isXFCCName(k) {
			delete(h, k)
		}
	}
}

// serveHTTP1 proxies HTTP/1 requests read from client (after the peeked
// bytes) to target, through net/http's server and httputil.ReverseProxy:
// every request loses any x-forwarded-client-cert it came with (in any
// spelling, isXFCCName) and, when xfcc is not empty, gets ours. Ambiguous framings get 400, as on the
// client side (rejectAmbiguous). Keep-alive, chunked bodies, trailers and
// upgrades (WebSocket) are handled by the library; Host and the
// X-Forwarded-* headers pass unchanged, none is added. The first request
// uses up, the connection dialed during detection (the caller tracks
// it); should it close, the next request dials target again, these
// connections tracked as one set (see appConns). It returns when the
// client connection is done.
func (s *Server) serveHTTP1(k *conn, client net.Conn, peek []byte, up net.Conn, target netip.AddrPort, xfcc string) error {
	client.SetDeadline(time.Time{})
	// The framing checks of the client side (rejectAmbiguous): a front
	// end framing by Content-Length must not see one request where
	// net/http reads two.
	hc := &httpConn{Conn: client, peek: peek, k: k, closed: make(chan struct{}),
		frames: newFrameChecker(http.DefaultMaxHeaderBytes + 4096)}
	info := &reqInfo{k: k, appProto: "http/1.1", frames: hc.frames}
	l := &oneConnListener{c: hc, done: make(chan struct{})}

	var upOnce, trackApps sync.Once
	apps := &appConns{}
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
			trackApps.Do(func() { k.track(connCloser(apps.close)) })
			return apps.add(nc)
		},
		MaxIdleConnsPerHost:   1,
		DisableCompression:    true,
		IdleConnTimeout:       s.cfg.idleTimeout(),
		ResponseHeaderTimeout: s.inboundResponseTimeout(),
	}
	defer tr.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = target.String()
			keepForwarded(pr)
			delXFCC(pr.Out.Header)
			if xfcc != "" {
				pr.Out.Header.Set(headerXFCC, xfcc)
			}
		},
		Transport:     tr,
		FlushInterval: -1,
		BufferPool:    bytePool{},
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler:  s.appErrorHandler(k, target),
		// The app's answer may not pass for the proxy's own.
		ModifyResponse: dropAppUnreachable,
	}
	idle := s.cfg.idleTimeout()
	srv := &http.Server{
		// Counted as the fast path counts its requests: the server
		// side's requests it hands over (upgrades, HTTP/1.0...) and
		// plaintext HTTP/1 to an app port were missing from
		// requests_total and responses_total.
		Handler: s.instrument(rejectAmbiguous(rp)),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, reqInfoKey{}, info)
		},
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
// come first, bytes are counted, and Close is reported (closed, if not
// nil, is closed; onClose runs).
type httpConn struct {
	net.Conn
	peek   []byte
	k      *conn
	once   sync.Once
	closed chan struct{}
	frames *frameChecker   // nil: framing not followed
	base   context.Context // a shared server's requests' context; nil: the server's own
	// onClose, if set, runs once, at the first Close, after the
	// connection is closed.
	onClose func()
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
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.closed != nil {
			close(c.closed)
		}
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
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

// appConns is the set of app connections serveHTTP1 dialed and has not
// closed: the client connection tracks the set once (closing it closes
// them all), and a connection leaves it when closed. Tracking each dial
// instead would pile up one tracked conn per dial, for as long as the
// client connection lives, when the app closes after every response.
type appConns struct {
	mu     sync.Mutex
	conns  map[*appConn]struct{}
	closed bool
}

// add puts nc in the set; when the set is closed already, nc is closed
// and an error returned.
func (a *appConns) add(nc net.Conn) (net.Conn, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		nc.Close()
		return nil, net.ErrClosed
	}
	if a.conns == nil {
		a.conns = map[*appConn]struct{}{}
	}
	c := &appConn{Conn: nc, set: a}
	a.conns[c] = struct{}{}
	a.mu.Unlock()
	return c, nil
}

// close closes every connection of the set, and any added later.
func (a *appConns) close() error {
	a.mu.Lock()
	a.closed = true
	cs := a.conns
	a.conns = nil
	a.mu.Unlock()
	for c := range cs {
		c.Conn.Close()
	}
	return nil
}

// appConn is a connection of an appConns: Close takes it out.
type appConn struct {
	net.Conn
	set *appConns
}

// Close closes the connection and takes it out of its set.
func (c *appConn) Close() error {
	c.set.mu.Lock()
	delete(c.set.conns, c)
	c.set.mu.Unlock()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection when it can.
func (c *appConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// connCloser is a conn for conn.track whose Close runs the function;
// its other methods do nothing.
type connCloser func() error

func (f connCloser) Close() error                     { return f() }
func (f connCloser) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (f connCloser) Write([]byte) (int, error)        { return 0, net.ErrClosed }
func (f connCloser) LocalAddr() net.Addr              { return nil }
func (f connCloser) RemoteAddr() net.Addr             { return nil }
func (f connCloser) SetDeadline(time.Time) error      { return nil }
func (f connCloser) SetReadDeadline(time.Time) error  { return nil }
func (f connCloser) SetWriteDeadline(time.Time) error { return nil }
