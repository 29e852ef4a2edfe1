package main

// This file loads Gateway API HTTPRoute documents (--routes PATH) into a
// proxy.RouteTable, strictly, and reloads them on SIGHUP and on file
// changes without ever replacing good routes with bad ones.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"meshproxy/proxy"
)

const (
	// routeAnnotationNonIdempotent, set to "true" on an HTTPRoute, lets
	// its rules' retries repeat non-idempotent requests (POST, PATCH).
	// Without it only idempotent methods are retried.
	routeAnnotationNonIdempotent = "meshproxy.io/retry-non-idempotent"

	defaultRouteClusterDomain = "cluster.local"
	maxRouteWeight            = 1000000
	maxRetryAttempts          = 10
	// Defaults of a retry block that leaves a field out (the Gateway API
	// says they are the implementation's to choose).
	defaultRetryAttempts = 1
	// routeReloadDebounce gathers the burst of events one save makes.
	routeReloadDebounce = 150 * time.Millisecond
	// routeRewatchInterval is how often the watcher tries to watch its
	// directory again after it was removed or moved away.
	routeRewatchInterval = 500 * time.Millisecond
)

// defaultRetryCodes are retried when a retry block has no codes: the
// statuses that say the upstream, not the request, failed. (500 is
// usually the application's deterministic answer.)
var defaultRetryCodes = []int{502, 503, 504}

// loadRoutes reads the HTTPRoute documents at path (a file, or a directory
// whose *.yaml and *.yml files are read in name order, not recursively)
// and builds the route table they describe. clusterDomain ("" means
// cluster.local) completes service names.
//
// Every document must be an HTTPRoute of gateway.networking.k8s.io/v1 (or
// v1beta1); empty documents are skipped. Loading is strict: an unknown
// field, or a Gateway API feature meshproxy does not implement (filters,
// hostnames, Gateway parents, sectionName, regular expression matches,
// query parameter matches, session persistence, non-Service backends),
// is an error naming it; nothing is silently ignored. Every error found
// is reported (joined), each as
//
//	FILE: document N (HTTPRoute NS/NAME): line L: FIELD: PROBLEM
//
// Decisions where the Gateway API leaves room:
//   - metadata.namespace defaults to "default" (as kubectl would), and is
//     the default namespace of parent and backend references.
//   - Status, labels, annotations and the server-set metadata of
//     "kubectl get -o yaml" output are accepted; only the annotation
//     meshproxy.io/retry-non-idempotent: "true" means anything.
//   - A rule with several matches becomes one RouteRule per match (same
//     Name, Backends, Timeouts and Retry), since precedence is a property
//     of matches; a rule without matches, and a match without a path,
//     match PathPrefix "/". Every RouteRule thus has exactly one match
//     with a non-nil Path.
//   - Rules are ordered by Gateway API precedence: Exact path, then
//     longer path, then a method match, then more header matches; ties go
//     to the route first by "namespace/name" (meshproxy has no creation
//     timestamps), then to rule order within it.
//   - Several routes with the same parent (Service and port) are merged
//     into one ServiceRoutes with that precedence, as the Gateway API
//     merges routes of one Gateway. A parent without a port is its own
//     key (port 0: any port), not merged with port-specific ones.
//   - Two documents with the same namespace/name are an error.
//   - A retry block's attempts default to 1, codes to 502, 503, 504, and
//     backoff to 25ms; attempts: 0 means no retries (Retry nil).
//     Attempts are limited to 10.
//   - Backends in other namespaces are allowed (there is no
//     ReferenceGrant check).
func loadRoutes(path, clusterDomain string) (*proxy.RouteTable, error) {
	// Lookups are in lower case (DNS names are case-insensitive).
	clusterDomain = strings.ToLower(strings.TrimSuffix(clusterDomain, "."))
	if clusterDomain == "" {
		clusterDomain = defaultRouteClusterDomain
	}
	files, err := routeFiles(path)
	if err != nil {
		return nil, err
	}
	var routes []*parsedRoute
	var errs []error
	for _, f := range files {
		rs, ferrs := parseRouteFile(f)
		routes = append(routes, rs...)
		errs = append(errs, ferrs...)
	}
	errs = append(errs, checkDuplicateRoutes(routes)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return buildRouteTable(routes, clusterDomain), nil
}

// routeFiles lists the files that path names: itself, or a directory's
// YAML files in name order.
func routeFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("routes: %w (check --routes: it names a file or directory of HTTPRoute YAML)", err)
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("routes: reading directory: %w", err)
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		full := filepath.Join(path, name)
		// Stat, not the entry's type: ConfigMap files are symlinks.
		if fi, err := os.Stat(full); err != nil || fi.IsDir() {
			if err != nil {
				return nil, fmt.Errorf("routes: %w", err)
			}
			continue
		}
		files = append(files, full)
	}
	sort.Strings(files) // ReadDir sorts by name already; the order is the contract
	return files, nil
}

// routeError is one problem in a routes file, located as precisely as
// the YAML allows.
type routeError struct {
	File   string
	Doc    int    // 1-based document number; 0 for the whole file
	Object string // "HTTPRoute demo/web" once known
	Line   int    // 0 when unknown
	Field  string // "rules[0].backendRefs[1].weight"
	Msg    string
}

func (e *routeError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Doc > 0 {
		fmt.Fprintf(&b, ": document %d", e.Doc)
		if e.Object != "" {
			fmt.Fprintf(&b, " (%s)", e.Object)
		}
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, ": line %d", e.Line)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// parsedRoute is one validated HTTPRoute document.
type parsedRoute struct {
	file      string
	doc       int
	line      int // of metadata.name
	name      string
	namespace string
	parents   []routeParent
	rules     []proxy.RouteRule // one match each, document order
}

func (r *parsedRoute) id() string { return r.namespace + "/" + r.name }
func (r *parsedRoute) source() string {
	return fmt.Sprintf("%s, document %d, HTTPRoute %s", r.file, r.doc, r.id())
}

type routeParent struct {
	name, namespace string
	port            uint16
}

// parseRouteFile parses every document of one file.
func parseRouteFile(file string) ([]*parsedRoute, []error) {
	data, err := readFileLimited(file, maxConfigFileBytes)
	if err != nil {
		return nil, []error{fmt.Errorf("routes: %w", err)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var routes []*parsedRoute
	var errs []error
	// Anchors live on across documents: the expansion budget is the
	// file's, and the counts of anchored nodes are shared.
	expanded, memo := 0, map[*yaml.Node]int{}
	for doc := 1; ; doc++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if err == io.EOF {
			break
		}
		if err != nil {
			// The decoder cannot resynchronise after a syntax error.
			errs = append(errs, &routeError{File: file, Doc: doc, Msg: err.Error()})
			break
		}
		expanded += expandedNodes(&n, memo, maxRouteFileNodes-expanded)
		if expanded > maxRouteFileNodes {
			errs = append(errs, &routeError{File: file, Doc: doc, Msg: fmt.Sprintf(
				"aliases expand the file past %d YAML nodes (or make a cycle); write the routes out with fewer aliases, or split the file", maxRouteFileNodes)})
			return nil, errs // the whole file is refused
		}
		root := &n
		if root.Kind == yaml.DocumentNode {
			if len(root.Content) == 0 {
				continue
			}
			root = root.Content[0]
		}
		if isNull(root) {
			continue
		}
		p := &docParser{file: file, doc: doc}
		r := p.route(root)
		if len(p.errs) > 0 {
			errs = append(errs, p.errs...)
			continue
		}
		routes = append(routes, r)
	}
	return routes, errs
}

// maxRouteFileNodes bounds the YAML nodes of one routes file counted with
// every alias expanded, as loading walks them: aliases may share a block,
// not multiply the work of a small file (a "billion laughs").
const maxRouteFileNodes = 1 << 20

// expandedNodes counts the nodes of n with aliases expanded, stopping soon
// after the count passes limit (it then returns more than limit). memo
// keeps the counts of anchored nodes, the only ones aliases name; a node
// met again while it is being counted is a cycle, an endless expansion.
func expandedNodes(n *yaml.Node, memo map[*yaml.Node]int, limit int) int {
	if n == nil {
		return 0
	}
	total := 1
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return total
		}
		return total + expandedNodes(n.Alias, memo, limit-total)
	}
	if c, ok := memo[n]; ok {
		if c < 0 { // still being counted: a cycle
			return limit + 1
		}
		return c
	}
	if n.Anchor != "" {
		memo[n] = -1
	}
	for _, c := range n.Content {
		total += expandedNodes(c, memo, limit-total)
		if total > limit {
			break
		}
	}
	if n.Anchor != "" {
		memo[n] = total
	}
	return total
}

// checkDuplicateRoutes refuses two documents with one namespace/name.
func checkDuplicateRoutes(routes []*parsedRoute) []error {
	var errs []error
	seen := map[string]*parsedRoute{}
	for _, r := range routes {
		if first, dup := seen[r.id()]; dup {
			errs = append(errs, &routeError{File: r.file, Doc: r.doc, Object: "HTTPRoute " + r.id(), Line: r.line,
				Field: "metadata.name", Msg: fmt.Sprintf("HTTPRoute %s is already defined in %s, document %d (names must be unique per namespace)", r.id(), first.file, first.doc)})
			continue
		}
		seen[r.id()] = r
	}
	return errs
}

// buildRouteTable merges routes by parent service and orders each
// service's rules by precedence.
func buildRouteTable(routes []*parsedRoute, clusterDomain string) *proxy.RouteTable {
	sorted := append([]*parsedRoute(nil), routes...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].id() < sorted[j].id() })
	t := &proxy.RouteTable{Services: map[string]*proxy.ServiceRoutes{}, ClusterDomain: clusterDomain}
	for _, r := range sorted {
		for _, p := range r.parents {
			key := proxy.ServiceKey(p.name+"."+p.namespace+".svc."+clusterDomain, p.port)
			sr := t.Services[key]
			if sr == nil {
				sr = &proxy.ServiceRoutes{Name: p.name, Namespace: p.namespace, Port: p.port}
				t.Services[key] = sr
			} else {
				sr.Source += "; "
			}
			sr.Source += r.source()
			sr.Rules = append(sr.Rules, r.rules...)
		}
	}
	for _, sr := range t.Services {
		sort.SliceStable(sr.Rules, func(i, j int) bool { return routeMatchBefore(sr.Rules[i].Matches[0], sr.Rules[j].Matches[0]) })
	}
	return t
}

// routeMatchBefore reports whether match a takes precedence over b
// (Gateway API HTTPRouteRule precedence; equal ones keep their order).
func routeMatchBefore(a, b proxy.RouteMatch) bool {
	if ae, be := a.Path.Type == proxy.PathExact, b.Path.Type == proxy.PathExact; ae != be {
		return ae
	}
	if len(a.Path.Value) != len(b.Path.Value) {
		return len(a.Path.Value) > len(b.Path.Value)
	}
	if (a.Method != "") != (b.Method != "") {
		return a.Method != ""
	}
	return len(a.Headers) > len(b.Headers)
}

// docParser validates one document, collecting every problem.
type docParser struct {
	file   string
	doc    int
	object string
	errs   []error
}

func (p *docParser) errorf(n *yaml.Node, field, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &routeError{File: p.file, Doc: p.doc, Object: p.object, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// fieldSet says which keys a mapping may have.
type fieldSet struct {
	// supported keys are returned to the caller.
	supported []string
	// unsupported keys are Gateway API features meshproxy lacks: an error
	// with the reason given, unless the value is empty.
	unsupported map[string]string
	// ignored keys are accepted and not looked at (status, bookkeeping).
	ignored []string
}

// fields checks that n is a mapping with only known keys and returns the
// values of the supported ones. It returns nil when n is not a mapping.
func (p *docParser) fields(n *yaml.Node, field string, fs fieldSet) map[string]*yaml.Node {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "must be a mapping, got %s", describeNode(n))
		return nil
	}
	out := map[string]*yaml.Node{}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		name := k.Value
		sub := joinField(field, name)
		if field == "spec" {
			sub = name // fields under spec are named as in the brief: rules[0]...
		}
		if k.Kind != yaml.ScalarNode || name == "<<" {
			p.errorf(k, sub, "unsupported key (merge keys and complex keys are not supported)")
			continue
		}
		if seen[name] {
			p.errorf(k, sub, "duplicate key")
			continue
		}
		seen[name] = true
		switch {
		case contains(fs.supported, name):
			out[name] = v
		case fs.unsupported[name] != "":
			if !isEmpty(v) {
				p.errorf(k, sub, "not supported by meshproxy: %s", fs.unsupported[name])
			}
		case contains(fs.ignored, name):
		default:
			p.errorf(k, sub, "unknown field (known: %s)", strings.Join(fs.supported, ", "))
		}
	}
	return out
}

func joinField(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func isEmpty(n *yaml.Node) bool {
	n = deref(n)
	return isNull(n) || ((n.Kind == yaml.SequenceNode || n.Kind == yaml.MappingNode) && len(n.Content) == 0)
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing"
		case "!!str":
			return strconv.Quote(n.Value)
		}
		return strings.TrimPrefix(n.Tag, "!!") + " " + n.Value
	}
	return "an unexpected node"
}

// str returns the string value of n, reporting anything but a string.
func (p *docParser) str(n *yaml.Node, field string) (string, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		hint := ""
		if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
			hint = fmt.Sprintf(" (quote it: %q)", n.Value)
		}
		p.errorf(n, field, "must be a string, got %s%s", describeNode(n), hint)
		return "", false
	}
	return n.Value, true
}

// integer returns the integer value of n within [lo, hi].
func (p *docParser) integer(n *yaml.Node, field string, lo, hi int64) (int64, bool) {
	n = deref(n)
	var v int64
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		p.errorf(n, field, "must be an integer, got %s", describeNode(n))
		return 0, false
	}
	if v < lo || v > hi {
		p.errorf(n, field, "must be %d-%d, got %d", lo, hi, v)
		return 0, false
	}
	return v, true
}

// list returns the items of a sequence of at most max entries. A longer
// one is an error and returns no items: its entries are not looked at,
// so aliases cannot make a small file expand into unbounded work (each
// list level multiplies what the aliases of the next one can repeat).
func (p *docParser) list(n *yaml.Node, field string, max int) []*yaml.Node {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "must be a list, got %s", describeNode(n))
		return nil
	}
	if len(n.Content) > max {
		p.errorf(n, field, "at most %d entries, got %d", max, len(n.Content))
		return nil
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, it := range n.Content {
		items[i] = deref(it)
	}
	return items
}

var (
	// Kubernetes name formats.
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1035Label     = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// gatewayDuration is GEP-2257's duration format.
	gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)
	// httpHeaderName is the Gateway API's HTTPHeaderName (an RFC 7230 token).
	httpHeaderName = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+\\-.^_`|~]+$")
)

// name checks a Kubernetes name against its format.
func (p *docParser) name(n *yaml.Node, field string, re *regexp.Regexp, max int, what string) (string, bool) {
	s, ok := p.str(n, field)
	if !ok {
		return "", false
	}
	if len(s) > max || !re.MatchString(s) {
		p.errorf(n, field, "%q is not a valid %s (%s, at most %d characters)", s, what, nameFormatHint(re), max)
		return "", false
	}
	return s, true
}

func nameFormatHint(re *regexp.Regexp) string {
	switch re {
	case dns1035Label:
		return "lower-case letters, digits and '-', starting with a letter"
	case dns1123Subdomain:
		return "lower-case letters, digits, '-' and '.'"
	}
	return "lower-case letters, digits and '-'"
}

// duration parses a Gateway API duration ("10s", "500ms", "1h30m").
func (p *docParser) duration(n *yaml.Node, field string) (time.Duration, bool) {
	s, ok := p.str(n, field)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if !gatewayDuration.MatchString(s) || err != nil {
		p.errorf(n, field, "%q is not a Gateway API duration (like \"10s\", \"500ms\", \"1m30s\"; units h, m, s, ms)", s)
		return 0, false
	}
	return d, true
}

// route validates one HTTPRoute document.
func (p *docParser) route(root *yaml.Node) *parsedRoute {
	// Name the object first so every error says which it is.
	p.object = peekObject(root)
	top := p.fields(root, "", fieldSet{
		supported: []string{"apiVersion", "kind", "metadata", "spec"},
		ignored:   []string{"status"},
	})
	if top == nil {
		return nil
	}
	r := &parsedRoute{file: p.file, doc: p.doc}
	kind, kindOK := "", false
	if n := top["kind"]; n != nil {
		kind, kindOK = p.str(n, "kind")
	}
	nonIdempotent := false
	if n := top["metadata"]; n != nil {
		nonIdempotent = p.metadata(n, r)
	} else {
		p.errorf(root, "metadata", "required (metadata.name names the route)")
	}
	switch n := top["apiVersion"]; {
	case n == nil:
		p.errorf(root, "apiVersion", "required: gateway.networking.k8s.io/v1")
	default:
		if v, ok := p.str(n, "apiVersion"); ok && v != "gateway.networking.k8s.io/v1" && v != "gateway.networking.k8s.io/v1beta1" {
			p.errorf(n, "apiVersion", "must be gateway.networking.k8s.io/v1 (or v1beta1), got %q", v)
		}
	}
	switch n := top["kind"]; {
	case n == nil:
		p.errorf(root, "kind", "required: HTTPRoute")
	case kindOK && kind != "HTTPRoute":
		p.errorf(n, "kind", "must be HTTPRoute, got %q (only HTTPRoute documents belong in the routes file)", kind)
		return r // its spec is not a route's; more errors would be noise
	}
	if n := top["spec"]; n != nil {
		p.spec(n, r, nonIdempotent)
	} else {
		p.errorf(root, "spec", "required")
	}
	return r
}

// peekObject names a document's object ("HTTPRoute demo/web") for error
// messages, before and whatever validation finds; "" when it has no name.
func peekObject(root *yaml.Node) string {
	get := func(m *yaml.Node, key string) *yaml.Node {
		m = deref(m)
		if m == nil || m.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == key {
				return deref(m.Content[i+1])
			}
		}
		return nil
	}
	scalar := func(n *yaml.Node) string {
		if n == nil || n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
			return ""
		}
		return n.Value
	}
	md := get(root, "metadata")
	name := scalar(get(md, "name"))
	if name == "" {
		return ""
	}
	ns := scalar(get(md, "namespace"))
	if ns == "" {
		ns = "default"
	}
	kind := scalar(get(root, "kind"))
	if kind == "" {
		kind = "HTTPRoute"
	}
	return kind + " " + ns + "/" + name
}

// metadata reads name, namespace and the meshproxy annotation.
func (p *docParser) metadata(n *yaml.Node, r *parsedRoute) (nonIdempotent bool) {
	md := p.fields(n, "metadata", fieldSet{
		supported: []string{"name", "namespace", "annotations"},
		ignored: []string{"labels", "uid", "resourceVersion", "generation", "creationTimestamp",
			"managedFields", "ownerReferences", "finalizers", "generateName", "deletionTimestamp", "deletionGracePeriodSeconds"},
	})
	if md == nil {
		return false
	}
	r.namespace = "default"
	if v := md["namespace"]; v != nil {
		if ns, ok := p.name(v, "metadata.namespace", dns1123Label, 63, "namespace"); ok {
			r.namespace = ns
		}
	}
	if v := md["name"]; v != nil {
		r.name, _ = p.name(v, "metadata.name", dns1123Subdomain, 253, "route name")
		r.line = v.Line
	} else {
		p.errorf(n, "metadata.name", "required")
	}
	if v := md["annotations"]; v != nil && !isNull(v) {
		a := deref(v)
		if a.Kind != yaml.MappingNode {
			p.errorf(a, "metadata.annotations", "must be a mapping, got %s", describeNode(a))
			return false
		}
		for i := 0; i+1 < len(a.Content); i += 2 {
			if a.Content[i].Value != routeAnnotationNonIdempotent {
				continue
			}
			field := "metadata.annotations[" + routeAnnotationNonIdempotent + "]"
			s, ok := p.str(a.Content[i+1], field)
			switch {
			case !ok:
			case s == "true":
				nonIdempotent = true
			case s == "false":
			default:
				p.errorf(a.Content[i+1], field, "must be \"true\" or \"false\", got %q", s)
			}
		}
	}
	return nonIdempotent
}

// spec reads parentRefs and rules.
func (p *docParser) spec(n *yaml.Node, r *parsedRoute, nonIdempotent bool) {
	spec := p.fields(n, "spec", fieldSet{
		supported: []string{"parentRefs", "rules"},
		unsupported: map[string]string{
			"hostnames": "meshproxy routes by parent Service, not by hostname; remove hostnames",
		},
	})
	if spec == nil {
		return
	}
	if v := spec["parentRefs"]; v != nil && !isEmpty(v) {
		p.parentRefs(v, r)
	} else {
		p.errorf(n, "parentRefs", "required: at least one parent with kind: Service names the service whose traffic the route governs")
	}
	if v := spec["rules"]; v != nil && !isNull(v) {
		p.rules(v, r, nonIdempotent)
	} else {
		// The Gateway API's default: one rule sending everything to the
		// parent; that is meshproxy's behaviour without routes anyway.
		r.rules = append(r.rules, proxy.RouteRule{Name: "rule-0", Matches: []proxy.RouteMatch{defaultRouteMatch()}})
	}
}

func defaultRouteMatch() proxy.RouteMatch {
	return proxy.RouteMatch{Path: &proxy.PathMatch{Type: proxy.PathPrefix, Value: "/"}}
}

// group checks a group field: Services are in the core group.
func (p *docParser) coreGroup(n *yaml.Node, field string) bool {
	if n == nil {
		return true
	}
	g, ok := p.str(n, field)
	if ok && g != "" && g != "core" {
		p.errorf(n, field, "must be \"\" (the core group of Service), got %q", g)
		return false
	}
	return ok
}

func (p *docParser) parentRefs(n *yaml.Node, r *parsedRoute) {
	seen := map[routeParent]int{}
	for i, it := range p.list(n, "parentRefs", 32) {
		field := fmt.Sprintf("parentRefs[%d]", i)
		f := p.fields(it, field, fieldSet{
			supported: []string{"group", "kind", "name", "namespace", "port"},
			unsupported: map[string]string{
				"sectionName": "a Service parent is chosen by port; use port instead of sectionName",
			},
		})
		if f == nil {
			continue
		}
		ok := true
		if k := f["kind"]; k == nil {
			p.errorf(it, field+".kind", "missing, which means Gateway; meshproxy governs service-to-service traffic and needs kind: Service (GAMMA)")
			ok = false
		} else if kind, kok := p.str(k, field+".kind"); !kok {
			ok = false
		} else if kind != "Service" {
			p.errorf(k, field+".kind", "%s parents are not supported: meshproxy governs service-to-service traffic and needs kind: Service (GAMMA)", kind)
			ok = false
		} else {
			ok = p.coreGroup(f["group"], field+".group")
		}
		pr := routeParent{namespace: r.namespace}
		if v := f["name"]; v != nil {
			s, nok := p.name(v, field+".name", dns1035Label, 63, "Service name")
			pr.name, ok = s, ok && nok
		} else {
			p.errorf(it, field+".name", "required")
			ok = false
		}
		if v := f["namespace"]; v != nil {
			s, nok := p.name(v, field+".namespace", dns1123Label, 63, "namespace")
			pr.namespace, ok = s, ok && nok
		}
		if v := f["port"]; v != nil {
			port, pok := p.integer(v, field+".port", 1, 65535)
			pr.port, ok = uint16(port), ok && pok
		}
		if !ok {
			continue
		}
		if j, dup := seen[pr]; dup {
			p.errorf(it, field, "same parent as parentRefs[%d]", j)
			continue
		}
		seen[pr] = i
		r.parents = append(r.parents, pr)
	}
}

func (p *docParser) rules(n *yaml.Node, r *parsedRoute, nonIdempotent bool) {
	names := map[string]int{}
	for i, it := range p.list(n, "rules", 16) {
		field := fmt.Sprintf("rules[%d]", i)
		f := p.fields(it, field, fieldSet{
			supported: []string{"name", "matches", "backendRefs", "timeouts", "retry"},
			unsupported: map[string]string{
				"filters":            "filters (header modifiers, redirects, rewrites, mirroring) are not implemented; remove them",
				"sessionPersistence": "session persistence is not implemented; remove it",
			},
		})
		if f == nil {
			continue
		}
		rule := proxy.RouteRule{Name: fmt.Sprintf("rule-%d", i)}
		if v := f["name"]; v != nil {
			if s, ok := p.name(v, field+".name", dns1123Label, 253, "rule name"); ok {
				if j, dup := names[s]; dup {
					p.errorf(v, field+".name", "%q is already the name of rules[%d]", s, j)
				}
				names[s] = i
				rule.Name = s
			}
		}
		var matches []proxy.RouteMatch
		if v := f["matches"]; v != nil && !isNull(v) {
			for j, m := range p.list(v, field+".matches", 64) {
				if rm, ok := p.match(m, fmt.Sprintf("%s.matches[%d]", field, j)); ok {
					matches = append(matches, rm)
				}
			}
		}
		if len(matches) == 0 {
			matches = []proxy.RouteMatch{defaultRouteMatch()}
		}
		if v := f["backendRefs"]; v != nil && !isNull(v) {
			for j, b := range p.list(v, field+".backendRefs", 16) {
				if wb, ok := p.backendRef(b, fmt.Sprintf("%s.backendRefs[%d]", field, j), r.namespace); ok {
					rule.Backends = append(rule.Backends, wb)
				}
			}
		}
		if v := f["timeouts"]; v != nil && !isNull(v) {
			rule.Timeouts = p.timeouts(v, field+".timeouts")
		}
		if v := f["retry"]; v != nil && !isNull(v) {
			rule.Retry = p.retry(v, field+".retry", nonIdempotent)
		}
		for _, m := range matches {
			rr := rule
			rr.Matches = []proxy.RouteMatch{m}
			r.rules = append(r.rules, rr)
		}
	}
}

var httpRouteMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

func (p *docParser) match(n *yaml.Node, field string) (proxy.RouteMatch, bool) {
	f := p.fields(n, field, fieldSet{
		supported: []string{"path", "method", "headers"},
		unsupported: map[string]string{
			"queryParams": "query parameter matches are not implemented; match on path, method or headers",
		},
	})
	if f == nil {
		return proxy.RouteMatch{}, false
	}
	errsBefore := len(p.errs)
	m := defaultRouteMatch()
	if v := f["path"]; v != nil && !isNull(v) {
		m.Path = p.pathMatch(v, field+".path")
	}
	if v := f["method"]; v != nil {
		if s, ok := p.str(v, field+".method"); ok {
			if !contains(httpRouteMethods, s) {
				p.errorf(v, field+".method", "must be one of %s, got %q", strings.Join(httpRouteMethods, ", "), s)
			}
			m.Method = s
		}
	}
	if v := f["headers"]; v != nil && !isNull(v) {
		seen := map[string]int{}
		for i, h := range p.list(v, field+".headers", 16) {
			hf := fmt.Sprintf("%s.headers[%d]", field, i)
			hm, ok := p.headerMatch(h, hf)
			if !ok {
				continue
			}
			lower := strings.ToLower(hm.Name)
			if j, dup := seen[lower]; dup {
				p.errorf(h, hf+".name", "header %q is already matched by headers[%d]", hm.Name, j)
				continue
			}
			seen[lower] = i
			m.Headers = append(m.Headers, hm)
		}
	}
	return m, len(p.errs) == errsBefore
}

func (p *docParser) pathMatch(n *yaml.Node, field string) *proxy.PathMatch {
	f := p.fields(n, field, fieldSet{supported: []string{"type", "value"}})
	pm := &proxy.PathMatch{Type: proxy.PathPrefix, Value: "/"}
	if f == nil {
		return pm
	}
	if v := f["type"]; v != nil {
		if s, ok := p.str(v, field+".type"); ok {
			switch proxy.PathMatchType(s) {
			case proxy.PathExact, proxy.PathPrefix:
				pm.Type = proxy.PathMatchType(s)
			case "RegularExpression":
				p.errorf(v, field+".type", "RegularExpression is not supported by meshproxy; use Exact or PathPrefix")
			default:
				p.errorf(v, field+".type", "must be Exact or PathPrefix, got %q", s)
			}
		}
	}
	if v := f["value"]; v != nil {
		if s, ok := p.str(v, field+".value"); ok {
			if problem := checkRoutePath(s); problem != "" {
				p.errorf(v, field+".value", "%q: %s", s, problem)
			}
			pm.Value = s
		}
	}
	return pm
}

// checkRoutePath applies the Gateway API's rules for path values.
func checkRoutePath(s string) string {
	switch {
	case !strings.HasPrefix(s, "/"):
		return "must be an absolute path starting with \"/\""
	case len(s) > 1024:
		return "must be at most 1024 characters"
	case strings.Contains(s, "//"), strings.Contains(s, "/./"), strings.Contains(s, "/../"),
		strings.HasSuffix(s, "/."), strings.HasSuffix(s, "/.."):
		return "must not contain \"//\", \"/./\" or \"/../\" segments"
	case strings.Contains(s, "#"), strings.Contains(strings.ToLower(s), "%2f"):
		return "must not contain \"#\" or an encoded \"/\" (%2f)"
	case strings.ContainsAny(s, " \t\r\n?"):
		return "must not contain whitespace or a query (\"?\")"
	}
	return ""
}

func (p *docParser) headerMatch(n *yaml.Node, field string) (proxy.HeaderMatch, bool) {
	f := p.fields(n, field, fieldSet{supported: []string{"type", "name", "value"}})
	if f == nil {
		return proxy.HeaderMatch{}, false
	}
	ok := true
	if v := f["type"]; v != nil {
		if s, sok := p.str(v, field+".type"); !sok {
			ok = false
		} else if s == "RegularExpression" {
			p.errorf(v, field+".type", "RegularExpression is not supported by meshproxy; use Exact")
			ok = false
		} else if s != "Exact" {
			p.errorf(v, field+".type", "must be Exact, got %q", s)
			ok = false
		}
	}
	var hm proxy.HeaderMatch
	if v := f["name"]; v == nil {
		p.errorf(n, field+".name", "required")
		ok = false
	} else if s, sok := p.str(v, field+".name"); !sok {
		ok = false
	} else if len(s) > 256 || !httpHeaderName.MatchString(s) {
		p.errorf(v, field+".name", "%q is not a valid HTTP header name", s)
		ok = false
	} else {
		hm.Name = s
	}
	if v := f["value"]; v == nil {
		p.errorf(n, field+".value", "required")
		ok = false
	} else if s, sok := p.str(v, field+".value"); !sok {
		ok = false
	} else if s == "" || len(s) > 4096 {
		p.errorf(v, field+".value", "must be 1-4096 characters")
		ok = false
	} else {
		hm.Value = s
	}
	return hm, ok
}

func (p *docParser) backendRef(n *yaml.Node, field, routeNamespace string) (proxy.WeightedBackend, bool) {
	f := p.fields(n, field, fieldSet{
		supported: []string{"group", "kind", "name", "namespace", "port", "weight"},
		unsupported: map[string]string{
			"filters": "per-backend filters are not implemented; remove them",
		},
	})
	if f == nil {
		return proxy.WeightedBackend{}, false
	}
	ok := true
	if v := f["kind"]; v != nil {
		if kind, kok := p.str(v, field+".kind"); !kok {
			ok = false
		} else if kind != "Service" {
			p.errorf(v, field+".kind", "%s backends are not supported; meshproxy sends to kind: Service backends", kind)
			ok = false
		}
	}
	if ok {
		ok = p.coreGroup(f["group"], field+".group")
	}
	wb := proxy.WeightedBackend{Namespace: routeNamespace, Weight: 1}
	if v := f["name"]; v == nil {
		p.errorf(n, field+".name", "required")
		ok = false
	} else if s, nok := p.name(v, field+".name", dns1035Label, 63, "Service name"); !nok {
		ok = false
	} else {
		wb.Name = s
	}
	if v := f["namespace"]; v != nil {
		if s, nok := p.name(v, field+".namespace", dns1123Label, 63, "namespace"); !nok {
			ok = false
		} else {
			wb.Namespace = s
		}
	}
	if v := f["port"]; v == nil {
		p.errorf(n, field+".port", "required for a Service backend")
		ok = false
	} else if port, pok := p.integer(v, field+".port", 1, 65535); !pok {
		ok = false
	} else {
		wb.Port = uint16(port)
	}
	if v := f["weight"]; v != nil {
		if w, wok := p.integer(v, field+".weight", 0, maxRouteWeight); !wok {
			ok = false
		} else {
			wb.Weight = int(w)
		}
	}
	return wb, ok
}

func (p *docParser) timeouts(n *yaml.Node, field string) proxy.RouteTimeouts {
	f := p.fields(n, field, fieldSet{supported: []string{"request", "backendRequest"}})
	var t proxy.RouteTimeouts
	if f == nil {
		return t
	}
	if v := f["request"]; v != nil {
		t.Request, _ = p.duration(v, field+".request")
	}
	if v := f["backendRequest"]; v != nil {
		t.BackendRequest, _ = p.duration(v, field+".backendRequest")
		if t.Request > 0 && t.BackendRequest > t.Request {
			p.errorf(v, field+".backendRequest", "%v is longer than request (%v); each attempt must fit in the whole request", t.BackendRequest, t.Request)
		}
	}
	return t
}

func (p *docParser) retry(n *yaml.Node, field string, nonIdempotent bool) *proxy.RetryPolicy {
	f := p.fields(n, field, fieldSet{supported: []string{"attempts", "codes", "backoff"}})
	if f == nil {
		return nil
	}
	rp := &proxy.RetryPolicy{Attempts: defaultRetryAttempts, Backoff: proxy.DefaultRetryBackoff, NonIdempotent: nonIdempotent}
	if v := f["attempts"]; v != nil {
		a, _ := p.integer(v, field+".attempts", 0, maxRetryAttempts)
		rp.Attempts = int(a)
	}
	if v := f["codes"]; v != nil && !isNull(v) {
		seen := map[int64]bool{}
		for i, c := range p.list(v, field+".codes", 100) {
			code, ok := p.integer(c, fmt.Sprintf("%s.codes[%d]", field, i), 400, 599)
			if ok && !seen[code] {
				seen[code] = true
				rp.Codes = append(rp.Codes, int(code))
			}
		}
	} else {
		rp.Codes = append([]int(nil), defaultRetryCodes...)
	}
	if v := f["backoff"]; v != nil {
		rp.Backoff, _ = p.duration(v, field+".backoff")
	}
	if rp.Attempts == 0 {
		return nil
	}
	return rp
}

// routeWatcher keeps a route table current: it loads the routes file at
// start, then again on Reload (SIGHUP) and whenever the file or directory
// changes. A load that fails is logged and counted and changes nothing:
// the previous table stays in force. Tables are handed to apply whole;
// connections and requests in flight keep the table they started with.
type routeWatcher struct {
	path, clusterDomain string
	apply               func(*proxy.RouteTable)
	log                 *slog.Logger

	watchDir string // the directory fsnotify watches
	watched  func(name string) bool
	fsw      *fsnotify.Watcher

	mu      sync.Mutex // serialises loads and applies
	current *proxy.RouteTable

	reloads      prometheus.Counter
	reloadErrors prometheus.Counter
	lastSuccess  prometheus.Gauge
}

// newRouteWatcher starts watching path (a routes file or directory, as
// for loadRoutes), loads it and hands the table to apply. A load error is
// returned: a proxy should not start on routes it cannot read. reg (nil:
// none) receives meshproxy_routes_reloads_total,
// meshproxy_routes_reload_errors_total and
// meshproxy_routes_last_reload_success_timestamp_seconds. apply (nil:
// none) is called with each new table, one at a time and in order, with
// the watcher's lock held; it should swap the table in and return. Run
// must be called to follow changes and to release the watch.
func newRouteWatcher(path, clusterDomain string, apply func(*proxy.RouteTable), reg prometheus.Registerer, log *slog.Logger) (*routeWatcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &routeWatcher{
		path: path, clusterDomain: clusterDomain, apply: apply, log: log,
		reloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshproxy_routes_reloads_total",
			Help: "Successful reloads of the routes file (after the initial load).",
		}),
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshproxy_routes_reload_errors_total",
			Help: "Reloads of the routes file refused because it was invalid; the previous routes stayed in force.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshproxy_routes_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful load of the routes file.",
		}),
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("routes: %w (check --routes: it names a file or directory of HTTPRoute YAML)", err)
	}
	if st.IsDir() {
		w.watchDir = path
		w.watched = func(name string) bool {
			b := filepath.Base(name)
			// Kubernetes ConfigMap volumes swap the "..data" symlink.
			return strings.HasPrefix(b, "..") || (!strings.HasPrefix(b, ".") && (strings.HasSuffix(b, ".yaml") || strings.HasSuffix(b, ".yml")))
		}
	} else {
		// Watch the directory, not the file: editors replace a file by
		// renaming over it, and ConfigMaps swap a symlink beside it.
		w.watchDir = filepath.Dir(path)
		base := filepath.Base(path)
		w.watched = func(name string) bool {
			b := filepath.Base(name)
			return b == base || strings.HasPrefix(b, "..")
		}
	}
	w.fsw, err = fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("routes: watching for changes: %w (raise fs.inotify.max_user_instances?)", err)
	}
	if err := w.fsw.Add(w.watchDir); err != nil {
		w.fsw.Close()
		return nil, fmt.Errorf("routes: watching %s for changes: %w", w.watchDir, err)
	}
	t, err := loadRoutes(path, clusterDomain)
	if err != nil {
		w.fsw.Close()
		return nil, err
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{w.reloads, w.reloadErrors, w.lastSuccess} {
			if err := reg.Register(c); err != nil {
				w.fsw.Close()
				return nil, fmt.Errorf("routes: registering metrics: %w", err)
			}
		}
	}
	w.current = t
	w.lastSuccess.SetToCurrentTime()
	w.log.Info("routes loaded", "path", path, "services", len(t.Services), "rules", countRouteRules(t))
	if apply != nil {
		apply(t)
	}
	return w, nil
}

// Table returns the route table in force.
func (w *routeWatcher) Table() *proxy.RouteTable {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// Reload loads the routes again (SIGHUP does this). On an error the
// previous routes stay in force; the error, already logged and counted,
// is returned. A table equal to the one in force is not applied again.
func (w *routeWatcher) Reload() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, err := loadRoutes(w.path, w.clusterDomain)
	if err != nil {
		w.reloadErrors.Inc()
		w.log.Error("routes: new routes refused, the previous routes stay in force", "path", w.path, "err", err)
		return err
	}
	changed := !reflect.DeepEqual(t, w.current)
	if changed {
		w.current = t
		if w.apply != nil {
			w.apply(t)
		}
	}
	// Counted and logged once in force: whoever sees the count (a test,
	// a rollout script) gets the new routes on its next request.
	w.reloads.Inc()
	w.lastSuccess.SetToCurrentTime()
	w.log.Info("routes reloaded", "path", w.path, "services", len(t.Services), "rules", countRouteRules(t), "changed", changed)
	return nil
}

// Run follows changes until ctx ends, then releases the watch. Bursts of
// events (one save is several) are gathered for routeReloadDebounce
// before a reload. When the watched directory itself is removed or moved
// away (the kernel drops the watch then), Run tries every
// routeRewatchInterval to watch it again, and reloads once it can.
func (w *routeWatcher) Run(ctx context.Context) {
	defer w.fsw.Close()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	rewatch := time.NewTicker(routeRewatchInterval)
	rewatch.Stop()
	defer rewatch.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if filepath.Clean(ev.Name) == filepath.Clean(w.watchDir) && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				w.log.Warn("routes: the watched directory is gone; the routes in force stay, and it is watched again once it is back", "dir", w.watchDir)
				rewatch.Reset(routeRewatchInterval)
				debounce.Reset(routeReloadDebounce) // counts the failed load
				continue
			}
			if w.watched(ev.Name) {
				w.log.Debug("routes: change seen", "file", ev.Name, "op", ev.Op.String())
				debounce.Reset(routeReloadDebounce)
			}
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			// Overflow loses events: reload to be sure.
			w.log.Warn("routes: watching for changes", "err", err)
			debounce.Reset(routeReloadDebounce)
		case <-rewatch.C:
			if err := w.fsw.Add(w.watchDir); err == nil {
				rewatch.Stop()
				w.log.Info("routes: watching the directory again", "dir", w.watchDir)
				debounce.Reset(routeReloadDebounce) // files may have come with it
			}
		case <-debounce.C:
			_ = w.Reload() // logged and counted by Reload
		}
	}
}

func countRouteRules(t *proxy.RouteTable) int {
	n := 0
	for _, s := range t.Services {
		n += len(s.Rules)
	}
	return n
}
