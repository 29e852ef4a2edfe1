package balancer

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestBalancerFollowsAnswerWithShorterTTL: when a name's records change
// together with a lower TTL, the balancer moves to the new endpoints as
// soon as discovery has the new answer, although the new answer expires
// before the old one would have.
func TestBalancerFollowsAnswerWithShorterTTL(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set("web.test.", 3, "198.18.0.1")
	r := newTestResolver(t, s, "", ResolverConfig{Network: "ip4", MinTTL: 100 * time.Millisecond, MaxTTL: time.Minute, Timeout: 2 * time.Second})
	d := NewDiscovery(r, DiscoveryConfig{})
	t.Cleanup(func() { d.Close() })
	b := New(d, BalancerConfig{})
	defer b.Close()
	pick := func() netip.AddrPort {
		t.Helper()
		ep, err := b.Pick(context.Background(), "web.test.", 8080)
		if err != nil {
			t.Fatal(err)
		}
		ep.Release(nil, time.Millisecond)
		return ep.Addr()
	}
	if got := pick(); got != netip.MustParseAddrPort("198.18.0.1:8080") {
		t.Fatalf("first pick = %v; want 198.18.0.1:8080", got)
	}
	s.set("web.test.", 0, "198.18.0.2") // new endpoint, TTL 0 (clamped to 100ms)
	eventually(t, 10*time.Second, "discovery never saw the new answer", func() bool {
		ans, err := d.Resolve(context.Background(), "web.test.")
		return err == nil && slices.Equal(ans.Addrs, []netip.Addr{netip.MustParseAddr("198.18.0.2")})
	})
	if got := pick(); got != netip.MustParseAddrPort("198.18.0.2:8080") {
		t.Errorf("pick after the answer changed = %v; want 198.18.0.2:8080 (the old answer, longer TTL, still used)", got)
	}
}
