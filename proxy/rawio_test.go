package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// A raw connection moves bytes both ways as net.Conn does: a write
// larger than the socket buffers waits for the reader and delivers every
// byte in order, reads see the peer's bytes and then io.EOF.
func TestRawTCPConnMovesBytes(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawTCPConn(a)
	if _, ok := ra.(*rawTCPConn); !ok {
		t.Fatalf("newRawTCPConn(%T) = %T; want a *rawTCPConn", a, ra)
	}
	// Far more than the socket buffers hold: the write must wait for
	// the slow reader (EAGAIN, then the poller) several times.
	want := make([]byte, 8<<20)
	rand.Read(want)
	werr := make(chan error, 1)
	go func() {
		n, err := ra.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		werr <- err
	}()
	got := make([]byte, 0, len(want))
	buf := make([]byte, 4096) // small reads: the writer fills up
	for len(got) < len(want) {
		n, err := b.Read(buf)
		if err != nil {
			t.Fatalf("reading what the raw side wrote after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	if err := <-werr; err != nil {
		t.Fatalf("raw write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes read differ from the bytes the raw side wrote")
	}

	// The other way, then the end of the stream.
	go func() {
		b.Write([]byte("hello"))
		b.CloseWrite()
	}()
	rb, err := io.ReadAll(ra)
	if err != nil || string(rb) != "hello" {
		t.Fatalf("raw read = %q, %v; want \"hello\" then io.EOF", rb, err)
	}
	if n, err := ra.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("raw read after the end = %d, %v; want 0, io.EOF", n, err)
	}
}

// Deadlines hold for raw reads: a read with nothing to read ends in a
// timeout at the deadline.
func TestRawTCPConnDeadlines(t *testing.T) {
	a, _ := tcpPair(t)
	ra := newRawTCPConn(a)
	ra.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := ra.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("raw read past its deadline: %v; want a timeout (os.ErrDeadlineExceeded)", err)
	}

	// A write cut short by its deadline: TestRawTCPConnWriteDeadlineCount.
}

// Errors come back as net.Conn's would: a reset names the errno and the
// addresses, a closed connection is net.ErrClosed.
func TestRawTCPConnErrors(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawTCPConn(a)
	b.SetLinger(0) // close sends a reset
	b.Close()      // the read waits for the reset if it has not arrived
	_, err := ra.Read(make([]byte, 10))
	var oe *net.OpError
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &oe) || oe.Op != "read" || oe.Addr == nil {
		t.Fatalf("raw read after a reset: %v; want a read *net.OpError naming the peer, wrapping ECONNRESET", err)
	}
	ra.Close()
	if _, err := ra.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("raw read on a closed connection: %v; want net.ErrClosed", err)
	}
	if _, err := ra.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("raw write on a closed connection: %v; want net.ErrClosed", err)
	}
}

// readNoWait answers at once: errWouldBlock with nothing to read, the
// bytes when there are some.
func TestRawSockReadNoWait(t *testing.T) {
	a, b := tcpPair(t)
	s := newRawSock(a)
	buf := make([]byte, 10)
	if n, err := s.readNoWait(buf); n != 0 || err != errWouldBlock {
		t.Fatalf("readNoWait on a quiet socket = %d, %v; want 0, errWouldBlock", n, err)
	}
	b.Write([]byte("abc"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := s.readNoWait(buf)
		if err == nil {
			if string(buf[:n]) != "abc" {
				t.Fatalf("readNoWait = %q; want \"abc\"", buf[:n])
			}
			break
		}
		if err != errWouldBlock || time.Now().After(deadline) {
			t.Fatalf("readNoWait after the peer wrote: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}
