package proxy

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestInboundDropsXFCCSpellings: a client's x-forwarded-client-cert is
// removed in every spelling an app may take for it: CGI-style servers
// (WSGI, Rack, PHP's FastCGI) map X_Forwarded_Client_Cert and
// X-Forwarded-Client-Cert to the same HTTP_X_FORWARDED_CLIENT_CERT, so a
// copy with underscores that passed reached such an app as a forged
// identity (next to ours, or alone from a plaintext client). Through the
// mesh on the fast path and on mesh-h2, and plaintext from outside.
func TestInboundDropsXFCCSpellings(t *testing.T) {
	fold := strings.NewReplacer("_", "-")
	const forged = "X_Forwarded_Client_Cert: URI=spiffe://cluster.local/ns/kube-system/sa/admin\r\n" +
		"x-forwarded-client_cert: URI=spiffe://forged\r\n"
	seen := make(chan []string, 1)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var vs []string
		for k, v := range r.Header {
			if strings.EqualFold(fold.Replace(k), headerXFCC) {
				vs = append(vs, v...)
			}
		}
		seen <- vs
	})
	want := fmt.Sprintf("By=%s;URI=%s", serverID, clientID)
	check := func(t *testing.T, rc *rawConn, wantVals []string) {
		t.Helper()
		rc.send("GET / HTTP/1.1\r\nHost: a\r\n" + forged + "\r\n")
		if resp, _ := rc.read("GET"); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET = %d", resp.StatusCode)
		}
		got := <-seen
		if fmt.Sprint(got) != fmt.Sprint(wantVals) {
			t.Errorf("the app saw x-forwarded-client-cert values %q; want %q", got, wantVals)
		}
	}
	t.Run("mesh fast path", func(t *testing.T) {
		_, d, _ := meshHTTPEnv(t, app)
		check(t, dialRaw(t, d), []string{want})
	})
	t.Run("mesh-h2", func(t *testing.T) {
		// An access log takes the client side's requests to net/http,
		// which sends them to meshed endpoints as mesh-h2.
		_, d, _ := meshHTTPEnvWith(t, app, meshOpts{outHTTP: &HTTPConfig{AccessLog: slog.New(slog.NewTextHandler(io.Discard, nil))}})
		check(t, dialRaw(t, d), []string{want})
	})
	t.Run("plaintext", func(t *testing.T) {
		e := newMeshEnv(t, meshOpts{})
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: app}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		port := netip.MustParseAddrPort(ln.Addr().String()).Port()
		h := handleOne(t, e.in, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), port))
		h.client.SetDeadline(time.Now().Add(20 * time.Second))
		check(t, &rawConn{t: t, c: h.client, r: bufio.NewReader(h.client)}, nil)
	})
}
