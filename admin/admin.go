// Package admin serves meshproxy's admin HTTP endpoints: liveness and
// readiness probes, Prometheus metrics, /debug/state, pprof, run-time log
// level control, an optional /shutdown, and an HTML status page for
// operators. It knows nothing of traffic: the binary hands it a metrics
// gatherer, a log level, a shutdown callback and a Status provider, and
// flips its readiness.
//
// GET endpoints answer any caller (the admin port is usually reached
// through a port-forward). Endpoints that change something (PUT
// /log-level, POST /shutdown) answer only loopback callers, addressed by
// an IP literal or "localhost", and refuse cross-site browser requests.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminReadTimeout bounds reading one request, body included. Admin
// requests are small (PUT /log-level takes 64 bytes at most).
const adminReadTimeout = 10 * time.Second

// adminWriteTimeout bounds writing one response: a caller that sends
// requests and never reads the answers would otherwise hold its
// connection, and a goroutine, for ever once the socket's buffers fill.
// A CPU profile or trace must be shorter (pprof refuses longer ones,
// saying so).
const adminWriteTimeout = 5 * time.Minute

// Server is the admin HTTP server. The zero value is not usable; call New.
// Its methods are safe for concurrent use.
type Server struct {
	log     *slog.Logger
	started time.Time
	ready   atomic.Bool
	// notReady explains why the proxy is not ready; read by /ready.
	notReady atomic.Value // string
	mux      *http.ServeMux
	srv      *http.Server

	opts     Options
	gatherer prometheus.Gatherer
	rates    *sampler
	// shutdownOnce makes /shutdown call Options.Shutdown at most once.
	shutdownOnce sync.Once
	startOnce    sync.Once
	stopOnce     sync.Once
	stop         chan struct{}
}

// Options configures the parts of the admin server beyond metrics and
// probes. The zero value gives the same server as New: no log level
// control, /shutdown disabled, a status page without proxy details.
type Options struct {
	// Logger receives the server's own logs. Nil discards them.
	Logger *slog.Logger

	// LogLevel is the level behind the process's logger. GET /log-level
	// reports it and PUT /log-level (loopback only) sets it. Nil makes
	// /log-level answer 404.
	LogLevel *slog.LevelVar

	// Shutdown, when not nil, enables POST /shutdown (loopback only): the
	// first such request answers 202 and then calls Shutdown once, in its
	// own goroutine, so Shutdown may itself stop this admin server. It
	// should start the same graceful drain as SIGTERM. Nil disables
	// /shutdown (404).
	Shutdown func()

	// Status, when not nil, is called at each request for the status page
	// (/) and must be safe for concurrent use. Nil shows a page with only
	// readiness, uptime since New, and figures from the metrics. The
	// page's Ready and NotReadyReason always come from SetReady and
	// SetNotReady, whatever Status returns.
	Status func() Status

	// SampleInterval is how often the server snapshots the request and
	// connection metrics for the status page's rates and percentiles.
	// Zero means 5s (the page's refresh period).
	SampleInterval time.Duration

	// SampleWindow is how many snapshots the server keeps; rates and
	// percentiles over the "window" cover SampleWindow*SampleInterval.
	// Zero means 12 (one minute at 5s).
	SampleWindow int
}

func (o *Options) sampleInterval() time.Duration {
	if o.SampleInterval <= 0 {
		return 5 * time.Second
	}
	return o.SampleInterval
}

func (o *Options) sampleWindow() int {
	if o.SampleWindow <= 0 {
		return 12
	}
	return o.SampleWindow
}

// New returns an admin server whose /metrics serves gatherer. The server
// starts not ready, with reason "starting". log may be nil. It is
// NewWithOptions(gatherer, Options{Logger: log}).
func New(gatherer prometheus.Gatherer, log *slog.Logger) *Server {
	return NewWithOptions(gatherer, Options{Logger: log})
}

// NewWithOptions returns an admin server whose /metrics serves gatherer
// and whose other endpoints follow opts. The server starts not ready, with
// reason "starting".
func NewWithOptions(gatherer prometheus.Gatherer, opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:      log,
		mux:      http.NewServeMux(),
		opts:     opts,
		gatherer: gatherer,
		rates:    newSampler(gatherer, opts.sampleWindow()),
		stop:     make(chan struct{}),
		started:  time.Now(),
	}
	s.notReady.Store("starting")
	s.mux.HandleFunc("GET /live", s.live)
	s.mux.HandleFunc("GET /ready", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	s.mux.HandleFunc("GET /{$}", s.statusPage)
	s.handlePprof()
	s.handleControl()
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 5 * time.Second,
		// Also bounds a body: a caller that announces one and never
		// sends it would otherwise hold its connection for ever (the
		// server reads what a handler left of a body before the next
		// request).
		ReadTimeout:  adminReadTimeout,
		WriteTimeout: adminWriteTimeout,
		IdleTimeout:  60 * time.Second,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s
}

// Handle adds a handler to the admin mux, for endpoints owned by other
// parts of the binary. pattern follows net/http.ServeMux.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// HandleState serves GET /debug/state as the JSON encoding of what state
// returns at each request. state must never return secrets.
func (s *Server) HandleState(state func() any) {
	s.mux.HandleFunc("GET /debug/state", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(state()); err != nil {
			s.log.Warn("encoding /debug/state", "err", err)
		}
	})
}

// SetReady marks the proxy ready to take traffic.
func (s *Server) SetReady() { s.ready.Store(true) }

// SetNotReady marks the proxy not ready, with a short reason that /ready
// reports (for example "draining" or "no certificate").
func (s *Server) SetNotReady(reason string) {
	s.notReady.Store(reason)
	s.ready.Store(false)
}

// Ready reports whether the proxy is ready.
func (s *Server) Ready() bool { return s.ready.Load() }

// Serve serves the admin endpoints on l until Shutdown. It returns nil after
// a clean shutdown. The first Serve also starts sampling the metrics for
// the status page, until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.startOnce.Do(func() { go s.rates.run(s.opts.sampleInterval(), s.stop) })
	s.log.Info("admin server listening", "addr", l.Addr().String())
	if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: serving on %s: %w", l.Addr(), err)
	}
	return nil
}

// Shutdown stops the admin server, waiting for in-flight requests until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

// Handler returns the admin mux, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.mux }

func (s *Server) live(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "live")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.ready.Load() {
		fmt.Fprintln(w, "ready")
		return
	}
	reason, _ := s.notReady.Load().(string)
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "not ready: %s\n", reason)
}
