package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors of route policy, mapped to the responses the proxy makes.
var (
	errTryTimeout   = errors.New("attempt exceeded the route's backend request timeout")
	errStreamIdle   = errors.New("response stream idle past the stream idle timeout")
	errNoBackends   = errors.New("every backend of the route rule has weight 0")
	errBodyTooLarge = errors.New("request body too large to buffer for retries")
)

// reqPolicy is what the route policy decided for one request, shared by
// the policy handler and the transport (RoundTrip) through the context.
type reqPolicy struct {
	authority string // as the client wrote it: metric label
	svc       string // service key of the limiter and retry budget
	sr        *ServiceRoutes
	rule      *RouteRule // nil: no rule matched
	host      string     // the name to pick endpoints for
	port      uint16
	strict    bool // host is a backend of a split: not in DNS is 503
	budget    *budget
	trace     traceContext
	attempts  atomic.Int32

	mu       sync.Mutex
	serverID string
}

func (p *reqPolicy) setServerID(id string) {
	p.mu.Lock()
	p.serverID = id
	p.mu.Unlock()
}

type reqPolicyKey struct{}

func policyOf(r *http.Request) *reqPolicy {
	p, _ := r.Context().Value(reqPolicyKey{}).(*reqPolicy)
	return p
}

// policy applies the route table, the concurrency limit, the request
// timeout and tracing to each request before next (the ReverseProxy),
// and writes the access log line when it is done.
func (h *httpRuntime) policy(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := infoOf(r)
		p := &reqPolicy{authority: r.Host}
		p.trace = traceRequest(r, h.cfg.TraceSampleRate)
		host, port := splitAuthority(r.Host, info.k.orig.Port())
		p.host, p.port = host, port
		p.svc = strings.ToLower(strings.TrimSuffix(host, ".")) + ":" + strconv.Itoa(int(port))
		var lw *logWriter
		if h.cfg.AccessLog != nil {
			lw = &logWriter{ResponseWriter: w}
			w = lw
			defer func() { h.accessLog(r, p, lw, start) }()
		}
		var tbl *RouteTable
		if h.cfg.Routes != nil {
			tbl = h.cfg.Routes.Load()
		}
		if sr := tbl.lookup(host, port, h.cfg.Namespace); sr != nil {
			p.sr = sr
			domain := tbl.ClusterDomain
			if domain == "" {
				domain = DefaultClusterDomain
			}
			fqdn := sr.Name + "." + sr.Namespace + ".svc." + strings.Trim(domain, ".")
			p.svc = ServiceKey(fqdn, sr.Port)
			p.host = fqdn // the service itself, however the app spelled it
			p.rule = sr.match(r)
			if p.rule != nil {
				be, ok := p.rule.pickBackend()
				if !ok {
					h.errorResponse(w, r, &httpError{http.StatusInternalServerError, "no-backends", errNoBackends})
					return
				}
				if be != nil {
					p.host, p.strict = be.fqdn(domain), true
					if be.Port != 0 {
						p.port = be.Port
					}
				}
				if p.rule.Retry != nil {
					p.budget = h.budgets.get(p.svc)
					p.budget.deposit(start)
				}
			}
		}
		ctx := r.Context()
		if p.rule != nil && p.rule.Timeouts.Request > 0 {
			// The request timeout bounds everything, waiting for a slot
			// included.
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, p.rule.Timeouts.Request)
			defer cancel()
		}
		release, err := h.limit.acquire(ctx, p.svc)
		if err != nil {
			if errors.Is(err, errOverloaded) {
				h.s.m.rejected.WithLabelValues(p.authority, "overloaded").Inc()
				err = &httpError{http.StatusServiceUnavailable, "overloaded", err}
			}
			h.errorResponse(w, r, err) // else the deadline (504) or the client gone
			return
		}
		defer release()
		ctx = context.WithValue(ctx, reqPolicyKey{}, p)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// accessLog writes the access log line of a finished request.
func (h *httpRuntime) accessLog(r *http.Request, p *reqPolicy, lw *logWriter, start time.Time) {
	status := lw.status
	if status == 0 {
		status = http.StatusOK
	}
	route := ""
	if p.sr != nil {
		route = p.sr.routeName(p.rule)
	}
	clientID := ""
	if m := h.s.mesh; m != nil && !m.cfg.LocalID.IsZero() {
		clientID = m.cfg.LocalID.String()
	}
	p.mu.Lock()
	serverID := p.serverID
	p.mu.Unlock()
	h.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "http request",
		slog.String("trace_id", p.trace.traceIDString()),
		slog.String("span_id", p.trace.spanIDString()),
		slog.String("client_id", clientID),
		slog.String("server_id", serverID),
		slog.String("authority", p.authority),
		slog.String("route", route),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Float64("latency_ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int("attempts", int(p.attempts.Load())),
		slog.Int64("bytes", lw.bytes),
	)
}

// logWriter records the status and body bytes of a response for the
// access log.
type logWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *logWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *logWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Flush passes flushes on.
func (w *logWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *logWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// replayBody decides whether a request may be sent again under a retry
// policy, buffering its body when it has one of known length up to
// MaxRetryBody. Bodies of unknown length or larger are sent as they
// stream and never retried.
func replayBody(req *http.Request, rp *RetryPolicy) (ok bool, body []byte, err error) {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
	default:
		if !rp.NonIdempotent {
			return false, nil, nil
		}
	}
	if req.Body == nil || req.Body == http.NoBody {
		return true, nil, nil
	}
	if req.ContentLength <= 0 || req.ContentLength > MaxRetryBody {
		return false, nil, nil
	}
	body = make([]byte, req.ContentLength)
	if _, err := io.ReadFull(req.Body, body); err != nil {
		return false, nil, &httpError{http.StatusBadRequest, "request-body", err}
	}
	req.Body.Close()
	return true, body, nil
}

// idleBody ends a response body (through cancel) when no Read returns
// for d.
type idleBody struct {
	io.ReadCloser
	d     time.Duration
	timer *time.Timer
}

func newIdleBody(rc io.ReadCloser, d time.Duration, cancel func()) *idleBody {
	return &idleBody{ReadCloser: rc, d: d, timer: time.AfterFunc(d, cancel)}
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == nil {
		b.timer.Reset(b.d)
	} else {
		b.timer.Stop()
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	return b.ReadCloser.Close()
}
