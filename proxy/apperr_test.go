package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestInboundResponseTimeoutNetHTTPPaths: the server side's net/http
// deliveries (mesh-h2 streams to an h2c app, and serveHTTP1, which
// carries upgrades) bound the wait for the app's response head by the
// response header timeout as the fast path does: 504 meshproxy-error
// timeout from the server proxy (the client proxy waits longer here),
// logged, and the next request on the same client connection is served.
func TestInboundResponseTimeoutNetHTTPPaths(t *testing.T) {
	late := make(chan struct{})
	defer close(late)
	e, d, authority := meshHTTPEnvWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select { // answers only after the proxy gave up
			case <-late:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, r.URL.Path)
	}), meshOpts{
		outHTTP:  &HTTPConfig{ResponseHeaderTimeout: 10 * time.Second},
		inConfig: func(c *Config) { c.HTTP = &HTTPConfig{ResponseHeaderTimeout: 200 * time.Millisecond} },
	})
	check := func(name string, resp *http.Response) {
		t.Helper()
		if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(headerProxyError) != "timeout" {
			t.Errorf("%s: app that does not answer: %d %q; want 504 timeout", name, resp.StatusCode, resp.Header.Get(headerProxyError))
		}
	}

	t.Run("mesh-h2", func(t *testing.T) {
		c := d.h2cClient()
		get := func(path string) *http.Response {
			req, _ := http.NewRequest(http.MethodGet, "http://"+authority+path, nil)
			req.Host = authority
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp
		}
		start := time.Now()
		check("h2c", get("/slow"))
		if waited := time.Since(start); waited > 8*time.Second {
			t.Errorf("the 504 came after %v: the client side's 10 s timeout, not the server side's 200 ms", waited)
		}
		if resp := get("/next"); resp.StatusCode != 200 {
			t.Errorf("next h2c request: %d; want 200", resp.StatusCode)
		}
	})

	t.Run("upgrade", func(t *testing.T) {
		c, err := d.dial(t.Context(), "tcp", "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /slow HTTP/1.1\r\nHost: %s\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n", authority)
		c.SetReadDeadline(time.Now().Add(8 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("upgrade to an app that does not answer: %v; want a 504 from the server side within 8 s", err)
		}
		resp.Body.Close()
		check("upgrade", resp)
	})

	if n := strings.Count(e.inLog.String(), "http response timed out"); n < 2 {
		t.Errorf("the server side logged %d response timeouts; want 2; log:\n%s", n, e.inLog.String())
	}
}
