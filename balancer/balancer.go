package balancer

import (
	"context"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BalancerConfig tunes a Balancer. The zero value works.
type BalancerConfig struct {
	// Service configures every service the Balancer creates.
	Service ServiceConfig
	// IdleTimeout: a service not picked from for this long is dropped
	// (its endpoint state is forgotten). Zero or negative means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Metrics, when not nil, exports meshproxy_balancer_endpoints for
	// this Balancer's services.
	Metrics *Metrics
}

// Balancer ties discovery to balancing: Pick resolves a host through a
// Discovery and picks among the addresses of the service (fully qualified
// name, port). It is what the outbound proxy calls per request. It is safe
// for concurrent use.
type Balancer struct {
	disc    *Discovery
	cfg     BalancerConfig
	metrics *Metrics

	mu       sync.RWMutex
	services map[svcKey]*Service
	closed   bool
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

type svcKey struct {
	name string
	port uint16
}

// New returns a Balancer over d. Close stops it (not d).
func New(d *Discovery, cfg BalancerConfig) *Balancer {
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	b := &Balancer{disc: d, cfg: cfg, metrics: cfg.Metrics, services: map[svcKey]*Service{}, done: make(chan struct{})}
	b.metrics.addBalancer(b)
	b.wg.Add(1)
	go b.janitor()
	return b
}

// Pick resolves host (an HTTP authority's host, without port) and picks
// an endpoint of (host, port). On success the caller sends the request to
// ep.Addr() and must call ep.Release(err, latency) exactly once.
// Endpoints in avoid are left out while others remain (see Service.Pick).
//
// Errors: ErrNotFound (IP literal or name not in DNS: forward to the
// original destination unchanged); ErrNoEndpoints (cannot happen for a
// resolved name, which always has addresses, but callers should map it
// to 503); ctx's error; ErrClosed; otherwise DNS is unavailable and no
// usable answer is cached (a 503, or the original destination, is the
// proxy's choice).
func (b *Balancer) Pick(ctx context.Context, host string, port uint16, avoid ...netip.AddrPort) (*Endpoint, error) {
	ans, err := b.disc.Resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	s, err := b.Service(strings.TrimSuffix(ans.Name, "."), port)
	if err != nil {
		return nil, err
	}
	if s.answer.Load() != ans {
		b.updateFrom(s, ans)
	}
	return s.Pick(avoid...)
}

// updateFrom sets s's endpoints from ans, unless a newer answer (one
// received later, whatever its TTL: a name's TTL may drop as its
// records change) got there first. The answer is recorded only once its
// endpoints are in place: a
// concurrent Pick that finds the answer recorded must also find the
// endpoints (otherwise the first requests to a new service could see an
// empty set and fail with ErrNoEndpoints).
func (b *Balancer) updateFrom(s *Service, ans *Answer) {
	s.answerMu.Lock()
	defer s.answerMu.Unlock()
	old := s.answer.Load()
	if old == ans || old != nil && received(old).After(received(ans)) {
		return
	}
	addrs := make([]netip.AddrPort, len(ans.Addrs))
	for i, a := range ans.Addrs {
		addrs[i] = netip.AddrPortFrom(a, s.port)
	}
	s.Update(addrs)
	s.answer.Store(ans)
}

// received returns when ans came from DNS.
func received(ans *Answer) time.Time { return ans.Expires.Add(-ans.TTL) }

// Service returns the service for (name, port), creating it empty. Use it
// to balance over endpoints that do not come from DNS (Update them
// yourself); name should then not collide with a DNS name.
func (b *Balancer) Service(name string, port uint16) (*Service, error) {
	k := svcKey{name, port}
	b.mu.RLock()
	s, closed := b.services[k], b.closed
	b.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if s != nil {
		return s, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s = b.services[k]; s == nil {
		s = NewService(name, port, b.cfg.Service)
		s.lastUsed.Store(s.cfg.Now().UnixNano())
		b.services[k] = s
	}
	return s, nil
}

// Snapshot returns every service's state, sorted by name then port.
func (b *Balancer) Snapshot() []ServiceState {
	b.mu.RLock()
	svcs := make([]*Service, 0, len(b.services))
	for _, s := range b.services {
		svcs = append(svcs, s)
	}
	b.mu.RUnlock()
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].name != svcs[j].name {
			return svcs[i].name < svcs[j].name
		}
		return svcs[i].port < svcs[j].port
	})
	out := make([]ServiceState, len(svcs))
	for i, s := range svcs {
		out[i] = s.Snapshot()
	}
	return out
}

// janitor drops services that went unused for the idle timeout.
func (b *Balancer) janitor() {
	defer b.wg.Done()
	t := time.NewTicker(max(b.cfg.IdleTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
		}
		b.mu.Lock()
		for k, s := range b.services {
			if s.cfg.Now().Sub(time.Unix(0, s.lastUsed.Load())) > b.cfg.IdleTimeout {
				delete(b.services, k)
			}
		}
		b.mu.Unlock()
	}
}

// Close stops the Balancer's background work; Pick then fails with
// ErrClosed. Endpoints already picked may still be released. It does not
// close the Discovery. It is safe to call more than once.
func (b *Balancer) Close() error {
	b.once.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		close(b.done)
		b.wg.Wait()
		b.metrics.removeBalancer(b)
	})
	return nil
}

// netJoin formats name:port, brackets for IPv6 literals included.
func netJoin(name string, port uint16) string {
	return net.JoinHostPort(name, strconv.Itoa(int(port)))
}
