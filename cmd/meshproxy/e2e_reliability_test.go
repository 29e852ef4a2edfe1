package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
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
func startDemoapp(t *testing.T, p *netnstest.Pod, ready string, args ...string) *exec.Cmd {
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
	return cmd
}

// openFDs counts a process's open file descriptors, -1 if unknown.
func openFDs(pid int) int {
	e, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(e)
}

// echoOnce writes one byte on c and expects it back within 20s (generous:
// the machine running the tests is shared).
func echoOnce(c net.Conn, b byte) error {
	c.SetDeadline(time.Now().Add(20 * time.Second))
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
// returns which failed (in no order) and the first failure.
func echoAll(conns []net.Conn) ([]int, error) {
	var (
		mu     sync.Mutex
		failed []int
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
				failed = append(failed, i)
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
		batch  = 250 // opened in batches only to bound the test's own goroutines
		hold   = 60 * time.Second
		sample = 300
	)
	l := faultLab(t, nil)
	check := baselines(t, l)
	app := startDemoapp(t, l.server, "echo listening", "echo", "-listen", "0.0.0.0:5432") // 5432: opaque by default

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// A connection that fails while opening is counted, closed and
	// replaced (so the hold still has 9,000), and fails the test: new mTLS
	// connections beyond the handshake rate wait for a handshake slot
	// (Mesh.MaxHandshakes) instead of timing out.
	var requests, failed, openFailed int64
	t0 := time.Now()
	openBy := time.Now().Add(4 * time.Minute) // bound; 2.5 minutes on a loaded 2-core machine
	for len(conns) < n && time.Now().Before(openBy) && openFailed <= n/100 {
		cs, err := dialMany(l.client, hostPort(serverV4, 5432), min(batch, n-len(conns)))
		if err != nil {
			requests++
			openFailed++
			t.Logf("opened %d connections, then: %v", len(conns)+len(cs), err)
		}
		// Each new connection echoes once (one request each): it
		// reached the app.
		bad, first := echoAll(cs)
		requests += int64(len(cs))
		if len(bad) > 0 {
			openFailed += int64(len(bad))
			t.Logf("%d of %d new connections did not echo; first: %v", len(bad), len(cs), first)
			for _, i := range bad {
				cs[i].Close()
				cs[i] = nil
			}
		}
		for _, c := range cs {
			if c != nil {
				conns = append(conns, c)
			}
		}
	}
	failed += openFailed
	if openFailed > 0 {
		var lines []string
		for _, line := range strings.Split(l.clientProxy.logs.String()+l.serverProxy.logs.String(), "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				lines = append(lines, line)
			}
		}
		t.Logf("%d connections failed while opening; the proxies' warnings (up to 10 of %d):\n%s",
			openFailed, len(lines), strings.Join(lines[:min(10, len(lines))], "\n"))
	}
	if openFailed > 0 {
		t.Errorf("%d connections failed while opening in batches of %d; want none", openFailed, batch)
	}
	outTLS := l.clientProxy.metric(t, `meshproxy_tcp_open_connections{direction="outbound",tls="true"}`)
	inTLS := l.serverProxy.metric(t, `meshproxy_tcp_open_connections{direction="inbound",tls="true"}`)
	t.Logf("%d connections open and echoing in %v; open with mTLS on the client proxy: %v outbound, server proxy: %v inbound; echo server descriptors: %d",
		len(conns), time.Since(t0).Round(100*time.Millisecond), outTLS, inTLS, openFDs(app.Process.Pid))
	if outTLS < float64(len(conns)) || inTLS < float64(len(conns)) {
		t.Errorf("open mTLS connections: %v outbound (client proxy), %v inbound (server proxy); want at least the %d held", outTLS, inTLS, len(conns))
	}

	sampled := func(when string) {
		var cs []net.Conn
		for i := 0; i < sample && i*(len(conns)/sample) < len(conns); i++ {
			cs = append(cs, conns[i*(len(conns)/sample)])
		}
		bad, first := echoAll(cs)
		f := len(bad)
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
	reportReliability(t, "many-connections", requests, failed, fmt.Sprintf("%d connections held %v; %d failed while opening and were replaced", held, hold, openFailed))
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
		notServed := false
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			// The proxy accepted it, could not open the upstream
			// socket and reset it, before this (slow, race-built)
			// test noticed that its connect had completed.
			opened++
			notServed = true
		case err != nil:
			t.Fatalf("connect %d: %v (the kernel completes the handshake; the proxy has not accepted yet)", opened+1, err)
		default:
			opened++
			held = append(held, c)
			c.SetDeadline(time.Now().Add(300 * time.Millisecond))
			notServed = echoOnceNoDeadline(c) != nil
			c.SetDeadline(time.Time{})
		}
		if notServed {
			refused++
			if a, err := l.client.Dial("tcp4", "127.0.0.1:4191", 5*time.Second); err == nil {
				held = append(held, a)
			}
		}
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

// endpointApp is one endpoint pod's HTTP app, which a test can kill
// (close its listener and connections) and start again on the same port.
type endpointApp struct {
	pod    *netnstest.Pod
	name   string
	served atomic.Int64
	mu     sync.Mutex
	srv    *http.Server
}

func (a *endpointApp) start(t *testing.T) {
	t.Helper()
	l, err := a.pod.Listen("tcp4", "0.0.0.0:8080")
	if err != nil {
		t.Errorf("restarting %s: %v", a.name, err)
		return
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		io.WriteString(w, a.name)
	}), ReadHeaderTimeout: 5 * time.Second}
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go srv.Serve(l)
}

func (a *endpointApp) kill() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.srv != nil {
		a.srv.Close()
		a.srv = nil
	}
}

// restartableZone serves a zone on a fixed UDP address in a pod, and can
// be stopped and started again on that address.
type restartableZone struct {
	pod  *netnstest.Pod
	z    *zone
	addr string
	mu   sync.Mutex
	srv  *dns.Server
}

func (r *restartableZone) start(t *testing.T) {
	t.Helper()
	pc, err := r.pod.ListenPacket("udp", r.addr)
	if err != nil {
		t.Fatalf("DNS server on %s: %v", r.addr, err)
	}
	r.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: r.z}
	go srv.ActivateAndServe()
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
}

func (r *restartableZone) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		r.srv.Shutdown()
		r.srv = nil
	}
}

// endpointLab is a client pod whose app asks for http://web:8080, a DNS
// server in the client pod naming the endpoints, and three meshed
// endpoint pods web1..web3 at 198.18.i.2, as in TestBalancingAcrossPods.
type endpointLab struct {
	client        *netnstest.Pod
	addrs         []netip.Addr
	dns           *restartableZone
	clientProxy   *labProxy
	serverProxies []*labProxy
	apps          []*endpointApp
	hc            *http.Client
}

func newEndpointLab(t *testing.T) *endpointLab {
	t.Helper()
	netnstest.RequireRoot(t)
	bin := meshproxyBinary(t)
	ca := newCADir(t, "cluster.local")
	e := &endpointLab{client: netnstest.NewPod(t, "client")}
	var servers []*netnstest.Pod
	for i := 1; i <= 3; i++ {
		s := netnstest.NewPod(t, fmt.Sprintf("web%d", i))
		netnstest.LinkNamed(t, e.client, s, fmt.Sprintf("eth%d", i), "eth0",
			[]netip.Prefix{mustPrefix(fmt.Sprintf("198.18.%d.1/24", i))},
			[]netip.Prefix{mustPrefix(fmt.Sprintf("198.18.%d.2/24", i))})
		servers = append(servers, s)
		e.addrs = append(e.addrs, netip.MustParseAddr(fmt.Sprintf("198.18.%d.2", i)))
	}
	for _, p := range append([]*netnstest.Pod{e.client}, servers...) {
		if out, err := exec.Command(bin, "init", "--netns", p.Path, "--mode", "redirect", "--proxy-uid", strconv.Itoa(proxyUID)).CombinedOutput(); err != nil {
			t.Fatalf("init in %s: %v\n%s", p.Name, err, out)
		}
	}
	e.dns = &restartableZone{pod: e.client, z: &zone{records: map[string][]netip.Addr{}}, addr: "127.0.0.1:0"}
	e.dns.z.set("web.demo.svc.cluster.local", e.addrs...)
	e.dns.start(t)
	t.Cleanup(e.dns.stop)
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	resolv := filepath.Join(dir, "resolv.conf")
	conf := fmt.Sprintf("nameserver %s\nsearch demo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", e.dns.addr)
	if err := os.WriteFile(resolv, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	e.clientProxy = startProxy(t, e.client, "redirect", meshArgs(ca, clientID, "--resolv-conf", resolv)...)
	for i, s := range servers {
		e.serverProxies = append(e.serverProxies, startProxy(t, s, "redirect", meshArgs(ca, fmt.Sprintf("spiffe://cluster.local/ns/demo/sa/web%d", i+1))...))
		a := &endpointApp{pod: s, name: fmt.Sprintf("web%d", i+1)}
		a.start(t)
		t.Cleanup(a.kill)
		e.apps = append(e.apps, a)
	}
	// The app resolved "web" to one address itself; whichever it dials,
	// its proxy balances each request by authority.
	e.hc = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return e.client.DialContext(ctx, "tcp", "198.18.1.2:8080")
		},
		MaxIdleConnsPerHost: 8,
	}}
	t.Cleanup(e.hc.CloseIdleConnections)
	return e
}

// baselines records every proxy's resources; the returned func checks
// that all are back to them.
func (e *endpointLab) baselines(t *testing.T) func() {
	t.Helper()
	ps := append([]*labProxy{e.clientProxy}, e.serverProxies...)
	bs := make([]resources, len(ps))
	for i, p := range ps {
		bs[i] = p.resources(t)
	}
	return func() {
		t.Helper()
		e.hc.CloseIdleConnections()
		for i, p := range ps {
			p.expectBaseline(t, bs[i])
		}
	}
}

// loadResult is what a bounded HTTP load saw.
type loadResult struct {
	mu       sync.Mutex
	requests int64
	failed   int64
	counts   map[string]int
	failures []time.Time
}

// get sends one GET http://web:8080/ and records the outcome.
func (e *endpointLab) get(t *testing.T, r *loadResult) {
	resp, err := e.hc.Get("http://web:8080/")
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d (%s): %s", resp.StatusCode, resp.Header.Get("meshproxy-error"), body)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if err != nil {
		r.failed++
		r.failures = append(r.failures, time.Now())
		if r.failed <= 5 {
			t.Logf("request failed at %s: %v", time.Now().Format("15:04:05.000"), err)
		}
		return
	}
	if r.counts == nil {
		r.counts = map[string]int{}
	}
	r.counts[string(body)]++
}

// load runs workers sending GETs back to back until stop is closed or
// max requests were sent, and returns what they saw.
func (e *endpointLab) load(t *testing.T, workers, max int, stop <-chan struct{}) *loadResult {
	r := &loadResult{}
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= int64(max) {
				select {
				case <-stop:
					return
				default:
				}
				e.get(t, r)
			}
		}()
	}
	wg.Wait()
	return r
}

// TestReliabilityEndpointKilled: under steady load over three endpoints,
// one endpoint's app is killed every 3s and started again 1.5s later.
//
// What may fail, and why: the endpoint's proxy stays up and answers a
// request for its dead app with 502 app-unreachable, which the client
// proxy takes as a connect failure: it sends the request to another
// endpoint and counts the failure (accrual ejects the endpoint after 5).
// Only a request the app had already taken when it was killed can fail:
// at most one in flight per worker per kill.
// Once ejected, a dead endpoint gets nothing but probes: from 700ms after
// the kill until the restart at most 2 requests may reach its proxy.
func TestReliabilityEndpointKilled(t *testing.T) {
	const (
		workers  = 4
		duration = 20 * time.Second
		maxReqs  = 40000
		every    = 3 * time.Second
		accrued  = 700 * time.Millisecond
		downFor  = 1500 * time.Millisecond
		probes   = 2 // the 1s ejection's probe, and slack for one more
	)
	e := newEndpointLab(t)
	check := e.baselines(t)
	warm := e.load(t, 1, 30, nil)
	if warm.failed > 0 {
		t.Fatalf("%d of 30 requests failed before any kill", warm.failed)
	}

	stop := make(chan struct{})
	type kill struct {
		app         int
		early, late float64 // requests reaching the dead endpoint's proxy before and after accrued
	}
	var kills []kill
	killerDone := make(chan struct{})
	sel := `meshproxy_requests_total{direction="inbound"}`
	go func() {
		defer close(killerDone)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			a := i % 3
			sp := e.serverProxies[a]
			before, err1 := scrape(sp, sel)
			killed := time.Now()
			e.apps[a].kill()
			time.Sleep(time.Until(killed.Add(accrued)))
			mid, err2 := scrape(sp, sel)
			time.Sleep(time.Until(killed.Add(downFor)))
			after, err3 := scrape(sp, sel)
			e.apps[a].start(t)
			if err1 == nil && err2 == nil && err3 == nil {
				kills = append(kills, kill{a, mid - before, after - mid})
			}
		}
	}()
	time.AfterFunc(duration, func() { close(stop) })
	r := e.load(t, workers, maxReqs, stop)
	<-killerDone

	// The dead app's proxy answers 502 app-unreachable, which the client
	// proxy takes as a connect failure and sends to another endpoint; only
	// a request the app had already taken when it died can fail.
	allowed := int64(len(kills) * workers)
	note := fmt.Sprintf("%d kills of %v; allowed %d = kills x %d in flight at the kill",
		len(kills), downFor, allowed, workers)
	reportReliability(t, "endpoint-killed", r.requests, r.failed, note)
	t.Logf("served: %v", r.counts)
	for i, k := range kills {
		t.Logf("kill %d: web%d down %v: %v requests reached its proxy in the first %v, %v after",
			i+1, k.app+1, downFor, k.early, accrued, k.late)
		if k.late > probes {
			t.Errorf("kill %d: %v requests went to web%d between %v after its app died and its restart; want at most %d probes (failure accrual should have ejected it)",
				i+1, k.late, k.app+1, accrued, probes)
		}
	}
	if len(kills) < 5 {
		t.Errorf("only %d kills in %v", len(kills), duration)
	}
	if r.failed > allowed {
		t.Errorf("%d of %d requests failed; want at most %d", r.failed, r.requests, allowed)
	}
	// Once the last ejection's backoff (up to 2s x 1.2 after the probe
	// that failed) ends, a probe re-admits the endpoint: all three serve.
	time.Sleep(4 * time.Second)
	after := e.load(t, 3, 300, nil)
	t.Logf("after the kills: %v, %d failed", after.counts, after.failed)
	if after.failed > 0 {
		t.Errorf("%d of 300 requests failed after the last restart", after.failed)
	}
	for _, a := range e.apps {
		if after.counts[a.name] == 0 {
			t.Errorf("%s served nothing after its restart: %v", a.name, after.counts)
		}
	}
	check()
}

// TestReliabilityDNSRestart: under load, the DNS server stops for longer
// than the answer's TTL (1s, raised to the resolver's 5s floor): requests
// keep succeeding from the cached answer (stale-if-error). It comes back
// with a changed answer set (web1 removed, web3 added) and the traffic
// follows it.
func TestReliabilityDNSRestart(t *testing.T) {
	const workers = 3
	e := newEndpointLab(t)
	name := "web.demo.svc.cluster.local"
	e.dns.z.set(name, e.addrs[0], e.addrs[1]) // before the first request: the proxy resolves on demand
	check := e.baselines(t)
	total := &loadResult{}
	add := func(r *loadResult) {
		total.requests += r.requests
		total.failed += r.failed
	}
	before := e.load(t, workers, 150, nil)
	add(before)
	t.Logf("DNS up, web1+web2: %v, %d failed", before.counts, before.failed)
	if before.counts["web3"] > 0 {
		t.Errorf("web3 got %d requests; it is not in the answer", before.counts["web3"])
	}

	e.dns.stop()
	queries := e.dns.z.queries.Load()
	stop := make(chan struct{})
	time.AfterFunc(8*time.Second, func() { close(stop) })
	down := e.load(t, workers, 20000, stop)
	add(down)
	t.Logf("DNS down 8s (TTL 5s): %v, %d of %d failed", down.counts, down.failed, down.requests)
	if down.failed > 0 {
		t.Errorf("%d of %d requests failed with DNS down; want all served from the cached answer", down.failed, down.requests)
	}
	// Both cached endpoints serve: a fallback to the app's own
	// destination (web1's address) would send everything to web1.
	if down.counts["web3"] > 0 || down.counts["web1"] == 0 || down.counts["web2"] == 0 {
		t.Errorf("with DNS down: %v; want web1 and web2 (the cached answer) and no web3", down.counts)
	}

	e.dns.z.set(name, e.addrs[1], e.addrs[2])
	e.dns.start(t)
	// The proxy asks again within the TTL floor, or at once if it was
	// retrying the failed lookups.
	stop = make(chan struct{})
	time.AfterFunc(7*time.Second, func() { close(stop) })
	switching := e.load(t, workers, 20000, stop)
	add(switching)
	t.Logf("DNS back with web2+web3, first 7s: %v, %d failed", switching.counts, switching.failed)
	if e.dns.z.queries.Load() == queries {
		t.Error("the proxy sent no DNS query after the server came back")
	}
	after := e.load(t, workers, 300, nil)
	add(after)
	t.Logf("DNS back with web2+web3: %v, %d failed", after.counts, after.failed)
	if after.counts["web1"] > 0 || after.counts["web3"] == 0 {
		t.Errorf("after the new answer: %v; want no web1 and some web3", after.counts)
	}
	if switching.failed+after.failed > 0 {
		t.Errorf("%d requests failed after DNS came back", switching.failed+after.failed)
	}
	reportReliability(t, "dns-restart", total.requests, total.failed, "")
	check()
}

// idService is "meshproxy identity serve" on 127.0.0.1:9443 of a pod,
// which a test stops and starts again.
type idService struct {
	pod  *netnstest.Pod
	bin  string
	ca   string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

const idServiceAddr = "127.0.0.1:9443"

func (s *idService) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.bin, "identity", "serve", "--dir", s.ca, "--listen", idServiceAddr)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := s.pod.Start(cmd); err != nil {
		return fmt.Errorf("starting the identity service in %s: %w", s.pod.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	if err := s.pod.WaitListening(idServiceAddr, 10*time.Second); err != nil {
		return fmt.Errorf("identity service in %s: %w\n%s", s.pod.Name, err, logs.String())
	}
	return nil
}

func (s *idService) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// identityLab is the client and server pods of the lab, each proxy getting
// its certificates (lifetime ttl) from its own pod's identity service.
func identityLab(t *testing.T, ttl time.Duration) (l *lab, svcs []*idService) {
	t.Helper()
	netnstest.RequireRoot(t)
	bin := meshproxyBinary(t)
	ca := newCADir(t, "cluster.local")
	l = &lab{mode: "redirect", client: netnstest.NewPod(t, "client"), server: netnstest.NewPod(t, "server")}
	netnstest.Link(t, l.client, l.server, []netip.Prefix{mustPrefix(clientV4 + "/24")}, []netip.Prefix{mustPrefix(serverV4 + "/24")})
	anchors := filepath.Join(filepath.Dir(ca), "anchors.pem")
	a, err := os.ReadFile(filepath.Join(ca, "anchor.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(anchors, a, 0o644); err != nil {
		t.Fatal(err)
	}
	proxies := []**labProxy{&l.clientProxy, &l.serverProxy}
	for i, p := range []*netnstest.Pod{l.client, l.server} {
		id := []string{clientID, serverID}[i]
		if out, err := exec.Command(bin, "init", "--netns", p.Path, "--mode", "redirect", "--proxy-uid", strconv.Itoa(proxyUID)).CombinedOutput(); err != nil {
			t.Fatalf("init in %s: %v\n%s", p.Name, err, out)
		}
		tok, err := exec.Command(bin, "ca", "token", "--dir", ca, "--identity", id).Output()
		if err != nil {
			t.Fatalf("ca token: %v", err)
		}
		tokFile := filepath.Join(filepath.Dir(ca), fmt.Sprintf("token-%d", i))
		if err := os.WriteFile(tokFile, []byte(strings.TrimSpace(string(tok))), 0o644); err != nil {
			t.Fatal(err)
		}
		svc := &idService{pod: p, bin: bin, ca: ca}
		if err := svc.start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.stop)
		svcs = append(svcs, svc)
		*proxies[i] = startProxy(t, p, "redirect", "--identity", id, "--identity-addr", idServiceAddr,
			"--identity-token-file", tokFile, "--trust-anchors", anchors, "--identity-ttl", ttl.String(),
			"--inbound-policy", "strict", "--detect-timeout", "500ms")
	}
	return l, svcs
}

// waitScrape polls sel on lp until cond holds or timeout passes.
func waitScrape(lp *labProxy, sel string, timeout time.Duration, cond func(float64) bool) (float64, error) {
	deadline := time.Now().Add(timeout)
	for {
		v, err := scrape(lp, sel)
		if err == nil && cond(v) {
			return v, nil
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("%s on %s is %v after %v (%v)", sel, lp.pod.Name, v, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReliabilityIdentityOutage: each proxy gets 10s certificates from an
// identity service in its pod (renewed at 70% of their life, about every
// 7s). With traffic flowing, each service is stopped right after a
// renewal and stays down through the next renewal and a retry (6-8s, a
// renewal interval; much longer would outlive the certificate);
// the proxies keep serving on their current certificates, log the failed
// refreshes, and renew once the service is back (refresh_total{ok} grows,
// the expiry moves forward). Then the client's service stays down until
// its certificate expires: new mesh connections fail, nothing goes out in
// plaintext, /ready turns 503; once the service returns, the proxy recovers with
// its join token and traffic flows again.
func TestReliabilityIdentityOutage(t *testing.T) {
	const ttl = 10 * time.Second
	l, svcs := identityLab(t, ttl)
	serveHTTP(t, l.server, "0.0.0.0:8080")
	serveTCP(t, l.server, "0.0.0.0:5432", func(c net.Conn) { io.Copy(c, c) })
	check := baselines(t, l)
	url := "http://" + hostPort(serverV4, 8080) + "/"
	tcpAddr := hostPort(serverV4, 5432)

	// Traffic: an HTTP request and a new opaque mTLS connection, every 50ms.
	var requests, failed atomic.Int64
	stopTraffic := make(chan struct{})
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for {
			select {
			case <-stopTraffic:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for _, err := range []error{getOK(l.client, url), echoDial(l.client, tcpAddr)} {
				requests.Add(1)
				if err != nil && failed.Add(1) <= 5 {
					t.Logf("request failed at %s: %v", time.Now().Format("15:04:05.000"), err)
				}
			}
		}
	}()
	defer func() {
		select {
		case <-stopTraffic:
		default:
			close(stopTraffic)
		}
		<-trafficDone
	}()

	const (
		okSel     = `meshproxy_identity_cert_refresh_total{result="ok"}`
		errSel    = `meshproxy_identity_cert_refresh_total{result="error"}`
		expirySel = `meshproxy_identity_cert_expiration_timestamp_seconds`
	)
	// outage stops svc right after lp renewed, waits for two failed
	// refreshes, starts it again and waits for the next renewal.
	outage := func(lp *labProxy, svc *idService) (string, error) {
		ok0, err := scrape(lp, okSel)
		if err != nil {
			return "", err
		}
		if _, err := waitScrape(lp, okSel, ttl+5*time.Second, func(v float64) bool { return v > ok0 }); err != nil {
			return "", fmt.Errorf("no renewal before the outage: %w", err)
		}
		svc.stop()
		down := time.Now()
		exp0, err := scrape(lp, expirySel)
		if err != nil {
			return "", err
		}
		e0, err := scrape(lp, errSel)
		if err != nil {
			return "", err
		}
		e1, err := waitScrape(lp, errSel, ttl+5*time.Second, func(v float64) bool { return v >= e0+2 })
		if err != nil {
			return "", fmt.Errorf("the refresh did not fail with the service down: %w", err)
		}
		if err := svc.start(); err != nil {
			return "", err
		}
		downFor := time.Since(down)
		ok1, err := scrape(lp, okSel)
		if err != nil {
			return "", err
		}
		if _, err := waitScrape(lp, okSel, 10*time.Second, func(v float64) bool { return v > ok1 }); err != nil {
			return "", fmt.Errorf("no renewal after the service came back: %w", err)
		}
		exp1, err := scrape(lp, expirySel)
		if err != nil {
			return "", err
		}
		if exp1 <= exp0 {
			return "", fmt.Errorf("certificate expiry %v after the renewal; want later than %v", exp1, exp0)
		}
		return fmt.Sprintf("service down %v, %v failed refreshes, then renewed (expiry +%vs)",
			downFor.Round(100*time.Millisecond), e1-e0, exp1-exp0), nil
	}
	t.Run("renewal-outage", func(t *testing.T) {
		var wg sync.WaitGroup
		results := make([]string, 2)
		errs := make([]error, 2)
		for i, lp := range []*labProxy{l.clientProxy, l.serverProxy} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], errs[i] = outage(lp, svcs[i])
			}()
		}
		wg.Wait()
		for i, lp := range []*labProxy{l.clientProxy, l.serverProxy} {
			if errs[i] != nil {
				t.Errorf("%s: %v", lp.pod.Name, errs[i])
			} else {
				t.Logf("%s: %s", lp.pod.Name, results[i])
			}
			if !strings.Contains(lp.logs.String(), "certificate refresh failed") {
				t.Errorf("%s logged no failed refresh while its identity service was down", lp.pod.Name)
			}
		}
		close(stopTraffic)
		<-trafficDone
		reportReliability(t, "identity-outage", requests.Load(), failed.Load(), "service down through a renewal, certificates still valid")
		if failed.Load() > 0 {
			t.Errorf("%d of %d requests failed while the identity service was down and the certificates valid", failed.Load(), requests.Load())
		}

	})
	// The certificate expires while the service is down.
	t.Run("certificate-expired", func(t *testing.T) {
		svcs[0].stop()
		exp, err := scrape(l.clientProxy, expirySel)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(time.Unix(int64(exp), 0)) + 500*time.Millisecond)
		capture := l.server.Capture(t, "eth0", 16<<20)
		marker := "expired-cert-marker-never-in-clear"
		var expiredFailed, expiredReqs int64
		for i := 0; i < 5; i++ {
			expiredReqs += 2
			if getOK(l.client, url+marker) == nil {
				t.Errorf("an HTTP request through the mesh succeeded with the client's certificate expired")
			} else {
				expiredFailed++
			}
			c, err := l.client.Dial("tcp4", tcpAddr, 5*time.Second)
			if err == nil {
				c.SetDeadline(time.Now().Add(2 * time.Second))
				io.WriteString(c, marker)
				n, _ := c.Read(make([]byte, 64))
				c.Close()
				if n > 0 {
					t.Errorf("an opaque connection was served with the client's certificate expired")
				} else {
					expiredFailed++
				}
			} else {
				expiredFailed++
			}
		}
		readyCode, readyBody, _ := l.clientProxy.admin("/ready")
		time.Sleep(200 * time.Millisecond)
		capture.Stop()
		if capture.Contains([]byte(marker)) {
			t.Error("with the certificate expired, the payload crossed the veth in plaintext")
		}
		t.Logf("certificate expired: %d of %d requests refused (expected: all); /ready = %d %q", expiredFailed, expiredReqs, readyCode, strings.TrimSpace(readyBody))
		if err := svcs[0].start(); err != nil {
			t.Fatal(err)
		}
		if _, err := waitScrape(l.clientProxy, expirySel, 40*time.Second, func(v float64) bool { return v > float64(time.Now().Unix()) }); err != nil {
			t.Fatalf("no new certificate after the service came back: %v", err)
		}
		var recovered int64
		for i := 0; i < 10; i++ {
			if getOK(l.client, url) == nil && echoDial(l.client, tcpAddr) == nil {
				recovered++
			}
		}
		reportReliability(t, "identity-expired", expiredReqs+20, expiredReqs-expiredFailed+2*(10-recovered),
			fmt.Sprintf("certificate expired: all %d refused as expected, then 10 of 10 rounds must succeed; %d did", expiredReqs, recovered))
		if recovered < 10 {
			t.Errorf("%d of 10 rounds succeeded after the client got a new certificate", recovered)
		}
		// Readiness follows the install at once (the watcher wakes on it);
		// the short wait only absorbs the hop between two goroutines.
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			code, body, _ := l.clientProxy.admin("/ready")
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("/ready 2s after the new certificate = %d %q; want 200", code, strings.TrimSpace(body))
				break
			}
		}
		if readyCode != http.StatusServiceUnavailable || !strings.Contains(readyBody, "certificate expired") {
			t.Errorf("/ready with the certificate expired = %d %q; want 503 naming the expired certificate", readyCode, strings.TrimSpace(readyBody))
		}
		check()
	})
}
