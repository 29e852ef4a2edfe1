package netfilter

import (
	"context"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNS runs f on a thread switched into the namespace at path; sockets
// created by f stay in that namespace.
func inNS(t *testing.T, path string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left locked and so discarded when the goroutine
		// ends: its namespace is never restored.
		ns, err := netns.GetFromPath(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		f()
	}()
	<-done
}

// addVeth gives the namespace an interface with 198.18.0.1/24 so that
// 198.18.0.9 is routable (nothing answers there).
func addVeth(t *testing.T, h *Handle) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mp0"}, PeerName: "mp1"}
	if err := h.nl.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"mp0", "mp1"} {
		l, err := h.nl.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	l, _ := h.nl.LinkByName("mp0")
	addr, _ := netlink.ParseAddr("198.18.0.1/24")
	if err := h.nl.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
}

// TestOutboundCapture checks in the kernel that an app's connection to a
// remote address lands on the outbound listener, in both modes.
func TestOutboundCapture(t *testing.T) {
	for _, mode := range []Mode{ModeRedirect, ModeTProxy} {
		t.Run(string(mode), func(t *testing.T) {
			h, path := openNS(t)
			addVeth(t, h)
			c := testConfig(mode)
			if err := h.Apply(c); err != nil {
				t.Fatal(err)
			}
			var ln net.Listener
			var conn net.Conn
			var dialErr error
			inNS(t, path, func() {
				lc := net.ListenConfig{}
				if mode == ModeTProxy {
					lc.Control = func(_, _ string, rc syscall.RawConn) error {
						var serr error
						rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
						return serr
					}
				}
				var err error
				ln, err = lc.Listen(context.Background(), "tcp4", "127.0.0.1:4140")
				if err != nil {
					t.Error(err)
					return
				}
				d := net.Dialer{Timeout: 5 * time.Second}
				conn, dialErr = d.Dial("tcp4", "198.18.0.9:80")
			})
			if ln == nil {
				return
			}
			defer ln.Close()
			if dialErr != nil {
				t.Fatalf("dial 198.18.0.9:80 with %s rules: %v (not captured?)", mode, dialErr)
			}
			defer conn.Close()
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
			got, err := ln.Accept()
			if err != nil {
				t.Fatalf("outbound listener accepted nothing: %v", err)
			}
			defer got.Close()
			if mode == ModeTProxy {
				if la := got.LocalAddr().String(); la != "198.18.0.9:80" {
					t.Errorf("tproxy accepted conn local address = %s; want the original destination 198.18.0.9:80", la)
				}
			}
		})
	}
}
