package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// awaitWithin runs s.awaitAfter(write, false) and fails the test when it
// has not returned within d.
func awaitWithin(t *testing.T, s *rawSock, write func() error, d time.Duration) error {
	t.Helper()
	return awaitCheckWithin(t, s, write, false, d)
}

// awaitCheckWithin is awaitWithin with awaitAfter's check.
func awaitCheckWithin(t *testing.T, s *rawSock, write func() error, check bool, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.awaitAfter(write, check) }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("awaitAfter has not returned after %v", d)
		return nil
	}
}

// awaitAfter writes the request, then returns once the reply is there:
// a read that does not wait finds it.
func TestRawSockAwaitAfter(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSock(a)
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	go func() {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "ping" {
			return
		}
		time.Sleep(50 * time.Millisecond) // the reply is late: awaitAfter waits
		b.Write([]byte("pong"))
	}()
	err := awaitWithin(t, s, func() error {
		_, err := s.Write([]byte("ping"))
		return err
	}, 5*time.Second)
	if err != nil {
		t.Fatalf("awaitAfter = %v; want nil", err)
	}
	buf := make([]byte, 8)
	n, err := s.readNoWait(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("a read that does not wait, after awaitAfter = %q, %v; want \"pong\" (awaitAfter returned before the reply)", buf[:n], err)
	}

	// Again on the same socket: the readiness the first wait saw is not
	// taken for the second reply.
	go func() {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(b, buf); err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
		b.Write([]byte("pong2"))
	}()
	if err := awaitWithin(t, s, func() error {
		_, err := s.Write([]byte("pin2"))
		return err
	}, 5*time.Second); err != nil {
		t.Fatalf("second awaitAfter = %v; want nil", err)
	}
	n, err = s.readNoWait(buf)
	if err != nil || string(buf[:n]) != "pong2" {
		t.Fatalf("a read that does not wait, after the second awaitAfter = %q, %v; want \"pong2\"", buf[:n], err)
	}
}

// A peer that closed the connection before the request (a kept
// connection its server let go) does not leave awaitAfter waiting: the
// reset the write brings back ends the wait, and the read that follows
// sees the failure.
func TestRawSockAwaitAfterPeerClosed(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSock(a)
	b.Close()
	// The FIN arrives before the wait starts: its readiness is gone.
	buf := make([]byte, 8)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if !socketQuiet(t, a) {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the peer's FIN never arrived")
		}
	}
	a.SetReadDeadline(time.Now().Add(30 * time.Second))
	err := awaitWithin(t, s, func() error {
		_, err := s.Write([]byte("ping"))
		return err
	}, 10*time.Second)
	if err != nil {
		t.Fatalf("awaitAfter = %v; want nil (the write itself goes out)", err)
	}
	n, err := s.Read(buf)
	if n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("read after awaitAfter on a connection the peer closed = %d, %v; want EOF or a reset", n, err)
	}
}

// socketQuiet reports whether c's socket has nothing to read and no
// end of stream (a MSG_PEEK that would block).
func socketQuiet(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	quiet := false
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, e := sysPeek(fd, b[:])
		quiet = e == syscall.EAGAIN
		return true
	})
	return quiet
}

// With no reply, awaitAfter ends at the read deadline and says nothing:
// the read after it finds the deadline.
func TestRawSockAwaitAfterDeadline(t *testing.T) {
	a, _ := tcpPair(t)
	s := newRawSock(a)
	a.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if err := awaitWithin(t, s, func() error {
		_, err := s.Write([]byte("ping"))
		return err
	}, 5*time.Second); err != nil {
		t.Fatalf("awaitAfter = %v; want nil", err)
	}
	if _, err := s.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after awaitAfter timed out = %v; want the deadline", err)
	}
}

// A failed write returns at once, with its error: nothing is awaited.
func TestRawSockAwaitAfterWriteFails(t *testing.T) {
	a, _ := tcpPair(t)
	s := newRawSock(a)
	a.SetReadDeadline(time.Now().Add(30 * time.Second))
	boom := errors.New("boom")
	if err := awaitWithin(t, s, func() error { return boom }, 5*time.Second); err != boom {
		t.Fatalf("awaitAfter with a failing write = %v; want its error", err)
	}
}

// On a closed socket the write still runs (and fails as it would
// alone): the wait cannot start, the write is not skipped.
func TestRawSockAwaitAfterClosed(t *testing.T) {
	a, _ := tcpPair(t)
	s := newRawSock(a)
	a.Close()
	wrote := false
	err := awaitWithin(t, s, func() error {
		wrote = true
		_, err := s.Write([]byte("ping"))
		return err
	}, 5*time.Second)
	if !wrote || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("awaitAfter on a closed socket: write ran %v, error %v; want it run and net.ErrClosed", wrote, err)
	}
}

// The poller's readiness is reset before the write, not after it: a
// reply that comes, and that the poller sees, while the write is still
// in awaitAfter's callback ends the wait. (Were the wait to start after
// the write, its reset would drop that readiness, and the wait would
// last to the read deadline.)
func TestRawSockAwaitAfterReplyDuringWrite(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSock(a)
	a.SetReadDeadline(time.Now().Add(60 * time.Second))
	replied := make(chan struct{})
	go func() {
		defer close(replied)
		buf := make([]byte, 4)
		if _, err := io.ReadFull(b, buf); err != nil {
			return
		}
		b.Write([]byte("pong"))
	}()
	err := awaitWithin(t, s, func() error {
		if _, err := s.Write([]byte("ping")); err != nil {
			return err
		}
		<-replied
		// Time for the poller to see the reply before the write
		// returns (an idle test process polls at once).
		time.Sleep(50 * time.Millisecond)
		return nil
	}, 20*time.Second)
	if err != nil {
		t.Fatalf("awaitAfter = %v; want nil", err)
	}
	buf := make([]byte, 8)
	if n, err := s.readNoWait(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("a read that does not wait, after awaitAfter = %q, %v; want \"pong\"", buf[:n], err)
	}
}

// A write that must wait for room in the socket's buffer (a nested
// RawConn write inside awaitAfter's RawConn read: the socket's read and
// write locks are separate) goes out whole, and the reply is awaited.
func TestRawSockAwaitAfterWriteWaits(t *testing.T) {
	a, b := tcpPair(t)
	a.SetWriteBuffer(16 << 10)
	b.SetReadBuffer(16 << 10)
	s := newRawSock(a)
	a.SetReadDeadline(time.Now().Add(60 * time.Second))
	a.SetWriteDeadline(time.Now().Add(60 * time.Second))
	req := make([]byte, 4<<20) // far more than both buffers hold
	go func() {
		time.Sleep(50 * time.Millisecond) // the write fills the buffers and waits
		if _, err := io.ReadFull(b, make([]byte, len(req))); err != nil {
			return
		}
		b.Write([]byte("pong"))
	}()
	var wrote int
	err := awaitWithin(t, s, func() error {
		n, err := s.Write(req)
		wrote = n
		return err
	}, 30*time.Second)
	if err != nil || wrote != len(req) {
		t.Fatalf("awaitAfter of a write that waits = %v, %d of %d bytes written; want nil, all", err, wrote, len(req))
	}
	buf := make([]byte, 8)
	if n, err := s.readNoWait(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("a read that does not wait, after awaitAfter = %q, %v; want \"pong\"", buf[:n], err)
	}
}

// A wait with no reply ends when another goroutine sets a past read
// deadline (h1Conn.kill) or closes the socket; the read after it finds
// which.
func TestRawSockAwaitAfterInterrupted(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(c *net.TCPConn)
		want error
	}{
		{"past deadline", func(c *net.TCPConn) { c.SetDeadline(time.Unix(1, 0)) }, os.ErrDeadlineExceeded},
		{"close", func(c *net.TCPConn) { c.Close() }, net.ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tcpPair(t)
			s := newRawSock(a)
			a.SetReadDeadline(time.Time{}) // none: only the stop ends the wait
			got := make(chan struct{})
			go func() {
				io.ReadFull(b, make([]byte, 4))
				close(got)
			}()
			go func() {
				<-got
				time.Sleep(50 * time.Millisecond) // the wait has begun
				tc.stop(a)
			}()
			if err := awaitWithin(t, s, func() error {
				_, err := s.Write([]byte("ping"))
				return err
			}, 20*time.Second); err != nil {
				t.Fatalf("awaitAfter = %v; want nil (the write went out)", err)
			}
			if _, err := s.Read(make([]byte, 4)); !errors.Is(err, tc.want) {
				t.Fatalf("read after the wait was stopped = %v; want %v", err, tc.want)
			}
		})
	}
}

// A read deadline already past when awaitAfter starts (an exchange
// killed before its request): the write still runs, as alone, and the
// read after it finds the deadline.
func TestRawSockAwaitAfterDeadlinePassed(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSock(a)
	a.SetReadDeadline(time.Unix(1, 0))
	if err := awaitWithin(t, s, func() error {
		_, err := s.Write([]byte("ping"))
		return err
	}, 5*time.Second); err != nil {
		t.Fatalf("awaitAfter = %v; want nil (the write goes out)", err)
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("the peer read %q, %v; want \"ping\" (the write skipped)", buf, err)
	}
	if _, err := s.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after awaitAfter = %v; want the deadline", err)
	}
}

// A peer that half-closed before the request (its FIN came, and was
// seen by the poller, before the wait's reset) and still reads, never
// answering (a lingering close): its end of stream is found by the
// check inside the wait, at once and with nothing written, where an
// unchecked wait would last to the read deadline (nothing comes to end
// it: the peer reads the request and answers nothing).
func TestRawSockAwaitAfterCheckHalfClosed(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSock(a)
	b.CloseWrite()
	for end := time.Now().Add(5 * time.Second); socketQuiet(t, a); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the peer's FIN never arrived")
		}
	}
	time.Sleep(20 * time.Millisecond) // the poller sees the FIN too
	a.SetReadDeadline(time.Now().Add(60 * time.Second))
	wrote := false
	err := awaitCheckWithin(t, s, func() error {
		wrote = true
		_, err := s.Write([]byte("ping"))
		return err
	}, true, 20*time.Second)
	if err != errNotQuiet || wrote {
		t.Fatalf("checked awaitAfter on a half-closed connection = %v, wrote %v; want errNotQuiet and nothing written", err, wrote)
	}
}

// The check finds bytes nobody asked for (leftovers, a goodbye) too, and
// passes a quiet socket: the request goes out and the reply is awaited.
func TestRawSockAwaitAfterCheck(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSock(a)
	a.SetReadDeadline(time.Now().Add(60 * time.Second))
	go func() {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(b, buf); err != nil {
			return
		}
		b.Write([]byte("pong"))
	}()
	write := func() error {
		_, err := s.Write([]byte("ping"))
		return err
	}
	if err := awaitCheckWithin(t, s, write, true, 20*time.Second); err != nil {
		t.Fatalf("checked awaitAfter on a quiet connection = %v; want nil", err)
	}
	buf := make([]byte, 8)
	if n, err := s.readNoWait(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("a read that does not wait, after awaitAfter = %q, %v; want \"pong\"", buf[:n], err)
	}
	b.Write([]byte("junk"))
	for end := time.Now().Add(5 * time.Second); socketQuiet(t, a); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the stray bytes never arrived")
		}
	}
	wrote := false
	if err := awaitCheckWithin(t, s, func() error { wrote = true; return nil }, true, 20*time.Second); err != errNotQuiet || wrote {
		t.Fatalf("checked awaitAfter with stray bytes = %v, wrote %v; want errNotQuiet and nothing written", err, wrote)
	}
}
