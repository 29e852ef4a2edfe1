package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Discovery defaults.
const (
	// DefaultStaleTTL is how long past its expiry an answer keeps serving
	// while DNS fails.
	DefaultStaleTTL = 5 * time.Minute
	// DefaultIdleTimeout is how long a name is kept fresh without use.
	DefaultIdleTimeout = 10 * time.Minute
)

// DiscoveryConfig tunes a Discovery. The zero value works.
type DiscoveryConfig struct {
	// StaleTTL bounds stale-if-error: when refreshing fails (timeouts,
	// SERVFAIL; not NXDOMAIN, which is an answer) the last good answer
	// keeps serving until StaleTTL past its expiry. Zero means
	// DefaultStaleTTL; negative means never serve stale.
	StaleTTL time.Duration
	// IdleTimeout: a name not resolved for this long is forgotten and no
	// longer refreshed. Zero or negative means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Discovery is a cache of DNS answers kept fresh in the background while
// they are in use. It is safe for concurrent use.
type Discovery struct {
	r      *Resolver
	stale  time.Duration
	idle   time.Duration
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	entries map[string]*discEntry
	closed  bool
}

// NewDiscovery returns a Discovery that resolves with r. Close stops it.
func NewDiscovery(r *Resolver, cfg DiscoveryConfig) *Discovery {
	d := &Discovery{r: r, entries: map[string]*discEntry{}}
	d.stale = cfg.StaleTTL
	if d.stale == 0 {
		d.stale = DefaultStaleTTL
	}
	d.stale = max(d.stale, 0)
	d.idle = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	d.log = cfg.Logger
	if d.log == nil {
		d.log = slog.Default()
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// discEntry is one name: its current answer and the goroutine that keeps
// it fresh.
type discEntry struct {
	host     string
	ready    chan struct{} // closed after the first lookup
	lastUsed atomic.Int64  // unix nanos

	mu       sync.Mutex
	ans      *Answer   // last good answer, or nil
	err      error     // the error to return when ans is nil or too stale
	errUntil time.Time // a not-found answer's expiry
}

// Resolve returns the current addresses of host (a name without port, as
// in an HTTP authority). The first call for a name resolves it, and
// concurrent first calls share that one lookup; later calls answer from
// the cache, which is refreshed in the background before answers expire
// for as long as the name keeps being asked for.
//
// Errors: ErrNotFound (errors.Is) when host is an IP literal or has no
// addresses in DNS — send the request to its original destination;
// ctx's error when ctx ends first; ErrClosed after Close; any other error
// means DNS could not be asked (and no answer fresh enough is cached).
func (d *Discovery) Resolve(ctx context.Context, host string) (*Answer, error) {
	host = strings.ToLower(host)
	if host == "" || isIPLiteral(host) {
		return nil, fmt.Errorf("resolving %q: an IP literal or empty: %w", host, ErrNotFound)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	e := d.entries[host]
	if e == nil {
		e = &discEntry{host: host, ready: make(chan struct{})}
		d.entries[host] = e
		d.wg.Add(1)
		go d.keepFresh(e)
	}
	d.mu.Unlock()
	e.lastUsed.Store(time.Now().UnixNano())
	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("resolving %s: %w", host, ctx.Err())
	}
	return e.current(d.stale)
}

// current returns the entry's answer if it is fresh enough.
func (e *discEntry) current(stale time.Duration) (*Answer, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ans != nil && time.Now().Before(e.ans.Expires.Add(stale)) {
		return e.ans, nil
	}
	if e.err != nil {
		return nil, e.err
	}
	return nil, fmt.Errorf("resolving %s: answer expired: %w", e.host, ErrNotFound)
}

// keepFresh resolves e now, then again before each answer expires, until
// the name goes unused for the idle timeout or the Discovery closes.
func (d *Discovery) keepFresh(e *discEntry) {
	defer d.wg.Done()
	defer d.forget(e)
	retry := time.Duration(0)
	first := true
	for {
		ans, err := d.r.Lookup(d.ctx, e.host)
		if d.ctx.Err() != nil {
			if first {
				e.mu.Lock()
				e.err = ErrClosed
				e.mu.Unlock()
				close(e.ready)
			}
			return
		}
		var wait time.Duration
		e.mu.Lock()
		switch {
		case err == nil:
			e.ans, e.err = ans, nil
			retry = 0
			// Refresh at 80% of the TTL, so answers never expire while
			// the DNS server is up.
			wait = ans.TTL * 8 / 10
		case errors.Is(err, ErrNotFound):
			// An answer, not a failure: the name is gone.
			e.ans, e.err = nil, err
			retry = 0
			wait = d.r.NegativeTTL()
		default:
			e.err = err
			if e.ans != nil {
				d.log.Warn("refreshing endpoints failed; serving the last answer", "name", e.host, "err", err,
					"expires", e.ans.Expires, "stale_until", e.ans.Expires.Add(d.stale))
			}
			// Retry soon, then less often.
			if retry == 0 {
				retry = min(max(d.r.minTTL/4, 100*time.Millisecond), 5*time.Second)
			} else {
				retry = min(retry*2, 30*time.Second)
			}
			wait = retry
		}
		e.mu.Unlock()
		if first {
			close(e.ready)
			first = false
		}
		t := time.NewTimer(wait)
		select {
		case <-d.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, e.lastUsed.Load())) > d.idle {
			return
		}
	}
}

// forget removes e from the cache so the next Resolve starts over.
func (d *Discovery) forget(e *discEntry) {
	d.mu.Lock()
	if d.entries[e.host] == e {
		delete(d.entries, e.host)
	}
	d.mu.Unlock()
}

// Names returns the names currently cached and refreshed.
func (d *Discovery) Names() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.entries))
	for n := range d.entries {
		out = append(out, n)
	}
	return out
}

// Close stops all background refreshes and waits for them. It is safe to
// call more than once.
func (d *Discovery) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
	return nil
}

func isIPLiteral(host string) bool {
	_, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil
}
