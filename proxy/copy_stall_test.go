package proxy

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b, err = ln.AcceptTCP()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// copier runs one direction of a copy from src to dst with the idle
// timeout, counting into count and total.
type copier func(dst, src *net.TCPConn, self, other *halfState, idle time.Duration, count prometheus.Counter, total *atomic.Int64) error

var copiers = map[string]copier{
	"splice": proxyCopy,
	"buffered": func(dst, src *net.TCPConn, self, other *halfState, idle time.Duration, count prometheus.Counter, total *atomic.Int64) error {
		return bufferedCopy(newCopyEnd(dst), newCopyEnd(src), self, other, idle, count, total)
	},
}

// runCopy starts c from src to dst, both directions' states fresh, and
// returns the channel its result arrives on.
func runCopy(c copier, dst, src *net.TCPConn, idle time.Duration, count prometheus.Counter, total *atomic.Int64) <-chan error {
	var self, other halfState
	now := time.Now().UnixNano()
	self.last.Store(now)
	other.last.Store(now)
	errc := make(chan error, 1)
	go func() { errc <- c(dst, src, &self, &other, idle, count, total) }()
	return errc
}

// TestCopyWriteStall: a destination that stops reading while the source
// keeps sending ends the copy with errWriteStall about an idle timeout
// later (not never: the source is busy, so the idle check alone would not
// end it), and every byte the destination was given is counted, no more.
func TestCopyWriteStall(t *testing.T) {
	const idle = 300 * time.Millisecond
	for name, c := range copiers {
		t.Run(name, func(t *testing.T) {
			srcW, srcR := tcpPair(t)
			dstW, dstR := tcpPair(t) // nobody reads dstR until the copy ended
			// A sender that never pauses, bounded in bytes and time.
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				buf := make([]byte, 64<<10)
				srcW.SetWriteDeadline(time.Now().Add(30 * time.Second))
				for range 4096 { // 256 MiB at most
					if _, err := srcW.Write(buf); err != nil {
						return
					}
				}
			}()
			count := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_bytes_total", Help: "bytes"})
			var total atomic.Int64
			errc := runCopy(c, dstW, srcR, idle, count, &total)
			select {
			case err := <-errc:
				if !errors.Is(err, errWriteStall) {
					t.Fatalf("copy ended with %v; want errWriteStall", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the copy to a reader that stopped reading did not end within 20s")
			}
			srcW.Close()
			srcR.Close()
			<-sent
			// Everything delivered to dstW's socket reaches dstR.
			dstW.Close()
			dstR.SetReadDeadline(time.Now().Add(20 * time.Second))
			got, err := io.Copy(io.Discard, dstR)
			if err != nil {
				t.Fatalf("draining the stalled reader: %v", err)
			}
			if got == 0 {
				t.Fatal("nothing was delivered before the stall")
			}
			if c := testutil.ToFloat64(count); c != float64(got) || total.Load() != got {
				t.Errorf("counted %v (total %d); the reader got %d bytes", c, total.Load(), got)
			}
		})
	}
}

// TestIdleAfterOtherDirectionEnds: a quiet direction whose read deadline
// fires just after the other direction reached EOF (a client that sent
// its request and half-closed, the server about to answer) is not idle:
// the EOF is activity, and the connection ends only when both directions
// had none for the idle timeout. Before, a finished direction counted as
// quiet however recent its end, and the answer was cut (reset) when the
// deadline fired between the EOF and the answer.
func TestIdleAfterOtherDirectionEnds(t *testing.T) {
	const idle = time.Minute
	a, _ := tcpPair(t)
	var self, other halfState
	self.last.Store(time.Now().Add(-2 * idle).UnixNano()) // quiet for long
	other.last.Store(time.Now().Add(-2 * idle).UnixNano())
	(&idleClock{idle: idle, self: &other, other: &self}).finished() // its EOF, now
	c := idleClock{idle: idle, self: &self, other: &other}
	if err := c.readTimedOut(a); err != nil {
		t.Fatalf("deadline just after the other direction's EOF: %v; want the read deadline set again", err)
	}
	if !self.quiet.Load() {
		t.Error("the direction is not marked quiet after idle without bytes")
	}
	// Once the EOF is idle old too, the connection is idle.
	other.last.Store(time.Now().Add(-idle).UnixNano())
	if err := c.readTimedOut(a); !errors.Is(err, errIdle) {
		t.Errorf("deadline an idle timeout after the other direction's EOF: %v; want errIdle", err)
	}
}
