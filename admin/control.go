package admin

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
)

// handlePprof serves net/http/pprof on the admin mux (never the default
// mux) under /debug/pprof/. Profiles are reads, so any caller may fetch
// them.
func (s *Server) handlePprof() {
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index) // also named profiles: heap, goroutine, ...
	s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// handleControl serves the endpoints that change the running proxy.
func (s *Server) handleControl() {
	s.mux.HandleFunc("GET /log-level", s.getLogLevel)
	s.mux.Handle("PUT /log-level", s.localOnly(http.HandlerFunc(s.putLogLevel)))
	s.mux.Handle("POST /shutdown", s.localOnly(http.HandlerFunc(s.shutdown)))
}

// localOnly lets through only requests that come from a loopback address
// and name the server by an IP literal or "localhost" (so a DNS-rebound
// name in a browser cannot reach it), and that are not cross-site browser
// requests. Anything else gets 403 with the reason.
func (s *Server) localOnly(h http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.refuse(w, r, "cross-origin browser requests may not change the proxy; use curl from the proxy's host or pod")
	}))
	local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackRemote(r.RemoteAddr) {
			s.refuse(w, r, fmt.Sprintf("%s %s is allowed only from loopback (127.0.0.1 or ::1), not from %s; run it from the proxy's own host or pod, e.g. with kubectl port-forward or kubectl exec", r.Method, r.URL.Path, r.RemoteAddr))
			return
		}
		if !localHost(r.Host) {
			s.refuse(w, r, fmt.Sprintf("%s %s must address the admin server as 127.0.0.1, [::1] or localhost, not %q", r.Method, r.URL.Path, r.Host))
			return
		}
		h.ServeHTTP(w, r)
	})
	return cop.Handler(local)
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, msg string) {
	s.log.Warn("admin: refused request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "host", r.Host)
	http.Error(w, "forbidden: "+msg, http.StatusForbidden)
}

// loopbackRemote reports whether remote ("ip:port", as in
// http.Request.RemoteAddr) is a loopback address, IPv4-mapped included.
func loopbackRemote(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	return ap.Addr().Unmap().IsLoopback()
}

// localHost reports whether host (a Host header, with or without port) is
// an IP literal or localhost: names that DNS cannot rebind.
func localHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// levelName is the lower-case name of l as /log-level reads and writes it.
func levelName(l slog.Level) string { return strings.ToLower(l.String()) }

// parseLevel parses a level as PUT /log-level accepts it.
func parseLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

const noLogLevel = "log level control is not configured in this process\n"

func (s *Server) getLogLevel(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.opts.LogLevel == nil {
		http.Error(w, noLogLevel, http.StatusNotFound)
		return
	}
	fmt.Fprintln(w, levelName(s.opts.LogLevel.Level()))
}

func (s *Server) putLogLevel(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if s.opts.LogLevel == nil {
		http.Error(w, noLogLevel, http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64))
	if err != nil {
		http.Error(w, "bad log level: the body must be one of debug, info, warn, error", http.StatusBadRequest)
		return
	}
	lvl, ok := parseLevel(string(body))
	if !ok {
		http.Error(w, fmt.Sprintf("bad log level %q: the body must be one of debug, info, warn, error", strings.TrimSpace(string(body))), http.StatusBadRequest)
		return
	}
	old := s.opts.LogLevel.Level()
	s.opts.LogLevel.Set(lvl)
	// Logged at warn so the change shows whatever the new level is.
	s.log.Warn("log level changed", "from", levelName(old), "to", levelName(lvl), "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, levelName(lvl))
}

func (s *Server) shutdown(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.opts.Shutdown == nil {
		http.Error(w, "shutdown endpoint is disabled: enable it in meshproxy run's configuration to drain the proxy over HTTP, or send SIGTERM", http.StatusNotFound)
		return
	}
	first := false
	s.shutdownOnce.Do(func() { first = true })
	w.WriteHeader(http.StatusAccepted)
	if !first {
		fmt.Fprintln(w, "already shutting down")
		return
	}
	fmt.Fprintln(w, "shutting down")
	s.log.Warn("shutdown requested over the admin API", "remote", r.RemoteAddr)
	go s.opts.Shutdown()
}
