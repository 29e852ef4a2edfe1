// Command loadgen is an open-loop HTTP/1.1 load generator: it schedules
// requests at a fixed rate, whatever the responses do, over a fixed number
// of keep-alive connections, and measures each request's latency from the
// time it was scheduled to be sent (not from when a connection became free),
// so a stall shows up in the percentiles instead of silently lowering the
// rate (no coordinated omission).
//
//	loadgen -addr 198.18.0.2:8080 -rate 1000 -duration 5s -conns 32
//
// A warm-up at the same rate (-warmup, not recorded) comes first, so the
// measured period sees the steady state: connection pools behind the
// address (a proxy's upstream connections, and their TLS handshakes) are
// filled by then, for every setup alike.
//
// It prints one JSON object: the rate asked and achieved, counts, errors
// and the latency summary with a percentile curve for plots. Everything is
// bounded: scheduling stops after -duration, and requests still queued or
// in flight -grace later are counted as unfinished.
//
// loadgen keeps its own part of the latency small: a scheduler thread
// sleeps with nanosleep at 1 ns timer slack and writes each request
// itself on a free connection (free ones are taken in the order they
// were freed, so all carry requests); one goroutine per connection
// reads the responses; it runs with GOGC 2000. So that a tail can be
// told apart from loadgen's own noise, the object also has (measured
// period only): "late", how late the scheduler sent each request (its
// thread woke late: the machine was busy), "dispatch", how long each
// request waited in loadgen before it was written (lateness, or no free
// connection), "service", the latency from the write on (a diagnostic:
// it hides stalls), "cpu_pressure_pct", the share of the time some task
// on the machine waited for a CPU, and "gc_cycles", loadgen's own garbage collections
// (normally none). With -scrape URL (a Prometheus text endpoint,
// e.g. the client-side proxy's admin /metrics) it reads the URL shortly
// before the measured period (-scrape-lead earlier, still in the
// warm-up, so the read disturbs nothing measured and dials in that lead
// count as measured: an over-count, never an under-count) and right
// after it, and prints the change of every series whose name starts
// with one of -scrape-prefix ("scrape_delta"; by default the pool's
// counters, requests and connections).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"meshproxy/scripts/bench/benchhttp"
	"meshproxy/scripts/bench/hist"
)

// result is what loadgen prints.
type result struct {
	Addr         string            `json:"addr"`
	TargetRate   float64           `json:"target_rate"`
	DurationS    float64           `json:"duration_s"`
	Conns        int               `json:"conns"`
	Scheduled    int               `json:"scheduled"`
	OK           int               `json:"ok"`
	Errors       int               `json:"errors"`
	Unfinished   int               `json:"unfinished"`
	AchievedRate float64           `json:"achieved_rate"`
	FirstError   string            `json:"first_error,omitempty"`
	Latency      benchhttp.Latency `json:"latency"`
	// Late is how late the scheduler sent the measured requests;
	// Dispatch how long they waited in loadgen before being written.
	Late     benchhttp.Latency `json:"late"`
	Dispatch benchhttp.Latency `json:"dispatch"`
	// Service is the measured requests' latency from when they were
	// written (without Dispatch): a diagnostic, not the figure (it
	// hides a stall that kept requests from being sent).
	Service benchhttp.Latency `json:"service"`
	// GCCycles counts loadgen's own garbage collections in the
	// measured period.
	GCCycles uint64 `json:"gc_cycles"`
	// CPUPressure is the share of the measured period (percent) in
	// which some task on the machine waited for a CPU
	// (/proc/pressure/cpu, "some"; the benchmark's own processes
	// included); -1 when the kernel does not say.
	CPUPressure float64 `json:"cpu_pressure_pct"`
	// ScrapeDelta is each scraped series' change over the measured
	// period (-scrape); ScrapeError says why it is missing.
	ScrapeDelta map[string]float64 `json:"scrape_delta,omitempty"`
	ScrapeError string             `json:"scrape_error,omitempty"`
}

func main() {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	addr := fs.String("addr", "", "host:port to send requests to (required)")
	host := fs.String("host", "bench", "Host header")
	path := fs.String("path", "/", "request path")
	rate := fs.Float64("rate", 1000, "requests per second")
	duration := fs.Duration("duration", 5*time.Second, "how long to send")
	conns := fs.Int("conns", 32, "keep-alive connections to spread the requests over")
	timeout := fs.Duration("timeout", 2*time.Second, "per-request timeout (from when it is sent)")
	grace := fs.Duration("grace", 5*time.Second, "after the last send, how long to wait for the rest")
	warmup := fs.Duration("warmup", time.Second, "send at the same rate this long first, without recording")
	scrape := fs.String("scrape", "", "Prometheus text URL to read before and after the measured period (e.g. http://127.0.0.1:4191/metrics)")
	scrapePrefix := fs.String("scrape-prefix", "meshproxy_pool_,meshproxy_requests_total,meshproxy_tcp_open_total", "report the change of the scraped series whose name starts with one of these (comma-separated)")
	scrapeLead := fs.Duration("scrape-lead", 50*time.Millisecond, "read -scrape this long before the measured period starts (within the warm-up)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *addr == "" || *rate <= 0 || *duration <= 0 || *conns <= 0 || *warmup < 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -addr is required, -rate, -duration and -conns must be positive, -warmup must not be negative")
		os.Exit(2)
	}
	// loadgen must not be the noise it measures: a run allocates a few
	// MB (response parsing), which at the default GOGC means a garbage
	// collection or two inside the measured period; with this, none.
	debug.SetGCPercent(2000)
	sc := scraper{url: *scrape, prefix: *scrapePrefix, lead: *scrapeLead}
	r, err := run(*addr, *host, *path, *rate, *duration, *warmup, *conns, *timeout, *grace, &sc)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

// job is one scheduled request handed to a connection's reader: when it
// was due, and the error of writing it (the reader then counts it and
// reconnects instead of reading).
type job struct {
	at, sent time.Time
	err      error
}

// lgConn is one keep-alive connection and its reader goroutine's inbox
// (one request in flight at a time, so it never holds more than one).
type lgConn struct {
	c    *benchhttp.Conn
	jobs chan job
}

// dispatcher hands scheduled requests to free connections. The
// scheduler thread writes a request itself when a connection is free (no
// goroutine wake-up between the tick and the write); otherwise the
// request waits in the backlog, and the reader that frees a connection
// writes the next one at once. Free connections are taken in the order
// they were freed (a queue, not a stack), so every connection carries
// requests all along: a connection left unused for long could look idle
// to a proxy (one that waits for a client's first bytes only so long
// before forwarding the connection as opaque TCP would do that to a
// connection whose first request came late).
type dispatcher struct {
	mu              sync.Mutex
	free            []*lgConn // a ring of nfree connections from freeHead
	freeHead, nfree int
	backlog         []time.Time // due times, oldest first
	head            int

	recordFrom time.Time
	timeout    time.Duration
	dispatch   [2]hist.Histogram // [0] scheduler thread, [1] readers (under mu)
}

// submit sends the request due at at on a free connection, or queues it.
func (d *dispatcher) submit(at time.Time) {
	d.mu.Lock()
	if d.nfree == 0 {
		d.backlog = append(d.backlog, at)
		d.mu.Unlock()
		return
	}
	c := d.free[d.freeHead]
	d.freeHead = (d.freeHead + 1) % len(d.free)
	d.nfree--
	d.mu.Unlock()
	d.send(c, at, 0)
}

// send writes the request due at at on c and hands it to c's reader.
func (d *dispatcher) send(c *lgConn, at time.Time, which int) {
	now := time.Now()
	if !at.Before(d.recordFrom) {
		if which == 0 {
			d.dispatch[0].Record(int64(now.Sub(at))) // only the scheduler thread
		} else {
			d.mu.Lock()
			d.dispatch[1].Record(int64(now.Sub(at)))
			d.mu.Unlock()
		}
	}
	err := errBroken
	if c.c != nil {
		err = c.c.Send(now.Add(d.timeout))
	}
	c.jobs <- job{at: at, sent: now, err: err}
}

// next returns the oldest queued request for the free connection c, or
// parks c as free.
func (d *dispatcher) next(c *lgConn) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.head < len(d.backlog) {
		at := d.backlog[d.head]
		d.head++
		if d.head == len(d.backlog) {
			d.backlog, d.head = d.backlog[:0], 0
		}
		return at, true
	}
	d.free[(d.freeHead+d.nfree)%len(d.free)] = c
	d.nfree++
	return time.Time{}, false
}

func run(addr, host, path string, rate float64, duration, warmup time.Duration, nconns int, timeout, grace time.Duration, sc *scraper) (*result, error) {
	// Connect everything first: the measured period has no handshakes.
	conns := make([]*lgConn, nconns)
	for i := range conns {
		c, err := benchhttp.Dial(addr, host, path, false, timeout)
		if err != nil {
			for _, c := range conns[:i] {
				c.c.Close()
			}
			return nil, err
		}
		conns[i] = &lgConn{c: c, jobs: make(chan job, 1)}
	}
	interval := time.Duration(float64(time.Second) / rate)
	n := int(duration / interval)
	w := int(warmup / interval)
	// recordFrom is set before the first request is submitted, so every
	// reader sees it: requests due before it are the warm-up.
	first := time.Now().Add(10 * time.Millisecond)
	recordFrom := first.Add(time.Duration(w) * interval)
	d := &dispatcher{free: append([]*lgConn(nil), conns...), nfree: nconns, recordFrom: recordFrom, timeout: timeout}
	stop := make(chan struct{})
	r := &result{Addr: addr, TargetRate: rate, DurationS: duration.Seconds(), Conns: nconns, Scheduled: n}

	var mu sync.Mutex
	var all, late, service hist.Histogram
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h, sv hist.Histogram
			ok, errs, first := 0, 0, ""
			for {
				var j job
				select {
				case <-stop:
				case j = <-c.jobs:
				}
				if j.at.IsZero() {
					break
				}
				err := j.err
				if err == nil {
					err = c.c.Receive()
				}
				measured := !j.at.Before(recordFrom)
				switch {
				case err == nil && measured:
					ok++
					done := time.Now()
					h.Record(int64(done.Sub(j.at)))
					sv.Record(int64(done.Sub(j.sent)))
				case err != nil && measured:
					errs++
					if first == "" {
						first = err.Error()
					}
				}
				if err != nil {
					// Replace a broken connection; the handshake's cost
					// lands in the next requests' latency, as it would
					// for a client.
					if c.c != nil {
						c.c.Close()
					}
					c.c, _ = benchhttp.Dial(addr, host, path, false, timeout)
				}
				if at, more := d.next(c); more {
					d.send(c, at, 1)
				}
			}
			if c.c != nil {
				c.c.Close()
			}
			mu.Lock()
			all.Merge(&h)
			service.Merge(&sv)
			r.OK += ok
			r.Errors += errs
			if r.FirstError == "" {
				r.FirstError = first
			}
			mu.Unlock()
		}()
	}

	// The scheduler runs on its own thread, sleeps with nanosleep (with
	// the least timer slack: by default the kernel may wake a thread up
	// to 50 us late) and writes each request itself when a connection is
	// free. time.Sleep would wake up to a millisecond late (the runtime's
	// poller waits in whole milliseconds), and a hand-off to a worker
	// goroutine adds a thread wake-up to every request.
	runtime.LockOSThread()
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	scrapeAt := max(0, w-int(sc.lead/interval))
	var gcBefore uint64
	var psiBefore int64
	for i := 0; i < n+w; i++ {
		at := first.Add(time.Duration(i) * interval)
		if i == scrapeAt {
			sc.start()
		}
		if i == w {
			gcBefore = gcCycles()
			psiBefore = cpuSomeMicros()
		}
		sleepUntil(at)
		if i >= w {
			late.Record(int64(time.Since(at)))
		}
		d.submit(at) // stamped with when it should have gone, even if late
	}
	// The thread stays locked: it ends with the process, its timer
	// slack with it.
	done := make(chan struct{})
	go func() {
		// Every measured request is answered, failed or abandoned.
		for {
			d.mu.Lock()
			idle := d.nfree == nconns && d.head == len(d.backlog)
			d.mu.Unlock()
			if idle {
				break
			}
			time.Sleep(time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
	}
	close(stop)
	wg.Wait() // each reader ends within one request timeout
	elapsed := time.Since(recordFrom)
	r.GCCycles = gcCycles() - gcBefore
	r.CPUPressure = -1
	if psi := cpuSomeMicros(); psi >= 0 && psiBefore >= 0 && elapsed > 0 {
		r.CPUPressure = float64(psi-psiBefore) / float64(elapsed.Microseconds()) * 100
	}
	r.ScrapeDelta, r.ScrapeError = sc.finish()
	d.dispatch[0].Merge(&d.dispatch[1])
	r.Latency = benchhttp.Summarize(&all, true)
	r.Late = benchhttp.Summarize(&late, false)
	r.Dispatch = benchhttp.Summarize(&d.dispatch[0], false)
	r.Service = benchhttp.Summarize(&service, false)
	r.Unfinished = n - r.OK - r.Errors
	r.AchievedRate = float64(r.OK) / elapsed.Seconds()
	return r, nil
}

// sleepUntil sleeps on the calling thread until t (to the kernel's timer
// precision, tens of microseconds).
func sleepUntil(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := unix.NsecToTimespec(int64(d))
		unix.Nanosleep(&ts, nil)
	}
}

var errBroken = fmt.Errorf("no connection (reconnecting failed)")

// gcCycles returns how many garbage collections this process has done
// (runtime/metrics: no stop-the-world, unlike ReadMemStats).
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// cpuSomeMicros returns the kernel's total of microseconds in which some
// task waited for a CPU (/proc/pressure/cpu), or -1.
func cpuSomeMicros() int64 {
	data, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(data), "\n")
	if !strings.HasPrefix(line, "some ") {
		return -1
	}
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "total="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// scraper reads a Prometheus text endpoint before and after the
// measured period.
type scraper struct {
	url, prefix string
	lead        time.Duration
	before      chan scraped
}

type scraped struct {
	series map[string]float64
	err    error
}

// start reads the URL in the background (the scheduler must not wait).
func (s *scraper) start() {
	if s.url == "" {
		return
	}
	s.before = make(chan scraped, 1)
	go func() {
		m, err := scrapeOnce(s.url, s.prefix)
		s.before <- scraped{m, err}
	}()
}

// finish reads the URL again and returns each series' change.
func (s *scraper) finish() (map[string]float64, string) {
	if s.before == nil {
		return nil, ""
	}
	b := <-s.before
	if b.err != nil {
		return nil, b.err.Error()
	}
	a, err := scrapeOnce(s.url, s.prefix)
	if err != nil {
		return nil, err.Error()
	}
	delta := map[string]float64{}
	for k, v := range a {
		delta[k] = v - b.series[k]
	}
	return delta, ""
}

// scrapeOnce returns the samples of the series whose name starts with
// one of the comma-separated prefixes, keyed by the series (name and
// labels).
func scrapeOnce(url, prefix string) (map[string]float64, error) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping %s: status %s", url, resp.Status)
	}
	m := map[string]float64{}
	prefixes := strings.Split(prefix, ",")
	for _, line := range strings.Split(string(body), "\n") {
		if !slices.ContainsFunc(prefixes, func(p string) bool { return p != "" && strings.HasPrefix(line, p) }) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, nil
}
