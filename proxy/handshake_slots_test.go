package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fullListenerAt listens on addr with a backlog of 0 and fills its accept
// queue, so the kernel drops every further SYN to addr silently (a
// blackhole: dials to it wait out their connect timeout).
func fullListenerAt(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	raw, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { listen0(int(fd)) })
	fillAcceptQueue(t, addr)
}

// fillAcceptQueue fills the accept queue of the backlog-0 listener at
// addr, which never accepts. The first connection takes the one place;
// it is dialed with a generous timeout: with 100ms, a loaded machine that
// processed the loopback SYN late (softirqs deferred to ksoftirqd) had
// the dial time out and close before the connection was queued, and the
// queue was taken for full while empty. Then dials with a short timeout
// confirm that further SYNs are dropped (one that connects takes another
// place, and the next is tried).
func fillAcceptQueue(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr.String(), 10*time.Second)
	if err != nil {
		t.Fatalf("first connection to the backlog-0 listener %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	for range 8 {
		c, err := net.DialTimeout("tcp4", addr.String(), 100*time.Millisecond)
		if err != nil {
			return // a dial timed out: the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill the accept queue of a backlog-0 listener")
}

// synSentTo counts this network namespace's IPv4 sockets in SYN_SENT to
// dst (from /proc/net/tcp): connects the kernel is still trying.
func synSentTo(t *testing.T, dst netip.AddrPort) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("needs /proc/net/tcp: %v", err)
	}
	a := dst.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], dst.Port())
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == want && f[3] == "02" {
			n++
		}
	}
	return n
}

// tcpLinesTo returns the lines of /proc/net/tcp whose remote address is
// dst, for failure messages.
func tcpLinesTo(t *testing.T, dst netip.AddrPort) string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return err.Error()
	}
	a := dst.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], dst.Port())
	var out []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 3 && (f[2] == want || f[1] == want) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestMeshDialBlackholeHoldsNoSlot: dials to a mesh port that drops SYNs
// (a blackhole) wait out their connect timeout holding no handshake slot,
// so a dial to another destination handshakes while all of them hang.
// Before, a dial took its slot before connecting: MaxHandshakes such
// dials held every slot, and the good dial waited for one until its queue
// allowance ran out.
func TestMeshDialBlackholeHoldsNoSlot(t *testing.T) {
	const hanging = 4
	e := newMeshEnv(t, meshOpts{
		outMesh: func(m *Mesh) {
			m.MaxHandshakes = hanging
			m.HandshakeTimeout = 500 * time.Millisecond // queue allowance 2s
		},
		// The blackholed dials' connect timeout is long: only the test
		// ends them.
		outConfig: func(c *Config) { c.ConnectTimeout = time.Minute },
	})
	black := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), e.meshPort)
	fullListenerAt(t, black)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan meshDial, hanging)
	for range hanging {
		go func() { results <- e.out.dialMesh(ctx, black.Addr(), true, false) }()
	}
	for deadline := time.Now().Add(10 * time.Second); synSentTo(t, black) != hanging; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			// Seen once under load (5s then): say what became of them.
			var ended []string
			for len(results) > 0 {
				r := <-results
				ended = append(ended, fmt.Sprintf("err %v reason %q", r.err, r.reason))
			}
			t.Fatalf("%d of the %d blackholed dials connecting (SYN_SENT) after 10s; ended: %v; /proc/net/tcp lines to %s:\n%s",
				synSentTo(t, black), hanging, ended, black, tcpLinesTo(t, black))
		}
	}

	gctx, gcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer gcancel()
	md := e.out.dialMesh(gctx, loopback, true, false)
	if md.err != nil {
		t.Fatalf("dial to a good destination while %d dials hang on a blackhole: %v (reason %s)", hanging, md.err, md.reason)
	}
	md.tc.Close()
	if n := len(results); n != 0 {
		t.Errorf("%d blackholed dials returned before the test ended them; want all %d still hanging", n, hanging)
	}
	if n := synSentTo(t, black); n != hanging {
		t.Errorf("%d blackholed dials still connecting; want %d", n, hanging)
	}
	cancel()
	for range hanging {
		r := <-results
		if r.err == nil || r.reason != reasonConnect {
			t.Errorf("blackholed dial: err %v, reason %q; want a connect failure", r.err, r.reason)
		}
	}
	if p := e.out.mesh.peakHandshakes.Load(); p > hanging {
		t.Errorf("peak concurrent outbound handshakes = %d; want at most %d", p, hanging)
	}
}

// TestHandshakeSlotQueue: a handshake waiting for a slot gives up with
// errHandshakeQueue (a deadline error: reason timeout) when its wait
// allowance passes, returns the context's error when the context ends
// while it waits, and gets a slot freed while it waits.
func TestHandshakeSlotQueue(t *testing.T) {
	r := newMeshRuntime(Mesh{MaxHandshakes: 2})
	var releases []func()
	for range 2 {
		rel, err := r.handshakeSlot(context.Background(), 0)
		if err != nil {
			t.Fatalf("free slot: %v", err)
		}
		releases = append(releases, rel)
	}

	t.Run("timeout", func(t *testing.T) {
		rel, err := r.handshakeSlot(context.Background(), 50*time.Millisecond)
		if err == nil {
			rel()
			t.Fatal("got a slot while all were taken")
		}
		if !errors.Is(err, errHandshakeQueue) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("err = %v; want errHandshakeQueue, a deadline error", err)
		}
		if got := handshakeReason(fmt.Errorf("mesh handshake: %w", err)); got != reasonTimeout {
			t.Errorf("reason = %q; want %q", got, reasonTimeout)
		}
		if rel, err := r.handshakeSlot(context.Background(), 0); err == nil {
			rel()
			t.Error("no wait allowance: got a slot while all were taken")
		}
	})

	t.Run("cancelled while queued", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			rel, err := r.handshakeSlot(ctx, time.Minute)
			if err == nil {
				rel()
			}
			errc <- err
		}()
		select {
		case err := <-errc:
			t.Fatalf("returned before the cancel: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v; want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a cancelled wait for a slot did not return within 10s")
		}
	})

	t.Run("slot freed while queued", func(t *testing.T) {
		got := make(chan func(), 1)
		go func() {
			rel, err := r.handshakeSlot(context.Background(), time.Minute)
			if err != nil {
				t.Errorf("waiting for a slot: %v", err)
				rel = func() {}
			}
			got <- rel
		}()
		releases[0]()
		select {
		case rel := <-got:
			releases[0] = rel
		case <-time.After(10 * time.Second):
			t.Fatal("a freed slot was not taken within 10s")
		}
	})
	for _, rel := range releases {
		rel()
	}
	if n := len(r.hsSlots); n != 0 {
		t.Errorf("%d slots still taken after every release", n)
	}
}

// TestMeshDialQueueTimeout: an outbound dial whose handshake waits longer
// than its queue allowance for a slot fails with reason timeout, and the
// connection is closed, never sent in plaintext.
func TestMeshDialQueueTimeout(t *testing.T) {
	e := newMeshEnv(t, meshOpts{outMesh: func(m *Mesh) {
		m.MaxHandshakes = 1
		m.HandshakeTimeout = 50 * time.Millisecond
	}})
	e.out.mesh.hsSlots <- struct{}{} // every slot busy
	defer e.out.mesh.releaseSlot()
	app, conns := countingApp(t, echo)
	h := handleOne(t, e.out, app)
	h.client.Write([]byte("x"))
	expectClosed(t, h.client)
	h.waitDone(t)
	if got := testutil.ToFloat64(e.outM.meshErrors.WithLabelValues(reasonTimeout)); got != 1 {
		t.Errorf("mesh errors{timeout} = %v; want 1", got)
	}
	if n := conns(); n != 0 {
		t.Errorf("app connections = %d; want 0", n)
	}
	if !strings.Contains(e.outLog.String(), "handshake slot") {
		t.Errorf("no log line names the handshake slot wait:\n%s", e.outLog)
	}
}
