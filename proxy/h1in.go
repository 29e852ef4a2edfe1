package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// The server (inbound) side of the HTTP/1.1 fast path: requests from a
// mesh connection whose transport header says http/1 go to the app over
// one connection pinned to the mesh connection.

// serveH1Inbound serves the mesh connection tc (protocol http/1) on the
// fast path: every request loses any x-forwarded-client-cert it came
// with (in any spelling, isXFCCName) and, when xfcc is not empty, gets
// ours; it goes to target over one app connection, dialed at the first
// request and again when it closed. A failed dial is answered 502 with meshproxy-error
// app-unreachable. What the fast path does not do (upgrades...) goes to
// serveHTTP1 with the bytes read so far.
func (s *Server) serveH1Inbound(k *conn, tc *tls.Conn, target netip.AddrPort, xfcc string) error {
	c := &h1Conn{s: s, k: k, c: tc, target: target, xfcc: xfcc}
	if bc, ok := tc.NetConn().(*batchConn); ok {
		c.bc = bc
	}
	rest, err := c.serve(nil)
	if rest == nil {
		if c.app != nil {
			c.app.Close()
		}
		return err
	}
	var up net.Conn
	if c.app != nil {
		up = c.app
	}
	return s.serveHTTP1(k, tc, rest, up, target, xfcc)
}

// appConn returns the connection to the app, dialing it when there is
// none; reused says it served a request before. A kept connection is to
// be checked (sendRequest's check: one peek, made inside the wait for
// the response when that is awaited) and replaced when the app closed it
// or sent bytes unasked: an HTTP/1 server says nothing before a request,
// so pending bytes are a broken response's leftovers (a body after a
// HEAD, more than its Content-Length...) or a goodbye, and read as the
// next response they would answer another request. (A close that
// crosses the request on the wire is left to the caller's resend.)
func (c *h1Conn) appConn() (up net.Conn, reused bool, err error) {
	if c.app != nil {
		return c.app, true, nil
	}
	nc, err := c.s.dial(c.k.ctx, c.target)
	if err != nil {
		return nil, false, err
	}
	app := newRawTCPConn(nc)
	c.setApp(app)
	if !c.appTracked {
		// Tracked once, as whatever app connection is current: one
		// tracked conn per dial would pile up on a long-lived mesh
		// connection whose app closes after each response.
		c.appTracked = true
		c.k.track(h1AppCloser{c})
	}
	return app, false, nil
}

// setApp sets the current app connection (read by h1AppCloser).
func (c *h1Conn) setApp(nc net.Conn) {
	c.mu.Lock()
	c.app = nc
	c.appDL = upDeadlines{}
	c.mu.Unlock()
}

// h1AppCloser is the conn a server-side fast-path connection tracks for
// its app connections: closing it closes the current one. Only Close is
// used.
type h1AppCloser struct{ c *h1Conn }

// Close closes the current app connection, if any.
func (a h1AppCloser) Close() error {
	a.c.mu.Lock()
	nc := a.c.app
	a.c.mu.Unlock()
	if nc == nil {
		return nil
	}
	return nc.Close()
}

func (a h1AppCloser) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (a h1AppCloser) Write([]byte) (int, error)        { return 0, net.ErrClosed }
func (a h1AppCloser) LocalAddr() net.Addr              { return nil }
func (a h1AppCloser) RemoteAddr() net.Addr             { return nil }
func (a h1AppCloser) SetDeadline(time.Time) error      { return nil }
func (a h1AppCloser) SetReadDeadline(time.Time) error  { return nil }
func (a h1AppCloser) SetWriteDeadline(time.Time) error { return nil }

// inboundResponseTimeout bounds the server side's wait for the app's
// response head once the request is sent: Config.InboundResponseTimeout,
// else the ResponseHeaderTimeout of the Server's HTTPConfig (the client
// side's setting: one config serves both), else
// DefaultResponseHeaderTimeout, never past the idle timeout;
// 0 means none. The client side's wait for the same response started
// earlier (when its request left), so with equal settings the client
// side answers its 504 first; this bound frees the app and mesh
// connections instead of holding them for the idle timeout.
func (s *Server) inboundResponseTimeout() time.Duration {
	d := DefaultResponseHeaderTimeout
	switch {
	case s.cfg.InboundResponseTimeout != 0:
		d = s.cfg.InboundResponseTimeout
	case s.cfg.HTTP != nil && s.cfg.HTTP.ResponseHeaderTimeout != 0:
		d = s.cfg.HTTP.ResponseHeaderTimeout
	}
	idle := s.cfg.idleTimeout()
	if d < 0 || idle > 0 && idle < d {
		return idle
	}
	return d
}

// exchangeIn serves one request of the mesh connection (see exchange).
func (c *h1Conn) exchangeIn(n int, authority string, start time.Time, res *h1Result) bool {
	m := &c.b.req
	c.buildRequestHead(func(name []byte) bool { return isXFCCName(name) }, func(out []byte) []byte {
		if c.xfcc == "" {
			return out
		}
		out = append(out, headerXFCC+": "...)
		out = append(out, c.xfcc...)
		return append(out, "\r\n"...)
	})
	replay := c.replayable(n)
	fail := func(status int, reason string, touched bool) bool {
		if !touched {
			c.consume(n)
		}
		keep := !m.hasBody() && !m.connClose && !c.s.in.fast.isClosing()
		c.writeProxyError(status, reason, keep, authority, start, res)
		return keep
	}
	for try := 0; ; try++ {
		up, reused, err := c.appConn()
		if err != nil {
			if c.k.ctx.Err() != nil {
				return false
			}
			c.k.m.connectErrors.Inc()
			c.s.log.Warn("connect failed", "src", c.k.src, "dst", c.k.orig.String(), "target", c.target.String(), "error", err)
			return fail(http.StatusBadGateway, reasonAppUnreachable, false)
		}
		c.setCur(up)
		// upWrite bounds the writes (lazily, upBound), and so is the
		// wait for the response below.
		touched, err := c.sendRequest(up, n, replay, reused)
		if err == errNotQuiet {
			// The kept connection was closed or has stray bytes:
			// nothing was sent; a new one.
			up.Close()
			c.setApp(nil)
			c.setCur(nil)
			try--
			continue
		}
		var hn int
		var got bool
		if errors.Is(err, errUpstreamWrite) && !errors.Is(err, errClientBody) {
			// The app answered before it read the whole body: see
			// attemptOut.
			var rerr error
			if hn, got, rerr = c.readEarlyResponse(up); rerr == nil {
				err = nil
			} else if got {
				err = rerr
			}
		} else if err == nil {
			c.upBound(up, dlRead, c.respTimeout())
			hn, got, err = c.readResponse(up)
		}
		if err != nil {
			up.Close()
			c.setApp(nil)
			c.setCur(nil)
			if c.k.ctx.Err() != nil {
				return false
			}
			if errors.Is(err, errClientBody) {
				c.clientBodyFailed(err, authority, start, res)
				return false
			}
			if isTimeout(err) {
				// No response head in time (or the app stopped
				// reading the body): 504, as the client side maps
				// its own timeout. The app connection is closed: a
				// late response must not answer the next request.
				c.s.log.Warn("http response timed out", "src", c.k.src, "authority", authority,
					"target", c.target.String(), "timeout", c.s.inboundResponseTimeout(), "error", err)
				return fail(http.StatusGatewayTimeout, "timeout", touched)
			}
			if reused && !got && try == 0 && c.canResend(replay) {
				// The app closed the kept connection as the
				// request reached it (its keep-alive ended): once
				// more, on a new one.
				c.s.log.Debug("http request sent again on a new app connection", "src", c.k.src,
					"authority", authority, "target", c.target.String(), "error", err)
				continue
			}
			c.s.log.Debug("http delivery failed", "src", c.k.src, "target", c.target.String(), "error", err)
			return fail(http.StatusBadGateway, "upstream", touched)
		}
		if replay {
			c.consumeSent(n)
		}
		clientKeep, berr := c.relayResponse(hn, authority, start, res, func(keep bool) {
			c.setCur(nil)
			if !keep {
				up.Close()
				c.setApp(nil)
			}
		})
		return berr == nil && clientKeep
	}
}
