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

func TestParseResolvConf(t *testing.T) {
	c, err := ParseResolvConf(strings.NewReader(`# comment
nameserver 198.18.0.53
nameserver 2001:2::53 ; trailing comment
nameserver 127.0.0.1:5353
nameserver 198.18.0.54
nameserver not-an-ip
domain example.test
search My-NS.svc.cluster.local. svc.cluster.local cluster.local
options ndots:5 timeout:2 attempts:3 rotate edns0
options ndots:99
`))
	if err != nil {
		t.Fatal(err)
	}
	wantNS := []netip.AddrPort{
		netip.MustParseAddrPort("198.18.0.53:53"),
		netip.MustParseAddrPort("[2001:2::53]:53"),
		netip.MustParseAddrPort("127.0.0.1:5353"),
	}
	if !slices.Equal(c.Nameservers, wantNS) {
		t.Errorf("Nameservers = %v; want %v (at most 3)", c.Nameservers, wantNS)
	}
	wantSearch := []string{"my-ns.svc.cluster.local", "svc.cluster.local", "cluster.local"}
	if !slices.Equal(c.Search, wantSearch) {
		t.Errorf("Search = %v; want %v (last of domain/search wins)", c.Search, wantSearch)
	}
	if c.Ndots != 15 || c.Timeout != 2*time.Second || c.Attempts != 3 {
		t.Errorf("ndots, timeout, attempts = %d, %v, %d; want 15 (clamped), 2s, 3", c.Ndots, c.Timeout, c.Attempts)
	}

	empty, err := ParseResolvConf(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if len(empty.Nameservers) != 1 || empty.Nameservers[0].String() != "127.0.0.1:53" || empty.Ndots != 1 ||
		empty.Timeout != 5*time.Second || empty.Attempts != 2 {
		t.Errorf("empty resolv.conf = %+v; want glibc defaults (127.0.0.1:53, ndots 1, 5s, 2 attempts)", empty)
	}
	d, _ := ParseResolvConf(strings.NewReader("search a.test\ndomain b.test\n"))
	if !slices.Equal(d.Search, []string{"b.test"}) {
		t.Errorf("domain after search: Search = %v; want [b.test]", d.Search)
	}
}

// TestSearchOrderObserved checks glibc's candidate order as seen by a
// real DNS server: with nothing in the zone every candidate is asked,
// in order, and the result is ErrNotFound.
func TestSearchOrderObserved(t *testing.T) {
	search := "search ns1.svc.cluster.local svc.cluster.local cluster.local"
	tests := []struct {
		name, host, conf string
		want             []string
	}{
		{"short name, ndots 5: search first", "web", search + "\noptions ndots:5", []string{
			"web.ns1.svc.cluster.local.", "web.svc.cluster.local.", "web.cluster.local.", "web."}},
		{"two dots, ndots 5: search first", "web.ns2.svc", search + "\noptions ndots:5", []string{
			"web.ns2.svc.ns1.svc.cluster.local.", "web.ns2.svc.svc.cluster.local.", "web.ns2.svc.cluster.local.", "web.ns2.svc."}},
		{"dots == ndots: as-is first", "a.b.c", search + "\noptions ndots:2", []string{
			"a.b.c.", "a.b.c.ns1.svc.cluster.local.", "a.b.c.svc.cluster.local.", "a.b.c.cluster.local."}},
		{"dots < ndots: search first", "a.b", search + "\noptions ndots:2", []string{
			"a.b.ns1.svc.cluster.local.", "a.b.svc.cluster.local.", "a.b.cluster.local.", "a.b."}},
		{"default ndots 1, one dot: as-is first", "web.example", search, []string{
			"web.example.", "web.example.ns1.svc.cluster.local.", "web.example.svc.cluster.local.", "web.example.cluster.local."}},
		{"trailing dot: absolute, no search", "web.example.", search + "\noptions ndots:5", []string{"web.example."}},
		{"no search list", "web", "options ndots:5", []string{"web."}},
		{"ndots 0, no dots: as-is first", "web", "search a.test\noptions ndots:0", []string{"web.", "web.a.test."}},
		{"domain line", "web", "domain corp.test", []string{"web.corp.test.", "web."}},
		{"upper case folded", "WEB", "search A.test", []string{"web.a.test.", "web."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newTestDNS(t)
			r := newTestResolver(t, s, tt.conf, ResolverConfig{})
			if got := r.Conf().Candidates(tt.host); !slices.Equal(got, tt.want) {
				t.Errorf("Candidates(%q) = %q; want %q", tt.host, got, tt.want)
			}
			_, err := r.Lookup(context.Background(), tt.host)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Lookup(%q) err = %v; want ErrNotFound", tt.host, err)
			}
			if got := s.names(); !slices.Equal(got, tt.want) {
				t.Errorf("names asked = %q; want %q", got, tt.want)
			}
			// Both A and AAAA are asked for every candidate.
			for _, n := range tt.want {
				if s.count(n, dns.TypeA) != 1 || s.count(n, dns.TypeAAAA) != 1 {
					t.Errorf("%s: A asked %d times, AAAA %d; want 1 and 1", n, s.count(n, dns.TypeA), s.count(n, dns.TypeAAAA))
				}
			}
		})
	}
}

// TestSearchStopsAtFirstAnswer: the first candidate with addresses wins,
// and NODATA (the name exists without A/AAAA) moves on like NXDOMAIN.
func TestSearchStopsAtFirstAnswer(t *testing.T) {
	s := newTestDNS(t)
	s.set("my-server-service.ns1.svc.cluster.local.", 30) // exists, no records: NODATA
	s.set("my-server-service.svc.cluster.local.", 30, "198.18.1.1", "198.18.1.2", "2001:2::1")
	s.set("my-server-service.cluster.local.", 30, "198.18.9.9")
	r := newTestResolver(t, s, "search ns1.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5", ResolverConfig{})
	ans, err := r.Lookup(context.Background(), "my-server-service")
	if err != nil {
		t.Fatal(err)
	}
	if ans.Name != "my-server-service.svc.cluster.local." {
		t.Errorf("Name = %q; want the second candidate", ans.Name)
	}
	want := []netip.Addr{netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("2001:2::1")}
	if !slices.Equal(ans.Addrs, want) {
		t.Errorf("Addrs = %v; want %v", ans.Addrs, want)
	}
	if got := s.names(); len(got) != 2 {
		t.Errorf("names asked = %q; want only the first two candidates", got)
	}

	r4 := newTestResolver(t, s, "search svc.cluster.local", ResolverConfig{Network: "ip4"})
	s.reset()
	ans, err = r4.Lookup(context.Background(), "my-server-service")
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Addrs) != 2 || s.count("my-server-service.svc.cluster.local.", dns.TypeAAAA) != 0 {
		t.Errorf("ip4: Addrs = %v, AAAA queries %d; want 2 IPv4 addresses and no AAAA query",
			ans.Addrs, s.count("my-server-service.svc.cluster.local.", dns.TypeAAAA))
	}
}

func TestTTLClamp(t *testing.T) {
	s := newTestDNS(t)
	s.set("short.test.", 1, "198.18.0.1")
	s.set("long.test.", 86400, "198.18.0.2")
	s.set("mid.test.", 60, "198.18.0.3")
	r := newTestResolver(t, s, "", ResolverConfig{MinTTL: 5 * time.Second, MaxTTL: 5 * time.Minute})
	for host, want := range map[string]time.Duration{
		"short.test.": 5 * time.Second, "long.test.": 5 * time.Minute, "mid.test.": time.Minute,
	} {
		ans, err := r.Lookup(context.Background(), host)
		if err != nil {
			t.Fatal(err)
		}
		if ans.TTL != want {
			t.Errorf("%s: TTL = %v; want %v", host, ans.TTL, want)
		}
		if d := time.Until(ans.Expires); d <= want-time.Second || d > want {
			t.Errorf("%s: expires in %v; want about %v", host, d, want)
		}
	}
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	s := newTestDNS(t)
	s.set("big.test.", 30, "198.18.0.1")
	s.configure(func(s *testDNS) { s.truncate["big.test."] = true })
	r := newTestResolver(t, s, "", ResolverConfig{Network: "ip4"})
	ans, err := r.Lookup(context.Background(), "big.test.")
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Addrs) != 1 {
		t.Errorf("Addrs = %v; want the TCP answer", ans.Addrs)
	}
	got := s.all()
	want := []query{{"big.test.", dns.TypeA, "udp"}, {"big.test.", dns.TypeA, "tcp"}}
	if !slices.Equal(got, want) {
		t.Errorf("queries = %v; want %v", got, want)
	}
}

// TestServfailAndDeadServerMoveToNextNameserver: a dead server (nothing
// listening) and a SERVFAILing one are skipped; the third answers.
func TestServfailAndDeadServerMoveToNextNameserver(t *testing.T) {
	bad := newTestDNS(t)
	bad.configure(func(s *testDNS) { s.servfail["svc.test."] = true })
	dead := newTestDNS(t)
	dead.stop()
	good := newTestDNS(t)
	good.set("svc.test.", 30, "198.18.0.7")
	p := writeResolvConf(t, "nameserver "+dead.addr.String()+"\nnameserver "+bad.addr.String()+
		"\nnameserver "+good.addr.String()+"\noptions attempts:1\n")
	r, err := NewResolver(ResolverConfig{ResolvConf: p, Timeout: 200 * time.Millisecond, Network: "ip4"})
	if err != nil {
		t.Fatal(err)
	}
	ans, err := r.Lookup(context.Background(), "svc.test.")
	if err != nil {
		t.Fatal(err)
	}
	if ans.Addrs[0] != netip.MustParseAddr("198.18.0.7") {
		t.Errorf("Addrs = %v; want 198.18.0.7", ans.Addrs)
	}
	if bad.count("svc.test.", dns.TypeA) != 1 {
		t.Errorf("SERVFAILing server asked %d times; want 1", bad.count("svc.test.", dns.TypeA))
	}

	// Every server failing is not "not found": a temporary error.
	good.configure(func(s *testDNS) { s.servfail["svc.test."] = true })
	_, err = r.Lookup(context.Background(), "svc.test.")
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("all servers failing: err = %v; want a non-ErrNotFound error", err)
	}
}

func TestLookupRefusesIPLiterals(t *testing.T) {
	s := newTestDNS(t)
	r := newTestResolver(t, s, "search a.test", ResolverConfig{})
	for _, h := range []string{"198.18.0.1", "2001:2::1", "[2001:2::1]", "", "bad name..x"} {
		if _, err := r.Lookup(context.Background(), h); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%q) err = %v; want ErrNotFound", h, err)
		}
	}
	if q := s.all(); len(q) != 0 {
		t.Errorf("queries = %v; want none", q)
	}
}

func TestNewResolverErrors(t *testing.T) {
	if _, err := NewResolver(ResolverConfig{ResolvConf: "/nonexistent/resolv.conf"}); err == nil ||
		!strings.Contains(err.Error(), "resolv-conf") {
		t.Errorf("missing file: err = %v; want one naming resolv-conf", err)
	}
	if _, err := NewResolver(ResolverConfig{Conf: &ResolvConf{}, Network: "tcp"}); err == nil {
		t.Error("network tcp: err = nil; want an error")
	}
}
