package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshproxy/internal/netnstest"
)

// routesDoc is an HTTPRoute for web.demo:8080: /flaky retried on 503, /slow
// bounded at 300ms, /post-retry retried even for POST, the rest split
// between web-stable and web-canary by the given weights.
func routesDoc(stable, canary int) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: demo
spec:
  parentRefs:
  - kind: Service
    name: web
    port: 8080
  rules:
  - matches:
    - path: {type: PathPrefix, value: /flaky}
    backendRefs:
    - {name: web-stable, port: 8080}
    retry:
      attempts: 5
      codes: [503]
      backoff: 5ms
  - matches:
    - path: {type: Exact, value: /slow}
    backendRefs:
    - {name: web-stable, port: 8080}
    timeouts:
      request: 300ms
  - matches:
    - headers:
      - {name: x-canary, value: "1"}
    backendRefs:
    - {name: web-canary, port: 8080}
  - backendRefs:
    - {name: web-stable, port: 8080, weight: %d}
    - {name: web-canary, port: 8080, weight: %d}
`, stable, canary)
}

// TestTrafficPolicy: HTTPRoutes read from a file govern the client pod's
// traffic to web:8080 across two endpoint pods: weighted splits that a
// reload shifts with no failed request, an invalid reload refused with the
// old routes kept, header routing, retries on 503 (GET, not POST), and a
// request timeout.
func TestTrafficPolicy(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := meshproxyBinary(t)
	ca := newCADir(t, "cluster.local")
	client := netnstest.NewPod(t, "client")
	names := []string{"stable", "canary"}
	var pods []*netnstest.Pod
	z := &zone{records: map[string][]netip.Addr{}}
	for i, name := range names {
		p := netnstest.NewPod(t, name)
		netnstest.LinkNamed(t, client, p, fmt.Sprintf("eth%d", i+1), "eth0",
			[]netip.Prefix{mustPrefix(fmt.Sprintf("198.18.%d.1/24", i+1))},
			[]netip.Prefix{mustPrefix(fmt.Sprintf("198.18.%d.2/24", i+1))})
		pods = append(pods, p)
		z.set("web-"+name+".demo.svc.cluster.local", netip.MustParseAddr(fmt.Sprintf("198.18.%d.2", i+1)))
	}
	// The parent service's own name resolves too (to stable): the app's
	// DNS answer, and where requests no rule matches would go.
	z.set("web.demo.svc.cluster.local", netip.MustParseAddr("198.18.1.2"))
	for _, p := range append([]*netnstest.Pod{client}, pods...) {
		if out, err := exec.Command(bin, "init", "--netns", p.Path, "--mode", "redirect", "--proxy-uid", "2102").CombinedOutput(); err != nil {
			t.Fatalf("init in %s: %v\n%s", p.Name, err, out)
		}
	}
	resolv, _ := serveZone(t, client, z)
	routesFile := filepath.Join(filepath.Dir(resolv), "routes.yaml")
	if err := os.WriteFile(routesFile, []byte(routesDoc(90, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := startProxy(t, client, "redirect", meshArgs(ca, "spiffe://cluster.local/ns/demo/sa/client",
		"--resolv-conf", resolv, "--routes", routesFile)...)
	for i, p := range pods {
		startProxy(t, p, "redirect", meshArgs(ca, "spiffe://cluster.local/ns/demo/sa/web-"+names[i])...)
	}

	// The apps: say who they are; /flaky fails 30% with 503 on stable;
	// /slow takes 2s; count every request they get.
	var flakyAttempts atomic.Int64
	for i, p := range pods {
		name := names[i]
		l, err := p.Listen("tcp4", "0.0.0.0:8080")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			switch r.URL.Path {
			case "/flaky", "/flaky-post":
				// 30% fail, in a fixed pattern (3 of every 10 attempts),
				// so that a request retried 5 times always succeeds:
				// random 30% failures made 6 in a row fail ~7% of runs
				// of 100 requests.
				if flakyAttempts.Add(1)%10 < 3 {
					http.Error(w, "flaky", http.StatusServiceUnavailable)
					return
				}
			case "/slow":
				time.Sleep(2 * time.Second)
			}
			io.WriteString(w, name)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}

	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return client.DialContext(ctx, "tcp", "198.18.1.2:8080")
		},
		MaxIdleConnsPerHost: 8,
	}}
	do := func(method, path string, hdr map[string]string) (int, string, http.Header, error) {
		req, _ := http.NewRequest(method, "http://web:8080"+path, strings.NewReader("body"))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), resp.Header, err
	}
	// split sends n GETs from 4 workers and counts who answered.
	split := func(n int) (map[string]int, int) {
		var mu sync.Mutex
		counts := map[string]int{}
		failed := 0
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < n/4; j++ {
					code, body, hdr, err := do("GET", "/", nil)
					mu.Lock()
					if err != nil || code != 200 {
						failed++
						if failed <= 3 {
							t.Logf("request failed: %d %q meshproxy-error=%q %v", code, body, hdr.Get("meshproxy-error"), err)
						}
					} else {
						counts[body]++
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return counts, failed
	}

	// 90/10 over 2000 requests: the canary's share within 5 standard
	// deviations of 10% (sd of a binomial share: sqrt(.09/2000) = 0.67%).
	counts, failed := split(2000)
	t.Logf("90/10: %v", counts)
	if failed > 0 {
		t.Errorf("%d requests failed under the 90/10 split", failed)
	}
	if share := float64(counts["canary"]) / 2000; share < 0.10-5*0.0067 || share > 0.10+5*0.0067 {
		t.Errorf("canary share %.3f; want 0.10 within statistical tolerance", share)
	}

	// Header routing picks the canary.
	for i := 0; i < 20; i++ {
		if code, body, _, err := do("GET", "/", map[string]string{"x-canary": "1"}); err != nil || body != "canary" {
			t.Fatalf("x-canary: 1 answered %d %q %v; want the canary", code, body, err)
		}
	}

	// Retries: 30% 503s look like 100% success for GET; POST is not
	// retried, so some of its 503s show.
	for i := 0; i < 100; i++ {
		if code, body, _, err := do("GET", "/flaky", nil); err != nil || code != 200 {
			t.Fatalf("GET /flaky = %d %q %v; want every request to succeed with retries", code, body, err)
		}
	}
	post503 := 0
	for i := 0; i < 60; i++ {
		if code, _, _, _ := do("POST", "/flaky", nil); code == http.StatusServiceUnavailable {
			post503++
		}
	}
	if post503 == 0 {
		t.Error("no POST /flaky saw a 503: POST was retried though its route does not allow it")
	}

	// Request timeout: 504 with meshproxy-error: timeout, at about 300ms.
	start := time.Now()
	code, _, hdr, err := do("GET", "/slow", nil)
	if err != nil || code != http.StatusGatewayTimeout || hdr.Get("meshproxy-error") != "timeout" {
		t.Errorf("GET /slow = %d %v (meshproxy-error %q); want 504 timeout", code, err, hdr.Get("meshproxy-error"))
	}
	if took := time.Since(start); took > 1900*time.Millisecond {
		t.Errorf("GET /slow took %v; want the 300ms timeout to cut it well before the 2s reply", took)
	}

	// Reloads while traffic flows: 50/50, then 0/100, with no failed
	// request; the file watcher applies each within a moment.
	stop := make(chan struct{})
	var flowFailed atomic.Int64
	var flowWG sync.WaitGroup
	for w := 0; w < 3; w++ {
		flowWG.Add(1)
		go func() {
			defer flowWG.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if code, body, _, err := do("GET", "/", nil); err != nil || code != 200 {
					flowFailed.Add(1)
					t.Logf("request during the shift failed: %d %q %v", code, body, err)
				}
			}
		}()
	}
	reloads := func() float64 { return cp.metric(t, "meshproxy_routes_reloads_total") }
	for _, w := range [][2]int{{50, 50}, {0, 100}} {
		before := reloads()
		if err := os.WriteFile(routesFile, []byte(routesDoc(w[0], w[1])), 0o644); err != nil {
			t.Fatal(err)
		}
		waitMetricAbove(t, cp, before, "meshproxy_routes_reloads_total")
		time.Sleep(300 * time.Millisecond)
	}
	close(stop)
	flowWG.Wait()
	if n := flowFailed.Load(); n > 0 {
		t.Errorf("%d requests failed while the weights shifted", n)
	}
	counts, failed = split(200)
	if failed > 0 || counts["stable"] != 0 {
		t.Errorf("after 0/100: %v, %d failed; want everything on the canary", counts, failed)
	}

	// An invalid file is refused: the error is logged and counted, and
	// the 0/100 routes keep running.
	before := cp.metric(t, "meshproxy_routes_reload_errors_total")
	if err := os.WriteFile(routesFile, []byte(strings.Replace(routesDoc(50, 50), "weight: 50", "weight: -5", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitMetricAbove(t, cp, before, "meshproxy_routes_reload_errors_total")
	cp.waitLog(t, "weight", "-5")
	counts, failed = split(100)
	if failed > 0 || counts["stable"] != 0 {
		t.Errorf("after a refused reload: %v, %d failed; want the old 0/100 routes still in force", counts, failed)
	}
	_, st, _ := cp.admin("/debug/state")
	if !strings.Contains(st, "web.demo.svc.cluster.local:8080") {
		t.Errorf("/debug/state lacks the routed service:\n%s", st)
	}
}
