// Package benchhttp is the HTTP/1.1 client side shared by the benchmark
// load programs under scripts/bench: one request at a time on one raw TCP
// connection (no pooling, no hidden reconnects, so the programs control
// exactly how many connections exist), and the latency summary they print
// as JSON.
package benchhttp

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"time"

	"meshproxy/scripts/bench/hist"
)

// Conn is one client connection. It is not safe for concurrent use.
type Conn struct {
	c   net.Conn
	r   *bufio.Reader
	req []byte
}

// Dial connects to addr (host:port) within timeout and prepares requests
// for path with the Host header host; close asks the server to close the
// connection after the response (Connection: close).
func Dial(addr, host, path string, close bool, timeout time.Duration) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: meshproxy-bench\r\n"
	if close {
		req += "Connection: close\r\n"
	}
	req += "\r\n"
	return &Conn{c: c, r: bufio.NewReaderSize(c, 4096), req: []byte(req)}, nil
}

// Get sends one request and reads the whole response before deadline. A
// status other than 2xx is an error.
func (c *Conn) Get(deadline time.Time) error {
	if err := c.Send(deadline); err != nil {
		return err
	}
	return c.Receive()
}

// Send writes one request; the whole exchange (Receive too) must end by
// deadline.
func (c *Conn) Send(deadline time.Time) error {
	c.c.SetDeadline(deadline)
	if _, err := c.c.Write(c.req); err != nil {
		return fmt.Errorf("writing request: %w", err)
	}
	return nil
}

// Receive reads the whole response to the request Send wrote. A status
// other than 2xx is an error.
func (c *Conn) Receive() error {
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return fmt.Errorf("reading response: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("reading response body: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("response status %s", resp.Status)
	}
	return nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Latency is a latency summary in microseconds, as the programs print it.
type Latency struct {
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p999_us"`
	Max   float64 `json:"max_us"`
	Mean  float64 `json:"mean_us"`
	Count uint64  `json:"count"`
	// Curve is the percentile curve for plots: latency at percentiles
	// spaced evenly on a log scale of 1/(1-p), from 0 to 99.99.
	Curve []Point `json:"curve,omitempty"`
}

// Point is one percentile of a latency curve.
type Point struct {
	Percentile float64 `json:"percentile"`
	Micros     float64 `json:"us"`
}

// Summarize turns h (nanoseconds) into a Latency; curve adds the plot points.
func Summarize(h *hist.Histogram, curve bool) Latency {
	us := func(p float64) float64 { return float64(h.Quantile(p)) / 1e3 }
	l := Latency{P50: us(50), P90: us(90), P99: us(99), P999: us(99.9), Max: float64(h.Max()) / 1e3, Mean: h.Mean() / 1e3, Count: h.Count()}
	if curve {
		// 1/(1-p) from 1 to 10^4 in steps of 10^0.1: p from 0 to 99.99.
		for k := 0; k <= 40; k++ {
			p := 100 * (1 - math.Pow(10, -float64(k)/10))
			l.Curve = append(l.Curve, Point{Percentile: p, Micros: us(p)})
		}
	}
	return l
}
