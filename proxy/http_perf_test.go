package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkHTTPIdleConnMemory holds idle HTTP/1.1 client connections
// through the HTTP-aware outbound proxy, each after one request, and
// reports the heap and stack they keep in use (bytes/conn) and the
// goroutines each costs (goroutines/conn). The client side of every
// connection is a bare socket, so nearly all of it is the proxy's. It
// fails when an idle connection costs more than one goroutine or holds a
// request buffer (TestH1IdleConnectionsHoldNoBuffer checks the same in
// every test run). The timer runs: ns/op is the time to open, use and
// measure n connections, which keeps b.N small.
func BenchmarkHTTPIdleConnMemory(b *testing.B) {
	const n = 400
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	bs := startBackends(b, hello, 0, "127.0.0.1")
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{Balancer: nil}}, nil, nil)
	d := newProxyDialer(b, srv, bs[0].addr)
	req := []byte("GET / HTTP/1.1\r\nHost: " + bs[0].addr.String() + "\r\n\r\n")
	open := func() net.Conn {
		c, err := d.dial(b.Context(), "tcp", "")
		if err != nil {
			b.Fatal(err)
		}
		if err := oneRequest(c, req); err != nil {
			b.Fatal(err)
		}
		return c
	}
	open().Close() // warm the upstream pool
	for b.Loop() {
		measure := func() (heap, stack uint64, goroutines int) {
			runtime.GC()
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
		}
		heap0, stack0, g0 := measure()
		conns := make([]net.Conn, 0, n)
		for range n {
			conns = append(conns, open())
		}
		time.Sleep(50 * time.Millisecond) // let the proxy's goroutines settle
		heap1, stack1, g1 := measure()
		heap, stack := int64(heap1)-int64(heap0), int64(stack1)-int64(stack0)
		b.ReportMetric(float64(heap+stack)/n, "bytes/conn")
		b.ReportMetric(float64(heap)/n, "heap-bytes/conn")
		b.ReportMetric(float64(stack)/n, "stack-bytes/conn")
		b.ReportMetric(float64(g1-g0)/n, "goroutines/conn")
		if per := float64(g1-g0) / n; per > 1.01 {
			b.Errorf("%.2f goroutines per idle connection; want at most 1", per)
		}
		if held := h1Held.Load(); held != 0 {
			b.Errorf("%d request buffers held by %d idle connections; want 0", held, n)
		}
		for _, c := range conns {
			c.Close()
		}
	}
	srv.closeIdleHTTP()
}

// oneRequest writes req on c and reads a small whole response (one with
// a body ending "hello"), without a bufio.Reader of its own.
func oneRequest(c net.Conn, req []byte) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var buf [1024]byte
	got := 0
	for !bytes.HasSuffix(buf[:got], []byte("hello")) {
		if got == len(buf) {
			return fmt.Errorf("response longer than %d bytes: %q", len(buf), buf[:got])
		}
		m, err := c.Read(buf[got:])
		got += m
		if err != nil {
			return fmt.Errorf("reading the response (%q): %w", buf[:got], err)
		}
	}
	if !bytes.HasPrefix(buf[:got], []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("response %q, want 200", buf[:got])
	}
	return nil
}

// BenchmarkHTTPTwoHop measures the bench's HTTP shape in process: 32
// keep-alive clients send small requests, addressed to an IP literal as
// wrk does, through an outbound proxy and an inbound proxy to the app.
// "plain" is the pair without the mesh (pooled HTTP/1.1 between them),
// "mtls" with it (HTTP/1.1 over pooled mutual TLS). dials/req counts the
// connections the inbound proxy accepted per request: pooling works when
// it is near 0.
func BenchmarkHTTPTwoHop(b *testing.B) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	run := func(b *testing.B, c *http.Client, authority string, accepted func() int64) {
		b.SetParallelism(16) // 16 x GOMAXPROCS clients
		a0 := accepted()
		cpu0 := cpuTime(b)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodGet, "http://"+authority+"/", nil)
				if !benchGet(b, c, req) {
					return
				}
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		b.ReportMetric(float64(accepted()-a0)/float64(b.N), "dials/req")
		b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/req")
	}
	b.Run("direct", func(b *testing.B) {
		bs := startBackends(b, hello, 0, "127.0.0.1")
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		defer tr.CloseIdleConnections()
		run(b, &http.Client{Transport: tr}, bs[0].addr.String(), func() int64 { return 0 })
	})
	b.Run("plain", func(b *testing.B) {
		bs := startBackends(b, hello, 0, "127.0.0.1")
		app := bs[0].addr
		// The inbound proxy listens on 127.0.0.2 at the app's port, so
		// that the original destination it sees maps to the app.
		inAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), app.Port())
		ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(inAddr))
		if err != nil {
			b.Skipf("listening on %s: %v", inAddr, err)
		}
		in := NewServer(Inbound, Config{OpaquePorts: noOpaque}, nil, nil)
		var accepted atomic.Int64
		var wg sync.WaitGroup
		b.Cleanup(func() {
			ln.Close()
			in.Shutdown(context.Background())
			wg.Wait()
		})
		wg.Go(func() {
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					return
				}
				accepted.Add(1)
				wg.Go(func() { in.Handle(context.Background(), c, inAddr) })
			}
		})
		out := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
		d := newProxyDialer(b, out, inAddr)
		c := d.client()
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
		run(b, c, inAddr.String(), accepted.Load)
		out.closeIdleHTTP()
	})
	b.Run("mtls", func(b *testing.B) {
		e, d, _ := meshHTTPEnv(b, hello)
		c := d.client()
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
		run(b, c, d.orig.String(), func() int64 {
			return int64(testutil.ToFloat64(e.inM.open.WithLabelValues("inbound", TLSTrue, clientID.String(), "")))
		})
		e.out.closeIdleHTTP()
	})
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
