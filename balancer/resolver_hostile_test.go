package balancer

import (
	"context"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// TestTruncatedCutAnswerRetriedOverTCP: a UDP answer with TC set whose
// last record is cut off (it does not parse) is retried over TCP, as
// glibc does, instead of failing the nameserver.
func TestTruncatedCutAnswerRetriedOverTCP(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	s.set("cut.test.", 30, "198.18.0.1", "198.18.0.2", "198.18.0.3")
	s.configure(func(s *testDNS) { s.cutUDP["cut.test."] = true })
	r := newTestResolver(t, s, "", ResolverConfig{Network: "ip4"})
	ans, err := r.Lookup(context.Background(), "cut.test.")
	if err != nil {
		t.Fatalf("Lookup: %v; want the TCP answer", err)
	}
	if len(ans.Addrs) != 3 {
		t.Errorf("Addrs = %v; want the 3 addresses of the TCP answer", ans.Addrs)
	}
	want := []query{{"cut.test.", dns.TypeA, "udp"}, {"cut.test.", dns.TypeA, "tcp"}}
	if got := s.all(); !slices.Equal(got, want) {
		t.Errorf("queries = %v; want %v", got, want)
	}
}
