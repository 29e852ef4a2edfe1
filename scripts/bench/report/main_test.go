package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestReadRatesTakesTheMedianOfTheRounds(t *testing.T) {
	dir := t.TempDir()
	// Three rounds; the second was disturbed (a huge p99): the median
	// is the other rounds' middle value, not the mean.
	p99s := []float64{900, 50000, 1100}
	for i, p99 := range p99s {
		r := map[string]any{
			"target_rate": 1000, "scheduled": 5000, "ok": 5000 - i, "errors": i, "achieved_rate": 1000 - float64(i),
			"latency": map[string]any{"p50_us": 300 + 10*i, "p99_us": p99, "p999_us": 2 * p99, "max_us": 3 * p99,
				"curve": []map[string]float64{{"percentile": 50, "us": 300 + 10*float64(i)}, {"percentile": 99, "us": p99}}},
			"late":         map[string]any{"p50_us": 20, "p99_us": 100 * (i + 1)},
			"scrape_delta": map[string]float64{"meshproxy_pool_dials_total": float64(i)},
		}
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("rate-%d.json", i+1)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var notes []string
	raw := map[string]json.RawMessage{}
	r, n := readRates(dir, raw, &notes)
	if n != 3 || len(notes) != 0 {
		t.Fatalf("read %d rounds, notes %q; want 3, none", n, notes)
	}
	if r.Latency.P99 != 1100 || r.Latency.P50 != 310 || r.Latency.P999 != 2200 || r.Latency.Max != 3300 {
		t.Errorf("latency %+v; want the medians p50 310, p99 1100, p99.9 2200, max 3300", r.Latency)
	}
	if len(r.Latency.Curve) != 2 || r.Latency.Curve[1].Micros != 1100 || r.Latency.Curve[0].Micros != 310 {
		t.Errorf("curve %+v; want the pointwise medians", r.Latency.Curve)
	}
	if r.Late.P99 != 200 {
		t.Errorf("loadgen lateness p99 %v; want the median 200", r.Late.P99)
	}
	if r.Errors != 3 || r.Scheduled != 15000 || r.AchievedRate != 998 || r.ScrapeDelta["meshproxy_pool_dials_total"] != 3 {
		t.Errorf("sums %+v; want errors 3, scheduled 15000, lowest rate 998, dials 3", r)
	}
	if len(raw) != 3 {
		t.Errorf("raw keeps %d rounds; want 3", len(raw))
	}
}

func TestReadRatesReadsAnOldSingleRun(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rate.json"), []byte(`{"latency":{"p99_us":700}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var notes []string
	r, n := readRates(dir, map[string]json.RawMessage{}, &notes)
	if n != 1 || r.Latency.P99 != 700 {
		t.Fatalf("read %d rounds, p99 %v; want 1 and 700", n, r.Latency.P99)
	}
	if _, n := readRates(t.TempDir(), map[string]json.RawMessage{}, &notes); n != 0 {
		t.Fatalf("an empty directory gave %d rounds", n)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{5}, 5}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v; want %v", c.in, got, c.want)
		}
	}
}

// TestBuildCPUPerRequestAndRelayRatios: the CPU per request is the
// proxies' ticks over the wrk run divided by wrk's requests, and the Go
// relay pair is compared with the HAProxy TCP pair and with meshproxy.
func TestBuildCPUPerRequestAndRelayRatios(t *testing.T) {
	dir := t.TempDir()
	write := func(setup, name, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, setup), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, setup, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(".", "settings.json", `{"rate":1000,"concurrency":32,"hold_conns":9000}`)
	// 50000 requests in 5 s; 600 ticks at 100/s = 6 CPU s: 120 µs each.
	write("meshproxy", "wrk.json", `{"requests":50000,"duration_us":5000000}`)
	write("meshproxy", "cpuwrk.json", `{"ticks":600,"clk_tck":100}`)
	write("go-relay", "wrk.json", `{"requests":75000,"duration_us":5000000}`)
	write("go-relay", "cpuwrk.json", `{"ticks":450,"clk_tck":100}`)
	write("haproxy-tcp", "wrk.json", `{"requests":60000,"duration_us":5000000}`)
	o, err := build(dir)
	if err != nil {
		t.Fatal(err)
	}
	var rps, cpu *figure
	for _, f := range o.Figures {
		switch f.Key {
		case "wrk_rps":
			rps = f
		case "wrk_cpu_us_per_req":
			cpu = f
		}
	}
	if cpu == nil || rps == nil {
		t.Fatal("no wrk_rps or wrk_cpu_us_per_req figure")
	}
	if v := cpu.Values["meshproxy"]; v == nil || *v != 120 {
		t.Errorf("meshproxy CPU per request %v; want 120 µs", v)
	}
	if v := cpu.Values["go-relay"]; v == nil || *v != 60 {
		t.Errorf("go-relay CPU per request %v; want 60 µs", v)
	}
	if v := cpu.Values["haproxy-tcp"]; v != nil {
		t.Errorf("haproxy-tcp CPU per request %v without cpuwrk.json; want none (n/a), never 0", *v)
	}
	if v := rps.VsPeer["go-relay/haproxy-tcp"]; v == nil || *v != 1.25 {
		t.Errorf("go-relay/haproxy-tcp req/s %v; want 1.25", v)
	}
	if v := rps.VsPeer["meshproxy/go-relay"]; v == nil || *v != float64(50000)/75000 {
		t.Errorf("meshproxy/go-relay req/s %v; want %v", v, float64(50000)/75000)
	}
}
