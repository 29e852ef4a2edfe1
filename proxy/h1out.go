package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"meshproxy/balancer"
)

// The client (outbound) side of the HTTP/1.1 fast path: each request
// goes to an endpoint picked as RoundTrip picks without a route policy,
// over a pooled upstream connection (mutual TLS with transport header
// protocol http/1 to a meshed endpoint, plain TCP otherwise).

// fastOK reports whether the runtime's HTTP/1 client connections may use
// the fast path: it has no access log and no per-service concurrency
// limits (the net/http path does those).
func (h *httpRuntime) fastOK() bool {
	return h.cfg.AccessLog == nil && h.cfg.MaxConcurrentPerService <= 0
}

// newH1Pool makes the pool of upstream connections of the fast path.
func (h *httpRuntime) newH1Pool() *balancer.Pool[net.Conn] {
	idle := h.cfg.IdleTimeout
	if idle == 0 {
		idle = -1 // none
	}
	perEP := h.cfg.MaxIdlePerEndpoint
	if perEP == 0 {
		perEP = -1 // keep none
	}
	p, err := balancer.NewPool(balancer.PoolConfig[net.Conn]{
		Dial:               h.dialH1,
		IdleTimeout:        idle,
		MaxIdlePerEndpoint: perEP,
		MaxLifetime:        h.cfg.MaxLifetime,
		MaxIdle:            h.cfg.MaxIdleConns,
		WatchClose:         true,
		PreConnect:         true, // requests past the pool's size: a spare for the next
		Metrics:            h.cfg.PoolMetrics,
	})
	if err != nil {
		panic(fmt.Sprintf("proxy: the HTTP/1 pool: %v", err)) // only a missing Dial fails
	}
	return p
}

// dialH1 opens an upstream connection for the fast path: mutual TLS
// with protocol http/1 when dst is meshed, plain TCP otherwise (refused
// when outbound TLS is required). A spare's failed dial (pre-connect),
// which no request sees, is logged here.
func (h *httpRuntime) dialH1(ctx context.Context, dst netip.AddrPort) (c net.Conn, err error) {
	if balancer.IsPreConnect(ctx) {
		defer func() {
			if err != nil {
				h.s.log.Debug("pre-connect failed", "dst", dst.String(), "backoff", balancer.PreConnectBackoff, "error", err)
			}
		}()
	}
	if m := h.s.mesh; m != nil {
		if state, _ := m.meshState(dst.Addr()); state != balancer.Unmeshed {
			c, err := h.dialMeshConn(ctx, dst.String(), ProtocolHTTP1)
			if !errors.Is(err, errNotMeshed) {
				return c, err
			}
		}
		if m.cfg.RequireOutboundTLS {
			return nil, errMeshRequired
		}
	}
	c, err = h.dialPlain(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	return newRawTCPConn(c), nil
}

// routed reports whether the request's host has a route in the route
// table (the net/http path applies it).
func (h *httpRuntime) routed(m *h1Msg, orig netip.AddrPort) bool {
	if h.cfg.Routes == nil {
		return false
	}
	tbl := h.cfg.Routes.Load()
	if tbl == nil {
		return false
	}
	host, port := splitAuthority(string(m.host), orig.Port())
	return tbl.lookup(host, port, h.cfg.Namespace) != nil
}

// idempotentMethod is idempotent's method test.
func idempotentMethod(m []byte) bool {
	switch string(m) {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// exchangeOut serves one client request on the fast path (see exchange).
func (c *h1Conn) exchangeOut(n int, authority string, start time.Time, res *h1Result) bool {
	h, m := c.h, &c.b.req
	orig := c.k.orig
	host, port := splitAuthority(authority, orig.Port())
	tp, dropState := traceH1(m, h.cfg.TraceSampleRate)
	c.buildRequestHead(func(name []byte) bool {
		return asciiEqualFold(name, headerXFCC) || asciiEqualFold(name, headerAppProtocol) ||
			asciiEqualFold(name, headerTraceparent) || dropState && asciiEqualFold(name, "Tracestate")
	}, func(out []byte) []byte {
		out = append(out, "Traceparent: "...)
		out = append(out, tp...)
		return append(out, "\r\n"...)
	})
	replay := c.replayable(n)
	canRetry := idempotentMethod(m.method) && !m.hasBody()
	attempts := 1 + h.cfg.Retries
	var (
		err     error
		failed  []netip.AddrPort
		touched bool
	)
	for i := range attempts {
		var (
			dst netip.AddrPort
			ep  *balancer.Endpoint
		)
		dst, ep, err = h.route(c.k.ctx, host, port, orig, false, failed)
		if err != nil {
			break
		}
		t0 := time.Now()
		var up balancer.PooledConn[net.Conn]
		var hn int
		up, hn, touched, err = c.attemptOut(dst, host, n, replay, t0)
		if err == nil && c.b.resp.status == http.StatusBadGateway && string(c.b.resp.proxyErr) == reasonAppUnreachable && !touched &&
			isMeshConn(up.Conn) {
			// The endpoint's proxy could not reach its app: the app
			// saw nothing, so this is a connect failure of the
			// endpoint (failure accrual, another pick), not an answer.
			// (Only a mesh peer says so: from a plaintext upstream it
			// is the app's own answer.)
			c.dropResponse(up, hn)
			err = &connectError{err: errAppUnreachable}
		}
		if err == nil {
			latency := time.Since(t0)
			if replay {
				c.consumeSent(n)
			}
			clientKeep, berr := c.relayResponse(hn, authority, start, res, func(keep bool) {
				c.setCur(nil)
				// A mesh peer is our own proxy, which relays only
				// framed bytes; an app may not be: its next use
				// checks that no stray bytes came (a body after a
				// HEAD, more than its Content-Length...), which
				// read as the next response would answer another
				// request (attemptOut: sendRequest's check, made
				// inside the wait for the response). The close
				// watcher sees hang-ups only.
				if keep {
					// Pooled with its deadlines: every use sets
					// those it needs (upWrite, attemptOut).
					h.pool.Put(up)
				} else {
					up.Conn.Close()
				}
			})
			if ep != nil {
				rerr := berr
				var we *writeError
				if errors.As(berr, &we) {
					rerr = context.Canceled // the client went away: not the endpoint's fault
				}
				if res.status >= 500 {
					rerr = fmt.Errorf("status %d", res.status)
				}
				ep.Release(rerr, latency)
			}
			return berr == nil && clientKeep
		}
		if ep != nil {
			rerr := err
			if errors.Is(err, errClientBody) || errors.Is(err, errStaleConn) {
				// The client's doing, or a kept connection the
				// endpoint had closed: not the endpoint's fault.
				rerr = context.Canceled
			}
			ep.Release(rerr, time.Since(t0))
		}
		failed = append(failed, dst)
		if c.k.ctx.Err() != nil || errors.Is(err, errRespTimeout) || errors.Is(err, errMeshRequired) || errors.Is(err, errClientBody) {
			break
		}
		var ce *connectError
		if !canRetry && (!errors.As(err, &ce) || touched) {
			break
		}
		if i+1 < attempts {
			c.s.log.Debug("retrying http request", "authority", authority, "endpoint", dst.String(), "attempt", i+1, "error", err)
		}
	}
	if c.k.ctx.Err() != nil {
		return false // the proxy is shutting the connection down
	}
	if errors.Is(err, errClientBody) {
		c.clientBodyFailed(err, authority, start, res)
		return false
	}
	if !touched {
		c.consume(n)
	}
	status, reason := proxyErrorStatus(err)
	c.s.log.Debug("http request failed", "src", c.k.src, "authority", authority, "status", status, "reason", reason, "error", err)
	keep := !m.hasBody() && !m.connClose && !c.s.in.fast.isClosing()
	c.writeProxyError(status, reason, keep, authority, start, res)
	return keep
}

// attemptOut sends the request to dst over a pooled connection and reads
// the response head. A reused connection found dead before any response
// byte (the peer closed it while idle, and the pool's close watcher had
// not seen it yet) is counted stale and, when the request can be sent
// again (canResend), replaced once by a new connection, not another
// idle one: those were returned before it and are likely as dead.
func (c *h1Conn) attemptOut(dst netip.AddrPort, host string, n int, replay bool, t0 time.Time) (up balancer.PooledConn[net.Conn], hn int, touched bool, err error) {
	h := c.h
	plainOK := true // a pooled plaintext connection may be used
	if m := c.s.mesh; m != nil {
		state, _ := m.meshState(dst.Addr())
		if m.cfg.RequireOutboundTLS && state == balancer.Unmeshed {
			return up, 0, false, errMeshRequired
		}
		plainOK = state == balancer.Unmeshed && !m.cfg.RequireOutboundTLS
	}
	ctx := c.k.ctx
	if c.s.mesh != nil {
		if c.dialCtx == nil || c.dialHost != host {
			c.dialCtx, c.dialHost = context.WithValue(ctx, dialNameKey{}, host), host
		}
		ctx = c.dialCtx
	}
	fresh := false // dial, do not reuse
	for {
		var reused bool
		if fresh {
			up, err = h.pool.Dial(ctx, dst)
		} else {
			up, reused, err = h.pool.Get(ctx, dst)
		}
		if err != nil {
			return up, 0, false, err
		}
		if _, mesh := up.Conn.(*tls.Conn); reused && !mesh && !plainOK {
			// Pooled while the endpoint was known unmeshed; it may be
			// meshed now: never plaintext to it, dial again.
			up.Conn.Close()
			continue
		}
		c.setCur(up.Conn)
		if !reused {
			c.upSet(up.Conn, dlBoth, time.Time{})
		}
		_, mesh := up.Conn.(*tls.Conn)
		touched, err = c.sendRequest(up.Conn, n, replay, reused && !mesh)
		if err == errNotQuiet {
			// A kept plaintext connection closed, or with stray
			// bytes: stale (Pool.Stale counts it); nothing was
			// sent, so another.
			c.setCur(nil)
			h.pool.Stale(up)
			continue
		}
		var got bool
		if errors.Is(err, errUpstreamWrite) && !errors.Is(err, errClientBody) {
			// The upstream may have answered before it read the whole
			// body, and closed (413, 401...): that answer is the
			// client's, as through net/http's Transport. Neither
			// connection is kept after it (the client's body is not
			// all read).
			var rerr error
			if hn, got, rerr = c.readEarlyResponse(up.Conn); rerr == nil {
				return up, hn, touched, nil
			}
			if got {
				err = rerr
			}
		}
		if err == nil {
			// As net/http's, the response header timeout starts once
			// the request is sent.
			// (Lazily, as the write deadline: a bound of d is
			// enforced between d - d/64 and d.)
			c.upBound(up.Conn, dlRead, c.respTimeout())
			hn, got, err = c.readResponse(up.Conn)
		}
		if err == nil {
			// The read deadline stays: relayResponse's body reads set
			// their own, or clear it when they have no bound.
			return up, hn, touched, nil
		}
		c.setCur(nil)
		if reused && !got && !isTimeout(err) && !errors.Is(err, errClientBody) {
			// A kept connection the upstream had closed: stale, not a
			// failure of the endpoint. Sent again, once, but only an
			// idempotent request (as net/http's Transport), since the
			// upstream may have acted on it before closing.
			h.pool.Stale(up)
			if c.canResend(replay) && c.k.ctx.Err() == nil {
				c.s.log.Debug("http request sent again on a new connection", "src", c.k.src,
					"endpoint", dst.String(), "error", err)
				fresh = true
				continue
			}
			return up, 0, touched, fmt.Errorf("%w: %w", errStaleConn, err)
		}
		up.Conn.Close()
		if errors.Is(err, errClientBody) {
			return up, 0, touched, err
		}
		if isTimeout(err) {
			return up, 0, touched, errRespTimeout
		}
		return up, 0, touched, err
	}
}

// readEarlyResponse reads the response an upstream sent before it read
// the whole request (writing to it failed), within the response header
// timeout; the exchange then ends both connections.
func (c *h1Conn) readEarlyResponse(up net.Conn) (hn int, got bool, err error) {
	d := DefaultResponseHeaderTimeout
	switch {
	case c.h != nil && c.h.cfg.ResponseHeaderTimeout > 0:
		d = c.h.cfg.ResponseHeaderTimeout
	case c.h == nil && c.s.inboundResponseTimeout() > 0:
		d = c.s.inboundResponseTimeout()
	}
	c.upSet(up, dlRead, time.Now().Add(d))
	hn, got, err = c.readResponse(up)
	if err == nil {
		c.b.req.connClose = true  // the client's body is not all read
		c.b.resp.connClose = true // nor is the upstream reusable
	}
	return hn, got, err
}

// dropResponse discards a response the client does not get (head of hn
// bytes in c.ur), keeping the connection when its body is empty.
func (c *h1Conn) dropResponse(up balancer.PooledConn[net.Conn], hn int) {
	m := &c.b.resp
	c.setCur(nil)
	if m.cl == 0 && !m.connClose && !m.http10 && c.ur.r+hn == c.ur.w {
		c.ur.r += hn
		c.h.pool.Put(up)
		return
	}
	up.Conn.Close()
}

// traceH1 is traceRequest for a fast-path request: the traceparent to
// send, and whether tracestate goes (a new trace).
func traceH1(m *h1Msg, rate float64) (string, bool) {
	var v []byte
	count := 0
	for _, f := range m.fields {
		if asciiEqualFold(f.name, headerTraceparent) {
			if count == 0 {
				v = f.value
			}
			count++
		}
	}
	tc, fresh := continueTrace(string(v), count, rate)
	return tc.String(), fresh
}

// isMeshConn reports an upstream connection to a mesh peer (a server
// proxy), not to an app.
func isMeshConn(c net.Conn) bool {
	_, ok := c.(*tls.Conn)
	return ok
}
