package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "meshproxy_test_total", Help: "test counter"})
	reg.MustRegister(c)
	c.Add(3)

	s := New(reg, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	base := "http://" + l.Addr().String()

	if code, body := get(t, base+"/live"); code != 200 || !strings.Contains(body, "live") {
		t.Errorf("/live = %d %q; want 200 live", code, body)
	}
	if code, body := get(t, base+"/ready"); code != 503 || !strings.Contains(body, "starting") {
		t.Errorf("/ready before SetReady = %d %q; want 503 with reason", code, body)
	}
	s.SetReady()
	if code, _ := get(t, base+"/ready"); code != 200 {
		t.Errorf("/ready after SetReady = %d; want 200", code)
	}
	s.SetNotReady("draining")
	if code, body := get(t, base+"/ready"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/ready while draining = %d %q; want 503 draining", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "meshproxy_test_total 3") {
		t.Errorf("/metrics = %d, missing counter:\n%s", code, body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve after Shutdown = %v; want nil", err)
	}
}
