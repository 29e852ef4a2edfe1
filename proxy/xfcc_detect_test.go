package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawHeadApp is a loopback app that reads one request head as bytes
// (HTTP/1 servers such as nginx skip empty lines before the request line
// and take any HTTP/1.x version), sends it on heads, and answers 200.
func rawHeadApp(t *testing.T) (netip.AddrPort, chan []byte) {
	t.Helper()
	heads := make(chan []byte, 16)
	ap := upstream(t, func(c *net.TCPConn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var head []byte
		buf := make([]byte, 4096)
		for !bytes.Contains(head, []byte("\r\n\r\n")) {
			n, err := c.Read(buf)
			head = append(head, buf[:n]...)
			if err != nil {
				return
			}
		}
		heads <- head
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	})
	return ap, heads
}

// TestXFCCRequestLineVariants: a request whose line an HTTP/1 server
// takes but detection did not (a version other than 1.0/1.1, empty lines
// before it, spaces after the version, a line longer than the detection
// buffer with a method it does not know) went to the app as opaque bytes,
// with the client's x-forwarded-client-cert: in permissive mode from any
// plaintext client, and through the mesh from any meshed one (and then
// without ours). Such a request must be read as HTTP/1: the forged header
// never reaches the app (the proxy may refuse the request instead).
func TestXFCCRequestLineVariants(t *testing.T) {
	const forged = "sa/admin"
	lines := []string{
		"GET /x HTTP/1.2\r\n",
		"\r\nGET /x HTTP/1.1\r\n",
		"\n\r\n\r\nGET /x HTTP/1.1\r\n",
		"GET /x HTTP/1.1 \r\n",
		// Longer than the detection buffer, with a method detection
		// does not know (net/http takes any token).
		"FOO /" + strings.Repeat("a", detectBufSize) + " HTTP/1.1\r\n",
	}
	e := newMeshEnv(t, meshOpts{})
	app, heads := rawHeadApp(t)
	for _, path := range []struct {
		name string
		srv  *Server
		orig netip.AddrPort
	}{
		{"plaintext inbound", e.in, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), app.Port())},
		{"through the mesh", e.out, app},
	} {
		for _, line := range lines {
			t.Run(path.name+"/"+strconv.Quote(line[:min(len(line), 24)]), func(t *testing.T) {
				h := handleOne(t, path.srv, path.orig)
				req := line + "Host: a\r\nX-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/kube-system/" + forged + "\r\n\r\n"
				got := doHTTP(t, h.client, bufio.NewReader(h.client), req)
				select {
				case head := <-heads:
					if bytes.Contains(head, []byte(forged)) {
						t.Errorf("app got the client's x-forwarded-client-cert (response %q):\n%s", got, head)
					}
					t.Logf("app got:\n%s", head)
				default: // the proxy answered itself
					t.Logf("proxy answered %q", got)
				}
			})
		}
	}
}
