package balancer

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// query is one question the test DNS server received.
type query struct {
	name  string
	qtype uint16
	proto string // "udp" or "tcp"
}

// testDNS is a real DNS server on 127.0.0.1 (UDP and TCP on one port)
// serving a zone the test controls.
type testDNS struct {
	t    *testing.T
	addr netip.AddrPort

	mu       sync.Mutex
	zone     map[string][]dns.RR // lowercased fqdn -> records
	queries  []query
	servfail map[string]bool
	truncate map[string]bool // answer over UDP with TC set and no records
	// cutUDP: answer over UDP with TC set and the records cut off in the
	// middle of the last one, as a server that truncates to a size does.
	cutUDP map[string]bool
	delay  time.Duration

	udp, tcp *dns.Server
}

func newTestDNS(t *testing.T) *testDNS {
	t.Helper()
	s := &testDNS{t: t, zone: map[string][]dns.RR{}, servfail: map[string]bool{}, truncate: map[string]bool{}, cutUDP: map[string]bool{}}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	s.addr = netip.MustParseAddrPort(pc.LocalAddr().String())
	h := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: ln, Handler: h}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
	}
	t.Cleanup(s.stop)
	return s
}

// stop shuts the server down; further queries time out or are refused.
func (s *testDNS) stop() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

// set replaces the records of name (lowercase, absolute) with A/AAAA
// records for addrs with the given TTL in seconds.
func (s *testDNS) set(name string, ttl uint32, addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rrs []dns.RR
	for _, a := range addrs {
		ip := netip.MustParseAddr(a)
		hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: ttl}
		if ip.Is4() {
			hdr.Rrtype = dns.TypeA
			rrs = append(rrs, &dns.A{Hdr: hdr, A: ip.AsSlice()})
		} else {
			hdr.Rrtype = dns.TypeAAAA
			rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
		}
	}
	s.zone[name] = rrs
}

func (s *testDNS) remove(name string) {
	s.mu.Lock()
	delete(s.zone, name)
	s.mu.Unlock()
}

func (s *testDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	s.mu.Lock()
	s.queries = append(s.queries, query{name, q.Qtype, proto})
	rrs, exists := s.zone[name]
	servfail, trunc, delay := s.servfail[name], s.truncate[name] && proto == "udp", s.delay
	cut := s.cutUDP[name] && proto == "udp"
	s.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	m := new(dns.Msg)
	m.SetReply(req)
	switch {
	case servfail:
		m.Rcode = dns.RcodeServerFailure
	case trunc:
		m.Truncated = true
	case !exists:
		m.Rcode = dns.RcodeNameError
	default:
		for _, rr := range rrs {
			if t := rr.Header().Rrtype; t == q.Qtype || t == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
	}
	if cut {
		m.Truncated = true
		b, err := m.Pack()
		if err != nil {
			s.t.Error(err)
			return
		}
		w.Write(b[:len(b)-2])
		return
	}
	w.WriteMsg(m)
}

// names returns the distinct names queried, in order of first query,
// optionally only those of one qtype.
func (s *testDNS) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, q := range s.queries {
		if !seen[q.name] {
			seen[q.name] = true
			out = append(out, q.name)
		}
	}
	return out
}

// count returns how many queries of qtype for name arrived.
func (s *testDNS) count(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, q := range s.queries {
		if q.name == name && q.qtype == qtype {
			n++
		}
	}
	return n
}

func (s *testDNS) reset() {
	s.mu.Lock()
	s.queries = nil
	s.mu.Unlock()
}

func (s *testDNS) all() []query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]query(nil), s.queries...)
}

// writeResolvConf writes a resolv.conf with the given body to a temp file.
func writeResolvConf(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// newTestResolver returns a resolver for s with search list and ndots,
// a short timeout and one attempt.
func newTestResolver(t *testing.T, s *testDNS, extra string, cfg ResolverConfig) *Resolver {
	t.Helper()
	cfg.ResolvConf = writeResolvConf(t, "nameserver "+s.addr.String()+"\n"+extra+"\noptions attempts:1\n")
	if cfg.Timeout == 0 {
		cfg.Timeout = 200 * time.Millisecond
	}
	r, err := NewResolver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// configure changes the server's behaviour under its lock.
func (s *testDNS) configure(f func(s *testDNS)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}
