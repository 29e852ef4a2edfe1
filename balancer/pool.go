package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Pool defaults.
const (
	// DefaultPoolIdleTimeout is how long an idle connection is kept.
	DefaultPoolIdleTimeout = 90 * time.Second
	// DefaultMaxIdlePerEndpoint bounds idle connections per endpoint.
	DefaultMaxIdlePerEndpoint = 8
	// DefaultMaxLifetime is how long a connection is reused at most, so
	// load spreads again after endpoints change.
	DefaultMaxLifetime = 10 * time.Minute
	// DefaultMaxEndpoints bounds how many endpoints the pool tracks.
	DefaultMaxEndpoints = 1024
)

// PoolConfig configures a Pool of connections of type C (a net.Conn, a
// *tls.Conn, an HTTP/2 client connection...).
type PoolConfig[C io.Closer] struct {
	// Dial opens a new connection to addr. Required.
	Dial func(ctx context.Context, addr netip.AddrPort) (C, error)
	// Usable reports whether an idle connection can be handed out again.
	// Nil means ConnUsable when C is a net.Conn, otherwise always usable.
	Usable func(C) bool
	// IdleTimeout: idle connections older than this are closed. Zero means
	// DefaultPoolIdleTimeout; negative means no limit.
	IdleTimeout time.Duration
	// MaxIdlePerEndpoint: Put closes a connection beyond this many idle
	// ones for its endpoint. Zero means DefaultMaxIdlePerEndpoint;
	// negative means keep none (every Get dials).
	MaxIdlePerEndpoint int
	// MaxLifetime: connections older than this (since dial) are not
	// reused. Zero means DefaultMaxLifetime; negative means no limit.
	MaxLifetime time.Duration
	// MaxEndpoints bounds the endpoints with idle connections; the least
	// recently used one is evicted and its idle connections closed. Zero
	// or negative means DefaultMaxEndpoints.
	MaxEndpoints int
	// MaxIdle bounds the idle connections of all endpoints together: Put
	// beyond it closes the least recently returned idle connection of
	// the least recently used endpoint. Zero or negative means no bound
	// but MaxIdlePerEndpoint and MaxEndpoints.
	MaxIdle int
	// WatchClose closes and drops an idle connection as soon as its
	// peer closes it (one goroutine watches every idle socket through
	// epoll), instead of at the next Get or the idle timeout. For
	// net.Conn (and *tls.Conn) connections.
	WatchClose bool
	// PreConnect dials ahead: when a Get finds no idle connection for an
	// endpoint the pool knows (all its connections are in use: more
	// requests at once than ever before), it dials its own as always,
	// and the pool dials one spare in the background and parks it idle,
	// so the next request past the pool's size does not wait for a
	// connect (and a TLS handshake). At most one spare's dial is in
	// flight per endpoint; none when the pool is at MaxIdle or keeps no
	// idle connections, and none for PreConnectBackoff after one
	// failed. A client sending one request after another never triggers
	// it (the pool is not dry when it asks), nor does an endpoint's first
	// connection. Spares count in dials and in
	// meshproxy_pool_preconnects_total.
	PreConnect bool
	// Metrics, when not nil, counts dials, reuses and stale connections.
	Metrics *Metrics
}

// PooledConn is a connection from a Pool. Give it back with Put to reuse
// it, or close Conn yourself; the pool tracks only idle connections, so
// either is fine.
type PooledConn[C io.Closer] struct {
	Conn C
	// Addr is the endpoint it is connected to.
	Addr netip.AddrPort
	// Created is when it was dialed.
	Created time.Time
	// watchFD is its socket plus one once the pool's close watcher has
	// it (WatchClose), 0 before.
	watchFD int32
}

// idleConn is a connection waiting in the pool.
type idleConn[C io.Closer] struct {
	pc    PooledConn[C]
	since time.Time
	fd    int32 // watched socket, -1 none
}

// Pool keeps idle connections per endpoint for reuse. Get hands out the
// most recently returned idle connection that is still usable, or dials;
// Put returns one. It is safe for concurrent use.
//
// For HTTP/1.1 upstreams: Get, send one request, read the whole response,
// Put (or Close the conn if the exchange failed or the response said
// "Connection: close"). For HTTP/2 between meshed proxies, where one
// connection carries many requests at once, keep the connection outside
// the pool while it can take new streams (Get once, share it), and Put it
// back only if you want it parked; Usable should then also check that the
// connection can take a new request.
type Pool[C io.Closer] struct {
	cfg     PoolConfig[C]
	usable  func(C) bool
	metrics *Metrics

	dials, reuses, stale, preconnects atomic.Uint64

	mu      sync.Mutex
	lru     *simplelru.LRU[netip.AddrPort, *[]idleConn[C]]
	evicted []C // closed after mu is released
	idleN   int // idle connections over all endpoints
	watch   *closeWatcher
	watched map[int32]netip.AddrPort // watched idle sockets' endpoints
	// hungUp holds watched sockets whose peer hung up while they were
	// in use (the edge-triggered event comes once): their Put closes
	// them instead of pooling a dead connection.
	hungUp map[int32]struct{}
	closed bool
	// pre holds the endpoints with a pre-connect in flight (zero time)
	// or failed at that time (see PreConnect).
	pre map[netip.AddrPort]time.Time

	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// NewPool returns an empty pool. Close it to close its idle connections.
func NewPool[C io.Closer](cfg PoolConfig[C]) (*Pool[C], error) {
	if cfg.Dial == nil {
		return nil, errors.New("pool: PoolConfig.Dial is required")
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultPoolIdleTimeout
	}
	if cfg.MaxIdlePerEndpoint == 0 {
		cfg.MaxIdlePerEndpoint = DefaultMaxIdlePerEndpoint
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = DefaultMaxLifetime
	}
	if cfg.MaxEndpoints <= 0 {
		cfg.MaxEndpoints = DefaultMaxEndpoints
	}
	p := &Pool[C]{cfg: cfg, usable: cfg.Usable, metrics: cfg.Metrics, done: make(chan struct{}), pre: map[netip.AddrPort]time.Time{}}
	if p.usable == nil {
		p.usable = func(c C) bool {
			if nc, ok := any(c).(net.Conn); ok {
				return ConnUsable(nc)
			}
			return true
		}
	}
	l, err := simplelru.NewLRU(cfg.MaxEndpoints, func(_ netip.AddrPort, idle *[]idleConn[C]) {
		for _, ic := range *idle {
			p.evicted = append(p.evicted, ic.pc.Conn)
		}
		p.idleN -= len(*idle)
	})
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	p.lru = l
	if cfg.WatchClose {
		p.watch = newCloseWatcher(p.peerClosed)
		p.watched = map[int32]netip.AddrPort{}
		p.hungUp = map[int32]struct{}{}
	}
	if iv := p.sweepInterval(); iv > 0 {
		p.wg.Add(1)
		go p.sweeper(iv)
	}
	return p, nil
}

// Get returns a connection to addr: an idle one that is within its idle
// timeout and lifetime and passes Usable (reused is true), or a new one
// from Dial. Idle connections found closed by the peer are discarded and
// counted as stale; they are never returned.
func (p *Pool[C]) Get(ctx context.Context, addr netip.AddrPort) (pc PooledConn[C], reused bool, err error) {
	for {
		ic, ok, dry, err := p.popIdle(addr)
		if err != nil {
			return pc, false, err
		}
		if dry {
			p.preconnect(ctx, addr) // a spare for the next one
		}
		if !ok {
			break
		}
		now := time.Now()
		if p.expired(ic, now) {
			ic.pc.Conn.Close()
			continue
		}
		// A watched connection the peer closed is gone from the pool
		// already (no peek needed).
		good := true
		if p.cfg.Usable != nil || ic.pc.watchFD == 0 {
			good = p.usable(ic.pc.Conn)
		}
		if !good {
			p.Stale(ic.pc)
			continue
		}
		p.reuses.Add(1)
		p.metrics.poolReuse()
		return ic.pc, true, nil
	}
	pc, err = p.Dial(ctx, addr)
	return pc, false, err
}

// Dial returns a new connection to addr from PoolConfig.Dial, never an
// idle one: for a request sent again after a reused connection turned
// out dead, as the other idle ones of addr, returned before it, are
// likely as dead. Put it back as one from Get.
func (p *Pool[C]) Dial(ctx context.Context, addr netip.AddrPort) (PooledConn[C], error) {
	if p.isClosed() {
		return PooledConn[C]{}, ErrClosed
	}
	c, err := p.cfg.Dial(ctx, addr)
	if err != nil {
		return PooledConn[C]{}, fmt.Errorf("pool: dialing %s: %w", addr, err)
	}
	p.dials.Add(1)
	p.metrics.poolDial()
	return PooledConn[C]{Conn: c, Addr: addr, Created: time.Now()}, nil
}

func (p *Pool[C]) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Stale closes a reused connection (from Get) that its user found dead
// before any answer (its peer had closed it while it was idle, and no
// check saw it: the close watcher had not yet, or none ran) and counts
// it as stale, as Get counts those it finds: not a failure of the
// endpoint.
func (p *Pool[C]) Stale(pc PooledConn[C]) {
	p.stale.Add(1)
	p.metrics.poolStaleConn()
	pc.Conn.Close()
}

// popIdle takes the most recently returned idle connection of addr. dry
// is true when it has none although the pool knows addr (it had idle
// ones: all are in use now, more are wanted than the pool has), false
// for an endpoint it does not know (never used, or forgotten).
func (p *Pool[C]) popIdle(addr netip.AddrPort) (ic idleConn[C], ok, dry bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return idleConn[C]{}, false, false, ErrClosed
	}
	idle, ok := p.lru.Get(addr)
	if !ok {
		return idleConn[C]{}, false, false, nil
	}
	if len(*idle) == 0 {
		return idleConn[C]{}, false, true, nil
	}
	n := len(*idle) - 1
	ic = (*idle)[n]
	(*idle)[n] = idleConn[C]{}
	*idle = (*idle)[:n]
	p.idleN--
	if ic.fd >= 0 {
		delete(p.watched, ic.fd) // in use: a hang-up now is remembered
	}
	return ic, true, false, nil
}

func (p *Pool[C]) expired(ic idleConn[C], now time.Time) bool {
	if p.cfg.IdleTimeout > 0 && now.Sub(ic.since) >= p.cfg.IdleTimeout {
		return true
	}
	return p.cfg.MaxLifetime > 0 && now.Sub(ic.pc.Created) >= p.cfg.MaxLifetime
}

// Put returns a connection for reuse. Only Put connections whose last
// exchange completed cleanly. A connection already idle in the pool (Put
// twice) is left as it is. It closes the connection instead when the
// pool is closed, the connection is past its lifetime, or its endpoint
// already has MaxIdlePerEndpoint idle connections.
func (p *Pool[C]) Put(pc PooledConn[C]) {
	now := time.Now()
	ic := idleConn[C]{pc: pc, since: now, fd: -1}
	p.mu.Lock()
	keep := !p.closed && !p.expired(ic, now) && p.cfg.MaxIdlePerEndpoint > 0
	if keep {
		idle, ok := p.lru.Get(pc.Addr)
		if !ok {
			idle = new([]idleConn[C])
			p.lru.Add(pc.Addr, idle)
		}
		switch {
		case idleHas(*idle, pc.Conn):
			// Given back twice: it is idle already, and must not be
			// handed to two users at once (nor closed under the pool).
			p.mu.Unlock()
			return
		case len(*idle) >= p.cfg.MaxIdlePerEndpoint:
			keep = false
		case !p.watchLocked(&ic):
			keep = false // its peer hung up while it was in use
			p.stale.Add(1)
			p.metrics.poolStaleConn()
		default:
			*idle = append(*idle, ic)
			p.idleN++
		}
	}
	// Each step drops a connection or forgets an endpoint without any
	// (the least recently used ones may have none idle).
	for keep && p.cfg.MaxIdle > 0 && p.idleN > p.cfg.MaxIdle && p.dropOldestLocked() {
	}
	evicted := p.takeEvictedLocked()
	p.mu.Unlock()
	if !keep {
		pc.Conn.Close()
	}
	closeAll(evicted)
}

// idleHas reports whether c is one of the idle connections (false when
// C's values cannot be compared).
func idleHas[C io.Closer](idle []idleConn[C], c C) (has bool) {
	defer func() { _ = recover() }() // a connection type that is not comparable
	x := any(c)
	for i := range idle {
		if any(idle[i].pc.Conn) == x {
			return true
		}
	}
	return false
}

// watchLocked has the close watcher watch an idle connection's socket:
// registered at its first Put, it stays so until closed. A hang-up
// while the connection was in use (remembered by peerClosed, as the
// edge-triggered event does not come again) makes it false: the
// connection is dead and must not be pooled.
func (p *Pool[C]) watchLocked(ic *idleConn[C]) bool {
	if p.watch == nil {
		return true
	}
	if ic.pc.watchFD == 0 {
		nc, ok := any(ic.pc.Conn).(net.Conn)
		if !ok {
			return true
		}
		fd := fdOf(nc)
		if fd < 0 {
			return true
		}
		// A mark left by an earlier socket with this number (closed
		// while in use) is not this one's.
		delete(p.hungUp, fd)
		if !p.watch.add(fd) {
			return true
		}
		ic.pc.watchFD = fd + 1
	} else if _, hung := p.hungUp[ic.pc.watchFD-1]; hung {
		delete(p.hungUp, ic.pc.watchFD-1)
		return false
	}
	ic.fd = ic.pc.watchFD - 1
	p.watched[ic.fd] = ic.pc.Addr
	return true
}

// peerClosed drops and closes the idle connection on socket fd, whose
// peer closed it.
func (p *Pool[C]) peerClosed(fd int32) {
	p.mu.Lock()
	addr, ok := p.watched[fd]
	if !ok {
		// Not idle: in use since its first Put (or never watched).
		p.hungUp[fd] = struct{}{}
		p.mu.Unlock()
		return
	}
	delete(p.watched, fd)
	var gone []C
	if idle, ok := p.lru.Peek(addr); ok {
		for i, ic := range *idle {
			if ic.fd != fd {
				continue
			}
			gone = append(gone, ic.pc.Conn)
			delete(p.watched, fd)
			copy((*idle)[i:], (*idle)[i+1:])
			(*idle)[len(*idle)-1] = idleConn[C]{}
			*idle = (*idle)[:len(*idle)-1]
			p.idleN--
			break
		}
		if len(*idle) == 0 {
			p.lru.Remove(addr)
		}
	}
	if len(gone) > 0 {
		p.stale.Add(1) // under mu: Stats never shows it gone but not counted
	}
	p.mu.Unlock()
	if len(gone) > 0 {
		p.metrics.poolStaleConn()
	}
	closeAll(gone)
}

// dropOldestLocked closes (after mu) the least recently returned idle
// connection of the least recently used endpoint, or forgets that
// endpoint if it has none; false when the pool tracks no endpoint.
func (p *Pool[C]) dropOldestLocked() bool {
	addr, idle, ok := p.lru.GetOldest()
	if !ok {
		return false
	}
	if len(*idle) <= 1 {
		p.lru.Remove(addr) // the evict callback takes its connection
		return true
	}
	p.evicted = append(p.evicted, (*idle)[0].pc.Conn)
	copy(*idle, (*idle)[1:])
	(*idle)[len(*idle)-1] = idleConn[C]{}
	*idle = (*idle)[:len(*idle)-1]
	p.idleN--
	return true
}

// CloseIdle closes every idle connection; the pool stays open.
func (p *Pool[C]) CloseIdle() {
	p.mu.Lock()
	p.lru.Purge()
	evicted := p.takeEvictedLocked()
	p.mu.Unlock()
	closeAll(evicted)
}

func (p *Pool[C]) takeEvictedLocked() []C {
	e := p.evicted
	p.evicted = nil
	return e
}

func closeAll[C io.Closer](cs []C) {
	for _, c := range cs {
		c.Close()
	}
}

// PoolStats counts a pool's work.
type PoolStats struct {
	Dials  uint64 `json:"dials"`
	Reuses uint64 `json:"reuses"`
	Stale  uint64 `json:"stale"`
	// PreConnects counts the dials of PreConnect (in Dials too).
	PreConnects uint64 `json:"preconnects"`
	// Idle is the number of idle connections now; Endpoints the number
	// of endpoints tracked.
	Idle      int `json:"idle"`
	Endpoints int `json:"endpoints"`
}

// Stats returns the pool's counters and current size, for /debug/state.
func (p *Pool[C]) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Counted under mu: a connection the watcher dropped is gone from
	// Idle and in Stale together.
	st := PoolStats{Dials: p.dials.Load(), Reuses: p.reuses.Load(), Stale: p.stale.Load(), PreConnects: p.preconnects.Load()}
	for _, k := range p.lru.Keys() {
		if idle, ok := p.lru.Peek(k); ok {
			st.Idle += len(*idle)
		}
	}
	st.Endpoints = p.lru.Len()
	return st
}

func (p *Pool[C]) sweepInterval() time.Duration {
	iv := time.Duration(0)
	for _, d := range []time.Duration{p.cfg.IdleTimeout, p.cfg.MaxLifetime} {
		if d > 0 && (iv == 0 || d < iv) {
			iv = d
		}
	}
	if iv == 0 {
		return 0
	}
	return max(iv/2, 10*time.Millisecond)
}

// sweeper closes idle connections past their idle timeout or lifetime
// and forgets endpoints left without idle connections.
func (p *Pool[C]) sweeper(iv time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		p.sweep(time.Now())
	}
}

func (p *Pool[C]) sweep(now time.Time) {
	var toClose []C
	p.mu.Lock()
	p.prunePreLocked(now)
	for _, k := range p.lru.Keys() {
		idle, ok := p.lru.Peek(k)
		if !ok {
			continue
		}
		kept := (*idle)[:0]
		for _, ic := range *idle {
			if p.expired(ic, now) {
				toClose = append(toClose, ic.pc.Conn)
			} else {
				kept = append(kept, ic)
			}
		}
		clear((*idle)[len(kept):])
		p.idleN -= len(*idle) - len(kept)
		*idle = kept
		if len(kept) == 0 {
			p.lru.Remove(k) // calls the evict callback with nothing to close
		}
	}
	p.mu.Unlock()
	closeAll(toClose)
}

// Close closes every idle connection; later Gets fail with ErrClosed and
// Puts close their connection. It is safe to call more than once.
func (p *Pool[C]) Close() error {
	p.once.Do(func() {
		// Closed first: no pre-connect starts after this, and one in
		// flight closes its connection instead of parking it.
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		close(p.done)
		p.wg.Wait()
		p.mu.Lock()
		p.lru.Purge()
		evicted := p.takeEvictedLocked()
		p.mu.Unlock()
		// Only now, when no Put can register a socket any more: the
		// watcher closes its epoll descriptor as it stops, and a late
		// registration could land on whatever reused that number.
		if p.watch != nil {
			p.watch.close()
		}
		closeAll(evicted)
	})
	return nil
}

// ConnUsable reports whether an idle connection can be reused: it peeks
// one byte without blocking (MSG_PEEK|MSG_DONTWAIT) on the socket under
// c (unwrapping a *tls.Conn's NetConn). End of file or an error such as
// a reset means the peer closed it: not usable. Nothing to read (would
// block) means usable. Pending data also counts as usable (on an HTTP/2
// or TLS connection it may be a ping or a session ticket); the protocol
// layer deals with it. A connection without a socket is assumed usable.
func ConnUsable(c net.Conn) bool {
	s := peekSocket(c)
	return s == sockNoSocket || s == sockQuiet || s == sockPending
}

// ConnQuiet reports whether an idle connection is open with no byte
// pending, by the same peek as ConnUsable. For a protocol whose peer
// says nothing between exchanges (an HTTP/1 server before a request),
// pending bytes are leftovers or a goodbye, never an answer: such a
// connection must not be reused. A connection without a socket is
// assumed quiet.
func ConnQuiet(c net.Conn) bool {
	s := peekSocket(c)
	return s == sockNoSocket || s == sockQuiet
}

// sockState is what a non-blocking peek found on a socket.
type sockState int

const (
	sockNoSocket sockState = iota // c has no socket under it
	sockQuiet                     // open, nothing to read
	sockPending                   // bytes wait to be read
	sockGone                      // end of file, an error, or no peek possible
)

// peekSocket peeks one byte without blocking on the socket under c.
func peekSocket(c net.Conn) sockState {
	raw, ok := rawConnOf(c)
	if !ok {
		return sockNoSocket
	}
	if raw == nil {
		return sockGone
	}
	state := sockGone
	var buf [1]byte
	err := raw.Read(func(fd uintptr) bool {
		// A raw call: a non-blocking peek never sleeps, and Go's
		// system call state would let the scheduler hand this
		// thread's processor to another thread when the kernel
		// preempts it mid-call (see proxy/rawio.go).
		n, _, rerr := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch {
		case rerr == 0 && n > 0:
			state = sockPending
		case rerr == syscall.EAGAIN || rerr == syscall.EINTR:
			state = sockQuiet
		}
		return true
	})
	if err != nil {
		return sockGone
	}
	return state
}

// rawConnOf returns the RawConn of the socket under c, unwrapping
// NetConn (a *tls.Conn's): ok is false when there is no socket under c,
// and the RawConn is nil when the socket's cannot be had (closed).
func rawConnOf(c net.Conn) (raw syscall.RawConn, ok bool) {
	for {
		u, isWrapper := c.(interface{ NetConn() net.Conn })
		if !isWrapper {
			break
		}
		c = u.NetConn()
	}
	sc, isSock := c.(syscall.Conn)
	if !isSock {
		return nil, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, true
	}
	return raw, true
}
