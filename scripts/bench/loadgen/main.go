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
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
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
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *addr == "" || *rate <= 0 || *duration <= 0 || *conns <= 0 || *warmup < 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -addr is required, -rate, -duration and -conns must be positive, -warmup must not be negative")
		os.Exit(2)
	}
	r, err := run(*addr, *host, *path, *rate, *duration, *warmup, *conns, *timeout, *grace)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

func run(addr, host, path string, rate float64, duration, warmup time.Duration, nconns int, timeout, grace time.Duration) (*result, error) {
	// Connect everything first: the measured period has no handshakes.
	conns := make([]*benchhttp.Conn, nconns)
	for i := range conns {
		c, err := benchhttp.Dial(addr, host, path, false, timeout)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, err
		}
		conns[i] = c
	}
	interval := time.Duration(float64(time.Second) / rate)
	n := int(duration / interval)
	w := int(warmup / interval)
	queue := make(chan time.Time, n+w) // never blocks the scheduler
	// recordFrom is written before the first send on queue, so every
	// worker sees it: requests scheduled before it are the warm-up.
	var recordFrom time.Time
	stop := make(chan struct{})
	r := &result{Addr: addr, TargetRate: rate, DurationS: duration.Seconds(), Conns: nconns, Scheduled: n}

	var mu sync.Mutex
	var all hist.Histogram
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func(c *benchhttp.Conn) {
			defer wg.Done()
			var h hist.Histogram
			ok, errs, first := 0, 0, ""
			for {
				var at time.Time
				select {
				case <-stop:
				case t, more := <-queue:
					if more {
						at = t
					}
				}
				if at.IsZero() {
					break
				}
				err := errBroken
				if c != nil {
					err = c.Get(time.Now().Add(timeout))
				}
				measured := !at.Before(recordFrom)
				if err == nil {
					if measured {
						ok++
						h.Record(int64(time.Since(at)))
					}
					continue
				}
				if measured {
					errs++
					if first == "" {
						first = err.Error()
					}
				}
				// Replace a broken connection; the handshake's cost lands
				// in the next requests' latency, as it would for a client.
				if c != nil {
					c.Close()
				}
				c, _ = benchhttp.Dial(addr, host, path, false, timeout)
			}
			if c != nil {
				c.Close()
			}
			mu.Lock()
			all.Merge(&h)
			r.OK += ok
			r.Errors += errs
			if r.FirstError == "" {
				r.FirstError = first
			}
			mu.Unlock()
		}(conns[i])
	}

	// The scheduler runs on its own thread and sleeps with nanosleep:
	// time.Sleep wakes up to a millisecond late (the runtime's poller
	// waits in whole milliseconds), which would add a sawtooth of up to
	// 1 ms to every latency.
	runtime.LockOSThread()
	first := time.Now()
	recordFrom = first.Add(time.Duration(w) * interval)
	start := recordFrom
	for i := 0; i < n+w; i++ {
		at := first.Add(time.Duration(i) * interval)
		sleepUntil(at)
		queue <- at // stamped with when it should have gone, even if late
	}
	close(queue)
	runtime.UnlockOSThread()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		close(stop)
		<-done // each worker ends within one request timeout
	}
	elapsed := time.Since(start)
	r.Unfinished = n - r.OK - r.Errors
	r.AchievedRate = float64(r.OK) / elapsed.Seconds()
	r.Latency = benchhttp.Summarize(&all, true)
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
