// Package admin serves meshproxy's admin HTTP endpoints: liveness and
// readiness probes and Prometheus metrics. It knows nothing of traffic; the
// binary hands it a metrics gatherer and flips its readiness.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the admin HTTP server. The zero value is not usable; call New.
// Its methods are safe for concurrent use.
type Server struct {
	log   *slog.Logger
	ready atomic.Bool
	// notReady explains why the proxy is not ready; read by /ready.
	notReady atomic.Value // string
	mux      *http.ServeMux
	srv      *http.Server
}

// New returns an admin server whose /metrics serves gatherer. The server
// starts not ready, with reason "starting". log may be nil.
func New(gatherer prometheus.Gatherer, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log, mux: http.NewServeMux()}
	s.notReady.Store("starting")
	s.mux.HandleFunc("GET /live", s.live)
	s.mux.HandleFunc("GET /ready", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
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
// a clean shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.log.Info("admin server listening", "addr", l.Addr().String())
	if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: serving on %s: %w", l.Addr(), err)
	}
	return nil
}

// Shutdown stops the admin server, waiting for in-flight requests until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
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
