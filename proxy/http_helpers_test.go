package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"meshproxy/balancer"
)

// zoneDNS is a real DNS server (UDP) on loopback answering A queries from
// a fixed zone; other names get NXDOMAIN.
type zoneDNS struct {
	addr netip.AddrPort
	mu   sync.Mutex
	zone map[string][]netip.Addr // absolute, lowercase
}

func newZoneDNS(t testing.TB) *zoneDNS {
	t.Helper()
	z := &zoneDNS{zone: map[string][]netip.Addr{}}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z.addr = netip.MustParseAddrPort(pc.LocalAddr().String())
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve)}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return z
}

func (z *zoneDNS) set(name string, addrs ...string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	z.zone[strings.ToLower(name)] = as
}

func (z *zoneDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	z.mu.Lock()
	addrs, ok := z.zone[strings.ToLower(q.Name)]
	z.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	if !ok {
		m.Rcode = dns.RcodeNameError
	}
	for _, a := range addrs {
		if q.Qtype == dns.TypeA && a.Is4() {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: a.AsSlice()})
		}
	}
	w.WriteMsg(m)
}

// balancerFor returns a Balancer resolving through z (A records only).
func balancerFor(t testing.TB, z *zoneDNS) *balancer.Balancer {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte("nameserver "+z.addr.String()+"\noptions attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := balancer.NewResolver(balancer.ResolverConfig{ResolvConf: p, Network: "ip4", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d := balancer.NewDiscovery(r, balancer.DiscoveryConfig{})
	b := balancer.New(d, balancer.BalancerConfig{})
	t.Cleanup(func() { b.Close(); d.Close() })
	return b
}

// backend is a real HTTP/1.1 server on one loopback address that counts
// its accepted connections.
type backend struct {
	name  string
	addr  netip.AddrPort
	srv   *http.Server
	ln    net.Listener
	conns atomic.Int64
	// closed holds the remote address of each connection the backend's
	// server has closed (after its close: the peer has the FIN).
	closed sync.Map
}

// startBackends starts one backend per IP, all on the same port.
func startBackends(t testing.TB, h http.Handler, idle time.Duration, ips ...string) []*backend {
	t.Helper()
	for try := 0; try < 50; try++ {
		first, err := net.Listen("tcp4", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{first}
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp4", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				break
			}
			lns = append(lns, l)
		}
		if len(lns) < len(ips) {
			for _, l := range lns {
				l.Close()
			}
			continue
		}
		var bs []*backend
		for i, l := range lns {
			b := &backend{name: ips[i], addr: netip.MustParseAddrPort(l.Addr().String()), ln: l}
			b.srv = &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("X-Backend", b.name)
					h.ServeHTTP(w, r)
				}),
				IdleTimeout: idle,
				ConnState: func(c net.Conn, s http.ConnState) {
					switch s {
					case http.StateNew:
						b.conns.Add(1)
					case http.StateClosed:
						b.closed.Store(c.RemoteAddr().String(), true)
					}
				},
			}
			b.srv.Protocols = new(http.Protocols)
			b.srv.Protocols.SetHTTP1(true)
			b.srv.Protocols.SetUnencryptedHTTP2(true) // h2c prior knowledge
			go b.srv.Serve(l)
			t.Cleanup(func() { b.srv.Close() })
			bs = append(bs, b)
		}
		return bs
	}
	t.Fatal("no port free on every backend address")
	return nil
}

// kill stops the backend abruptly: listener and every connection closed.
func (b *backend) kill() { b.srv.Close() }

// proxyDialer connects clients to srv.Handle with original destination
// orig, over fresh loopback connections, and counts them.
type proxyDialer struct {
	t     testing.TB
	srv   *Server
	orig  netip.AddrPort
	dials atomic.Int64
	wg    sync.WaitGroup
}

func newProxyDialer(t testing.TB, srv *Server, orig netip.AddrPort) *proxyDialer {
	d := &proxyDialer{t: t, srv: srv, orig: orig}
	t.Cleanup(d.wg.Wait)
	return d
}

func (d *proxyDialer) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	front, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	defer front.Close()
	c, err := net.DialTCP("tcp4", nil, front.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, err
	}
	sc, err := front.AcceptTCP()
	if err != nil {
		c.Close()
		return nil, err
	}
	d.dials.Add(1)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.srv.Handle(context.Background(), sc, d.orig)
	}()
	return c, nil
}

// client is an HTTP/1.1 client whose every connection goes through the
// proxy.
func (d *proxyDialer) client() *http.Client {
	tr := &http.Transport{DialContext: d.dial, MaxIdleConnsPerHost: 16, DisableCompression: true}
	d.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// h2cClient is an h2c (prior knowledge) client through the proxy.
func (d *proxyDialer) h2cClient() *http.Client {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, n, a string, _ *tls.Config) (net.Conn, error) {
		return d.dial(ctx, n, a)
	}}
	d.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// get sends a GET for url with the given Host and returns the status, the
// X-Backend header and the body.
func get(t testing.TB, c *http.Client, url, host string) (int, string, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Backend"), string(b), err
}
