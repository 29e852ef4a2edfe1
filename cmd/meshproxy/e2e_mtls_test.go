package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"meshproxy/internal/netnstest"
)

const (
	clientID = "spiffe://cluster.local/ns/demo/sa/client"
	serverID = "spiffe://cluster.local/ns/demo/sa/server"
)

// serveXFCC runs an HTTP server that answers with the request's
// x-forwarded-client-cert header and the remote address it saw.
func serveXFCC(t *testing.T, p *netnstest.Pod, addr string) {
	t.Helper()
	l, err := p.Listen(networkOf(addr), addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "xfcc=%q remote=%s", r.Header.Values("X-Forwarded-Client-Cert"), r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// postFrom POSTs body to url from inside pod p, with a spoofed XFCC header
// that the mesh must remove.
func postFrom(p *netnstest.Pod, url, body string) (string, error) {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://evil/x;URI=spiffe://evil/spoofed")
	resp, err := httpClient(p).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

// TestMTLSOnTheWire: with the mesh on, a known plaintext payload never
// appears on the veth between the pods, the server app learns the client's
// identity from x-forwarded-client-cert (a spoofed copy removed), and raw
// TCP is encrypted too. With the mesh off, the same payload is on the wire.
func TestMTLSOnTheWire(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			for _, mesh := range []bool{true, false} {
				t.Run(fmt.Sprintf("mtls=%v", mesh), func(t *testing.T) {
					o := labOptions{mode: mode}
					if mesh {
						ca := newCADir(t, "cluster.local")
						o.clientArgs = meshArgs(ca, clientID)
						o.serverArgs = meshArgs(ca, serverID)
					}
					l := newLab(t, o)
					baseClient, baseServer := l.clientProxy.resources(t), l.serverProxy.resources(t)
					serveXFCC(t, l.server, "0.0.0.0:8080")
					serveTCP(t, l.server, "0.0.0.0:9000", func(c net.Conn) { io.Copy(c, c) })
					capture := l.server.Capture(t, "eth0", 64<<20)

					marker := "meshproxy-secret-payload-" + fmt.Sprint(time.Now().UnixNano())
					body, err := postFrom(l.client, "http://"+hostPort(serverV4, 8080)+"/", marker)
					if err != nil {
						t.Fatalf("POST through the mesh: %v (%s)", err, body)
					}
					c, err := l.client.Dial("tcp", hostPort(serverV4, 9000), 5*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					io.WriteString(c, marker+"-tcp")
					echo := make([]byte, len(marker)+4)
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := io.ReadFull(c, echo); err != nil || string(echo) != marker+"-tcp" {
						t.Fatalf("TCP echo = %q, %v", echo, err)
					}
					c.Close()
					time.Sleep(200 * time.Millisecond) // let the last frames land
					capture.Stop()
					if capture.Bytes() == 0 {
						t.Fatal("captured nothing on the veth")
					}
					onWire := capture.Contains([]byte(marker))
					if mesh {
						if strings.Contains(body, "spoofed") {
							t.Errorf("server app saw the spoofed XFCC: %s", body)
						}
						if onWire {
							t.Error("the plaintext payload crossed the veth with mTLS on")
						}
						want := fmt.Sprintf("By=%s;URI=%s", serverID, clientID)
						if !strings.Contains(body, want) {
							t.Errorf("server app saw %s; want XFCC %q", body, want)
						}
						if n := l.serverProxy.metric(t, `meshproxy_tcp_open_total{client_id="`+clientID+`",direction="inbound",tls="true"}`); n < 2 {
							t.Errorf("server proxy: inbound mTLS connections from %s = %v; want 2", clientID, n)
						}
						if n := l.serverProxy.metric(t, "meshproxy_identity_cert_expiration_timestamp_seconds"); n < float64(time.Now().Unix()) {
							t.Errorf("cert expiry metric = %v; want a future timestamp", n)
						}
						_, st, _ := l.serverProxy.admin("/debug/state")
						if !strings.Contains(st, serverID) || strings.Contains(st, "PRIVATE KEY") {
							t.Errorf("/debug/state should show the certificate identity and never a key:\n%s", st)
						}
					} else if !onWire {
						t.Error("the payload is not on the veth with mTLS off: the capture does not work")
					}
					l.clientProxy.expectBaseline(t, baseClient)
					l.serverProxy.expectBaseline(t, baseServer)
				})
			}
		})
	}
}

// TestStrictRefuses: a strict server proxy refuses plaintext from an
// unmeshed client, and a meshed client whose certificate comes from another
// CA, and authorization refuses identities not on the list.
func TestStrictRefuses(t *testing.T) {
	ca := newCADir(t, "cluster.local")
	otherCA := newCADir(t, "cluster.local")
	for _, tc := range []struct {
		name       string
		clientArgs []string
		serverArgs []string
		reason     string // metric that must grow
	}{
		{"plaintext client", nil, meshArgs(ca, serverID, "--inbound-policy", "strict"), `meshproxy_inbound_refused_total{reason="plaintext"}`},
		{"foreign CA", meshArgs(otherCA, clientID, "--meshed-cidrs", "198.18.0.0/24"), meshArgs(ca, serverID, "--inbound-policy", "strict"), `meshproxy_inbound_refused_total`},
		{"not authorized", meshArgs(ca, clientID), meshArgs(ca, serverID, "--inbound-policy", "strict", "--inbound-authz", "*=spiffe://cluster.local/ns/other/*"), `meshproxy_inbound_authz_deny_total`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, labOptions{mode: "redirect", clientArgs: tc.clientArgs, serverArgs: tc.serverArgs})
			var served atomic.Int64
			serveTCP(t, l.server, "0.0.0.0:9000", func(c net.Conn) { served.Add(1); io.Copy(c, c) })
			c, err := l.client.Dial("tcp", hostPort(serverV4, 9000), 5*time.Second)
			if err == nil {
				io.WriteString(c, "hello")
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _ := c.Read(make([]byte, 5))
				c.Close()
				if n > 0 {
					t.Errorf("read %d bytes back; want the connection refused", n)
				}
			}
			waitMetricAbove(t, l.serverProxy, 0, tc.reason)
			if served.Load() != 0 {
				t.Errorf("the server app got %d connections; want none", served.Load())
			}
		})
	}
}

// TestRenewalUnderTraffic: with leaves living a few seconds, certificates
// renew several times while connections keep flowing, and none fails.
func TestRenewalUnderTraffic(t *testing.T) {
	ca := newCADir(t, "cluster.local")
	l := newLab(t, labOptions{mode: "redirect",
		clientArgs: meshArgs(ca, clientID, "--identity-ttl", "3s"),
		serverArgs: meshArgs(ca, serverID, "--identity-ttl", "3s", "--inbound-policy", "strict")})
	serveTCP(t, l.server, "0.0.0.0:9000", func(c net.Conn) { io.Copy(c, c) })

	// One long-lived connection that must survive every rotation.
	long, err := l.client.Dial("tcp", hostPort(serverV4, 9000), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	echo := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q; want %q", buf, msg)
		}
		return nil
	}
	var failures, ok int
	deadline := time.Now().Add(9 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		c, err := l.client.Dial("tcp", hostPort(serverV4, 9000), 5*time.Second)
		if err == nil {
			err = echo(c, fmt.Sprintf("short-%d", i))
			c.Close()
		}
		if err == nil {
			err = echo(long, fmt.Sprintf("long-%d", i))
		}
		if err != nil {
			failures++
			t.Errorf("round %d: %v", i, err)
		} else {
			ok++
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range []*labProxy{l.clientProxy, l.serverProxy} {
		if n := p.metric(t, `meshproxy_identity_cert_refresh_total{result="ok"}`); n < 3 {
			t.Errorf("%s: %v successful refreshes in 9s with 3s leaves; want at least 3", p.pod.Name, n)
		}
	}
	t.Logf("%d rounds ok, %d failed", ok, failures)
	reportReliability(t, "renewal-under-traffic", int64(ok+failures), int64(failures), "a request is a round: an echo on a new connection, then one on the long-lived one")
}

// TestIdentityServiceLateStart: a proxy whose identity service is down is
// not ready, and becomes ready once the service comes up.
func TestIdentityServiceLateStart(t *testing.T) {
	netnstest.RequireRoot(t)
	ca := newCADir(t, "cluster.local")
	bin := meshproxyBinary(t)
	p := netnstest.NewPod(t, "idsvc")
	tokenOut, err := exec.Command(bin, "ca", "token", "--dir", ca, "--identity", clientID).Output()
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(filepath.Dir(ca), "token")
	os.WriteFile(tokenFile, bytes.TrimSpace(tokenOut), 0o644)
	anchors := filepath.Join(filepath.Dir(ca), "anchors.pem")
	a, _ := os.ReadFile(filepath.Join(ca, "anchor.pem"))
	os.WriteFile(anchors, a, 0o644)

	px := startProxyNotReady(t, p, "redirect", "--identity", clientID, "--identity-addr", "127.0.0.1:9443",
		"--identity-token-file", tokenFile, "--trust-anchors", anchors)
	time.Sleep(time.Second)
	if code, body, _ := px.admin("/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("/ready with the identity service down = %d %q; want 503", code, body)
	}
	svc := exec.Command(bin, "identity", "serve", "--dir", ca, "--listen", "127.0.0.1:9443")
	var svcLogs syncBuffer
	svc.Stdout, svc.Stderr = &svcLogs, &svcLogs
	if err := p.Start(svc); err != nil {
		t.Fatal(err)
	}
	defer func() { svc.Process.Signal(syscall.SIGTERM); svc.Wait() }()
	deadline := time.Now().Add(40 * time.Second)
	for {
		if code, _, _ := px.admin("/ready"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy not ready 40s after the identity service started\nservice:\n%s\nproxy:\n%s", svcLogs.String(), px.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, st, _ := px.admin("/debug/state")
	if !strings.Contains(st, clientID) {
		t.Errorf("/debug/state lacks the certificate identity:\n%s", st)
	}
	// The join token is a secret: never in logs or state. Its signature
	// part is what would let someone else use it.
	tok := string(bytes.TrimSpace(tokenOut))
	secret := tok[strings.LastIndexByte(tok, '.')+1:]
	for what, text := range map[string]string{"proxy logs": px.logs.String(), "service logs": svcLogs.String(), "/debug/state": st} {
		if strings.Contains(text, secret) {
			t.Errorf("%s contain the join token", what)
		}
	}
}

// TestServerProxyRestart: the server proxy dies mid-stream; the client sees
// an error, and nothing travels in plaintext, then or after.
func TestServerProxyRestart(t *testing.T) {
	ca := newCADir(t, "cluster.local")
	l := newLab(t, labOptions{mode: "redirect",
		clientArgs: meshArgs(ca, clientID),
		serverArgs: meshArgs(ca, serverID)})
	serveTCP(t, l.server, "0.0.0.0:9000", func(c net.Conn) { io.Copy(c, c) })
	capture := l.server.Capture(t, "eth0", 256<<20)
	marker := []byte("restart-marker-never-in-clear-")

	c, err := l.client.Dial("tcp", hostPort(serverV4, 9000), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, readErr = io.Copy(io.Discard, c)
	}()
	// Stream until the server proxy is killed, then keep trying briefly.
	killed := false
	var writeErr error
	for i := 0; i < 400 && writeErr == nil; i++ {
		_, writeErr = c.Write(marker)
		if i == 100 {
			l.serverProxy.cmd.Process.Kill()
			killed = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	if !killed {
		t.Fatal("stream ended before the kill")
	}
	if writeErr == nil && (readErr == nil || isTimeoutErr(readErr)) {
		t.Errorf("client saw no error after the server proxy died (write %v, read %v)", writeErr, readErr)
	}
	// New connections while the server proxy is down must fail, not go
	// around it in plaintext.
	if c2, err := l.client.Dial("tcp", hostPort(serverV4, 9000), 2*time.Second); err == nil {
		c2.Write(marker)
		c2.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _ := c2.Read(make([]byte, 64))
		c2.Close()
		if n > 0 {
			t.Error("a new connection got an answer while the server proxy was down")
		}
	}
	time.Sleep(200 * time.Millisecond)
	capture.Stop()
	if capture.Contains(marker) {
		t.Error("the payload crossed the veth in plaintext")
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return err != nil && errors.As(err, &ne) && ne.Timeout()
}
