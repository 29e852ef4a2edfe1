package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request framing at the edges: the smuggling shapes of the net/http
// paths (outbound after a hand-off, inbound plaintext and mesh
// hand-offs).

// TestHTTPRejectsTransferEncodingInHTTP10: an HTTP/1.0 request with
// Transfer-Encoding has faulty framing (RFC 9112 section 6.1): net/http
// ignores the field and reads no body, so the bytes a peer that honours
// it takes for the body (a front proxy's view) are read as the next
// request, a smuggled one. The outbound net/http path answers 400 as it
// does for the other ambiguous shapes, and sends nothing upstream.
func TestHTTPRejectsTransferEncodingInHTTP10(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	e := newHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s %q", r.Method, r.URL.Path, b))
		mu.Unlock()
	}), envOpts{})
	h := "Host: " + e.authory + "\r\n"
	for name, req := range map[string]string{
		"chunked":         "POST /a HTTP/1.0\r\n" + h + "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"chunked, no k-a": "POST /a HTTP/1.0\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			resp := rawExchange(t, e, req)
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(headerProxyError) != "bad-request" {
				t.Errorf("status = %d %q; want 400 bad-request", resp.StatusCode, resp.Header.Get(headerProxyError))
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 0 {
		t.Errorf("the upstream got %q; want nothing", seen)
	}
}

// TestInboundHTTPRejectsSmugglingShapes: the server side's net/http path
// (plaintext HTTP/1 from outside the mesh in permissive mode, and what
// the mesh fast path hands off) refuses the framing shapes the client
// side refuses, with 400 and the connection's end: net/http let
// Transfer-Encoding win over Content-Length and kept the connection, so
// the bytes a front end framing by Content-Length took for one body
// reached the app as a second request.
func TestInboundHTTPRejectsSmugglingShapes(t *testing.T) {
	e := newMeshEnv(t, meshOpts{})
	app := newHTTPApp(t)
	orig := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), app.addr.Port())
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	body := "0\r\n\r\n" + smuggled
	for name, req := range map[string]string{
		"CL and TE": "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: " + fmt.Sprint(len(body)) +
			"\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
		"TE and CL": "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: " +
			fmt.Sprint(len(body)) + "\r\n\r\n" + body,
		"TE in HTTP/1.0": "POST /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + smuggled,
	} {
		t.Run(name, func(t *testing.T) {
			h := handleOne(t, e.in, orig)
			h.client.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(h.client, req); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(h.client)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(headerProxyError) != "bad-request" {
				t.Errorf("status = %d %q; want 400 bad-request", resp.StatusCode, resp.Header.Get(headerProxyError))
			}
			// Then the end of the connection, nothing more.
			rest, _ := io.ReadAll(br)
			if len(rest) != 0 {
				t.Errorf("after the first response: %q; want the connection's end", firstLine(rest))
			}
			var got []string
			for len(app.reqs) > 0 {
				r := <-app.reqs
				got = append(got, r.Method+" "+r.URL.Path)
			}
			if len(got) != 0 {
				t.Errorf("the app got %q; want nothing", got)
			}
		})
	}
}

// firstLine is b's first line, for messages.
func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\r\n")
	return s
}
