package main

// Tests of the run's lifecycle seen from outside, as an operator and
// systemd see it: signals during start-up and during the drain, and the
// notifications sent to systemd.

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshproxy/internal/netnstest"
)

// echoConn is an open connection through a proxy to an echo server.
type echoConn struct {
	t *testing.T
	c net.Conn
}

// dialEcho connects from pod p to addr and checks that one message comes
// back, so the connection is known to be proxied end to end.
func dialEcho(t *testing.T, p *netnstest.Pod, addr string) *echoConn {
	t.Helper()
	c, err := p.Dial("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, p.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	e := &echoConn{t: t, c: c}
	if err := e.echo("hello"); err != nil {
		t.Fatalf("echo through %s to %s: %v", p.Name, addr, err)
	}
	return e
}

// echo sends msg (lower case, so it is never taken for HTTP) and reads it
// back.
func (e *echoConn) echo(msg string) error {
	e.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(e.c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(e.c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo came back as " + string(buf))
	}
	return nil
}

// expectNotProxied fails the test when a new connection from p to addr
// still reaches the echo server.
func expectNotProxied(t *testing.T, p *netnstest.Pod, addr, what string) {
	t.Helper()
	c, err := p.Dial("tcp", addr, 2*time.Second)
	if err != nil {
		return // refused: not accepted
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "late")
	if n, _ := c.Read(make([]byte, 4)); n > 0 {
		t.Errorf("%s: a new connection was proxied after SIGTERM (/ready was already 503)", what)
	}
}

// waitNotReady waits until the proxy's /ready answers 503.
func waitNotReady(t *testing.T, p *labProxy) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _, err := p.admin("/ready")
		if err == nil && code == http.StatusServiceUnavailable {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready = %d, %v after SIGTERM; want 503 while draining\n%s", code, err, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func echoHandler(c net.Conn) { io.Copy(c, c) }

// drainingLab starts a lab whose proxies have the shutdown grace given,
// opens one echo connection through the client proxy (held), sends that
// proxy SIGTERM and waits until it reports not ready (draining).
func drainingLab(t *testing.T, grace string) (*labProxy, *echoConn) {
	t.Helper()
	l := newLab(t, labOptions{mode: "redirect", runArgs: []string{"--shutdown-grace", grace}})
	serveTCP(t, l.server, "0.0.0.0:9000", echoHandler)
	held := dialEcho(t, l.client, hostPort(serverV4, 9000))
	p := l.clientProxy
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitNotReady(t, p)
	return p, held
}

// waitExit0 waits (at most 20 s) for the proxy to exit, and fails the
// test with failure and the proxy's logs when it does not, or when its
// exit status is not 0.
func (p *labProxy) waitExit0(t *testing.T, failure string) {
	t.Helper()
	select {
	case <-p.done:
		if p.waitErr != nil {
			t.Errorf("proxy exit = %v; want 0", p.waitErr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s\n%s", failure, p.logs.String())
	}
}

// TestShutdownStopsAcceptingBothWays: once SIGTERM has turned /ready to
// 503, neither the outbound nor the inbound listener takes new connections,
// even while connections of both directions are still draining. (The
// directions used to drain one after the other, the second still accepting
// while the first drained.)
func TestShutdownStopsAcceptingBothWays(t *testing.T) {
	l := newLab(t, labOptions{mode: "redirect", runArgs: []string{"--shutdown-grace", "5m"}})
	serveTCP(t, l.server, "0.0.0.0:9000", echoHandler)
	serveTCP(t, l.client, "0.0.0.0:9001", echoHandler)
	out := dialEcho(t, l.client, hostPort(serverV4, 9000)) // outbound of the client proxy
	in := dialEcho(t, l.server, hostPort(clientV4, 9001))  // inbound of the client proxy
	p := l.clientProxy
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitNotReady(t, p)
	expectNotProxied(t, l.client, hostPort(serverV4, 9000), "outbound")
	expectNotProxied(t, l.server, hostPort(clientV4, 9001), "inbound")
	// The open ones still work, and once they close the proxy exits 0.
	for _, c := range []*echoConn{out, in} {
		if err := c.echo("draining"); err != nil {
			t.Errorf("open connection during the drain: %v", err)
		}
		c.c.Close()
	}
	p.waitExit0(t, "proxy did not exit once its connections closed")
}

// TestSecondSignalEndsDrain: a second SIGTERM during the drain (an operator
// pressing Ctrl-C again) closes the open connections at once and exits 0,
// instead of being swallowed while the drain runs its full grace.
func TestSecondSignalEndsDrain(t *testing.T) {
	p, held := drainingLab(t, "5m")
	if err := held.echo("draining"); err != nil {
		t.Fatalf("open connection during the drain: %v", err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitExit0(t, "proxy still draining 20s after a second SIGTERM (grace 5m)")
	held.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := held.c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("held connection after the proxy exited: read %d, %v; want it closed", n, err)
	}
	p.waitLog(t, "second signal")
}

// TestHangupWhileDraining: SIGHUP (a reload, a log rotation script) that
// arrives while the proxy drains neither kills it nor its connections.
func TestHangupWhileDraining(t *testing.T) {
	p, held := drainingLab(t, "5m")
	p.cmd.Process.Signal(syscall.SIGHUP)
	if err := held.echo("after SIGHUP"); err != nil {
		t.Fatalf("open connection after SIGHUP during the drain: %v", err)
	}
	select {
	case <-p.done:
		t.Fatalf("proxy exited on SIGHUP during the drain: %v\n%s", p.waitErr, p.logs.String())
	default:
	}
	held.c.Close()
	p.waitExit0(t, "proxy did not exit once its connection closed")
}

// TestHangupBeforeReady: a SIGHUP while the proxy still waits for its first
// certificate must not tell systemd READY=1: that would end the start-up
// (units ordered after the proxy start, TimeoutStartSec stops counting)
// while /ready is still 503.
func TestHangupBeforeReady(t *testing.T) {
	netnstest.RequireRoot(t)
	pod := netnstest.NewPod(t, "hup")
	caDir := newCADir(t, "cluster.local")
	// A socket the proxy's UID may write to, as systemd's is.
	dir, err := os.MkdirTemp("", "mp-notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "notify")
	nc := listenNotify(t, sock)
	os.Chmod(sock, 0o666)

	// The identity service is unreachable (no route in the pod): the proxy
	// runs, not ready, waiting for a certificate.
	p := startProxyNotReady(t, pod, "redirect", "--identity", "spiffe://cluster.local/ns/default/sa/web",
		"--identity-addr", "198.18.0.1:8080", "--trust-anchors", filepath.Join(caDir, "anchor.pem"))
	if got := readNotify(t, nc); !strings.HasPrefix(got, "STATUS=waiting for a certificate") {
		t.Fatalf("first notification = %q; want STATUS=waiting for a certificate", got)
	}
	if code, body, err := p.admin("/ready"); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("/ready = %d %q, %v; want 503 while waiting for a certificate", code, body, err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "SIGHUP")
	// SIGTERM before the proxy was ever ready: a clean stop all the same.
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.waitErr != nil || !strings.Contains(p.logs.String(), "meshproxy stopped") {
			t.Errorf("SIGTERM while waiting for a certificate: exit %v; want 0 and a clean stop\n%s", p.waitErr, p.logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("proxy did not exit after SIGTERM\n%s", p.logs.String())
	}
	// Everything it sent is queued on the socket now.
	var got []string
	buf := make([]byte, 4096)
	for {
		nc.SetReadDeadline(time.Now().Add(time.Second))
		n, err := nc.Read(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
	}
	all := strings.Join(got, "|")
	if strings.Contains(all, "READY=1") {
		t.Errorf("notifications %q: READY=1 sent though the proxy never became ready", got)
	}
	if !strings.Contains(all, "STOPPING=1") {
		t.Errorf("notifications %q: no STOPPING=1", got)
	}
}

// TestDrainCutAfterGrace: a connection still open when the shutdown grace
// ends is closed by the proxy, which then exits 0 and says so in its log.
func TestDrainCutAfterGrace(t *testing.T) {
	p, held := drainingLab(t, "2s")
	if err := held.echo("draining"); err != nil {
		t.Fatalf("open connection during the drain: %v", err)
	}
	// Not a speed check: the proxy gets ten times its grace.
	held.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := held.c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("held connection after the grace: read %d, %v; want it closed by the proxy", n, err)
	}
	p.waitExit0(t, "proxy did not exit after its grace")
	p.waitLog(t, "did not drain in time", "direction=outbound", "open=1")
}

// TestStatusAfterReady: the status line systemd shows ("systemctl status",
// from STATUS=) follows the proxy: once it is ready, it no longer says it
// waits for a certificate.
func TestStatusAfterReady(t *testing.T) {
	netnstest.RequireRoot(t)
	pod := netnstest.NewPod(t, "status")
	caDir := newCADir(t, "cluster.local")
	dir, err := os.MkdirTemp("", "mp-notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "notify")
	nc := listenNotify(t, sock)
	os.Chmod(sock, 0o666)

	p := startProxy(t, pod, "redirect", meshArgs(caDir, "spiffe://cluster.local/ns/default/sa/web")...)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("proxy did not exit after SIGTERM\n%s", p.logs.String())
	}
	var got []string
	buf := make([]byte, 4096)
	for {
		nc.SetReadDeadline(time.Now().Add(time.Second))
		n, err := nc.Read(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
	}
	// The status in force when the proxy ran ready, just before it stopped.
	status, ready := "", false
	for _, msg := range got {
		for _, line := range strings.Split(msg, "\n") {
			switch {
			case line == "READY=1":
				ready = true
			case line == "STOPPING=1":
				if !ready {
					t.Fatalf("notifications %q: STOPPING=1 before READY=1", got)
				}
				if strings.Contains(status, "waiting for a certificate") {
					t.Errorf("notifications %q: status while ready = %q; want it to say ready", got, status)
				}
				return
			case strings.HasPrefix(line, "STATUS="):
				status = strings.TrimPrefix(line, "STATUS=")
			}
		}
	}
	t.Errorf("notifications %q: no STOPPING=1", got)
}
