package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshproxy/balancer"
	"meshproxy/identity"
)

// tcpSeries returns the tcp_* label values for a direction.
func tcpSeries(dir Direction, tls, client, server string) []string {
	return []string{string(dir), tls, client, server}
}

func TestMeshOpaqueRoundTrip(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app, conns := countingApp(t, echo)
	h := handleOne(t, e.out, app)
	msg := make([]byte, 3<<20+17)
	rand.Read(msg)
	got := echoRoundTrip(t, h.client, msg)
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo through mTLS = %d bytes; want the %d sent, intact", len(got), len(msg))
	}
	h.waitDone(t)
	if n := conns(); n != 1 {
		t.Errorf("app connections = %d; want 1", n)
	}
	if s := e.cache.Get(loopback); s != balancer.Meshed {
		t.Errorf("cache = %v; want meshed after a successful handshake", s)
	}
	// The identities reached both sides' metrics.
	waitValue(t, "inbound tcp_close_total{tls=true,client_id}", e.inM.close.WithLabelValues(tcpSeries(Inbound, TLSTrue, clientID.String(), "")...), 1)
	if got := testutil.ToFloat64(e.outM.close.WithLabelValues(tcpSeries(Outbound, TLSTrue, "", serverID.String())...)); got != 1 {
		t.Errorf("outbound tcp_close_total{tls=true,server_id} = %v; want 1", got)
	}
	if got := testutil.ToFloat64(e.inM.readBytes.WithLabelValues(tcpSeries(Inbound, TLSTrue, clientID.String(), "")...)); got != float64(len(msg)) {
		t.Errorf("inbound read bytes = %v; want %d", got, len(msg))
	}
	if got := testutil.ToFloat64(e.inM.authzAllow.WithLabelValues(clientID.String(), "*")); got != 1 {
		t.Errorf("authz allow = %v; want 1", got)
	}
	if n := testutil.CollectAndCount(e.outM.meshErrors); n != 0 {
		t.Errorf("outbound mesh error series = %d; want none", n)
	}
}

// TestMeshHalfCloseAndServerReply: the app answers only after EOF, so
// the client's half-close must cross TLS (close_notify) both ways.
func TestMeshHalfClose(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app := upstream(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "read %d bytes", n)
	})
	h := handleOne(t, e.out, app)
	if got := echoRoundTrip(t, h.client, []byte("hello, mesh")); string(got) != "read 11 bytes" {
		t.Errorf("reply = %q; want %q", got, "read 11 bytes")
	}
}

// httpApp records the requests it serves (headers and body).
type httpApp struct {
	addr netip.AddrPort
	reqs chan *http.Request
}

func newHTTPApp(t *testing.T) *httpApp {
	t.Helper()
	a := &httpApp{reqs: make(chan *http.Request, 16)}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		a.reqs <- r
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(body))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	a.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	return a
}

func (a *httpApp) next(t *testing.T) *http.Request {
	t.Helper()
	select {
	case r := <-a.reqs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the app saw no request within 10s")
	}
	return nil
}

// doHTTP writes raw request text and reads one response.
func doHTTP(t *testing.T, c net.Conn, br *bufio.Reader, req string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, body)
}

func TestMeshXFCC(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app := newHTTPApp(t)
	h := handleOne(t, e.out, app.addr)
	br := bufio.NewReader(h.client)
	want := "By=" + serverID.String() + ";URI=" + clientID.String()
	// A spoofed XFCC is replaced; Host and X-Forwarded-For pass unchanged.
	got := doHTTP(t, h.client, br, "GET /one HTTP/1.1\r\nHost: api.back:8080\r\nX-Forwarded-Client-Cert: By=evil;URI=spiffe://cluster.local/ns/kube-system/sa/admin\r\nX-Forwarded-For: 198.18.0.7\r\n\r\n")
	if got != "200 GET /one 0" {
		t.Errorf("response = %q; want %q", got, "200 GET /one 0")
	}
	r := app.next(t)
	if v := r.Header.Values("X-Forwarded-Client-Cert"); len(v) != 1 || v[0] != want {
		t.Errorf("app saw XFCC %q; want exactly [%q]", v, want)
	}
	if r.Host != "api.back:8080" {
		t.Errorf("app saw Host %q; want api.back:8080", r.Host)
	}
	if v := r.Header.Values("X-Forwarded-For"); len(v) != 1 || v[0] != "198.18.0.7" {
		t.Errorf("app saw X-Forwarded-For %q; want it unchanged [198.18.0.7]", v)
	}
	// Keep-alive: a second request (chunked body) on the same connection.
	got = doHTTP(t, h.client, br, "POST /two HTTP/1.1\r\nHost: api.back\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
	if got != "200 POST /two 11" {
		t.Errorf("second response = %q; want %q", got, "200 POST /two 11")
	}
	if r := app.next(t); r.Header.Get("X-Forwarded-Client-Cert") != want {
		t.Errorf("second request XFCC = %q; want %q", r.Header.Get("X-Forwarded-Client-Cert"), want)
	}
	if got := testutil.ToFloat64(e.inM.detect.WithLabelValues("inbound", "http/1")); got != 1 {
		t.Errorf("inbound detect{http/1} = %v; want 1 (from the header)", got)
	}
}

// TestInboundPlainHTTPStripsXFCC: in permissive mode a plaintext HTTP/1
// client from outside the mesh cannot forge an identity.
func TestInboundPlainHTTPStripsXFCC(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app := newHTTPApp(t)
	h := handleOne(t, e.in, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), app.addr.Port()))
	br := bufio.NewReader(h.client)
	got := doHTTP(t, h.client, br, "GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/kube-system/sa/admin\r\n\r\n")
	if got != "200 GET /x 0" {
		t.Errorf("response = %q", got)
	}
	if v := app.next(t).Header.Values("X-Forwarded-Client-Cert"); len(v) != 0 {
		t.Errorf("app saw XFCC %q from a plaintext client; want none", v)
	}
	h.client.Close()
	h.waitDone(t)
	if got := testutil.ToFloat64(e.inM.close.WithLabelValues(tcpSeries(Inbound, TLSNoIdentity, "", "")...)); got != 1 {
		t.Errorf("inbound tcp_close_total{tls=no_identity} = %v; want 1", got)
	}
}

// TestInboundPermissivePassesAppTLS: the app's own TLS goes through
// untouched and is labelled tls="opaque".
func TestInboundPermissivePassesAppTLS(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app, _ := countingApp(t, echo)
	h := handleOne(t, e.in, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), app.Port()))
	hello := []byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0, 0, 1, 0}
	if got := echoRoundTrip(t, h.client, hello); !bytes.Equal(got, hello) {
		t.Errorf("echo = %x; want %x", got, hello)
	}
	h.waitDone(t)
	if got := testutil.ToFloat64(e.inM.close.WithLabelValues(tcpSeries(Inbound, TLSOpaque, "", "")...)); got != 1 {
		t.Errorf("inbound tcp_close_total{tls=opaque} = %v; want 1", got)
	}
}

func TestInboundStrict(t *testing.T) {
	e := newMeshEnv(t, meshOpts{inMesh: func(m *Mesh) { m.InboundPolicy = Strict }})
	app, conns := countingApp(t, echo)
	for _, tc := range []struct {
		name, reason string
		first        []byte
	}{
		{"http", reasonPlaintext, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")},
		{"app tls", reasonAppTLS, []byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01}},
		{"silent", reasonPlaintext, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := handleOne(t, e.in, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), app.Port()))
			h.client.Write(tc.first)
			expectClosed(t, h.client)
			h.waitDone(t)
			if got := testutil.ToFloat64(e.inM.refused.WithLabelValues(tc.reason)); got < 1 {
				t.Errorf("refused{%s} = %v; want at least 1", tc.reason, got)
			}
		})
	}
	if n := conns(); n != 0 {
		t.Errorf("app connections = %d; want 0 (strict refuses all but mesh mTLS)", n)
	}
	// Mesh mTLS still works in strict mode.
	h := handleOne(t, e.out, app)
	if got := echoRoundTrip(t, h.client, []byte("ping")); string(got) != "ping" {
		t.Errorf("mesh echo in strict mode = %q; want ping", got)
	}
	if !strings.Contains(e.inLog.String(), "reason=plaintext") {
		t.Errorf("no warn line with reason=plaintext in the inbound log:\n%s", e.inLog)
	}
}

// TestMeshClientFromAnotherCA: a client proxy whose certificate (and
// trust) come from another CA is refused, and never falls back to
// plaintext.
func TestMeshClientFromAnotherCA(t *testing.T) {
	e := newMeshEnv(t, meshOpts{clientCA: testCA(t)})
	app, conns := countingApp(t, echo)
	h := handleOne(t, e.out, app)
	h.client.Write([]byte("secret"))
	expectClosed(t, h.client)
	h.waitDone(t)
	if n := conns(); n != 0 {
		t.Errorf("app connections = %d; want 0 (no plaintext fallback)", n)
	}
	// The client proxy refuses the server's chain first.
	if got := testutil.ToFloat64(e.outM.meshErrors.WithLabelValues(reasonUntrusted)); got != 1 {
		t.Errorf("outbound mesh errors{untrusted} = %v; want 1", got)
	}
	if s := e.cache.Get(loopback); s == balancer.Unmeshed {
		t.Error("an endpoint failing TLS was cached as unmeshed")
	}
	// One handshake: a full handshake that failed is not retried (only a
	// refused resumption is).
	waitValue(t, "inbound refused{handshake}", e.inM.refused.WithLabelValues(reasonHandshake), 1)

	// A client that skips verifying the server still cannot get in with
	// the other CA's certificate.
	other := testManager(t, testCA(t), clientID)
	cfg := other.ClientTLSConfig(nil)
	cfg.VerifyConnection = nil
	if c, err := rawMeshClient(t, e.meshAddr, cfg); err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1)) // TLS 1.3: the refusal arrives after the client's Finished
	}
	waitValue(t, "inbound refused{untrusted}", e.inM.refused.WithLabelValues(reasonUntrusted), 1)
}

func TestMeshAuthz(t *testing.T) {
	app, conns := countingApp(t, echo)
	rules, err := ParseAuthz(fmt.Sprintf("%d=spiffe://cluster.local/ns/ops/sa/admin,*=spiffe://cluster.local/ns/monitoring/*", app.Port()))
	if err != nil {
		t.Fatal(err)
	}
	e := newMeshEnv(t, meshOpts{inMesh: func(m *Mesh) { m.Authz = rules }})
	h := handleOne(t, e.out, app)
	h.client.Write([]byte("hi"))
	expectClosed(t, h.client)
	h.waitDone(t)
	waitValue(t, "authz deny", e.inM.authzDeny.WithLabelValues(clientID.String(), fmt.Sprint(app.Port())), 1)
	if n := conns(); n != 0 {
		t.Errorf("app connections = %d; want 0 (denied)", n)
	}
	if n := testutil.CollectAndCount(e.inM.authzAllow); n != 0 {
		t.Errorf("authz allow series = %d; want 0", n)
	}
}

// TestMeshedEndpointMeshPortClosed: an endpoint remembered as meshed whose
// mesh port refuses (its proxy restarting) is an error, never plaintext.
func TestMeshedEndpointMeshPortClosed(t *testing.T) {
	e := newMeshEnv(t, meshOpts{noInbound: true})
	e.cache.SetMeshed(loopback)
	app, conns := countingApp(t, echo)
	h := handleOne(t, e.out, app)
	h.client.Write([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	expectClosed(t, h.client)
	h.waitDone(t)
	if n := conns(); n != 0 {
		t.Errorf("app connections = %d; want 0 (no plaintext attempt)", n)
	}
	if got := testutil.ToFloat64(e.outM.meshErrors.WithLabelValues(reasonConnect)); got != 1 {
		t.Errorf("mesh errors{connect} = %v; want 1", got)
	}
	if s := e.cache.Get(loopback); s != balancer.Meshed {
		t.Errorf("cache = %v; want still meshed", s)
	}
	if !strings.Contains(e.outLog.String(), "reason=connect") {
		t.Errorf("no warn line with reason=connect:\n%s", e.outLog)
	}
}

// TestForcedMeshedNeverPlain: a destination in Mesh.Meshed with nothing on
// its mesh port fails closed even though the cache knows nothing, also
// when the prefix is written in its IPv4-mapped IPv6 form
// (::ffff:127.0.0.0/104, as a dual-stack tool may print it): such a
// prefix once matched nothing, and the destination was probed, found
// unmeshed and sent in plaintext.
func TestForcedMeshedNeverPlain(t *testing.T) {
	for _, prefix := range []string{"127.0.0.0/8", "::ffff:127.0.0.0/104"} {
		t.Run(prefix, func(t *testing.T) {
			e := newMeshEnv(t, meshOpts{noInbound: true, outMesh: func(m *Mesh) {
				m.Meshed = []netip.Prefix{netip.MustParsePrefix(prefix)}
			}})
			app, conns := countingApp(t, echo)
			h := handleOne(t, e.out, app)
			h.client.Write([]byte("secret"))
			expectClosed(t, h.client)
			h.waitDone(t)
			if n := conns(); n != 0 {
				t.Errorf("app connections = %d; want 0 (a meshed destination never gets plaintext)", n)
			}
			if s := e.cache.Get(loopback); s != balancer.MeshUnknown {
				t.Errorf("cache = %v; want untouched (the destination is forced, not probed)", s)
			}
		})
	}
}

// TestProbeUnmeshedGoesPlain: nothing on the mesh port of an unknown
// destination means it is not meshed: plain TCP, cached.
func TestProbeUnmeshedGoesPlain(t *testing.T) {
	e := newMeshEnv(t, meshOpts{noInbound: true})
	app, conns := countingApp(t, echo)
	for i := range 2 {
		h := handleOne(t, e.out, app)
		if got := echoRoundTrip(t, h.client, []byte("plain")); string(got) != "plain" {
			t.Fatalf("connection %d: echo = %q; want plain", i, got)
		}
		h.waitDone(t)
		if s := e.cache.Get(loopback); s != balancer.Unmeshed {
			t.Errorf("connection %d: cache = %v; want unmeshed", i, s)
		}
	}
	if n := conns(); n != 2 {
		t.Errorf("app connections = %d; want 2", n)
	}
	if got := testutil.ToFloat64(e.outM.close.WithLabelValues(tcpSeries(Outbound, TLSNoIdentity, "", "")...)); got != 2 {
		t.Errorf("outbound tcp_close_total{tls=no_identity} = %v; want 2", got)
	}
}

func TestRequireOutboundTLS(t *testing.T) {
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprintf("cached=%v", cached), func(t *testing.T) {
			e := newMeshEnv(t, meshOpts{noInbound: true, outMesh: func(m *Mesh) { m.RequireOutboundTLS = true }})
			if cached {
				e.cache.SetUnmeshed(loopback)
			}
			app, conns := countingApp(t, echo)
			h := handleOne(t, e.out, app)
			h.client.Write([]byte("x"))
			expectClosed(t, h.client)
			h.waitDone(t)
			if n := conns(); n != 0 {
				t.Errorf("app connections = %d; want 0", n)
			}
			if got := testutil.ToFloat64(e.outM.meshErrors.WithLabelValues(reasonNotMeshed)); got != 1 {
				t.Errorf("mesh errors{not_meshed} = %v; want 1", got)
			}
		})
	}
}

// TestMeshPortRefusals sends bad connections straight to the mesh port
// while a good mesh connection stays open, and checks each is refused
// with its reason and the good one is unaffected.
func TestMeshPortRefusals(t *testing.T) {
	// Short, so the silent and stalled cases are refused soon, but well
	// above a race-built mTLS handshake on a loaded machine: with 300ms
	// the good connection's own handshake was refused (reset) once.
	e := newMeshEnv(t, meshOpts{inMesh: func(m *Mesh) { m.HandshakeTimeout = 2 * time.Second }})
	app, _ := countingApp(t, echo)
	good := handleOne(t, e.out, app)
	roundTrip := func(msg string) {
		t.Helper()
		good.client.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := good.client.Write([]byte(msg)); err != nil {
			t.Fatalf("good connection write: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(good.client, buf); err != nil || string(buf) != msg {
			t.Fatalf("good connection echo = %q, %v; want %q", buf, err, msg)
		}
	}
	roundTrip("before")

	dialRaw := func() *net.TCPConn {
		c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(e.meshAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	mtls := func() *tls.Conn {
		c, err := rawMeshClient(t, e.meshAddr, e.clientMgr.ClientTLSConfig(nil))
		if err != nil {
			t.Fatalf("mesh handshake: %v", err)
		}
		return c
	}
	expectTLSClosed := func(c *tls.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); isTimeout(err) {
			t.Fatal("mesh connection still open after 10s")
		}
	}
	hdr := func(h Header) []byte { b, _ := EncodeHeader(h); return b }

	seen := map[string]float64{}
	for _, tc := range []struct {
		name, reason string
		run          func()
	}{
		{"garbage", reasonNotTLS, func() {
			c := dialRaw()
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			expectClosed(t, c)
		}},
		{"silent client", reasonTimeout, func() {
			expectClosed(t, dialRaw())
		}},
		{"our ALPN, no certificate", reasonNoClientCert, func() {
			cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{identity.ALPN}, MinVersion: tls.VersionTLS13}
			if c, err := rawMeshClient(t, e.meshAddr, cfg); err == nil {
				expectTLSClosed(c)
			}
		}},
		{"certificate, no ALPN", reasonNoALPN, func() {
			cfg := e.clientMgr.ClientTLSConfig(nil)
			cfg.NextProtos = nil
			if c, err := rawMeshClient(t, e.meshAddr, cfg); err == nil {
				expectTLSClosed(c)
			}
		}},
		{"truncated header", reasonBadHeader, func() {
			c := mtls()
			c.Write(hdr(Header{Port: app.Port(), Protocol: ProtocolOpaque})[:4])
			c.CloseWrite()
			expectTLSClosed(c)
		}},
		{"stalled header", reasonBadHeader, func() {
			c := mtls()
			c.Write([]byte("MP"))
			expectTLSClosed(c)
		}},
		{"oversized header", reasonBadHeader, func() {
			c := mtls()
			c.Write([]byte{'M', 'P', 1, 0x10, 0})
			expectTLSClosed(c)
		}},
		{"bad version", reasonBadHeader, func() {
			c := mtls()
			b := hdr(Header{Port: app.Port(), Protocol: ProtocolOpaque})
			b[2] = 9
			c.Write(b)
			expectTLSClosed(c)
		}},
		{"loop to the mesh port", reasonLoop, func() {
			c := mtls()
			c.Write(hdr(Header{Port: e.meshPort, Protocol: ProtocolOpaque}))
			expectTLSClosed(c)
		}},
		{"loop to the admin port", reasonLoop, func() {
			c := mtls()
			c.Write(hdr(Header{Port: 4191, Protocol: ProtocolOpaque}))
			expectTLSClosed(c)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run()
			seen[tc.reason]++
			waitValue(t, "refused{"+tc.reason+"}", e.inM.refused.WithLabelValues(tc.reason), seen[tc.reason])
			if !strings.Contains(e.inLog.String(), "reason="+tc.reason) {
				t.Errorf("no warn line with reason=%s in the inbound log", tc.reason)
			}
			roundTrip("still fine after " + tc.name)
		})
	}
	good.client.CloseWrite()
	expectClosed(t, good.client)
}

func TestParseAuthz(t *testing.T) {
	got, err := ParseAuthz(" 8080=spiffe://cluster.local/ns/a/sa/b, *=spiffe://cluster.local/ns/ops/*,9090=*,")
	if err != nil {
		t.Fatal(err)
	}
	want := []AuthzRule{
		{8080, "spiffe://cluster.local/ns/a/sa/b"},
		{0, "spiffe://cluster.local/ns/ops/*"},
		{9090, "*"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ParseAuthz = %v; want %v", got, want)
	}
	if r, err := ParseAuthz(""); err != nil || r != nil {
		t.Errorf("ParseAuthz(\"\") = %v, %v; want nil, nil", r, err)
	}
	for _, bad := range []string{
		"8080",
		"0=*",
		"65536=*",
		"http=*",
		"8080=web",
		"8080=spiffe://cluster.local/ns/a",
		"8080=spiffe://*/ns/a/*",
		"8080=https://cluster.local/*",
		"8080=",
	} {
		if r, err := ParseAuthz(bad); err == nil {
			t.Errorf("ParseAuthz(%q) = %v; want an error", bad, r)
		}
	}
}

func TestAuthorize(t *testing.T) {
	rules, err := ParseAuthz("8080=spiffe://cluster.local/ns/a/sa/b,*=spiffe://cluster.local/ns/ops/*,9090=*")
	if err != nil {
		t.Fatal(err)
	}
	r := newMeshRuntime(Mesh{Authz: rules})
	for _, tc := range []struct {
		client string
		port   uint16
		ok     bool
		label  string
	}{
		{"spiffe://cluster.local/ns/a/sa/b", 8080, true, "8080"},
		{"spiffe://cluster.local/ns/a/sa/c", 8080, false, "8080"},
		{"spiffe://cluster.local/ns/a/sa/b", 7070, false, "*"},
		{"spiffe://cluster.local/ns/ops/sa/x", 7070, true, "*"},
		{"spiffe://cluster.local/ns/opsx/sa/x", 7070, false, "*"},
		{"spiffe://cluster.local/ns/anyone/sa/x", 9090, true, "9090"},
	} {
		ok, label := r.authorize(tc.client, tc.port)
		if ok != tc.ok || label != tc.label {
			t.Errorf("authorize(%s, %d) = %v, %q; want %v, %q", tc.client, tc.port, ok, label, tc.ok, tc.label)
		}
	}
	open := newMeshRuntime(Mesh{})
	if ok, _ := open.authorize("spiffe://cluster.local/ns/x/sa/y", 1); !ok {
		t.Error("no rules: authorize = false; want any valid client allowed")
	}
}

// TestMeshHTTPUpgrade: an HTTP/1 upgrade (as WebSocket does) through the
// mesh switches to raw bytes both ways after the 101.
func TestMeshHTTPUpgrade(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || r.Header.Get("X-Forwarded-Client-Cert") == "" {
			http.Error(w, "want Upgrade: echo from a mesh client", http.StatusBadRequest)
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
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	app := ln.Addr().(*net.TCPAddr).AddrPort()

	h := handleOne(t, e.out, app)
	h.client.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(h.client, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(h.client)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d; want 101", resp.StatusCode)
	}
	for _, msg := range []string{"frame one", "frame two"} {
		io.WriteString(h.client, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("upgraded echo = %q, %v; want %q", buf, err, msg)
		}
	}
	h.client.Close()
	h.waitDone(t)
}

// TestMeshRequestLineSplitAcrossReads: a request line that reaches the
// client proxy in two reads ("GE", then the rest) is still detected as
// HTTP/1 while the mesh dial runs, so the server proxy handles it as HTTP
// (the app gets the XFCC header), not as opaque bytes.
func TestMeshRequestLineSplitAcrossReads(t *testing.T) {
	// The rest of the line comes 50ms after "GE": detection must wait for
	// it, whatever the load (the env's 100ms left a 50ms margin, and a
	// loaded run took the split request for opaque).
	e := newMeshEnv(t, meshOpts{outConfig: func(c *Config) { c.DetectTimeout = 5 * time.Second }})
	app := newHTTPApp(t)
	h := handleOne(t, e.out, app.addr)
	br := bufio.NewReader(h.client)
	if _, err := io.WriteString(h.client, "GE"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a read of its own on the proxy's side
	got := doHTTP(t, h.client, br, "T /split HTTP/1.1\r\nHost: api.back\r\n\r\n")
	if got != "200 GET /split 0" {
		t.Errorf("response = %q; want %q", got, "200 GET /split 0")
	}
	want := "By=" + serverID.String() + ";URI=" + clientID.String()
	if r := app.next(t); r.Header.Get("X-Forwarded-Client-Cert") != want {
		t.Errorf("app saw XFCC %q; want %q (the split request went through as opaque)", r.Header.Get("X-Forwarded-Client-Cert"), want)
	}
}

// TestInboundPermissiveAuthzPlaintext: in permissive mode a plaintext
// client has no identity any authorization rule could match, so a port
// the rules cover (by name or "*") is closed to it, counted as a denial
// with an empty client_id; a port no rule covers stays open to it.
func TestInboundPermissiveAuthzPlaintext(t *testing.T) {
	guarded, guardedConns := countingApp(t, echo)
	open, _ := countingApp(t, echo)
	rules, err := ParseAuthz(fmt.Sprintf("%d=*", guarded.Port()))
	if err != nil {
		t.Fatal(err)
	}
	e := newMeshEnv(t, meshOpts{inMesh: func(m *Mesh) { m.Authz = rules }})
	outside := netip.MustParseAddr("198.18.0.9")
	for _, first := range [][]byte{[]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), []byte("opaque bytes")} {
		h := handleOne(t, e.in, netip.AddrPortFrom(outside, guarded.Port()))
		h.client.Write(first)
		expectClosed(t, h.client)
		h.waitDone(t)
	}
	if n := guardedConns(); n != 0 {
		t.Errorf("guarded app connections = %d; want 0 (plaintext refused)", n)
	}
	waitValue(t, "authz deny{client_id=\"\"}", e.inM.authzDeny.WithLabelValues("", fmt.Sprint(guarded.Port())), 2)
	if !strings.Contains(e.inLog.String(), "reason=unauthorized") {
		t.Errorf("no warn line with reason=unauthorized:\n%s", e.inLog)
	}
	// A port no rule covers: plaintext passes, as permissive says.
	h := handleOne(t, e.in, netip.AddrPortFrom(outside, open.Port()))
	if got := echoRoundTrip(t, h.client, []byte("ping")); string(got) != "ping" {
		t.Errorf("plaintext echo on an uncovered port = %q; want ping", got)
	}
	h.waitDone(t)
	// A mesh client the rule allows still reaches the guarded port.
	h = handleOne(t, e.out, guarded)
	if got := echoRoundTrip(t, h.client, []byte("ping")); string(got) != "ping" {
		t.Errorf("mesh echo to the guarded port = %q; want ping", got)
	}
	h.waitDone(t)

	// "*" covers every port.
	rules, _ = ParseAuthz("*=spiffe://cluster.local/ns/ops/*")
	e = newMeshEnv(t, meshOpts{inMesh: func(m *Mesh) { m.Authz = rules }})
	h = handleOne(t, e.in, netip.AddrPortFrom(outside, open.Port()))
	h.client.Write([]byte("x"))
	expectClosed(t, h.client)
	h.waitDone(t)
	waitValue(t, "authz deny{port=*}", e.inM.authzDeny.WithLabelValues("", "*"), 1)
}
