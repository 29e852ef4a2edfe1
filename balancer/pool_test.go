package balancer

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// echoServer is a line echo server on loopback. It counts connections
// and reports each one the client closes.
type echoServer struct {
	addr     netip.AddrPort
	accepted atomic.Int64
	eofs     chan struct{} // one per connection the client closed
	// closeAfterReply, when set, makes the server close each connection
	// right after its first reply; reset makes that close a RST.
	closeAfterReply, reset bool
}

func newEchoServer(t *testing.T, configure func(*echoServer)) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &echoServer{addr: netip.MustParseAddrPort(ln.Addr().String()), eofs: make(chan struct{}, 100)}
	if configure != nil {
		configure(s)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			go s.serve(c.(*net.TCPConn))
		}
	}()
	return s
}

func (s *echoServer) serve(c *net.TCPConn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			s.eofs <- struct{}{}
			return
		}
		if _, err := c.Write([]byte(line)); err != nil {
			return
		}
		if s.closeAfterReply {
			if s.reset {
				c.SetLinger(0)
			}
			return
		}
	}
}

// waitEOFs waits for n client closes.
func (s *echoServer) waitEOFs(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-s.eofs:
		case <-time.After(2 * time.Second):
			t.Fatalf("server saw %d client closes; want %d", i, n)
		}
	}
}

func tcpDial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr.String())
}

func newTestPool(t *testing.T, cfg PoolConfig[net.Conn]) *Pool[net.Conn] {
	t.Helper()
	if cfg.Dial == nil {
		cfg.Dial = tcpDial
	}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// roundTrip sends a line and reads it back.
func roundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := bufioReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("read = %q, %v; want ping", buf, err)
	}
}

func bufioReadFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func get(t *testing.T, p *Pool[net.Conn], addr netip.AddrPort) (PooledConn[net.Conn], bool) {
	t.Helper()
	pc, reused, err := p.Get(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	return pc, reused
}

func TestPoolReuse(t *testing.T) {
	srv := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{})
	for i := range 10 {
		pc, reused := get(t, p, srv.addr)
		if reused != (i > 0) {
			t.Errorf("Get %d: reused = %v; want %v", i, reused, i > 0)
		}
		roundTrip(t, pc.Conn)
		p.Put(pc)
	}
	if n := srv.accepted.Load(); n != 1 {
		t.Errorf("server accepted %d connections; want 1", n)
	}
	if st := p.Stats(); st.Dials != 1 || st.Reuses != 9 || st.Idle != 1 || st.Endpoints != 1 {
		t.Errorf("stats = %+v; want 1 dial, 9 reuses, 1 idle, 1 endpoint", st)
	}
}

func TestPoolIdleTimeout(t *testing.T) {
	srv := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{IdleTimeout: 50 * time.Millisecond})
	pc, _ := get(t, p, srv.addr)
	p.Put(pc)
	// The sweeper closes it once idle too long; the server sees that.
	srv.waitEOFs(t, 1)
	if _, reused := get(t, p, srv.addr); reused {
		t.Error("Get after the idle timeout reused a connection")
	}
	if st := p.Stats(); st.Dials != 2 {
		t.Errorf("dials = %d; want 2", st.Dials)
	}
}

func TestPoolMaxIdlePerEndpoint(t *testing.T) {
	srv := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{MaxIdlePerEndpoint: 2})
	var pcs []PooledConn[net.Conn]
	for range 3 {
		pc, _ := get(t, p, srv.addr)
		roundTrip(t, pc.Conn)
		pcs = append(pcs, pc)
	}
	for _, pc := range pcs {
		p.Put(pc)
	}
	srv.waitEOFs(t, 1)
	if st := p.Stats(); st.Idle != 2 {
		t.Errorf("idle = %d; want 2", st.Idle)
	}
}

func TestPoolMaxLifetime(t *testing.T) {
	srv := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{MaxLifetime: 100 * time.Millisecond, IdleTimeout: -1})
	pc, _ := get(t, p, srv.addr)
	p.Put(pc)
	pc, reused := get(t, p, srv.addr)
	if !reused {
		t.Fatal("young connection not reused")
	}
	time.Sleep(120 * time.Millisecond)
	p.Put(pc) // past its lifetime: closed, not pooled
	srv.waitEOFs(t, 1)
	if _, reused := get(t, p, srv.addr); reused {
		t.Error("connection past its lifetime reused")
	}
}

func TestPoolLRUEvictionClosesConns(t *testing.T) {
	srvs := []*echoServer{newEchoServer(t, nil), newEchoServer(t, nil), newEchoServer(t, nil)}
	p := newTestPool(t, PoolConfig[net.Conn]{MaxEndpoints: 2})
	for _, s := range srvs {
		pc, _ := get(t, p, s.addr)
		p.Put(pc)
	}
	srvs[0].waitEOFs(t, 1) // least recently used endpoint evicted
	if st := p.Stats(); st.Endpoints != 2 || st.Idle != 2 {
		t.Errorf("stats = %+v; want 2 endpoints, 2 idle", st)
	}
	if _, reused := get(t, p, srvs[2].addr); !reused {
		t.Error("connection of a kept endpoint not reused")
	}
}

// TestPoolNeverHandsOutConnsThePeerClosed: the server closes (FIN, then
// RST) each connection after one reply; the pooled connection is found
// dead before reuse, counted stale, and the caller gets a working one.
func TestPoolNeverHandsOutConnsThePeerClosed(t *testing.T) {
	for _, reset := range []bool{false, true} {
		name := "FIN"
		if reset {
			name = "RST"
		}
		t.Run(name, func(t *testing.T) {
			srv := newEchoServer(t, func(s *echoServer) { s.closeAfterReply, s.reset = true, reset })
			p := newTestPool(t, PoolConfig[net.Conn]{})
			for i := range 5 {
				pc, reused := get(t, p, srv.addr)
				if reused {
					t.Fatalf("round %d: a connection the server closed was handed out", i)
				}
				roundTrip(t, pc.Conn)
				// Wait until the close has reached us.
				waitPeerClosed(t, pc.Conn)
				p.Put(pc)
			}
			if st := p.Stats(); st.Stale != 4 || st.Dials != 5 || st.Reuses != 0 {
				t.Errorf("stats = %+v; want 4 stale, 5 dials, 0 reuses", st)
			}
		})
	}
}

// waitPeerClosed polls ConnUsable until the peer's close arrived.
func waitPeerClosed(t *testing.T, c net.Conn) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for ConnUsable(c) {
		if time.Now().After(deadline) {
			t.Fatal("peer close never seen")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConnUsable(t *testing.T) {
	srv := newEchoServer(t, nil)
	c, err := tcpDial(context.Background(), srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	if !ConnUsable(c) {
		t.Error("idle live connection: ConnUsable = false; want true")
	}
	c.Write([]byte("x\n"))
	time.Sleep(50 * time.Millisecond)
	if !ConnUsable(c) {
		t.Error("connection with unread data: ConnUsable = false; want true")
	}
	buf := make([]byte, 2)
	bufioReadFull(c, buf)
	if string(buf) != "x\n" {
		t.Errorf("the peek consumed data: read %q; want x\\n", buf)
	}
	c.Close()
	if ConnUsable(c) {
		t.Error("closed connection: ConnUsable = true; want false")
	}
}

func TestPoolClose(t *testing.T) {
	srv := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{})
	pc1, _ := get(t, p, srv.addr)
	pc2, _ := get(t, p, srv.addr)
	p.Put(pc1)
	p.Close()
	srv.waitEOFs(t, 1)
	if _, _, err := p.Get(context.Background(), srv.addr); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: err = %v; want ErrClosed", err)
	}
	p.Put(pc2) // closes it
	srv.waitEOFs(t, 1)
	p.Close()
}

func TestPoolDialError(t *testing.T) {
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	p := newTestPool(t, PoolConfig[net.Conn]{})
	if _, _, err := p.Get(context.Background(), addr); err == nil {
		t.Error("Get to a closed port: err = nil; want a dial error")
	}
	if _, err := NewPool(PoolConfig[net.Conn]{}); err == nil {
		t.Error("NewPool without Dial: err = nil; want an error")
	}
}

// TestPoolMaxIdle: the idle connections of all endpoints together stay
// within MaxIdle; the least recently used endpoint's go first.
func TestPoolMaxIdle(t *testing.T) {
	srvs := []*echoServer{newEchoServer(t, nil), newEchoServer(t, nil)}
	p := newTestPool(t, PoolConfig[net.Conn]{MaxIdle: 3})
	var pcs []PooledConn[net.Conn]
	for _, s := range srvs {
		for range 2 {
			pc, _ := get(t, p, s.addr)
			pcs = append(pcs, pc)
		}
	}
	for _, pc := range pcs {
		p.Put(pc)
	}
	srvs[0].waitEOFs(t, 1) // the first endpoint's oldest
	if st := p.Stats(); st.Idle != 3 {
		t.Errorf("idle = %d; want 3", st.Idle)
	}
}

// TestPoolCloseIdle closes the idle connections and keeps the pool open.
func TestPoolCloseIdle(t *testing.T) {
	srv := newEchoServer(t, nil)
	p := newTestPool(t, PoolConfig[net.Conn]{})
	pc, _ := get(t, p, srv.addr)
	p.Put(pc)
	p.CloseIdle()
	srv.waitEOFs(t, 1)
	if _, reused := get(t, p, srv.addr); reused {
		t.Error("a closed idle connection was reused")
	}
	if st := p.Stats(); st.Idle != 0 || st.Dials != 2 {
		t.Errorf("stats = %+v; want 0 idle, 2 dials", st)
	}
}

// acceptOne listens on loopback and hands over the one connection it
// accepts; the listener closes with the test.
func acceptOne(t *testing.T) (netip.AddrPort, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), accepted
}

// TestPoolWatchClose: with WatchClose, an idle connection whose peer
// closes it is closed and dropped at once, before any Get.
func TestPoolWatchClose(t *testing.T) {
	addr, accepted := acceptOne(t)
	p := newTestPool(t, PoolConfig[net.Conn]{WatchClose: true})
	pc, _ := get(t, p, addr)
	p.Put(pc)
	// Reused once, and back: still watched.
	pc, reused := get(t, p, addr)
	if !reused {
		t.Fatal("idle connection not reused")
	}
	p.Put(pc)
	srv := <-accepted
	srv.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Idle != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the idle connection the peer closed is still pooled after 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := p.Stats(); st.Stale != 1 || st.Endpoints != 0 {
		t.Errorf("stats = %+v; want 1 stale, no endpoint", st)
	}
	// Its socket is closed: a write fails (the second at the latest,
	// once the peer's reset is back).
	if _, err := pc.Conn.Write([]byte("x")); err == nil {
		if _, err := pc.Conn.Write([]byte("x")); err == nil {
			t.Error("the dropped connection is still open")
		}
	}
}

// TestPoolWatchHangUpWhileInUse: a watched connection whose peer hangs up
// while it is in use (between Get and Put; the edge-triggered event comes
// only then) must not be pooled and handed out again.
func TestPoolWatchHangUpWhileInUse(t *testing.T) {
	addr, accepted := acceptOne(t)
	p := newTestPool(t, PoolConfig[net.Conn]{WatchClose: true})
	pc, _ := get(t, p, addr)
	p.Put(pc) // registered with the watcher
	pc, reused := get(t, p, addr)
	if !reused {
		t.Fatal("idle connection not reused")
	}
	srv := <-accepted
	srv.Close() // hang-up while in use
	waitPeerClosed(t, pc.Conn)
	// Give the watcher's goroutine time to take the event (it comes
	// once; without the fix it is dropped).
	deadline := time.Now().Add(2 * time.Second)
	for {
		p.mu.Lock()
		_, hung := p.hungUp[pc.watchFD-1]
		p.mu.Unlock()
		if hung || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.Put(pc)
	pc2, reused := get(t, p, addr)
	defer pc2.Conn.Close()
	if reused {
		t.Fatal("a connection whose peer hung up while in use was pooled and handed out again")
	}
	if st := p.Stats(); st.Stale != 1 {
		t.Errorf("stats = %+v; want 1 stale", st)
	}
}

// spareDialer is a Dial that tells pre-connects (IsPreConnect) apart:
// it counts them and runs hold before dialing them.
type spareDialer struct {
	spares atomic.Int64
	hold   func(ctx context.Context)
}

func (d *spareDialer) dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	if IsPreConnect(ctx) {
		d.spares.Add(1)
		if d.hold != nil {
			d.hold(ctx)
		}
		return (&net.Dialer{}).Dial("tcp", addr.String()) // even if ctx is done: Put must close it
	}
	return tcpDial(ctx, addr)
}

// waitIdle waits until the pool holds n idle connections.
func waitIdle(t *testing.T, p *Pool[net.Conn], n int) {
	t.Helper()
	for range 200 {
		if p.Stats().Idle == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pool holds %d idle connections; want %d", p.Stats().Idle, n)
}

func TestPoolPreConnect(t *testing.T) {
	// A Get that finds a known endpoint dry (its connections all in use)
	// has the pool dial a spare; the next Get finds it, over a real
	// socket.
	srv := newEchoServer(t, nil)
	d := &spareDialer{}
	p := newTestPool(t, PoolConfig[net.Conn]{Dial: d.dial, PreConnect: true})
	a, _ := get(t, p, srv.addr) // a new endpoint: no spare
	p.Put(a)
	a, reused := get(t, p, srv.addr) // not dry: it had one idle
	if !reused {
		t.Fatal("the idle connection was not reused")
	}
	if n := d.spares.Load(); n != 0 {
		t.Fatalf("%d spares dialed before the pool ran dry; want none", n)
	}
	b, reused := get(t, p, srv.addr) // dry: its own dial, and a spare
	if reused {
		t.Fatal("a Get reused a connection; the pool had none idle")
	}
	waitIdle(t, p, 1)
	spare, reused := get(t, p, srv.addr)
	if !reused || spare.Conn == a.Conn || spare.Conn == b.Conn {
		t.Fatalf("Get after the pool ran dry: reused=%v; want the spare", reused)
	}
	roundTrip(t, spare.Conn)
	// b's and the spare's dials ran at once: the server may accept the
	// spare (which just answered) before b. Wait for both.
	for deadline := time.Now().Add(5 * time.Second); srv.accepted.Load() < 3 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if got := srv.accepted.Load(); got < 3 {
		t.Fatalf("server accepted %d connections; want a, b and the spare", got)
	}
	st := p.Stats()
	if st.PreConnects < 1 || st.Dials < 3 {
		t.Fatalf("stats %+v; want pre-connects counted, in dials too", st)
	}
	for _, c := range []net.Conn{a.Conn, b.Conn, spare.Conn} {
		c.Close()
	}
}

func TestPoolPreConnectNotForSequentialUse(t *testing.T) {
	// One request after another never finds the pool dry: one
	// connection, no spare.
	srv := newEchoServer(t, nil)
	d := &spareDialer{}
	p := newTestPool(t, PoolConfig[net.Conn]{Dial: d.dial, PreConnect: true})
	for range 5 {
		pc, _ := get(t, p, srv.addr)
		roundTrip(t, pc.Conn)
		p.Put(pc)
	}
	p.Close()
	if n, acc := d.spares.Load(), srv.accepted.Load(); n != 0 || acc != 1 {
		t.Fatalf("sequential use: %d spares, %d connections accepted; want 0 and 1", n, acc)
	}
}

func TestPoolPreConnectOneInFlight(t *testing.T) {
	// While a spare's dial is in flight, Gets that find the endpoint dry
	// dial their own but start no second spare.
	srv := newEchoServer(t, nil)
	gate := make(chan struct{})
	d := &spareDialer{hold: func(context.Context) { <-gate }}
	p, err := NewPool(PoolConfig[net.Conn]{Dial: d.dial, PreConnect: true})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := get(t, p, srv.addr)
	p.Put(first)
	first, _ = get(t, p, srv.addr)
	held := []net.Conn{first.Conn}
	for range 5 { // all dry: the first starts the spare, held at the gate
		pc, reused := get(t, p, srv.addr)
		if reused {
			t.Fatal("a Get reused a connection; the pool had none idle")
		}
		held = append(held, pc.Conn)
	}
	close(gate)
	waitIdle(t, p, 1) // the spare, parked
	p.Close()         // waits for every spare's dial
	if n := d.spares.Load(); n != 1 {
		t.Fatalf("%d spares dialed; want 1 (one in flight per endpoint)", n)
	}
	for _, c := range held {
		c.Close()
	}
	srv.waitEOFs(t, 7) // first, 5 own dials, the spare: nothing leaked
}

func TestPoolPreConnectClose(t *testing.T) {
	// Close while a spare's dial is in flight: Close waits for it, and
	// the connection it gets (the dial ignores the cancellation) is
	// closed, not leaked.
	srv := newEchoServer(t, nil)
	dialing := make(chan struct{})
	d := &spareDialer{hold: func(ctx context.Context) {
		close(dialing)
		<-ctx.Done() // Close cancels it
	}}
	p, err := NewPool(PoolConfig[net.Conn]{Dial: d.dial, PreConnect: true})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := get(t, p, srv.addr)
	p.Put(a)
	a, _ = get(t, p, srv.addr)
	b, _ := get(t, p, srv.addr) // dry: a spare starts
	select {
	case <-dialing:
	case <-time.After(5 * time.Second):
		t.Fatal("no spare dialed after the pool ran dry")
	}
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return while a spare was dialing")
	}
	if st := p.Stats(); st.Idle != 0 {
		t.Fatalf("closed pool holds %d idle connections", st.Idle)
	}
	a.Conn.Close()
	b.Conn.Close()
	srv.waitEOFs(t, 3) // the two handed out and the spare
	if got := srv.accepted.Load(); got != 3 {
		t.Fatalf("server accepted %d connections; want 3", got)
	}
}

func TestPoolNoPreConnectByDefault(t *testing.T) {
	srv := newEchoServer(t, nil)
	d := &spareDialer{}
	p := newTestPool(t, PoolConfig[net.Conn]{Dial: d.dial})
	a, _ := get(t, p, srv.addr)
	p.Put(a)
	a, _ = get(t, p, srv.addr)
	b, _ := get(t, p, srv.addr) // dry
	a.Conn.Close()
	b.Conn.Close()
	p.Close()
	if n := d.spares.Load(); n != 0 {
		t.Fatalf("%d spares dialed without PreConnect", n)
	}
}
