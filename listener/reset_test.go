package listener

import (
	"net"
	"testing"
	"time"
)

// TestResetBeforeAccept: clients that connect and reset (SO_LINGER 0)
// before Accept runs must not break the listener: Accept hands each back
// (the caller then sees the reset) or drops it, never fails, and the next
// live connection is accepted with its original destination.
func TestResetBeforeAccept(t *testing.T) {
	needRoot(t, "IP_TRANSPARENT needs CAP_NET_ADMIN")
	for _, tc := range []struct{ network, addr string }{
		{"tcp4", "127.0.0.1:0"},
		{"tcp6", "[::1]:0"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			l, err := Listen(Config{Name: "inbound", Network: tc.network, Addr: tc.addr, Mode: ModeTProxy, AllowSelf: true})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			const resets = 5
			for range resets {
				c, err := net.Dial(tc.network, l.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
			// On loopback the RST reaches the queued socket within close.
			live, err := net.Dial(tc.network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer live.Close()
			want := live.LocalAddr().String()
			deadline := time.Now().Add(10 * time.Second)
			for n := 0; ; n++ {
				if n > resets || time.Now().After(deadline) {
					t.Fatalf("the live connection was not accepted after %d accepts", n)
				}
				res := acceptAsync(l)
				var r acceptResult
				select {
				case r = <-res:
				case <-time.After(10 * time.Second):
					t.Fatal("Accept blocked 10s with a live connection queued")
				}
				if r.err != nil {
					t.Fatalf("Accept after reset clients = %v; want no error", r.err)
				}
				if r.c.OriginalDst != l.Addr() {
					t.Errorf("OriginalDst = %s; want %s", r.c.OriginalDst, l.Addr())
				}
				ra := r.c.RemoteAddr()
				r.c.Close()
				if ra != nil && ra.String() == want {
					break
				}
			}
			if s := l.Stats(); s.LoopsRefused != 0 {
				t.Errorf("stats = %+v; want no loop refusals", s)
			}
		})
	}
}
