package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshproxy/balancer"
	"meshproxy/identity"
)

var (
	clientID = identity.MustParseID("spiffe://cluster.local/ns/front/sa/web")
	serverID = identity.MustParseID("spiffe://cluster.local/ns/back/sa/api")
	loopback = netip.MustParseAddr("127.0.0.1")
)

// testCA returns an in-memory CA for trust domain cluster.local.
func testCA(t testing.TB) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// testManager returns a Manager holding a certificate for id from ca.
func testManager(t testing.TB, ca *identity.CA, id identity.ID) *identity.Manager {
	t.Helper()
	m, err := identity.NewManager(identity.ManagerConfig{ID: id, Source: &identity.LocalSource{CA: ca},
		Anchors: ca.Anchors(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// meshEnv is an outbound Server (client proxy) and an inbound Server
// (server proxy) whose mesh port is a real loopback listener feeding the
// inbound Server. Applications listen on other loopback ports; the
// outbound Server is handed the app's address as original destination,
// and the inbound Server delivers to 127.0.0.1:<header port>.
type meshEnv struct {
	ca               *identity.CA
	out, in          *Server
	outM, inM        *Metrics
	outLog, inLog    *logBuf
	cache            *balancer.MeshCache
	meshPort         uint16
	meshAddr         netip.AddrPort
	clientMgr, srvMg *identity.Manager
}

type meshOpts struct {
	outMesh, inMesh func(*Mesh) // adjust the configs
	clientCA        *identity.CA
	noInbound       bool // leave the mesh port closed
	outHTTP         *HTTPConfig
	outConfig       func(*Config) // adjust the outbound Server's config
	inConfig        func(*Config) // adjust the inbound Server's config
}

func newMeshEnv(t testing.TB, o meshOpts) *meshEnv {
	t.Helper()
	e := &meshEnv{ca: testCA(t), outLog: &logBuf{}, inLog: &logBuf{}}
	cca := o.clientCA
	if cca == nil {
		cca = e.ca
	}
	e.clientMgr = testManager(t, cca, clientID)
	e.srvMg = testManager(t, e.ca, serverID)
	var ln *net.TCPListener
	if o.noInbound {
		e.meshAddr = closedPort(t)
	} else {
		var err error
		ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		e.meshAddr = ln.Addr().(*net.TCPAddr).AddrPort()
	}
	e.meshPort = e.meshAddr.Port()
	e.cache = balancer.NewMeshCache(balancer.MeshCacheConfig{})
	om := &Mesh{Port: e.meshPort, ClientTLS: e.clientMgr.ClientTLSConfig, LocalID: clientID, Cache: e.cache}
	im := &Mesh{Port: e.meshPort, ServerTLS: e.srvMg.ServerTLSConfig(), LocalID: serverID}
	if o.outMesh != nil {
		o.outMesh(om)
	}
	if o.inMesh != nil {
		o.inMesh(im)
	}
	e.outM, _ = NewMetrics(nil)
	e.inM, _ = NewMetrics(nil)
	logger := func(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
	// Detection waits 1s for a client's first bytes: with 100ms a client
	// whose write came late on a loaded machine was taken for opaque (as
	// TestMeshRequestLineSplitAcrossReads was); 1s costs the tests whose
	// clients stay silent about 2s in all.
	base := Config{OpaquePorts: noOpaque, DetectTimeout: time.Second}
	oc, ic := base, base
	oc.Mesh, ic.Mesh = om, im
	oc.HTTP = o.outHTTP
	if o.outConfig != nil {
		o.outConfig(&oc)
	}
	if o.inConfig != nil {
		o.inConfig(&ic)
	}
	e.out = NewServer(Outbound, oc, e.outM, logger(e.outLog))
	e.in = NewServer(Inbound, ic, e.inM, logger(e.inLog))
	if ln != nil {
		var wg sync.WaitGroup
		t.Cleanup(func() {
			ln.Close()
			e.in.Shutdown(context.Background())
			wg.Wait()
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					e.in.Handle(context.Background(), c, e.meshAddr)
				}()
			}
		}()
	}
	return e
}

// countingApp is a loopback app server that counts its connections and
// runs fn on each.
func countingApp(t testing.TB, fn func(c *net.TCPConn)) (netip.AddrPort, func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	ap := upstream(t, func(c *net.TCPConn) {
		mu.Lock()
		n++
		mu.Unlock()
		fn(c)
	})
	return ap, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// waitFor polls cond for up to 5s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitValue waits until the counter or gauge c reads want.
func waitValue(t testing.TB, name string, c prometheus.Collector, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := testutil.ToFloat64(c)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v; want %v", name, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// echoRoundTrip writes msg, half-closes, and returns everything read back.
func echoRoundTrip(t testing.TB, c *net.TCPConn, msg []byte) []byte {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the echo: %v after %d bytes", err, len(got))
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	return got
}

// rawMeshClient dials the mesh port with cfg and completes the handshake.
func rawMeshClient(t testing.TB, addr netip.AddrPort, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr.String(), cfg)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}
