package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestAppsAppUnreachableNotRetried: an app's own 502 that carries
// meshproxy-error: app-unreachable (a gateway relaying the answer its
// own proxy gave it) is the app's answer, not the server proxy's word
// that the app was never reached: the client proxy took it for one and
// sent the request again, up to 1 + Retries times, a POST included,
// to an app that had handled it each time. The server proxy drops that
// reason from the app's responses.
func TestAppsAppUnreachableNotRetried(t *testing.T) {
	var n atomic.Int64
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		n.Add(1)
		w.Header().Set(headerProxyError, reasonAppUnreachable)
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusBadGateway)
	})
	try := func(t *testing.T, d *proxyDialer, authority string, reqs ...string) {
		t.Helper()
		rc := dialRaw(t, d)
		for _, req := range reqs {
			n.Store(0)
			rc.send(strings.ReplaceAll(req, "AUTH", authority))
			resp, _ := rc.read("POST")
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("%q: %d; want the app's 502", firstLine([]byte(req)), resp.StatusCode)
			}
			if got := n.Load(); got != 1 {
				t.Errorf("%q: the app handled it %d times; want once", firstLine([]byte(req)), got)
			}
		}
	}
	const bodiless = "POST /p HTTP/1.1\r\nHost: AUTH\r\nContent-Length: 0\r\n\r\n"
	t.Run("fast path", func(t *testing.T) {
		_, d, authority := meshHTTPEnv(t, app)
		try(t, d, authority, bodiless, "POST /p HTTP/1.1\r\nHost: AUTH\r\nContent-Length: 3\r\n\r\nabc")
	})
	t.Run("mesh-h2", func(t *testing.T) {
		_, d, authority := meshHTTPEnvWith(t, app, meshOpts{outHTTP: &HTTPConfig{AccessLog: slog.New(slog.NewTextHandler(io.Discard, nil))}})
		try(t, d, authority, bodiless)
	})
	// The server proxy's own app-unreachable still makes the client
	// proxy try again, on mesh-h2 too.
	t.Run("mesh-h2, app down", func(t *testing.T) {
		e, _, _ := meshHTTPEnvWith(t, app, meshOpts{outHTTP: &HTTPConfig{AccessLog: slog.New(slog.NewTextHandler(io.Discard, nil))}})
		dead := closedPort(t)
		authority := fmt.Sprintf("web.test:%d", dead.Port())
		rc := dialRaw(t, newProxyDialer(t, e.out, dead))
		rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, _ := rc.read("GET"); resp.StatusCode != http.StatusBadGateway || resp.Header.Get(headerProxyError) != reasonAppUnreachable {
			t.Errorf("GET with the app down = %d %q; want 502 %s", resp.StatusCode, resp.Header.Get(headerProxyError), reasonAppUnreachable)
		}
		if got, want := testutil.ToFloat64(e.inM.requests.WithLabelValues("inbound", authority)), float64(1+DefaultHTTPRetries); got != want {
			t.Errorf("GET reached the server proxy %v times; want %v (tried again after app-unreachable)", got, want)
		}
	})
	// Without the mesh the answer comes from the app itself.
	for _, accessLog := range []bool{false, true} {
		t.Run(fmt.Sprintf("plaintext, net/http %v", accessLog), func(t *testing.T) {
			bs := startBackends(t, app, 0, "127.0.0.1")
			z := newZoneDNS(t)
			z.set("web.test.", "127.0.0.1")
			hc := &HTTPConfig{Balancer: balancerFor(t, z)}
			if accessLog {
				hc.AccessLog = slog.New(slog.NewTextHandler(io.Discard, nil))
			}
			srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: hc}, nil, nil)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
			})
			d := newProxyDialer(t, srv, bs[0].addr)
			try(t, d, fmt.Sprintf("web.test:%d", bs[0].addr.Port()), bodiless)
		})
	}
}
