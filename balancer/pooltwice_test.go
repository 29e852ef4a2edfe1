package balancer

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
)

// TestPoolPutTwice: a connection given back twice is pooled once: two
// Gets must never hand the same connection to two users at once.
func TestPoolPutTwice(t *testing.T) {
	for _, watch := range []bool{false, true} {
		srv := newEchoServer(t, nil)
		p := newTestPool(t, PoolConfig[net.Conn]{WatchClose: watch})
		pc, _ := get(t, p, srv.addr)
		roundTrip(t, pc.Conn)
		p.Put(pc)
		p.Put(pc)
		if st := p.Stats(); st.Idle != 1 {
			t.Errorf("watch %v: %d idle after putting one connection twice; want 1", watch, st.Idle)
		}
		a, _ := get(t, p, srv.addr)
		b, _ := get(t, p, srv.addr)
		if a.Conn == b.Conn {
			t.Errorf("watch %v: two Gets handed out the same connection", watch)
		}
		a.Conn.Close()
		b.Conn.Close()
	}
}

// uncomparableConn is a connection type whose values cannot be compared.
type uncomparableConn struct{ b []byte }

func (uncomparableConn) Close() error { return nil }

// TestPoolPutUncomparable: Put's check for a connection given back twice
// does not panic on a connection type that cannot be compared.
func TestPoolPutUncomparable(t *testing.T) {
	p, err := NewPool(PoolConfig[io.Closer]{Dial: func(context.Context, netip.AddrPort) (io.Closer, error) {
		return uncomparableConn{b: []byte("x")}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addr := netip.MustParseAddrPort("198.18.0.1:80")
	for range 2 {
		pc, _, err := p.Get(context.Background(), addr)
		if err != nil {
			t.Fatal(err)
		}
		p.Put(pc)
		p.Put(pc)
	}
}
