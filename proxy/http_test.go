package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// httpEnv is an HTTP-aware outbound Server over a real Balancer and DNS
// server, three backends named web.test and a fourth that is the
// connections' original destination.
type httpEnv struct {
	dns     *zoneDNS
	srv     *Server
	m       *Metrics
	web     []*backend
	orig    *backend
	port    uint16
	d       *proxyDialer
	c       *http.Client
	authory string // web.test:port
}

// envOpts adjust an httpEnv.
type envOpts struct {
	HTTPConfig
	backendIdle time.Duration // the backends' idle timeout
}

func newHTTPEnv(t *testing.T, h http.Handler, cfg envOpts) *httpEnv {
	t.Helper()
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	}
	bs := startBackends(t, h, cfg.backendIdle, "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
	e := &httpEnv{dns: newZoneDNS(t), web: bs[:3], orig: bs[3], port: bs[0].addr.Port()}
	e.dns.set("web.test.", "127.0.0.1", "127.0.0.2", "127.0.0.3")
	hc := cfg.HTTPConfig
	hc.Balancer = balancerFor(t, e.dns)
	e.m, _ = NewMetrics(nil)
	e.srv = NewServer(Outbound, Config{OpaquePorts: noOpaque, DetectTimeout: 200 * time.Millisecond, HTTP: &hc}, e.m, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
	})
	e.d = newProxyDialer(t, e.srv, e.orig.addr)
	e.c = e.d.client()
	e.authory = fmt.Sprintf("web.test:%d", e.port)
	return e
}

func (e *httpEnv) url() string { return "http://" + e.orig.addr.String() + "/" }

func TestHTTPSpreadsOverEndpointsAndReusesConnections(t *testing.T) {
	e := newHTTPEnv(t, nil, envOpts{})
	seen := map[string]int{}
	const n = 90
	for range n {
		code, be, body, err := get(t, e.c, e.url(), e.authory)
		if err != nil || code != 200 || body != "hello" {
			t.Fatalf("GET = %d %q, %v; want 200 hello", code, body, err)
		}
		seen[be]++
	}
	for _, b := range e.web {
		if seen[b.name] == 0 {
			t.Errorf("backend %s got no request (spread %v)", b.name, seen)
		}
	}
	if seen[e.orig.name] != 0 {
		t.Errorf("original destination got %d requests; want 0 (the name resolves)", seen[e.orig.name])
	}
	var dials int64
	for _, b := range e.web {
		dials += b.conns.Load()
	}
	if dials > 6 {
		t.Errorf("backends accepted %d connections for %d sequential requests; want keep-alive reuse (at most 6)", dials, n)
	}
	// One, but net/http's Transport drops a kept connection whose request
	// write it has not seen finish within 50ms of the response's end
	// (maxWriteWaitBeforeConnReuse), which a loaded machine can take, and
	// dials again: a few, never one per request.
	if got := e.d.dials.Load(); got < 1 || got > 3 {
		t.Errorf("client connections = %d for %d sequential requests; want 1, at most 3 (keep-alive to the proxy)", got, n)
	}
	if got := testutil.ToFloat64(e.m.requests.WithLabelValues("outbound", e.authory)); got != n {
		t.Errorf("requests_total = %v; want %d", got, n)
	}
	if got := testutil.ToFloat64(e.m.responses.WithLabelValues("outbound", e.authory, "200", "success")); got != n {
		t.Errorf("responses_total{200,success} = %v; want %d", got, n)
	}
}

func TestHTTPOriginalDestination(t *testing.T) {
	e := newHTTPEnv(t, nil, envOpts{})
	for _, host := range []string{
		fmt.Sprintf("127.0.0.2:%d", e.port),    // IP literal: never balanced
		fmt.Sprintf("unknown.test:%d", e.port), // NXDOMAIN
		"unknown.test",                         // no port: the original one
	} {
		code, be, _, err := get(t, e.c, e.url(), host)
		if err != nil || code != 200 {
			t.Fatalf("Host %s: GET = %d, %v; want 200", host, code, err)
		}
		if be != e.orig.name {
			t.Errorf("Host %s reached %s; want the original destination %s", host, be, e.orig.name)
		}
	}
}

func TestHTTPIdleCloseByBackendFailsNothing(t *testing.T) {
	e := newHTTPEnv(t, nil, envOpts{backendIdle: 30 * time.Millisecond})
	for i := range 12 {
		code, _, _, err := get(t, e.c, e.url(), e.authory)
		if err != nil || code != 200 {
			t.Fatalf("request %d: GET = %d, %v; want 200", i, code, err)
		}
		time.Sleep(60 * time.Millisecond) // the backend closes its idle conn
	}
}

func TestHTTPEndpointKilledUnderLoad(t *testing.T) {
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		io.WriteString(w, "hello")
	}), envOpts{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	deadline := time.Now().Add(20 * time.Second)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 60 {
				if time.Now().After(deadline) {
					return
				}
				if w == 0 && i == 20 {
					e.web[1].kill()
				}
				code, _, _, err := get(t, e.c, e.url(), e.authory)
				if err != nil || code != 200 {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%d %v", code, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Errorf("%d idempotent requests failed after an endpoint was killed; first: %s", len(failures), failures[0])
	}
}

// rawExchange writes req on a fresh proxied connection and returns the
// first response.
func rawExchange(t *testing.T, e *httpEnv, req string) *http.Response {
	t.Helper()
	c, err := e.d.dial(context.Background(), "tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write([]byte(req))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	resp.Body.Close()
	return resp
}

func TestHTTPRejectsSmugglingShapes(t *testing.T) {
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}), envOpts{})
	h := "Host: " + e.authory + "\r\n"
	for name, tc := range map[string]struct {
		req  string
		want int
	}{
		"CL and TE":          {"POST / HTTP/1.1\r\n" + h + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		"TE and CL":          {"POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400},
		"differing CLs":      {"POST / HTTP/1.1\r\n" + h + "Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 400},
		"space before colon": {"GET / HTTP/1.1\r\n" + h + "Content-Length : 3\r\n\r\nabc", 400},
		"bad header byte":    {"GET / HTTP/1.1\r\n" + h + "X-A: a\x00b\r\n\r\n", 400},
		"bad header name":    {"GET / HTTP/1.1\r\n" + h + "X(A): a\r\n\r\n", 400},
		"huge headers":       {"GET / HTTP/1.1\r\n" + h + "X-Big: " + strings.Repeat("a", 80<<10) + "\r\n\r\n", 431},
		"fine":               {"POST / HTTP/1.1\r\n" + h + "Content-Length: 5\r\n\r\nabcde", 200},
		"fine chunked":       {"POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", 200},
	} {
		t.Run(name, func(t *testing.T) {
			if resp := rawExchange(t, e, tc.req); resp.StatusCode != tc.want {
				t.Errorf("status = %d; want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// A pipelined second request with a bad shape is caught too.
	c, err := e.d.dial(context.Background(), "tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write([]byte("POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"POST / HTTP/1.1\r\n" + h + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i, want := range []int{200, 400} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined response %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Errorf("pipelined response %d = %d; want %d", i, resp.StatusCode, want)
		}
	}
}

// zeroReader is an endless-enough reader of n bytes that never holds
// them all in memory.
type zeroReader struct{ left int64 }

func (r *zeroReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.left)
	clear(p[:n])
	r.left -= n
	return int(n), nil
}

func TestHTTPLargeStreamedAndChunkedBodies(t *testing.T) {
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %v %v", n, err, r.TransferEncoding)
	}), envOpts{})
	const size = 100 << 20
	for _, chunked := range []bool{false, true} {
		req, _ := http.NewRequest(http.MethodPost, e.url(), io.NopCloser(&zeroReader{left: size}))
		req.Host = e.authory
		if !chunked {
			req.ContentLength = size
		}
		resp, err := e.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("%d <nil>", size)
		if !strings.HasPrefix(string(b), want) {
			t.Errorf("chunked=%v: backend read %q; want %q", chunked, b, want)
		}
	}
}

func TestHTTPH2CFromApp(t *testing.T) {
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		fmt.Fprintf(w, "%s", r.Proto)
		w.Header().Set("X-Sum", "42")
	}), envOpts{})
	c := e.d.h2cClient()
	seen := map[string]bool{}
	for range 30 {
		req, _ := http.NewRequest(http.MethodGet, e.url(), nil)
		req.Host = e.authory
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || string(b) != "HTTP/2.0" {
			t.Fatalf("response %s, body %q; want HTTP/2 end to end (h2c upstream)", resp.Proto, b)
		}
		if got := resp.Trailer.Get("X-Sum"); got != "42" {
			t.Errorf("trailer X-Sum = %q; want 42", got)
		}
		seen[resp.Header.Get("X-Backend")] = true
	}
	if len(seen) != 3 {
		t.Errorf("h2c requests reached %v; want all 3 backends", seen)
	}
	if got := e.d.dials.Load(); got != 1 {
		t.Errorf("client connections = %d; want 1", got)
	}
}

func TestHTTPUpgradeTunnels(t *testing.T) {
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", 400)
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
	}), envOpts{})
	c, err := e.d.dial(context.Background(), "tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	upgradeEcho(t, c, e.authory)
}

func TestHTTPTimeoutAnd502(t *testing.T) {
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(500 * time.Millisecond)
		}
	}), envOpts{HTTPConfig: HTTPConfig{ResponseHeaderTimeout: 100 * time.Millisecond}})
	req, _ := http.NewRequest(http.MethodGet, e.url()+"slow", nil)
	req.Host = e.authory
	resp, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 504 || resp.Header.Get("Meshproxy-Error") != "timeout" {
		t.Errorf("slow upstream: %d meshproxy-error=%q; want 504 timeout", resp.StatusCode, resp.Header.Get("Meshproxy-Error"))
	}
	// Every endpoint down: 502 connect after the retries.
	for _, b := range e.web {
		b.kill()
	}
	code, _, _, err := get(t, e.c, e.url(), e.authory)
	if err != nil || code != 502 {
		t.Errorf("all endpoints down: %d, %v; want 502", code, err)
	}
	if got := testutil.ToFloat64(e.m.responses.WithLabelValues("outbound", e.authory, "502", "failure")); got != 1 {
		t.Errorf("responses_total{502,failure} = %v; want 1", got)
	}
}

func TestHTTPErrorResponses(t *testing.T) {
	h := newHTTPRuntime(NewServer(Outbound, Config{}, nil, nil), HTTPConfig{})
	for _, tc := range []struct {
		err    error
		status int
		reason string
	}{
		{&httpError{503, "no-endpoints", errNoEndpoints}, 503, "no-endpoints"},
		{errRespTimeout, 504, "timeout"},
		{&connectError{errNotMeshed}, 502, "connect"},
		{errMeshRequired, 502, "not-meshed"},
		{io.ErrUnexpectedEOF, 502, "upstream"},
	} {
		rec := &recorder{h: http.Header{}}
		r, _ := http.NewRequest("GET", "http://x/", nil)
		h.errorResponse(rec, r, tc.err)
		if rec.code != tc.status || rec.h.Get("Meshproxy-Error") != tc.reason {
			t.Errorf("%v: %d %q; want %d %q", tc.err, rec.code, rec.h.Get("Meshproxy-Error"), tc.status, tc.reason)
		}
	}
}

type recorder struct {
	h    http.Header
	code int
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) WriteHeader(c int)           { r.code = c }

func TestHTTPOffKeepsOpaqueForwarding(t *testing.T) {
	// With Config.HTTP nil an HTTP request is forwarded as bytes to the
	// original destination, whatever its Host.
	bs := startBackends(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), 0, "127.0.0.1")
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque}, nil, nil)
	d := newProxyDialer(t, srv, bs[0].addr)
	code, be, _, err := get(t, d.client(), "http://"+bs[0].addr.String()+"/", "web.test:1")
	if err != nil || code != 200 || be != bs[0].name {
		t.Errorf("GET = %d from %q, %v; want 200 from the original destination", code, be, err)
	}
	_ = netip.AddrPort{}
}

// upgradeEcho sends an "Upgrade: echo" request on c and checks that
// bytes echo through the tunnel.
func upgradeEcho(t *testing.T, c net.Conn, authority string) {
	t.Helper()
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n", authority)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("status = %d; want 101", resp.StatusCode)
	}
	msg := []byte("ping over the tunnel")
	c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("tunnel echo = %q, %v; want %q", got, err, msg)
	}
}

// TestHTTPPostRetriedAfterConnectFailure: a POST whose body cannot be
// replayed is still sent to another endpoint when its pick refused the
// connection (nothing was read from the body), and arrives whole.
func TestHTTPPostRetriedAfterConnectFailure(t *testing.T) {
	var got atomic.Int64
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if string(b) == "payload-body" {
			got.Add(1)
		}
		io.WriteString(w, "ok")
	}), envOpts{})
	e.web[1].kill()
	e.web[2].kill()
	for i := range 20 {
		req, err := http.NewRequest(http.MethodPost, e.url(), io.NopCloser(strings.NewReader("payload-body")))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = e.authory
		resp, err := e.c.Do(req)
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("POST %d = %d (%s); want 200 from the one live endpoint", i, resp.StatusCode, resp.Header.Get(headerProxyError))
		}
	}
	if n := got.Load(); n != 20 {
		t.Errorf("the live endpoint got %d whole bodies; want 20", n)
	}
}
