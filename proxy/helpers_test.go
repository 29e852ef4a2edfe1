package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// handled is a client connection whose server side runs through Handle.
type handled struct {
	client *net.TCPConn
	done   chan struct{} // closed when Handle returns
}

// handleOne dials a fresh loopback listener, passes the accepted conn to
// srv.Handle with original destination orig, and returns the client side.
func handleOne(t testing.TB, srv *Server, orig netip.AddrPort) handled {
	t.Helper()
	front, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	client, err := net.DialTCP("tcp4", nil, front.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	sc, err := front.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	h := handled{client: client, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		srv.Handle(context.Background(), sc, orig)
	}()
	t.Cleanup(func() {
		client.Close()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			t.Errorf("Handle did not return 10s after the client closed")
		}
	})
	return h
}

// waitDone waits for Handle to return.
func (h handled) waitDone(t testing.TB) {
	t.Helper()
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Handle did not return within 10s")
	}
}

// upstream is a loopback server running fn on each accepted conn.
func upstream(t testing.TB, fn func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// echo copies everything back and half-closes on EOF.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

// expectClosed asserts the proxy closed the client conn (EOF or reset)
// within 10s.
func expectClosed(t testing.TB, c *net.TCPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatalf("connection still open after 10s (read %d bytes)", n)
	}
}
