package balancer

import (
	"context"
	"net/netip"
	"time"
)

// Pre-connect (PoolConfig.PreConnect) bounds.
const (
	// PreConnectBackoff is how long the pool dials no spare to an
	// endpoint after a spare's dial to it failed.
	PreConnectBackoff = time.Second
	// preConnectTimeout bounds a spare's dial when Dial has no timeout
	// of its own.
	preConnectTimeout = 30 * time.Second
)

// preconnect dials a spare connection to addr in the background and
// parks it idle (Put), when PreConnect is on, no spare to addr is in
// flight or backing off, and the pool has room for one more idle
// connection. ctx's values reach Dial (not its cancellation: the spare
// outlives the request that wanted it); Close cancels the dial.
func (p *Pool[C]) preconnect(ctx context.Context, addr netip.AddrPort) {
	if !p.cfg.PreConnect || p.cfg.MaxIdlePerEndpoint <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.cfg.MaxIdle > 0 && p.idleN >= p.cfg.MaxIdle {
		return
	}
	if t, ok := p.pre[addr]; ok && (t.IsZero() || time.Since(t) < PreConnectBackoff) {
		return
	}
	if _, ok := p.pre[addr]; !ok && len(p.pre) >= p.cfg.MaxEndpoints {
		p.prunePreLocked(time.Now()) // (the sweeper does it too, when there is one)
		if len(p.pre) >= p.cfg.MaxEndpoints {
			return
		}
	}
	p.pre[addr] = time.Time{} // in flight
	p.wg.Add(1)               // under mu, and only while open: Close waits for it
	go p.dialSpare(context.WithValue(context.WithoutCancel(ctx), preConnectKey{}, true), addr)
}

type preConnectKey struct{}

// IsPreConnect reports whether a PoolConfig.Dial call is a pre-connect
// (a spare dialed ahead of need, PoolConfig.PreConnect) rather than a
// Get's own dial.
func IsPreConnect(ctx context.Context) bool {
	v, _ := ctx.Value(preConnectKey{}).(bool)
	return v
}

// dialSpare is a pre-connect's dial; the connection goes to Put, which
// closes it instead when the pool closed or filled up meanwhile.
func (p *Pool[C]) dialSpare(ctx context.Context, addr netip.AddrPort) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(ctx, preConnectTimeout)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := p.cfg.Dial(ctx, addr)
	p.mu.Lock()
	if err != nil {
		p.pre[addr] = time.Now()
	} else {
		delete(p.pre, addr)
	}
	p.mu.Unlock()
	if err != nil {
		return
	}
	p.dials.Add(1)
	p.preconnects.Add(1)
	p.metrics.poolDial()
	p.metrics.poolPreconnect()
	p.Put(PooledConn[C]{Conn: c, Addr: addr, Created: time.Now()})
}

// prunePreLocked forgets endpoints whose spare's dial failed longer than
// PreConnectBackoff ago.
func (p *Pool[C]) prunePreLocked(now time.Time) {
	for addr, t := range p.pre {
		if !t.IsZero() && now.Sub(t) >= PreConnectBackoff {
			delete(p.pre, addr)
		}
	}
}
