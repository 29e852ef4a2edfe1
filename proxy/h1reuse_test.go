package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// pathCounter counts the requests an app saw, by method and path.
type pathCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (p *pathCounter) add(r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == nil {
		p.n = map[string]int{}
	}
	p.n[r.Method+" "+r.URL.Path]++
}

func (p *pathCounter) get(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[key]
}

// closingApp answers every request with its method and path, then closes
// the connection without saying so (no "Connection: close"): the next
// request on that kept connection finds it dead.
func closingApp(t *testing.T, seen *pathCounter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		seen.add(r)
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		body := r.Method + " " + r.URL.Path
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	})
}

// TestH1InboundResendsOnClosedAppConn: the app closes each connection
// after its response without saying so; the server proxy finds the kept
// connection closed (its check before reuse, or a resend should the
// close come late) and uses a new one: the client gets 200 every time
// and the app sees each request once. A POST is never sent twice.
func TestH1InboundResendsOnClosedAppConn(t *testing.T) {
	var seen pathCounter
	_, d, authority := meshHTTPEnv(t, closingApp(t, &seen))
	rc := dialRaw(t, d)
	for i := range 8 {
		path := fmt.Sprintf("/g%d", i)
		rc.send("GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "GET "+path {
			t.Fatalf("GET %s = %d %q; want 200 (the app closed the kept connection after the last answer)", path, resp.StatusCode, body)
		}
		if n := seen.get("GET " + path); n != 1 {
			t.Errorf("the app saw GET %s %d times; want 1", path, n)
		}
	}
	for i := range 3 {
		path := fmt.Sprintf("/p%d", i)
		rc.send("POST " + path + " HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: 4\r\n\r\ndata")
		resp, body := rc.read("POST")
		n := seen.get("POST " + path)
		switch {
		case resp.StatusCode == 200 && body == "POST "+path && n == 1:
		case resp.StatusCode == 502 && n <= 1:
		default:
			t.Errorf("POST %s = %d %q, the app saw it %d times; want 200 once, or 502 and at most once", path, resp.StatusCode, body, n)
		}
	}
}

// killRelay sits between the client proxy and the server proxy, copying
// both ways; once armed, each connection it holds resets both sides
// (without passing it on) at the next bytes from the client proxy: a
// pooled mesh connection that died as a request was sent on it (the
// server proxy's idle close crossing the request), before the pool's
// close watcher could see it.
type killRelay struct {
	accepted atomic.Int64
	mu       sync.Mutex
	armed    []*atomic.Bool
}

// arm makes every connection open now die at its next request.
func (r *killRelay) arm() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.armed {
		a.Store(true)
	}
}

// serve relays the client proxy's connection c to the server proxy at
// to.
func (r *killRelay) serve(t *testing.T, c *net.TCPConn, to string) {
	defer c.Close()
	r.accepted.Add(1)
	s, err := net.Dial("tcp4", to)
	if err != nil {
		t.Error(err)
		return
	}
	defer s.Close()
	armed := new(atomic.Bool)
	r.mu.Lock()
	r.armed = append(r.armed, armed)
	r.mu.Unlock()
	go func() {
		io.Copy(c, s)
		c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 && armed.Load() {
			c.SetLinger(0)
			return
		}
		if n > 0 {
			if _, err := s.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// relayMeshEnv is meshHTTPEnv with a killRelay on the mesh port, in
// front of the server proxy; appConns counts the connections the app
// accepted.
func relayMeshEnv(t *testing.T, h http.Handler) (e *meshEnv, d *proxyDialer, authority string, r *killRelay, appConns *atomic.Int64) {
	t.Helper()
	z := newZoneDNS(t)
	z.set("web.test.", "127.0.0.1")
	e = newMeshEnv(t, meshOpts{noInbound: true, outHTTP: &HTTPConfig{Balancer: balancerFor(t, z)}})
	inner, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	front, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(e.meshAddr))
	if err != nil {
		t.Skipf("listening on the mesh port %s: %v", e.meshAddr, err)
	}
	r = &killRelay{}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		front.Close()
		inner.Close()
		e.in.Shutdown(context.Background())
		wg.Wait()
	})
	accept := func(ln *net.TCPListener, fn func(c *net.TCPConn)) {
		wg.Go(func() {
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					return
				}
				wg.Go(func() { fn(c) })
			}
		})
	}
	accept(inner, func(c *net.TCPConn) { e.in.Handle(context.Background(), c, e.meshAddr) })
	accept(front, func(c *net.TCPConn) { r.serve(t, c, inner.Addr().String()) })
	app, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appConns = new(atomic.Int64)
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			appConns.Add(1)
		}
	}}
	go srv.Serve(app)
	t.Cleanup(func() { srv.Close() })
	appAddr := app.Addr().(*net.TCPAddr).AddrPort()
	return e, newProxyDialer(t, e.out, appAddr), fmt.Sprintf("web.test:%d", appAddr.Port()), r, appConns
}

// TestH1OutboundResendsOnDeadMeshConn: the client proxy's pooled mesh
// connection dies as a GET is sent on it (before the close watcher saw
// it): the GET goes again, once, on a new mesh connection; the client
// gets 200, the app sees it once, the pool counts the dead one stale.
// A POST on such a connection is answered 502 and never sent twice.
func TestH1OutboundResendsOnDeadMeshConn(t *testing.T) {
	var seen pathCounter
	e, d, authority, relay, _ := relayMeshEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		seen.add(r)
		io.WriteString(w, r.Method+" "+r.URL.Path)
	}))
	rc := dialRaw(t, d)
	get := func(path string) {
		t.Helper()
		rc.send("GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "GET "+path {
			t.Fatalf("GET %s = %d %q; want 200", path, resp.StatusCode, body)
		}
		if n := seen.get("GET " + path); n != 1 {
			t.Errorf("the app saw GET %s %d times; want 1", path, n)
		}
	}
	get("/0")
	for i := 1; i <= 3; i++ {
		relay.arm()
		get(fmt.Sprintf("/%d", i))
	}
	if n := relay.accepted.Load(); n != 4 {
		t.Errorf("mesh connections = %d; want 4 (one, then one new per dead one)", n)
	}
	if st := e.out.http.pool.Stats(); st.Stale != 3 || st.Dials != 4 {
		t.Errorf("pool stats %+v; want 3 stale, 4 dials", st)
	}
	relay.arm()
	rc.send("POST /p HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: 4\r\n\r\ndata")
	if resp, body := rc.read("POST"); resp.StatusCode != 502 || !strings.Contains(resp.Header.Get("Meshproxy-Error"), "upstream") {
		t.Errorf("POST on a dead mesh connection = %d %q (%q); want 502 upstream", resp.StatusCode, body, resp.Header.Get("Meshproxy-Error"))
	}
	if n := seen.get("POST /p"); n != 0 {
		t.Errorf("the app saw the POST %d times; want 0 (the connection died before the server proxy)", n)
	}
	if n := relay.accepted.Load(); n != 4 {
		t.Errorf("mesh connections = %d after the POST; want 4 (a POST is not sent again)", n)
	}
	rc = dialRaw(t, d) // the 502 to a request with a body closed the client's
	get("/after")
}

// helloCL answers "hello" with its Content-Length set, also to HEAD
// (which gets no body: net/http drops it), and 304 with the
// Content-Length of what a GET would get.
var helloCL = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", "5")
	if r.URL.Path == "/304" {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	io.WriteString(w, "hello")
})

// exchange is one request of a sequence and the answer it must get.
type exchange struct {
	method, path string
	status       int
	body         string
}

// checkExchanges sends each request on rc in turn and checks its answer;
// a HEAD's Content-Length must be 5, passed as the app (helloCL) sent it.
func checkExchanges(t *testing.T, rc *rawConn, authority string, seq []exchange) {
	t.Helper()
	for _, x := range seq {
		rc.send(x.method + " " + x.path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		resp, body := rc.read(x.method)
		if resp.StatusCode != x.status || body != x.body {
			t.Fatalf("%s %s = %d %q; want %d %q", x.method, x.path, resp.StatusCode, body, x.status, x.body)
		}
		if x.method == "HEAD" && resp.ContentLength != 5 {
			t.Errorf("HEAD Content-Length %d; want 5 (passed as the app sent it)", resp.ContentLength)
		}
	}
}

// bodilessSequence sends, on one client connection, requests whose
// responses have no body although their heads declare one, each followed
// by a GET, and checks the answers.
func bodilessSequence(t *testing.T, rc *rawConn, authority string) {
	t.Helper()
	checkExchanges(t, rc, authority, []exchange{
		{"HEAD", "/", 200, ""},
		{"GET", "/", 200, "hello"},
		{"GET", "/304", 304, ""},
		{"GET", "/", 200, "hello"},
		{"HEAD", "/", 200, ""},
		{"HEAD", "/", 200, ""},
		{"GET", "/", 200, "hello"},
	})
}

// TestH1ReuseAfterBodilessResponses: a response to HEAD, or a 304, has
// no body whatever its head declares (RFC 9112 section 6.3): the
// upstream connection is kept for the next request.
func TestH1ReuseAfterBodilessResponses(t *testing.T) {
	srv, bs, d, authority := h1Env(t, helloCL, 0)
	bodilessSequence(t, dialRaw(t, d), authority)
	if n := bs[0].conns.Load(); n != 1 {
		t.Errorf("the app accepted %d connections; want 1 (kept after HEAD and 304)", n)
	}
	if st := srv.http.pool.Stats(); st.Dials != 1 || st.Stale != 0 {
		t.Errorf("pool stats %+v; want 1 dial, none stale", st)
	}
}

// TestH1MeshReuseAfterBodilessResponses: the same through both proxies:
// the server proxy keeps its app connection, and the mesh connection
// between the proxies is kept too.
func TestH1MeshReuseAfterBodilessResponses(t *testing.T) {
	_, d, authority, relay, appConns := relayMeshEnv(t, helloCL)
	bodilessSequence(t, dialRaw(t, d), authority)
	if n := appConns.Load(); n != 1 {
		t.Errorf("the app accepted %d connections; want 1 (kept after HEAD and 304)", n)
	}
	if n := relay.accepted.Load(); n != 1 {
		t.Errorf("mesh connections = %d; want 1", n)
	}
}

// TestH1ReuseAfterDeclaredBodies: a raw app declares bodies on bodiless
// responses in every way (a 204 with a Content-Length, a 304 and a
// HEAD answer with chunked): the connection is kept all along.
func TestH1ReuseAfterDeclaredBodies(t *testing.T) {
	var accepted atomic.Int64
	app := rawApp(func(c *net.TCPConn, i int, req *http.Request) bool {
		switch {
		case req.URL.Path == "/204":
			io.WriteString(c, "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")
		case req.URL.Path == "/304":
			io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n")
		case req.Method == "HEAD":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		default:
			echoAnswer(c, req)
		}
		return true
	})
	up := upstream(t, func(c *net.TCPConn) {
		accepted.Add(1)
		app(c)
	})
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	rc := dialRaw(t, newProxyDialer(t, srv, up))
	for _, first := range []string{"GET /204", "GET /304", "HEAD /h"} {
		rc.send(first + " HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n")
		method, path, _ := strings.Cut(first, " ")
		if resp, body := rc.read(method); resp.StatusCode/100 > 3 || body != "" {
			t.Fatalf("%s = %d %q", first, resp.StatusCode, body)
		}
		rc.send("GET /after" + path + " HTTP/1.1\r\nHost: " + up.String() + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "GET /after"+path {
			t.Fatalf("GET after %s = %d %q", first, resp.StatusCode, body)
		}
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("the app accepted %d connections; want 1", n)
	}
}

// strayApp answers the first request on its first connection correctly
// and then, once told on now (the proxy has relayed that answer, so the
// bytes wait in its socket, not in its buffer), sends a whole second
// response nobody asked for and says so on wrote: bytes that, read as
// the next response on that connection, would answer another request.
// Every other request gets its method and path.
func strayApp(now <-chan struct{}, wrote chan<- struct{}) func(c *net.TCPConn) {
	var first atomic.Bool
	return rawApp(func(c *net.TCPConn, i int, req *http.Request) bool {
		echoAnswer(c, req)
		if i == 0 && first.CompareAndSwap(false, true) {
			<-now
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nWRONG")
			wrote <- struct{}{}
		}
		return true
	})
}

// strayBytesSequence sends two GETs on one client connection, the second
// once the app sent its stray response: it must get its own answer.
func strayBytesSequence(t *testing.T, rc *rawConn, authority string, now chan<- struct{}, wrote <-chan struct{}) {
	t.Helper()
	rc.send("GET /1 HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "GET /1" {
		t.Fatalf("GET /1 = %d %q", resp.StatusCode, body)
	}
	now <- struct{}{}
	<-wrote
	rc.send("GET /2 HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "GET /2" {
		t.Fatalf("GET /2 = %d %q; want its own answer, not the stray bytes the app sent unasked on the kept connection", resp.StatusCode, body)
	}
}

// TestH1StrayBytesNeverAnswer: bytes an app sends unasked on a kept
// connection (here a whole response) are never taken for the next
// request's response: the client side checks a plain upstream
// connection before each reuse and drops it, counted stale.
func TestH1StrayBytesNeverAnswer(t *testing.T) {
	now, wrote := make(chan struct{}), make(chan struct{}, 1)
	up := upstream(t, strayApp(now, wrote))
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	strayBytesSequence(t, dialRaw(t, newProxyDialer(t, srv, up)), up.String(), now, wrote)
	if st := srv.http.pool.Stats(); st.Stale != 1 {
		t.Errorf("pool stats %+v; want the connection with stray bytes counted stale", st)
	}
}

// TestH1MeshStrayBytesNeverAnswer: the same on the server side, whose
// kept app connection is checked before every request.
func TestH1MeshStrayBytesNeverAnswer(t *testing.T) {
	now, wrote := make(chan struct{}), make(chan struct{}, 1)
	rc, authority := rawMeshEnv(t, strayApp(now, wrote))
	strayBytesSequence(t, rc, authority, now, wrote)
}

// TestH1InboundResendsWhenAppDropsRequest: the app closes a kept
// connection as a request reaches it, without answering (its keep-alive
// ending while the request was on the wire: the check before reuse found
// the connection open). The server proxy sends a GET once more on a new
// app connection, so the client gets 200; a POST, which the app may have
// acted on, is not sent twice: 502.
func TestH1InboundResendsWhenAppDropsRequest(t *testing.T) {
	var seen pathCounter
	rc, authority := rawMeshEnv(t, rawApp(func(c *net.TCPConn, i int, req *http.Request) bool {
		seen.add(req)
		if i == 1 { // the second request on a connection: dropped
			return false
		}
		echoAnswer(c, req)
		return true
	}))
	for _, path := range []string{"/a", "/b"} {
		rc.send("GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "GET "+path {
			t.Fatalf("GET %s = %d %q; want 200 (sent again after the app dropped it)", path, resp.StatusCode, body)
		}
	}
	if n := seen.get("GET /b"); n != 2 {
		t.Errorf("the app saw GET /b %d times; want 2 (dropped, then answered on a new connection)", n)
	}
	rc.send("POST /c HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: 4\r\n\r\ndata")
	if resp, _ := rc.read("POST"); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("POST dropped by the app = %d; want 502, not sent again", resp.StatusCode)
	}
	if n := seen.get("POST /c"); n != 1 {
		t.Errorf("the app saw POST /c %d times; want 1", n)
	}
}

// rawApp returns an app that reads each request on a connection (i
// counts them from 0), discards its body and calls answer, which writes
// the response itself, or returns false to close the connection.
func rawApp(answer func(c *net.TCPConn, i int, req *http.Request) bool) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if !answer(c, i, req) {
				return
			}
		}
	}
}

// echoAnswer writes a 200 whose body is the request's method and path.
func echoAnswer(c *net.TCPConn, req *http.Request) {
	body := req.Method + " " + req.URL.Path
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// rawMeshEnv runs both proxies in front of app, a raw app on loopback,
// and returns a client connection to it through them and the authority
// to send.
func rawMeshEnv(t *testing.T, app func(c *net.TCPConn)) (*rawConn, string) {
	t.Helper()
	z := newZoneDNS(t)
	z.set("web.test.", "127.0.0.1")
	e := newMeshEnv(t, meshOpts{outHTTP: &HTTPConfig{Balancer: balancerFor(t, z)}})
	ap := upstream(t, app)
	return dialRaw(t, newProxyDialer(t, e.out, ap)), fmt.Sprintf("web.test:%d", ap.Port())
}
