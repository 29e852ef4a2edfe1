package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// resultsDir is a results directory for build; write puts a file in a
// setup's directory ("." for the top).
func resultsDir(t *testing.T) (dir string, write func(setup, name, body string)) {
	dir = t.TempDir()
	return dir, func(setup, name, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, setup), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, setup, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// figures indexes a report's figures by key.
func figures(o *output) map[string]*figure {
	m := map[string]*figure{}
	for _, f := range o.Figures {
		m[f.Key] = f
	}
	return m
}

// TestReadWrkTakesTheMedianOfTheRounds: requests/s, each latency
// percentile and the CPU per request are the medians over the rounds, so
// one disturbed round (here the second: three times the requests on a
// quiet moment, a huge p99, hardly any CPU per request) decides nothing;
// rounds are read in round order (10 after 2).
func TestReadWrkTakesTheMedianOfTheRounds(t *testing.T) {
	dir, write := resultsDir(t)
	// 5 s rounds: 10000, 30000 and 12000 req/s; CPU 120, 20 and 130 µs
	// per request (a pooled ratio of the sums would be 64.6).
	write(".", "wrk-1.json", `{"requests":50000,"duration_us":5000000,"errors":1,"p50_us":2000,"p99_us":9000,"p999_us":20000}`)
	write(".", "cpuwrk-1.json", `{"ticks":600,"clk_tck":100,"ctxsw":40000}`)
	write(".", "wrk-2.json", `{"requests":150000,"duration_us":5000000,"non2xx":2,"p50_us":900,"p99_us":90000,"p999_us":200000}`)
	write(".", "cpuwrk-2.json", `{"ticks":300,"clk_tck":100,"ctxsw":30000}`)
	write(".", "wrk-10.json", `{"requests":60000,"duration_us":5000000,"p50_us":1800,"p99_us":8000,"p999_us":15000}`)
	write(".", "cpuwrk-10.json", `{"ticks":780,"clk_tck":100,"ctxsw":120000}`)
	var notes []string
	raw := map[string]json.RawMessage{}
	w, n := readWrk(dir, raw, &notes)
	if n != 3 || len(notes) != 0 {
		t.Fatalf("read %d rounds, notes %q; want 3, none", n, notes)
	}
	if w.RPS != 12000 {
		t.Errorf("req/s %v; want the median 12000", w.RPS)
	}
	if w.P50 != 1800 || w.P99 != 9000 || w.P999 != 20000 {
		t.Errorf("latency p50 %v p99 %v p99.9 %v; want the medians 1800, 9000, 20000", w.P50, w.P99, w.P999)
	}
	if w.CPUPerReq == nil || *w.CPUPerReq != 120 {
		t.Errorf("CPU per request %v; want the median of the rounds' 120, 20, 130: 120 µs", w.CPUPerReq)
	}
	// 0.8, 0.2 and 2 switches per request.
	if w.CtxSwPerReq == nil || *w.CtxSwPerReq != 0.8 {
		t.Errorf("context switches per request %v; want the median of the rounds' 0.8, 0.2, 2: 0.8", w.CtxSwPerReq)
	}
	if w.Errors != 1 || w.Non2xx != 2 {
		t.Errorf("errors %v, non-2xx %v; want the sums 1 and 2", w.Errors, w.Non2xx)
	}
	if fmt.Sprint(w.PerRound) != "[10000 30000 12000]" {
		t.Errorf("per round %v; want [10000 30000 12000] (round order)", w.PerRound)
	}
	if len(raw) != 6 {
		t.Errorf("raw keeps %d files; want 6", len(raw))
	}
	if _, n := readWrk(t.TempDir(), map[string]json.RawMessage{}, &notes); n != 0 {
		t.Fatalf("an empty directory gave %d rounds", n)
	}
}

// TestBuildWrkRounds: the table and the ratios take the medians of the
// rounds, the notes give every round's req/s, and a setup with rounds
// but no CPU readings (direct, no proxy) has no CPU per request (n/a),
// never 0.
func TestBuildWrkRounds(t *testing.T) {
	dir, write := resultsDir(t)
	write(".", "settings.json", `{"rate":1000,"concurrency":32,"hold_conns":9000,"rate_rounds":3}`)
	// 1 s rounds; CPU 2, 3 and 1 s: 239, 195 and 83 µs per request.
	for i, rps := range []int{8355, 15405, 12113} {
		write("meshproxy-mtls", fmt.Sprintf("wrk-%d.json", i+1), fmt.Sprintf(`{"requests":%d,"duration_us":1000000}`, rps))
		write("meshproxy-mtls", fmt.Sprintf("cpuwrk-%d.json", i+1), fmt.Sprintf(`{"ticks":%d,"clk_tck":100}`, []int{200, 300, 100}[i]))
	}
	for i, rps := range []int{24000, 20000, 31000} {
		write("direct", fmt.Sprintf("wrk-%d.json", i+1), fmt.Sprintf(`{"requests":%d,"duration_us":1000000}`, rps))
	}
	o, err := build(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := figures(o)
	if v := f["wrk_rps"].Values["meshproxy-mtls"]; v == nil || *v != 12113 {
		t.Errorf("meshproxy mTLS req/s %v; want the median 12113", v)
	}
	if v := f["wrk_rps"].VsDirect["meshproxy-mtls"]; v == nil || *v != 12113.0/24000 {
		t.Errorf("meshproxy mTLS / direct req/s %v; want the medians' ratio %v", v, 12113.0/24000)
	}
	if v := f["wrk_cpu_us_per_req"].Values["meshproxy-mtls"]; v == nil || *v != 3.0/15405*1e6 {
		t.Errorf("meshproxy mTLS CPU per request %v; want the rounds' median, %v µs", v, 3.0/15405*1e6)
	}
	if v := f["wrk_cpu_us_per_req"].Values["direct"]; v != nil {
		t.Errorf("direct CPU per request %v without cpuwrk files; want none (n/a), never 0", *v)
	}
	// cpuwrk files without a context switch count (older runs): n/a.
	if v := f["wrk_ctxsw_per_req"].Values["meshproxy-mtls"]; v != nil {
		t.Errorf("meshproxy mTLS context switches per request %v without readings; want none (n/a), never 0", *v)
	}
	if o.Checks["meshproxy-mtls"]["wrk_rounds"] != 3 {
		t.Errorf("checks %v; want wrk_rounds 3", o.Checks["meshproxy-mtls"])
	}
	want := "direct 24000, 20000, 31000; meshproxy mTLS 8355, 15405, 12113."
	found := false
	for _, n := range o.Notes {
		found = found || strings.Contains(n, want)
	}
	if !found {
		t.Errorf("notes %q; want one with %q", o.Notes, want)
	}
	if page := markdown(o); !strings.Contains(page, "wrk runs 3 times per setup") || !strings.Contains(page, want) {
		t.Errorf("the page does not say wrk runs 3 rounds, or lacks the spread:\n%s", page)
	}
}

// TestBuildCPUPerRequestAndRelayRatios: an older run's layout (one
// wrk.json and cpuwrk.json per setup) still reads: the CPU per request is
// the proxies' ticks over the wrk run divided by wrk's requests, and the
// Go relay pair is compared with the HAProxy TCP pair and with meshproxy.
func TestBuildCPUPerRequestAndRelayRatios(t *testing.T) {
	dir, write := resultsDir(t)
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
