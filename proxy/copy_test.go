package proxy

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// pipeFDs counts the pipes this process has open.
func pipeFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("needs /proc/self/fd: %v", err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			n++
		}
	}
	return n
}

// TestIdleSpliceHoldsNoPipe: spliced connections that moved bytes and
// now wait hold no pipe (a pipe is taken per burst and pooled), so
// thousands of idle connections neither spend two more files each nor
// the user's pipe budget (fs.pipe-user-pages-soft), past which new pipes
// are tiny and every splice moves a few KiB. Once nothing moves, the
// pooled pipes close too.
func TestIdleSpliceHoldsNoPipe(t *testing.T) {
	const conns = 64
	// An echo that does not splice itself (io.Copy between two TCP
	// conns would hold a pipe of the runtime's per waiting direction).
	app := upstream(t, func(c *net.TCPConn) {
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				c.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	})
	srv := NewServer(Outbound, Config{OpaquePorts: []uint16{app.Port()}}, nil, nil)
	before := pipeFDs(t)
	var hs []handled
	for i := range conns {
		h := handleOne(t, srv, app)
		hs = append(hs, h)
		h.client.SetDeadline(time.Now().Add(10 * time.Second))
		msg := []byte{byte(i), 1, 2, 3}
		if _, err := h.client.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(h.client, got); err != nil {
			t.Fatalf("connection %d: echo: %v", i, err)
		}
		h.client.SetDeadline(time.Time{})
	}
	// Every connection is open and idle, both directions waiting.
	if got, most := pipeFDs(t)-before, 2*maxIdlePipes; got > most {
		t.Errorf("%d idle spliced connections hold %d more pipe ends; want at most %d (the pool)", conns, got, most)
	}
	for _, h := range hs {
		h.client.Close()
		h.waitDone(t)
	}
	waitFor(t, "the idle pipes to close", func() bool { return pipeFDs(t) <= before })
}

// TestCopyModes: request/response traffic moves by read and write, with
// no splice (a splice per message would cost two splices and a peek
// where one read and one write do); a stream splices once a read fills
// the buffer, and goes back to messages after it. Every byte arrives in
// order either way.
func TestCopyModes(t *testing.T) {
	app := upstream(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if buf[0] == 'B' { // a bulk request: 4 MiB back
					big := make([]byte, 4<<20)
					for i := range big {
						big[i] = byte(i % 251)
					}
					c.Write(big)
				} else {
					c.Write(buf[:n])
				}
			}
			if err != nil {
				return
			}
		}
	})
	srv := NewServer(Outbound, Config{OpaquePorts: []uint16{app.Port()}}, nil, nil)
	h := handleOne(t, srv, app)
	h.client.SetDeadline(time.Now().Add(20 * time.Second))
	roundTrips := func(n int) {
		t.Helper()
		for i := range n {
			msg := []byte{'m', byte(i), 2, 3, 4, 5}
			if _, err := h.client.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(h.client, got); err != nil || string(got) != string(msg) {
				t.Fatalf("round trip %d: got %q, %v; want %q", i, got, err, msg)
			}
		}
	}
	before := spliceBursts.Load()
	roundTrips(200)
	if n := spliceBursts.Load() - before; n != 0 {
		t.Errorf("200 small round trips spliced %d bursts; want 0 (read and write)", n)
	}
	if _, err := h.client.Write([]byte("B")); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4<<20)
	if _, err := io.ReadFull(h.client, big); err != nil {
		t.Fatal(err)
	}
	for i := range big {
		if big[i] != byte(i%251) {
			t.Fatalf("stream byte %d = %d; want %d", i, big[i], byte(i%251))
		}
	}
	streamed := spliceBursts.Load() - before
	if streamed == 0 {
		t.Error("a 4 MiB stream was not spliced")
	}
	roundTrips(200)
	if n := spliceBursts.Load() - before - streamed; n > 2 {
		t.Errorf("200 round trips after the stream spliced %d bursts; want it back to read and write", n)
	}
	h.client.Close()
	h.waitDone(t)
}
