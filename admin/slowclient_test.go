package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	c, err := net.Dial("tcp", l.Addr().String())
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
