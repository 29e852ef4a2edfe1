package balancer

import (
	"context"
	"errors"
	"net"
	"testing"
)

// TestPoolDialAndStale: Dial opens a new connection even when an idle
// one waits (it stays idle), counted as a dial; Stale closes a reused
// connection its user found dead and counts it stale, and it is not
// handed out again.
func TestPoolDialAndStale(t *testing.T) {
	srv := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{})
	pc, _ := get(t, p, srv.addr)
	roundTrip(t, pc.Conn)
	p.Put(pc)
	fresh, err := p.Dial(context.Background(), srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, fresh.Conn)
	if n := srv.accepted.Load(); n != 2 {
		t.Errorf("server accepted %d connections; want 2 (Dial never reuses)", n)
	}
	if st := p.Stats(); st.Dials != 2 || st.Idle != 1 {
		t.Errorf("stats = %+v; want 2 dials, the first connection still idle", st)
	}
	old, reused := get(t, p, srv.addr)
	if !reused {
		t.Fatal("Get dialed; want the idle connection")
	}
	p.Stale(old)
	if _, err := old.Conn.Write([]byte("x\n")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Stale: %v; want the connection closed", err)
	}
	p.Put(fresh)
	if pc, _ := get(t, p, srv.addr); pc.Conn != fresh.Conn {
		t.Error("Get after Stale did not hand out the connection put back")
	}
	if st := p.Stats(); st.Stale != 1 || st.Dials != 2 {
		t.Errorf("stats = %+v; want 1 stale, 2 dials", st)
	}
	p.Close()
	if _, err := p.Dial(context.Background(), srv.addr); !errors.Is(err, ErrClosed) {
		t.Errorf("Dial on a closed pool: %v; want ErrClosed", err)
	}
}
