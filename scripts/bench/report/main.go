// Command report turns the raw results of scripts/bench.sh into the
// published benchmark: a markdown page (printed, and written to -md), the
// same figures as JSON with ratios against the direct path and against the
// peer proxies (-json), and an SVG plot of the fixed-rate latency
// percentiles per setup (-svg).
//
//	report -results DIR -md docs/bench.md -json docs/bench.json -svg docs/bench-latency.svg
//
// DIR holds settings.json and one directory per setup (direct, meshproxy,
// meshproxy-mtls, haproxy-tcp, haproxy-http, stunnel, go-relay) with the files the
// script writes: iperf1.json and iperf8.json (iperf3 -J), cpu1.json and
// cpu8.json, wrk-1.json, wrk-2.json... (wrk, one per round) with
// cpuwrk-1.json... (the proxies' CPU ticks over that wrk run),
// rate-1.json, rate-2.json... (loadgen, one per round), connrate.json,
// mem.json, http.json. The wrk and fixed-rate figures are the median over
// the rounds; an older run's single wrk.json, cpuwrk.json and rate.json
// are read too. A missing file leaves its figures empty ("n/a"), never
// zero.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// setup is one column of the table: a way for the client to reach the server.
type setup struct {
	Key   string `json:"key"`
	Label string `json:"label"`
}

var setups = []setup{
	{"direct", "direct"},
	{"meshproxy", "meshproxy plaintext"},
	{"meshproxy-mtls", "meshproxy mTLS"},
	{"haproxy-tcp", "HAProxy TCP pair"},
	{"haproxy-http", "HAProxy HTTP pair"},
	{"stunnel", "stunnel pair"},
	{"go-relay", "Go relay pair"},
}

// comparison is a ratio column: A's value divided by B's.
type comparison struct {
	Key  string `json:"key"`
	A, B string
	// HTTPOnly limits the comparison to the HTTP figures.
	HTTPOnly bool
}

var comparisons = []comparison{
	{Key: "meshproxy/direct", A: "meshproxy", B: "direct"},
	{Key: "meshproxy/haproxy-tcp", A: "meshproxy", B: "haproxy-tcp"},
	{Key: "meshproxy/haproxy-http", A: "meshproxy", B: "haproxy-http", HTTPOnly: true},
	{Key: "meshproxy-mtls/direct", A: "meshproxy-mtls", B: "direct"},
	{Key: "meshproxy-mtls/stunnel", A: "meshproxy-mtls", B: "stunnel"},
	// How a Go proxy doing nothing but move bytes compares with HAProxy
	// doing the same, and meshproxy against that baseline.
	{Key: "go-relay/haproxy-tcp", A: "go-relay", B: "haproxy-tcp"},
	{Key: "meshproxy/go-relay", A: "meshproxy", B: "go-relay"},
}

// figure is one row: a measured quantity for every setup.
type figure struct {
	Key    string              `json:"key"`
	Label  string              `json:"label"`
	Unit   string              `json:"unit"`
	Better string              `json:"better"` // "higher" or "lower"
	HTTP   bool                `json:"http"`
	Values map[string]*float64 `json:"values"` // nil: not measured
	// VsDirect is each setup's value divided by the direct one.
	VsDirect map[string]*float64 `json:"vs_direct,omitempty"`
	// VsPeer holds the comparisons (meshproxy/haproxy-tcp, ...).
	VsPeer map[string]*float64 `json:"vs_peer,omitempty"`
}

// output is docs/bench.json.
type output struct {
	Date     string                    `json:"date"`
	Kernel   string                    `json:"kernel"`
	CPU      string                    `json:"cpu"`
	Cores    int                       `json:"cores"`
	Settings map[string]any            `json:"settings"`
	Setups   []setup                   `json:"setups"`
	Figures  []*figure                 `json:"figures"`
	Curves   map[string][]curvePoint   `json:"fixed_rate_latency_curves"`
	Checks   map[string]map[string]any `json:"checks"`
	// MeshproxyHTTP says how meshproxy carried the HTTP runs: "http-aware"
	// (requests counted by the client proxy) or "opaque" (forwarded as TCP).
	MeshproxyHTTP string                                `json:"meshproxy_http"`
	Notes         []string                              `json:"notes"`
	Raw           map[string]map[string]json.RawMessage `json:"raw"`
}

// curvePoint is one percentile of a fixed-rate latency curve (loadgen).
type curvePoint struct {
	Percentile float64 `json:"percentile"`
	Micros     float64 `json:"us"`
}

func main() {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	results := fs.String("results", "", "directory of raw results from scripts/bench.sh (required)")
	md := fs.String("md", "", "markdown file to write (also printed)")
	js := fs.String("json", "", "JSON file to write")
	svg := fs.String("svg", "", "SVG latency plot to write")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *results == "" {
		fmt.Fprintln(os.Stderr, "report: -results DIR is required (the directory scripts/bench.sh fills)")
		os.Exit(2)
	}
	out, err := build(*results)
	if err != nil {
		fmt.Fprintf(os.Stderr, "report: %v\n", err)
		os.Exit(1)
	}
	page := markdown(out)
	fmt.Print(page)
	write := func(path string, data []byte) {
		if path == "" {
			return
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "report: %v\n", err)
			os.Exit(1)
		}
	}
	write(*md, []byte(page))
	if *js != "" {
		data, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			fmt.Fprintf(os.Stderr, "report: encoding JSON: %v\n", err)
			os.Exit(1)
		}
		write(*js, append(data, '\n'))
	}
	if *svg != "" {
		write(*svg, []byte(plot(out)))
	}
}

// Raw result shapes (only the fields used).
type iperfResult struct {
	End struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

type cpuResult struct {
	Ticks  float64 `json:"ticks"`
	ClkTck float64 `json:"clk_tck"`
	// CtxSw is the proxies' context switches (voluntary and not, all
	// threads) over the run; nil in results from before it was read.
	CtxSw *float64 `json:"ctxsw"`
}

type wrkResult struct {
	Requests   float64 `json:"requests"`
	DurationUS float64 `json:"duration_us"`
	Errors     float64 `json:"errors"`
	Non2xx     float64 `json:"non2xx"`
	P50        float64 `json:"p50_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
}

// wrkRounds folds a setup's wrk rounds into its figures.
type wrkRounds struct {
	// RPS, P50, P99 and P999 are the medians over the rounds (req/s, µs).
	RPS, P50, P99, P999 float64
	// CPUPerReq is the median over the rounds of the proxies' CPU µs
	// per request; nil when no round has a CPU reading (no proxy).
	CPUPerReq *float64
	// CtxSwPerReq is the median over the rounds of the proxies' context
	// switches per request; nil when no round has a reading.
	CtxSwPerReq *float64
	// Errors and Non2xx are summed over the rounds.
	Errors, Non2xx float64
	// PerRound holds each round's req/s, in round order.
	PerRound []float64
}

// readWrk reads a setup's wrk rounds (wrk-1.json, wrk-2.json, ... with
// cpuwrk-1.json, ... beside them; or one wrk.json and cpuwrk.json) and
// folds them: the median over the rounds of requests/s, of each latency
// percentile and of the CPU per request (each round's proxies' CPU time
// over that round's requests), so one round disturbed by something else
// on the machine does not decide the figure. n is how many rounds were
// read.
func readWrk(dir string, raw map[string]json.RawMessage, notes *[]string) (w wrkRounds, n int) {
	var p50, p99, p999, cpu, ctx []float64
	for _, name := range roundFiles(dir, "wrk") {
		var r wrkResult
		if !readJSON(dir, name, &r, raw, notes) || r.DurationUS <= 0 {
			continue
		}
		w.PerRound = append(w.PerRound, r.Requests/(r.DurationUS/1e6))
		p50 = append(p50, r.P50)
		p99 = append(p99, r.P99)
		p999 = append(p999, r.P999)
		w.Errors += r.Errors
		w.Non2xx += r.Non2xx
		var c cpuResult
		if readJSON(dir, "cpu"+name, &c, raw, notes) && c.ClkTck > 0 && r.Requests > 0 {
			cpu = append(cpu, c.Ticks/c.ClkTck/r.Requests*1e6)
			if c.CtxSw != nil {
				ctx = append(ctx, *c.CtxSw/r.Requests)
			}
		}
	}
	if len(w.PerRound) == 0 {
		return wrkRounds{}, 0
	}
	w.RPS = median(slices.Clone(w.PerRound))
	w.P50, w.P99, w.P999 = median(p50), median(p99), median(p999)
	if len(cpu) > 0 {
		w.CPUPerReq = num(median(cpu))
	}
	if len(ctx) > 0 {
		w.CtxSwPerReq = num(median(ctx))
	}
	return w, len(w.PerRound)
}

type latency struct {
	P50   float64      `json:"p50_us"`
	P99   float64      `json:"p99_us"`
	P999  float64      `json:"p999_us"`
	Max   float64      `json:"max_us"`
	Curve []curvePoint `json:"curve"`
}

type rateResult struct {
	TargetRate   float64 `json:"target_rate"`
	Scheduled    float64 `json:"scheduled"`
	OK           float64 `json:"ok"`
	Errors       float64 `json:"errors"`
	Unfinished   float64 `json:"unfinished"`
	AchievedRate float64 `json:"achieved_rate"`
	FirstError   string  `json:"first_error"`
	Latency      latency `json:"latency"`
	// Late is loadgen's own send lateness (its scheduler woke late).
	Late latency `json:"late"`
	// CPUPressure: percent of the time some task waited for a CPU (-1
	// or absent: unknown).
	CPUPressure *float64 `json:"cpu_pressure_pct"`
	// ScrapeDelta: counters of the client-side proxy over the measured
	// period (meshproxy setups).
	ScrapeDelta map[string]float64 `json:"scrape_delta"`
}

// readRates reads a setup's fixed-rate rounds (rate-1.json, rate-2.json,
// ...; or one rate.json) and folds them into one result: the median over
// the rounds of each percentile, max and curve point (so one disturbed
// round moves nothing), the lowest achieved rate, and the sums of the
// counts, errors and scraped counters. n is how many rounds were read.
func readRates(dir string, raw map[string]json.RawMessage, notes *[]string) (rateResult, int) {
	var rounds []rateResult
	for _, name := range roundFiles(dir, "rate") {
		var r rateResult
		if readJSON(dir, name, &r, raw, notes) {
			rounds = append(rounds, r)
		}
	}
	if len(rounds) == 0 {
		return rateResult{}, 0
	}
	med := func(get func(*rateResult) float64) float64 {
		v := make([]float64, len(rounds))
		for i := range rounds {
			v[i] = get(&rounds[i])
		}
		return median(v)
	}
	out := rateResult{TargetRate: rounds[0].TargetRate, AchievedRate: rounds[0].AchievedRate}
	for _, r := range rounds {
		out.Scheduled += r.Scheduled
		out.OK += r.OK
		out.Errors += r.Errors
		out.Unfinished += r.Unfinished
		out.AchievedRate = min(out.AchievedRate, r.AchievedRate)
		if out.FirstError == "" {
			out.FirstError = r.FirstError
		}
		for k, v := range r.ScrapeDelta {
			if out.ScrapeDelta == nil {
				out.ScrapeDelta = map[string]float64{}
			}
			out.ScrapeDelta[k] += v
		}
	}
	out.Latency.P50 = med(func(r *rateResult) float64 { return r.Latency.P50 })
	out.Latency.P99 = med(func(r *rateResult) float64 { return r.Latency.P99 })
	out.Latency.P999 = med(func(r *rateResult) float64 { return r.Latency.P999 })
	out.Latency.Max = med(func(r *rateResult) float64 { return r.Latency.Max })
	out.Late.P50 = med(func(r *rateResult) float64 { return r.Late.P50 })
	out.Late.P99 = med(func(r *rateResult) float64 { return r.Late.P99 })
	var psi []float64
	for _, r := range rounds {
		if r.CPUPressure != nil && *r.CPUPressure >= 0 {
			psi = append(psi, *r.CPUPressure)
		}
	}
	if len(psi) > 0 {
		out.CPUPressure = num(median(psi))
	}
	for i, pt := range rounds[0].Latency.Curve {
		v := []float64{}
		for _, r := range rounds {
			if i < len(r.Latency.Curve) {
				v = append(v, r.Latency.Curve[i].Micros)
			}
		}
		out.Latency.Curve = append(out.Latency.Curve, curvePoint{Percentile: pt.Percentile, Micros: median(v)})
	}
	return out, len(rounds)
}

// roundFiles names a setup's per-round files of one kind in round order
// (base "rate": rate-1.json, rate-2.json, ..., rate-10.json); when there
// are none, the single file of older runs (rate.json), which may be
// missing too.
func roundFiles(dir, base string) []string {
	paths, _ := filepath.Glob(filepath.Join(dir, base+"-*.json"))
	type file struct {
		name  string
		round int
	}
	var files []file
	for _, p := range paths {
		name := filepath.Base(p)
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, base+"-"), ".json"))
		if err != nil {
			continue // not a round's file
		}
		files = append(files, file{name, n})
	}
	if len(files) == 0 {
		return []string{base + ".json"}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].round < files[j].round })
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = f.name
	}
	return names
}

// median is the middle value of v (the mean of the two middle ones for
// an even count); v is reordered.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	m := len(v) / 2
	if len(v)%2 == 0 {
		return (v[m-1] + v[m]) / 2
	}
	return v[m]
}

type connrateResult struct {
	OK          float64 `json:"ok"`
	Errors      float64 `json:"errors"`
	ConnsPerSec float64 `json:"conns_per_s"`
	FirstError  string  `json:"first_error"`
}

type memResult struct {
	IdleKB   []float64 `json:"idle_kb"`
	LoadedKB []float64 `json:"loaded_kb"`
	Asked    float64   `json:"asked"`
	Held     float64   `json:"held"`
}

// readJSON decodes dir/name into v; false when the file is missing or bad
// (the reason goes to notes).
func readJSON(dir, name string, v any, raw map[string]json.RawMessage, notes *[]string) bool {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return false
	}
	if err := json.Unmarshal(data, v); err != nil {
		*notes = append(*notes, fmt.Sprintf("%s/%s: unreadable (%v)", filepath.Base(dir), name, err))
		return false
	}
	raw[strings.TrimSuffix(name, ".json")] = json.RawMessage(data)
	return true
}

func num(v float64) *float64 { return &v }

func build(dir string) (*output, error) {
	out := &output{
		Date:   time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Kernel: kernel(),
		CPU:    cpuModel(),
		Cores:  cores(),
		Setups: setups,
		Curves: map[string][]curvePoint{},
		Checks: map[string]map[string]any{},
		Raw:    map[string]map[string]json.RawMessage{},
	}
	data, err := os.ReadFile(filepath.Join(dir, "settings.json"))
	if err != nil {
		return nil, fmt.Errorf("reading the run's settings: %w (is %s a scripts/bench.sh results directory?)", err, dir)
	}
	if err := json.Unmarshal(data, &out.Settings); err != nil {
		return nil, fmt.Errorf("reading %s/settings.json: %w", dir, err)
	}
	holdN := fmt.Sprint(out.Settings["hold_conns"])
	rate := fmt.Sprint(out.Settings["rate"])
	conc := fmt.Sprint(out.Settings["concurrency"])

	figs := []*figure{
		{Key: "iperf_1_gbps", Label: "iperf3, 1 stream", Unit: "Gbit/s", Better: "higher"},
		{Key: "iperf_8_gbps", Label: "iperf3, 8 streams", Unit: "Gbit/s", Better: "higher"},
		{Key: "wrk_rps", Label: "wrk -c " + conc + " -t 2: requests/s", Unit: "req/s", Better: "higher", HTTP: true},
		{Key: "wrk_p50_ms", Label: "wrk latency p50", Unit: "ms", Better: "lower", HTTP: true},
		{Key: "wrk_p99_ms", Label: "wrk latency p99", Unit: "ms", Better: "lower", HTTP: true},
		{Key: "wrk_p999_ms", Label: "wrk latency p99.9", Unit: "ms", Better: "lower", HTTP: true},
		{Key: "wrk_cpu_us_per_req", Label: "wrk: CPU per request, both proxies", Unit: "µs", Better: "lower", HTTP: true},
		{Key: "wrk_ctxsw_per_req", Label: "wrk: context switches per request, both proxies", Unit: "per req", Better: "lower", HTTP: true},
		{Key: "rate_p50_ms", Label: "at " + rate + " req/s: p50", Unit: "ms", Better: "lower", HTTP: true},
		{Key: "rate_p99_ms", Label: "at " + rate + " req/s: p99", Unit: "ms", Better: "lower", HTTP: true},
		{Key: "rate_p999_ms", Label: "at " + rate + " req/s: p99.9", Unit: "ms", Better: "lower", HTTP: true},
		{Key: "rate_max_ms", Label: "at " + rate + " req/s: max", Unit: "ms", Better: "lower", HTTP: true},
		{Key: "conns_per_s", Label: "new connections/s (1 request each)", Unit: "conn/s", Better: "higher", HTTP: true},
		{Key: "rss_idle_client_mib", Label: "RSS idle, client-side proxy", Unit: "MiB", Better: "lower"},
		{Key: "rss_idle_server_mib", Label: "RSS idle, server-side proxy", Unit: "MiB", Better: "lower"},
		{Key: "rss_loaded_client_mib", Label: "RSS with " + holdN + " idle conns, client-side", Unit: "MiB", Better: "lower"},
		{Key: "rss_loaded_server_mib", Label: "RSS with " + holdN + " idle conns, server-side", Unit: "MiB", Better: "lower"},
		{Key: "kb_per_conn_client", Label: "memory per connection, client-side", Unit: "KiB", Better: "lower"},
		{Key: "kb_per_conn_server", Label: "memory per connection, server-side", Unit: "KiB", Better: "lower"},
		{Key: "cpu_s_per_gb_1", Label: "CPU per GB moved, both proxies, 1 stream", Unit: "CPU s/GB", Better: "lower"},
		{Key: "cpu_s_per_gb_8", Label: "CPU per GB moved, both proxies, 8 streams", Unit: "CPU s/GB", Better: "lower"},
	}
	byKey := map[string]*figure{}
	for _, f := range figs {
		f.Values = map[string]*float64{}
		byKey[f.Key] = f
	}
	set := func(fig, s string, v float64) { byKey[fig].Values[s] = num(v) }

	var lateness []string  // loadgen's own lateness per setup
	var wrkSpread []string // each setup's wrk req/s per round
	for _, s := range setups {
		sd := filepath.Join(dir, s.Key)
		if _, err := os.Stat(sd); err != nil {
			out.Notes = append(out.Notes, s.Label+": not measured in this run")
			continue
		}
		raw := map[string]json.RawMessage{}
		out.Raw[s.Key] = raw
		checks := map[string]any{}
		out.Checks[s.Key] = checks
		for _, streams := range []string{"1", "8"} {
			var ip iperfResult
			if !readJSON(sd, "iperf"+streams+".json", &ip, raw, &out.Notes) {
				continue
			}
			if ip.Error != "" {
				out.Notes = append(out.Notes, fmt.Sprintf("%s: iperf3 -P %s failed: %s", s.Label, streams, ip.Error))
				continue
			}
			set("iperf_"+streams+"_gbps", s.Key, ip.End.SumReceived.BitsPerSecond/1e9)
			var cpu cpuResult
			if readJSON(sd, "cpu"+streams+".json", &cpu, raw, &out.Notes) && cpu.ClkTck > 0 && ip.End.SumReceived.Bytes > 0 {
				set("cpu_s_per_gb_"+streams, s.Key, cpu.Ticks/cpu.ClkTck/(ip.End.SumReceived.Bytes/1e9))
			}
		}
		if w, n := readWrk(sd, raw, &out.Notes); n > 0 {
			set("wrk_rps", s.Key, w.RPS)
			set("wrk_p50_ms", s.Key, w.P50/1e3)
			set("wrk_p99_ms", s.Key, w.P99/1e3)
			set("wrk_p999_ms", s.Key, w.P999/1e3)
			if w.CPUPerReq != nil {
				set("wrk_cpu_us_per_req", s.Key, *w.CPUPerReq)
			}
			if w.CtxSwPerReq != nil {
				set("wrk_ctxsw_per_req", s.Key, *w.CtxSwPerReq)
			}
			checks["wrk_rounds"] = n
			checks["wrk_rps_per_round"] = w.PerRound
			checks["wrk_errors"] = w.Errors + w.Non2xx
			if w.Errors+w.Non2xx > 0 {
				out.Notes = append(out.Notes, fmt.Sprintf("%s: wrk saw %.0f socket errors and %.0f non-2xx responses (all rounds)", s.Label, w.Errors, w.Non2xx))
			}
			if n > 1 {
				spread := make([]string, n)
				for i, v := range w.PerRound {
					spread[i] = fmt.Sprintf("%.0f", v)
				}
				wrkSpread = append(wrkSpread, s.Label+" "+strings.Join(spread, ", "))
			}
		}
		if r, n := readRates(sd, raw, &out.Notes); n > 0 {
			set("rate_p50_ms", s.Key, r.Latency.P50/1e3)
			set("rate_p99_ms", s.Key, r.Latency.P99/1e3)
			set("rate_p999_ms", s.Key, r.Latency.P999/1e3)
			set("rate_max_ms", s.Key, r.Latency.Max/1e3)
			out.Curves[s.Key] = r.Latency.Curve
			checks["rate_rounds"] = n
			if r.Late.P99 > 0 {
				checks["rate_loadgen_late_p99_ms"] = r.Late.P99 / 1e3
				l := fmt.Sprintf("%s %.2f ms", s.Label, r.Late.P99/1e3)
				if r.CPUPressure != nil {
					checks["rate_cpu_pressure_pct"] = *r.CPUPressure
					l += fmt.Sprintf(" (CPU pressure %.0f%%)", *r.CPUPressure)
				}
				lateness = append(lateness, l)
			}
			checks["rate_achieved"] = r.AchievedRate
			checks["rate_errors"] = r.Errors + r.Unfinished
			if r.Errors+r.Unfinished > 0 {
				out.Notes = append(out.Notes, fmt.Sprintf("%s: at the fixed rate %.0f of %.0f requests failed or did not finish (first error: %s)", s.Label, r.Errors+r.Unfinished, r.Scheduled, r.FirstError))
			}
			if d, ok := r.ScrapeDelta["meshproxy_pool_dials_total"]; ok {
				checks["rate_pool_dials_measured"] = d
				if d > 0 {
					out.Notes = append(out.Notes, fmt.Sprintf("%s: the client-side proxy dialed %.0f upstream connections during the fixed-rate measured periods (all rounds)", s.Label, d))
				}
			}
		}
		var c connrateResult
		if readJSON(sd, "connrate.json", &c, raw, &out.Notes) {
			set("conns_per_s", s.Key, c.ConnsPerSec)
			checks["connrate_errors"] = c.Errors
			if c.Errors > 0 {
				out.Notes = append(out.Notes, fmt.Sprintf("%s: %.0f of %.0f new connections failed (first error: %s)", s.Label, c.Errors, c.OK+c.Errors, c.FirstError))
			}
		}
		var h struct {
			RequestsTotal float64 `json:"requests_total"`
		}
		if readJSON(sd, "http.json", &h, raw, &out.Notes) {
			mode := "opaque"
			if h.RequestsTotal > 0 {
				mode = "http-aware"
			}
			checks["http_requests_counted"] = h.RequestsTotal
			if out.MeshproxyHTTP != "" && out.MeshproxyHTTP != mode {
				mode = "mixed"
			}
			out.MeshproxyHTTP = mode
		}
		var m memResult
		if readJSON(sd, "mem.json", &m, raw, &out.Notes) && len(m.IdleKB) == 2 && len(m.LoadedKB) == 2 {
			set("rss_idle_client_mib", s.Key, m.IdleKB[0]/1024)
			set("rss_idle_server_mib", s.Key, m.IdleKB[1]/1024)
			set("rss_loaded_client_mib", s.Key, m.LoadedKB[0]/1024)
			set("rss_loaded_server_mib", s.Key, m.LoadedKB[1]/1024)
			if m.Held > 0 {
				set("kb_per_conn_client", s.Key, (m.LoadedKB[0]-m.IdleKB[0])/m.Held)
				set("kb_per_conn_server", s.Key, (m.LoadedKB[1]-m.IdleKB[1])/m.Held)
			}
			checks["held_conns"] = m.Held
			if m.Held < m.Asked {
				out.Notes = append(out.Notes, fmt.Sprintf("%s: held %.0f of %.0f idle connections (per-connection memory divides by those held)", s.Label, m.Held, m.Asked))
			}
		}
	}

	if len(wrkSpread) > 0 {
		out.Notes = append(out.Notes, "wrk requests/s in each round (in round order; the table gives the median): "+
			strings.Join(wrkSpread, "; ")+". The spread within a setup is this machine's noise: a ratio taken from single runs could move as much.")
	}
	if len(lateness) > 0 {
		out.Notes = append(out.Notes, "at the fixed rate, loadgen's own lateness p99 (how late its scheduler sent a request; median over the rounds; in brackets the share of the time some task on the machine waited for a CPU, /proc/pressure/cpu): "+
			strings.Join(lateness, ", ")+". It is part of every latency figure: loadgen shares the cores with the app and the proxies (whose work delays it too) and with anything else running on the machine; when it is near a setup's p99, that p99 is mostly waiting for a CPU.")
	}
	for _, f := range figs {
		f.VsDirect = map[string]*float64{}
		for _, s := range setups[1:] {
			f.VsDirect[s.Key] = ratio(f.Values[s.Key], f.Values["direct"])
		}
		f.VsPeer = map[string]*float64{}
		for _, c := range comparisons {
			if c.HTTPOnly && !f.HTTP {
				continue
			}
			f.VsPeer[c.Key] = ratio(f.Values[c.A], f.Values[c.B])
		}
	}
	out.Figures = figs
	return out, nil
}

func ratio(a, b *float64) *float64 {
	if a == nil || b == nil || *b == 0 {
		return nil
	}
	return num(*a / *b)
}

func kernel() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "unknown"
	}
	str := func(b [65]int8) string {
		var s []byte
		for _, c := range b {
			if c == 0 {
				break
			}
			s = append(s, byte(c))
		}
		return string(s)
	}
	return str(u.Sysname) + " " + str(u.Release) + " " + str(u.Machine)
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func cores() int { return runtime.NumCPU() }
