package proxy

import (
	"io"
	"net/http"
	"testing"
)

// TestH1ConnectionNamingHostKeepsHost: a request whose Connection header
// names Host (a client listing its fields as hop-by-hop) still reaches
// the upstream with its Host, as through net/http (where Host is not a
// header field ReverseProxy could drop): the fast path dropped the field,
// and the upstream answered the Host-less HTTP/1.1 request 400.
func TestH1ConnectionNamingHostKeepsHost(t *testing.T) {
	_, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Host)
	}), 0)
	rc := dialRaw(t, d)
	for _, conn := range []string{"Host", "keep-alive, host"} {
		rc.send("GET /h HTTP/1.1\r\nHost: " + authority + "\r\nConnection: " + conn + "\r\n\r\n")
		resp, body := rc.read("GET")
		if resp.StatusCode != http.StatusOK || body != authority {
			t.Fatalf("Connection: %s: %d %q; want 200 %q (the upstream saw no Host)", conn, resp.StatusCode, body, authority)
		}
	}
}
