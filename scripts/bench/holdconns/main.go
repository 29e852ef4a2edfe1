// Command holdconns opens many idle keep-alive connections and holds them,
// so a proxy's memory per connection can be read while they are open. Each
// connection makes one HTTP/1.1 request first, so every hop of a proxy
// chain has its upstream connection too, then stays idle.
//
//	holdconns -addr 127.0.0.1:28080 -n 9000 -hold 5s
//
// When all are open it prints "ready N" on a line of its own (the caller
// reads its memory figures then), holds them for -hold, closes them, and
// prints one JSON object. A process may open at most `ulimit -n` files:
// keep -n below that, and below half of it for a proxy that holds both
// sides of each connection.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"meshproxy/scripts/bench/benchhttp"
)

// result is what holdconns prints at the end.
type result struct {
	Addr       string  `json:"addr"`
	Asked      int     `json:"asked"`
	Held       int     `json:"held"`
	Errors     int     `json:"errors"`
	OpenS      float64 `json:"open_s"`
	HoldS      float64 `json:"hold_s"`
	FirstError string  `json:"first_error,omitempty"`
}

func main() {
	fs := flag.NewFlagSet("holdconns", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	addr := fs.String("addr", "", "host:port to connect to (required)")
	n := fs.Int("n", 9000, "connections to open")
	hold := fs.Duration("hold", 5*time.Second, "how long to hold them once all are open")
	parallel := fs.Int("parallel", 64, "connections being opened at once")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout to open one connection and get its response")
	openFor := fs.Duration("open-timeout", 60*time.Second, "give up opening more after this long")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *addr == "" || *n <= 0 || *parallel <= 0 {
		fmt.Fprintln(os.Stderr, "holdconns: -addr is required, and -n and -parallel must be positive")
		os.Exit(2)
	}
	r := &result{Addr: *addr, Asked: *n}
	conns := make([]*benchhttp.Conn, 0, *n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{})
	start := time.Now()
	giveUp := start.Add(*openFor)
	for range *parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				c, err := benchhttp.Dial(*addr, "bench", "/", false, *timeout)
				if err == nil {
					if err = c.Get(time.Now().Add(*timeout)); err != nil {
						c.Close()
					}
				}
				mu.Lock()
				if err != nil {
					r.Errors++
					if r.FirstError == "" {
						r.FirstError = err.Error()
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < *n && time.Now().Before(giveUp); i++ {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	r.OpenS = time.Since(start).Seconds()
	r.Held = len(conns)
	fmt.Printf("ready %d\n", r.Held)
	os.Stdout.Sync()
	t0 := time.Now()
	time.Sleep(*hold)
	r.HoldS = time.Since(t0).Seconds()
	for _, c := range conns {
		c.Close()
	}
	json.NewEncoder(os.Stdout).Encode(r)
}
