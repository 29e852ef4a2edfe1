package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"meshproxy/identity"
)

func init() {
	register("inject", command{
		summary: "add the meshproxy init container and proxy sidecar to Kubernetes manifests",
		run:     runInject,
	})
}

// Names and paths the injected pod spec uses. They are what the identity
// manifests in scripts/kubernetes and "meshproxy run" expect.
const (
	injectInitName    = "meshproxy-init"
	injectProxyName   = "meshproxy"
	anchorsVolume     = "meshproxy-trust-anchors"
	tokenVolume       = "meshproxy-token"
	anchorsConfigMap  = "meshproxy-trust-anchors"
	anchorsMountPath  = "/var/run/meshproxy/anchors"
	tokenMountPath    = "/var/run/meshproxy/token"
	tokenAudience     = "meshproxy"
	tokenExpirySecs   = 3600
	defaultIdentAddr  = "meshproxy-identity.meshproxy.svc.cluster.local:8080"
	proxyOutboundPort = 4140
	proxyInboundPort  = 4143
	proxyAdminPort    = 4191
)

// Pod annotations "meshproxy inject" reads (on the pod template, or on the
// workload itself when the template does not set them) and writes.
const (
	annInject        = "meshproxy.io/inject"
	annInjected      = "meshproxy.io/injected"
	annSkipInbound   = "meshproxy.io/skip-inbound-ports"
	annSkipOutbound  = "meshproxy.io/skip-outbound-ports"
	annOpaquePorts   = "meshproxy.io/opaque-ports"
	annCPULimit      = "meshproxy.io/proxy-cpu-limit"
	annMemoryLimit   = "meshproxy.io/proxy-memory-limit"
	annCPURequest    = "meshproxy.io/proxy-cpu-request"
	annMemoryRequest = "meshproxy.io/proxy-memory-request"
)

// injectConfig is what every injected pod gets; it comes from the flags.
type injectConfig struct {
	Mode         string // "redirect" or "tproxy"
	Image        string
	IdentityAddr string
	TrustDomain  string
	ProxyUID     int64
	Legacy       bool   // a plain container instead of a native sidecar
	Version      string // written to the meshproxy.io/injected annotation
}

const injectUsage = `usage: meshproxy inject [flags] [-f FILE ...]

Reads Kubernetes manifests (multi-document YAML; stdin when no -f is given
or FILE is "-") and writes them to stdout with the meshproxy-init container
and the meshproxy proxy added to every pod template of a Pod, Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job or CronJob (also inside a v1 List).
Other kinds pass through unchanged. Injecting twice changes nothing.

The proxy is a native sidecar (an init container with restartPolicy:
Always, Kubernetes 1.29 or later), so Jobs finish. With --legacy-sidecar it
is a plain container instead; then a Job only finishes if the application
POSTs to http://127.0.0.1:4191/shutdown when it is done.

Workloads are re-serialized in canonical form (sorted keys, comments dropped);
documents left alone (other kinds, opted out) are copied byte for byte.

Pod annotations:
  meshproxy.io/inject: disabled           leave this workload alone
  meshproxy.io/skip-inbound-ports: LIST   inbound ports that bypass the proxy (e.g. 25,8000-8100)
  meshproxy.io/skip-outbound-ports: LIST  outbound ports that bypass the proxy
  meshproxy.io/opaque-ports: LIST         ports proxied as opaque TCP (e.g. 3306,5432)
  meshproxy.io/proxy-cpu-limit, -cpu-request, -memory-limit, -memory-request
                                          proxy resources (default cpu 100m/1, memory 32Mi/256Mi)

flags:
`

// stringsFlag collects a repeatable flag.
type stringsFlag []string

func (s *stringsFlag) String() string { return strings.Join(*s, ",") }

func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// runInject is "meshproxy inject".
func runInject(args []string, stdout, stderr io.Writer) int {
	return injectMain(args, os.Stdin, stdout, stderr)
}

// injectMain is runInject with stdin as a parameter, for tests.
func injectMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	cfg := injectConfig{Version: version}
	var files stringsFlag
	fs.Var(&files, "f", "manifest file to read, repeatable; \"-\" is stdin (default stdin)")
	fs.StringVar(&cfg.Mode, "mode", "redirect", "interception mode: redirect or tproxy")
	fs.StringVar(&cfg.Image, "image", "meshproxy:"+version, "container image holding the meshproxy binary (on PATH)")
	fs.StringVar(&cfg.IdentityAddr, "identity-addr", defaultIdentAddr, "host:port of the identity service")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain of the proxies' SPIFFE IDs")
	fs.Int64Var(&cfg.ProxyUID, "proxy-uid", 2102, "UID and GID the proxy runs as; init exempts its traffic")
	fs.BoolVar(&cfg.Legacy, "legacy-sidecar", false, "run the proxy as a plain container (Kubernetes < 1.29); Jobs then need the app to POST /shutdown")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, injectUsage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	} else if err != nil {
		fmt.Fprintf(stderr, "meshproxy inject: %v (run \"meshproxy inject -h\" for the flags)\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshproxy inject: unexpected argument %q (name input files with -f)\n", fs.Arg(0))
		return 2
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintf(stderr, "meshproxy inject: %v\n", err)
		return 2
	}
	if len(files) == 0 {
		files = stringsFlag{"-"}
	}
	var out bytes.Buffer
	for _, name := range files {
		var data []byte
		var err error
		if name == "-" {
			data, err = io.ReadAll(stdin)
			name = "stdin"
		} else {
			data, err = os.ReadFile(name)
		}
		if err != nil {
			fmt.Fprintf(stderr, "meshproxy inject: %v\n", err)
			return 1
		}
		res, err := injectManifests(data, cfg, func(msg string) {
			fmt.Fprintf(stderr, "meshproxy inject: %s: %s\n", name, msg)
		})
		if err != nil {
			fmt.Fprintf(stderr, "meshproxy inject: %s: %v\n", name, err)
			return 1
		}
		if out.Len() > 0 && len(res) > 0 {
			out.WriteString("---\n")
		}
		out.Write(res)
	}
	if _, err := stdout.Write(out.Bytes()); err != nil {
		fmt.Fprintf(stderr, "meshproxy inject: writing output: %v\n", err)
		return 1
	}
	return 0
}

// validate checks the flag values.
func (c injectConfig) validate() error {
	if c.Mode != "redirect" && c.Mode != "tproxy" {
		return fmt.Errorf("--mode %q: want redirect or tproxy", c.Mode)
	}
	if c.Image == "" {
		return fmt.Errorf("--image must not be empty: name the image holding the meshproxy binary")
	}
	if c.IdentityAddr == "" || !strings.Contains(c.IdentityAddr, ":") {
		return fmt.Errorf("--identity-addr %q: want host:port of the identity service, e.g. %s", c.IdentityAddr, defaultIdentAddr)
	}
	if err := identity.ValidateTrustDomain(c.TrustDomain); err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	if c.ProxyUID <= 0 || c.ProxyUID > 1<<31-1 {
		return fmt.Errorf("--proxy-uid %d: want a non-root UID (1 to 2147483647) so init can exempt the proxy's own traffic", c.ProxyUID)
	}
	return nil
}

// injectManifests injects every workload in data, a multi-document YAML
// stream, and returns the new stream. Documents that are not workloads,
// opted out or cannot be injected are copied unchanged; warn is told why
// for the latter two. Errors name the document (1-based) and its kind.
func injectManifests(data []byte, cfg injectConfig, warn func(string)) ([]byte, error) {
	var out bytes.Buffer
	n := 0 // documents are numbered without the empty ones
	for _, doc := range splitYAMLDocuments(data) {
		if !onlyComments(doc) {
			n++
		}
		num := n
		res, err := injectDocument(doc, cfg, func(msg string) {
			warn(fmt.Sprintf("document %d: %s", num, msg))
		})
		if err != nil {
			return nil, fmt.Errorf("document %d%w", num, err)
		}
		if len(bytes.TrimSpace(res)) == 0 {
			continue
		}
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		out.Write(res)
		if !bytes.HasSuffix(res, []byte("\n")) {
			out.WriteByte('\n')
		}
	}
	return out.Bytes(), nil
}

// onlyComments reports whether doc has nothing but blank and comment lines.
func onlyComments(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) > 0 && t[0] != '#' {
			return false
		}
	}
	return true
}

// splitYAMLDocuments cuts a YAML stream at its "---" separator lines. A
// separator may carry a comment ("--- # next"); content after it on the same
// line is not supported (kubectl does not write it). The "..." end marker
// is dropped.
func splitYAMLDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		t := bytes.TrimRight(line, " \t\r\n")
		if bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- #")) || bytes.Equal(t, []byte("...")) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.Write(line)
	}
	docs = append(docs, bytes.Clone(cur.Bytes()))
	return docs
}

// docError is an error about one document; it prints as " (Kind name): msg"
// after the document number.
func docError(kind, name string, format string, args ...any) error {
	return fmt.Errorf(" (%s): %w", kindName(kind, name), fmt.Errorf(format, args...))
}

func kindName(kind, name string) string {
	if kind == "" {
		kind = "no kind"
	}
	if name == "" {
		return kind
	}
	return fmt.Sprintf("%s %q", kind, name)
}

// workloadVersions maps each injectable kind to the one apiVersion
// supported for it.
var workloadVersions = map[string]string{
	"Pod":         "v1",
	"Deployment":  "apps/v1",
	"StatefulSet": "apps/v1",
	"DaemonSet":   "apps/v1",
	"ReplicaSet":  "apps/v1",
	"Job":         "batch/v1",
	"CronJob":     "batch/v1",
}

// injectDocument injects one YAML (or JSON) document and returns it. A
// document that is left alone is returned as given, byte for byte.
func injectDocument(doc []byte, cfg injectConfig, warn func(string)) ([]byte, error) {
	jsonDoc, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf(": invalid YAML: %s", oneLine(err.Error()))
	}
	if t := bytes.TrimSpace(jsonDoc); bytes.Equal(t, []byte("null")) {
		return doc, nil // empty or only comments
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(jsonDoc, &head); err != nil {
		return nil, fmt.Errorf(": not a Kubernetes object: want a mapping with apiVersion and kind")
	}
	kind, name := head.Kind, head.Metadata.Name
	if head.Kind == "" || head.APIVersion == "" {
		return nil, docError(kind, name, "apiVersion and kind are required")
	}
	if kind == "List" && head.APIVersion == "v1" {
		return injectList(jsonDoc, doc, cfg, warn)
	}
	want, workload := workloadVersions[kind]
	if !workload || !isCoreGroup(head.APIVersion) {
		return doc, nil
	}
	if head.APIVersion != want {
		return nil, docError(kind, name, "apiVersion %s is not supported: use %s", head.APIVersion, want)
	}
	obj, pod, err := decodeWorkload(kind, doc)
	if err != nil {
		return nil, docError(kind, name, "%v", err)
	}
	changed, err := injectPod(pod, cfg, func(msg string) { warn(kindName(kind, name) + ": " + msg) })
	if err != nil {
		return nil, docError(kind, name, "%v", err)
	}
	if !changed {
		return doc, nil
	}
	if cfg.Legacy && (kind == "Job" || kind == "CronJob") {
		warn(kindName(kind, name) + ": with --legacy-sidecar the proxy keeps running after the job's work is done; the Job only completes if the application POSTs to http://127.0.0.1:4191/shutdown on exit")
	}
	out, err := marshalObject(obj)
	if err != nil {
		return nil, docError(kind, name, "%v", err)
	}
	return out, nil
}

// isCoreGroup reports whether apiVersion is in a group whose workload kinds
// this command knows (core, apps, batch); a CRD that happens to be called
// "Deployment" in another group is passed through.
func isCoreGroup(apiVersion string) bool {
	group, _, found := strings.Cut(apiVersion, "/")
	return !found || group == "apps" || group == "batch" || group == "extensions"
}

// podRef points into a decoded workload: its own metadata and its pod
// template's metadata and spec.
type podRef struct {
	Owner *K8sMetaObjectMeta
	Meta  *K8sMetaObjectMeta
	Spec  *k8sCorePodSpec
}

// decodeWorkload decodes doc strictly into the typed Kubernetes object of
// kind (unknown or duplicate fields are errors) and points into its pod.
// The mirrors of the k8s.io/api types (inject_types.go) are our stand-in
// for a cluster's API server: there is no cluster to submit manifests to,
// so strict decoding is how the command checks that a manifest is what
// Kubernetes accepts (its tests do the same with k8s.io/api itself).
func decodeWorkload(kind string, doc []byte) (any, podRef, error) {
	var obj any
	var p podRef
	switch kind {
	case "Pod":
		o := &k8sCorePod{}
		obj, p = o, podRef{&o.K8sMetaObjectMeta, &o.K8sMetaObjectMeta, &o.Spec}
	case "Deployment":
		o := &k8sAppsDeployment{}
		obj, p = o, podRef{&o.K8sMetaObjectMeta, &o.Spec.Template.K8sMetaObjectMeta, &o.Spec.Template.Spec}
	case "StatefulSet":
		o := &k8sAppsStatefulSet{}
		obj, p = o, podRef{&o.K8sMetaObjectMeta, &o.Spec.Template.K8sMetaObjectMeta, &o.Spec.Template.Spec}
	case "DaemonSet":
		o := &k8sAppsDaemonSet{}
		obj, p = o, podRef{&o.K8sMetaObjectMeta, &o.Spec.Template.K8sMetaObjectMeta, &o.Spec.Template.Spec}
	case "ReplicaSet":
		o := &k8sAppsReplicaSet{}
		obj, p = o, podRef{&o.K8sMetaObjectMeta, &o.Spec.Template.K8sMetaObjectMeta, &o.Spec.Template.Spec}
	case "Job":
		o := &k8sBatchJob{}
		obj, p = o, podRef{&o.K8sMetaObjectMeta, &o.Spec.Template.K8sMetaObjectMeta, &o.Spec.Template.Spec}
	case "CronJob":
		o := &k8sBatchCronJob{}
		t := &o.Spec.JobTemplate.Spec.Template
		obj, p = o, podRef{&o.K8sMetaObjectMeta, &t.K8sMetaObjectMeta, &t.Spec}
	default:
		return nil, p, fmt.Errorf("kind %s cannot be injected", kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, p, fmt.Errorf("not a valid %s: %s", kind, oneLine(k8sErrorText(err.Error())))
	}
	return obj, p, nil
}

// marshalObject writes obj as YAML, dropping the empty "status" and the
// null creationTimestamp fields the typed objects add on the way through.
func marshalObject(obj any) ([]byte, error) {
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encoding: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, fmt.Errorf("encoding: %w", err)
	}
	dropNoise(m, true)
	out, err := yaml.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding: %w", err)
	}
	return out, nil
}

// dropNoise removes, in place, the fields a typed round trip adds that the
// author never wrote: "creationTimestamp: null" in any metadata, metadata
// left empty by that, and an empty top-level "status". Nothing else is touched (an empty map such as
// "emptyDir: {}" means something).
func dropNoise(m map[string]any, top bool) {
	if top {
		if s, ok := m["status"].(map[string]any); ok && len(s) == 0 {
			delete(m, "status")
		}
	}
	for k, v := range m {
		switch v := v.(type) {
		case map[string]any:
			dropNoise(v, false)
			if k == "metadata" {
				if ts, ok := v["creationTimestamp"]; ok && ts == nil {
					delete(v, "creationTimestamp")
				}
				if len(v) == 0 {
					delete(m, k)
				}
			}
		case []any:
			for _, item := range v {
				if im, ok := item.(map[string]any); ok {
					dropNoise(im, false)
				}
			}
		}
	}
}

// injectList injects every item of a v1 List.
func injectList(jsonDoc, doc []byte, cfg injectConfig, warn func(string)) ([]byte, error) {
	var list struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   map[string]any    `json:"metadata,omitempty"`
		Items      []json.RawMessage `json:"items"`
	}
	dec := json.NewDecoder(bytes.NewReader(jsonDoc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&list); err != nil {
		return nil, docError("List", "", "not a valid List: %v", err)
	}
	changed := false
	items := make([]any, len(list.Items))
	for i, raw := range list.Items {
		res, err := injectDocument(raw, cfg, func(msg string) { warn(fmt.Sprintf("List item %d: %s", i+1, msg)) })
		if err != nil {
			return nil, fmt.Errorf(" (List) item %d%w", i+1, err)
		}
		if !bytes.Equal(res, raw) {
			changed = true
		}
		var v any
		if err := yaml.Unmarshal(res, &v); err != nil {
			return nil, docError("List", "", "item %d: %v", i+1, err)
		}
		items[i] = v
	}
	if !changed {
		return doc, nil
	}
	out := map[string]any{"apiVersion": list.APIVersion, "kind": list.Kind, "items": items}
	if list.Metadata != nil {
		out["metadata"] = list.Metadata
	}
	res, err := yaml.Marshal(out)
	if err != nil {
		return nil, docError("List", "", "encoding: %v", err)
	}
	return res, nil
}

// podSettings are the per-pod choices read from annotations.
type podSettings struct {
	skipInbound  []string
	skipOutbound []string
	opaquePorts  []string
	resources    k8sCoreResourceRequirements
}

// podAnnotation returns the value of key on the pod template, or else on the
// workload itself.
func podAnnotation(p podRef, key string) (string, bool) {
	if v, ok := p.Meta.Annotations[key]; ok {
		return v, true
	}
	v, ok := p.Owner.Annotations[key]
	return v, ok
}

// injectPod adds (or refreshes) the init container, the proxy and their
// volumes in p. It reports false, changing nothing, when the pod opted out
// or cannot be injected; warn says why for the latter.
func injectPod(p podRef, cfg injectConfig, warn func(string)) (bool, error) {
	if v, ok := podAnnotation(p, annInject); ok {
		switch v {
		case "disabled":
			return false, nil
		case "enabled", "":
		default:
			return false, fmt.Errorf("annotation %s: %q: want enabled or disabled", annInject, v)
		}
	}
	if p.Spec.HostNetwork {
		warn("not injected: the pod uses hostNetwork, and init would rewrite the node's own firewall; set " + annInject + ": disabled to silence this")
		return false, nil
	}
	s, err := readPodSettings(p)
	if err != nil {
		return false, err
	}

	// Remove what an earlier injection added, so injecting again (perhaps
	// with other flags) converges on the same result. Only an injected pod
	// has such parts: in any other, those names are the application's own
	// containers and volumes, which removing would lose.
	vols := p.Spec.Volumes
	if _, injected := p.Meta.Annotations[annInjected]; injected {
		p.Spec.InitContainers = withoutContainers(p.Spec.InitContainers)
		p.Spec.Containers = withoutContainers(p.Spec.Containers)
		vols = nil
		for _, v := range p.Spec.Volumes {
			if v.Name != anchorsVolume && v.Name != tokenVolume {
				vols = append(vols, v)
			}
		}
	} else if err := checkNameClashes(p.Spec); err != nil {
		return false, err
	}
	if err := checkPortClashes(p.Spec); err != nil {
		return false, err
	}

	initC := initContainer(cfg, s)
	proxy := proxyContainer(cfg, s)
	if cfg.Legacy {
		p.Spec.InitContainers = append([]k8sCoreContainer{initC}, p.Spec.InitContainers...)
		p.Spec.Containers = append([]k8sCoreContainer{proxy}, p.Spec.Containers...)
	} else {
		always := k8sRestartPolicyAlways
		proxy.RestartPolicy = &always
		p.Spec.InitContainers = append([]k8sCoreContainer{initC, proxy}, p.Spec.InitContainers...)
	}
	p.Spec.Volumes = append(vols, proxyVolumes()...)
	if p.Meta.Annotations == nil {
		p.Meta.Annotations = map[string]string{}
	}
	p.Meta.Annotations[annInjected] = cfg.Version
	return true, nil
}

// withoutContainers returns cs without the containers injection adds.
func withoutContainers(cs []k8sCoreContainer) []k8sCoreContainer {
	var out []k8sCoreContainer
	for _, c := range cs {
		if c.Name != injectInitName && c.Name != injectProxyName {
			out = append(out, c)
		}
	}
	return out
}

// checkNameClashes fails when a pod that was never injected has a
// container or volume of its own under a name injection adds: injecting
// would replace it.
func checkNameClashes(spec *k8sCorePodSpec) error {
	for _, cs := range [][]k8sCoreContainer{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			if c.Name == injectInitName || c.Name == injectProxyName {
				return fmt.Errorf("container %q has the name of a container injection adds (%s, %s): rename it, or opt out with %s: disabled", c.Name, injectInitName, injectProxyName, annInject)
			}
		}
	}
	for _, v := range spec.Volumes {
		if v.Name == anchorsVolume || v.Name == tokenVolume {
			return fmt.Errorf("volume %q has the name of a volume injection adds (%s, %s): rename it, or opt out with %s: disabled", v.Name, anchorsVolume, tokenVolume, annInject)
		}
	}
	return nil
}

// checkPortClashes fails when an application container declares a port
// number or port name the proxy needs.
func checkPortClashes(spec *k8sCorePodSpec) error {
	ours := map[int32]bool{proxyOutboundPort: true, proxyInboundPort: true, proxyAdminPort: true}
	names := map[string]bool{}
	for _, pt := range proxyPorts() {
		names[pt.Name] = true
	}
	for _, cs := range [][]k8sCoreContainer{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			for _, pt := range c.Ports {
				if ours[pt.ContainerPort] {
					return fmt.Errorf("container %q uses port %d, which the proxy needs (4140, 4143, 4191): move the application to another port or opt out with %s: disabled", c.Name, pt.ContainerPort, annInject)
				}
				if names[pt.Name] {
					return fmt.Errorf("container %q uses port name %q, which the proxy needs: rename it", c.Name, pt.Name)
				}
			}
		}
	}
	return nil
}

// readPodSettings parses the annotations of p.
func readPodSettings(p podRef) (podSettings, error) {
	var s podSettings
	var err error
	if v, ok := podAnnotation(p, annSkipInbound); ok {
		if s.skipInbound, err = parsePortList(v, true); err != nil {
			return s, fmt.Errorf("annotation %s: %w", annSkipInbound, err)
		}
	}
	if v, ok := podAnnotation(p, annSkipOutbound); ok {
		if s.skipOutbound, err = parsePortList(v, true); err != nil {
			return s, fmt.Errorf("annotation %s: %w", annSkipOutbound, err)
		}
	}
	if v, ok := podAnnotation(p, annOpaquePorts); ok {
		if s.opaquePorts, err = parsePortList(v, false); err != nil {
			return s, fmt.Errorf("annotation %s: %w", annOpaquePorts, err)
		}
	}
	s.resources, err = proxyResources(p)
	return s, err
}

// parsePortList parses "25, 3306,8000-8100" into its items, checking each
// is a port in 1-65535 (or, when ranges is true, a range LO-HI of them).
func parsePortList(v string, ranges bool) ([]string, error) {
	var out []string
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		if isRange && !ranges {
			return nil, fmt.Errorf("%q: ranges are not allowed here; list single ports", f)
		}
		a, err := parsePort(lo)
		if err != nil {
			return nil, err
		}
		if isRange {
			b, err := parsePort(hi)
			if err != nil {
				return nil, err
			}
			if a > b {
				return nil, fmt.Errorf("range %q: low end above high end", f)
			}
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%q: no ports; want a list such as 25,3306 or remove the annotation", v)
	}
	return out, nil
}

func parsePort(s string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not a number in 1-65535", s)
	}
	return n, nil
}

// proxyResources returns the proxy's requests and limits: the defaults,
// overridden by annotations. A limit set below the default request lowers
// the request to match; an explicit request above its limit is an error.
func proxyResources(p podRef) (k8sCoreResourceRequirements, error) {
	type pair struct {
		res                    k8sCoreResourceName
		reqAnn, limAnn         string
		defaultReq, defaultLim string
	}
	r := k8sCoreResourceRequirements{Requests: k8sCoreResourceList{}, Limits: k8sCoreResourceList{}}
	for _, pr := range []pair{
		{res: k8sResourceCPU, reqAnn: annCPURequest, limAnn: annCPULimit, defaultReq: "100m", defaultLim: "1"},
		{res: k8sResourceMemory, reqAnn: annMemoryRequest, limAnn: annMemoryLimit, defaultReq: "32Mi", defaultLim: "256Mi"},
	} {
		req := mustParseK8sQuantity(pr.defaultReq)
		lim := mustParseK8sQuantity(pr.defaultLim)
		explicitReq := false
		if v, ok := podAnnotation(p, pr.reqAnn); ok {
			q, err := parseK8sQuantity(v)
			if err != nil {
				return r, fmt.Errorf("annotation %s: %q is not a quantity (e.g. 100m, 64Mi)", pr.reqAnn, v)
			}
			req, explicitReq = q, true
		}
		if v, ok := podAnnotation(p, pr.limAnn); ok {
			q, err := parseK8sQuantity(v)
			if err != nil {
				return r, fmt.Errorf("annotation %s: %q is not a quantity (e.g. 500m, 128Mi)", pr.limAnn, v)
			}
			lim = q
		}
		if req.Cmp(lim) > 0 {
			if explicitReq {
				return r, fmt.Errorf("annotation %s: request %s is above the limit %s: lower it or raise %s", pr.reqAnn, req.String(), lim.String(), pr.limAnn)
			}
			req = lim
		}
		r.Requests[pr.res] = req
		r.Limits[pr.res] = lim
	}
	return r, nil
}

// initContainer builds meshproxy-init: "meshproxy init" with the flags of
// cfg and the pod's skip-port annotations, as root with only NET_ADMIN and
// NET_RAW.
func initContainer(cfg injectConfig, s podSettings) k8sCoreContainer {
	inIgnore := dedupePorts(append([]string{"4190", "4191"}, s.skipInbound...))
	args := []string{
		"init",
		"--mode", cfg.Mode,
		"--proxy-uid", strconv.FormatInt(cfg.ProxyUID, 10),
		"--inbound-ports-to-ignore", strings.Join(inIgnore, ","),
	}
	// Other proxies' admin ports are reached directly, not through the
	// mesh, as with init's default.
	outIgnore := dedupePorts(append([]string{"4190", "4191"}, s.skipOutbound...))
	args = append(args, "--outbound-ports-to-ignore", strings.Join(outIgnore, ","))
	return k8sCoreContainer{
		Name:    injectInitName,
		Image:   cfg.Image,
		Command: []string{"meshproxy"},
		Args:    args,
		Resources: k8sCoreResourceRequirements{
			Requests: k8sCoreResourceList{k8sResourceCPU: mustParseK8sQuantity("10m"), k8sResourceMemory: mustParseK8sQuantity("16Mi")},
			Limits:   k8sCoreResourceList{k8sResourceCPU: mustParseK8sQuantity("100m"), k8sResourceMemory: mustParseK8sQuantity("64Mi")},
		},
		TerminationMessagePolicy: k8sTerminationFallbackToLogs,
		SecurityContext: &k8sCoreSecurityContext{
			RunAsUser:                kptr(int64(0)),
			RunAsNonRoot:             kptr(false),
			AllowPrivilegeEscalation: kptr(false),
			ReadOnlyRootFilesystem:   kptr(true),
			Capabilities: &k8sCoreCapabilities{
				Add:  []k8sCoreCapability{k8sCapabilityNetAdmin, k8sCapabilityNetRaw},
				Drop: []k8sCoreCapability{k8sCapabilityAll},
			},
		},
	}
}

// proxyPorts are the proxy's named container ports.
func proxyPorts() []k8sCoreContainerPort {
	return []k8sCoreContainerPort{
		{Name: "meshproxy-out", ContainerPort: proxyOutboundPort, Protocol: k8sProtocolTCP},
		{Name: "meshproxy-in", ContainerPort: proxyInboundPort, Protocol: k8sProtocolTCP},
		{Name: "meshproxy-admin", ContainerPort: proxyAdminPort, Protocol: k8sProtocolTCP},
	}
}

// proxyContainer builds the meshproxy container ("meshproxy run"). The
// caller makes it a native sidecar by setting its restart policy.
func proxyContainer(cfg injectConfig, s podSettings) k8sCoreContainer {
	env := []k8sCoreEnvVar{
		{Name: "POD_NAMESPACE", ValueFrom: &k8sCoreEnvVarSource{FieldRef: &k8sCoreObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: "SERVICE_ACCOUNT", ValueFrom: &k8sCoreEnvVarSource{FieldRef: &k8sCoreObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
		{Name: "MESHPROXY_MODE", Value: cfg.Mode},
		// $(VAR) expands variables defined earlier in this list.
		{Name: "MESHPROXY_IDENTITY", Value: "spiffe://" + cfg.TrustDomain + "/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)"},
		{Name: "MESHPROXY_IDENTITY_ADDR", Value: cfg.IdentityAddr},
		{Name: "MESHPROXY_TRUST_ANCHORS", Value: anchorsMountPath + "/" + identity.AnchorFile},
		// The projected ServiceAccount token is the proof of identity a
		// Kubernetes token authenticator in the identity service checks.
		{Name: "MESHPROXY_IDENTITY_TOKEN_FILE", Value: tokenMountPath + "/token"},
	}
	if len(s.opaquePorts) > 0 {
		env = append(env, k8sCoreEnvVar{Name: "MESHPROXY_OPAQUE_PORTS", Value: strings.Join(dedupePorts(s.opaquePorts), ",")})
	}
	httpGet := func(path string) K8sCoreProbeHandler {
		return K8sCoreProbeHandler{HTTPGet: &k8sCoreHTTPGetAction{Path: path, Port: k8sIntOrStringFrom(proxyAdminPort)}}
	}
	sc := &k8sCoreSecurityContext{
		RunAsUser:                kptr(cfg.ProxyUID),
		RunAsGroup:               kptr(cfg.ProxyUID),
		RunAsNonRoot:             kptr(true),
		AllowPrivilegeEscalation: kptr(false),
		ReadOnlyRootFilesystem:   kptr(true),
		Capabilities:             &k8sCoreCapabilities{Drop: []k8sCoreCapability{k8sCapabilityAll}},
	}
	if cfg.Mode == "tproxy" {
		// IP_TRANSPARENT needs CAP_NET_ADMIN. A non-root process only gets
		// a capability through its binary's file capabilities (the image
		// must "setcap cap_net_admin+ep" the meshproxy binary), and
		// no_new_privs, which allowPrivilegeEscalation: false sets, makes
		// execve ignore file capabilities. So tproxy mode has to allow it.
		sc.Capabilities.Add = []k8sCoreCapability{k8sCapabilityNetAdmin}
		sc.AllowPrivilegeEscalation = kptr(true)
	}
	return k8sCoreContainer{
		Name:    injectProxyName,
		Image:   cfg.Image,
		Command: []string{"meshproxy"},
		Args:    []string{"run"},
		Env:     env,
		Ports:   proxyPorts(),
		ReadinessProbe: &k8sCoreProbe{
			K8sCoreProbeHandler: httpGet("/ready"),
			PeriodSeconds:       5, FailureThreshold: 3, TimeoutSeconds: 1, SuccessThreshold: 1,
		},
		LivenessProbe: &k8sCoreProbe{
			K8sCoreProbeHandler: httpGet("/live"),
			PeriodSeconds:       10, FailureThreshold: 3, TimeoutSeconds: 1, SuccessThreshold: 1,
		},
		// As a native sidecar, the application containers start only once
		// this probe passes: their first connections find a ready proxy.
		StartupProbe: &k8sCoreProbe{
			K8sCoreProbeHandler: httpGet("/ready"),
			PeriodSeconds:       1, FailureThreshold: 120, TimeoutSeconds: 1, SuccessThreshold: 1,
		},
		Resources: s.resources,
		VolumeMounts: []k8sCoreVolumeMount{
			{Name: anchorsVolume, MountPath: anchorsMountPath, ReadOnly: true},
			{Name: tokenVolume, MountPath: tokenMountPath, ReadOnly: true},
		},
		TerminationMessagePolicy: k8sTerminationFallbackToLogs,
		SecurityContext:          sc,
	}
}

// proxyVolumes are the trust anchors (a ConfigMap in the pod's own
// namespace) and the projected ServiceAccount token.
func proxyVolumes() []k8sCoreVolume {
	return []k8sCoreVolume{
		{Name: anchorsVolume, K8sCoreVolumeSource: K8sCoreVolumeSource{ConfigMap: &k8sCoreConfigMapVolumeSource{
			K8sCoreLocalObjectReference: K8sCoreLocalObjectReference{Name: anchorsConfigMap},
		}}},
		{Name: tokenVolume, K8sCoreVolumeSource: K8sCoreVolumeSource{Projected: &k8sCoreProjectedVolumeSource{
			Sources: []k8sCoreVolumeProjection{{ServiceAccountToken: &k8sCoreServiceAccountTokenProjection{
				Audience: tokenAudience, ExpirationSeconds: kptr(int64(tokenExpirySecs)), Path: "token",
			}}},
		}}},
	}
}

func dedupePorts(items []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, it := range items {
		if !seen[it] {
			seen[it] = true
			out = append(out, it)
		}
	}
	return out
}

// oneLine joins a multi-line message (as YAML errors are) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func kptr[T any](v T) *T { return &v }
