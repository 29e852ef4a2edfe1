package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
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
