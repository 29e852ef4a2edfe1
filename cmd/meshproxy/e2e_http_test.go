package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

// TestHTTPThroughTheMesh drives HTTP shapes through both proxies with mTLS
// between them: 100-continue, a chunked request body, h2c from the app, and
// a protocol upgrade tunneled end to end.
func TestHTTPThroughTheMesh(t *testing.T) {
	ca := newCADir(t, "cluster.local")
	l := newLab(t, labOptions{mode: "redirect",
		clientArgs: meshArgs(ca, clientID),
		serverArgs: meshArgs(ca, serverID, "--inbound-policy", "strict")})
	// The app: digests request bodies; upgrades /ws to an echo protocol.
	lis, err := l.server.Listen("tcp4", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	// It speaks HTTP/1.1 and h2c: a client speaking h2c gets h2c at the
	// app, whatever travelled between the proxies.
	app := &http.Server{Handler: h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			if r.Header.Get("Upgrade") != "echo" {
				http.Error(w, "want Upgrade: echo", 400)
				return
			}
			w.Header().Set("Upgrade", "echo")
			w.Header().Set("Connection", "Upgrade")
			w.WriteHeader(http.StatusSwitchingProtocols)
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.Flush()
			io.Copy(c, brw)
			return
		}
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "proto=%s bytes=%d sha=%x te=%v", r.Proto, n, h.Sum(nil), r.TransferEncoding)
	}), &http2.Server{})}
	go app.Serve(lis)
	t.Cleanup(func() { app.Close() })
	dst := hostPort(serverV4, 8080)

	t.Run("100-continue", func(t *testing.T) {
		c, err := l.client.Dial("tcp", dst, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", dst)
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
			t.Fatalf("first line %q, %v; want 100 Continue before the body is sent", line, err)
		}
		for { // the blank line ending the 100 response
			if l, _ := br.ReadString('\n'); l == "\r\n" || l == "" {
				break
			}
		}
		io.WriteString(c, "hello")
		// More 1xx responses may come (each proxy may answer the
		// expectation); a client must skip them (RFC 9110, 15.2).
		var resp *http.Response
		for {
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode >= 200 {
				break
			}
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(body), "bytes=5") {
			t.Errorf("final response %d %q; want 200 with the 5-byte body seen", resp.StatusCode, body)
		}
	})

	t.Run("chunked body", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < 64; i++ {
				fmt.Fprintf(pw, "%01024d", i)
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "http://"+dst+"/chunked", pr)
		resp, err := httpClient(l.client).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), fmt.Sprintf("bytes=%d", 64*1024)) {
			t.Errorf("chunked upload: %d %q; want 200 with all 65536 bytes", resp.StatusCode, body)
		}
	})

	t.Run("h2c from the app", func(t *testing.T) {
		h2 := &http2.Transport{AllowHTTP: true}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &h2cTransport{pod: l.client, t: h2}}
		resp, err := hc.Post("http://"+dst+"/h2", "text/plain", strings.NewReader("over h2c"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || !strings.Contains(string(body), "bytes=8") || !strings.Contains(string(body), "proto=HTTP/2.0") {
			t.Errorf("h2c: %s %d %q %v; want an HTTP/2 response with the body seen", resp.Proto, resp.StatusCode, body, resp.Header)
		}
	})

	t.Run("upgrade", func(t *testing.T) {
		c, err := l.client.Dial("tcp", dst, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", dst)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade response %v, %v; want 101", resp, err)
		}
		for _, msg := range []string{"ping", "a longer message through the tunnel"} {
			io.WriteString(c, msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
				t.Fatalf("echo through the upgraded tunnel = %q, %v; want %q", got, err, msg)
			}
		}
	})
}

// h2cTransport speaks HTTP/2 with prior knowledge over connections made
// inside a pod.
type h2cTransport struct {
	pod interface {
		Dial(network, addr string, timeout time.Duration) (net.Conn, error)
	}
	t *http2.Transport
}

func (h *h2cTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c, err := h.pod.Dial("tcp", r.URL.Host, 5*time.Second)
	if err != nil {
		return nil, err
	}
	cc, err := h.t.NewClientConn(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return cc.RoundTrip(r)
}

// TestInboundResponseTimeoutWithHTTPOff: a server-side proxy whose own
// outbound HTTP handling is off (--http=false) still delivers its peers'
// HTTP, and bounds the app's response head by its --response-timeout,
// not the 30s default: the client's proxy waits 20s, so only the server
// side's 504 can come back within the client's 10s.
func TestInboundResponseTimeoutWithHTTPOff(t *testing.T) {
	ca := newCADir(t, "cluster.local")
	l := newLab(t, labOptions{mode: "redirect",
		clientArgs: meshArgs(ca, clientID, "--response-timeout", "20s"),
		serverArgs: meshArgs(ca, serverID, "--http=false", "--response-timeout", "500ms")})
	// The app reads requests and never answers.
	lis, err := l.server.Listen("tcp4", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go io.Copy(io.Discard, c)
		}
	}()
	dst := hostPort(serverV4, 8080)
	c, err := l.client.Dial("tcp4", dst, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /never HTTP/1.1\r\nHost: %s\r\n\r\n", dst)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no response within 10s (%v): the server side did not bound the app's response head by its --response-timeout 500ms", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("meshproxy-error") != "timeout" {
		t.Errorf("response %d meshproxy-error=%q; want 504 timeout", resp.StatusCode, resp.Header.Get("meshproxy-error"))
	}
}
