package balancer

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

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

// TestAnswerRecordsOfOtherNamesIgnored: only the address records of the
// name asked for, or of its CNAME chain, count, as in glibc: an answer
// carrying records of some other name (a broken or hostile server) must
// not send the service's traffic there.
func TestAnswerRecordsOfOtherNamesIgnored(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	a := func(owner, ip string, ttl uint32) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: netip.MustParseAddr(ip).AsSlice()}
	}
	cname := func(owner, target string, ttl uint32) dns.RR {
		return &dns.CNAME{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl}, Target: target}
	}
	s.configure(func(s *testDNS) {
		// Records of another name only.
		s.zone["other.test."] = []dns.RR{a("evil.test.", "198.18.0.66", 30)}
		// The name's own record and one of another name.
		s.zone["mixed.test."] = []dns.RR{a("mixed.test.", "198.18.0.1", 30), a("evil.test.", "198.18.0.66", 30)}
		// A CNAME chain (names in any case), and a record of a name
		// outside it.
		s.zone["alias.test."] = []dns.RR{
			cname("alias.test.", "Mid.test.", 20), cname("mid.TEST.", "web.test.", 40),
			a("WEB.test.", "198.18.0.2", 30), a("evil.test.", "198.18.0.66", 1),
		}
		// A CNAME loop, with a record of a name outside it.
		s.zone["loop.test."] = []dns.RR{
			cname("loop.test.", "loop2.test.", 30), cname("loop2.test.", "loop.test.", 30), a("evil.test.", "198.18.0.66", 30),
		}
	})
	r := newTestResolver(t, s, "", ResolverConfig{Network: "ip4", MaxTTL: time.Hour})
	for _, host := range []string{"other.test.", "loop.test."} {
		if ans, err := r.Lookup(context.Background(), host); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: answer %+v, err %v; want ErrNotFound (no address of its own or of its chain)", host, ans, err)
		}
	}
	for host, want := range map[string]string{"mixed.test.": "198.18.0.1", "alias.test.": "198.18.0.2"} {
		ans, err := r.Lookup(context.Background(), host)
		if err != nil {
			t.Errorf("%s: %v", host, err)
			continue
		}
		if !slices.Equal(ans.Addrs, []netip.Addr{netip.MustParseAddr(want)}) {
			t.Errorf("%s: Addrs = %v; want only %s", host, ans.Addrs, want)
		}
		if host == "alias.test." && ans.TTL != 20*time.Second {
			t.Errorf("%s: TTL = %v; want 20s (the chain's smallest)", host, ans.TTL)
		}
	}
}

// TestDomainRootIsNoSearchDomain: "domain ." (the root, as "search ."
// written by systemd-resolved) adds no search domain: a name missing
// from DNS is ErrNotFound (the request goes to its original
// destination), not a failure from querying an invalid "name..".
func TestDomainRootIsNoSearchDomain(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	r := newTestResolver(t, s, "domain .", ResolverConfig{Network: "ip4"})
	if len(r.Conf().Search) != 0 {
		t.Errorf("search list = %q; want none", r.Conf().Search)
	}
	if _, err := r.Lookup(context.Background(), "nothere"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup = %v; want ErrNotFound", err)
	}
}

// TestSearchCandidateTooLongSkipped: a name valid by itself that a
// search domain would make too long for DNS (over 255 octets) skips
// that candidate instead of failing it: when the others are not found,
// the answer is ErrNotFound, not a temporary error.
func TestSearchCandidateTooLongSkipped(t *testing.T) {
	t.Parallel()
	s := newTestDNS(t)
	r := newTestResolver(t, s, "search svc.cluster.local\noptions ndots:5", ResolverConfig{Network: "ip4"})
	label := strings.Repeat("a", 60)
	host := strings.Join([]string{label, label, label, label}, ".") // 243 octets
	if _, err := r.Lookup(context.Background(), host); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup = %v; want ErrNotFound", err)
	}
	if got := s.names(); !slices.Equal(got, []string{host + "."}) {
		t.Errorf("names queried = %q; want only the name as given", got)
	}
}
