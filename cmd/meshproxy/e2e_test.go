package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshproxy/internal/netnstest"
)

var modes = []string{"redirect", "tproxy"}

var families = []struct {
	name           string
	client, server string
	// fromProxy is how the server app sees a connection from its proxy.
	fromProxy string
}{
	{"ipv4", clientV4, serverV4, "remote=127.0.0.1:"},
	{"ipv6", clientV6, serverV6, "remote=[::1]:"},
}

// TestForwarding sends HTTP and raw TCP from the client pod to the server
// pod through both proxies, in both modes and both address families.
func TestForwarding(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, labOptions{mode: mode})
			baseClient, baseServer := l.clientProxy.resources(t), l.serverProxy.resources(t)
			serveHTTP(t, l.server, "0.0.0.0:8080")
			serveHTTP(t, l.server, "[::]:8080")
			// An echo server that, after the client's EOF, sends the
			// SHA-256 of what it read: the reply proves every byte arrived.
			for _, a := range []string{"0.0.0.0:9000", "[::]:9000"} {
				serveTCP(t, l.server, a, func(c net.Conn) {
					h := sha256.New()
					if _, err := io.Copy(io.MultiWriter(h, c), c); err != nil {
						return
					}
					c.Write(h.Sum(nil))
				})
			}
			for _, fam := range families {
				t.Run(fam.name, func(t *testing.T) {
					dst := hostPort(fam.server, 8080)
					body := getBody(t, l.client, "http://"+dst+"/hello")
					// The server app saw the server proxy on loopback, so the
					// request went through the inbound proxy.
					if !strings.Contains(body, fam.fromProxy) || !strings.Contains(body, "path=/hello") {
						t.Errorf("server saw %q; want a request (%s) for /hello", body, fam.fromProxy)
					}
					// The client proxy recovered the original destination.
					l.clientProxy.waitLog(t, "dst="+dst, "direction=outbound")
					l.serverProxy.waitLog(t, "dst="+dst, "direction=inbound")

					// A large transfer in both directions, with half-close:
					// the client shuts its write side and still reads the
					// whole echo and the digest.
					c, err := l.client.Dial("tcp", hostPort(fam.server, 9000), 5*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					payload := make([]byte, 32<<20)
					rand.Read(payload)
					sum := sha256.Sum256(payload)
					errc := make(chan error, 1)
					go func() {
						_, err := c.Write(payload)
						if err == nil {
							err = c.(*net.TCPConn).CloseWrite()
						}
						errc <- err
					}()
					c.SetReadDeadline(time.Now().Add(60 * time.Second))
					got, err := io.ReadAll(c)
					if err != nil {
						t.Fatalf("reading echo: %v", err)
					}
					if err := <-errc; err != nil {
						t.Fatalf("writing: %v", err)
					}
					if len(got) != len(payload)+sha256.Size {
						t.Fatalf("read %d bytes; want %d (echo + digest)", len(got), len(payload)+sha256.Size)
					}
					if !bytes.Equal(got[:len(payload)], payload) {
						t.Error("echoed payload differs from what was sent")
					}
					if !bytes.Equal(got[len(payload):], sum[:]) {
						t.Error("server's digest differs: bytes were lost or changed on the way")
					}
				})
			}
			// Every byte was counted on both sides.
			for _, p := range []*labProxy{l.clientProxy, l.serverProxy} {
				if n := p.metric(t, "meshproxy_tcp_read_bytes_total"); n < 2*32<<20 {
					t.Errorf("%s: tcp_read_bytes_total = %v; want at least %d", p.pod.Name, n, 2*32<<20)
				}
				if n := p.metric(t, "meshproxy_listener_loops_refused_total"); n != 0 {
					t.Errorf("%s: loops refused = %v; want 0 (the proxy's own traffic must not be captured)", p.pod.Name, n)
				}
			}
			// Each client connection made exactly one outbound proxied
			// connection: the proxy's own upstream connection was not
			// captured again.
			if n := l.clientProxy.metric(t, `meshproxy_tcp_open_total{direction="outbound"}`); n != 4 {
				t.Errorf("client proxy: outbound tcp_open_total = %v; want 4 (2 HTTP + 2 TCP)", n)
			}
			if n := l.serverProxy.metric(t, `meshproxy_tcp_open_total{direction="inbound"}`); n != 4 {
				t.Errorf("server proxy: inbound tcp_open_total = %v; want 4", n)
			}
			// Every connection is closed: goroutines and descriptors are
			// back where they started.
			l.clientProxy.expectBaseline(t, baseClient)
			l.serverProxy.expectBaseline(t, baseServer)
		})
	}
}

// TestServerSpeaksFirst: a server that writes a banner before reading
// answers at once on an opaque port, and after at most the detect timeout
// on any other port; it is never dropped.
func TestServerSpeaksFirst(t *testing.T) {
	const detect = 2 * time.Second
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, labOptions{mode: mode, detectTimeout: detect})
			banner := func(c net.Conn) {
				io.WriteString(c, "220 banner\r\n")
				io.Copy(c, c)
			}
			serveTCP(t, l.server, "0.0.0.0:5432", banner) // opaque by default
			serveTCP(t, l.server, "0.0.0.0:7000", banner)
			for _, tc := range []struct {
				port int
				max  time.Duration
			}{
				// Well under the detect timeout: detection was skipped.
				{5432, detect / 2},
				// Detection waited, then forwarded as opaque. Generous bound.
				{7000, detect + 8*time.Second},
			} {
				start := time.Now()
				c, err := l.client.Dial("tcp", hostPort(serverV4, tc.port), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(start.Add(tc.max))
				line := make([]byte, len("220 banner\r\n"))
				if _, err := io.ReadFull(c, line); err != nil {
					t.Fatalf("port %d: banner not read within %v: %v", tc.port, tc.max, err)
				}
				// And the connection works both ways after the banner.
				io.WriteString(c, "ping")
				echo := make([]byte, 4)
				if _, err := io.ReadFull(c, echo); err != nil || string(echo) != "ping" {
					t.Errorf("port %d: echo after banner = %q, %v; want ping", tc.port, echo, err)
				}
				c.Close()
			}
		})
	}
}

// TestBypass: ignored ports and subnets do not go through the proxies, and
// connecting straight to a proxy listener is refused by the loop guard.
func TestBypass(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, labOptions{mode: mode, initArgs: []string{
				"--outbound-ports-to-ignore", "9100",
				"--inbound-ports-to-ignore", "4190,4191,9100",
				"--subnets-to-ignore", "198.19.0.0/24",
			}})
			serveHTTP(t, l.server, "0.0.0.0:9100")
			serveHTTP(t, l.server, "0.0.0.0:8080")

			// Ignored port: the server app sees the client's own address.
			if body := getBody(t, l.client, "http://"+hostPort(serverV4, 9100)+"/"); !strings.Contains(body, "remote="+clientV4+":") {
				t.Errorf("ignored port: server saw %q; want the client's address %s (no proxy)", body, clientV4)
			}
			// Ignored subnet: likewise.
			if body := getBody(t, l.client, "http://"+hostPort(serverIgnoredV4, 8080)+"/"); !strings.Contains(body, "remote="+clientIgnoredV4+":") {
				t.Errorf("ignored subnet: server saw %q; want the client's address %s (no proxy)", body, clientIgnoredV4)
			}
			// Control: a captured port goes through both proxies.
			if body := getBody(t, l.client, "http://"+hostPort(serverV4, 8080)+"/"); !strings.Contains(body, "remote=127.0.0.1:") {
				t.Errorf("captured port: server saw %q; want the proxy on 127.0.0.1", body)
			}
			if n := l.clientProxy.metric(t, `meshproxy_tcp_open_total{direction="outbound"}`); n != 1 {
				t.Errorf("client proxy: outbound connections = %v; want 1 (only the captured one)", n)
			}

			// Loop guard: straight at the outbound listener from its own
			// pod, and at the server's inbound port from the client.
			for _, tc := range []struct {
				from  *netnstest.Pod
				proxy *labProxy
				addr  string
			}{
				{l.client, l.clientProxy, "127.0.0.1:4140"},
				{l.client, l.serverProxy, hostPort(serverV4, 4143)},
			} {
				before := tc.proxy.metric(t, "meshproxy_listener_loops_refused_total") + tc.proxy.metric(t, "meshproxy_listener_no_original_dst_total")
				c, err := tc.from.Dial("tcp", tc.addr, 5*time.Second)
				if err != nil {
					t.Fatalf("dial %s: %v", tc.addr, err)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(make([]byte, 1))
				c.Close()
				if n != 0 || err == nil {
					t.Errorf("%s: read %d bytes, err %v; want the connection closed", tc.addr, n, err)
				}
				waitMetricAbove(t, tc.proxy, before, "meshproxy_listener_loops_refused_total", "meshproxy_listener_no_original_dst_total")
			}
		})
	}
}

func waitMetricAbove(t *testing.T, p *labProxy, before float64, names ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var now float64
		for _, n := range names {
			now += p.metric(t, n)
		}
		if now > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v stayed at %v; want it to grow", p.pod.Name, names, now)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestInitCheckAndRemove drives the init subcommand against a live
// namespace: check passes after init, fails once the rules drift, and
// remove leaves the check failing on a missing table.
func TestInitCheckAndRemove(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			bin := meshproxyBinary(t)
			p := netnstest.NewPod(t, "init")
			base := []string{"init", "--netns", p.Path, "--mode", mode, "--proxy-uid", "2102"}
			run := func(extra ...string) (string, error) {
				out, err := exec.Command(bin, append(append([]string{}, base...), extra...)...).CombinedOutput()
				return string(out), err
			}
			if out, err := run(); err != nil {
				t.Fatalf("init: %v\n%s", err, out)
			}
			if out, err := run(); err != nil {
				t.Fatalf("init again: %v\n%s", err, out)
			}
			if out, err := run("--check"); err != nil {
				t.Fatalf("check after init: %v\n%s", err, out)
			}
			// The same namespace with other wanted settings has drifted.
			if out, err := run("--check", "--outbound-ports-to-ignore", "25"); err == nil {
				t.Errorf("check with other settings passed; want a drift report\n%s", out)
			}
			if out, err := run("--remove"); err != nil {
				t.Fatalf("remove: %v\n%s", err, out)
			}
			if out, err := run("--check"); err == nil {
				t.Errorf("check after remove passed; want failure\n%s", out)
			}
			if out, err := run("--remove"); err != nil {
				t.Errorf("remove twice: %v\n%s", err, out)
			}
		})
	}
}

// TestGracefulShutdown: on SIGTERM the proxy stops being ready, lets an
// open connection finish within the grace period, and exits 0.
func TestGracefulShutdown(t *testing.T) {
	l := newLab(t, labOptions{mode: "redirect", runArgs: []string{"--shutdown-grace", "5s"}})
	serveTCP(t, l.server, "0.0.0.0:9000", func(c net.Conn) { io.Copy(c, c) })
	c, err := l.client.Dial("tcp", hostPort(serverV4, 9000), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			t.Errorf("echo = %q; want %q", buf, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	p := l.clientProxy
	// SIGHUP (systemctl reload) neither kills the proxy nor its connections.
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "SIGHUP")
	if err := echo("after SIGHUP"); err != nil {
		t.Fatalf("connection after SIGHUP: %v", err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	// Not ready while draining.
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _, err := p.admin("/ready")
		if err == nil && code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready = %d, %v after SIGTERM; want 503 while draining", code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The open connection still works during the drain.
	if err := echo("during drain"); err != nil {
		t.Fatalf("open connection during drain: %v", err)
	}
	// New connections are no longer accepted.
	if c2, err := l.client.Dial("tcp", hostPort(serverV4, 9000), time.Second); err == nil {
		c2.SetReadDeadline(time.Now().Add(2 * time.Second))
		c2.Write([]byte("x"))
		if n, _ := c2.Read(make([]byte, 1)); n > 0 {
			t.Error("a new connection was proxied after SIGTERM")
		}
		c2.Close()
	}
	c.Close()
	select {
	case <-p.done:
		if p.waitErr != nil {
			t.Errorf("proxy exit = %v; want 0\n%s", p.waitErr, p.logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("proxy did not exit after its last connection closed")
	}
	if !strings.Contains(p.logs.String(), "meshproxy stopped") {
		t.Errorf("no clean stop in logs:\n%s", p.logs.String())
	}
}

// TestRunBadInput: bad settings fail with one clear line and a non-zero
// exit, before anything listens.
func TestRunBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mode", "nat"}, `mode "nat" is neither redirect nor tproxy`},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--opaque-ports", "70000"}, `port "70000"`},
		{[]string{"--outbound-listen", "localhost:4140"}, `listen address "localhost:4140"`},
		{[]string{"--config", "/nonexistent/meshproxy.yaml"}, "/nonexistent/meshproxy.yaml"},
		{[]string{"--log-level", "loud"}, `log-level "loud"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			code := runRun(tc.args, io.Discard, &stderr)
			if code == 0 {
				t.Fatalf("exit 0; want failure")
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr = %q; want it to mention %q", stderr.String(), tc.want)
			}
		})
	}
}

// TestRunRefusesModeMismatch: a proxy started in tproxy mode behind
// redirect rules refuses to start, saying why.
func TestRunRefusesModeMismatch(t *testing.T) {
	bin := meshproxyBinary(t)
	p := netnstest.NewPod(t, "mode")
	if out, err := exec.Command(bin, "init", "--netns", p.Path, "--mode", "redirect", "--proxy-uid", "2102").CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "run", "--mode", "tproxy")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: proxyUID, Gid: proxyUID},
		AmbientCaps: []uintptr{12 /* CAP_NET_ADMIN */},
	}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := p.Start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("run exited 0; want a refusal\n%s", out.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("run started despite the mode mismatch\n%s", out.String())
	}
	if !strings.Contains(out.String(), "--mode tproxy disagrees with the live rules, installed in redirect mode") {
		t.Errorf("output = %q; want the mode mismatch explained", out.String())
	}
}

// TestInitUnprivileged: init run by an unprivileged user refuses with one
// clear line and changes nothing.
func TestInitUnprivileged(t *testing.T) {
	bin := meshproxyBinary(t)
	p := netnstest.NewPod(t, "unpriv")
	cmd := exec.Command(bin, "init", "--netns", p.Path, "--mode", "redirect", "--proxy-uid", "2102")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("init as nobody succeeded:\n%s", out)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "needs CAP_NET_ADMIN") {
		t.Errorf("output = %q; want one line saying CAP_NET_ADMIN is needed", out)
	}
	// Nothing was applied: a privileged check finds no table.
	if out, err := exec.Command(bin, "init", "--netns", p.Path, "--mode", "redirect", "--proxy-uid", "2102", "--check").CombinedOutput(); err == nil || !strings.Contains(string(out), "missing") {
		t.Errorf("check after the refused init: %v\n%s; want the table missing", err, out)
	}
}
