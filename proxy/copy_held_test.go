package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// An opaque copy moves messages inside one wait on the source (readCopy)
// and waits again without a read first only when the read left nothing:
// a message and the end of stream already in the socket when the wait
// began (their readiness reset by it) are both delivered, the end as the
// copy's end, though the read that takes the message takes the FIN too
// and returns fewer bytes than it asked for.
func TestCopyMessageThenEndInOneRead(t *testing.T) {
	srcW, srcR := tcpPair(t)
	dstW, dstR := tcpPair(t)
	if _, err := srcW.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := srcW.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // both are in srcR's socket
	var total atomic.Int64
	errc := runCopy(proxyCopy, dstW, srcR, time.Hour, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}), &total)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("copy = %v; want nil at the source's end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the copy still waits 5 s after the source's end: the FIN read with the message went unseen")
	}
	dstW.CloseWrite()
	dstR.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(dstR)
	if err != nil || string(got) != "last words" {
		t.Fatalf("delivered %q, %v; want \"last words\"", got, err)
	}
	if total.Load() != int64(len("last words")) {
		t.Errorf("counted %d bytes; want %d", total.Load(), len("last words"))
	}
}

// Messages a destination cannot take at once (it stopped reading) are
// finished outside the wait, where the write waits for room: every byte
// arrives, in order, once the destination reads again.
func TestCopyMessagesToSlowReader(t *testing.T) {
	srcW, srcR := tcpPair(t)
	dstW, dstR := tcpPair(t)
	// A small send buffer: the destination is full after a few
	// messages.
	dstW.SetWriteBuffer(16 << 10)
	var total atomic.Int64
	errc := runCopy(proxyCopy, dstW, srcR, time.Hour, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}), &total)
	const msgs, size = 4000, 1000
	want := make([]byte, 0, msgs*size)
	for i := range msgs {
		want = append(want, bytes.Repeat([]byte{byte(i % 251)}, size)...)
	}
	sent := make(chan error, 1)
	go func() {
		// Small messages with pauses (the copy's message mode), bounded
		// in count; the destination reads none for the first 300 ms.
		for i := range msgs {
			if _, err := srcW.Write(want[i*size : (i+1)*size]); err != nil {
				sent <- err
				return
			}
			if i%10 == 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
		sent <- srcW.CloseWrite()
	}()
	time.Sleep(300 * time.Millisecond)
	dstR.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(dstR, got); err != nil {
		t.Fatalf("reading what the copy delivered: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes delivered differ from the bytes sent")
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("copy = %v; want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the copy did not end at the source's end")
	}
	if total.Load() != int64(len(want)) {
		t.Errorf("counted %d bytes; want %d", total.Load(), len(want))
	}
}

// heldEnds is one readCopy under test: the source's two ends (srcW
// writes what srcR's copy reads), the destination's (the copy writes
// dstW, got collects what dstR reads, closed when dstR's end came),
// and srcR's RawConn with TCP_INQ as asked (inq false: as when the
// kernel refuses it).
type heldEnds struct {
	srcW, srcR, dstW *net.TCPConn
	rc               syscall.RawConn
	out              *rawSock
	got              bytes.Buffer
	done             chan error
}

func newHeldEnds(t *testing.T, inq bool) *heldEnds {
	t.Helper()
	e := &heldEnds{done: make(chan error, 1)}
	var dstR *net.TCPConn
	e.srcW, e.srcR = tcpPair(t)
	e.dstW, dstR = tcpPair(t)
	rc, err := e.srcR.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	e.rc = rc
	if inq && !enableInq(rc) {
		t.Skip("the kernel refuses TCP_INQ")
	}
	e.out = newRawSock(e.dstW)
	// Bounded: the copy's deadline below ends a wait that hangs.
	e.srcR.SetReadDeadline(time.Now().Add(10 * time.Second))
	dstR.SetReadDeadline(time.Now().Add(20 * time.Second))
	go func() {
		_, err := io.Copy(&e.got, dstR)
		e.done <- err
	}()
	return e
}

// delivered closes dstW and returns what dstR got.
func (e *heldEnds) delivered(t *testing.T) []byte {
	t.Helper()
	e.dstW.CloseWrite()
	if err := <-e.done; err != nil {
		t.Fatalf("reading what the copy delivered: %v", err)
	}
	return e.got.Bytes()
}

// heldMsg is the i-th message of the held-wait tests.
func heldMsg(i int) []byte { return fmt.Appendf(nil, "message %05d;", i) }

// Messages that come while the last one is being moved (after the read
// that found the socket drained: before it is written, or after) are
// moved by the same wait on the source: with TCP_INQ one readCopy call
// takes every message and the end of stream, calling before once per
// message and counting each byte once; the wait goes on without a read
// after each message, and the poller's readiness, reset only when the
// wait began, ends it for the next. Without TCP_INQ each message is
// followed by a read (here it finds the next one). The test fails when
// a call returns after a message, or when a message that came during a
// write is left unseen (the wait would last to the deadline).
func TestReadCopyMessagesDuringWrite(t *testing.T) {
	for _, inq := range []bool{true, false} {
		t.Run(fmt.Sprintf("inq=%v", inq), func(t *testing.T) {
			e := newHeldEnds(t, inq)
			const msgs = 300
			var want []byte
			next := 0 // the next message to send; msgs: the end
			send := func() {
				if next == msgs {
					e.srcW.CloseWrite()
					next++
					return
				}
				m := heldMsg(next)
				want = append(want, m...)
				next++
				if _, err := e.srcW.Write(m); err != nil {
					t.Errorf("sending message %d: %v", next-1, err)
				}
			}
			var befores int
			var total int64
			before := func() {
				befores++
				if befores%2 == 0 {
					send() // before this one is written
				}
			}
			delivered := func(n int64) {
				total += n
				if befores%2 == 1 && total == int64(len(want)) {
					send() // after this one was written
				}
			}
			send()
			// As proxyCopy calls it (without TCP_INQ each message is
			// followed by a read that may find the next: heldReads in a
			// row make it return and come back).
			calls := 0
			var full bool
			var err error
			for err == nil && !full && calls < 2*msgs {
				full, err = readCopy(e.out, e.rc, inq, before, delivered)
				calls++
			}
			if err != io.EOF || full {
				t.Fatalf("readCopy = %v, %v after %d of %d messages; want the messages and the end (io.EOF)", full, err, befores, msgs)
			}
			if inq && calls != 1 {
				t.Errorf("readCopy was called %d times for %d messages; want one call (one wait) for all", calls, msgs)
			}
			if befores != msgs {
				t.Errorf("before called %d times; want once per message (%d)", befores, msgs)
			}
			if total != int64(len(want)) {
				t.Errorf("counted %d bytes; want %d", total, len(want))
			}
			if got := e.delivered(t); !bytes.Equal(got, want) {
				t.Errorf("delivered %d bytes, not the %d sent in order", len(got), len(want))
			}
		})
	}
}

// Without TCP_INQ (the kernel refuses it), a read that took a message
// and the end of stream queued after it returns the message: the read
// after it finds the end, which nothing signals again; readCopy must
// not wait in between.
func TestReadCopyEndWithoutInq(t *testing.T) {
	e := newHeldEnds(t, false)
	if _, err := e.srcW.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := e.srcW.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // both are in srcR's socket
	var total int64
	_, err := readCopy(e.out, e.rc, false, func() {}, func(n int64) { total += n })
	if err != io.EOF {
		t.Fatalf("readCopy = %v; want io.EOF at the source's end", err)
	}
	if got := e.delivered(t); string(got) != "last words" || total != int64(len(got)) {
		t.Errorf("delivered %q, counted %d; want \"last words\", 10", got, total)
	}
}

// A message after this direction was quiet for longer than the idle
// timeout (the other one busy, so the connection stays) is delivered:
// the write deadline the last message armed has passed, and the copy
// arms it again (before) before writing the message inside the wait.
// The wait itself ends at read deadlines meanwhile (the idle clock).
func TestCopyMessageAfterQuietDirection(t *testing.T) {
	const idle = 100 * time.Millisecond
	srcW, srcR := tcpPair(t)
	dstW, dstR := tcpPair(t)
	var total atomic.Int64
	errc := runCopy(proxyCopy, dstW, srcR, idle, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}), &total)
	dstR.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, pause := range []time.Duration{0, 4 * idle} {
		time.Sleep(pause)
		m := heldMsg(i)
		if _, err := srcW.Write(m); err != nil {
			t.Fatal(err)
		}
		readc := make(chan error, 1)
		go func() {
			buf := make([]byte, len(m))
			_, err := io.ReadFull(dstR, buf)
			if err == nil && !bytes.Equal(buf, m) {
				err = fmt.Errorf("read %q; want %q", buf, m)
			}
			readc <- err
		}()
		select {
		case err := <-readc:
			if err != nil {
				t.Fatalf("message %d after %v: %v", i, pause, err)
			}
		case err := <-errc:
			t.Fatalf("message %d after %v: the copy ended: %v", i, pause, err)
		}
	}
	srcW.CloseWrite()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("copy = %v; want nil at the source's end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the copy did not end at the source's end")
	}
}

// Requests and responses through both directions of a copy (two
// proxyCopy, client to server and back), one exchange at a time and
// then two in flight, arrive whole and in order: each message ends a
// wait held since the last one.
func TestCopyPingPong(t *testing.T) {
	client, cR := tcpPair(t) // the proxy's client side is cR
	upW, server := tcpPair(t)
	var in, out atomic.Int64
	count := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	toUp := runCopy(proxyCopy, upW, cR, time.Hour, count, &in)
	toClient := runCopy(proxyCopy, cR, upW, time.Hour, count, &out)
	deadline := time.Now().Add(20 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	const rounds = 400
	srvErr := make(chan error, 1)
	go func() {
		// Echo each request back, its first byte apart from the rest.
		buf := make([]byte, len(heldMsg(0)))
		for range rounds {
			if _, err := io.ReadFull(server, buf); err != nil {
				srvErr <- err
				return
			}
			if _, err := server.Write(buf[:1]); err != nil {
				srvErr <- err
				return
			}
			if _, err := server.Write(buf[1:]); err != nil {
				srvErr <- err
				return
			}
		}
		srvErr <- server.CloseWrite()
	}()
	buf := make([]byte, len(heldMsg(0)))
	for i := range rounds {
		if i < rounds/2 || i%2 == 0 {
			if _, err := client.Write(heldMsg(i)); err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
		}
		if i >= rounds/2 && i%2 == 0 && i+1 < rounds {
			// Two in flight: the next request before this answer.
			if _, err := client.Write(heldMsg(i + 1)); err != nil {
				t.Fatalf("request %d: %v", i+1, err)
			}
		}
		if _, err := io.ReadFull(client, buf); err != nil || !bytes.Equal(buf, heldMsg(i)) {
			t.Fatalf("answer %d: %q, %v; want %q", i, buf, err, heldMsg(i))
		}
	}
	client.CloseWrite()
	if err := <-srvErr; err != nil {
		t.Fatalf("server: %v", err)
	}
	for _, errc := range []<-chan error{toUp, toClient} {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("copy = %v; want nil at the end", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a direction of the copy did not end at its source's end")
		}
	}
	if want := int64(rounds * len(heldMsg(0))); in.Load() != want || out.Load() != want {
		t.Errorf("counted %d in, %d out; want %d each", in.Load(), out.Load(), want)
	}
}

// A Close of the source while it keeps sending (each read finds more:
// here, without TCP_INQ, the next message is sent as the last is
// delivered, and the read after it finds it) returns once readCopy comes
// back, not when the source stops: one wait makes at most heldReads
// reads in a row. Else the Close (an abort's, which closes the other
// socket after) would wait for as long as the source sends.
func TestReadCopyCloseWhileSourceSends(t *testing.T) {
	e := newHeldEnds(t, false)
	const limit = 20000 // messages at most: then the source stops
	var (
		sent    int
		stopped atomic.Bool // the source sent limit messages
		closed  atomic.Bool // srcR's Close returned
		closing = make(chan struct{})
		start   = make(chan struct{})
		result  = make(chan bool, 1) // stopped, when the Close returned
	)
	go func() {
		<-start
		close(closing)
		e.srcR.Close()
		result <- stopped.Load()
		closed.Store(true)
	}()
	send := func() {
		if closed.Load() {
			return
		}
		if sent == limit {
			stopped.Store(true)
			return
		}
		if _, err := e.srcW.Write(heldMsg(sent)); err != nil {
			t.Errorf("sending message %d: %v", sent, err)
		}
		sent++
		if sent == 50 {
			close(start)
			<-closing // the Close is about to begin
		}
	}
	send()
	var err error
	for calls := 0; err == nil && calls < 2*limit; calls++ {
		_, err = readCopy(e.out, e.rc, false, func() {}, func(int64) { send() })
	}
	if sent < 50 {
		close(start)
		t.Fatalf("readCopy = %v after %d messages; want it to go on until the source is closed", err, sent)
	}
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("readCopy = %v; want the closed source's error", err)
	}
	if <-result {
		t.Fatalf("the source's Close returned only after the source stopped sending (%d messages)", limit)
	}
}
