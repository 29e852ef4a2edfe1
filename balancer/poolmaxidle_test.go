package balancer

import (
	"net"
	"testing"
)

// TestPoolMaxIdleWithDryEndpoints: MaxIdle holds when the least recently
// used endpoints have no idle connection left (all in use or closed by
// their users): Put drops a connection of the next endpoint instead of
// only forgetting an empty one.
func TestPoolMaxIdleWithDryEndpoints(t *testing.T) {
	dry := []*echoServer{newEchoServer(t, nil), newEchoServer(t, nil)}
	busy := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{MaxIdle: 2})
	for _, s := range dry {
		pc, _ := get(t, p, s.addr)
		p.Put(pc)
		pc, _ = get(t, p, s.addr) // the endpoint is known, its list empty
		pc.Conn.Close()
	}
	var pcs []PooledConn[net.Conn]
	for range 4 {
		pc, _ := get(t, p, busy.addr)
		pcs = append(pcs, pc)
	}
	for _, pc := range pcs {
		p.Put(pc)
	}
	if st := p.Stats(); st.Idle != 2 {
		t.Errorf("idle = %d; want MaxIdle (2)", st.Idle)
	}
	busy.waitEOFs(t, 2) // the two oldest were closed
}
