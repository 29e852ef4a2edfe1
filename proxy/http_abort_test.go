package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHTTPNetPathClientBodyBreaksOff: on the net/http path (here because
// an access log is configured) a client that breaks its request body off
// gets no answer, the request counts as responses_total{status_code="499"}
// failure as on the fast path, it is logged once, and the endpoint is not
// charged with a failure (it was counted a 502 upstream failure of the
// endpoint, so a few aborted uploads could eject a healthy one).
func TestHTTPNetPathClientBodyBreaksOff(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(c *net.TCPConn)
	}{
		{"reset", func(c *net.TCPConn) { c.SetLinger(0); c.Close() }},
		{"eof", func(c *net.TCPConn) {
			c.CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, _ := io.ReadAll(c); len(b) > 0 {
				t.Errorf("after the body broke off, the client read %q; want no answer", b)
			}
			c.Close()
		}},
	} {
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

			c, err := d.dial(t.Context(), "tcp", "")
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "POST /x HTTP/1.1\r\nHost: "+authority+"\r\nContent-Length: 1048576\r\n\r\n")
			c.Write(bytes.Repeat([]byte("y"), 64<<10))
			select {
			case <-reading:
			case <-time.After(10 * time.Second):
				t.Fatal("the request did not reach the app")
			}
			tc.cut(c.(*net.TCPConn))
			select {
			case err := <-bodyErr:
				if err == nil {
					t.Error("the app read a complete body from a client whose body broke off")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the app's request did not end 10s after the client broke off")
			}
			waitValue(t, "responses_total{499,failure}", srv.m.responses.WithLabelValues("outbound", authority, "499", classFailure), 1)
			if n := strings.Count(log.String(), "http request abandoned by the client"); n != 1 {
				t.Errorf("the abandoned request was logged %d times; want once; log:\n%s", n, log.String())
			}
			for _, svc := range bal.Snapshot() {
				for _, ep := range svc.Endpoints {
					if ep.ConsecutiveFailures != 0 || ep.State != "ready" {
						t.Errorf("endpoint %s: %d consecutive failures, %s; want none, ready (the client broke off)", ep.Addr, ep.ConsecutiveFailures, ep.State)
					}
				}
			}
		})
	}
}
