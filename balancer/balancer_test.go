package balancer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func TestBalancerPickFromDNS(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 0, "198.18.0.1", "198.18.0.2", "198.18.0.3")
	d := newTestDiscovery(t, s, 200*time.Millisecond, DiscoveryConfig{})
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	b := New(d, BalancerConfig{Metrics: m})
	defer b.Close()

	seen := map[string]int{}
	for range 300 {
		ep, err := b.Pick(context.Background(), "web", 8080)
		if err != nil {
			t.Fatal(err)
		}
		seen[ep.Addr().String()]++
		ep.Release(nil, time.Millisecond)
	}
	for _, a := range []string{"198.18.0.1:8080", "198.18.0.2:8080", "198.18.0.3:8080"} {
		if seen[a] == 0 {
			t.Errorf("picks = %v; want every endpoint used", seen)
		}
	}
	snap := b.Snapshot()
	if len(snap) != 1 || snap[0].Name != "web.ns1.svc.cluster.local" || snap[0].Port != 8080 || len(snap[0].Endpoints) != 3 {
		t.Fatalf("snapshot = %+v; want one service web.ns1.svc.cluster.local:8080 with 3 endpoints", snap)
	}
	want := `
# HELP meshproxy_balancer_endpoints Endpoints of each balanced service, by state (ready, ejected, probing).
# TYPE meshproxy_balancer_endpoints gauge
meshproxy_balancer_endpoints{service="web.ns1.svc.cluster.local:8080",state="ejected"} 0
meshproxy_balancer_endpoints{service="web.ns1.svc.cluster.local:8080",state="probing"} 0
meshproxy_balancer_endpoints{service="web.ns1.svc.cluster.local:8080",state="ready"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshproxy_balancer_endpoints"); err != nil {
		t.Error(err)
	}

	// An address dropped from DNS stops getting picks after a refresh;
	// a request in flight to it finishes normally.
	inflight, err := b.Pick(context.Background(), "web", 8080)
	if err != nil {
		t.Fatal(err)
	}
	s.set(webFQDN, 0, "198.18.0.9")
	eventually(t, 2*time.Second, "dropped addresses still picked", func() bool {
		ep, err := b.Pick(context.Background(), "web", 8080)
		if err != nil {
			t.Fatal(err)
		}
		ep.Release(nil, time.Millisecond)
		return ep.Addr().String() == "198.18.0.9:8080"
	})
	for range 20 {
		ep, _ := b.Pick(context.Background(), "web", 8080)
		if ep.Addr().String() != "198.18.0.9:8080" {
			t.Fatalf("picked %v after it left DNS", ep.Addr())
		}
		ep.Release(nil, time.Millisecond)
	}
	inflight.Release(nil, time.Millisecond)

	if _, err := b.Pick(context.Background(), "198.18.0.1", 8080); !errors.Is(err, ErrNotFound) {
		t.Errorf("IP literal: err = %v; want ErrNotFound", err)
	}
	if _, err := b.Pick(context.Background(), "unknown", 8080); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown name: err = %v; want ErrNotFound", err)
	}
	b.Close()
	if _, err := b.Pick(context.Background(), "web", 8080); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err = %v; want ErrClosed", err)
	}
	if n := testutil.CollectAndCount(m.endpoints); n != 0 {
		t.Errorf("endpoint series after Close = %d; want 0", n)
	}
}

func TestBalancerForgetsIdleServices(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	b := New(nil, BalancerConfig{IdleTimeout: 40 * time.Millisecond, Service: ServiceConfig{Now: clk.now}})
	defer b.Close()
	if _, err := b.Service("static.test", 80); err != nil {
		t.Fatal(err)
	}
	clk.add(time.Second)
	eventually(t, 2*time.Second, "idle service not forgotten", func() bool { return len(b.Snapshot()) == 0 })
}

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	b := New(nil, BalancerConfig{Metrics: m})
	defer b.Close()
	svc, _ := b.Service("web.test", 80)
	svc.Update(addrs(2))
	m.poolDial()
	m.poolReuse()
	m.poolStaleConn()
	m.poolPreconnect()
	m.dnsQuery("success")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"meshproxy_balancer_endpoints": true, "meshproxy_pool_dials_total": true, "meshproxy_pool_reuses_total": true,
		"meshproxy_pool_stale_total": true, "meshproxy_pool_preconnects_total": true, "meshproxy_dns_queries_total": true,
	}
	for _, mf := range mfs {
		delete(want, mf.GetName())
	}
	for name := range want {
		t.Errorf("metric %s not registered", name)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("NewMetrics twice on one registry: err = nil; want a duplicate registration error")
	}
}

// TestBalancerConcurrentFirstPicks: many requests for a service nobody has
// asked for yet, at the same moment, all get an endpoint. (The answer used
// to be published before its endpoints, so a concurrent Pick could find an
// empty set: ErrNoEndpoints, a 503 for the first requests of a canary.)
func TestBalancerConcurrentFirstPicks(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 0, "198.18.0.1", "198.18.0.2")
	for round := range 30 {
		d := newTestDiscovery(t, s, 200*time.Millisecond, DiscoveryConfig{})
		b := New(d, BalancerConfig{})
		start := make(chan struct{})
		errs := make(chan error, 32)
		for range 32 {
			go func() {
				<-start
				ep, err := b.Pick(context.Background(), "web", 8080)
				if err == nil {
					ep.Release(nil, time.Millisecond)
				}
				errs <- err
			}()
		}
		close(start)
		for range 32 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: a concurrent first Pick failed: %v", round, err)
			}
		}
		b.Close()
	}
}
