package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// clientHello captures the first flight of a real crypto/tls client.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: "svc.test"}).Handshake()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name  string
		send  []byte
		close bool // half-close after sending
		want  Protocol
	}{
		{"http/1 request line", []byte("GET /index.html HTTP/1.1\r\nHost: svc\r\n\r\n"), false, ProtocolHTTP1},
		{"http/1.0", []byte("POST /x HTTP/1.0\r\n"), false, ProtocolHTTP1},
		{"http/1 cut short", []byte("DELETE /very/long/pa"), false, ProtocolHTTP1},
		{"h2 preface", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"), false, ProtocolH2},
		{"tls client hello", nil, false, ProtocolTLS},
		{"garbage", []byte("\x00\x01binary stuff"), false, ProtocolOpaque},
		{"redis inline", []byte("PING\r\n"), false, ProtocolOpaque},
		{"not http version", []byte("GET / SPDY/3\r\n"), false, ProtocolOpaque},
		{"nothing", nil, false, ProtocolNone},
		{"nothing then close", nil, true, ProtocolNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			send := tc.send
			if tc.want == ProtocolTLS {
				send = clientHello(t)
			}
			ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			if len(send) > 0 {
				client.Write(send)
			}
			if tc.close {
				client.(*net.TCPConn).CloseWrite()
			}
			buf := make([]byte, detectBufSize)
			timeout := 5 * time.Second
			if len(send) == 0 && !tc.close {
				timeout = 50 * time.Millisecond
			}
			got, n, err := Detect(server, timeout, buf)
			if got != tc.want {
				t.Errorf("protocol = %q; want %q", got, tc.want)
			}
			if n != len(send) || string(buf[:n]) != string(send) {
				t.Errorf("peeked %d bytes %q; want %d", n, buf[:n], len(send))
			}
			if tc.close && err != io.EOF {
				t.Errorf("error = %v; want io.EOF after a bare half-close", err)
			}
			if !tc.close && err != nil {
				t.Errorf("error = %v; want nil", err)
			}
			// The deadline is cleared: a later read waits for data.
			client.Write([]byte("z"))
			if !tc.close {
				if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
					t.Errorf("read after Detect: %v (deadline not cleared?)", err)
				}
			}
		})
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Protocol
	}{
		{"", ProtocolNone},
		{"PRI ", ProtocolH2},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ProtocolH2},
		{"PRI * HTTP/1.1\r\n", ProtocolHTTP1},
		{"\x16\x03\x01\x02\x00\x01", ProtocolTLS},
		{"\x16\x03\x01\x02\x00\x02", ProtocolOpaque}, // ServerHello from a client: not ours
		{"\x16\x03\x01", ProtocolTLS},
		{"OPTIONS * HTTP/1.1\r\n", ProtocolHTTP1},
		{"M-SEARCH * HTTP/1.1\r\n", ProtocolHTTP1},
		// Detection stopped inside a request line: HTTP/1 (as bytes it
		// would carry the client's own x-forwarded-client-cert).
		{"FOO /bar", ProtocolHTTP1},
		{"FOO *", ProtocolHTTP1},
		{"FOO http:/", ProtocolHTTP1},
		{"FOO bar", ProtocolOpaque}, // words without a line end: not a target
		{"FOO ", ProtocolOpaque},
		{"G", ProtocolHTTP1},
		{"\r\nPAT", ProtocolHTTP1},
		{"GET", ProtocolHTTP1},
		{"GETX", ProtocolOpaque},
		{"get", ProtocolOpaque},
		{"PR", ProtocolOpaque}, // a beginning of the h2 preface, no method
		{"\r\n", ProtocolOpaque},
		{"SSH-2.0-OpenSSH_9.6\r\n", ProtocolOpaque},
		{" GET / HTTP/1.1\r\n", ProtocolOpaque},
		// As lenient as the servers behind the proxy (see isHTTP1).
		{"GET / HTTP/1.2\r\n", ProtocolHTTP1},
		{"GET / HTTP/1.1 \r\n", ProtocolHTTP1},
		{"\r\n\nGET / HTTP/1.1\r\n", ProtocolHTTP1},
		{"\r\nFOO / HTTP/1.1\r\n", ProtocolHTTP1},
		{"\r\nPING\r\n", ProtocolOpaque},
		{"GET / SPDY/3 \r\n", ProtocolOpaque},
		{"FOO /" + strings.Repeat("a", detectBufSize-5), ProtocolHTTP1},
		{"FOO /" + strings.Repeat("a", detectBufSize-6), ProtocolHTTP1}, // not full: the timeout cut it
		{strings.Repeat("B", detectBufSize), ProtocolOpaque},
	} {
		if got := classify([]byte(tc.in)); got != tc.want {
			t.Errorf("classify(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}
