package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A write to a peer that closed fails as net.Conn's does: EPIPE (or the
// reset before it) in a write *net.OpError, and the process lives on
// (Go ignores SIGPIPE for descriptors other than 1 and 2; the raw
// write(2) raises it as Go's own does).
func TestRawTCPConnWriteToClosedPeer(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawTCPConn(a)
	b.Close() // FIN; the first write draws a reset, a later one EPIPE
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = ra.Write([]byte("after the peer closed"))
		if err == nil {
			time.Sleep(time.Millisecond) // let the reset come back
		}
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" || oe.Addr == nil ||
		!errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("raw write to a closed peer: %v; want a write *net.OpError wrapping EPIPE or ECONNRESET", err)
	}
	// Once the error is there, every write sees EPIPE, as Go's do.
	if _, err := ra.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("raw write after the failed one: %v; want EPIPE", err)
	}
}

// A write cut short by its deadline reports exactly the bytes that went
// out: the peer reads that many, no more, no fewer.
func TestRawTCPConnWriteDeadlineCount(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawTCPConn(a)
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB: more than the buffers
	ra.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := ra.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= len(big) {
		t.Fatalf("raw write past its deadline = %d, %v; want part of %d bytes and os.ErrDeadlineExceeded", n, err, len(big))
	}
	a.CloseWrite()
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("reading what the raw write sent: %v", err)
	}
	if len(got) != n || !bytes.Equal(got, big[:n]) {
		t.Fatalf("the peer read %d bytes; the raw write said %d", len(got), n)
	}
}

// CloseWrite on a rawTCPConn half-closes its own socket: the peer reads
// the end of the stream, and the raw side still reads the peer's bytes.
func TestRawTCPConnCloseWrite(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawTCPConn(a)
	cw, ok := ra.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", ra)
	}
	if _, err := ra.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(b); err != nil || string(got) != "last" {
		t.Fatalf("the peer read %q, %v; want \"last\" then the end", got, err)
	}
	if _, err := ra.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("raw write after CloseWrite: %v; want EPIPE", err)
	}
	b.Write([]byte("reply"))
	b.CloseWrite()
	ra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(ra); err != nil || string(got) != "reply" {
		t.Fatalf("raw read after CloseWrite = %q, %v; want \"reply\" then io.EOF", got, err)
	}
}

// Deadlines as net.Conn keeps them: one already passed fails at once,
// even with bytes waiting; one moved while a read waits takes effect
// (later: the read goes on; past: it ends).
func TestRawTCPConnDeadlineMoves(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawTCPConn(a)
	b.Write([]byte("waiting"))
	time.Sleep(10 * time.Millisecond)
	ra.SetReadDeadline(time.Now().Add(-time.Second))
	if n, err := ra.Read(make([]byte, 10)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("raw read past a passed deadline = %d, %v; want 0, os.ErrDeadlineExceeded", n, err)
	}
	ra.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(ra, make([]byte, len("waiting"))); err != nil {
		t.Fatal(err)
	}

	// Pushed back while waiting: the read outlives the first deadline.
	ra.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 10)
		n, err := ra.Read(buf)
		if err == nil && string(buf[:n]) != "late" {
			err = errors.New("read " + string(buf[:n]))
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	ra.SetReadDeadline(time.Now().Add(time.Hour))
	time.Sleep(200 * time.Millisecond) // past the first deadline
	b.Write([]byte("late"))
	if err := <-done; err != nil {
		t.Fatalf("raw read whose deadline was pushed back: %v; want \"late\"", err)
	}

	// Brought forward while waiting: the read ends.
	ra.SetReadDeadline(time.Time{})
	go func() {
		_, err := ra.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	ra.SetReadDeadline(time.Now())
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("raw read whose deadline passed while it waited: %v; want os.ErrDeadlineExceeded", err)
	}
}

// Errors name the operation as net.Conn's do ("read", "write"), also
// those the RawConn returns (deadline, closed), which it calls
// "raw-read" and "raw-write".
func TestRawTCPConnErrorOps(t *testing.T) {
	a, _ := tcpPair(t)
	ra := newRawTCPConn(a)
	ra.SetDeadline(time.Now().Add(-time.Second))
	_, rerr := ra.Read(make([]byte, 1))
	_, werr := ra.Write([]byte("x"))
	for _, c := range []struct {
		op  string
		err error
	}{{"read", rerr}, {"write", werr}} {
		var oe *net.OpError
		if !errors.As(c.err, &oe) || oe.Op != c.op || !errors.Is(c.err, os.ErrDeadlineExceeded) {
			t.Errorf("raw %s past its deadline: %v; want a %q *net.OpError, os.ErrDeadlineExceeded", c.op, c.err, c.op)
		}
	}
}

// The raw system calls take empty buffers as read(2) and write(2) do
// (rawReadNoWait's callers may pass one): no panic, nothing moved.
func TestRawSysCallsEmpty(t *testing.T) {
	a, _ := tcpPair(t)
	rc, err := a.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n, m int
	var e, f syscall.Errno
	rc.Control(func(fd uintptr) {
		n, e = sysRead(fd, nil)
		m, f = sysWrite(fd, []byte{})
	})
	if n != 0 || e != 0 || m != 0 || f != 0 {
		t.Fatalf("empty read = %d, %v; empty write = %d, %v; want 0, 0", n, e, m, f)
	}
	if n, err := rawReadNoWait(rc, nil); n != 0 || err != nil {
		t.Fatalf("rawReadNoWait(empty) = %d, %v; want 0, nil", n, err)
	}
}

// A rawTCPConn is a net.Conn: several goroutines may read it, and write
// it, at once (net/http gets one on the inbound fallback). Every byte
// still arrives exactly once, and the race detector sees no race on the
// raw read's and write's state.
func TestRawTCPConnConcurrent(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawTCPConn(a)
	const (
		workers = 4
		chunks  = 500
		size    = 64
	)
	// Writers: each chunk is one byte value repeated, so a torn or
	// misdirected write shows.
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			chunk := bytes.Repeat([]byte{byte('a' + w)}, size)
			for i := 0; i < chunks; i++ {
				if n, err := ra.Write(chunk); n != size || err != nil {
					t.Errorf("concurrent raw write = %d, %v", n, err)
					return
				}
			}
		}(w)
	}
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	wg.Wait()
	a.CloseWrite()
	all := <-got
	if len(all) != workers*chunks*size {
		t.Fatalf("the peer read %d bytes; want %d", len(all), workers*chunks*size)
	}
	for i := 0; i < len(all); i += size {
		if !bytes.Equal(all[i:i+size], bytes.Repeat(all[i:i+1], size)) {
			t.Fatalf("chunk at %d is torn: %q", i, all[i:i+size])
		}
	}

	// Readers: the peer's bytes are all read, once.
	want := make([]byte, workers*chunks*size)
	for i := range want {
		want[i] = byte(i)
	}
	go func() {
		b.Write(want)
		b.Close()
	}()
	var mu sync.Mutex
	total := 0
	sum := 0
	for r := 0; r < workers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for {
				n, err := ra.Read(buf)
				mu.Lock()
				total += n
				for _, c := range buf[:n] {
					sum += int(c)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	wantSum := 0
	for _, c := range want {
		wantSum += int(c)
	}
	if total != len(want) || sum != wantSum {
		t.Fatalf("concurrent raw reads got %d bytes (sum %d); want %d (sum %d)", total, sum, len(want), wantSum)
	}
}

// Raw I/O and Go's own order memory the same way for the race detector:
// what one goroutine did before writing bytes (raw or not) happens before
// what another does after reading them (not raw or raw). Without -race
// this tests nothing; with it, a missing order is a reported race.
func TestRawIORaceOrder(t *testing.T) {
	for _, c := range []struct {
		name      string
		rawWriter bool
	}{{"raw write, net.Conn read", true}, {"net.Conn write, raw read", false}} {
		t.Run(c.name, func(t *testing.T) {
			a, b := tcpPair(t)
			w, r := net.Conn(b), newRawTCPConn(a)
			if c.rawWriter {
				w, r = newRawTCPConn(a), net.Conn(b)
			}
			shared := 0
			got := make(chan int, 1)
			go func() {
				if _, err := r.Read(make([]byte, 1)); err != nil {
					t.Error(err)
				}
				got <- shared // ordered after the write by the byte
			}()
			shared = 1
			if _, err := w.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if v := <-got; v != 1 {
				t.Fatalf("the reader saw %d; want 1", v)
			}
		})
	}
}

// Empty reads and writes answer as net.Conn's: nothing moved, no error
// on an open connection, net.ErrClosed on a closed one; an empty write
// past its deadline times out.
func TestRawTCPConnEmpty(t *testing.T) {
	a, _ := tcpPair(t)
	ra := newRawTCPConn(a)
	if n, err := ra.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty raw read = %d, %v; want 0, nil", n, err)
	}
	if n, err := ra.Write(nil); n != 0 || err != nil {
		t.Fatalf("empty raw write = %d, %v; want 0, nil", n, err)
	}
	ra.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := ra.Write(nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("empty raw write past its deadline: %v; want os.ErrDeadlineExceeded", err)
	}
	ra.Close()
	for _, c := range []struct {
		op string
		f  func([]byte) (int, error)
	}{{"read", ra.Read}, {"write", ra.Write}} {
		var oe *net.OpError
		if _, err := c.f(nil); !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != c.op {
			t.Errorf("empty raw %s on a closed connection: %v; want a %q *net.OpError, net.ErrClosed", c.op, err, c.op)
		}
	}
}
