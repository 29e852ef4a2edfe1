package admin

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestStalledBodyDropped: a caller that announces a request body and
// never sends it (to any endpoint: /live answers anyone) does not hold
// its connection, and a goroutine and a descriptor of the proxy, for
// ever: the server drops it after its read timeout.
func TestStalledBodyDropped(t *testing.T) {
	t.Parallel()
	s := New(prometheus.NewRegistry(), nil)
	addr := serveLoopback(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Bounded wait: well past the server's read timeout.
	limit := 3 * adminReadTimeout
	c.SetReadDeadline(time.Now().Add(limit))
	_, err = io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %v with a stalled body; want it dropped", limit)
	}
}

// TestNonReadingClientDropped: a caller that sends requests and never
// reads the answers does not hold its connection for ever once the
// socket's buffers are full: the server gives up the write after its
// write timeout (shortened here from adminWriteTimeout) and closes.
func TestNonReadingClientDropped(t *testing.T) {
	t.Parallel()
	s := New(prometheus.NewRegistry(), nil)
	if s.srv.WriteTimeout != adminWriteTimeout {
		t.Fatalf("admin server WriteTimeout %v, want %v", s.srv.WriteTimeout, adminWriteTimeout)
	}
	const wt = time.Second
	s.srv.WriteTimeout = wt
	addr := serveLoopback(t, s)
	// A small receive buffer, set before connecting, so the server's
	// writes stall soon.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Pipelined requests whose answers (/ready's text) far exceed both
	// sockets' buffers; sent from a goroutine, as the server stops
	// reading them once its writes stall.
	req := []byte(strings.Repeat("GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 20000))
	sent := make(chan error, 1)
	go func() {
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		_, err := c.Write(req)
		sent <- err
	}()
	// Give the server time to fill the buffers and time out, then read:
	// a server still holding the connection answers every request and
	// then waits for more (idle timeout 60 s, past the deadline below);
	// one that gave up closes after what it had written.
	time.Sleep(3 * wt)
	limit := 20 * time.Second
	c.SetReadDeadline(time.Now().Add(limit))
	n, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open %v after a stalled write (read %d bytes); want it closed after the write timeout", limit, n)
	}
	<-sent
}
