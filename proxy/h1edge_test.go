package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// The edges of the HTTP/1 fast path: early answers, timeouts, bodies
// that break off.

// postBig posts an 8 MiB body with c, as Go's Transport does: the
// response is read while the body is still being written, and a failed
// write ends the round trip unless the response came first.
func postBig(t *testing.T, c *http.Client, url, host string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(make([]byte, 8<<20)))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// TestH1EarlyAnswerLingers: a client still sending a large body when
// the proxy answers early (no endpoint answers: 502) reads the whole
// answer: the proxy half-closes and drains before it closes, instead of
// closing at once, where unread bytes make the kernel send a reset that
// fails the client's write first (about half the round trips on
// loopback without the linger).
func TestH1EarlyAnswerLingers(t *testing.T) {
	up := closedPort(t)
	srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{}}, nil, nil)
	defer srv.Shutdown(context.Background())
	d := newProxyDialer(t, srv, up)
	c := d.client()
	for i := range 10 {
		resp, _, err := postBig(t, c, "http://"+up.String()+"/u", up.String())
		if err != nil {
			t.Fatalf("round trip %d: %v; want the proxy's 502", i, err)
		}
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(headerProxyError) != "connect" {
			t.Fatalf("round trip %d: %d %q; want 502 connect", i, resp.StatusCode, resp.Header.Get(headerProxyError))
		}
	}
}

// TestH1MeshEarlyAnswerLingers: the same through two proxies, the app
// answering 413 before it reads the body and closing: both proxies
// linger (the server side toward the client side, the client side
// toward the client).
func TestH1MeshEarlyAnswerLingers(t *testing.T) {
	_, d, authority := meshHTTPEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}))
	c := d.client()
	for i := range 10 {
		resp, body, err := postBig(t, c, "http://"+authority+"/u", authority)
		if err != nil {
			t.Fatalf("round trip %d: %v; want the app's 413", i, err)
		}
		if resp.StatusCode != http.StatusRequestEntityTooLarge || body != "big!" {
			t.Fatalf("round trip %d: %d %q; want 413 %q", i, resp.StatusCode, body, "big!")
		}
	}
}

// TestH1PipelinedAfterEarlyAnswer: a request pipelined after one the
// proxy answers early (a malformed chunked body: 400) is not served,
// and the client reads the 400 and then the end of the connection, not
// a reset (the proxy drained the bytes it did not read).
func TestH1PipelinedAfterEarlyAnswer(t *testing.T) {
	var served atomic.Int64
	_, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/x" {
			served.Add(1)
		}
		io.Copy(io.Discard, r.Body)
	}), 0)
	rc := dialRaw(t, d)
	rc.send("POST /x HTTP/1.1\r\nHost: " + authority + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" +
		"GET /next HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	// More of the pipeline after the answer, unread by the proxy.
	rc.send(strings.Repeat("GET /more HTTP/1.1\r\nHost: "+authority+"\r\n\r\n", 100))
	resp, _ := rc.read("POST")
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("malformed chunked body: %d (close %v); want 400 closing", resp.StatusCode, resp.Close)
	}
	n, err := io.Copy(io.Discard, rc.r)
	if err != nil || n != 0 {
		t.Errorf("after the 400: %d more bytes, error %v; want the end of the connection", n, err)
	}
	if got := served.Load(); got != 0 {
		t.Errorf("the app served %d requests; want none after the 400 (the pipeline ends there)", got)
	}
}
