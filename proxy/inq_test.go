package proxy

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// TestSysReadInq: the read that takes a socket's last bytes says
// whether the next one has something: more bytes, or an end of stream
// queued after them, which that read took with the bytes (a short read
// nonetheless) and which the poller does not signal again.
func TestSysReadInq(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rc, err := s.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if !enableInq(rc) {
		t.Skip("TCP_INQ not supported by this kernel")
	}
	// read waits for at least want bytes to be queued, then reads once.
	read := func(p []byte, want int) (int, bool, syscall.Errno) {
		t.Helper()
		for range 200 {
			var q [64]byte
			var m int
			rc.Control(func(fd uintptr) { m, _ = sysPeek(fd, q[:]) })
			if m >= want {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		var n int
		var more bool
		var e syscall.Errno
		rc.Control(func(fd uintptr) { n, more, e = sysReadInq(fd, p) })
		return n, more, e
	}
	buf := make([]byte, 64)
	c.Write([]byte("abcdef"))
	if n, more, e := read(buf[:4], 6); n != 4 || !more || e != 0 {
		t.Fatalf("read of 4 of 6 bytes: %d, more %v, %v; want 4, more", n, more, e)
	}
	if n, more, e := read(buf, 2); n != 2 || more || e != 0 {
		t.Fatalf("read of the last 2 bytes: %d, more %v, %v; want 2, no more", n, more, e)
	}
	c.Write([]byte("gh"))
	c.CloseWrite()
	time.Sleep(50 * time.Millisecond) // the FIN is queued after the bytes
	if n, more, e := read(buf, 2); n != 2 || !more || e != 0 {
		t.Fatalf("read of the last 2 bytes before the FIN: %d, more %v, %v; want 2, more (the end of stream)", n, more, e)
	}
	if n, _, e := read(buf, 0); n != 0 || e != 0 {
		t.Fatalf("read after the FIN: %d, %v; want 0 (end of stream)", n, e)
	}
}
