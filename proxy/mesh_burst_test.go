package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// burstConns is how many mesh connections TestMeshHandshakeBurst opens at
// once (MESHPROXY_BURST overrides it): 2,000, or 400 under the race
// detector, whose cryptography is about ten times slower. A test process
// holds six sockets per connection (client, both proxies' two, the app),
// within the 20,000-file limit.
func burstConns(t *testing.T) int {
	if v := os.Getenv("MESHPROXY_BURST"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("MESHPROXY_BURST=%q: %v", v, err)
		}
		return n
	}
	if raceEnabled {
		return 400
	}
	return 2000
}

// TestMeshHandshakeBurst opens a burst of opaque mTLS connections at once
// (each dial to the outbound proxy in its own goroutine, no pacing) and
// asserts every one reaches the app and echoes: handshakes queue for a
// slot (Mesh.MaxHandshakes) instead of starving the connects, accepts and
// data behind thousands of runnable handshakes, so the burst only takes
// longer. The connect timeout is the default 3s, as in production.
func TestMeshHandshakeBurst(t *testing.T) {
	n := burstConns(t)
	e := newMeshEnv(t, meshOpts{})
	app := upstream(t, echo)

	front, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var handlers sync.WaitGroup
	t.Cleanup(func() {
		front.Close()
		handlers.Wait()
	})
	handlers.Add(1)
	go func() {
		defer handlers.Done()
		for {
			c, err := front.AcceptTCP()
			if err != nil {
				return
			}
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				e.out.Handle(context.Background(), c, app)
			}()
		}
	}()

	var (
		wg         sync.WaitGroup
		failed     atomic.Int64
		firstErr   error
		firstErrMu sync.Mutex
	)
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := func() error {
				c, err := net.DialTimeout("tcp4", front.Addr().String(), time.Until(deadline))
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(deadline)
				msg := []byte(fmt.Sprintf("conn %d", i))
				if _, err := c.Write(msg); err != nil {
					return err
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil {
					return err
				}
				if string(got) != string(msg) {
					return fmt.Errorf("echo %q; want %q", got, msg)
				}
				return nil
			}()
			if err != nil {
				failed.Add(1)
				firstErrMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				firstErrMu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d mTLS connections opened at once: %d failed, %v", n, failed.Load(), time.Since(start).Round(10*time.Millisecond))
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of %d connections failed; first: %v", f, n, firstErr)
		for name, l := range map[string]*logBuf{"outbound": e.outLog, "inbound": e.inLog} {
			t.Logf("%s log reasons: %v", name, logReasons(l.String()))
			lines := strings.SplitN(l.String(), "\n", 4)
			t.Logf("%s log: %s", name, strings.Join(lines[:min(3, len(lines))], "\n"))
		}
	}
	// Handshakes ran in their slots: never more at once than the bound,
	// on either side (each Server has its own).
	for _, s := range []*Server{e.out, e.in} {
		if peak, most := s.mesh.peakHandshakes.Load(), int64(cap(s.mesh.hsSlots)); peak > most || peak == 0 {
			t.Errorf("%s: peak concurrent handshakes = %d; want 1 to %d (Mesh.MaxHandshakes)", s.dir, peak, most)
		} else {
			t.Logf("%s: peak concurrent handshakes %d (bound %d)", s.dir, peak, most)
		}
	}
}

// logReasons counts a log's lines by their reason= value.
func logReasons(log string) map[string]int {
	m := map[string]int{}
	for line := range strings.SplitSeq(log, "\n") {
		if _, r, ok := strings.Cut(line, " reason="); ok {
			r, _, _ = strings.Cut(r, " ")
			m[r]++
		}
	}
	return m
}
