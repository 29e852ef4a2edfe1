package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"meshproxy/balancer"
	"meshproxy/identity"
)

// HTTP-aware outbound defaults.
const (
	// DefaultMaxHeaderBytes bounds a request's header block (431 beyond).
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultResponseHeaderTimeout bounds the wait for an upstream's
	// response headers (504 beyond).
	DefaultResponseHeaderTimeout = 30 * time.Second
	// DefaultHTTPRetries is how many more attempts, on other picks, an
	// idempotent request gets after a failed one.
	DefaultHTTPRetries = 2
	// DefaultMaxIdleConns bounds the idle upstream HTTP/1.1 connections of
	// all endpoints together; the least recently used goes first.
	DefaultMaxIdleConns = 1024
	// DefaultHTTPMaxIdlePerEndpoint bounds the idle upstream HTTP/1.1
	// connections of one endpoint. It is well above the number of
	// requests a busy client keeps in flight to one endpoint, so that a
	// connection a response just freed is kept, not closed and dialed
	// again for the next request (with 8, 32 keep-alive clients made
	// one new upstream connection every 8 requests).
	DefaultHTTPMaxIdlePerEndpoint = 256
)

// headerProxyError names the reason of a response the proxy made itself.
const headerProxyError = "Meshproxy-Error"

// headerAppProtocol tells the server proxy, on a mesh-h2 stream, which
// protocol the application speaks: "http/1.1" or "h2". The server proxy
// removes it before delivery.
const headerAppProtocol = "Meshproxy-App-Protocol"

// HTTPConfig turns on HTTP-aware outbound proxying (Config.HTTP). An
// outbound connection whose first bytes are HTTP/1.x or the HTTP/2
// prior-knowledge preface (h2c) is served as HTTP: each request goes to an
// endpoint Balancer picks for its authority (Host), or to the connection's
// original destination when the host is an IP literal or not in DNS.
// HTTP/1.1 client connections are served by the proxy's own HTTP/1.1
// engine (h1*.go): one goroutine per connection, requests one at a time
// over pooled upstream connections, mutual TLS (transport header protocol
// http/1) to meshed endpoints and plain TCP to others. Upgrades, CONNECT,
// HTTP/1.0, Expect, hosts with a route, and heads the engine does not
// strictly accept go to net/http instead, as do all connections when
// AccessLog or MaxConcurrentPerService is set: there meshed endpoints get
// HTTP/2 over one multiplexed mutual-TLS connection each (mesh-h2), others
// HTTP/1.1 over pooled connections. h2c clients are served by x/net/http2
// and use mesh-h2 (h2c to unmeshed endpoints). Other protocols are
// forwarded as without HTTP.
//
// Detection then waits for the client's first bytes without dialing, so
// a server-speaks-first protocol on a port that is not opaque starts after
// DetectTimeout (list such ports in OpaquePorts).
type HTTPConfig struct {
	// Balancer discovers and picks endpoints. Required.
	Balancer *balancer.Balancer
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// headers once the request is sent (504 "timeout"). Zero means
	// DefaultResponseHeaderTimeout; negative means no limit. An inbound
	// Server bounds its wait for the app's HTTP/1.1 response head with
	// it too (never past Config.IdleTimeout).
	ResponseHeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request's header block; a larger one gets
	// 431. net/http allows 4 KiB of slack on HTTP/1. Zero or negative
	// means DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Retries is how many more attempts an idempotent request (GET, HEAD,
	// OPTIONS, TRACE, PUT, DELETE without a body) gets, each on a new
	// pick, after an attempt that failed without a response. Other
	// requests are retried only when the upstream could not be reached
	// at all (nothing was sent). Zero means DefaultHTTPRetries; negative
	// means none.
	Retries int
	// IdleTimeout closes pooled upstream connections idle this long. Zero
	// means balancer.DefaultPoolIdleTimeout; negative means no limit.
	IdleTimeout time.Duration
	// MaxIdlePerEndpoint bounds idle HTTP/1.1 connections per endpoint.
	// Zero means DefaultHTTPMaxIdlePerEndpoint; negative keeps none.
	MaxIdlePerEndpoint int
	// MaxIdleConns bounds idle HTTP/1.1 connections over all endpoints,
	// least recently used closed first. Zero or negative means
	// DefaultMaxIdleConns.
	MaxIdleConns int
	// MaxLifetime stops reusing upstream connections (HTTP/1.1, h2c and
	// mesh HTTP/2) after about this long, so load spreads again and new
	// certificates are used. Zero means balancer.DefaultMaxLifetime;
	// negative means no limit.
	MaxLifetime time.Duration

	// Routes is the traffic policy (timeouts, retries, splits, header
	// and path matches), read once per request; the binary stores a new
	// table on reload, and requests in flight keep the one they started
	// with. Nil, or holding nil, means no routes: every request goes to
	// its authority as the application wrote it.
	Routes *atomic.Pointer[RouteTable]
	// Namespace is the proxy's own namespace (from its identity), used to
	// expand a short service name (web) as the pod's DNS search list
	// does. Empty: a short name matches a route only when one service of
	// the table has that name.
	Namespace string
	// RetryBudget bounds the retries of route retry policies per service
	// (see RetryBudget for its defaults).
	RetryBudget RetryBudget
	// MaxConcurrentPerService caps the requests in flight to one service
	// (the routed service, else host:port as written). Zero or negative
	// means unlimited.
	MaxConcurrentPerService int
	// MaxPendingPerService caps the requests that wait for a slot while a
	// service is at MaxConcurrentPerService; beyond it a request is
	// answered at once with 503 and meshproxy-error: overloaded. Zero
	// means unlimited waiting (bounded by the request's timeout and the
	// client); negative means none waits: every request beyond
	// MaxConcurrentPerService gets the 503 at once.
	MaxPendingPerService int
	// StreamIdleTimeout ends a response whose body makes no progress for
	// this long (the client sees the stream reset). Zero or negative
	// means no limit.
	StreamIdleTimeout time.Duration
	// ConnectTimeout bounds connecting (and the mesh handshake) to an
	// upstream endpoint on the HTTP path, for every service: the Gateway
	// API has no per-route connect timeout. Zero means Config's
	// ConnectTimeout.
	ConnectTimeout time.Duration
	// TraceSampleRate is the probability, 0 to 1, that a trace the proxy
	// starts (no valid traceparent came) is marked sampled. A valid
	// traceparent keeps its own flags.
	TraceSampleRate float64
	// PoolMetrics, when not nil, counts the dials, reuses and stale
	// connections of the HTTP/1.1 upstream pool (meshproxy_pool_*).
	PoolMetrics *balancer.Metrics
	// AccessLog, when not nil, gets one Info record per request with
	// trace_id, span_id, client_id, server_id, authority, route, method,
	// path, status, latency_ms, attempts and bytes (give it a
	// slog.JSONHandler for JSON lines). Nil means no access log.
	AccessLog *slog.Logger
}

func (c HTTPConfig) withDefaults() HTTPConfig {
	if c.ResponseHeaderTimeout == 0 {
		c.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	switch {
	case c.Retries == 0:
		c.Retries = DefaultHTTPRetries
	case c.Retries < 0:
		c.Retries = 0
	}
	switch {
	case c.IdleTimeout == 0:
		c.IdleTimeout = balancer.DefaultPoolIdleTimeout
	case c.IdleTimeout < 0:
		c.IdleTimeout = 0
	}
	switch {
	case c.MaxIdlePerEndpoint == 0:
		c.MaxIdlePerEndpoint = DefaultHTTPMaxIdlePerEndpoint
	case c.MaxIdlePerEndpoint < 0:
		c.MaxIdlePerEndpoint = 0
	}
	if c.MaxIdleConns <= 0 {
		c.MaxIdleConns = DefaultMaxIdleConns
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = balancer.DefaultMaxLifetime
	}
	c.RetryBudget = c.RetryBudget.withDefaults()
	return c
}

// Errors of the HTTP path, mapped to the responses the proxy makes.
var (
	errNoEndpoints  = errors.New("no endpoints")
	errRespTimeout  = errors.New("no response headers before the response header timeout")
	errNotMeshed    = errors.New("destination is not meshed")
	errMeshRequired = errors.New("destination is not meshed and outbound TLS is required")
	errNoBalancer   = errors.New("HTTPConfig.Balancer is nil")
	// errAppUnreachable: the endpoint's proxy answered 502
	// app-unreachable (its app refused the connection).
	errAppUnreachable = errors.New("the endpoint's proxy could not connect to its app")
	// errUnaskedUpgrade: the upstream answered 101 to a request that
	// asked for no upgrade.
	errUnaskedUpgrade = errors.New("upstream switched protocols though the request asked for no upgrade")
)

// httpRuntime is the shared state of HTTP-aware outbound: the transports
// (and so the connection pools) of every client connection of a Server.
type httpRuntime struct {
	s   *Server
	cfg HTTPConfig
	rp  *httputil.ReverseProxy

	h1      *rotating[*http.Transport]  // unmeshed HTTP/1.1
	h2c     *rotating[*http2.Transport] // unmeshed h2c
	mesh    *rotating[*http2.Transport] // meshed: mesh-h2 over mTLS
	upgrade *http.Transport             // upgrades: a fresh connection each
	pool    *balancer.Pool[net.Conn]    // the HTTP/1 fast path's upstreams

	budgets *budgets // retry budgets of routed services
	limit   *limiter // concurrency limits per service

	handler http.Handler  // every client request: metrics, policy, rp
	h1srv   *sharedServer // serves the HTTP/1 client connections
}

func newHTTPRuntime(s *Server, cfg HTTPConfig) *httpRuntime {
	h := &httpRuntime{s: s, cfg: cfg.withDefaults()}
	h.budgets = &budgets{cfg: h.cfg.RetryBudget}
	h.limit = &limiter{maxActive: h.cfg.MaxConcurrentPerService, maxPending: h.cfg.MaxPendingPerService}
	life := h.cfg.MaxLifetime
	h.h1 = newRotating(life, h.newH1, func(t *http.Transport) { t.CloseIdleConnections() })
	h.h2c = newRotating(life, func() *http2.Transport { return h.newH2(h.dialPlain) }, func(t *http2.Transport) { t.CloseIdleConnections() })
	h.mesh = newRotating(life, func() *http2.Transport { return h.newH2(h.dialMeshH2) }, func(t *http2.Transport) { t.CloseIdleConnections() })
	h.upgrade = &http.Transport{
		DialContext:        h.dialUpgrade,
		DisableKeepAlives:  true,
		DisableCompression: true,
		Proxy:              nil,
	}
	h.pool = h.newH1Pool()
	h.rp = &httputil.ReverseProxy{
		Rewrite:       rewriteTransparent,
		Transport:     h,
		FlushInterval: 0, // ReverseProxy still flushes at once for streamed (unknown length, event-stream) responses
		BufferPool:    bytePool{},
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler:  h.errorResponse,
	}
	h.handler = s.instrument(h.policy(h.rp))
	h.h1srv = newSharedServer(&http.Server{
		Handler:                      s.instrument(rejectAmbiguous(h.policy(h.rp))),
		IdleTimeout:                  s.cfg.idleTimeout(),
		ReadHeaderTimeout:            s.cfg.headerTimeout(),
		MaxHeaderBytes:               h.cfg.MaxHeaderBytes,
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     log.New(io.Discard, "", 0),
	})
	return h
}

func (h *httpRuntime) newH1() *http.Transport {
	return &http.Transport{
		DialContext:         h.dialPlain,
		MaxIdleConns:        h.cfg.MaxIdleConns,
		MaxIdleConnsPerHost: h.cfg.MaxIdlePerEndpoint,
		IdleConnTimeout:     h.cfg.IdleTimeout,
		DisableCompression:  true,
		Proxy:               nil,
	}
}

func (h *httpRuntime) newH2(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http2.Transport {
	return &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dial(ctx, network, addr)
		},
		DisableCompression:         true,
		StrictMaxConcurrentStreams: true,
		IdleConnTimeout:            h.cfg.IdleTimeout,
		ReadIdleTimeout:            30 * time.Second,
		PingTimeout:                15 * time.Second,
		MaxHeaderListSize:          uint32(h.cfg.MaxHeaderBytes) + 4096,
	}
}

// closeIdleHTTP closes the idle upstream connections of the HTTP path.
func (s *Server) closeIdleHTTP() {
	if h := s.http; h != nil {
		h.h1.closeAll()
		h.h2c.closeAll()
		h.mesh.closeAll()
		h.upgrade.CloseIdleConnections()
		if s.isShutdown() {
			h.pool.Close()
		} else {
			h.pool.CloseIdle()
		}
	}
	s.in.closeIdle(s)
}

// reqInfo is what the request handler knows of the client connection.
type reqInfo struct {
	k        *conn
	appProto string        // "http/1.1" or "h2": what the client speaks
	frames   *frameChecker // HTTP/1: the connection's framing verdicts
}

type reqInfoKey struct{}

// handleOutboundHTTP detects the protocol (without dialing) and serves
// HTTP/1 and h2c as HTTP; anything else goes on as without HTTP, with the
// detected bytes.
func (s *Server) handleOutboundHTTP(k *conn) error {
	opaque := slices.Contains(s.cfg.OpaquePorts, k.orig.Port())
	if !opaque {
		buf := make([]byte, detectBufSize)
		proto, n, err := Detect(k.c, s.cfg.detectTimeout(), buf)
		s.m.detect.WithLabelValues(s.m.dir, string(proto)).Inc()
		if err != nil && n == 0 && !errors.Is(err, io.EOF) {
			k.begin(connLabels{tls: s.plainLabel()})
			k.abort()
			return fmt.Errorf("reading from client: %w", err)
		}
		switch proto {
		case ProtocolHTTP1, ProtocolH2:
			k.begin(connLabels{tls: s.plainLabel()})
			return s.serveOutboundHTTP(k, proto, buf[:n])
		}
		k.detected = &detected{proto: proto, peek: buf[:n]}
	}
	if s.mesh == nil {
		return s.handlePlain(k, TLSDisabled)
	}
	return s.handleOutboundMesh(k)
}

// detected is the outcome of a detection that already ran.
type detected struct {
	proto Protocol
	peek  []byte
}

// plainLabel is the tls label of a plaintext client connection.
func (s *Server) plainLabel() string {
	if s.mesh == nil {
		return TLSDisabled
	}
	return TLSNoIdentity
}

// serveOutboundHTTP serves the client connection as HTTP/1.x (the
// Server's one shared net/http server) or h2c (x/net/http2), after the
// peeked bytes. h2c is served until the client is done; an HTTP/1
// connection is handed off (k.handedOff): it returns once the shared
// server has it, which ends it (k.end) when done.
func (s *Server) serveOutboundHTTP(k *conn, proto Protocol, peek []byte) error {
	h := s.http
	k.c.SetDeadline(time.Time{})
	if proto == ProtocolHTTP1 && h.fastOK() {
		// The fast path; what it leaves goes on as below, after the
		// bytes it read.
		c := &h1Conn{s: s, k: k, c: newRawTCPConn(k.c), tcp: k.c, h: h}
		rest, err := c.serve(peek)
		if rest == nil {
			return err
		}
		peek = rest
	}
	hc := &httpConn{Conn: k.c, peek: peek, k: k}
	info := &reqInfo{k: k, appProto: "http/1.1"}
	if proto == ProtocolH2 {
		info.appProto = "h2"
	}
	hc.base = context.WithValue(k.ctx, reqInfoKey{}, info)
	if proto == ProtocolH2 {
		idle := s.cfg.idleTimeout()
		srv := &http.Server{
			IdleTimeout:       idle,
			ReadHeaderTimeout: s.cfg.headerTimeout(),
			MaxHeaderBytes:    h.cfg.MaxHeaderBytes,
			ErrorLog:          log.New(io.Discard, "", 0),
		}
		h2s := &http2.Server{IdleTimeout: idle, MaxConcurrentStreams: 1000}
		h2s.ServeConn(hc, &http2.ServeConnOpts{Context: hc.base, BaseConfig: srv, Handler: h.handler})
		hc.Close()
		return k.ctx.Err()
	}
	// HTTP/1: frame checks (smuggling shapes) on the raw bytes.
	// The shared server serves it from here on, on its own goroutine:
	// when it closes the connection (or the hijacker of an upgrade does),
	// hc's Close ends it. Closing hc is also how a cancelled k.ctx ends
	// it, through net/http.
	hc.frames = newFrameChecker(h.cfg.MaxHeaderBytes + 4096)
	info.frames = hc.frames
	hc.onClose = func() {
		k.err = k.ctx.Err()
		k.end()
	}
	k.handedOff = true
	if !h.h1srv.serve(hc) {
		k.handedOff = false
		k.c.Close()
		return errors.New("not serving: the proxy is shutting down")
	}
	return nil
}

// keepForwarded passes the client's X-Forwarded-* headers on as they came:
// ReverseProxy's Rewrite mode drops them from the outgoing request, and a
// transparent proxy adds or changes none.
func keepForwarded(pr *httputil.ProxyRequest) {
	for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
}

// rewriteTransparent keeps the request as the client sent it (Host,
// X-Forwarded-*), minus hop-by-hop headers, which ReverseProxy removed.
func rewriteTransparent(pr *httputil.ProxyRequest) {
	keepForwarded(pr)
	// Request trailers arrive in In.Trailer when the body ends (Out
	// has a copy made before): share the map so they are sent on.
	pr.Out.Trailer = pr.In.Trailer
	pr.Out.Header.Del(headerAppProtocol)
	pr.Out.URL.Scheme = "http"
	if pr.Out.URL.Host == "" {
		pr.Out.URL.Host = pr.In.Host
	}
}

// httpError is an error the proxy answers itself, with its status and
// meshproxy-error reason.
type httpError struct {
	status int
	reason string
	err    error
}

func (e *httpError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

// errorResponse writes the response for a request that got no upstream
// response.
func (h *httpRuntime) errorResponse(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, errClientAbort) {
		// Nobody to answer: count 499 as the fast path does, and end
		// the connection (or the h2 stream) without a response.
		h.s.log.Debug("http request abandoned by the client", "src", infoOf(r).k.src, "authority", r.Host,
			"status", statusClientClosed, "error", err)
		if sw := statusWriterOf(w); sw != nil {
			sw.status, sw.proxyErr = statusClientClosed, true
			sw.observe()
		}
		panic(http.ErrAbortHandler)
	}
	status, reason := proxyErrorStatus(err)
	if r.Context().Err() == nil {
		h.s.log.Debug("http request failed", "src", infoOf(r).k.src, "authority", r.Host,
			"status", status, "reason", reason, "error", err)
	}
	w.Header().Set(headerProxyError, reason)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

// proxyErrorStatus is the status and meshproxy-error reason of the
// response the proxy makes for a request that failed with err.
func proxyErrorStatus(err error) (int, string) {
	status, reason := http.StatusBadGateway, "upstream"
	var he *httpError
	var ce *connectError
	switch {
	case errors.As(err, &he):
		status, reason = he.status, he.reason
	case errors.Is(err, errRespTimeout), errors.Is(err, errTryTimeout), errors.Is(err, context.DeadlineExceeded):
		status, reason = http.StatusGatewayTimeout, "timeout"
	case errors.Is(err, errMeshRequired):
		reason = "not-meshed"
	case errors.Is(err, errAppUnreachable):
		reason = reasonAppUnreachable
	case errors.As(err, &ce):
		reason = "connect"
	}
	return status, reason
}

func infoOf(r *http.Request) *reqInfo {
	info, _ := r.Context().Value(reqInfoKey{}).(*reqInfo)
	if info == nil {
		info = &reqInfo{k: &conn{}, appProto: "http/1.1"}
	}
	return info
}

// splitAuthority returns the host and port of an authority, the port
// defaulting to def.
func splitAuthority(authority string, def uint16) (string, uint16) {
	host, ps, err := net.SplitHostPort(authority)
	if err != nil {
		return strings.Trim(authority, "[]"), def
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 {
		return host, def
	}
	return host, uint16(p)
}

// route chooses where one attempt of a request goes: the original
// destination (IP literal, name not in DNS, discovery unavailable) or a
// picked endpoint, which the caller must Release. With strict (host is
// a split's backend, not what the application named) a name not in DNS
// is 503 no-endpoints instead. The pick avoids the endpoints in avoid
// (those the request already failed on) while others remain: a dead
// endpoint answers fast, so P2C would otherwise favour it until failure
// accrual ejects it.
func (h *httpRuntime) route(ctx context.Context, host string, port uint16, orig netip.AddrPort, strict bool, avoid []netip.AddrPort) (netip.AddrPort, *balancer.Endpoint, error) {
	if _, err := netip.ParseAddr(host); err == nil || host == "" {
		return orig, nil, nil
	}
	if h.cfg.Balancer == nil {
		return netip.AddrPort{}, nil, &httpError{http.StatusInternalServerError, "no-balancer", errNoBalancer}
	}
	ep, err := h.cfg.Balancer.Pick(ctx, host, port, avoid...)
	switch {
	case err == nil:
		return ep.Addr(), ep, nil
	case errors.Is(err, balancer.ErrNotFound) && strict:
		return netip.AddrPort{}, nil, &httpError{http.StatusServiceUnavailable, "no-endpoints", fmt.Errorf("backend %s: %w", host, err)}
	case errors.Is(err, balancer.ErrNotFound):
		return orig, nil, nil
	case errors.Is(err, balancer.ErrNoEndpoints):
		return netip.AddrPort{}, nil, &httpError{http.StatusServiceUnavailable, "no-endpoints", err}
	case ctx.Err() != nil:
		return netip.AddrPort{}, nil, ctx.Err()
	}
	// Discovery is unavailable (DNS down, nothing cached) or closed:
	// the application's own addressing still works.
	h.s.log.Debug("discovery failed; sending to the original destination", "host", host, "error", err)
	return orig, nil, nil
}

// idempotent reports whether a request may be sent again after an attempt
// that may have reached the upstream: an idempotent method and no body.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
	default:
		return false
	}
	// ReverseProxy sends a nil Body for a request without one.
	return r.Body == nil || r.Body == http.NoBody
}

// RoundTrip sends one request (the ReverseProxy's outgoing request) to a
// picked endpoint. Without a route retry policy it retries on other
// picks as HTTPConfig.Retries says; with one, as the policy says, within
// the service's retry budget, after a jittered backoff.
func (h *httpRuntime) RoundTrip(req *http.Request) (*http.Response, error) {
	info := infoOf(req)
	orig := info.k.orig
	host, port := splitAuthority(req.Host, orig.Port())
	strict := false
	p := policyOf(req)
	var retry *RetryPolicy
	var tryTimeout time.Duration
	if p != nil {
		host, port, strict = p.host, p.port, p.strict
		if p.rule != nil {
			retry, tryTimeout = p.rule.Retry, p.rule.Timeouts.BackendRequest
		}
	}
	attempts := 1 + h.cfg.Retries
	canReplay := idempotent(req)
	var body []byte
	if retry != nil {
		attempts = 1 + max(retry.Attempts, 0)
		var err error
		if canReplay, body, err = replayBody(req, retry); err != nil {
			return nil, err
		}
	}
	// again reports whether attempt i may be followed by another,
	// taking a retry from the budget under a retry policy.
	again := func(i int) bool {
		if i+1 >= attempts {
			return false
		}
		if retry == nil {
			return true
		}
		if !p.budget.withdraw(time.Now()) {
			h.s.m.budgetOut.WithLabelValues(p.authority).Inc()
			return false
		}
		h.s.m.retries.WithLabelValues(p.authority).Inc()
		return true
	}
	// A body that cannot be replayed may still be sent again after a
	// connect failure, if no attempt has read from it: the transport's
	// Close after a failed dial must not end it.
	var held *heldBody
	if !canReplay && body == nil && req.Body != nil && req.Body != http.NoBody {
		held = &heldBody{ReadCloser: req.Body}
		req.Body = held
	}
	var err error
	var failed []netip.AddrPort // endpoints this request failed on
	for i := range attempts {
		if i > 0 && retry != nil {
			t := time.NewTimer(backoff(retry.Backoff, i))
			select {
			case <-t.C:
			case <-req.Context().Done():
				t.Stop()
				return nil, req.Context().Err()
			}
		}
		if p != nil {
			p.attempts.Add(1)
		}
		var (
			dst netip.AddrPort
			ep  *balancer.Endpoint
		)
		dst, ep, err = h.route(req.Context(), host, port, orig, strict, failed)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		var resp *http.Response
		resp, err = h.attempt(req, dst, host, info.appProto, attemptOpts{tryTimeout: tryTimeout, body: body, p: p})
		if err == nil && resp.StatusCode == http.StatusBadGateway && resp.Header.Get(headerProxyError) == reasonAppUnreachable &&
			(canReplay || req.Body == nil || req.Body == http.NoBody) && resp.TLS != nil {
			// The endpoint's proxy could not reach its app: the app
			// saw nothing, so this is a connect failure of the
			// endpoint (failure accrual, another pick), not an answer.
			// (Only a mesh peer, over mutual TLS, says so: from a
			// plaintext upstream it is the app's own answer.)
			resp.Body.Close()
			err = &connectError{err: errAppUnreachable}
		}
		if err == nil {
			if ep != nil {
				resp.Body = releaseOnEnd(resp, ep, start)
			}
			if retry != nil && canReplay && slices.Contains(retry.Codes, resp.StatusCode) && again(i) {
				h.s.log.Debug("retrying http request", "authority", req.Host, "endpoint", dst.String(), "attempt", i+1, "status", resp.StatusCode)
				resp.Body.Close()
				failed = append(failed, dst)
				continue
			}
			return resp, nil
		}
		if cerr := held.clientBroke(); cerr != nil {
			// The client's doing, not the endpoint's: no failure
			// charged, no retry.
			if ep != nil {
				ep.Release(context.Canceled, time.Since(start))
			}
			return nil, cerr
		}
		if ep != nil {
			ep.Release(err, time.Since(start))
		}
		failed = append(failed, dst)
		if req.Context().Err() != nil || errors.Is(err, errRespTimeout) || errors.Is(err, errMeshRequired) {
			return nil, err
		}
		var ce *connectError
		if !canReplay && (!errors.As(err, &ce) || held != nil && held.touched.Load()) {
			return nil, err
		}
		if !again(i) {
			return nil, err
		}
		h.s.log.Debug("retrying http request", "authority", req.Host, "endpoint", dst.String(), "attempt", i+1, "error", err)
	}
	return nil, err
}

// heldBody is a request body shared by the attempts of one request: it
// records whether any attempt read from it, and ignores Close (the
// transport closes a body after a failed dial; the server closes the real
// one when the request ends).
type heldBody struct {
	io.ReadCloser
	touched atomic.Bool
	broken  atomic.Pointer[error] // the first read error other than io.EOF
}

// Read reads from the body and marks it touched; a read error other
// than the body's end means the client broke its body off.
func (b *heldBody) Read(p []byte) (int, error) {
	b.touched.Store(true)
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.broken.CompareAndSwap(nil, &err)
	}
	return n, err
}

// clientBroke returns, as errClientAbort, the error with which the
// client's body broke off, or nil.
func (b *heldBody) clientBroke() error {
	if b == nil {
		return nil
	}
	if e := b.broken.Load(); e != nil {
		return fmt.Errorf("%w: %w", errClientAbort, *e)
	}
	return nil
}

// errClientAbort is the error of a request whose client broke off its
// body (reset, end of file before the body's end, idle timeout): no
// answer, counted as status_code 499 (see errorResponse).
var errClientAbort = errors.New("client broke off its request body")

// Close does nothing: see heldBody.
func (b *heldBody) Close() error { return nil }

// attemptOpts are the route policy's settings of one attempt.
type attemptOpts struct {
	tryTimeout time.Duration // bounds the attempt, body included; 0 none
	body       []byte        // buffered request body to send, nil: req's own
	p          *reqPolicy    // nil: no policy
}

// attempt sends req to dst once, over the transport dst calls for.
func (h *httpRuntime) attempt(req *http.Request, dst netip.AddrPort, host, appProto string, o attemptOpts) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	if o.p != nil && h.cfg.AccessLog != nil {
		p := o.p
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
			if tc, ok := ci.Conn.(*tls.Conn); ok {
				if id, err := identity.PeerID(tc.ConnectionState()); err == nil {
					p.setServerID(id.String())
				}
			}
		}})
	}
	out := req.WithContext(ctx)
	u := *req.URL
	u.Scheme, u.Host = "http", dst.String()
	out.URL = &u
	if o.body != nil {
		body := o.body
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	var tryTimer *time.Timer
	if o.tryTimeout > 0 {
		tryTimer = time.AfterFunc(o.tryTimeout, func() { cancel(errTryTimeout) })
	}
	end := func() {
		if tryTimer != nil {
			tryTimer.Stop()
		}
		cancel(nil)
	}
	var timer *time.Timer
	if d := h.cfg.ResponseHeaderTimeout; d > 0 {
		timer = time.AfterFunc(d, func() { cancel(errRespTimeout) })
	}
	resp, err := h.send(out, dst, host, appProto)
	if timer != nil && !timer.Stop() {
		if resp != nil {
			resp.Body.Close()
		}
		end()
		return nil, errRespTimeout
	}
	if err != nil {
		end()
		switch c := context.Cause(ctx); {
		case errors.Is(c, errRespTimeout):
			return nil, errRespTimeout
		case errors.Is(c, errTryTimeout):
			return nil, errTryTimeout
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && !isUpgrade(req) {
		// A 101 nobody asked for: ReverseProxy answers 502 but leaves
		// the upstream connection open, so close it here.
		resp.Body.Close()
		end()
		return nil, errUnaskedUpgrade
	}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		// The body is the tunnel; ReverseProxy needs it writable. A
		// tunnel outlives any per-try timeout.
		if tryTimer != nil {
			tryTimer.Stop()
		}
		resp.Body = &tunnelCancelOnClose{ReadWriteCloser: rwc, cancel: end}
		return resp, nil
	}
	if d := h.cfg.StreamIdleTimeout; d > 0 {
		resp.Body = newIdleBody(resp.Body, d, func() { cancel(errStreamIdle) })
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: end}
	return resp, nil
}

// send picks the transport: an upgrade gets a fresh connection; a meshed
// destination mesh-h2; others HTTP/1.1 or h2c as the client spoke.
func (h *httpRuntime) send(out *http.Request, dst netip.AddrPort, host, appProto string) (*http.Response, error) {
	meshed := false
	if m := h.s.mesh; m != nil {
		state, _ := m.meshState(dst.Addr())
		switch {
		case state != balancer.Unmeshed:
			meshed = true
		case m.cfg.RequireOutboundTLS:
			return nil, errMeshRequired
		}
	}
	if isUpgrade(out) {
		return h.upgrade.RoundTrip(out.WithContext(context.WithValue(out.Context(), dialNameKey{}, host)))
	}
	if meshed {
		mo := out.WithContext(context.WithValue(out.Context(), dialNameKey{}, host))
		mo.Header = out.Header.Clone()
		mo.Header.Set(headerAppProtocol, appProto)
		resp, err := h.mesh.get().RoundTrip(mo)
		if !errors.Is(err, errNotMeshed) {
			return resp, err
		}
		if h.s.mesh.cfg.RequireOutboundTLS {
			return nil, errMeshRequired
		}
	}
	if appProto == "h2" {
		return h.h2c.get().RoundTrip(out)
	}
	return h.h1.get().RoundTrip(out)
}

// isUpgrade reports a protocol upgrade request (WebSocket and the like).
func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && headerHasToken(r.Header, "Connection", "upgrade")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

type dialNameKey struct{}

// connectTimeoutKey carries HTTPConfig.ConnectTimeout to Server.dial and
// dialMesh, in place of Config's.
type connectTimeoutKey struct{}

// connectContext bounds a dial (and mesh handshake) by
// HTTPConfig.ConnectTimeout when it is set.
func (h *httpRuntime) connectContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := h.cfg.ConnectTimeout
	if d <= 0 {
		return ctx, func() {}
	}
	ctx = context.WithValue(ctx, connectTimeoutKey{}, d)
	return context.WithTimeout(ctx, d)
}

// dialPlain dials addr (an endpoint or original destination) in
// plaintext.
func (h *httpRuntime) dialPlain(ctx context.Context, _, addr string) (net.Conn, error) {
	ctx, cancel := h.connectContext(ctx)
	defer cancel()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %q: %w", addr, err)
	}
	c, err := h.s.dial(ctx, ap)
	if err != nil {
		return nil, &connectError{err}
	}
	return c, nil
}

// dialMeshConn dials addr's mesh port and sends a transport header for
// addr's port with protocol proto. A destination found not meshed gives
// errNotMeshed.
func (h *httpRuntime) dialMeshConn(ctx context.Context, addr string, proto Protocol) (net.Conn, error) {
	ctx, cancel := h.connectContext(ctx)
	defer cancel()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %q: %w", addr, err)
	}
	state, forced := h.s.mesh.meshState(ap.Addr())
	md := h.s.dialMesh(ctx, ap.Addr(), state == balancer.Meshed, forced)
	switch {
	case md.plain:
		return nil, errNotMeshed
	case md.err != nil:
		h.s.m.meshErrors.WithLabelValues(md.reason).Inc()
		if md.reason == reasonConnect {
			return nil, &connectError{md.err}
		}
		return nil, md.err
	}
	name, _ := ctx.Value(dialNameKey{}).(string)
	hdr, err := EncodeHeader(Header{Port: ap.Port(), Protocol: proto, Name: name})
	if err != nil { // a name the header cannot carry: send none
		hdr, err = EncodeHeader(Header{Port: ap.Port(), Protocol: proto})
	}
	if err != nil {
		md.tc.Close()
		return nil, err
	}
	md.tc.SetWriteDeadline(time.Now().Add(h.s.mesh.hsTimeout))
	if _, err := md.tc.Write(hdr); err != nil {
		md.tc.Close()
		h.s.m.meshErrors.WithLabelValues(reasonHeaderWrite).Inc()
		return nil, &connectError{fmt.Errorf("sending the transport header to %s: %w", md.tc.RemoteAddr(), err)}
	}
	md.tc.SetWriteDeadline(time.Time{})
	return md.tc, nil
}

func (h *httpRuntime) dialMeshH2(ctx context.Context, _, addr string) (net.Conn, error) {
	return h.dialMeshConn(ctx, addr, ProtocolMeshH2)
}

// dialUpgrade opens the connection of an upgrade request: mesh with
// protocol http/1 (the server proxy's HTTP/1 path tunnels upgrades) when
// the destination is meshed, plaintext otherwise.
func (h *httpRuntime) dialUpgrade(ctx context.Context, network, addr string) (net.Conn, error) {
	if h.s.mesh != nil {
		ap, err := netip.ParseAddrPort(addr)
		if err == nil {
			if state, _ := h.s.mesh.meshState(ap.Addr()); state != balancer.Unmeshed {
				c, err := h.dialMeshConn(ctx, addr, ProtocolHTTP1)
				if !errors.Is(err, errNotMeshed) {
					return c, err
				}
				if h.s.mesh.cfg.RequireOutboundTLS {
					return nil, errMeshRequired
				}
			}
		}
	}
	return h.dialPlain(ctx, network, addr)
}

// cancelOnClose ends a response's attempt context with its body.
type cancelOnClose struct {
	io.ReadCloser
	cancel func()
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// tunnelCancelOnClose is cancelOnClose for an upgraded connection.
type tunnelCancelOnClose struct {
	io.ReadWriteCloser
	cancel func()
}

func (c *tunnelCancelOnClose) Close() error {
	err := c.ReadWriteCloser.Close()
	c.cancel()
	return err
}

// releaseOnEnd reports a response's outcome to its endpoint once, when its
// body ends (EOF, error or Close): a 5xx or a body that broke is a
// failure. The latency is the time to the response headers. A 101's body
// is the tunnel: it is released at once.
func releaseOnEnd(resp *http.Response, ep *balancer.Endpoint, start time.Time) io.ReadCloser {
	latency := time.Since(start)
	var status error
	if resp.StatusCode >= 500 {
		status = fmt.Errorf("status %d", resp.StatusCode)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		ep.Release(status, latency)
		return resp.Body
	}
	return &releaseBody{ReadCloser: resp.Body, release: func(err error) {
		if status != nil {
			err = status
		}
		ep.Release(err, latency)
	}}
}

// releaseBody calls release once when the body ends.
type releaseBody struct {
	io.ReadCloser
	release func(error)
	done    bool
}

func (b *releaseBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.done {
		b.done = true
		if errors.Is(err, io.EOF) {
			b.release(nil)
		} else {
			b.release(err)
		}
	}
	return n, err
}

func (b *releaseBody) Close() error {
	err := b.ReadCloser.Close()
	if !b.done {
		b.done = true
		b.release(context.Canceled) // abandoned before its end: not the endpoint's fault
	}
	return err
}
