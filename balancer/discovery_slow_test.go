package balancer

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestDiscoverySlowServerKeepsLastAnswer: when the DNS server turns slow
// (answers later than the resolver's timeout), resolution times out in
// the background and Resolve keeps answering at once with the last good
// endpoints; once the server is fast again its new answer is taken.
func TestDiscoverySlowServerKeepsLastAnswer(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set("web.test.", 0, "198.18.0.1")
	r := newTestResolver(t, s, "", ResolverConfig{Network: "ip4", Timeout: 100 * time.Millisecond,
		MinTTL: 200 * time.Millisecond, MaxTTL: 200 * time.Millisecond})
	d := NewDiscovery(r, DiscoveryConfig{StaleTTL: time.Minute})
	t.Cleanup(func() { d.Close() })
	want := func(addr string) func() bool {
		return func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			ans, err := d.Resolve(ctx, "web.test.")
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			return slices.Equal(ans.Addrs, []netip.Addr{netip.MustParseAddr(addr)})
		}
	}
	if !want("198.18.0.1")() {
		t.Fatal("first answer is not 198.18.0.1")
	}
	s.configure(func(s *testDNS) { s.delay = 500 * time.Millisecond })
	s.set("web.test.", 0, "198.18.0.2") // too slow to be seen
	n := s.count("web.test.", dns.TypeA)
	eventually(t, 5*time.Second, "no refresh reached the slow server", func() bool { return s.count("web.test.", dns.TypeA) >= n+3 })
	for range 10 {
		if !want("198.18.0.1")() {
			t.Fatal("an answer that came later than the timeout was used")
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.configure(func(s *testDNS) { s.delay = 0 })
	eventually(t, 10*time.Second, "the new answer was never taken once the server was fast again", want("198.18.0.2"))
}
