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
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshproxy/balancer"
)

// h1Env is an HTTP-aware outbound proxy (no mesh) in front of backends
// named web.test in DNS.
func h1Env(t *testing.T, h http.Handler, idle time.Duration, ips ...string) (*Server, []*backend, *proxyDialer, string) {
	t.Helper()
	if len(ips) == 0 {
		ips = []string{"127.0.0.1"}
	}
	bs := startBackends(t, h, idle, ips...)
	z := newZoneDNS(t)
	z.set("web.test.", ips...)
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{Balancer: balancerFor(t, z)}}, nil, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	d := newProxyDialer(t, srv, bs[0].addr)
	return srv, bs, d, fmt.Sprintf("web.test:%d", bs[0].addr.Port())
}

// rawConn is a client connection through the proxy read with its own
// bufio.Reader.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, d *proxyDialer) *rawConn {
	t.Helper()
	c, err := d.dial(t.Context(), "tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatal(err)
	}
}

// read reads one response to a request of method and its whole body.
func (rc *rawConn) read(method string) (*http.Response, string) {
	rc.t.Helper()
	resp, err := http.ReadResponse(rc.r, &http.Request{Method: method})
	if err != nil {
		rc.t.Fatalf("reading the response to %s: %v", method, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("reading the body of the response to %s: %v", method, err)
	}
	return resp, string(b)
}

// echoPath answers with the request's path.
var echoPath = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) })

// TestH1UpstreamConnectionsReused: sequential requests over several
// client connections share one pooled upstream connection.
func TestH1UpstreamConnectionsReused(t *testing.T) {
	srv, bs, d, authority := h1Env(t, echoPath, 0)
	for i := range 3 {
		rc := dialRaw(t, d)
		for j := range 5 {
			path := fmt.Sprintf("/%d/%d", i, j)
			rc.send("GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
			if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != path {
				t.Fatalf("GET %s = %d %q", path, resp.StatusCode, body)
			}
		}
	}
	if n := bs[0].conns.Load(); n != 1 {
		t.Errorf("backend accepted %d connections for 15 sequential requests; want 1", n)
	}
	if st := srv.http.pool.Stats(); st.Dials != 1 || st.Reuses != 14 {
		t.Errorf("pool stats %+v; want 1 dial, 14 reuses", st)
	}
}

// TestH1MeshConnectionsReused: through both proxies, sequential
// requests use one mesh connection and one app connection.
func TestH1MeshConnectionsReused(t *testing.T) {
	e, d, authority := meshHTTPEnv(t, echoPath)
	for i := range 2 {
		rc := dialRaw(t, d)
		for j := range 5 {
			path := fmt.Sprintf("/%d/%d", i, j)
			rc.send("GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
			if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != path {
				t.Fatalf("GET %s = %d %q", path, resp.StatusCode, body)
			}
		}
	}
	if got := testutil.ToFloat64(e.inM.open.WithLabelValues("inbound", TLSTrue, clientID.String(), "")); got != 1 {
		t.Errorf("mesh connections accepted = %v; want 1", got)
	}
	if got := testutil.ToFloat64(e.inM.requests.WithLabelValues("inbound", authority)); got != 10 {
		t.Errorf("inbound requests_total = %v; want 10", got)
	}
	if got := testutil.ToFloat64(e.outM.responses.WithLabelValues("outbound", authority, "200", classSuccess)); got != 10 {
		t.Errorf("outbound responses_total{200} = %v; want 10", got)
	}
}

// TestH1ChunkedAndTrailersBothWays: a chunked request body with a
// trailer reaches the app through both proxies, and a chunked response
// with a trailer comes back.
func TestH1ChunkedAndTrailersBothWays(t *testing.T) {
	_, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		w.Header().Set("Trailer", "X-Resp-Trailer")
		fmt.Fprintf(w, "te=%v body=%s ", r.TransferEncoding, body)
		w.(http.Flusher).Flush()
		io.WriteString(w, "trailer="+r.Trailer.Get("X-Req-Trailer"))
		w.Header().Set("X-Resp-Trailer", "bye")
	}))
	rc := dialRaw(t, d)
	rc.send("POST /c HTTP/1.1\r\nHost: " + authority + "\r\nTransfer-Encoding: chunked\r\nTrailer: X-Req-Trailer\r\n\r\n" +
		"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Req-Trailer: hi\r\n\r\n")
	resp, body := rc.read("POST")
	if want := "te=[chunked] body=abcdefg trailer=hi"; resp.StatusCode != 200 || body != want {
		t.Errorf("POST = %d %q; want 200 %q", resp.StatusCode, body, want)
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("response Transfer-Encoding %v; want chunked", resp.TransferEncoding)
	}
	if got := resp.Trailer.Get("X-Resp-Trailer"); got != "bye" {
		t.Errorf("response trailer %q; want bye", got)
	}
	// The connection goes on.
	rc.send("GET /after HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, _ := rc.read("GET"); resp.StatusCode != 200 {
		t.Errorf("GET after = %d", resp.StatusCode)
	}
}

// TestH1NoBodyResponses: HEAD, 204 and 304 carry no body, whatever
// their headers say, and the connection's next response is read right.
func TestH1NoBodyResponses(t *testing.T) {
	_, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.Header().Set("Etag", `"x"`)
			w.WriteHeader(304)
		default:
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}
	}), 0)
	checkExchanges(t, dialRaw(t, d), authority, []exchange{
		{"HEAD", "/", 200, ""},
		{"GET", "/204", 204, ""},
		{"GET", "/304", 304, ""},
		{"HEAD", "/", 200, ""},
		{"GET", "/", 200, "hello"},
	})
}

// TestH1PipelinedInOrder: requests sent at once are answered in order.
func TestH1PipelinedInOrder(t *testing.T) {
	_, _, d, authority := h1Env(t, echoPath, 0)
	rc := dialRaw(t, d)
	var all strings.Builder
	for i := range 5 {
		fmt.Fprintf(&all, "GET /p%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, authority)
	}
	fmt.Fprintf(&all, "POST /post HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\n\r\nxyzGET /last HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	rc.send(all.String())
	for _, want := range []string{"/p0", "/p1", "/p2", "/p3", "/p4", "/post", "/last"} {
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("answer %d %q; want 200 %q", resp.StatusCode, body, want)
		}
	}
}

// TestH1PooledConnectionClosedWhileIdle: the backend closes its idle
// keep-alive connection; the next request still succeeds, on a new one,
// and the pool keeps no connection the backend closed.
func TestH1PooledConnectionClosedWhileIdle(t *testing.T) {
	var mu sync.Mutex
	var remotes []string // the backend-side peer of each request
	srv, bs, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes = append(remotes, r.RemoteAddr)
		mu.Unlock()
		io.WriteString(w, r.URL.Path)
	}), 30*time.Millisecond)
	rc := dialRaw(t, d)
	for i := range 3 {
		rc.send("GET /x HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "/x" {
			t.Fatalf("GET %d = %d %q", i, resp.StatusCode, body)
		}
		// The backend closes the idle connection after 30ms: wait for
		// that close, not a fixed time (a late close would take the
		// next request, replayed on another connection).
		mu.Lock()
		last := remotes[len(remotes)-1]
		mu.Unlock()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if _, ok := bs[0].closed.Load(last); ok {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("the backend has not closed request %d's connection 10s after it went idle (idle timeout 30ms)", i)
			}
		}
	}
	mu.Lock()
	if len(remotes) != 3 || remotes[0] == remotes[1] || remotes[1] == remotes[2] || remotes[0] == remotes[2] {
		t.Errorf("requests came from %v; want 3 on 3 connections (each closed while idle)", remotes)
	}
	mu.Unlock()
	// The pool's watcher drops an idle connection once its peer closes
	// it. What may stay idle is a spare the pool dialed ahead (PreConnect:
	// a request found the endpoint dry), unused, which the backend keeps.
	open := func() int {
		n := int(bs[0].conns.Load())
		bs[0].closed.Range(func(any, any) bool { n--; return true })
		return n
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := srv.http.pool.Stats()
		if st.Idle <= open() {
			break
		}
		if time.Now().After(end) {
			t.Errorf("pool keeps %d idle connections 5s after the backend closed them; the backend has %d open (spares)", st.Idle, open())
			break
		}
	}
}

// TestH1DeadPooledConnectionReplayed: an upstream that takes a request
// on a kept connection and closes without answering (the race of a
// keep-alive timeout): the proxy sends an idempotent request again on
// another connection, and the client never sees the failure; a POST,
// which the upstream may have acted on, is answered 502 instead.
//
// The upstream resets the first arrival of /b, /c and /d, whichever
// connection it comes on, not "the second request of a connection": the
// pool dials spares ahead (PreConnect) when a replay finds it dry, and
// where a spare lands decides which connection carries what (a POST on
// an unused spare would be answered).
func TestH1DeadPooledConnectionReplayed(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	received := map[string]int{} // "METHOD /path": arrivals
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					body := req.Method + " " + req.URL.Path
					mu.Lock()
					received[body]++
					first := received[body] == 1
					mu.Unlock()
					if first && req.URL.Path != "/a" {
						c.SetLinger(0) // taken, then reset without an answer
						return
					}
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
				}
			}()
		}
	}()
	up := netip.MustParseAddrPort(ln.Addr().String())
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, up)
	rc := dialRaw(t, d)
	for i, req := range []string{
		"GET /a HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n",
		"GET /b HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n",                           // reset, replayed
		"PUT /c HTTP/1.1\r\nHost: " + up.String() + "\r\nContent-Length: 4\r\n\r\nbody",  // reset, small body kept, replayed
		"POST /d HTTP/1.1\r\nHost: " + up.String() + "\r\nContent-Length: 4\r\n\r\nbody", // reset, not idempotent: not sent again
	} {
		rc.send(req)
		method, _, _ := strings.Cut(req, " ")
		resp, body := rc.read(method)
		want := method + " /" + string(rune('a'+i))
		if method == "POST" {
			// The upstream may have acted on it before closing: the
			// proxy must not send it again (as net/http's Transport).
			if resp.StatusCode != 502 {
				t.Errorf("request %d = %d %q; want 502 (a POST sent again after the upstream closed)", i, resp.StatusCode, body)
			}
			continue
		}
		if resp.StatusCode != 200 || body != want {
			t.Errorf("request %d = %d %q; want 200 %q", i, resp.StatusCode, body, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for req, want := range map[string]int{"GET /a": 1, "GET /b": 2, "PUT /c": 2, "POST /d": 1} {
		if received[req] != want {
			t.Errorf("upstream received %s %d times; want %d (replayed once when idempotent; the POST is not sent again): %v", req, received[req], want, received)
		}
	}
}

// TestH1RetriesDeadEndpoint: with one of two endpoints gone, every
// request succeeds (connect failures are retried on the other).
func TestH1RetriesDeadEndpoint(t *testing.T) {
	_, bs, d, authority := h1Env(t, echoPath, 0, "127.0.0.1", "127.0.0.2")
	bs[1].kill()
	c := d.client()
	for i := range 20 {
		code, backend, _, err := get(t, c, "http://"+bs[0].addr.String()+"/", authority)
		if err != nil || code != 200 || backend != "127.0.0.1" {
			t.Fatalf("request %d = %d from %q, %v; want 200 from 127.0.0.1", i, code, backend, err)
		}
	}
	// A POST too: a connect failure is retried whatever the method.
	rc := dialRaw(t, d)
	for i := range 4 {
		rc.send("POST /p HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: 2\r\n\r\nhi")
		if resp, body := rc.read("POST"); resp.StatusCode != 200 || body != "/p" {
			t.Fatalf("POST %d = %d %q", i, resp.StatusCode, body)
		}
	}
}

// TestH1HandOffUpgradeMidConnection: after requests the fast path
// served, an upgrade on the same connection goes to the net/http path
// and tunnels.
func TestH1HandOffUpgradeMidConnection(t *testing.T) {
	srv, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			io.WriteString(w, r.URL.Path)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		io.Copy(c, brw)
	}), 0)
	rc := dialRaw(t, d)
	for _, p := range []string{"/1", "/2"} {
		rc.send("GET " + p + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != p {
			t.Fatalf("GET %s = %d %q", p, resp.StatusCode, body)
		}
	}
	if st := srv.http.pool.Stats(); st.Reuses != 1 {
		t.Errorf("pool stats %+v: the first two requests did not take the fast path", st)
	}
	rc.send("GET /up HTTP/1.1\r\nHost: " + authority + "\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade = %v, %v; want 101", resp, err)
	}
	rc.send("ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(rc.r, got); err != nil || string(got) != "ping" {
		t.Fatalf("tunnel echo = %q, %v", got, err)
	}
}

// TestH1ForwardedHeaders: the app sees our x-forwarded-client-cert only
// (a client's copy is removed) and a traceparent that continues the
// client's trace with a new span.
func TestH1ForwardedHeaders(t *testing.T) {
	type seen struct {
		xfcc     []string
		tp, conn string
	}
	got := make(chan seen, 1)
	_, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Values(headerXFCC), r.Header.Get(headerTraceparent), r.Header.Get("X-Hop")}
	}))
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\nX-Forwarded-Client-Cert: By=evil;URI=spiffe://forged\r\n" +
		"Traceparent: " + tp + "\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n")
	if resp, _ := rc.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET = %d", resp.StatusCode)
	}
	s := <-got
	if want := []string{fmt.Sprintf("By=%s;URI=%s", serverID, clientID)}; len(s.xfcc) != 1 || s.xfcc[0] != want[0] {
		t.Errorf("app saw x-forwarded-client-cert %q; want %q", s.xfcc, want)
	}
	if !strings.HasPrefix(s.tp, tp[:36]) || s.tp == tp || !strings.HasSuffix(s.tp, "-01") {
		t.Errorf("app saw traceparent %q; want trace %s with a new span, flags 01", s.tp, tp[3:35])
	}
	if s.conn != "" {
		t.Errorf("app saw X-Hop %q, a header the client's Connection named", s.conn)
	}
}

// TestH1LargeBodyStreamed: a request body is streamed, not buffered
// whole: the app sees its first MiB while the client still holds the
// rest back.
func TestH1LargeBodyStreamed(t *testing.T) {
	const size = 8 << 20
	firstMiB := make(chan struct{})
	_, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadFull(r.Body, make([]byte, 1<<20)); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		close(firstMiB)
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprint(w, n+1<<20)
	}), 0)
	rc := dialRaw(t, d)
	rc.send("POST /big HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: " + strconv.Itoa(size) + "\r\n\r\n")
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	if _, err := rc.c.Write(chunk); err != nil {
		t.Fatal(err)
	}
	select {
	case <-firstMiB:
	case <-time.After(10 * time.Second):
		t.Fatal("the app did not get the body's first MiB while the client held the rest back")
	}
	for range size/len(chunk) - 1 {
		if _, err := rc.c.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if resp, body := rc.read("POST"); resp.StatusCode != 200 || body != strconv.Itoa(size) {
		t.Errorf("POST = %d %q; want 200 %d", resp.StatusCode, body, size)
	}
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestH1ClientResetMidBody: a client that resets in the middle of a
// request body leaves nothing behind (goroutines, descriptors), and the
// app sees the body cut short.
func TestH1ClientResetMidBody(t *testing.T) {
	reading := make(chan struct{}, 1)
	bodyErr := make(chan error, 1)
	srv, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case reading <- struct{}{}:
		default:
		}
		_, err := io.Copy(io.Discard, r.Body)
		bodyErr <- err
	}), 0)
	warmUp(t, srv, d, authority, bodyErr)
	<-reading // the warm-up GET's
	before := goroutines()
	fds := openFDs(t)

	c := startUpload(t, d, authority)
	breakOffMidBody(t, reading, bodyErr, func() { c.SetLinger(0); c.Close() })
	waitConnEnded(t, srv)
	waitProxyGoroutines(t, before)
	srv.closeIdleHTTP()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n := openFDs(t)
		if n <= fds {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d descriptors open, %d before the request", n, fds)
		}
	}
}

// TestH1IdleConnectionsHoldNoBuffer is the structural promise behind
// BenchmarkHTTPIdleConnMemory: an idle HTTP/1 client connection costs one
// goroutine and holds no request buffer.
func TestH1IdleConnectionsHoldNoBuffer(t *testing.T) {
	const n = 50
	srv, _, d, authority := h1Env(t, echoPath, 0)
	req := []byte("GET /hello HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	warm := dialRaw(t, d)
	warm.send(string(req))
	warm.read("GET")
	warm.c.Close()
	waitConnEnded(t, srv)
	time.Sleep(20 * time.Millisecond)
	g0 := runtime.NumGoroutine()
	var conns []*rawConn
	for range n {
		rc := dialRaw(t, d)
		rc.send(string(req))
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "/hello" {
			t.Fatalf("GET = %d %q", resp.StatusCode, body)
		}
		conns = append(conns, rc)
	}
	var held int64
	var perConn float64
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		held = h1Held.Load()
		perConn = float64(runtime.NumGoroutine()-g0) / n
		if held == 0 && perConn <= 1 {
			break
		}
	}
	if held != 0 {
		t.Errorf("%d request buffers held by %d idle connections; want 0", held, n)
	}
	if perConn > 1 {
		t.Errorf("%.2f goroutines per idle connection; want at most 1", perConn)
	}
	if got := srv.OpenConnections(); got != n {
		t.Errorf("%d open connections; want %d", got, n)
	}
	for _, rc := range conns {
		rc.c.Close()
	}
	waitConnEnded(t, srv)
}

// TestH1ShutdownClosesIdleConnections: Shutdown closes idle fast-path
// connections at once and returns.
func TestH1ShutdownClosesIdleConnections(t *testing.T) {
	srv, _, d, authority := h1Env(t, echoPath, 0)
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	rc.read("GET")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with an idle connection: %v", err)
	}
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.r.ReadByte(); err != io.EOF {
		t.Errorf("idle client connection after Shutdown: read %v; want EOF", err)
	}
}

// TestH1GarbledHeadAnsweredAtOnce: a head that turns to garbage before
// its end is answered (400, by net/http after the hand-off) at once, not
// after the header timeout.
func TestH1GarbledHeadAnsweredAtOnce(t *testing.T) {
	_, _, d, authority := h1Env(t, echoPath, 0)
	rc := dialRaw(t, d)
	rc.c.SetDeadline(time.Now().Add(5 * time.Second)) // the header timeout is 10s
	rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\nX-Bad: \x01\x02\r\nX-More: ")
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		t.Fatalf("no answer to a garbled head: %v", err)
	}
	if resp.StatusCode != 400 {
		t.Errorf("garbled head: %d; want 400", resp.StatusCode)
	}
}

// strayUpstream is a raw HTTP/1.1 upstream that answers HEAD and GET
// /204 with a head declaring a body, and sends that "body" (itself a
// whole response) a moment later, as broken servers do; other requests
// get "METHOD /path". It counts its connections.
func strayUpstream(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	var accepted atomic.Int64
	up := upstream(t, func(c *net.TCPConn) {
		accepted.Add(1)
		serveStray(c, bufio.NewReader(c), nil)
	})
	return up, &accepted
}

// serveStray serves c as strayUpstream does, first answering req when
// not nil.
func serveStray(c net.Conn, br *bufio.Reader, req *http.Request) {
	const stray = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTRAY!"
	defer c.Close()
	for {
		if req == nil {
			var err error
			if req, err = http.ReadRequest(br); err != nil {
				return
			}
		}
		io.Copy(io.Discard, req.Body)
		switch {
		case req.Method == "HEAD", req.URL.Path == "/204":
			status := "200 OK"
			if req.Method != "HEAD" {
				status = "204 No Content"
			}
			fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n", status, len(stray))
			time.Sleep(30 * time.Millisecond) // after the proxy kept the connection
			io.WriteString(c, stray)
		default:
			body := req.Method + " " + req.URL.Path
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
		req = nil
	}
}

// TestH1StrayBytesAfterBodilessResponse: an upstream that sends a body
// after a HEAD or 204 response (which has none) must not have those
// bytes taken for the response to the next request on that connection
// (another client's, through the pool).
func TestH1StrayBytesAfterBodilessResponse(t *testing.T) {
	up, _ := strayUpstream(t)
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, up)
	for _, first := range []string{"HEAD /h", "GET /204"} {
		rc := dialRaw(t, d)
		rc.send(first + " HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n")
		method, _, _ := strings.Cut(first, " ")
		if resp, body := rc.read(method); resp.StatusCode/100 != 2 || body != "" {
			t.Fatalf("%s = %d %q", first, resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond) // the stray bytes arrive
		rc2 := dialRaw(t, d)
		rc2.send("GET /next HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n")
		if resp, body := rc2.read("GET"); resp.StatusCode != 200 || body != "GET /next" {
			t.Errorf("after %s: GET /next = %d %q; want 200 %q (the upstream's stray bytes answered it)", first, resp.StatusCode, body, "GET /next")
		}
	}
}

// TestH1InboundStrayBytesAfterBodilessResponse: the same through two
// proxies: the server proxy's kept app connection carries the stray
// bytes, and the next request from the (pooled) mesh connection must
// not get them as its answer.
func TestH1InboundStrayBytesAfterBodilessResponse(t *testing.T) {
	_, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		serveStray(c, brw.Reader, r)
	}))
	for _, first := range []string{"HEAD /h", "GET /204"} {
		rc := dialRaw(t, d)
		rc.send(first + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		method, _, _ := strings.Cut(first, " ")
		if resp, body := rc.read(method); resp.StatusCode/100 != 2 || body != "" {
			t.Fatalf("%s = %d %q", first, resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond) // the stray bytes arrive
		rc2 := dialRaw(t, d)
		rc2.send("GET /next HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc2.read("GET"); resp.StatusCode != 200 || body != "GET /next" {
			t.Errorf("after %s: GET /next = %d %q; want 200 %q (the app's stray bytes answered it)", first, resp.StatusCode, body, "GET /next")
		}
	}
}

// TestH1ChunkScannerStrictTrailer: the trailer of a chunked body is
// relayed as it is, so the scanner accepts only strictly formed trailer
// lines; a bare LF line (net/http ends the trailer there, other parsers
// do not, and would take the next request for trailer fields) or a
// malformed field is refused, whole or in pieces.
func TestH1ChunkScannerStrictTrailer(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int // body length; -1: refused
	}{
		{"0\r\n\r\n", 5},
		{"0\r\nX-T: a\r\n\r\nGET /", 13},
		{"3\r\nabc\r\n0\r\nX-T: a\r\nY: b\r\n\r\n", 27},
		{"0\r\nX-T: a\n\nGET /s HTTP/1.1\r\nHost: h\r\n\r\n", -1},
		{"0\r\n\nGET /s HTTP/1.1\r\nHost: h\r\n\r\n", -1},
		{"0\r\nX-T: a\r\n\nGET /s HTTP/1.1\r\nHost: h\r\n\r\n", -1},
		{"0\r\nX T: a\r\n\r\n", -1},
		{"0\r\n folded\r\n\r\n", -1},
		{"0\r\nX-T: a\rb\r\n\r\n", -1},
	} {
		// Whole, then one byte at a time as a relay sees it.
		for _, step := range []int{len(tc.in), 1} {
			var s chunkScanner
			got, pos := -1, 0
			var err error
			for end := step; pos <= len(tc.in) && err == nil && s.state != csDone; end += step {
				var k int
				k, err = s.scan([]byte(tc.in[pos:min(end, len(tc.in))]))
				pos += k
				if end >= len(tc.in) && s.state != csDone && err == nil {
					break
				}
			}
			if err == nil && s.state == csDone {
				got = pos
			}
			if got != tc.want {
				t.Errorf("%q (step %d): body length %d (err %v); want %d", tc.in, step, got, err, tc.want)
			}
		}
	}
}

// TestH1SlowUploadNotAResponseTimeout: ResponseHeaderTimeout bounds the
// wait for the response once the request is sent (as net/http's), not
// the upload of a slow request body.
func TestH1SlowUploadNotAResponseTimeout(t *testing.T) {
	bs := startBackends(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}), 0, "127.0.0.1")
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{ResponseHeaderTimeout: 150 * time.Millisecond}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, bs[0].addr)
	for _, chunked := range []bool{false, true} {
		rc := dialRaw(t, d)
		if chunked {
			rc.send("POST /u HTTP/1.1\r\nHost: " + bs[0].addr.String() + "\r\nTransfer-Encoding: chunked\r\n\r\n")
		} else {
			rc.send("POST /u HTTP/1.1\r\nHost: " + bs[0].addr.String() + "\r\nContent-Length: 8\r\n\r\n")
		}
		for range 4 {
			time.Sleep(100 * time.Millisecond) // 400ms in all, past the timeout
			if chunked {
				rc.send("2\r\nab\r\n")
			} else {
				rc.send("ab")
			}
		}
		if chunked {
			rc.send("0\r\n\r\n")
		}
		if resp, body := rc.read("POST"); resp.StatusCode != 200 || body != "abababab" {
			t.Errorf("slow upload (chunked %v) = %d %q (%s); want 200 %q", chunked, resp.StatusCode, body, resp.Header.Get(headerProxyError), "abababab")
		}
	}
}

// TestH1PlainPooledConnNotReusedOnceMeshed: a plaintext connection pooled
// while its endpoint was known unmeshed is not reused once the endpoint is
// known meshed: the request goes over mTLS (as the net/http path, whose
// plain and mesh transports are apart), never in plaintext.
func TestH1PlainPooledConnNotReusedOnceMeshed(t *testing.T) {
	e, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get(headerXFCC))
	}))
	app := netip.MustParseAddr("127.0.0.1")
	e.out.mesh.cache.SetUnmeshed(app)
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "" {
		t.Fatalf("unmeshed: GET = %d %q; want 200 in plaintext (no client cert)", resp.StatusCode, body)
	}
	e.out.mesh.cache.SetMeshed(app)
	rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || !strings.Contains(body, clientID.String()) {
		t.Errorf("meshed: GET = %d, app saw XFCC %q; want the request over mTLS from %s", resp.StatusCode, body, clientID)
	}
}

// TestH1InboundAppRedialsTrackedOnce: the server side redials its app
// whenever the kept app connection closed; a long-lived mesh connection
// must not pile up one tracked conn per dial (they were kept until the
// mesh connection ended), and closing the tracked one closes the current
// app connection.
func TestH1InboundAppRedialsTrackedOnce(t *testing.T) {
	app := upstream(t, func(*net.TCPConn) {}) // an app that closes after each response
	srv := NewServer(Inbound, Config{}, nil, nil)
	defer srv.Shutdown(context.Background())
	k := &conn{s: srv, ctx: t.Context()}
	c := &h1Conn{s: srv, k: k, target: app}
	var last net.Conn
	for range 20 {
		up, _, err := c.appConn()
		if err != nil {
			t.Fatal(err)
		}
		waitPeerClosedConn(t, up)
		last = up
	}
	k.mu.Lock()
	n := len(k.closers)
	k.mu.Unlock()
	if n != 1 {
		t.Errorf("after 20 app dials the connection tracks %d conns; want 1", n)
	}
	k.closeAll()
	if _, err := last.Write([]byte("x")); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("the current app connection is still open after closeAll: write err %v", err)
	}
}

// waitPeerClosedConn waits until c's peer has closed it (a peek sees
// the end).
func waitPeerClosedConn(t *testing.T, c net.Conn) {
	t.Helper()
	for end := time.Now().Add(2 * time.Second); balancer.ConnQuiet(c); {
		if time.Now().After(end) {
			t.Fatal("the app's close never arrived")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestH1EarlyResponseDuringUpload: an upstream that answers before it
// read the whole body (413) and closes: the client gets that answer (as
// through net/http's Transport), not a 502 of the proxy's.
func TestH1EarlyResponseDuringUpload(t *testing.T) {
	up := upstream(t, func(c *net.TCPConn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
	})
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, up)
	rc := dialRaw(t, d)
	const size = 8 << 20
	rc.send("POST /u HTTP/1.1\r\nHost: " + up.String() + "\r\nContent-Length: " + strconv.Itoa(size) + "\r\n\r\n")
	go func() {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := rc.c.Write(chunk); err != nil {
				return // the proxy closed: fine
			}
		}
	}()
	resp, body := rc.read("POST")
	if resp.StatusCode != 413 || body != "big!" {
		t.Errorf("early answer = %d %q (%s); want 413 %q", resp.StatusCode, body, resp.Header.Get(headerProxyError), "big!")
	}
}

// answer413AndReset is an app that answers 413 "big!" before it reads
// the request body and closes with the body unread: a reset, as the
// kernel sends for unread bytes.
func answer413AndReset(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
}

// TestH1InboundEarlyResponseDuringUpload: the same through two proxies:
// the app answers 413 before reading the body and closes.
func TestH1InboundEarlyResponseDuringUpload(t *testing.T) {
	_, d, authority := meshHTTPEnv(t, answer413AndReset(t))
	rc := dialRaw(t, d)
	const size = 8 << 20
	rc.send("POST /u HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: " + strconv.Itoa(size) + "\r\n\r\n")
	go func() {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := rc.c.Write(chunk); err != nil {
				return
			}
		}
	}()
	resp, body := rc.read("POST")
	if resp.StatusCode != 413 || body != "big!" {
		t.Errorf("early answer = %d %q (%s); want 413 %q", resp.StatusCode, body, resp.Header.Get(headerProxyError), "big!")
	}
}

// TestH1InformationalHopByHop: a 1xx response is relayed as the final
// one is, without hop-by-hop fields.
func TestH1InformationalHopByHop(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		io.Copy(io.Discard, c)
	}()
	up := netip.MustParseAddrPort(ln.Addr().String())
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, up)
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n")
	var info []string
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
		info = append(info, strings.TrimSpace(line))
	}
	got := strings.Join(info, "|")
	if got != "HTTP/1.1 103 Early Hints|Link: </a>" {
		t.Errorf("relayed 1xx head = %q; want the status line and Link only", got)
	}
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("final response = %d %q", resp.StatusCode, body)
	}
}

// TestH1ResponseHTTP10Chunked: an HTTP/1.0 response with
// Transfer-Encoding is faulty framing (RFC 9112 6.1; net/http reads it
// to the close, the chunked decoding would end it early): refused.
func TestH1ResponseHTTP10Chunked(t *testing.T) {
	var m h1Msg
	if parseResponseHead([]byte("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), &m) {
		t.Error("an HTTP/1.0 response with Transfer-Encoding: chunked was accepted")
	}
	if !parseResponseHead([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), &m) || !m.chunked {
		t.Error("an HTTP/1.1 chunked response was refused")
	}
}

// TestH1MalformedChunkedBody: a request whose chunked body turns out
// malformed mid-way is the client's error: it gets 400 with
// meshproxy-error bad-request (counted in responses_total), the
// connection closes, and the app sees the body cut short.
func TestH1MalformedChunkedBody(t *testing.T) {
	bodyErr := make(chan error, 1)
	srv, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, r.Body)
		bodyErr <- err
	}), 0)
	rc := dialRaw(t, d)
	rc.send("POST /x HTTP/1.1\r\nHost: " + authority + "\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
	resp, _ := rc.read("POST")
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(headerProxyError) != "bad-request" {
		t.Errorf("malformed chunked body: %d, meshproxy-error %q; want 400 bad-request", resp.StatusCode, resp.Header.Get(headerProxyError))
	}
	if !resp.Close {
		t.Error("the 400 to a malformed body does not close the connection")
	}
	select {
	case err := <-bodyErr:
		if err == nil {
			t.Error("the app read a complete body from a malformed chunked request")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the app's request did not end 10s after the malformed chunk")
	}
	if got := testutil.ToFloat64(srv.m.responses.WithLabelValues("outbound", authority, "400", classFailure)); got != 1 {
		t.Errorf("responses_total{status_code=400,classification=failure} = %v; want 1", got)
	}
}

// TestH1IdleTimeoutKeptConnection: the fast path refreshes a kept
// client connection's deadlines lazily (not at every request), yet a
// connection that keeps sending requests for longer than the idle timeout
// stays open, and one that goes quiet is closed after about the idle
// timeout. The upstream's deadlines (pooled, set per use) must not cut
// the later requests either.
func TestH1IdleTimeoutKeptConnection(t *testing.T) {
	// 1s, requests idle/8 apart: a stall of most of idle (this test's
	// goroutine on a loaded machine under -race) would look like a quiet
	// connection and get it closed; with 300ms that was a 260ms stall.
	const idle = time.Second
	bs := startBackends(t, echoPath, 0, "127.0.0.1")
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, IdleTimeout: idle, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, bs[0].addr)
	rc := dialRaw(t, d)
	start := time.Now()
	for i := 0; time.Since(start) < 3*idle; i++ {
		path := fmt.Sprintf("/%d", i)
		rc.send("GET " + path + " HTTP/1.1\r\nHost: " + bs[0].addr.String() + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != path {
			t.Fatalf("request %d, %v after the first: %d %q", i, time.Since(start).Round(time.Millisecond), resp.StatusCode, body)
		}
		time.Sleep(idle / 8)
	}
	// Quiet now: the proxy closes the connection (bounded wait).
	quiet := time.Now()
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := rc.r.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a quiet connection; want it closed", n)
	} else if isTimeout(err) {
		t.Fatalf("a connection quiet for %v is still open (idle timeout %v)", time.Since(quiet).Round(time.Millisecond), idle)
	}
	if q := time.Since(quiet); q < idle/2 {
		t.Errorf("the quiet connection was closed after %v; want about the idle timeout %v", q.Round(time.Millisecond), idle)
	}
	if n := bs[0].conns.Load(); n != 1 {
		t.Errorf("backend accepted %d connections; want the one pooled connection", n)
	}
}

// TestH1MeshResponseTimeoutLazyDeadline: over a pooled mTLS connection
// the response header timeout is set lazily (kept when still fresh from
// the last request), yet it still bounds a slow response right after a
// fast one, and a deadline that expired while the connection sat in the
// pool is replaced, not taken for a fresh one.
func TestH1MeshResponseTimeoutLazyDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := newMeshEnv(t, meshOpts{outHTTP: &HTTPConfig{ResponseHeaderTimeout: timeout}})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(3 * timeout)
		}
		io.WriteString(w, r.URL.Path)
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	appAddr := netip.MustParseAddrPort(ln.Addr().String())
	e.out.mesh.cache.SetMeshed(appAddr.Addr())
	lazyDeadlineChecks(t, dialRaw(t, newProxyDialer(t, e.out, appAddr)), appAddr.String(), timeout)
}

// TestH1PlainResponseTimeoutLazyDeadline is the same through a pooled
// plaintext upstream, whose deadlines are cached lazily too.
func TestH1PlainResponseTimeoutLazyDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	bs := startBackends(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(3 * timeout)
		}
		io.WriteString(w, r.URL.Path)
	}), 0, "127.0.0.1")
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{ResponseHeaderTimeout: timeout}}, nil, nil)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	lazyDeadlineChecks(t, dialRaw(t, newProxyDialer(t, srv, bs[0].addr)), bs[0].addr.String(), timeout)
}

// lazyDeadlineChecks sends, on one client connection (so one pooled
// upstream), a request, another once the deadline set for the first
// has passed (it must not fail on it), one the upstream answers too late
// (504), and one more.
func lazyDeadlineChecks(t *testing.T, rc *rawConn, host string, timeout time.Duration) {
	t.Helper()
	get := func(path string) (int, string) {
		rc.send("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
		resp, body := rc.read("GET")
		return resp.StatusCode, body
	}
	if code, body := get("/a"); code != 200 || body != "/a" {
		t.Fatalf("GET /a = %d %q; want 200", code, body)
	}
	time.Sleep(timeout + timeout/2) // the deadline set for /a expires
	if code, body := get("/b"); code != 200 || body != "/b" {
		t.Fatalf("GET /b after the pooled connection's deadline expired = %d %q; want 200", code, body)
	}
	if code, _ := get("/slow"); code != http.StatusGatewayTimeout {
		t.Errorf("GET /slow right after /b = %d; want 504 (the response header timeout)", code)
	}
	if code, body := get("/c"); code != 200 || body != "/c" {
		t.Errorf("GET /c = %d %q; want 200", code, body)
	}
}
