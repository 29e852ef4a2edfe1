package main

import (
	"fmt"
	"strings"
)

// markdown renders the page written to docs/bench.md.
func markdown(o *output) string {
	var b strings.Builder
	st := o.Settings
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# meshproxy benchmarks\n\n")
	p("Written by `make bench` (scripts/bench.sh) on %s: %s, %s, %d cores. ", o.Date, o.Kernel, o.CPU, o.Cores)
	p("All setups ran one after another in the same run on the same machine; numbers move by several %% between runs on this shared box, so read ratios, not digits.\n\n")
	p("Two network namespaces (client 198.18.0.1, server 198.18.0.2, one veth). Every proxied setup is a pair with the same two-hop shape: ")
	p("a proxy in the client namespace, one in the server namespace, the app on 127.0.0.1 behind it. ")
	procs := st["procs"]
	if procs == nil {
		procs = 2 // results from before the PROCS setting
	}
	p("meshproxy (%v) captures with %s rules and runs with GOMAXPROCS=%v; HAProxy %v runs `nbthread %v`; stunnel %v uses a thread per connection. ", st["meshproxy_version"], st["mode"], procs, st["haproxy_version"], procs, st["stunnel_version"])
	p("mTLS and stunnel: TLS 1.3, both sides present ECDSA P-256 certificates from the same `meshproxy ca` CA.\n\n")
	switch o.MeshproxyHTTP {
	case "http-aware":
		p("**HTTP through meshproxy took its HTTP-aware path** (the client-side proxy counted the requests in `meshproxy_requests_total`): ")
		p("it parses each request and sends it over pooled upstream connections (plaintext: HTTP/1.1 to the server pod; mTLS: HTTP/1.1 over pooled mTLS connections to the server pod's proxy, one request at a time each), as the HAProxy HTTP pair parses each request and reuses server connections. ")
		p("The HAProxy TCP, stunnel and Go relay pairs forward the bytes of each client connection on a connection of its own.\n\n")
	case "opaque":
		p("**HTTP through meshproxy was forwarded as opaque TCP** (its client-side proxy counted no HTTP requests): the meshproxy HTTP figures are TCP forwarding of HTTP/1.1 bytes, like the HAProxy TCP pair; the HAProxy HTTP pair parses every request.\n\n")
	default:
		p("How meshproxy carried the HTTP runs was not recorded (%q).\n\n", o.MeshproxyHTTP)
	}

	p("| figure | unit |")
	for _, s := range o.Setups {
		p(" %s |", s.Label)
	}
	p("\n|---|---|")
	for range o.Setups {
		p("---:|")
	}
	p("\n")
	for _, f := range o.Figures {
		arrow := "↑"
		if f.Better == "lower" {
			arrow = "↓"
		}
		p("| %s %s | %s |", f.Label, arrow, f.Unit)
		for _, s := range o.Setups {
			p(" %s |", format(f.Values[s.Key]))
		}
		p("\n")
	}
	p("\n↑ higher is better, ↓ lower is better; n/a: does not apply (no proxy, or iperf3 through an HTTP proxy).\n\n")

	p("## Ratios\n\nEach cell is the first setup's figure divided by the second's (for ↓ figures, below 1 means meshproxy does better).\n\n")
	p("| figure |")
	for _, c := range comparisons {
		p(" %s |", c.Key)
	}
	p("\n|---|")
	for range comparisons {
		p("---:|")
	}
	p("\n")
	for _, f := range o.Figures {
		arrow := "↑"
		if f.Better == "lower" {
			arrow = "↓"
		}
		p("| %s %s |", f.Label, arrow)
		for _, c := range comparisons {
			r, ok := f.VsPeer[c.Key]
			if !ok {
				p(" |")
				continue
			}
			p(" %s |", formatRatio(r))
		}
		p("\n")
	}

	p("\n## How each figure is measured\n\n")
	p("- **iperf3**: `iperf3 -c ... -t %v -P 1|8` from the client namespace, receiver throughput.\n", st["iperf_seconds"])
	p("- **wrk**: `wrk -c %v -t 2 -d %vs --latency` (after a 1 s warm-up) against a small static response (13 bytes) from scripts/bench/httpserver; HTTP/1.1 keep-alive. wrk is closed-loop: its latencies hide queueing.", st["concurrency"], st["load_seconds"])
	if n := wrkRoundsRun(o); n > 1 {
		p(" wrk runs %d times per setup, in the fixed-rate rounds below (interleaved across the setups, the pair started afresh each round; the fixed-rate run first, then wrk), and requests/s, each wrk latency percentile and the CPU per request are the medians over the rounds: one setup's requests/s moves a lot between back-to-back runs on this shared box, so a single run would decide a ratio by luck. The notes give every round's requests/s.", n)
	}
	p("\n")
	rounds := st["rate_rounds"]
	if rounds == nil {
		rounds = 1
	}
	p("- **fixed rate**: scripts/bench/loadgen sends %v req/s open-loop for %vs over %v keep-alive connections, after a 1 s warm-up at the same rate that is not recorded (so a proxy's upstream pools, and their TLS handshakes, are filled for every setup alike), and measures each request from the time it was scheduled, so stalls count (no coordinated omission). Percentiles from a log-linear histogram (within 0.8%%). %v rounds per setup, interleaved across the setups (each round starts the pair afresh, and starts at the next setup), after the other figures; each figure (and each point of the plot) is the median over the rounds, so one round disturbed by something else on the machine moves nothing; the notes give loadgen's own lateness and the CPU pressure per setup, to tell a setup's tail from the machine's. Plot: [bench-latency.svg](bench-latency.svg).\n", st["rate"], st["load_seconds"], st["concurrency"], rounds)
	p("- **new connections/s**: scripts/bench/connrate, %v workers for %vs, each connect + one request with `Connection: close` + close (so every hop connects upstream).\n", st["connrate_workers"], st["load_seconds"])
	p("- **RSS**: VmRSS from /proc/PID/status, of each proxy 1 s after it was ready (idle), and with %v idle keep-alive connections held open for %vs by scripts/bench/holdconns (each made one request first so every hop is connected). A process may open at most 20,000 files here and a proxy holds two per connection, hence %v. Per connection = (loaded − idle) / connections held.\n", st["hold_conns"], st["hold_seconds"], st["hold_conns"])
	p("  The connections are HTTP keep-alive connections to the HTTP port, so a proxy that pools upstream HTTP connections (HAProxy HTTP; meshproxy when HTTP-aware) holds %v client connections on its client side but only a few upstream, and its server side sees only those few: its server-side per-connection figure is not a per-connection cost.\n", st["hold_conns"])
	p("- **CPU per GB**: user+system time (/proc/PID/stat, all threads) of both proxies across the iperf3 run, divided by the GB the receiver got.\n")
	p("- **CPU per request**: user+system time of both proxies across a wrk run, divided by the requests wrk completed in it (the median over the wrk rounds): what each request costs the proxies. It is not steadier than requests/s: between the rounds of one run it moves with them (a round with fewer requests/s costs more CPU per request), hence the median.\n")
	p("- **context switches per request**: voluntary and involuntary context switches of every thread of both proxies across a wrk run (/proc/PID/task/*/status: live threads only, so n/a for stunnel, whose thread per connection ends with the connection and takes its count along), divided by the requests wrk completed (the median over the rounds): how often the proxies gave up or lost a CPU per request. A Go proxy's runtime adds switches of its own (threads parked and woken, processors handed between threads) to those of waiting for the network.\n")
	p("- **Go relay pair**: scripts/bench/gorelay, a goroutine per direction moving bytes with plain reads and writes (no parsing, TLS, metrics or pooling), GOMAXPROCS as meshproxy: the simplest proxy on Go's runtime, a baseline for what the runtime costs on this machine apart from what meshproxy does.\n")
	if len(o.Notes) > 0 {
		p("\n## Notes from this run\n\n")
		for _, n := range o.Notes {
			p("- %s\n", n)
		}
	}
	p("\nRaw figures, ratios against direct and against the peers: [bench.json](bench.json). Run took %vs.\n", st["elapsed_s"])
	return b.String()
}

// format prints a figure with three significant digits or so.
func format(v *float64) string {
	if v == nil {
		return "n/a"
	}
	x := *v
	switch {
	case x >= 1000:
		return fmt.Sprintf("%.0f", x)
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	case x >= 1:
		return fmt.Sprintf("%.2f", x)
	default:
		return fmt.Sprintf("%.3f", x)
	}
}

func formatRatio(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", *v)
}

// wrkRoundsRun is how many wrk rounds the setups had (the most of any
// setup; 1 for an older run's single wrk.json, 0 without wrk).
func wrkRoundsRun(o *output) int {
	most := 0
	for _, c := range o.Checks {
		if n, ok := c["wrk_rounds"].(int); ok {
			most = max(most, n)
		}
	}
	return most
}
