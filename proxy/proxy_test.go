package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshproxy/listener"
)

// noOpaque disables opaque ports so detection runs on the random test ports.
var noOpaque = []uint16{}

func newTestServer(t testing.TB, dir Direction, cfg Config) (*Server, *Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return NewServer(dir, cfg, m, nil), m, reg
}

func TestRoundTrip(t *testing.T) {
	for _, size := range []int{11, 64 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 50 * time.Millisecond})
			h := handleOne(t, srv, upstream(t, echo))
			want := sha256.New()
			errc := make(chan error, 1)
			go func() {
				// Write pseudo-random data in 1 MiB pieces, then half-close.
				buf := make([]byte, min(size, 1<<20))
				rand.Read(buf)
				left := size
				for left > 0 {
					n := min(left, len(buf))
					if _, err := h.client.Write(buf[:n]); err != nil {
						errc <- err
						return
					}
					want.Write(buf[:n])
					left -= n
				}
				errc <- h.client.CloseWrite()
			}()
			got := sha256.New()
			h.client.SetReadDeadline(time.Now().Add(60 * time.Second))
			n, err := io.Copy(got, h.client)
			if err != nil {
				t.Fatalf("reading echo: %v after %d bytes", err, n)
			}
			if err := <-errc; err != nil {
				t.Fatalf("writing: %v", err)
			}
			if n != int64(size) || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
				t.Fatalf("echo = %d bytes (sha %x); want %d bytes (sha %x)", n, got.Sum(nil), size, want.Sum(nil))
			}
			h.waitDone(t)
			if o := srv.OpenConnections(); o != 0 {
				t.Errorf("OpenConnections = %d; want 0", o)
			}
		})
	}
}

// TestHalfClose: the server answers only after reading EOF, so the
// client's CloseWrite must travel while the other direction stays open.
func TestHalfClose(t *testing.T) {
	up := upstream(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "read %d bytes", n)
	})
	srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque})
	h := handleOne(t, srv, up)
	h.client.Write([]byte("hello, half-closed world"))
	h.client.CloseWrite()
	h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(h.client)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "read 24 bytes" {
		t.Errorf("reply = %q; want %q", got, "read 24 bytes")
	}
	h.waitDone(t)
}

func banner(c *net.TCPConn) {
	c.Write([]byte("220 mail.example ESMTP\r\n"))
	io.Copy(io.Discard, c)
}

func readBanner(t *testing.T, c *net.TCPConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("banner never arrived: %v", err)
	}
	return string(buf[:n])
}

func TestServerSpeaksFirst(t *testing.T) {
	up := upstream(t, banner)
	t.Run("opaque port", func(t *testing.T) {
		srv, _, reg := newTestServer(t, Outbound, Config{OpaquePorts: []uint16{up.Port()}})
		h := handleOne(t, srv, up)
		if got := readBanner(t, h.client); got != "220 mail.example ESMTP\r\n" {
			t.Errorf("banner = %q", got)
		}
		if n := testutil.CollectAndCount(reg, "meshproxy_protocol_detect_total"); n != 0 {
			t.Errorf("detect series = %d; want 0 (opaque ports skip detection)", n)
		}
	})
	t.Run("detected port, short timeout", func(t *testing.T) {
		srv, m, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 200 * time.Millisecond})
		h := handleOne(t, srv, up)
		if got := readBanner(t, h.client); got != "220 mail.example ESMTP\r\n" {
			t.Errorf("banner = %q", got)
		}
		if got := testutil.ToFloat64(m.detect.WithLabelValues("outbound", "none")); got != 1 {
			t.Errorf("detect{none} = %v; want 1", got)
		}
	})
	// With a detect timeout far beyond the 10s the client waits, the
	// banner can only arrive because the server's first bytes end
	// detection.
	t.Run("detected port, banner ends detection", func(t *testing.T) {
		srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: time.Hour})
		h := handleOne(t, srv, up)
		if got := readBanner(t, h.client); got != "220 mail.example ESMTP\r\n" {
			t.Errorf("banner = %q", got)
		}
		// And the client can still talk afterwards.
		if _, err := h.client.Write([]byte("EHLO x\r\n")); err != nil {
			t.Fatal(err)
		}
	})
}

// TestClientFirstWithLongDetectTimeout: the client's bytes end detection
// (and the banner watch) at once; nothing waits for the timeout.
func TestClientFirstWithLongDetectTimeout(t *testing.T) {
	srv, m, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: time.Hour})
	h := handleOne(t, srv, upstream(t, echo))
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	h.client.Write([]byte(req))
	h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(req))
	if _, err := io.ReadFull(h.client, buf); err != nil || string(buf) != req {
		t.Fatalf("echo = %q, %v; want %q", buf, err, req)
	}
	if got := testutil.ToFloat64(m.detect.WithLabelValues("outbound", "http/1")); got != 1 {
		t.Errorf("detect{http/1} = %v; want 1", got)
	}
}

func TestConnectRefused(t *testing.T) {
	for _, opaque := range []bool{true, false} {
		t.Run(fmt.Sprintf("opaque=%v", opaque), func(t *testing.T) {
			dead := closedPort(t)
			cfg := Config{OpaquePorts: noOpaque, DetectTimeout: time.Hour}
			if opaque {
				cfg.OpaquePorts = []uint16{dead.Port()}
			}
			srv, m, _ := newTestServer(t, Outbound, cfg)
			h := handleOne(t, srv, dead)
			expectClosed(t, h.client)
			h.waitDone(t)
			if got := testutil.ToFloat64(m.connectErrors.WithLabelValues("outbound", "disabled", "", "")); got != 1 {
				t.Errorf("connect errors = %v; want 1", got)
			}
		})
	}
}

// TestConnectTimeout dials a listener whose accept queue is full: the
// kernel drops the SYNs, so only the connect timeout ends the dial.
func TestConnectTimeout(t *testing.T) {
	full := fullListener(t)
	srv, m, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, ConnectTimeout: 200 * time.Millisecond})
	h := handleOne(t, srv, full)
	expectClosed(t, h.client)
	h.waitDone(t)
	if got := testutil.ToFloat64(m.connectErrors.WithLabelValues("outbound", "disabled", "", "")); got != 1 {
		t.Errorf("connect errors = %v; want 1", got)
	}
}

// fullListener returns a loopback listener (backlog 0, never accepting)
// whose accept queue has been filled, so new SYNs are dropped.
func fullListener(t *testing.T) netip.AddrPort {
	t.Helper()
	lc := net.ListenConfig{}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// Re-listen with backlog 0 on the same socket.
	raw, _ := ln.(*net.TCPListener).SyscallConn()
	raw.Control(func(fd uintptr) { listen0(int(fd)) })
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	fillAcceptQueue(t, addr)
	return addr
}

func TestIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	t.Run("idle connection closed", func(t *testing.T) {
		srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond, IdleTimeout: idle})
		h := handleOne(t, srv, upstream(t, echo))
		h.client.Write([]byte("ping"))
		expectClosed(t, h.client)
		h.waitDone(t)
	})
	t.Run("half-closed idle connection closed", func(t *testing.T) {
		srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond, IdleTimeout: idle})
		h := handleOne(t, srv, upstream(t, func(c *net.TCPConn) { io.Copy(io.Discard, c); time.Sleep(time.Minute) }))
		h.client.CloseWrite()
		expectClosed(t, h.client)
		h.waitDone(t)
	})
	// Bytes flow one way only for 3 idle timeouts: never cut. The idle
	// timeout here is 1s, ten ticks: a 300ms one with 50ms ticks left a
	// stall of 250ms (of this test's writer, or of the proxy's copy
	// goroutine, on a loaded machine under -race) to look idle, and the
	// connection was cut ("write 18: connection reset by peer").
	const busyIdle = time.Second
	const ticks, every = 30, busyIdle / 10
	t.Run("busy server to client", func(t *testing.T) {
		srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond, IdleTimeout: busyIdle})
		h := handleOne(t, srv, upstream(t, func(c *net.TCPConn) {
			for range ticks {
				if _, err := c.Write([]byte{'x'}); err != nil {
					return
				}
				time.Sleep(every)
			}
			c.CloseWrite()
			io.Copy(io.Discard, c)
		}))
		h.client.SetReadDeadline(time.Now().Add(20 * time.Second))
		got, err := io.ReadAll(h.client)
		if err != nil || len(got) != ticks {
			t.Errorf("read %d bytes, %v; want %d and a clean EOF", len(got), err, ticks)
		}
	})
	t.Run("busy client to server", func(t *testing.T) {
		srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond, IdleTimeout: busyIdle})
		var received atomic.Int64
		h := handleOne(t, srv, upstream(t, func(c *net.TCPConn) {
			n, _ := io.Copy(io.Discard, c)
			received.Store(n)
			c.Write([]byte("done"))
		}))
		for i := range ticks {
			if _, err := h.client.Write([]byte{'x'}); err != nil {
				t.Fatalf("write %d: %v (connection cut while busy)", i, err)
			}
			time.Sleep(every)
		}
		h.client.CloseWrite()
		h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		reply, err := io.ReadAll(h.client)
		if err != nil || string(reply) != "done" || received.Load() != ticks {
			t.Errorf("reply %q, %v, server received %d; want \"done\" after %d bytes", reply, err, received.Load(), ticks)
		}
	})
}

func TestMetricsReflectConnection(t *testing.T) {
	up := upstream(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		c.Write(bytes.Repeat([]byte("r"), 5000))
	})
	srv, m, _ := newTestServer(t, Inbound, Config{OpaquePorts: noOpaque, DetectTimeout: 50 * time.Millisecond})
	// Inbound delivers to 127.0.0.1:<orig port>; the orig address itself
	// is a test address that is never dialed.
	h := handleOne(t, srv, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), up.Port()))
	sent := bytes.Repeat([]byte("s"), 12345)
	h.client.Write(sent)
	h.client.CloseWrite()
	h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(h.client)
	h.waitDone(t)
	if len(got) != 5000 {
		t.Fatalf("reply = %d bytes; want 5000", len(got))
	}
	for _, tc := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"open_total", m.open.WithLabelValues("inbound", "disabled", "", ""), 1},
		{"close_total", m.close.WithLabelValues("inbound", "disabled", "", ""), 1},
		{"open_connections", m.openConns.WithLabelValues("inbound", "disabled", "", ""), 0},
		{"read_bytes", m.readBytes.WithLabelValues("inbound", "disabled", "", ""), float64(len(sent))},
		{"write_bytes", m.writeBytes.WithLabelValues("inbound", "disabled", "", ""), 5000},
		{"detect opaque", m.detect.WithLabelValues("inbound", "opaque"), 1},
		{"outbound untouched", m.open.WithLabelValues("outbound", "disabled", "", ""), 0},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s = %v; want %v", tc.name, got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.duration); n != 1 {
		t.Errorf("duration series = %d; want 1", n)
	}
}

func TestOpenConnectionsGauge(t *testing.T) {
	srv, m, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond})
	h := handleOne(t, srv, upstream(t, echo))
	h.client.Write([]byte("x"))
	io.ReadFull(h.client, make([]byte, 1))
	if got := testutil.ToFloat64(m.openConns.WithLabelValues("outbound", "disabled", "", "")); got != 1 {
		t.Errorf("open connections = %v; want 1", got)
	}
	if got := srv.OpenConnections(); got != 1 {
		t.Errorf("OpenConnections = %d; want 1", got)
	}
	h.client.Close()
	h.waitDone(t)
	if got := testutil.ToFloat64(m.openConns.WithLabelValues("outbound", "disabled", "", "")); got != 0 {
		t.Errorf("open connections after close = %v; want 0", got)
	}
}

func TestInboundTarget(t *testing.T) {
	for _, tc := range []struct {
		host       string
		orig, want string
	}{
		{"", "198.18.0.5:8080", "127.0.0.1:8080"},
		{"", "[2001:2::5]:8080", "[::1]:8080"},
		{"", "[::ffff:198.18.0.5]:8080", "127.0.0.1:8080"},
		{"198.18.0.1", "198.18.0.5:9090", "198.18.0.1:9090"},
	} {
		var host netip.Addr
		if tc.host != "" {
			host = netip.MustParseAddr(tc.host)
		}
		srv := NewServer(Inbound, Config{InboundHost: host}, nil, nil)
		if got := srv.target(netip.MustParseAddrPort(tc.orig)); got.String() != tc.want {
			t.Errorf("inbound target(%s) = %s; want %s", tc.orig, got, tc.want)
		}
	}
	out := NewServer(Outbound, Config{}, nil, nil)
	if got := out.target(netip.MustParseAddrPort("198.18.0.5:8080")); got.String() != "198.18.0.5:8080" {
		t.Errorf("outbound target = %s; want the original destination", got)
	}
}

// TestShutdownForcesAfterContext: an open connection holds Shutdown until
// its context ends, then it is closed.
func TestShutdownForcesAfterContext(t *testing.T) {
	srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond})
	h := handleOne(t, srv, upstream(t, echo))
	h.client.Write([]byte("x"))
	io.ReadFull(h.client, make([]byte, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := srv.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v; want context.DeadlineExceeded", err)
	}
	// The count when the context ended, before the closing.
	if de, ok := errors.AsType[*DrainError](err); !ok || de.Open != 1 {
		t.Errorf("Shutdown = %#v; want a *DrainError with Open 1", err)
	}
	expectClosed(t, h.client)
	h.waitDone(t)
	if n := srv.OpenConnections(); n != 0 {
		t.Errorf("OpenConnections = %d; want 0", n)
	}
}

// TestShutdownDrains: Shutdown stops the listener at once (Serve returns
// nil) and returns nil as soon as the last connection finishes.
func TestShutdownDrains(t *testing.T) {
	l, err := listener.Listen(listener.Config{Name: "outbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: listener.ModeRedirect})
	if err != nil {
		t.Fatal(err)
	}
	srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	h := handleOne(t, srv, upstream(t, echo))
	h.client.Write([]byte("x"))
	io.ReadFull(h.client, make([]byte, 1))

	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after Shutdown = %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running 10s after Shutdown")
	}
	if _, err := net.DialTimeout("tcp4", l.Addr().String(), time.Second); err == nil {
		t.Errorf("listener still accepting after Shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a connection still open", err)
	case <-time.After(50 * time.Millisecond):
	}
	// The connection still works while draining.
	h.client.Write([]byte("y"))
	if _, err := io.ReadFull(h.client, make([]byte, 1)); err != nil {
		t.Fatalf("connection broken while draining: %v", err)
	}
	h.client.CloseWrite()
	io.Copy(io.Discard, h.client)
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last connection ended")
	}
}

func TestHandleContextCancelCloses(t *testing.T) {
	srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond})
	up := upstream(t, echo)
	front, _ := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer front.Close()
	client, err := net.DialTCP("tcp4", nil, front.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, _ := front.AcceptTCP()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Handle(ctx, sc, up); close(done) }()
	client.Write([]byte("x"))
	io.ReadFull(client, make([]byte, 1))
	cancel()
	expectClosed(t, client)
	<-done
}

// TestPeerNotReadingClosed: the upstream never reads (but keeps talking,
// so the connection is not idle), so the proxy's write blocks; the write
// stall check must end the connection rather than hold it forever or drop
// the bytes it could not deliver and carry on.
func TestPeerNotReadingClosed(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	up := upstream(t, func(c *net.TCPConn) {
		for range 600 { // bounded: 30s
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := c.Write([]byte{'x'}); err != nil {
				return
			}
		}
	})
	srv, _, _ := newTestServer(t, Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 10 * time.Millisecond, IdleTimeout: 200 * time.Millisecond})
	h := handleOne(t, srv, up)
	go io.Copy(io.Discard, h.client)
	writeErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for range 4096 { // bounded: 256 MiB at most
			if _, err := h.client.Write(buf); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("256 MiB written to a peer that never reads; want the proxy to close")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("connection to a non-reading peer still open after 20s")
	}
	h.waitDone(t)
}
