package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshproxy/balancer"
)

// The edges of the HTTP/1 fast path: early answers, timeouts, bodies
// that break off.

// postBig posts an 8 MiB body with c, as Go's Transport does: the
// response is read while the body is still being written, and a failed
// write ends the round trip unless the response came first.
func postBig(t *testing.T, c *http.Client, url, host string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(make([]byte, 8<<20)))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// TestH1EarlyAnswerLingers: a client still sending a large body when
// the proxy answers early (no endpoint answers: 502) reads the whole
// answer: the proxy half-closes and drains before it closes, instead of
// closing at once, where unread bytes make the kernel send a reset that
// fails the client's write first (about half the round trips on
// loopback without the linger).
func TestH1EarlyAnswerLingers(t *testing.T) {
	up := closedPort(t)
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, up)
	c := d.client()
	for i := range 10 {
		resp, _, err := postBig(t, c, "http://"+up.String()+"/u", up.String())
		if err != nil {
			t.Fatalf("round trip %d: %v; want the proxy's 502", i, err)
		}
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(headerProxyError) != "connect" {
			t.Fatalf("round trip %d: %d %q; want 502 connect", i, resp.StatusCode, resp.Header.Get(headerProxyError))
		}
	}
}

// TestH1MeshEarlyAnswerLingers: the same through two proxies, the app
// answering 413 before it reads the body and closing: both proxies
// linger (the server side toward the client side, the client side
// toward the client).
func TestH1MeshEarlyAnswerLingers(t *testing.T) {
	_, d, authority := meshHTTPEnv(t, answer413AndReset(t))
	c := d.client()
	for i := range 10 {
		resp, body, err := postBig(t, c, "http://"+authority+"/u", authority)
		if err != nil {
			t.Fatalf("round trip %d: %v; want the app's 413", i, err)
		}
		if resp.StatusCode != http.StatusRequestEntityTooLarge || body != "big!" {
			t.Fatalf("round trip %d: %d %q; want 413 %q", i, resp.StatusCode, body, "big!")
		}
	}
}

// TestH1PipelinedAfterEarlyAnswer: a request pipelined after one the
// proxy answers early (a malformed chunked body: 400) is not served,
// and the client reads the 400 and then the end of the connection, not
// a reset (the proxy drained the bytes it did not read).
func TestH1PipelinedAfterEarlyAnswer(t *testing.T) {
	var served atomic.Int64
	_, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/x" {
			served.Add(1)
		}
		io.Copy(io.Discard, r.Body)
	}), 0)
	rc := dialRaw(t, d)
	rc.send("POST /x HTTP/1.1\r\nHost: " + authority + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" +
		"GET /next HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	// More of the pipeline after the answer, unread by the proxy.
	rc.send(strings.Repeat("GET /more HTTP/1.1\r\nHost: "+authority+"\r\n\r\n", 100))
	resp, _ := rc.read("POST")
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("malformed chunked body: %d (close %v); want 400 closing", resp.StatusCode, resp.Close)
	}
	n, err := io.Copy(io.Discard, rc.r)
	if err != nil || n != 0 {
		t.Errorf("after the 400: %d more bytes, error %v; want the end of the connection", n, err)
	}
	if got := served.Load(); got != 0 {
		t.Errorf("the app served %d requests; want none after the 400 (the pipeline ends there)", got)
	}
}

// TestH1InboundResponseTimeout: the server side waits for the app's
// response head no longer than its response header timeout (not the
// idle timeout): 504 with meshproxy-error timeout, counted and logged;
// the app connection is dropped, so the app's late answer does not
// answer the next request on the same client connection.
func TestH1InboundResponseTimeout(t *testing.T) {
	z := newZoneDNS(t)
	z.set("web.test.", "127.0.0.1")
	e := newMeshEnv(t, meshOpts{
		// The client side waits longer: the server side's 504 is the one seen.
		outHTTP:  &HTTPConfig{Balancer: balancerFor(t, z), ResponseHeaderTimeout: 10 * time.Second},
		inConfig: func(c *Config) { c.HTTP = &HTTPConfig{ResponseHeaderTimeout: 200 * time.Millisecond} },
	})
	late := make(chan struct{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-late // answers only after the proxy gave up
		}
		io.WriteString(w, r.URL.Path)
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	defer close(late)
	appAddr := netip.MustParseAddrPort(ln.Addr().String())
	authority := fmt.Sprintf("web.test:%d", appAddr.Port())
	d := newProxyDialer(t, e.out, appAddr)
	rc := dialRaw(t, d)
	rc.send("GET /slow HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	resp, _ := rc.read("GET")
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(headerProxyError) != "timeout" {
		t.Fatalf("app that does not answer: %d %q; want 504 timeout", resp.StatusCode, resp.Header.Get(headerProxyError))
	}
	if got := testutil.ToFloat64(e.inM.responses.WithLabelValues("inbound", authority, "504", classFailure)); got != 1 {
		t.Errorf("inbound responses_total{status_code=504,classification=failure} = %v; want 1", got)
	}
	if !strings.Contains(e.inLog.String(), "http response timed out") {
		t.Errorf("the server side did not log the timeout; log:\n%s", e.inLog.String())
	}
	late <- struct{}{} // the late answer, to a connection the proxy dropped
	rc.send("GET /next HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "/next" {
		t.Errorf("the next request: %d %q; want 200 %q", resp.StatusCode, body, "/next")
	}
}

// TestH1ClientBodyBreaksOff: a client whose request body breaks off
// (reset, or end of file before Content-Length) gets nothing, and the
// request is counted as responses_total{status_code="499"} failure and
// logged once; the endpoint is not charged with a failure (the client's
// doing), the upstream connection (its request cut short) is not reused,
// and nothing is left behind.
func TestH1ClientBodyBreaksOff(t *testing.T) {
	for _, tc := range bodyCuts(t) {
		t.Run(tc.name, func(t *testing.T) {
			reading := make(chan struct{}, 1)
			bodyErr := make(chan error, 1)
			var remotesMu sync.Mutex
			var remotes []string // each request's app-side peer: its upstream connection
			bs := startBackends(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				remotesMu.Lock()
				remotes = append(remotes, r.RemoteAddr)
				remotesMu.Unlock()
				select {
				case reading <- struct{}{}:
				default:
				}
				_, err := io.Copy(io.Discard, r.Body)
				bodyErr <- err
			}), 0, "127.0.0.1")
			z := newZoneDNS(t)
			z.set("web.test.", "127.0.0.1")
			bal := balancerFor(t, z)
			log := &logBuf{}
			srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{Balancer: bal}}, nil,
				slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
			defer srv.Shutdown(context.Background())
			d := newProxyDialer(t, srv, bs[0].addr)
			authority := fmt.Sprintf("web.test:%d", bs[0].addr.Port())
			warmUp(t, srv, d, authority, bodyErr) // one pooled upstream connection
			<-reading                             // the warm-up GET's
			before := goroutines()
			fds := openFDs(t)

			c := startUpload(t, d, authority)
			breakOffMidBody(t, reading, bodyErr, func() { tc.cut(c) })
			waitConnEnded(t, srv)
			checkAbandoned(t, srv, log, bal, authority)
			// The upstream connection whose request was cut short is
			// not reused: the next request dials a second one.
			rc := dialRaw(t, d)
			rc.send("GET /next HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
			if resp, _ := rc.read("GET"); resp.StatusCode != 200 {
				t.Errorf("next request: %d; want 200", resp.StatusCode)
			}
			<-bodyErr
			remotesMu.Lock()
			if len(remotes) != 3 || remotes[2] == remotes[1] {
				t.Errorf("the app's requests came from %v; want the warm-up, the upload and the next request, the last two on different connections (the cut one not reused)", remotes)
			}
			remotesMu.Unlock()
			// Two, and the spare the pool may have dialed ahead when the
			// second request found the endpoint dry. Close cancels a
			// spare's dial in flight, which the app may still have
			// accepted (its connect had completed): such a spare is in
			// no pool count, so the bound is the one spare PreConnect
			// allows, not the PreConnects the pool counted.
			srv.http.pool.Close() // waits for a spare's dial in flight
			if n := bs[0].conns.Load(); n < 2 || n > 3 {
				t.Errorf("the app saw %d connections; want 2 (the cut one not reused) and at most one pre-connected spare (pool counted %d)", n, srv.http.pool.Stats().PreConnects)
			}
			rc.c.Close()
			waitConnEnded(t, srv)
			srv.closeIdleHTTP()
			waitProxyGoroutines(t, before)
			for end := time.Now().Add(5 * time.Second); openFDs(t) > fds; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatalf("%d descriptors open, %d before the request", openFDs(t), fds)
				}
			}
		})
	}
}

// TestHTTP1AppRedialsTrackedOnce: the net/http path (serveHTTP1, which
// serves what the fast path hands over on the server side) dials the
// app again whenever it closed; on a long client connection whose app
// closes after every response the dials must not pile up one tracked
// conn each, and closing the client connection's tracked conns closes
// the app connection still open. Its requests are counted as the fast
// path's are.
func TestHTTP1AppRedialsTrackedOnce(t *testing.T) {
	var opened, closed atomic.Int64
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/last" {
				w.Header().Set("Connection", "close") // the next request dials again
			}
			io.WriteString(w, r.URL.Path)
		}),
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				opened.Add(1)
			case http.StateClosed:
				closed.Add(1)
			}
		},
	}
	go app.Serve(ln)
	defer app.Close()
	target := netip.MustParseAddrPort(ln.Addr().String())

	srv := NewServer(Inbound, Config{}, nil, nil)
	defer srv.Shutdown(context.Background())
	k := &conn{s: srv, ctx: t.Context()}
	k.begin(connLabels{tls: TLSDisabled})
	client, sc := tcpPair(t)
	k.track(sc)
	done := make(chan error, 1)
	go func() { done <- srv.serveHTTP1(k, sc, nil, nil, target, "") }()

	client.SetDeadline(time.Now().Add(20 * time.Second))
	rc := &rawConn{t: t, c: client, r: bufio.NewReader(client)}
	const n = 20
	for i := range n {
		path := fmt.Sprintf("/r%d", i)
		if i == n-1 {
			path = "/last" // its app connection stays open
		}
		rc.send("GET " + path + " HTTP/1.1\r\nHost: app\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != path {
			t.Fatalf("request %d: %d %q; want 200 %q", i, resp.StatusCode, body, path)
		}
	}
	k.mu.Lock()
	tracked := len(k.closers)
	k.mu.Unlock()
	if tracked > 2 { // the client connection and the app connections' set
		t.Errorf("after %d app dials the connection tracks %d conns; want at most 2", n, tracked)
	}
	k.closeAll()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("serveHTTP1 did not return 10s after its connection was closed")
	}
	if got := testutil.ToFloat64(srv.m.requests.WithLabelValues("inbound", "app")); got != n {
		t.Errorf("requests_total = %v; want %d (the net/http path counts its requests too)", got, n)
	}
	if got := testutil.ToFloat64(srv.m.responses.WithLabelValues("inbound", "app", "200", classSuccess)); got != n {
		t.Errorf("responses_total{status_code=200} = %v; want %d", got, n)
	}
	if got := opened.Load(); got != n {
		t.Errorf("the app saw %d connections; want %d (one per request)", got, n)
	}
	// The last app connection, kept alive, closes with the client's.
	waitFor(t, "every app connection closed", func() bool { return closed.Load() == opened.Load() })
}

// TestH1UpstreamBodyBreaksOff: an upstream that closes in the middle of
// its response body (mid-chunk, or short of its Content-Length): the
// client sees a truncated body, never one that looks complete, and the
// response counts as a failure.
func TestH1UpstreamBodyBreaksOff(t *testing.T) {
	for _, tc := range []struct{ name, resp string }{
		{"mid-chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\nwor"},
		{"chunk-boundary", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello wor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := upstream(t, func(c *net.TCPConn) {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, tc.resp)
			})
			srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
			defer srv.Shutdown(context.Background())
			d := newProxyDialer(t, srv, up)
			rc := dialRaw(t, d)
			rc.send("GET / HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n")
			resp, err := http.ReadResponse(rc.r, &http.Request{Method: http.MethodGet})
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Errorf("the client read a complete-looking body %q from an upstream that broke off", b)
			}
			waitConnEnded(t, srv)
			if got := testutil.ToFloat64(srv.m.responses.WithLabelValues("outbound", up.String(), "200", classFailure)); got != 1 {
				t.Errorf("responses_total{status_code=200,classification=failure} = %v; want 1", got)
			}
		})
	}
}

// TestH1ResponseTimeoutRacesLateResponse: an upstream answering just
// after the response header timeout: the client gets the 504, the late
// answer goes nowhere (its connection is not pooled), and the next
// request on the same client connection gets its own answer.
func TestH1ResponseTimeoutRacesLateResponse(t *testing.T) {
	late := make(chan struct{})
	defer close(late)
	srv, bs, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-late
		}
		io.WriteString(w, r.URL.Path)
	}), 0)
	srv.http.cfg.ResponseHeaderTimeout = 200 * time.Millisecond
	rc := dialRaw(t, d)
	rc.send("GET /slow HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, _ := rc.read("GET"); resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(headerProxyError) != "timeout" {
		t.Fatalf("slow upstream: %d %q; want 504 timeout", resp.StatusCode, resp.Header.Get(headerProxyError))
	}
	late <- struct{}{} // the late answer
	for i := range 3 {
		rc.send("GET /next HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "/next" {
			t.Fatalf("request %d after the timeout: %d %q; want 200 %q", i, resp.StatusCode, body, "/next")
		}
	}
	if n := bs[0].conns.Load(); n != 2 {
		t.Errorf("the upstream saw %d connections; want 2 (the timed-out one dropped, one pooled after)", n)
	}
}

// TestH1MeshUpstreamBodyBreaksOff: the same through two proxies: the
// app closes mid-chunk; the server side closes the mesh connection, and
// the client sees the body cut short.
func TestH1MeshUpstreamBodyBreaksOff(t *testing.T) {
	e, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\nwor")
		c.Close()
	}))
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	resp, err := http.ReadResponse(rc.r, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err == nil {
		t.Errorf("the client read a complete-looking body %q from an app that broke off", b)
	}
	for _, m := range []struct {
		dir string
		m   *Metrics
	}{{"outbound", e.outM}, {"inbound", e.inM}} {
		waitValue(t, m.dir+" failures", m.m.responses.WithLabelValues(m.dir, authority, "200", classFailure), 1)
	}
}

// bodyCut is a way a client breaks its request body off.
type bodyCut struct {
	name string
	cut  func(c *net.TCPConn)
}

// bodyCuts are the ways a client breaks its request body off: a reset,
// and an end of file (after which the client must read the end, no
// answer).
func bodyCuts(t *testing.T) []bodyCut {
	return []bodyCut{
		{"reset", func(c *net.TCPConn) { c.SetLinger(0); c.Close() }},
		{"eof", func(c *net.TCPConn) {
			c.CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(c); len(b) > 0 || err != nil {
				t.Errorf("after the body broke off, the client read %q (error %v); want the end", b, err)
			}
			c.Close()
		}},
	}
}

// warmUp sends one GET through d to an app that reports each request's
// end on bodyErr, and waits until srv has no connection left: the
// pool's, the app's and the servers' own goroutines are started.
func warmUp(t *testing.T, srv *Server, d *proxyDialer, authority string, bodyErr <-chan error) {
	t.Helper()
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	rc.read("GET")
	<-bodyErr
	rc.c.Close()
	waitConnEnded(t, srv)
}

// startUpload dials through d and starts a POST of 1 MiB, sending its
// head and the first 64 KiB of its body.
func startUpload(t *testing.T, d *proxyDialer, authority string) *net.TCPConn {
	t.Helper()
	c, err := d.dial(t.Context(), "tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "POST /x HTTP/1.1\r\nHost: "+authority+"\r\nContent-Length: 1048576\r\n\r\n")
	c.Write(bytes.Repeat([]byte("y"), 64<<10))
	return c.(*net.TCPConn)
}

// breakOffMidBody waits until the app reads the upload's body, then runs
// cut (the client breaking off), and requires the app's read of the body
// to end with an error: never a complete body. Cutting once the app
// reads, not after a fixed wait: a cut before the request reached the
// app would leave it nothing to see.
func breakOffMidBody(t *testing.T, reading <-chan struct{}, bodyErr <-chan error, cut func()) {
	t.Helper()
	select {
	case <-reading:
	case err := <-bodyErr:
		t.Fatalf("the app's request ended (%v) before the client broke off", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the upload did not reach the app in 10s")
	}
	cut()
	select {
	case err := <-bodyErr:
		if err == nil {
			t.Error("the app read a complete body from a client that broke off mid-body")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the app's request did not end 10s after the client broke off")
	}
}

// checkAbandoned checks what a request whose client broke its body off
// leaves on the client side's srv: responses_total{status_code="499"}
// failure once, one log line, and no failure charged to an endpoint of
// bal.
func checkAbandoned(t *testing.T, srv *Server, log *logBuf, bal *balancer.Balancer, authority string) {
	t.Helper()
	waitValue(t, "responses_total{499,failure}", srv.m.responses.WithLabelValues("outbound", authority, "499", classFailure), 1)
	if n := strings.Count(log.String(), "http request abandoned by the client"); n != 1 {
		t.Errorf("the abandoned request was logged %d times; want once; log:\n%s", n, log.String())
	}
	for _, svc := range bal.Snapshot() {
		for _, ep := range svc.Endpoints {
			if ep.ConsecutiveFailures != 0 || ep.State != "ready" {
				t.Errorf("endpoint %s: %d consecutive failures, %s; want none, ready (the client broke off)", ep.Addr, ep.ConsecutiveFailures, ep.State)
			}
		}
	}
}
