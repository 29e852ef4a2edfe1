package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"meshproxy/internal/netnstest"
)

// zone is a tiny authoritative DNS server whose A records a test changes
// while it runs.
type zone struct {
	mu      sync.Mutex
	records map[string][]netip.Addr // FQDN with trailing dot
	queries atomic.Int64
}

func (z *zone) set(name string, addrs ...netip.Addr) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.records[dns.Fqdn(name)] = addrs
}

func (z *zone) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	z.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	z.mu.Lock()
	addrs, ok := z.records[q.Question[0].Name]
	z.mu.Unlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
	}
	if q.Question[0].Qtype == dns.TypeA {
		for _, a := range addrs {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A:   a.AsSlice(),
			})
		}
	}
	w.WriteMsg(m)
}

// serveZone runs z on a real UDP socket inside pod p, and writes a
// resolv.conf for it (search domains as in a Kubernetes pod of namespace
// demo) that the proxy UID can read.
func serveZone(t *testing.T, p *netnstest.Pod, z *zone) (string, func()) {
	t.Helper()
	pc, err := p.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: z}
	go srv.ActivateAndServe()
	var once sync.Once
	stop := func() { once.Do(func() { srv.Shutdown() }) }
	t.Cleanup(stop)
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	path := filepath.Join(dir, "resolv.conf")
	conf := fmt.Sprintf("nameserver %s\nsearch demo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", pc.LocalAddr())
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, stop
}

// TestBalancingAcrossPods: the client pod's app asks for http://web:8080;
// its proxy resolves web.demo.svc.cluster.local in DNS to three endpoint
// pods, each meshed, and spreads the requests: evenly over equal servers,
// away from a slow one, never to one dropped from DNS, and with no failed
// request when one endpoint pod dies under load.
func TestBalancingAcrossPods(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := meshproxyBinary(t)
	ca := newCADir(t, "cluster.local")
	client := netnstest.NewPod(t, "client")
	var servers []*netnstest.Pod
	var addrs []netip.Addr
	for i := 1; i <= 3; i++ {
		s := netnstest.NewPod(t, fmt.Sprintf("web%d", i))
		netnstest.LinkNamed(t, client, s, fmt.Sprintf("eth%d", i), "eth0",
			[]netip.Prefix{mustPrefix(fmt.Sprintf("198.18.%d.1/24", i))},
			[]netip.Prefix{mustPrefix(fmt.Sprintf("198.18.%d.2/24", i))})
		servers = append(servers, s)
		addrs = append(addrs, netip.MustParseAddr(fmt.Sprintf("198.18.%d.2", i)))
	}
	for _, p := range append([]*netnstest.Pod{client}, servers...) {
		if out, err := exec.Command(bin, "init", "--netns", p.Path, "--mode", "redirect", "--proxy-uid", "2102").CombinedOutput(); err != nil {
			t.Fatalf("init in %s: %v\n%s", p.Name, err, out)
		}
	}
	z := &zone{records: map[string][]netip.Addr{}}
	z.set("web.demo.svc.cluster.local", addrs...)
	resolv, stopDNS := serveZone(t, client, z)
	cp := startProxy(t, client, "redirect", meshArgs(ca, clientID, "--resolv-conf", resolv)...)
	var serverProxies []*labProxy
	for i, s := range servers {
		serverProxies = append(serverProxies, startProxy(t, s, "redirect", meshArgs(ca, fmt.Sprintf("spiffe://cluster.local/ns/demo/sa/web%d", i+1))...))
	}

	// Each endpoint's app says who it is; delay[i] slows one down.
	var delay [3]atomic.Int64
	apps := make([]*http.Server, 3)
	for i, s := range servers {
		l, err := s.Listen("tcp4", "0.0.0.0:8080")
		if err != nil {
			t.Fatal(err)
		}
		apps[i] = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(time.Duration(delay[i].Load()))
			fmt.Fprintf(w, "web%d", i+1)
		})}
		go apps[i].Serve(l)
		t.Cleanup(func() { apps[i].Close() })
	}

	// The app resolved "web" to one of the addresses itself; whichever it
	// dials, its proxy balances each request by authority.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return client.DialContext(ctx, "tcp", "198.18.1.2:8080")
		},
		MaxIdleConnsPerHost: 8,
	}}
	spread := func(n, workers int) (map[string]int, int) {
		var mu sync.Mutex
		counts := map[string]int{}
		failed := 0
		var wg sync.WaitGroup
		per := n / workers
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < per; j++ {
					resp, err := hc.Get("http://web:8080/")
					var body []byte
					if err == nil {
						body, err = io.ReadAll(resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != 200 {
							err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
						}
					}
					mu.Lock()
					if err != nil {
						failed++
						if failed <= 3 {
							t.Logf("request failed: %v", err)
						}
					} else {
						counts[string(body)]++
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return counts, failed
	}

	// Equal servers: roughly even.
	counts, failed := spread(300, 3)
	t.Logf("equal servers: %v", counts)
	if failed > 0 {
		t.Errorf("%d requests failed with every endpoint healthy", failed)
	}
	for i := 1; i <= 3; i++ {
		if c := counts[fmt.Sprintf("web%d", i)]; c < 300/3/2 || c > 300/3*2 {
			t.Errorf("web%d got %d of 300 requests; want roughly 100 (50-200)", i, c)
		}
	}
	// Requests travel between proxies on pooled mTLS connections, one
	// request at a time each: far fewer mesh connections than requests,
	// and the client proxy's pool counts the reuses.
	var meshConns float64
	for _, p := range serverProxies {
		meshConns += p.metric(t, `meshproxy_tcp_open_total{direction="inbound",tls="true"}`)
	}
	if meshConns == 0 || meshConns > 30 {
		t.Errorf("%v mesh connections carried 300 requests; want a few pooled ones", meshConns)
	}
	dials, reuses := cp.metric(t, "meshproxy_pool_dials_total"), cp.metric(t, "meshproxy_pool_reuses_total")
	if dials == 0 || dials > 30 || reuses < 300-30 {
		t.Errorf("client proxy pool: %v dials and %v reuses for 300 requests; want at most 30 dials and the rest reused", dials, reuses)
	}

	// One slow server: most requests go to the fast ones.
	delay[2].Store(int64(40 * time.Millisecond))
	counts, failed = spread(300, 3)
	t.Logf("web3 slow: %v", counts)
	if failed > 0 {
		t.Errorf("%d requests failed with one slow endpoint", failed)
	}
	if c := counts["web3"]; c > 300/5 {
		t.Errorf("the slow web3 got %d of 300 requests; want under 60", c)
	}
	delay[2].Store(0)

	// Dropped from DNS: no new requests after the answer's TTL (1s,
	// raised to the resolver's 5s floor) has run out.
	z.set("web.demo.svc.cluster.local", addrs[0], addrs[2])
	time.Sleep(7 * time.Second)
	counts, failed = spread(150, 3)
	t.Logf("web2 dropped from DNS: %v", counts)
	if counts["web2"] != 0 || failed > 0 {
		t.Errorf("after dropping web2 from DNS: %v, %d failed; want no request to web2 and none failed", counts, failed)
	}

	// web1's pod dies (proxy and app) under load. Only requests whose
	// response had already begun when it died may fail (at most one per
	// worker); every other is retried on another endpoint, and afterwards
	// web1 is ejected and nothing fails.
	z.set("web.demo.svc.cluster.local", addrs...)
	time.Sleep(7 * time.Second)
	done := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		serverProxies[0].cmd.Process.Signal(syscall.SIGKILL)
		apps[0].Close()
		close(done)
	}()
	counts, failed = spread(600, 4)
	<-done
	t.Logf("web1 killed under load: %v, %d failed", counts, failed)
	if failed > 4 {
		t.Errorf("%d idempotent requests failed when web1 died; want at most the 4 in flight", failed)
	}
	counts, failed = spread(150, 3)
	t.Logf("after web1 died: %v, %d failed", counts, failed)
	if failed > 0 || counts["web1"] > 0 {
		t.Errorf("after web1 died: %v, %d failed; want none failed and none served by web1", counts, failed)
	}
	if z.queries.Load() == 0 {
		t.Error("the DNS server saw no query")
	}

	// DNS down: the last good answer keeps serving (the app's own
	// destination, web1, is dead, so a fallback to it would fail).
	stopDNS()
	time.Sleep(7 * time.Second)
	counts, failed = spread(90, 3)
	t.Logf("DNS down: %v, %d failed", counts, failed)
	if failed > 0 || counts["web2"]+counts["web3"] != 90 {
		t.Errorf("with DNS down: %v, %d failed; want every request served from the cached answer", counts, failed)
	}
}
