package admin

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var inf = math.Inf(+1)

func TestQuantile(t *testing.T) {
	tests := []struct {
		name string
		q    float64
		b    []bucket
		want quantileResult
	}{
		{"no buckets", 0.5, nil, quantileResult{}},
		{"empty histogram", 0.5, []bucket{{0.1, 0}, {1, 0}, {inf, 0}}, quantileResult{}},
		{"all in first bucket, median", 0.5, []bucket{{0.1, 10}, {1, 10}, {inf, 10}}, quantileResult{Value: 0.05, OK: true}},
		{"all in one middle bucket, p90", 0.9, []bucket{{0.1, 0}, {0.5, 100}, {1, 100}, {inf, 100}}, quantileResult{Value: 0.1 + 0.4*0.9, OK: true}},
		{"all in one bucket, p100 is its upper bound", 1, []bucket{{0.1, 0}, {0.5, 4}, {inf, 4}}, quantileResult{Value: 0.5, OK: true}},
		{"two buckets, p50 at their border", 0.5, []bucket{{1, 5}, {2, 10}, {inf, 10}}, quantileResult{Value: 1, OK: true}},
		{"two buckets, p75 interpolated", 0.75, []bucket{{1, 5}, {2, 10}, {inf, 10}}, quantileResult{Value: 1.5, OK: true}},
		{"p99 in +Inf bucket", 0.99, []bucket{{0.1, 50}, {1, 90}, {inf, 100}}, quantileResult{Value: 1, Above: true, OK: true}},
		{"everything in +Inf bucket", 0.5, []bucket{{0.1, 0}, {1, 0}, {inf, 7}}, quantileResult{Value: 1, Above: true, OK: true}},
		{"only a +Inf bucket", 0.5, []bucket{{inf, 3}}, quantileResult{Value: 0, Above: true, OK: true}},
		{"negative first bound", 0.5, []bucket{{-1, 3}, {inf, 3}}, quantileResult{Value: -1, OK: true}},
		{"q zero", 0, []bucket{{1, 3}, {inf, 3}}, quantileResult{}},
		{"q NaN", math.NaN(), []bucket{{1, 3}, {inf, 3}}, quantileResult{}},
		{"q above one is one", 2, []bucket{{1, 3}, {inf, 3}}, quantileResult{Value: 1, OK: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := quantile(tt.q, tt.b)
			if got.OK != tt.want.OK || got.Above != tt.want.Above || math.Abs(got.Value-tt.want.Value) > 1e-9 {
				t.Errorf("quantile(%v, %v) = %+v; want %+v", tt.q, tt.b, got, tt.want)
			}
		})
	}
}

func TestDeltaBuckets(t *testing.T) {
	old := []bucket{{0.1, 5}, {1, 8}, {inf, 10}}
	cur := []bucket{{0.1, 6}, {0.5, 3}, {1, 20}, {inf, 30}}
	got := deltaBuckets(old, cur)
	// 0.5 is new (counts from 0); cumulative order is kept.
	want := []bucket{{0.1, 1}, {0.5, 3}, {1, 12}, {inf, 20}}
	if len(got) != len(want) {
		t.Fatalf("deltaBuckets = %v; want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("deltaBuckets[%d] = %v; want %v", i, got[i], want[i])
		}
	}
	// A reset (counts went down) gives no negative counts.
	for _, b := range deltaBuckets(cur, old) {
		if b.Count < 0 {
			t.Errorf("deltaBuckets after reset has %v", b)
		}
	}
}

// trafficMetrics registers the metrics the status page reads, with the
// label sets the proxy uses.
type trafficMetrics struct {
	reqs    *prometheus.CounterVec
	latency *prometheus.HistogramVec
	conns   *prometheus.CounterVec
	connDur *prometheus.HistogramVec
	open    *prometheus.GaugeVec
}

func newTrafficMetrics(reg *prometheus.Registry, http bool) *trafficMetrics {
	m := &trafficMetrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricConnections, Help: "h"}, []string{"direction"}),
		connDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: metricConnDuration, Help: "h",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 13)}, []string{"direction"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metricOpenConns, Help: "h"}, []string{"direction", "tls"}),
	}
	reg.MustRegister(m.conns, m.connDur, m.open)
	if http {
		m.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricRequests, Help: "h"}, []string{"direction"})
		m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: metricLatency, Help: "h",
			Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1}}, []string{"direction"})
		reg.MustRegister(m.reqs, m.latency)
	}
	return m
}

func TestTrafficFromMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newTrafficMetrics(reg, true)
	m.reqs.WithLabelValues("outbound").Add(100)
	m.conns.WithLabelValues("outbound").Add(10)
	m.open.WithLabelValues("outbound", "true").Set(3)
	m.open.WithLabelValues("outbound", "disabled").Set(2)
	m.open.WithLabelValues("inbound", "true").Set(1)

	t0 := time.Unix(1_700_000_000, 0)
	old := takeSnapshot(reg, t0)
	if got := old.OpenConns; got["outbound"] != 5 || got["inbound"] != 1 {
		t.Errorf("open connections by direction = %v; want outbound 5, inbound 1", got)
	}
	// 50 requests over 10s, split over two series: 40 at ~3ms, 10 at ~70ms.
	for range 30 {
		m.reqs.WithLabelValues("outbound").Inc()
		m.latency.WithLabelValues("outbound").Observe(0.003)
	}
	for range 10 {
		m.reqs.WithLabelValues("inbound").Inc()
		m.latency.WithLabelValues("inbound").Observe(0.003)
	}
	for range 10 {
		m.reqs.WithLabelValues("inbound").Inc()
		m.latency.WithLabelValues("inbound").Observe(0.07)
	}
	m.conns.WithLabelValues("inbound").Add(20)
	cur := takeSnapshot(reg, t0.Add(10*time.Second))

	req, reqOK, conn, connOK := between(old, cur)
	if !reqOK || !connOK {
		t.Fatalf("between: reqOK %v connOK %v; want both", reqOK, connOK)
	}
	if req.Rate != 5 || req.Events != 50 || req.Over != 10*time.Second {
		t.Errorf("requests = %.2f/s, %v events over %v; want 5/s, 50 over 10s", req.Rate, req.Events, req.Over)
	}
	if conn.Rate != 2 {
		t.Errorf("connections = %.2f/s; want 2/s", conn.Rate)
	}
	// p50: rank 25 of 50, all 40 fast ones in (0.001, 0.005]: 0.001+0.004*25/40.
	if want := 0.001 + 0.004*25.0/40; math.Abs(req.P50.Value-want) > 1e-9 {
		t.Errorf("p50 = %v; want %v", req.P50.Value, want)
	}
	// p90: rank 45, in (0.05, 0.1] holding 10 after 40: 0.05+0.05*5/10.
	if want := 0.075; math.Abs(req.P90.Value-want) > 1e-9 {
		t.Errorf("p90 = %v; want %v", req.P90.Value, want)
	}
	if conn.P50.OK {
		t.Errorf("connection duration p50 = %+v; want none (no connection closed)", conn.P50)
	}
}

func TestTrafficWithoutHTTPMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newTrafficMetrics(reg, false)
	m.conns.WithLabelValues("inbound").Add(1)
	t0 := time.Unix(1_700_000_000, 0)
	old := takeSnapshot(reg, t0)
	m.conns.WithLabelValues("inbound").Add(30)
	m.connDur.WithLabelValues("inbound").Observe(2)
	cur := takeSnapshot(reg, t0.Add(3*time.Second))
	_, reqOK, conn, connOK := between(old, cur)
	if reqOK {
		t.Error("request figures without meshproxy_requests_total; want none")
	}
	if !connOK || conn.Rate != 10 || !conn.P99.OK {
		t.Errorf("connections = %+v (ok %v); want 10/s with a p99", conn, connOK)
	}
	// A family that appears after the old snapshot counts from zero.
	m.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricRequests, Help: "h"}, []string{"direction"})
	reg.MustRegister(m.reqs)
	m.reqs.WithLabelValues("outbound").Add(6)
	cur = takeSnapshot(reg, t0.Add(3*time.Second))
	if req, ok, _, _ := between(old, cur); !ok || req.Rate != 2 {
		t.Errorf("requests after the family appeared = %+v (ok %v); want 2/s", req, ok)
	}
	if _, _, _, ok := between(cur, cur); ok {
		t.Error("between a snapshot and itself is ok; want not (no time passed)")
	}
}

func TestSamplerBases(t *testing.T) {
	s := newSampler(prometheus.NewRegistry(), 3)
	t0 := time.Unix(1_700_000_000, 0)
	if _, _, ok := s.bases(t0, 5*time.Second); ok {
		t.Error("bases with nothing sampled: ok; want not ok")
	}
	for i := range 5 { // keeps the last 3: t0+10s, +15s, +20s
		s.sample(t0.Add(time.Duration(i) * 5 * time.Second))
	}
	rec, oldest, ok := s.bases(t0.Add(22*time.Second), 5*time.Second)
	if !ok {
		t.Fatal("bases: not ok")
	}
	if got := oldest.At.Sub(t0); got != 10*time.Second {
		t.Errorf("oldest = t0+%v; want t0+10s (ring of 3)", got)
	}
	if got := rec.At.Sub(t0); got != 15*time.Second {
		t.Errorf("recent base = t0+%v; want t0+15s (closest to now-5s)", got)
	}
}
