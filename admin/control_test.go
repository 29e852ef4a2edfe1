package admin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// do sends one request to h with the given caller address and Host and
// returns the status and body.
func do(t *testing.T, h http.Handler, method, path, body, remote, host string, hdr ...string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = remote
	r.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

const (
	local  = "127.0.0.1:40000"
	remote = "198.18.0.7:40000"
	host   = "127.0.0.1:4191"
)

func TestLogLevel(t *testing.T) {
	lv := new(slog.LevelVar)
	h := NewWithOptions(prometheus.NewRegistry(), Options{LogLevel: lv}).Handler()

	if code, body := do(t, h, "GET", "/log-level", "", remote, "admin.example:4191"); code != 200 || body != "info\n" {
		t.Errorf("GET /log-level from anywhere = %d %q; want 200 \"info\\n\"", code, body)
	}
	tests := []struct {
		name, body, remote, host string
		hdr                      []string
		code                     int
		want                     slog.Level
		inBody                   string
	}{
		{"loopback v4 sets debug", "debug\n", local, host, nil, 200, slog.LevelDebug, "debug"},
		{"loopback v6 sets warn", "WARN", "[::1]:5000", "[::1]:4191", nil, 200, slog.LevelWarn, "warn"},
		{"v4-mapped loopback sets error", "error", "[::ffff:127.0.0.1]:5000", "localhost:4191", nil, 200, slog.LevelError, "error"},
		{"other 127/8 address sets info", "info", "127.3.4.5:1", host, nil, 200, slog.LevelInfo, "info"},
		{"bad level", "verbose", local, host, nil, 400, slog.LevelInfo, "debug, info, warn, error"},
		{"empty body", "", local, host, nil, 400, slog.LevelInfo, "bad log level"},
		{"non-loopback caller", "debug", remote, host, nil, 403, slog.LevelInfo, "only from loopback"},
		{"non-loopback v6 caller", "debug", "[2001:2::7]:1", host, nil, 403, slog.LevelInfo, "only from loopback"},
		{"unparsable remote", "debug", "@", host, nil, 403, slog.LevelInfo, "only from loopback"},
		{"rebindable host name", "debug", local, "evil.example:4191", nil, 403, slog.LevelInfo, "must address the admin server"},
		{"cross-site browser", "debug", local, host, []string{"Sec-Fetch-Site", "cross-site"}, 403, slog.LevelInfo, "cross-origin"},
		{"foreign origin", "debug", local, host, []string{"Origin", "http://evil.example"}, 403, slog.LevelInfo, "cross-origin"},
		{"huge body", strings.Repeat("x", 1000), local, host, nil, 400, slog.LevelInfo, "bad log level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lv.Set(slog.LevelInfo)
			code, body := do(t, h, "PUT", "/log-level", tt.body, tt.remote, tt.host, tt.hdr...)
			if code != tt.code || !strings.Contains(body, tt.inBody) {
				t.Errorf("PUT /log-level = %d %q; want %d containing %q", code, body, tt.code, tt.inBody)
			}
			if got := lv.Level(); got != tt.want {
				t.Errorf("level after PUT = %v; want %v", got, tt.want)
			}
		})
	}
	if code, _ := do(t, h, "POST", "/log-level", "debug", local, host); code != 405 {
		t.Errorf("POST /log-level = %d; want 405", code)
	}
}

func TestLogLevelNotConfigured(t *testing.T) {
	h := New(prometheus.NewRegistry(), nil).Handler()
	if code, body := do(t, h, "GET", "/log-level", "", local, host); code != 404 || !strings.Contains(body, "not configured") {
		t.Errorf("GET /log-level without a LevelVar = %d %q; want 404 not configured", code, body)
	}
	if code, _ := do(t, h, "PUT", "/log-level", "debug", local, host); code != 404 {
		t.Errorf("PUT /log-level without a LevelVar = %d; want 404", code)
	}
}

func TestShutdownDisabledByDefault(t *testing.T) {
	h := New(prometheus.NewRegistry(), nil).Handler()
	code, body := do(t, h, "POST", "/shutdown", "", local, host)
	if code != 404 || !strings.Contains(body, "disabled") {
		t.Errorf("POST /shutdown, not enabled = %d %q; want 404 disabled", code, body)
	}
}

func TestShutdown(t *testing.T) {
	called := make(chan struct{}, 10)
	h := NewWithOptions(prometheus.NewRegistry(), Options{Shutdown: func() { called <- struct{}{} }}).Handler()

	if code, _ := do(t, h, "GET", "/shutdown", "", local, host); code != 405 {
		t.Errorf("GET /shutdown = %d; want 405", code)
	}
	if code, body := do(t, h, "POST", "/shutdown", "", remote, host); code != 403 || !strings.Contains(body, "loopback") {
		t.Errorf("POST /shutdown from %s = %d %q; want 403 loopback only", remote, code, body)
	}
	if code, _ := do(t, h, "POST", "/shutdown", "", local, host, "Sec-Fetch-Site", "cross-site"); code != 403 {
		t.Errorf("cross-site POST /shutdown = %d; want 403", code)
	}
	select {
	case <-called:
		t.Fatal("shutdown callback ran for a refused request")
	case <-time.After(50 * time.Millisecond):
	}
	if code, body := do(t, h, "POST", "/shutdown", "", local, host); code != 202 || !strings.Contains(body, "shutting down") {
		t.Errorf("POST /shutdown from loopback = %d %q; want 202", code, body)
	}
	select {
	case <-called:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown callback not called")
	}
	if code, body := do(t, h, "POST", "/shutdown", "", local, host); code != 202 || !strings.Contains(body, "already") {
		t.Errorf("second POST /shutdown = %d %q; want 202 already shutting down", code, body)
	}
	select {
	case <-called:
		t.Error("shutdown callback called twice")
	case <-time.After(50 * time.Millisecond):
	}
}

// TestShutdownOverSocket drives /shutdown over a real loopback connection
// with a callback that stops the admin server itself, as the binary's does.
func TestShutdownOverSocket(t *testing.T) {
	var s *Server
	stopped := make(chan error, 1)
	s = NewWithOptions(prometheus.NewRegistry(), Options{Shutdown: func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopped <- s.Shutdown(ctx)
	}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	resp, err := http.Post("http://"+l.Addr().String()+"/shutdown", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Errorf("POST /shutdown = %d %q; want 202", resp.StatusCode, b)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Shutdown from the callback = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("callback's Shutdown did not return")
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v; want nil after Shutdown", err)
	}
}

func TestPprof(t *testing.T) {
	h := New(prometheus.NewRegistry(), nil).Handler()
	for _, tt := range []struct{ path, want string }{
		{"/debug/pprof/", "goroutine"},
		{"/debug/pprof/goroutine?debug=1", "goroutine profile"},
		{"/debug/pprof/cmdline", ""},
	} {
		code, body := do(t, h, "GET", tt.path, "", remote, "admin.example")
		if code != 200 || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s from a remote caller = %d, body %.100q; want 200 containing %q", tt.path, code, body, tt.want)
		}
	}
	if code, _ := do(t, h, "DELETE", "/debug/pprof/cmdline", "", local, host); code != 405 {
		t.Errorf("DELETE /debug/pprof/cmdline = %d; want 405", code)
	}
	if code, _ := do(t, h, "GET", "/debug/pprof/heap?debug=1", "", local, host); code != 200 {
		t.Errorf("GET /debug/pprof/heap = %d; want 200", code)
	}
}

func TestWrongMethods(t *testing.T) {
	h := New(prometheus.NewRegistry(), nil).Handler()
	for _, tt := range []struct{ method, path string }{
		{"POST", "/"}, {"POST", "/metrics"}, {"PUT", "/ready"}, {"DELETE", "/live"},
	} {
		if code, _ := do(t, h, tt.method, tt.path, "", local, host); code != 405 {
			t.Errorf("%s %s = %d; want 405", tt.method, tt.path, code)
		}
	}
	if code, _ := do(t, h, "GET", "/nope", "", local, host); code != 404 {
		t.Errorf("GET /nope = %d; want 404", code)
	}
}

func TestLocalHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:4191": true, "127.0.0.1": true, "[::1]:4191": true, "::1": true,
		"localhost": true, "LOCALHOST:4191": true, "198.18.0.1:4191": true,
		"evil.example": false, "evil.example:4191": false, "localhost.evil.example": false, "": false,
	} {
		if got := localHost(host); got != want {
			t.Errorf("localHost(%q) = %v; want %v", host, got, want)
		}
	}
}
