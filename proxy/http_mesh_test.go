package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// meshHTTPEnv is an HTTP-aware outbound proxy and an inbound proxy
// (meshEnv) in front of an app on 127.0.0.1 that speaks HTTP/1.1 and h2c,
// named web.test in DNS.
func meshHTTPEnv(t testing.TB, h http.Handler) (*meshEnv, *proxyDialer, string) {
	t.Helper()
	z := newZoneDNS(t)
	z.set("web.test.", "127.0.0.1")
	e := newMeshEnv(t, meshOpts{outHTTP: &HTTPConfig{Balancer: balancerFor(t, z)}})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	app.Protocols.SetHTTP1(true)
	app.Protocols.SetUnencryptedHTTP2(true)
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	appAddr := netip.MustParseAddrPort(ln.Addr().String())
	d := newProxyDialer(t, e.out, appAddr)
	return e, d, fmt.Sprintf("web.test:%d", appAddr.Port())
}

// TestHTTPMeshPooledConnections: HTTP/1 client requests travel between
// the proxies as HTTP/1.1 over pooled mTLS connections, one request at a
// time: 4 client connections sending one request after another need at
// most 4 mesh connections, reused for all 64 requests.
func TestHTTPMeshPooledConnections(t *testing.T) {
	e, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(headerAppProtocol) != "" {
			t.Errorf("app saw %s: %q; the server proxy must remove it", headerAppProtocol, r.Header.Get(headerAppProtocol))
		}
		fmt.Fprintf(w, "%s|%s", r.Proto, r.Header.Get(headerXFCC))
	}))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 4 {
		c := d.client() // each its own client connection to the proxy
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 16 {
				code, _, body, err := get(t, c, "http://"+authority+"/", authority)
				want := fmt.Sprintf("HTTP/1.1|By=%s;URI=%s", serverID, clientID)
				if err != nil || code != 200 || body != want {
					errs <- fmt.Errorf("GET = %d %q, %v; want 200 %q", code, body, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// 64 requests over 4 client connections: at most 4 mesh connections,
	// and the spares the pool dialed ahead when it ran dry.
	e.out.http.pool.Close() // waits for a spare's dial in flight
	spares := float64(e.out.http.pool.Stats().PreConnects)
	if got := testutil.ToFloat64(e.inM.open.WithLabelValues("inbound", TLSTrue, clientID.String(), "")); got < 1 || got > 4+spares {
		t.Errorf("mesh connections accepted = %v; want 1 to 4, plus %v pre-connected (pooled, one request at a time)", got, spares)
	}
	if got := testutil.ToFloat64(e.inM.requests.WithLabelValues("inbound", authority)); got != 64 {
		t.Errorf("inbound requests_total = %v; want 64", got)
	}
}

func TestHTTPMeshH2CAndTrailers(t *testing.T) {
	_, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Echo-Trailer")
		fmt.Fprintf(w, "%s|%s", r.Proto, b)
		w.Header().Set("X-Echo-Trailer", r.Trailer.Get("X-Req-Trailer"))
	}))
	c := d.h2cClient()
	req, _ := http.NewRequest(http.MethodPost, "http://"+authority+"/", io.NopCloser(strings.NewReader("body")))
	req.Host = authority
	req.Trailer = http.Header{"X-Req-Trailer": {"from-client"}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "HTTP/2.0|body" {
		t.Errorf("app saw %q; want HTTP/2.0|body (h2c delivery)", b)
	}
	if got := resp.Trailer.Get("X-Echo-Trailer"); got != "from-client" {
		t.Errorf("response trailer = %q; want from-client (request trailer in, response trailer out)", got)
	}
}

func TestHTTPMeshUpgrade(t *testing.T) {
	_, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || r.Header.Get(headerXFCC) == "" {
			http.Error(w, "want Upgrade: echo and XFCC", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(c, brw)
	}))
	c, err := d.dial(t.Context(), "tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	upgradeEcho(t, c, authority)
}

// TestHTTPMeshAppUnreachable: when the server proxy cannot connect to its
// app it answers 502 app-unreachable, and the client proxy takes that as a
// connect failure of the endpoint: an idempotent request is tried again
// (here on the same, only endpoint), a request with a body that cannot be
// replayed is not, and both get the reason.
func TestHTTPMeshAppUnreachable(t *testing.T) {
	e, _, _ := meshHTTPEnv(t, http.NotFoundHandler())
	dead := closedPort(t)
	d := newProxyDialer(t, e.out, dead)
	authority := fmt.Sprintf("web.test:%d", dead.Port())
	inbound := func() float64 { return testutil.ToFloat64(e.inM.requests.WithLabelValues("inbound", authority)) }
	do := func(method string, body io.Reader) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+authority+"/", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = authority
		resp, err := d.client().Do(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		resp.Body.Close()
		return resp
	}

	if resp := do(http.MethodGet, nil); resp.StatusCode != http.StatusBadGateway || resp.Header.Get(headerProxyError) != reasonAppUnreachable {
		t.Fatalf("GET with the app down = %d %q; want 502 %q", resp.StatusCode, resp.Header.Get(headerProxyError), reasonAppUnreachable)
	}
	if got, want := inbound(), float64(1+DefaultHTTPRetries); got != want {
		t.Errorf("GET reached the server proxy %v times; want %v (tried again after app-unreachable)", got, want)
	}
	before := inbound()
	resp := do(http.MethodPost, io.NopCloser(strings.NewReader("body")))
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(headerProxyError) != reasonAppUnreachable {
		t.Errorf("POST with the app down = %d %q; want 502 %q", resp.StatusCode, resp.Header.Get(headerProxyError), reasonAppUnreachable)
	}
	if got := inbound() - before; got != 1 {
		t.Errorf("POST with a body reached the server proxy %v times; want 1 (a body is not replayed)", got)
	}
}
