// Command connrate measures new connections per second: a bounded pool of
// workers each opens a connection, sends one HTTP/1.1 request with
// "Connection: close", reads the response and closes, over and over for
// -duration. Sending a request makes every hop of a proxy chain connect
// upstream (a bare connect and close may never reach the server).
//
//	connrate -addr 198.18.0.2:8080 -duration 5s -workers 8
//
// It prints one JSON object: completed connections, errors, connections per
// second and the latency of one whole connect-request-close.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"meshproxy/scripts/bench/benchhttp"
	"meshproxy/scripts/bench/hist"
)

// result is what connrate prints.
type result struct {
	Addr        string            `json:"addr"`
	Workers     int               `json:"workers"`
	DurationS   float64           `json:"duration_s"`
	OK          int               `json:"ok"`
	Errors      int               `json:"errors"`
	ConnsPerSec float64           `json:"conns_per_s"`
	FirstError  string            `json:"first_error,omitempty"`
	Latency     benchhttp.Latency `json:"latency"`
}

func main() {
	fs := flag.NewFlagSet("connrate", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	addr := fs.String("addr", "", "host:port to connect to (required)")
	duration := fs.Duration("duration", 5*time.Second, "how long to run")
	workers := fs.Int("workers", 8, "connections in progress at once")
	timeout := fs.Duration("timeout", 2*time.Second, "timeout of one connect-request-close")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *addr == "" || *duration <= 0 || *workers <= 0 {
		fmt.Fprintln(os.Stderr, "connrate: -addr is required, and -duration and -workers must be positive")
		os.Exit(2)
	}
	r := &result{Addr: *addr, Workers: *workers}
	var mu sync.Mutex
	var all hist.Histogram
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(*duration)
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h hist.Histogram
			ok, errs, first := 0, 0, ""
			for time.Now().Before(end) {
				t0 := time.Now()
				err := once(*addr, *timeout)
				if err == nil {
					ok++
					h.Record(int64(time.Since(t0)))
					continue
				}
				errs++
				if first == "" {
					first = err.Error()
				}
				time.Sleep(10 * time.Millisecond) // no hot loop on a refused port
			}
			mu.Lock()
			all.Merge(&h)
			r.OK += ok
			r.Errors += errs
			if r.FirstError == "" {
				r.FirstError = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	r.DurationS = elapsed.Seconds()
	r.ConnsPerSec = float64(r.OK) / elapsed.Seconds()
	r.Latency = benchhttp.Summarize(&all, false)
	json.NewEncoder(os.Stdout).Encode(r)
}

// once makes one connection, one request, and closes.
func once(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c, err := benchhttp.Dial(addr, "bench", "/", true, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Get(deadline)
}
