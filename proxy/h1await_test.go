package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
)

// lingeringApp answers the first request of each connection, then
// half-closes it (FIN) and reads whatever comes, answering nothing,
// until the proxy closes it: a server's lingering close (RFC 9112
// section 9.6) of a kept connection. conns counts its connections.
func lingeringApp(conns *atomic.Int64) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		echoAnswer(c, req)
		c.CloseWrite()
		io.Copy(io.Discard, br)
	}
}

// lingeringSequence sends GETs on rc, each of which must be answered by
// the app, which answers only on a new connection: the kept one was
// half-closed, which the check before its reuse finds (an end of stream
// that came before the wait for the response: awaited unchecked, the
// request would wait for the response timeout, longer than rc's
// deadline, as the lingering app reads it and answers nothing).
func lingeringSequence(t *testing.T, rc *rawConn, authority string) {
	t.Helper()
	for _, path := range []string{"/a", "/b", "/c"} {
		rc.send("GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "GET "+path {
			t.Fatalf("GET %s = %d %q; want 200 from a new app connection", path, resp.StatusCode, body)
		}
	}
}

// TestH1InboundLingeringAppClose: the server side's kept app connection,
// half-closed by the app, is replaced before a request is sent on it.
func TestH1InboundLingeringAppClose(t *testing.T) {
	var conns atomic.Int64
	rc, authority := rawMeshEnv(t, lingeringApp(&conns))
	lingeringSequence(t, rc, authority)
	if n := conns.Load(); n != 3 {
		t.Errorf("app connections = %d; want 3 (one per request)", n)
	}
}

// TestH1OutboundLingeringUpstreamClose: the same for the client side's
// pooled plaintext upstream connections (the check before reuse, or the
// pool's close watcher, drops them, counted stale).
func TestH1OutboundLingeringUpstreamClose(t *testing.T) {
	var conns atomic.Int64
	up := upstream(t, lingeringApp(&conns))
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	lingeringSequence(t, dialRaw(t, newProxyDialer(t, srv, up)), up.String())
	if st := srv.http.pool.Stats(); st.Stale < 1 {
		t.Errorf("pool stats %+v; want the half-closed connections counted stale", st)
	}
}
