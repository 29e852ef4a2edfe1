package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshproxy/internal/netnstest"
)

// This file is the fault and bad-input suite: idle connections by the
// thousand, slow and oversized requests, clients that never read or reset
// mid-body, and garbage. Every test runs the real proxies with mTLS in a
// fresh lab, bounds its traffic in count and time, checks that ordinary
// requests keep working meanwhile, and ends with both proxies back at their
// goroutine and file descriptor baseline.

// faultLab is a meshed (mTLS) redirect-mode lab with extra run flags for
// both proxies and extra init flags for both pods.
func faultLab(t *testing.T, initArgs []string, runArgs ...string) *lab {
	t.Helper()
	ca := newCADir(t, "cluster.local")
	return newLab(t, labOptions{mode: "redirect", initArgs: initArgs, runArgs: runArgs,
		clientArgs: meshArgs(ca, clientID), serverArgs: meshArgs(ca, serverID)})
}

// baselines records both proxies' resources; the returned func checks
// that both are back to them.
func baselines(t *testing.T, l *lab) func() {
	t.Helper()
	bc, bs := l.clientProxy.resources(t), l.serverProxy.resources(t)
	return func() {
		t.Helper()
		l.clientProxy.expectBaseline(t, bc)
		l.serverProxy.expectBaseline(t, bs)
	}
}

// getOK GETs url from inside pod p and returns an error unless the answer
// is a 200 with a body.
func getOK(p *netnstest.Pod, url string) error {
	resp, err := httpClient(p).Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d (%s): %q", resp.StatusCode, resp.Header.Get("meshproxy-error"), b)
	}
	return nil
}

// normalTraffic sends n sequential GETs to url from pod p and returns how
// many failed, logging the first failure.
func normalTraffic(t *testing.T, p *netnstest.Pod, url string, n int) int {
	t.Helper()
	failed := 0
	for i := 0; i < n; i++ {
		if err := getOK(p, url); err != nil {
			if failed == 0 {
				t.Logf("first failed request: %v", err)
			}
			failed++
		}
	}
	return failed
}

// dialMany opens n TCP connections to addr from inside pod p, on one
// thread that stays in the namespace (one thread for all, not one each).
func dialMany(p *netnstest.Pod, addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	err := p.Do(func() error {
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
			}
			conns = append(conns, c)
		}
		return nil
	})
	return conns, err
}

// vmRSS reads a process's resident set size in bytes from /proc.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the proxy's status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// TestFaultManyIdleConnections: 3,000 idle raw TCP connections through
// both proxies with mTLS on an opaque port, held a few seconds, still
// echo; after they close both proxies return to baseline. (3,000 keeps the
// test fast under a 20,000-file limit shared by the test and two proxies;
// the bench, scripts/bench.sh, holds 9,000.)
func TestFaultManyIdleConnections(t *testing.T) {
	const n, sample = 3000, 100
	l := faultLab(t, nil)
	check := baselines(t, l)
	var accepted atomic.Int64
	serveTCP(t, l.server, "0.0.0.0:5432", func(c net.Conn) { accepted.Add(1); io.Copy(c, c) })

	// Open them in batches of 100, each reaching the app before the next:
	// this test is about holding connections, not a burst of new ones
	// (3,000 dialed at once overflow the server proxy's accept queue
	// while it does mTLS handshakes, and some mesh dials hit the 3s
	// connect timeout; see the report of issue 7).
	const batch = 100
	t0 := time.Now()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for len(conns) < n {
		cs, err := dialMany(l.client, hostPort(serverV4, 5432), batch)
		conns = append(conns, cs...)
		if err != nil {
			t.Fatalf("opened %d idle connections, then: %v", len(conns), err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for accepted.Load() < int64(len(conns)) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if accepted.Load() < int64(len(conns)) {
			break
		}
	}
	t.Logf("%d of %d connections reached the app in %v; open on the client proxy: %v, server proxy: %v",
		accepted.Load(), n, time.Since(t0).Round(100*time.Millisecond),
		l.clientProxy.metric(t, `meshproxy_tcp_open_connections{direction="outbound"}`),
		l.serverProxy.metric(t, `meshproxy_tcp_open_connections{direction="inbound"}`))
	if accepted.Load() < n {
		t.Fatalf("only %d of %d connections reached the app", accepted.Load(), n)
	}
	time.Sleep(3 * time.Second) // idle

	failed := 0
	for i := 0; i < sample; i++ {
		c := conns[i*(n/sample)]
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := []byte{byte(i)}
		_, err := c.Write(b)
		if err == nil {
			_, err = io.ReadFull(c, b)
		}
		if err == nil && b[0] != byte(i) {
			err = fmt.Errorf("echo %d; want %d", b[0], i)
		}
		if err != nil {
			if failed == 0 {
				t.Logf("first failed echo (connection %d): %v", i*(n/sample), err)
			}
			failed++
		}
	}
	t.Logf("idle connections: %d of %d sampled echoes failed", failed, sample)
	reportReliability(t, "fault-many-idle", sample, int64(failed), fmt.Sprintf("sampled echoes over %d idle connections", n))
	if failed > 0 {
		t.Errorf("%d of %d idle connections no longer echo", failed, sample)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	t1 := time.Now()
	check()
	t.Logf("back to baseline %v after closing", time.Since(t1).Round(100*time.Millisecond))
}

// TestFaultSlowloris: 50 connections that send one header byte every
// 200 ms and never finish do not stop ordinary requests, and the client
// proxy cuts them once its header timeout passes (--header-timeout, 10s by
// default, separate from the one-hour idle timeout); the lab sets 3s to
// see the cut.
func TestFaultSlowloris(t *testing.T) {
	const slow, normal = 50, 50
	l := faultLab(t, nil, "--header-timeout", "3s")
	check := baselines(t, l)
	serveHTTP(t, l.server, "0.0.0.0:8080")
	url := "http://" + hostPort(serverV4, 8080) + "/"

	conns, err := dialMany(l.client, hostPort(serverV4, 8080), slow)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var cut atomic.Int64
	start := time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One read waits for the proxy to end the connection.
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				io.Copy(io.Discard, c)
			}()
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: "); err != nil {
				return
			}
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ended:
					cut.Add(1)
					return
				case <-stop:
					c.Close()
					<-ended
					return
				case <-tick.C:
					if _, err := c.Write([]byte{'a'}); err != nil {
						<-ended
						cut.Add(1)
						return
					}
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	failed := normalTraffic(t, l.client, url, normal)
	t.Logf("slowloris: %d of %d normal requests failed beside %d slow connections", failed, normal, slow)
	reportReliability(t, "fault-slowloris", normal, int64(failed), fmt.Sprintf("beside %d slow connections", slow))
	if failed > 0 {
		t.Errorf("%d of %d normal requests failed during the slowloris", failed, normal)
	}
	// The header timeout (3s here) cuts every slow connection; wait
	// generously, then close what is left.
	deadline := time.Now().Add(15 * time.Second)
	for cut.Load() < slow && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("slowloris: %d of %d slow connections cut by the proxy after %v", cut.Load(), slow, time.Since(start).Round(100*time.Millisecond))
	if cut.Load() < slow {
		t.Errorf("%d of %d slow connections still open after %v with --header-timeout 3s: no header timeout",
			slow-cut.Load(), slow, time.Since(start).Round(time.Second))
	}
	close(stop)
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	check()
}

// TestFaultOversizedHeaders: a request with a 100 KiB header gets 431
// from the client proxy and its connection ends cleanly; a 48 KiB header
// (under the 64 KiB limit) still crosses the mesh's HTTP/2 hop; other
// clients are unaffected.
func TestFaultOversizedHeaders(t *testing.T) {
	l := faultLab(t, nil)
	check := baselines(t, l)
	serveHTTP(t, l.server, "0.0.0.0:8080")
	addr := hostPort(serverV4, 8080)
	url := "http://" + addr + "/"

	c, err := l.client.Dial("tcp4", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"
	// Write while reading: the proxy may answer before it has read it all.
	go io.WriteString(c, req)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("100 KiB header: reading the answer: %v; want a 431", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.Logf("100 KiB header: %s", resp.Status)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB header: status %d; want 431", resp.StatusCode)
	}
	// After a 431 net/http closes the connection: it must end, not hang.
	if _, err := io.Copy(io.Discard, br); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("after the 431 the connection neither closed nor answered: %v", err)
	}

	// Just under the limit still goes through both proxies.
	r, _ := http.NewRequest("GET", url, nil)
	r.Header.Set("X-Big", strings.Repeat("b", 48<<10))
	if resp, err := httpClient(l.client).Do(r); err != nil {
		t.Errorf("48 KiB header: %v; want 200", err)
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("48 KiB header: status %d (%s); want 200", resp.StatusCode, resp.Header.Get("meshproxy-error"))
		}
	}

	failed := normalTraffic(t, l.client, url, 20)
	t.Logf("oversized headers: %d of 20 normal requests failed", failed)
	reportReliability(t, "fault-oversized-headers", 20, int64(failed), "after a 100 KiB header")
	if failed > 0 {
		t.Errorf("%d of 20 normal requests failed after the oversized header", failed)
	}
	c.Close()
	check()
}

// TestFaultClientNeverReads: a client asks for 50 MB and never reads.
// Flow control must hold the rest back (neither proxy's RSS grows by
// anything near 50 MB), other requests keep working, and once the client
// closes, the app's write fails and the proxies return to baseline.
func TestFaultClientNeverReads(t *testing.T) {
	const size = 50 << 20
	l := faultLab(t, nil)
	check := baselines(t, l)
	var written atomic.Int64
	bigDone := make(chan error, 1)
	ln, err := l.server.Listen("tcp4", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/big" {
			io.WriteString(w, "small")
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		chunk := make([]byte, 32<<10)
		var err error
		for n := 0; n < size && err == nil; n += len(chunk) {
			var m int
			m, err = w.Write(chunk)
			written.Add(int64(m))
		}
		bigDone <- err
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := hostPort(serverV4, 8080)

	rssClient, rssServer := vmRSS(t, l.clientProxy.cmd.Process.Pid), vmRSS(t, l.serverProxy.cmd.Process.Pid)
	c, err := l.client.Dial("tcp4", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Wait until the app's writes stall (flow control) or 10s pass.
	deadline, last, still := time.Now().Add(10*time.Second), int64(-1), 0
	for still < 5 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if w := written.Load(); w == last && w > 0 {
			still++
		} else {
			last, still = w, 0
		}
	}
	select {
	case err := <-bigDone:
		t.Fatalf("the app wrote all %d bytes (%v) to a client that reads nothing: something buffers it all", size, err)
	default:
	}
	growC := vmRSS(t, l.clientProxy.cmd.Process.Pid) - rssClient
	growS := vmRSS(t, l.serverProxy.cmd.Process.Pid) - rssServer
	t.Logf("never-reading client: app wrote %.1f MB of %d MB before stalling; RSS grew %.1f MB (client proxy), %.1f MB (server proxy)",
		float64(written.Load())/(1<<20), size>>20, float64(growC)/(1<<20), float64(growS)/(1<<20))
	const bound = 20 << 20
	if growC > bound || growS > bound {
		t.Errorf("RSS grew by %d and %d bytes; want under %d each: a proxy buffers the unread response", growC, growS, bound)
	}

	failed := normalTraffic(t, l.client, "http://"+addr+"/small", 20)
	t.Logf("never-reading client: %d of 20 other requests failed", failed)
	reportReliability(t, "fault-never-reading-client", 20, int64(failed), "beside a stalled 50 MB response")
	if failed > 0 {
		t.Errorf("%d of 20 other requests failed beside the stalled one", failed)
	}

	c.Close()
	select {
	case err := <-bigDone:
		if err == nil {
			t.Error("the app finished writing to a client that closed; want a write error")
		}
	case <-time.After(15 * time.Second):
		t.Error("the app's write still blocked 15s after the client closed: the cancel did not travel")
	}
	check()
}

// TestFaultResetMidBody: a client sends half of a 10 MB POST body and
// resets the connection. The app sees an error, not a complete body; the
// proxies return to baseline; the next request works.
func TestFaultResetMidBody(t *testing.T) {
	const size = 10 << 20
	l := faultLab(t, nil)
	check := baselines(t, l)
	type result struct {
		n   int64
		err error
	}
	got := make(chan result, 4)
	ln, err := l.server.Listen("tcp4", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			io.WriteString(w, "ok")
			return
		}
		n, err := io.Copy(io.Discard, r.Body)
		got <- result{n, err}
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := hostPort(serverV4, 8080)

	c, err := l.client.Dial("tcp4", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	head := fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", addr, size)
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, size/2)); err != nil {
		t.Fatalf("writing half the body: %v", err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // RST

	select {
	case r := <-got:
		t.Logf("reset mid-body: the app read %d of %d bytes, then %v", r.n, size, r.err)
		if r.err == nil || r.n >= size {
			t.Errorf("the app read %d bytes with error %v; want an error before %d", r.n, r.err, size)
		}
	case <-time.After(15 * time.Second):
		t.Error("the app's body read still blocked 15s after the client reset")
	}
	afterFailed := int64(0)
	if err := getOK(l.client, "http://"+addr+"/"); err != nil {
		afterFailed = 1
		t.Errorf("the request after the reset failed: %v", err)
	}
	reportReliability(t, "fault-reset-mid-body", 1, afterFailed, "the request after the reset")
	check()
}

// TestFaultGarbage: random bytes to the server's mesh port 4143 are
// refused (meshproxy_inbound_refused_total counts them); random bytes and
// a garbled HTTP request to an HTTP app port end with the connection
// closed, not hung; ordinary traffic is unaffected.
func TestFaultGarbage(t *testing.T) {
	const n = 20
	// The client pod must reach 4143 directly, not through its proxy.
	l := faultLab(t, []string{"--outbound-ports-to-ignore", "4190,4191,4143"})
	check := baselines(t, l)
	serveHTTP(t, l.server, "0.0.0.0:8080")
	url := "http://" + hostPort(serverV4, 8080) + "/"
	refusedBefore := l.serverProxy.metric(t, "meshproxy_inbound_refused_total")

	garbage := func(i int) []byte {
		b := make([]byte, 4<<10)
		rand.Read(b)
		if i%2 == 1 { // looks like HTTP, then is not
			copy(b, "GET / HTTP/1.1\r\nHost: x\r\n")
		}
		return b
	}
	hung := 0
	send := func(addr string, i int) {
		c, err := l.client.Dial("tcp4", addr, 5*time.Second)
		if err != nil {
			t.Errorf("dial %s: %v", addr, err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(garbage(i)) // may fail once the far side gave up
		if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
			hung++
		}
	}
	for i := 0; i < n; i++ {
		send(hostPort(serverV4, 4143), i)
		send(hostPort(serverV4, 8080), i)
	}
	refused := l.serverProxy.metric(t, "meshproxy_inbound_refused_total") - refusedBefore
	t.Logf("garbage: %v connections to 4143 refused (of %d); %d of %d garbage connections hung", refused, n, hung, 2*n)
	if refused < n {
		t.Errorf("meshproxy_inbound_refused_total grew by %v; want %d (one per garbage connection to 4143)", refused, n)
	}
	if hung > 0 {
		t.Errorf("%d garbage connections were neither answered nor closed within 10s", hung)
	}
	failed := normalTraffic(t, l.client, url, 20)
	t.Logf("garbage: %d of 20 normal requests failed", failed)
	reportReliability(t, "fault-garbage", 20, int64(failed), fmt.Sprintf("after %d garbage connections", 2*n))
	if failed > 0 {
		t.Errorf("%d of 20 normal requests failed after the garbage", failed)
	}
	check()
}
