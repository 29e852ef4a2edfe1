package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"meshproxy/internal/netnstest"
)

// This file is the reliability suite (issue 7): the real proxies under
// long-held connections, endpoints dying and coming back, DNS and the
// identity service going away, and running out of file descriptors. Each
// test logs one greppable line,
//
//	reliability: <name>: requests=N failed=M
//
// asserts what the proxy promises, bounds its traffic in count and time,
// and ends with the proxies back at their goroutine and descriptor
// baseline.

// reportReliability logs a test's greppable result line.
func reportReliability(t *testing.T, name string, requests, failed int64, note string) {
	t.Helper()
	if note != "" {
		note = " (" + note + ")"
	}
	t.Logf("reliability: %s: requests=%d failed=%d%s", name, requests, failed, note)
}

var (
	demoOnce sync.Once
	demoPath string
	demoErr  error
)

// demoappBinary builds internal/demoapp once per run, next to the
// meshproxy binary (TestMain removes that directory).
func demoappBinary(t *testing.T) string {
	t.Helper()
	dir := filepath.Dir(meshproxyBinary(t))
	demoOnce.Do(func() {
		demoPath = filepath.Join(dir, "demoapp")
		if out, err := exec.Command("go", "build", "-o", demoPath, "meshproxy/internal/demoapp").CombinedOutput(); err != nil {
			demoErr = fmt.Errorf("go build demoapp: %v\n%s", err, out)
		}
	})
	if demoErr != nil {
		t.Fatal(demoErr)
	}
	return demoPath
}

// startDemoapp runs "demoapp args..." in pod p until the test ends, and
// waits until its output contains ready.
func startDemoapp(t *testing.T, p *netnstest.Pod, ready string, args ...string) {
	t.Helper()
	cmd := exec.Command(demoappBinary(t), args...)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := p.Start(cmd); err != nil {
		t.Fatalf("starting demoapp %v in %s: %v", args, p.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("demoapp %v logs:\n%s", args, logs.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), ready) {
		select {
		case <-done:
			t.Fatalf("demoapp %v exited: %s", args, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("demoapp %v did not say %q in 10s: %s", args, ready, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// echoOnce writes one byte on c and expects it back within 10s.
func echoOnce(c net.Conn, b byte) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{b}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := []byte{0}
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got[0] != b {
		return fmt.Errorf("echo %d; want %d", got[0], b)
	}
	return nil
}

// echoAll echoes one byte on every conn, at most 200 at a time, and
// returns how many failed and the first failure.
func echoAll(conns []net.Conn) (int, error) {
	var (
		mu     sync.Mutex
		failed int
		first  error
		wg     sync.WaitGroup
	)
	sem := make(chan struct{}, 200)
	for i, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := echoOnce(c, byte(i)); err != nil {
				mu.Lock()
				failed++
				if first == nil {
					first = fmt.Errorf("connection %d: %w", i, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed, first
}

// scrape is labProxy.metric without the test: it returns an error instead
// of failing, for goroutines and for a proxy that may not answer.
func scrape(lp *labProxy, sel string) (float64, error) {
	name, want := sel, []string(nil)
	if i := strings.IndexByte(sel, '{'); i >= 0 {
		name = sel[:i]
		for _, pair := range strings.Split(strings.TrimSuffix(sel[i+1:], "}"), `",`) {
			if pair = strings.TrimSpace(pair); pair != "" {
				want = append(want, strings.TrimSuffix(pair, `"`)+`"`)
			}
		}
	}
	code, body, err := lp.admin("/metrics")
	if err != nil {
		return 0, fmt.Errorf("fetching metrics from %s: %w", lp.pod.Name, err)
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("fetching metrics from %s: status %d", lp.pod.Name, code)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		sname, labels, _ := strings.Cut(line[:i], "{")
		if sname != name {
			continue
		}
		match := true
		for _, w := range want {
			match = match && strings.Contains(","+labels, ","+w)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	return sum, nil
}

// TestReliabilityManyConnections: 9,000 opaque connections from the client
// pod to the server pod through both proxies with mTLS, held for a
// minute; samples echo at the start, the middle and the end; all close
// and both proxies return to baseline.
//
// Issue 7 asks for 10,000. A process may open at most 20,000 files here
// and each proxy holds two per connection (downstream and upstream), so
// 9,000 is the most that fits with room for the proxies' own. The echo
// server runs in a child process (demoapp echo) so that the test process
// holds only the 9,000 client ends.
func TestReliabilityManyConnections(t *testing.T) {
	const (
		n      = 9000
		batch  = 150 // a burst of ~3,000 new mTLS connections loses some: open in batches
		hold   = 60 * time.Second
		sample = 300
	)
	l := faultLab(t, nil)
	check := baselines(t, l)
	startDemoapp(t, l.server, "echo listening", "echo", "-listen", "0.0.0.0:5432") // 5432: opaque by default

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var requests, failed int64
	t0 := time.Now()
	for len(conns) < n {
		cs, err := dialMany(l.client, hostPort(serverV4, 5432), min(batch, n-len(conns)))
		requests += int64(len(cs))
		if err != nil {
			requests++
			failed++
			t.Errorf("opened %d connections, then: %v", len(conns)+len(cs), err)
		}
		// Each new connection echoes once: it reached the app.
		f, first := echoAll(cs)
		requests += int64(len(cs))
		if f > 0 {
			failed += int64(f)
			t.Errorf("%d of %d new connections did not echo; first: %v", f, len(cs), first)
		}
		conns = append(conns, cs...)
		if err != nil || failed > 50 {
			break
		}
	}
	t.Logf("%d connections open and echoing in %v; open on the client proxy: %v outbound, server proxy: %v inbound",
		len(conns), time.Since(t0).Round(100*time.Millisecond),
		l.clientProxy.metric(t, `meshproxy_tcp_open_connections{direction="outbound"}`),
		l.serverProxy.metric(t, `meshproxy_tcp_open_connections{direction="inbound"}`))

	sampled := func(when string) {
		var cs []net.Conn
		for i := 0; i < sample && i*(len(conns)/sample) < len(conns); i++ {
			cs = append(cs, conns[i*(len(conns)/sample)])
		}
		f, first := echoAll(cs)
		requests += int64(len(cs))
		failed += int64(f)
		t.Logf("%s of the hold: %d of %d sampled connections failed to echo", when, f, len(cs))
		if f > 0 {
			t.Errorf("%s of the hold: %d of %d sampled connections no longer echo; first: %v", when, f, len(cs), first)
		}
	}
	sampled("start")
	time.Sleep(hold / 2)
	sampled("middle")
	if got := l.serverProxy.metric(t, `meshproxy_tcp_open_connections{direction="inbound"}`); got < float64(len(conns)) {
		t.Errorf("server proxy holds %v inbound connections in the middle of the hold; want %d", got, len(conns))
	}
	time.Sleep(hold / 2)
	sampled("end")

	for _, c := range conns {
		c.Close()
	}
	held := len(conns)
	conns = nil
	t1 := time.Now()
	check()
	t.Logf("back to baseline %v after closing", time.Since(t1).Round(100*time.Millisecond))
	reportReliability(t, "many-connections", requests, failed, fmt.Sprintf("%d connections held %v", held, hold))
	if held < n {
		t.Errorf("held %d connections; want %d", held, n)
	}
}

// TestReliabilityFDExhaustion: the client proxy's descriptor limit is
// lowered to 256 (soft and hard, with prlimit(2) on the running process:
// the Go runtime raises the soft limit to the hard one at start, so only
// a lower hard limit bites). Connections are opened until its outbound
// accept fails with EMFILE; the proxy stays alive, logs and counts the
// error (meshproxy_listener_accept_errors_total); once the connections
// close, new ones succeed again and the proxy is back at its baseline.
func TestReliabilityFDExhaustion(t *testing.T) {
	const (
		limit   = 256
		maxOpen = 400 // bound: 256 descriptors cannot hold more than ~128 proxied connections
		after   = 20  // connections after recovery
	)
	l := faultLab(t, nil)
	check := baselines(t, l)
	serveTCP(t, l.server, "0.0.0.0:5432", func(c net.Conn) { io.Copy(c, c) })
	addr := hostPort(serverV4, 5432)
	if err := echoDial(l.client, addr); err != nil {
		t.Fatalf("echo before lowering the limit: %v", err)
	}
	errsBefore := l.clientProxy.metric(t, `meshproxy_listener_accept_errors_total{direction="outbound"}`)
	lowerNofile(t, l.clientProxy.cmd.Process.Pid, limit)

	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// A proxied connection takes two of the proxy's descriptors, an idle
	// connection to its admin server one: when proxied connections start
	// failing (the upstream socket cannot be made, one descriptor stays
	// free), one admin connection takes the last one, so the next accept
	// is the one that fails.
	const emfileLog = "temporary accept error"
	refused, opened := 0, 0
	deadline := time.Now().Add(30 * time.Second)
	for opened < maxOpen && time.Now().Before(deadline) && !strings.Contains(l.clientProxy.logs.String(), emfileLog) {
		c, err := l.client.Dial("tcp4", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connect %d: %v (the kernel completes the handshake; the proxy has not accepted yet)", opened+1, err)
		}
		opened++
		held = append(held, c)
		c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if echoOnceNoDeadline(c) != nil {
			refused++
			if a, err := l.client.Dial("tcp4", "127.0.0.1:4191", 5*time.Second); err == nil {
				held = append(held, a)
			}
		}
		c.SetDeadline(time.Time{})
	}
	select {
	case <-l.clientProxy.done:
		t.Fatalf("the proxy exited when it ran out of descriptors: %v", l.clientProxy.waitErr)
	default:
	}
	line := ""
	for _, s := range strings.Split(l.clientProxy.logs.String(), "\n") {
		if strings.Contains(s, emfileLog) {
			line = s
			break
		}
	}
	t.Logf("after %d connections (%d not served) the proxy logged: %s", opened, refused, line)
	if line == "" || !strings.Contains(line, "too many open files") {
		t.Fatalf("no accept error logged with too many open files after %d connections (%d not served)", opened, refused)
	}

	for _, c := range held {
		c.Close()
	}
	held = nil
	// Accept backs off (at most 1s) and recovers once descriptors are free.
	var failed int64
	for i := 0; i < after; i++ {
		var err error
		for try := 0; try < 20; try++ {
			if err = echoDial(l.client, addr); err == nil {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			failed++
			t.Errorf("connection %d after the exhaustion ended: %v", i+1, err)
		}
	}
	if got := l.clientProxy.metric(t, `meshproxy_listener_accept_errors_total{direction="outbound"}`); got <= errsBefore {
		t.Errorf("meshproxy_listener_accept_errors_total stayed %v; want it to count the EMFILE", got)
	}
	if code, _, err := l.clientProxy.admin("/live"); err != nil || code != http.StatusOK {
		t.Errorf("/live after the exhaustion: %d %v; want 200", code, err)
	}
	check()
	reportReliability(t, "fd-exhaustion", after, failed,
		fmt.Sprintf("after recovery; while exhausted %d of %d connections were not served, as expected", refused, opened))
}

// lowerNofile sets the soft and hard RLIMIT_NOFILE of the running proxy
// pid to limit. The test lacks CAP_SYS_RESOURCE in some sandboxes, and
// prlimit(2) on another process needs it unless the caller has the
// target's user and group IDs: so util-linux's prlimit runs as the proxy
// UID, which may always lower its own processes' limits.
func lowerNofile(t *testing.T, pid, limit int) {
	t.Helper()
	bin, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("needs prlimit (util-linux) to lower the proxy's descriptor limit")
	}
	cmd := exec.Command(bin, "--pid", strconv.Itoa(pid), fmt.Sprintf("--nofile=%d:%d", limit, limit))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: proxyUID, Gid: proxyUID}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("prlimit --pid %d --nofile=%d:%d as UID %d: %v\n%s", pid, limit, limit, proxyUID, err, out)
	}
	var got unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &got); err == nil && (got.Cur != uint64(limit) || got.Max != uint64(limit)) {
		t.Fatalf("the proxy's RLIMIT_NOFILE is %d:%d after prlimit; want %d:%d", got.Cur, got.Max, limit, limit)
	}
}

// echoOnceNoDeadline is echoOnce for a conn whose deadline the caller set.
func echoOnceNoDeadline(c net.Conn) error {
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	b := []byte{0}
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if b[0] != 'x' {
		return errors.New("wrong echo")
	}
	return nil
}

// echoDial opens a connection from pod p to addr, echoes once and closes.
func echoDial(p *netnstest.Pod, addr string) error {
	c, err := p.Dial("tcp4", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c, 'e')
}

var _ = atomic.Int64{}
