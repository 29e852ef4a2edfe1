package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"meshproxy/proxy"
)

// routesJSON renders a table for got/want messages.
func routesJSON(t *proxy.RouteTable) string {
	b, _ := json.MarshalIndent(t, "", "  ")
	return string(b)
}

func checkTable(t *testing.T, got, want *proxy.RouteTable) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("table =\n%s\nwant\n%s", routesJSON(got), routesJSON(want))
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func prefix(p string) *proxy.PathMatch { return &proxy.PathMatch{Type: proxy.PathPrefix, Value: p} }
func exact(p string) *proxy.PathMatch  { return &proxy.PathMatch{Type: proxy.PathExact, Value: p} }

var matchAll = []proxy.RouteMatch{{Path: prefix("/")}}

// TestLoadRoutesExample: the documented example loads into exactly this.
func TestLoadRoutesExample(t *testing.T) {
	path := filepath.Join("..", "..", "testdata", "routes", "example.yaml")
	got, err := loadRoutes(path, "")
	if err != nil {
		t.Fatal(err)
	}
	canary := []proxy.WeightedBackend{{Name: "web-canary", Namespace: "demo", Port: 8080, Weight: 1}}
	want := &proxy.RouteTable{ClusterDomain: "cluster.local", Services: map[string]*proxy.ServiceRoutes{
		"web.demo.svc.cluster.local:8080": {
			Name: "web", Namespace: "demo", Port: 8080,
			Source: path + ", document 1, HTTPRoute demo/web-split",
			Rules: []proxy.RouteRule{
				{Name: "canary", Matches: []proxy.RouteMatch{{Path: prefix("/"), Headers: []proxy.HeaderMatch{{Name: "x-canary", Value: "true"}}}}, Backends: canary},
				{
					Name: "split", Matches: matchAll,
					Backends: []proxy.WeightedBackend{
						{Name: "web-stable", Namespace: "demo", Port: 8080, Weight: 90},
						{Name: "web-canary", Namespace: "demo", Port: 8080, Weight: 10},
					},
					Timeouts: proxy.RouteTimeouts{Request: 10 * time.Second, BackendRequest: 2 * time.Second},
					Retry:    &proxy.RetryPolicy{Attempts: 2, Codes: []int{502, 503, 504}, Backoff: 100 * time.Millisecond},
				},
			},
		},
		"api.demo.svc.cluster.local:0": {
			Name: "api", Namespace: "demo",
			Source: path + ", document 2, HTTPRoute demo/api",
			Rules: []proxy.RouteRule{
				{Name: "rule-1", Matches: []proxy.RouteMatch{{Path: exact("/healthz")}}, Timeouts: proxy.RouteTimeouts{Request: 500 * time.Millisecond}},
				{
					Name: "rule-0", Matches: []proxy.RouteMatch{{Path: prefix("/v1/orders"), Method: "POST"}},
					Backends: []proxy.WeightedBackend{{Name: "orders", Namespace: "shop", Port: 80, Weight: 1}},
					Retry:    &proxy.RetryPolicy{Attempts: 3, Codes: []int{503}, Backoff: 25 * time.Millisecond, NonIdempotent: true},
				},
			},
		},
	}}
	checkTable(t, got, want)
}

// TestLoadRoutesBadFiles: every file in testdata/routes/bad is refused
// with exactly the errors its "# want:" lines give ({file} is its path).
func TestLoadRoutesBadFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "testdata", "routes", "bad", "*.yaml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("bad route files: %v, %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, line := range strings.Split(string(data), "\n") {
				if w, ok := strings.CutPrefix(line, "# want: "); ok {
					want = append(want, f+": "+strings.ReplaceAll(w, "{file}", f))
				}
			}
			if len(want) == 0 {
				t.Fatal("no # want: line")
			}
			table, err := loadRoutes(f, "")
			if err == nil {
				t.Fatalf("loaded %s; want errors:\n%s", routesJSON(table), strings.Join(want, "\n"))
			}
			if got := err.Error(); got != strings.Join(want, "\n") {
				t.Errorf("error =\n%s\nwant\n%s", got, strings.Join(want, "\n"))
			}
			var re *routeError
			if !errors.As(err, &re) && !strings.Contains(err.Error(), "yaml:") {
				t.Errorf("error %T is not a *routeError", err)
			}
		})
	}
}

const routeHead = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
`

// TestLoadRoutes: defaults, precedence, merging and the accepted extras.
func TestLoadRoutes(t *testing.T) {
	tests := []struct {
		name, domain, yaml string
		want               func(file string) map[string]*proxy.ServiceRoutes
		wantDomain         string
	}{{
		name: "defaults",
		yaml: routeHead + `metadata: {name: web}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - backendRefs: [{name: web-v2, port: 80}]
`,
		want: func(f string) map[string]*proxy.ServiceRoutes {
			return map[string]*proxy.ServiceRoutes{"web.default.svc.cluster.local:0": {
				Name: "web", Namespace: "default", Source: f + ", document 1, HTTPRoute default/web",
				Rules: []proxy.RouteRule{{Name: "rule-0", Matches: matchAll, Backends: []proxy.WeightedBackend{{Name: "web-v2", Namespace: "default", Port: 80, Weight: 1}}}},
			}}
		},
	}, {
		name:   "no rules, v1beta1, custom cluster domain, parent in another namespace",
		domain: "mesh.example.",
		yaml: `apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{group: core, kind: Service, name: web, namespace: other, port: 8080}]
`,
		wantDomain: "mesh.example",
		want: func(f string) map[string]*proxy.ServiceRoutes {
			return map[string]*proxy.ServiceRoutes{"web.other.svc.mesh.example:8080": {
				Name: "web", Namespace: "other", Port: 8080, Source: f + ", document 1, HTTPRoute demo/web",
				Rules: []proxy.RouteRule{{Name: "rule-0", Matches: matchAll}},
			}}
		},
	}, {
		name: "precedence splits rules with several matches",
		yaml: routeHead + `metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - name: catch-all
    matches:
    - path: {type: PathPrefix, value: /}
    - path: {type: Exact, value: /login}
  - name: api
    matches:
    - path: {value: /api}
    - path: {value: /api}
      method: GET
    - path: {value: /api}
      headers: [{name: a, value: "1"}, {name: b, value: "2"}]
    - path: {value: /api}
      headers: [{name: a, value: "1"}]
    - path: {value: /api/v2}
`,
		want: func(f string) map[string]*proxy.ServiceRoutes {
			api := func(m proxy.RouteMatch) proxy.RouteRule {
				return proxy.RouteRule{Name: "api", Matches: []proxy.RouteMatch{m}}
			}
			return map[string]*proxy.ServiceRoutes{"web.demo.svc.cluster.local:80": {
				Name: "web", Namespace: "demo", Port: 80, Source: f + ", document 1, HTTPRoute demo/web",
				Rules: []proxy.RouteRule{
					{Name: "catch-all", Matches: []proxy.RouteMatch{{Path: exact("/login")}}},
					api(proxy.RouteMatch{Path: prefix("/api/v2")}),
					api(proxy.RouteMatch{Path: prefix("/api"), Method: "GET"}),
					api(proxy.RouteMatch{Path: prefix("/api"), Headers: []proxy.HeaderMatch{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}}}),
					api(proxy.RouteMatch{Path: prefix("/api"), Headers: []proxy.HeaderMatch{{Name: "a", Value: "1"}}}),
					api(proxy.RouteMatch{Path: prefix("/api")}),
					{Name: "catch-all", Matches: matchAll},
				},
			}}
		},
	}, {
		name: "routes of one parent merge; ties go to namespace/name order, not file order",
		yaml: routeHead + `metadata: {name: zeta, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - name: z
    backendRefs: [{name: z, port: 80}]
---
# an empty document is skipped
---
` + routeHead + `metadata: {name: alpha, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}, {kind: Service, name: www, port: 80}]
  rules:
  - name: a
    backendRefs: [{name: a, port: 80}]
  - name: a-exact
    matches: [{path: {type: Exact, value: /x}}]
`,
		want: func(f string) map[string]*proxy.ServiceRoutes {
			a := proxy.RouteRule{Name: "a", Matches: matchAll, Backends: []proxy.WeightedBackend{{Name: "a", Namespace: "demo", Port: 80, Weight: 1}}}
			ax := proxy.RouteRule{Name: "a-exact", Matches: []proxy.RouteMatch{{Path: exact("/x")}}}
			z := proxy.RouteRule{Name: "z", Matches: matchAll, Backends: []proxy.WeightedBackend{{Name: "z", Namespace: "demo", Port: 80, Weight: 1}}}
			return map[string]*proxy.ServiceRoutes{
				"web.demo.svc.cluster.local:80": {
					Name: "web", Namespace: "demo", Port: 80,
					Source: f + ", document 3, HTTPRoute demo/alpha; " + f + ", document 1, HTTPRoute demo/zeta",
					Rules:  []proxy.RouteRule{ax, a, z},
				},
				"www.demo.svc.cluster.local:80": {
					Name: "www", Namespace: "demo", Port: 80,
					Source: f + ", document 3, HTTPRoute demo/alpha",
					Rules:  []proxy.RouteRule{ax, a},
				},
			}
		},
	}, {
		name: "retry defaults, attempts 0, annotation, weights 0",
		yaml: routeHead + `metadata:
  name: web
  namespace: demo
  annotations: {meshproxy.io/retry-non-idempotent: "true", other.io/x: "y"}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches: [{path: {type: Exact, value: /a}}]
    retry: {}
  - matches: [{path: {type: Exact, value: /b}}]
    retry: {attempts: 0}
  - matches: [{path: {type: Exact, value: /c}}]
    backendRefs: [{name: x, port: 1, weight: 0}]
    timeouts: {request: 0s, backendRequest: 1h2m3s4ms}
`,
		want: func(f string) map[string]*proxy.ServiceRoutes {
			return map[string]*proxy.ServiceRoutes{"web.demo.svc.cluster.local:0": {
				Name: "web", Namespace: "demo", Source: f + ", document 1, HTTPRoute demo/web",
				Rules: []proxy.RouteRule{
					{Name: "rule-0", Matches: []proxy.RouteMatch{{Path: exact("/a")}}, Retry: &proxy.RetryPolicy{Attempts: 1, Codes: []int{502, 503, 504}, Backoff: 25 * time.Millisecond, NonIdempotent: true}},
					{Name: "rule-1", Matches: []proxy.RouteMatch{{Path: exact("/b")}}},
					{
						Name: "rule-2", Matches: []proxy.RouteMatch{{Path: exact("/c")}},
						Backends: []proxy.WeightedBackend{{Name: "x", Namespace: "demo", Port: 1, Weight: 0}},
						Timeouts: proxy.RouteTimeouts{BackendRequest: time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond},
					},
				},
			}}
		},
	}, {
		name: "kubectl get output: status, bookkeeping metadata, anchors",
		yaml: routeHead + `metadata:
  name: web
  namespace: demo
  uid: 0b3c
  resourceVersion: "12"
  generation: 1
  creationTimestamp: "2026-01-01T00:00:00Z"
  labels: {app: web}
spec:
  parentRefs:
  - &parent {group: "", kind: Service, name: web, port: 80}
  rules:
  - backendRefs:
    - {group: "", kind: Service, name: web-v2, port: 80, weight: 1}
    matches:
    - path: {type: PathPrefix, value: /}
      headers: [{type: Exact, name: X-User, value: alice}]
    - path: {type: PathPrefix, value: /}
status:
  parents:
  - parentRef: *parent
    controllerName: example.io/mesh
    conditions: []
`,
		want: func(f string) map[string]*proxy.ServiceRoutes {
			b := []proxy.WeightedBackend{{Name: "web-v2", Namespace: "demo", Port: 80, Weight: 1}}
			return map[string]*proxy.ServiceRoutes{"web.demo.svc.cluster.local:80": {
				Name: "web", Namespace: "demo", Port: 80, Source: f + ", document 1, HTTPRoute demo/web",
				Rules: []proxy.RouteRule{
					{Name: "rule-0", Matches: []proxy.RouteMatch{{Path: prefix("/"), Headers: []proxy.HeaderMatch{{Name: "X-User", Value: "alice"}}}}, Backends: b},
					{Name: "rule-0", Matches: matchAll, Backends: b},
				},
			}}
		},
	}, {
		name: "empty file",
		yaml: "# nothing yet\n",
		want: func(string) map[string]*proxy.ServiceRoutes { return map[string]*proxy.ServiceRoutes{} },
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "routes.yaml")
			writeFile(t, f, tt.yaml)
			got, err := loadRoutes(f, tt.domain)
			if err != nil {
				t.Fatal(err)
			}
			domain := tt.wantDomain
			if domain == "" {
				domain = "cluster.local"
			}
			checkTable(t, got, &proxy.RouteTable{ClusterDomain: domain, Services: tt.want(f)})
		})
	}
}

// TestLoadRoutesDirectory: a directory's *.yaml and *.yml files, in name
// order, symlinks followed; other files, hidden files and subdirectories
// are not read.
func TestLoadRoutesDirectory(t *testing.T) {
	dir := t.TempDir()
	route := func(name string) string {
		return routeHead + "metadata: {name: " + name + "}\nspec:\n  parentRefs: [{kind: Service, name: " + name + "}]\n"
	}
	writeFile(t, filepath.Join(dir, "b.yml"), route("b"))
	os.Mkdir(filepath.Join(dir, "..2026_01"), 0o755)
	writeFile(t, filepath.Join(dir, "..2026_01", "a.yaml"), route("a"))
	if err := os.Symlink("..2026_01/a.yaml", filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "notes.txt"), "not: yaml: at all: [")
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), "not: yaml: at all: [")
	os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755)
	writeFile(t, filepath.Join(dir, "sub.yaml", "c.yaml"), "not: yaml: at all: [")

	got, err := loadRoutes(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Services) != 2 || got.Services["a.default.svc.cluster.local:0"] == nil || got.Services["b.default.svc.cluster.local:0"] == nil {
		t.Fatalf("services = %s; want a and b", routesJSON(got))
	}
	if src, want := got.Services["a.default.svc.cluster.local:0"].Source, filepath.Join(dir, "a.yaml")+", document 1, HTTPRoute default/a"; src != want {
		t.Errorf("source = %q; want %q", src, want)
	}

	// Errors of every file are reported, in file order; a name used in
	// two files is refused.
	writeFile(t, filepath.Join(dir, "c.yaml"), route("b")+"  hostnames: [x]\n")
	writeFile(t, filepath.Join(dir, "d.yaml"), route("b"))
	_, err = loadRoutes(dir, "")
	want := filepath.Join(dir, "c.yaml") + ": document 1 (HTTPRoute default/b): line 6: hostnames: not supported by meshproxy: meshproxy routes by parent Service, not by hostname; remove hostnames\n" +
		filepath.Join(dir, "d.yaml") + ": document 1 (HTTPRoute default/b): line 3: metadata.name: HTTPRoute default/b is already defined in " + filepath.Join(dir, "b.yml") + ", document 1 (names must be unique per namespace)"
	if err == nil || err.Error() != want {
		t.Errorf("error =\n%v\nwant\n%s", err, want)
	}

	if _, err := loadRoutes(filepath.Join(dir, "missing"), ""); err == nil || !strings.Contains(err.Error(), "check --routes") {
		t.Errorf("missing path: error = %v; want one naming --routes", err)
	}
}

// watchHarness runs a routeWatcher and collects the tables it applies.
type watchHarness struct {
	w       *routeWatcher
	applied chan *proxy.RouteTable
	reg     *prometheus.Registry
}

func newWatchHarness(t *testing.T, path string, run bool) *watchHarness {
	t.Helper()
	h := &watchHarness{applied: make(chan *proxy.RouteTable, 16), reg: prometheus.NewRegistry()}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := newRouteWatcher(path, "", func(rt *proxy.RouteTable) { h.applied <- rt }, h.reg, log)
	if err != nil {
		t.Fatal(err)
	}
	h.w = w
	if got := h.next(t); len(got.Services) == 0 {
		t.Fatalf("initial table is empty")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if run {
		wg.Go(func() { w.Run(ctx) })
	} else {
		w.fsw.Close()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return h
}

// next waits (boundedly) for the next applied table.
func (h *watchHarness) next(t *testing.T) *proxy.RouteTable {
	t.Helper()
	select {
	case rt := <-h.applied:
		return rt
	case <-time.After(10 * time.Second):
		t.Fatal("no table applied within 10s")
		return nil
	}
}

// noApply asserts nothing was applied.
func (h *watchHarness) noApply(t *testing.T) {
	t.Helper()
	select {
	case rt := <-h.applied:
		t.Fatalf("applied %s; want the old table kept", routesJSON(rt))
	default:
	}
}

// waitErrors waits (boundedly) until the error counter reaches n.
func (h *watchHarness) waitErrors(t *testing.T, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(h.w.reloadErrors) < n {
		if time.Now().After(deadline) {
			t.Fatalf("reload errors = %v; want %v", testutil.ToFloat64(h.w.reloadErrors), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// splitRoute is a route with a weighted split of web.
func splitRoute(stable, canary int) string {
	return routeHead + `metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - backendRefs:
    - {name: web-stable, port: 80, weight: ` + itoa(stable) + `}
    - {name: web-canary, port: 80, weight: ` + itoa(canary) + `}
`
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func weights(t *testing.T, rt *proxy.RouteTable) [2]int {
	t.Helper()
	sr := rt.Services["web.demo.svc.cluster.local:80"]
	if sr == nil || len(sr.Rules) != 1 || len(sr.Rules[0].Backends) != 2 {
		t.Fatalf("table = %s; want one rule with two backends", routesJSON(rt))
	}
	return [2]int{sr.Rules[0].Backends[0].Weight, sr.Rules[0].Backends[1].Weight}
}

// TestRouteWatcherFile: in-place writes, a bad file, and an editor's
// rename-over are followed; the bad file changes nothing.
func TestRouteWatcherFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "routes.yaml")
	writeFile(t, path, splitRoute(90, 10))
	h := newWatchHarness(t, path, true)

	writeFile(t, path, splitRoute(50, 50))
	if got := weights(t, h.next(t)); got != [2]int{50, 50} {
		t.Errorf("weights after write = %v; want [50 50]", got)
	}

	writeFile(t, path, splitRoute(50, -1))
	h.waitErrors(t, 1)
	h.noApply(t)
	if got := weights(t, h.w.Table()); got != [2]int{50, 50} {
		t.Errorf("weights in force after a bad file = %v; want [50 50]", got)
	}

	// An editor writes a new file beside it and renames it over.
	tmp := filepath.Join(dir, ".routes.yaml.swp")
	writeFile(t, tmp, splitRoute(0, 100))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := weights(t, h.next(t)); got != [2]int{0, 100} {
		t.Errorf("weights after rename = %v; want [0 100]", got)
	}
	// The reload is counted once the table is in force, just after the
	// apply that h.next saw: wait for the count.
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(h.w.reloads) < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := testutil.ToFloat64(h.w.reloads); n < 2 {
		t.Errorf("reloads = %v; want at least 2", n)
	}
	if n := testutil.ToFloat64(h.w.lastSuccess); n < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("last success timestamp = %v; want about now", n)
	}
}

// TestRouteWatcherConfigMap: a Kubernetes ConfigMap volume swaps its
// "..data" symlink; the file itself never changes.
func TestRouteWatcherConfigMap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		os.Mkdir(filepath.Join(dir, name), 0o755)
		writeFile(t, filepath.Join(dir, name, "routes.yaml"), content)
	}
	version("..2026_01_01", splitRoute(90, 10))
	if err := os.Symlink("..2026_01_01", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/routes.yaml", filepath.Join(dir, "routes.yaml")); err != nil {
		t.Fatal(err)
	}
	h := newWatchHarness(t, filepath.Join(dir, "routes.yaml"), true)

	// kubelet's atomic writer: new version dir, new symlink, rename over
	// ..data, remove the old version.
	version("..2026_01_02", splitRoute(10, 90))
	if err := os.Symlink("..2026_01_02", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "..2026_01_01"))
	if got := weights(t, h.next(t)); got != [2]int{10, 90} {
		t.Errorf("weights after the ConfigMap swap = %v; want [10 90]", got)
	}
}

// TestRouteWatcherDirectory: a new file in a routes directory is loaded.
func TestRouteWatcherDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.yaml"), splitRoute(90, 10))
	h := newWatchHarness(t, dir, true)
	writeFile(t, filepath.Join(dir, "api.yml"), routeHead+"metadata: {name: api}\nspec:\n  parentRefs: [{kind: Service, name: api}]\n")
	got := h.next(t)
	if len(got.Services) != 2 || got.Services["api.default.svc.cluster.local:0"] == nil {
		t.Errorf("table = %s; want web and api", routesJSON(got))
	}
}

// TestRouteWatcherReload: Reload (SIGHUP) without any file watching.
func TestRouteWatcherReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	writeFile(t, path, splitRoute(90, 10))
	h := newWatchHarness(t, path, false)

	// Unchanged: a successful reload that applies nothing.
	if err := h.w.Reload(); err != nil {
		t.Fatal(err)
	}
	h.noApply(t)

	writeFile(t, path, splitRoute(1, 2))
	if err := h.w.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := weights(t, h.next(t)); got != [2]int{1, 2} {
		t.Errorf("weights = %v; want [1 2]", got)
	}

	writeFile(t, path, splitRoute(1, 2)+"    filters: []\n    sessionPersistence: {sessionName: x}\n")
	err := h.w.Reload()
	if err == nil || !strings.Contains(err.Error(), "line 11: rules[0].sessionPersistence: not supported") {
		t.Errorf("Reload error = %v; want the sessionPersistence error with its line", err)
	}
	h.noApply(t)
	if got := testutil.ToFloat64(h.w.reloadErrors); got != 1 {
		t.Errorf("reload errors = %v; want 1", got)
	}
	if got := testutil.ToFloat64(h.w.reloads); got != 2 {
		t.Errorf("reloads = %v; want 2", got)
	}

	os.Remove(path)
	if err := h.w.Reload(); err == nil {
		t.Error("Reload of a removed file succeeded")
	}
	if got := weights(t, h.w.Table()); got != [2]int{1, 2} {
		t.Errorf("weights in force = %v; want [1 2]", got)
	}
}

// TestRouteWatcherStartup: a bad file at start is an error, not a proxy
// without routes.
func TestRouteWatcherStartup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	writeFile(t, path, splitRoute(90, -10))
	if _, err := newRouteWatcher(path, "", nil, nil, nil); err == nil || !strings.Contains(err.Error(), "weight: must be 0-1000000, got -10") {
		t.Errorf("error = %v; want the weight error", err)
	}
	if _, err := newRouteWatcher(path+".missing", "", nil, nil, nil); err == nil {
		t.Error("missing file: no error")
	}
}

func TestRouteMetricsLint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	writeFile(t, path, splitRoute(90, 10))
	h := newWatchHarness(t, path, false)
	h.w.reloadErrors.Inc()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"meshproxy_routes_reloads_total": true, "meshproxy_routes_reload_errors_total": true,
		"meshproxy_routes_last_reload_success_timestamp_seconds": true}
	for _, mf := range mfs {
		delete(want, mf.GetName())
	}
	for name := range want {
		t.Errorf("metric %s not registered", name)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestRouteWatcherCountsOnceInForce: a reload is counted only after its
// routes are applied, so whoever sees meshproxy_routes_reloads_total go
// up (a rollout script, a test) gets the new routes on its next request.
func TestRouteWatcherCountsOnceInForce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	writeFile(t, path, splitRoute(90, 10))
	var (
		w       *routeWatcher
		atApply []float64
		err     error
	)
	w, err = newRouteWatcher(path, "", func(*proxy.RouteTable) {
		if w != nil { // not at the initial load
			atApply = append(atApply, testutil.ToFloat64(w.reloads))
		}
	}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	w.fsw.Close()
	writeFile(t, path, splitRoute(1, 2))
	if err := w.Reload(); err != nil {
		t.Fatal(err)
	}
	if len(atApply) != 1 || atApply[0] != 0 {
		t.Errorf("reloads counted when the new routes were applied: %v; want [0] (counted after)", atApply)
	}
	if got := testutil.ToFloat64(w.reloads); got != 1 {
		t.Errorf("reloads = %v after the reload; want 1", got)
	}
}

// TestRetryBackoffZero: a retry block's "backoff: 0s" reaches the proxy as
// zero (retry at once), and one without a backoff gets the default.
func TestRetryBackoffZero(t *testing.T) {
	doc := func(backoff string) string {
		return "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\n" +
			"spec:\n  parentRefs: [{kind: Service, name: web, port: 8080}]\n  rules:\n  - backendRefs: [{name: web, port: 8080}]\n" +
			"    retry: {attempts: 2" + backoff + "}\n"
	}
	for _, c := range []struct {
		backoff string
		want    time.Duration
	}{{", backoff: 0s", 0}, {", backoff: 40ms", 40 * time.Millisecond}, {"", proxy.DefaultRetryBackoff}} {
		path := filepath.Join(t.TempDir(), "routes.yaml")
		writeFile(t, path, doc(c.backoff))
		tab, err := loadRoutes(path, "")
		if err != nil {
			t.Fatalf("%q: %v", c.backoff, err)
		}
		sr := tab.Services["web.demo.svc.cluster.local:8080"]
		if sr == nil || len(sr.Rules) != 1 || sr.Rules[0].Retry == nil {
			t.Fatalf("%q: table %s", c.backoff, routesJSON(tab))
		}
		if got := sr.Rules[0].Retry.Backoff; got != c.want {
			t.Errorf("retry {attempts: 2%s}: backoff %v, want %v", c.backoff, got, c.want)
		}
	}
}
