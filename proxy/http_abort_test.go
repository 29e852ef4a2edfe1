package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
)

// TestHTTPNetPathClientBodyBreaksOff: on the net/http path (here because
// an access log is configured) a client that breaks its request body off
// gets no answer, the request counts as responses_total{status_code="499"}
// failure as on the fast path, it is logged once, and the endpoint is not
// charged with a failure (it was counted a 502 upstream failure of the
// endpoint, so a few aborted uploads could eject a healthy one).
func TestHTTPNetPathClientBodyBreaksOff(t *testing.T) {
	for _, tc := range bodyCuts(t) {
		t.Run(tc.name, func(t *testing.T) {
			reading := make(chan struct{}, 1)
			bodyErr := make(chan error, 1)
			bs := startBackends(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reading <- struct{}{}
				_, err := io.Copy(io.Discard, r.Body)
				bodyErr <- err
			}), 0, "127.0.0.1")
			z := newZoneDNS(t)
			z.set("web.test.", "127.0.0.1")
			bal := balancerFor(t, z)
			log := &logBuf{}
			srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{
				Balancer:  bal,
				AccessLog: slog.New(slog.NewTextHandler(io.Discard, nil)), // the net/http path
			}}, nil, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
			defer srv.Shutdown(context.Background())
			d := newProxyDialer(t, srv, bs[0].addr)
			authority := fmt.Sprintf("web.test:%d", bs[0].addr.Port())

			c := startUpload(t, d, authority)
			breakOffMidBody(t, reading, bodyErr, func() { tc.cut(c) })
			checkAbandoned(t, srv, log, bal, authority)
		})
	}
}
