package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// slowThenEcho answers /slow once release is closed (saying on started
// that it began), and everything else at once, with the request's path.
func slowThenEcho(started chan<- struct{}, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, r.URL.Path)
	})
}

// TestH1RequestDuringExchange: a request that reaches the client proxy
// while it is still answering the one before it is served right after
// it, not left waiting for the idle timeout. The fast path serves a
// plain client's simple requests inside one wait on its socket and
// waits again without a read first; this is the request whose arrival
// that wait must not miss.
func TestH1RequestDuringExchange(t *testing.T) {
	_, get := slowThenNext(t, nil)
	// And the wait goes on as usual after it.
	get("/after")
}

// slowThenNext runs, through an outbound proxy, a GET of /first, then
// one of /slow and, while the app holds /slow, one of /next, then
// between (when not nil), and checks the answers. It returns the
// client connection and its get (send a GET of a path and check the
// answer), with a 10 s deadline, far below the idle timeout: a missed
// arrival fails there.
func slowThenNext(t *testing.T, between func(rc *rawConn)) (*rawConn, func(path string)) {
	t.Helper()
	started, release := make(chan struct{}, 1), make(chan struct{})
	_, _, d, authority := h1Env(t, slowThenEcho(started, release), 0)
	rc := dialRaw(t, d)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	send := func(path string) { rc.send("GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n") }
	expect := func(want string) {
		t.Helper()
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("answer %d %q; want 200 %q", resp.StatusCode, body, want)
		}
	}
	send("/first")
	expect("/first")
	send("/slow")
	<-started
	send("/next")
	if between != nil {
		between(rc)
	}
	time.Sleep(50 * time.Millisecond) // /next (and what between sent) is in the proxy's socket, unread
	close(release)
	expect("/slow")
	expect("/next")
	return rc, func(path string) { t.Helper(); send(path); expect(path) }
}

// meshH1 is a client of the server-side proxy as a client proxy is: a
// mesh connection (mutual TLS, the transport header sent) carrying
// HTTP/1 requests for the app. Its writes go out as written, or, while
// g.gathering, in one segment at g.flush.
type meshH1 struct {
	t         *testing.T
	c         *tls.Conn
	nc        net.Conn
	g         *gatherConn
	br        *bufio.Reader
	authority string
}

// dialMeshH1 connects to e's server-side proxy for the app at authority
// (host:port, as meshHTTPEnv returns it), with a 10 s deadline, far
// below the idle timeout.
func dialMeshH1(t *testing.T, e *meshEnv, authority string) *meshH1 {
	t.Helper()
	_, portStr, _ := strings.Cut(authority, ":")
	port, _ := strconv.Atoi(portStr)
	nc, err := net.DialTimeout("tcp", e.meshAddr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	cfg := e.clientMgr.ClientTLSConfig(nil).Clone()
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		cfg.ServerName = e.meshAddr.Addr().String()
	}
	g := &gatherConn{Conn: nc}
	c := tls.Client(g, cfg)
	if err := c.Handshake(); err != nil {
		t.Fatalf("mesh handshake: %v", err)
	}
	m := &meshH1{t: t, c: c, nc: nc, g: g, br: bufio.NewReader(c), authority: authority}
	hdr, _ := EncodeHeader(Header{Port: uint16(port), Protocol: ProtocolHTTP1, Name: "web.test"})
	m.write(string(hdr))
	return m
}

// write writes s (through TLS).
func (m *meshH1) write(s string) {
	m.t.Helper()
	if _, err := m.c.Write([]byte(s)); err != nil {
		m.t.Fatal(err)
	}
}

// send sends a GET of path.
func (m *meshH1) send(path string) {
	m.t.Helper()
	m.write("GET " + path + " HTTP/1.1\r\nHost: " + m.authority + "\r\n\r\n")
}

// flush sends what was gathered, in one segment.
func (m *meshH1) flush() {
	m.t.Helper()
	if err := m.g.flush(); err != nil {
		m.t.Fatal(err)
	}
}

// read reads the next answer and fails unless it is 200 with body want.
func (m *meshH1) read(want string) {
	m.t.Helper()
	resp, err := http.ReadResponse(m.br, &http.Request{Method: "GET"})
	if err != nil {
		m.t.Fatalf("reading the answer to %s: %v", want, err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != want {
		m.t.Fatalf("answer %d %q; want 200 %q", resp.StatusCode, b, want)
	}
}

// TestH1InboundRequestDuringExchange: the same on the server side, whose
// client is a mesh connection (TLS): requests that come on it while the
// app answers the one before are served right after it, the second of
// them from what the TLS layer already read with the first.
func TestH1InboundRequestDuringExchange(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	e, _, authority := meshHTTPEnv(t, slowThenEcho(started, release))
	m := dialMeshH1(t, e, authority)
	m.send("/first")
	m.read("/first")
	m.send("/slow")
	<-started
	m.send("/n1") // two TLS records, likely read by the proxy at once
	m.send("/n2")
	time.Sleep(50 * time.Millisecond)
	close(release)
	for _, want := range []string{"/slow", "/n1", "/n2"} {
		m.read(want)
	}
	m.send("/after")
	m.read("/after")
}

// expectEnd fails unless the proxy ends the connection (end of
// stream, or a reset) before the deadline, far below the idle timeout.
func expectEnd(t *testing.T, c net.Conn, r io.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() || len(b) > 0 {
		t.Fatalf("after the last answer: %q, %v; want the proxy's end of stream (the client half-closed)", b, err)
	}
}

// TestH1HalfCloseAfterRequest: a client that half-closes (FIN) right
// after a request gets its answer and then the connection's end, not a
// wait for the idle timeout. The request and the FIN are both in the
// proxy's socket when it reads the request (sent during the exchange
// before it): that read returns the request alone, fewer bytes than it
// asked for, and takes the FIN with it, which the kernel signals no
// more; so a short read does not mean that the next would find nothing.
func TestH1HalfCloseAfterRequest(t *testing.T) {
	rc, _ := slowThenNext(t, func(rc *rawConn) {
		if err := rc.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	})
	expectEnd(t, rc.c, rc.r)
}

// TestH1InboundHalfCloseAfterRequest: the same on the server side, the
// mesh client ending its TCP stream without a close_notify: the TLS
// layer's read of the request takes the FIN from the socket with it.
func TestH1InboundHalfCloseAfterRequest(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	e, _, authority := meshHTTPEnv(t, slowThenEcho(started, release))
	m := dialMeshH1(t, e, authority)
	m.send("/first")
	m.read("/first")
	m.send("/slow")
	<-started
	m.send("/next")
	if err := m.nc.(*net.TCPConn).CloseWrite(); err != nil { // no close_notify
		m.t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	m.read("/slow")
	m.read("/next")
	expectEnd(t, m.c, m.br)
}

// gatherConn is a client socket whose writes, while gathering, wait in
// a buffer and then go out as one write (flush): TLS records written
// one after another reach the peer in one segment, read at once.
type gatherConn struct {
	net.Conn
	gathering bool
	buf       []byte
}

func (g *gatherConn) Write(p []byte) (int, error) {
	if g.gathering {
		g.buf = append(g.buf, p...)
		return len(p), nil
	}
	return g.Conn.Write(p)
}

func (g *gatherConn) flush() error {
	g.gathering = false
	_, err := g.Conn.Write(g.buf)
	g.buf = nil
	return err
}

// TestH1InboundBufferedAtWaitStart: when the server side's wait for
// the next request begins, its TLS layer may already hold a request
// (read with the one before, a request with a body, served outside the
// wait): that request is served without a socket read, and the wait
// must not start before a read of the socket, where a request that came
// during the exchange before is, its readiness reset when the wait
// began.
func TestH1InboundBufferedAtWaitStart(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	e, _, authority := meshHTTPEnv(t, slowThenEcho(started, release))
	m := dialMeshH1(t, e, authority)
	m.send("/first")
	m.read("/first")
	// A request with a body and one after it, in two records the proxy
	// reads at once.
	m.g.gathering = true
	m.write("POST /slow HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: 1\r\n\r\nx")
	m.send("/a")
	m.flush()
	<-started
	m.send("/b")
	time.Sleep(50 * time.Millisecond) // /b is in the proxy's socket, unread
	close(release)
	for _, want := range []string{"/slow", "/a", "/b"} {
		m.read(want)
	}
	m.send("/after")
	m.read("/after")
}

// TestH1PipelinedFullBuffer: requests that came during an exchange and
// fill the proxy's read buffer exactly, whole ones only, are served
// inside the wait, and the request past them, still in the socket (its
// readiness taken by the wake-up before that read), right after them:
// a read that filled the buffer is followed by another before any wait.
func TestH1PipelinedFullBuffer(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	_, _, d, authority := h1Env(t, slowThenEcho(started, release), 0)
	rc := dialRaw(t, d)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	const each = h1BufSize / 16
	req := func(path string) string {
		s := "GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\nX-Pad: \r\n\r\n"
		pad := strings.Repeat("p", each-len(s))
		return "GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\nX-Pad: " + pad + "\r\n\r\n"
	}
	rc.send("GET /slow HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	<-started
	var burst strings.Builder
	var want []string
	for i := range 16 {
		p := "/p" + strconv.Itoa(i)
		burst.WriteString(req(p))
		want = append(want, p)
	}
	if burst.Len() != h1BufSize {
		t.Fatalf("burst of %d bytes; want %d", burst.Len(), h1BufSize)
	}
	rc.send(burst.String())
	rc.send("GET /z HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // all of it is in the proxy's socket
	close(release)
	for _, w := range append(append([]string{"/slow"}, want...), "/z") {
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != w {
			t.Fatalf("answer %d %q; want 200 %q", resp.StatusCode, body, w)
		}
	}
}

// TestH1InboundIdleAndShutdown: a mesh connection waiting on the server
// side for its next request (readOnceTLS) holds no request buffer, and
// the server's Shutdown closes it at once.
func TestH1InboundIdleAndShutdown(t *testing.T) {
	e, _, authority := meshHTTPEnv(t, echoPath)
	m := dialMeshH1(t, e, authority)
	for _, p := range []string{"/a", "/b"} {
		m.send(p)
		m.read(p)
	}
	var held int64
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if held = h1Held.Load(); held == 0 {
			break
		}
	}
	if held != 0 {
		t.Errorf("%d request buffers held by an idle mesh connection; want 0", held)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.in.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with an idle mesh connection: %v", err)
	}
	expectEnd(t, m.c, m.br)
}

// TestH1InboundCloseNotifyWithRequest: a request and the mesh client's
// close_notify in one segment: the request is answered, then the
// connection ends (the alert, read with the request, is found by the
// TLS layer's next read, without the socket: TLS 1.3 hides the record
// type, so its Read does not return the request with io.EOF).
func TestH1InboundCloseNotifyWithRequest(t *testing.T) {
	e, _, authority := meshHTTPEnv(t, echoPath)
	m := dialMeshH1(t, e, authority)
	m.send("/a")
	m.read("/a")
	m.g.gathering = true
	m.send("/b")
	if err := m.c.CloseWrite(); err != nil { // close_notify
		t.Fatal(err)
	}
	m.nc.SetWriteDeadline(time.Now().Add(5 * time.Second)) // CloseWrite's is now
	m.flush()
	m.read("/b")
	expectEnd(t, m.c, m.br)
}

// TestH1UrgentByteBetweenRequests: a read stops short at TCP urgent
// data with bytes still queued past it; the request after the urgent
// byte (which the proxy does not read inline) is served, not left in
// the socket for a wait that nothing ends.
func TestH1UrgentByteBetweenRequests(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	_, _, d, authority := h1Env(t, slowThenEcho(started, release), 0)
	rc := dialRaw(t, d)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.send("GET /slow HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	<-started
	rc.send("GET /a HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	sc, err := rc.c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := sc.Control(func(fd uintptr) { serr = syscall.Sendto(int(fd), []byte("!"), syscall.MSG_OOB, nil) }); err != nil || serr != nil {
		t.Fatalf("sending an urgent byte: %v %v", err, serr)
	}
	rc.send("GET /b HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // all of it is in the proxy's socket
	close(release)
	for _, want := range []string{"/slow", "/a", "/b"} {
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("answer %d %q; want 200 %q", resp.StatusCode, body, want)
		}
	}
}
