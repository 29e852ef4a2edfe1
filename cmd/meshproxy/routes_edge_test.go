package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// aliasBomb is a small HTTPRoute document whose aliases repeat one rule
// rules times, one match in it matches times and one header match in that
// headers times: rules*matches*headers header matches once expanded.
func aliasBomb(rules, matches, headers int) string {
	var b strings.Builder
	b.WriteString(routeHead + "metadata: {name: bomb}\nspec:\n  parentRefs: [{kind: Service, name: web, port: 80}]\n  rules:\n")
	b.WriteString("  - &r\n    matches:\n    - &m\n      headers:\n      - &h {name: x-a, value: b}\n")
	for range headers - 1 {
		b.WriteString("      - *h\n")
	}
	for range matches - 1 {
		b.WriteString("    - *m\n")
	}
	for range rules - 1 {
		b.WriteString("  - *r\n")
	}
	return b.String()
}

// TestLoadRoutesAliasBomb: aliases cannot make a small routes file
// expand into more work than its lists' limits allow. A list over its
// limit is refused without walking its entries, so a document of a few
// hundred lines gives a few errors, not one per expanded entry (here
// 40*100*20 = 80,000 header matches and as many errors, each a walk;
// within maxRouteFileNodes, which TestLoadRoutesAliasBombDocuments
// tests).
func TestLoadRoutesAliasBomb(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bomb.yaml")
	writeFile(t, file, aliasBomb(40, 100, 20))
	table, err := loadRoutes(file, "")
	if err == nil {
		t.Fatalf("loaded %d services; want the over-long lists refused", len(table.Services))
	}
	if n := strings.Count(err.Error(), "\n") + 1; n > 10 {
		t.Errorf("%d errors (%d bytes); want a few: over-long lists must not be walked", n, len(err.Error()))
	}
	if !strings.Contains(err.Error(), "rules: at most 16 entries, got 40") {
		t.Errorf("error does not name the over-long rules list:\n%.2000s", err.Error())
	}

	// Within the limits the same aliases load (16*64*16 expanded).
	writeFile(t, file, aliasBomb(16, 64, 1))
	if _, err := loadRoutes(file, ""); err != nil {
		t.Errorf("aliases within the limits: %v", err)
	}
}

// TestLoadRoutesAliasBombDocuments: anchors live on across the documents
// of a file, so a one-line document can alias a whole earlier one; a
// file of such lines must not cost a full document's walk each.
func TestLoadRoutesAliasBombDocuments(t *testing.T) {
	doc := aliasBomb(16, 64, 1)
	// Anchor the first document's root, then repeat it by alias.
	doc = strings.Replace(doc, "apiVersion:", "&d\napiVersion:", 1)
	var b strings.Builder
	b.WriteString(doc)
	for range 300 {
		b.WriteString("--- *d\n")
	}
	file := filepath.Join(t.TempDir(), "bomb.yaml")
	writeFile(t, file, b.String())
	table, err := loadRoutes(file, "")
	if err == nil {
		t.Fatalf("loaded %d services; want the aliased documents refused", len(table.Services))
	}
	if n := strings.Count(err.Error(), "\n") + 1; n > 10 {
		t.Errorf("%d errors (%d bytes); want a few, naming the aliases:\n%.1000s", n, len(err.Error()), err.Error())
	}
	if !strings.Contains(err.Error(), "aliases") {
		t.Errorf("error does not name the aliases:\n%.1000s", err.Error())
	}
}

// TestLoadRoutesAliasCycle: an alias inside the node it names (YAML
// allows it) is refused, not followed forever.
func TestLoadRoutesAliasCycle(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cycle.yaml")
	writeFile(t, file, routeHead+"metadata: {name: cycle}\nspec: &s\n  parentRefs: [{kind: Service, name: web}]\n  rules: [*s]\n")
	if _, err := loadRoutes(file, ""); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("error %v; want the cycle refused", err)
	}
}

// TestRouteWatcherDirectoryReplaced: a routes directory removed (the
// routes in force stay, the failed reload is counted) and created again
// is watched again: its new routes load without a SIGHUP.
func TestRouteWatcherDirectoryReplaced(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "routes.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "web.yaml"), splitRoute(90, 10))
	h := newWatchHarness(t, dir, true)

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	h.waitErrors(t, 1)
	h.noApply(t)
	if got := weights(t, h.w.Table()); got != [2]int{90, 10} {
		t.Errorf("weights in force with the directory gone = %v; want [90 10]", got)
	}

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "web.yaml"), splitRoute(10, 90))
	if got := weights(t, h.next(t)); got != [2]int{10, 90} {
		t.Errorf("weights after the directory came back = %v; want [10 90]", got)
	}
}

// TestRoutesClusterDomainCase: DNS names are case-insensitive and the
// proxy looks routes up in lower case, so a cluster-domain written with
// capitals (or a trailing dot) still keys the routes it finds.
func TestRoutesClusterDomainCase(t *testing.T) {
	file := filepath.Join(t.TempDir(), "routes.yaml")
	writeFile(t, file, splitRoute(90, 10))
	table, err := loadRoutes(file, "Cluster.Local.")
	if err != nil {
		t.Fatal(err)
	}
	if table.Services["web.demo.svc.cluster.local:80"] == nil {
		t.Errorf("services %v; want web.demo.svc.cluster.local:80, the lower-case name lookups use", keys(table.Services))
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
