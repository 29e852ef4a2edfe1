package balancer

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// newTestDiscovery returns a Discovery over s with answers clamped to ttl.
// Queries time out after 2s: with 100ms, a loaded race-built run saw
// "i/o timeout" from the in-process DNS server (TestDiscoveryCoalescesFirstLookups,
// whose server waits 50ms, and TestBalancerConcurrentFirstPicks). A stopped
// server answers with connection refused at once.
func newTestDiscovery(t *testing.T, s *testDNS, ttl time.Duration, cfg DiscoveryConfig) *Discovery {
	t.Helper()
	r := newTestResolver(t, s, "search ns1.svc.cluster.local svc.cluster.local\noptions ndots:5",
		ResolverConfig{Network: "ip4", MinTTL: ttl, MaxTTL: ttl, NegativeTTL: ttl, Timeout: 2 * time.Second})
	d := NewDiscovery(r, cfg)
	t.Cleanup(func() { d.Close() })
	return d
}

// eventually polls cond every 20ms until it holds or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const webFQDN = "web.ns1.svc.cluster.local."

func TestDiscoveryResolvesAndRefreshesInBackground(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 0, "198.18.0.1")
	// A 2s TTL: the refresh at 80% leaves 400ms for the query before the
	// answer expires (with 500ms, 100ms: tight for a loaded race-built run).
	const ttl = 2 * time.Second
	d := newTestDiscovery(t, s, ttl, DiscoveryConfig{})
	ans, err := d.Resolve(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if ans.Name != webFQDN || len(ans.Addrs) != 1 {
		t.Fatalf("answer = %+v; want %s with one address", ans, webFQDN)
	}
	// Keep using the name: the background refresh asks again before the
	// TTL runs out, and every Resolve answers from the cache at once.
	start := s.count(webFQDN, dns.TypeA)
	s.set(webFQDN, 0, "198.18.0.2")
	deadline := time.Now().Add(2*ttl + ttl/5)
	for time.Now().Before(deadline) {
		ans, err := d.Resolve(context.Background(), "web")
		if err != nil {
			t.Fatalf("Resolve during refresh: %v", err)
		}
		if time.Now().After(ans.Expires) {
			t.Errorf("Resolve returned an expired answer (expired %v ago) while DNS was up", time.Since(ans.Expires))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := s.count(webFQDN, dns.TypeA) - start; n < 2 {
		t.Errorf("background refreshes in %v with a %v TTL = %d; want at least 2", 2*ttl+ttl/5, ttl, n)
	}
	ans, _ = d.Resolve(context.Background(), "web")
	if ans.Addrs[0] != netip.MustParseAddr("198.18.0.2") {
		t.Errorf("address after the zone changed = %v; want 198.18.0.2", ans.Addrs)
	}
}

func TestDiscoveryStaleIfErrorBounded(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 0, "198.18.0.1")
	d := newTestDiscovery(t, s, 200*time.Millisecond, DiscoveryConfig{StaleTTL: time.Second})
	ans, err := d.Resolve(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	s.stop()
	// Within expiry + stale bound the last answer keeps serving.
	for time.Now().Before(ans.Expires.Add(500 * time.Millisecond)) {
		got, err := d.Resolve(context.Background(), "web")
		if err != nil {
			t.Fatalf("Resolve %v after the DNS server stopped (stale bound 1s past expiry): %v",
				time.Since(ans.Expires), err)
		}
		if got.Addrs[0] != ans.Addrs[0] {
			t.Fatalf("stale answer = %v; want %v", got.Addrs, ans.Addrs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Past it: an error that is not ErrNotFound.
	eventually(t, 3*time.Second, "Resolve kept serving past the stale bound", func() bool {
		_, err := d.Resolve(context.Background(), "web")
		return err != nil
	})
	if _, err := d.Resolve(context.Background(), "web"); errors.Is(err, ErrNotFound) {
		t.Errorf("err with DNS down = %v; want a DNS error, not ErrNotFound", err)
	}
}

func TestDiscoveryNameDroppedFromZone(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 0, "198.18.0.1")
	d := newTestDiscovery(t, s, 200*time.Millisecond, DiscoveryConfig{})
	if _, err := d.Resolve(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	s.remove(webFQDN)
	removed := time.Now()
	eventually(t, time.Second, "name removed from the zone still resolves", func() bool {
		_, err := d.Resolve(context.Background(), "web")
		return errors.Is(err, ErrNotFound)
	})
	if el := time.Since(removed); el > 400*time.Millisecond {
		t.Logf("took %v (TTL 200ms)", el) // informational: no timed assertion
	}
}

func TestDiscoveryNotFoundAndIPLiteral(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	d := newTestDiscovery(t, s, time.Second, DiscoveryConfig{})
	if _, err := d.Resolve(context.Background(), "nothing-here"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown name: err = %v; want ErrNotFound", err)
	}
	s.reset()
	for _, h := range []string{"198.18.0.1", "[2001:2::1]", "2001:2::1"} {
		if _, err := d.Resolve(context.Background(), h); !errors.Is(err, ErrNotFound) {
			t.Errorf("IP literal %s: err = %v; want ErrNotFound", h, err)
		}
	}
	if q := s.all(); len(q) != 0 {
		t.Errorf("IP literals caused queries %v; want none", q)
	}
}

func TestDiscoveryCoalescesFirstLookups(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 30, "198.18.0.1")
	s.configure(func(s *testDNS) { s.delay = 50 * time.Millisecond })
	d := newTestDiscovery(t, s, 10*time.Second, DiscoveryConfig{})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d.Resolve(context.Background(), "web")
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := s.count(webFQDN, dns.TypeA); n != 1 {
		t.Errorf("A queries for 20 concurrent first lookups = %d; want 1", n)
	}
}

func TestDiscoveryHonoursContext(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 30, "198.18.0.1")
	s.configure(func(s *testDNS) { s.delay = 300 * time.Millisecond })
	d := newTestDiscovery(t, s, 10*time.Second, DiscoveryConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := d.Resolve(ctx, "web"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v; want context.DeadlineExceeded", err)
	}
	d.Close()
	if _, err := d.Resolve(context.Background(), "web"); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err = %v; want ErrClosed", err)
	}
	d.Close() // twice is fine
}

func TestDiscoveryForgetsIdleNames(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set(webFQDN, 0, "198.18.0.1")
	d := newTestDiscovery(t, s, 100*time.Millisecond, DiscoveryConfig{IdleTimeout: 250 * time.Millisecond})
	if _, err := d.Resolve(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "idle name still cached", func() bool { return len(d.Names()) == 0 })
	n := s.count(webFQDN, dns.TypeA)
	time.Sleep(300 * time.Millisecond)
	if m := s.count(webFQDN, dns.TypeA); m != n {
		t.Errorf("queries after the name was forgotten: %d more; want none", m-n)
	}
}
