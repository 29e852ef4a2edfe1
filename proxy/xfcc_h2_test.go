package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// h2cXFCCApp is a loopback app speaking HTTP/1.1 and h2c (prior
// knowledge) that answers with the protocol and the
// x-forwarded-client-cert values it received.
func h2cXFCCApp(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %q", r.Proto, r.Header.Values(headerXFCC))
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// h2cGet sends one h2c (prior knowledge) GET over c with a forged
// x-forwarded-client-cert, twice spelt, and returns the response body.
func h2cGet(t *testing.T, c net.Conn) string {
	t.Helper()
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(context.Context, string, string, *tls.Config) (net.Conn, error) {
		return c, nil
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://api.back/x", nil)
	req.Header.Add("X-Forwarded-Client-Cert", "By=evil;URI=spiffe://cluster.local/ns/kube-system/sa/admin")
	req.Header["x-forwarded-client-cert"] = []string{"URI=spiffe://cluster.local/ns/kube-system/sa/admin"}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("h2c request: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("h2c response body: %v", err)
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

// TestInboundPlainH2CStripsXFCC: in permissive mode a plaintext h2c
// (prior knowledge) client from outside the mesh cannot forge an identity
// either: its x-forwarded-client-cert never reaches the app (it used to go
// through as opaque bytes).
func TestInboundPlainH2CStripsXFCC(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app := h2cXFCCApp(t)
	h := handleOne(t, e.in, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), app.Port()))
	if got, want := h2cGet(t, h.client), `200 HTTP/2.0 []`; got != want {
		t.Errorf("app answered %q; want %q (no x-forwarded-client-cert from a plaintext client)", got, want)
	}
}

// TestMeshH2PriorKnowledgeXFCC: h2 prior knowledge through a client proxy
// without HTTP-aware outbound (transport header protocol h2) reaches the
// app with the proxy's x-forwarded-client-cert only, as HTTP/1 does: a
// meshed client cannot claim another identity by sending its own.
func TestMeshH2PriorKnowledgeXFCC(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app := h2cXFCCApp(t)
	h := handleOne(t, e.out, app)
	want := fmt.Sprintf("200 HTTP/2.0 [%q]", "By="+serverID.String()+";URI="+clientID.String())
	if got := h2cGet(t, h.client); got != want {
		t.Errorf("app answered %q; want %q", got, want)
	}
}

// TestMeshXFCCSpellings: over the mesh, every copy of
// x-forwarded-client-cert the client sent, however spelt and however
// many, is replaced by exactly ours, on the HTTP/1 fast path and on the
// net/http fallback (HTTP/1.0, Expect: 100-continue) alike.
func TestMeshXFCCSpellings(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app := newHTTPApp(t)
	want := "By=" + serverID.String() + ";URI=" + clientID.String()
	forged := "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/kube-system/sa/a\r\n" +
		"X-FORWARDED-CLIENT-CERT: URI=spiffe://cluster.local/ns/kube-system/sa/b\r\n" +
		"X-Forwarded-Client-Cert: By=evil;URI=spiffe://cluster.local/ns/kube-system/sa/c\r\n"
	for _, tc := range []struct{ name, req string }{
		{"fast path", "GET /a HTTP/1.1\r\nHost: api.back\r\n" + forged + "\r\n"},
		{"HTTP/1.0", "GET /a HTTP/1.0\r\nHost: api.back\r\n" + forged + "\r\n"},
		{"expect", "POST /a HTTP/1.1\r\nHost: api.back\r\nContent-Length: 2\r\nExpect: 100-continue\r\n" + forged + "\r\nhi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := handleOne(t, e.out, app.addr)
			h.client.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(h.client, tc.req); err != nil {
				t.Fatal(err)
			}
			r := app.next(t)
			if v := r.Header.Values(headerXFCC); len(v) != 1 || v[0] != want {
				t.Errorf("app saw x-forwarded-client-cert %q; want exactly [%q]", v, want)
			}
		})
	}
}
