package main

// There is no Kubernetes cluster to apply manifests to in these tests, and
// none can be started. What stands in for the API server is the typed
// Kubernetes API (k8s.io/api): every document "meshproxy inject" writes, and
// every manifest in scripts/kubernetes, is decoded strictly into its typed
// object, where an unknown or duplicate field is an error. This is the one
// fake the tests allow themselves.

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// updateGolden rewrites testdata/inject/*.golden.yaml from the current
// output: go test ./cmd/meshproxy -run TestInjectGolden -update
var updateGolden = lookupOrDefineBool("update", "rewrite golden files")

// lookupOrDefineBool defines a bool test flag unless another test file of
// the package already did.
func lookupOrDefineBool(name, usage string) func() bool {
	if f := flag.Lookup(name); f != nil {
		return func() bool { return f.Value.String() == "true" }
	}
	p := flag.Bool(name, false, usage)
	return func() bool { return *p }
}

// injectT runs "meshproxy inject" with args on stdin and returns stdout,
// stderr and the exit code.
func injectT(t *testing.T, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := injectMain(args, bytes.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

// goldenArgs returns the flags named by a "# args: ..." line among the
// leading comments of an input file.
func goldenArgs(in []byte) []string {
	for _, line := range strings.Split(string(in), "\n") {
		if !strings.HasPrefix(line, "#") {
			break
		}
		if rest, ok := strings.CutPrefix(line, "# args:"); ok {
			return strings.Fields(rest)
		}
	}
	return nil
}

// strictDecode decodes one document into the typed object of its kind,
// failing the test on unknown fields or unknown kinds.
func strictDecode(t *testing.T, doc []byte) any {
	t.Helper()
	var head metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &head); err != nil {
		t.Fatalf("document is not YAML: %v\n%s", err, doc)
	}
	var obj any
	switch head.Kind {
	case "Pod":
		obj = &corev1.Pod{}
	case "Service":
		obj = &corev1.Service{}
	case "ConfigMap":
		obj = &corev1.ConfigMap{}
	case "Namespace":
		obj = &corev1.Namespace{}
	case "ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "List":
		obj = &corev1.List{}
	case "Deployment":
		obj = &appsv1.Deployment{}
	case "StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "DaemonSet":
		obj = &appsv1.DaemonSet{}
	case "ReplicaSet":
		obj = &appsv1.ReplicaSet{}
	case "Job":
		obj = &batchv1.Job{}
	case "CronJob":
		obj = &batchv1.CronJob{}
	default:
		t.Fatalf("strictDecode: kind %q not known to the test", head.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		t.Fatalf("%s does not decode strictly: %v\n%s", head.Kind, err, doc)
	}
	return obj
}

// podOf returns the pod template metadata and spec of a typed workload, or
// false for other kinds.
func podOf(obj any) (*metav1.ObjectMeta, *corev1.PodSpec, bool) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &o.ObjectMeta, &o.Spec, true
	case *appsv1.Deployment:
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, true
	case *appsv1.StatefulSet:
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, true
	case *appsv1.DaemonSet:
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, true
	case *appsv1.ReplicaSet:
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, true
	case *batchv1.Job:
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, true
	case *batchv1.CronJob:
		t := &o.Spec.JobTemplate.Spec.Template
		return &t.ObjectMeta, &t.Spec, true
	}
	return nil, nil, false
}

func findContainer(cs []corev1.Container, name string) (int, *corev1.Container) {
	for i := range cs {
		if cs[i].Name == name {
			return i, &cs[i]
		}
	}
	return -1, nil
}

// checkInjected asserts the invariants of an injected pod spec.
func checkInjected(t *testing.T, meta *metav1.ObjectMeta, spec *corev1.PodSpec, legacy bool, mode string) {
	t.Helper()
	if got := meta.Annotations[annInjected]; got != version {
		t.Errorf("annotation %s = %q; want %q", annInjected, got, version)
	}
	if len(spec.InitContainers) == 0 || spec.InitContainers[0].Name != injectInitName {
		t.Fatalf("first init container is not %s: %v", injectInitName, containerNames(spec.InitContainers))
	}
	ic := spec.InitContainers[0]
	if ic.Command[0] != "meshproxy" || ic.Args[0] != "init" || !slices.Contains(ic.Args, "--proxy-uid") || !slices.Contains(ic.Args, mode) {
		t.Errorf("init runs %v %v; want meshproxy init --mode %s --proxy-uid ...", ic.Command, ic.Args, mode)
	}
	isc := ic.SecurityContext
	if isc == nil || *isc.RunAsUser != 0 || *isc.RunAsNonRoot || *isc.AllowPrivilegeEscalation || !*isc.ReadOnlyRootFilesystem ||
		!slices.Equal(isc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		!slices.Equal(isc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("init securityContext = %+v; want root, NET_ADMIN+NET_RAW only, no escalation, read-only root", isc)
	}

	var proxy *corev1.Container
	if legacy {
		if i, c := findContainer(spec.InitContainers, injectProxyName); i >= 0 {
			t.Errorf("legacy: proxy is an init container: %+v", c)
		}
		if len(spec.Containers) == 0 || spec.Containers[0].Name != injectProxyName {
			t.Fatalf("legacy: first container is not the proxy: %v", containerNames(spec.Containers))
		}
		proxy = &spec.Containers[0]
		if proxy.RestartPolicy != nil {
			t.Errorf("legacy proxy has restartPolicy %v; want none", *proxy.RestartPolicy)
		}
	} else {
		if len(spec.InitContainers) < 2 || spec.InitContainers[1].Name != injectProxyName {
			t.Fatalf("native: second init container is not the proxy: %v", containerNames(spec.InitContainers))
		}
		if i, _ := findContainer(spec.Containers, injectProxyName); i >= 0 {
			t.Errorf("native: proxy also among containers: %v", containerNames(spec.Containers))
		}
		proxy = &spec.InitContainers[1]
		if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("native proxy restartPolicy = %v; want Always", proxy.RestartPolicy)
		}
	}
	if !slices.Equal(proxy.Args, []string{"run"}) {
		t.Errorf("proxy args = %v; want [run]", proxy.Args)
	}
	ports := map[string]int32{}
	for _, p := range proxy.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["meshproxy-out"] != 4140 || ports["meshproxy-in"] != 4143 || ports["meshproxy-admin"] != 4191 {
		t.Errorf("proxy ports = %v; want meshproxy-out 4140, meshproxy-in 4143, meshproxy-admin 4191", ports)
	}
	for _, pr := range []struct {
		name string
		p    *corev1.Probe
		path string
	}{{"readiness", proxy.ReadinessProbe, "/ready"}, {"liveness", proxy.LivenessProbe, "/live"}} {
		if pr.p == nil || pr.p.HTTPGet == nil || pr.p.HTTPGet.Path != pr.path || pr.p.HTTPGet.Port.IntValue() != 4191 {
			t.Errorf("%s probe = %+v; want GET %s on 4191", pr.name, pr.p, pr.path)
		}
	}
	sc := proxy.SecurityContext
	if sc == nil || *sc.RunAsNonRoot != true || *sc.RunAsUser == 0 || *sc.RunAsGroup != *sc.RunAsUser || !*sc.ReadOnlyRootFilesystem ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("proxy securityContext = %+v; want non-root, own group, read-only root, drop ALL", sc)
	}
	wantAdd := []corev1.Capability(nil)
	if mode == "tproxy" {
		wantAdd = []corev1.Capability{"NET_ADMIN"}
	}
	if !slices.Equal(sc.Capabilities.Add, wantAdd) {
		t.Errorf("proxy capabilities add = %v; want %v", sc.Capabilities.Add, wantAdd)
	}
	if *sc.AllowPrivilegeEscalation != (mode == "tproxy") {
		t.Errorf("proxy allowPrivilegeEscalation = %v in %s mode", *sc.AllowPrivilegeEscalation, mode)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range proxy.Env {
		env[e.Name] = e
	}
	if e := env["POD_NAMESPACE"]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("POD_NAMESPACE = %+v; want the downward API metadata.namespace", e)
	}
	if e := env["SERVICE_ACCOUNT"]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "spec.serviceAccountName" {
		t.Errorf("SERVICE_ACCOUNT = %+v; want the downward API spec.serviceAccountName", e)
	}
	if v := env["MESHPROXY_IDENTITY"].Value; !strings.HasPrefix(v, "spiffe://") || !strings.HasSuffix(v, "/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)") {
		t.Errorf("MESHPROXY_IDENTITY = %q", v)
	}
	if v := env["MESHPROXY_MODE"].Value; v != mode {
		t.Errorf("MESHPROXY_MODE = %q; want %q", v, mode)
	}
	if v := env["MESHPROXY_TRUST_ANCHORS"].Value; v != "/var/run/meshproxy/anchors/anchor.pem" {
		t.Errorf("MESHPROXY_TRUST_ANCHORS = %q", v)
	}
	if v := env["MESHPROXY_IDENTITY_TOKEN_FILE"].Value; v != "/var/run/meshproxy/token/token" {
		t.Errorf("MESHPROXY_IDENTITY_TOKEN_FILE = %q", v)
	}
	if env["MESHPROXY_IDENTITY_ADDR"].Value == "" {
		t.Error("MESHPROXY_IDENTITY_ADDR is empty")
	}
	// Every volume the proxy mounts exists, and the token is projected
	// for the meshproxy audience.
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		if _, dup := vols[v.Name]; dup {
			t.Errorf("volume %q appears twice", v.Name)
		}
		vols[v.Name] = v
	}
	for _, m := range proxy.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("proxy mounts %q, which is not a volume of the pod", m.Name)
		}
	}
	if v := vols[anchorsVolume]; v.ConfigMap == nil || v.ConfigMap.Name != "meshproxy-trust-anchors" {
		t.Errorf("trust anchors volume = %+v; want ConfigMap meshproxy-trust-anchors", v)
	}
	tok := vols[tokenVolume]
	if tok.Projected == nil || len(tok.Projected.Sources) != 1 || tok.Projected.Sources[0].ServiceAccountToken == nil ||
		tok.Projected.Sources[0].ServiceAccountToken.Audience != "meshproxy" ||
		*tok.Projected.Sources[0].ServiceAccountToken.ExpirationSeconds != 3600 {
		t.Errorf("token volume = %+v; want a projected ServiceAccount token, audience meshproxy, 3600 s", tok)
	}
	// Container and port names stay unique in the pod.
	seen := map[string]bool{}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if seen[c.Name] {
			t.Errorf("container name %q appears twice", c.Name)
		}
		seen[c.Name] = true
	}
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// TestInjectGolden injects every testdata/inject/*.in.yaml, compares the
// result with its .golden.yaml, injects the result again (which must change
// nothing, byte for byte), and decodes every output document strictly.
func TestInjectGolden(t *testing.T) {
	ins, err := filepath.Glob(filepath.Join("..", "..", "testdata", "inject", "*.in.yaml"))
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			args := goldenArgs(src)
			got, stderr, code := injectT(t, src, args...)
			if code != 0 {
				t.Fatalf("exit %d; stderr: %s", code, stderr)
			}
			goldenPath := strings.TrimSuffix(in, ".in.yaml") + ".golden.yaml"
			if updateGolden() {
				if err := os.WriteFile(goldenPath, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(goldenPath)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s (run with -update if the change is meant):\n%s", goldenPath, got)
			}

			again, stderr, code := injectT(t, []byte(got), args...)
			if code != 0 {
				t.Fatalf("second injection: exit %d; stderr: %s", code, stderr)
			}
			if again != got {
				t.Errorf("second injection changed the output:\n%s", again)
			}

			legacy := slices.Contains(args, "--legacy-sidecar")
			mode := "redirect"
			if i := slices.Index(args, "--mode"); i >= 0 {
				mode = args[i+1]
			}
			injected := 0
			for _, doc := range splitYAMLDocuments([]byte(got)) {
				if len(bytes.TrimSpace(doc)) == 0 {
					continue
				}
				obj := strictDecode(t, doc)
				objs := []any{obj}
				if l, ok := obj.(*corev1.List); ok {
					objs = nil
					for _, item := range l.Items {
						objs = append(objs, strictDecode(t, item.Raw))
					}
				}
				for _, o := range objs {
					meta, spec, ok := podOf(o)
					if !ok || meta.Annotations[annInject] == "disabled" {
						continue
					}
					checkInjected(t, meta, spec, legacy, mode)
					injected++
				}
			}
			if name != "optout" && injected == 0 {
				t.Error("no injected workload in the output")
			}
		})
	}
}

// TestInjectPassThrough: documents that are not workloads, and opted-out
// workloads, come out byte for byte.
func TestInjectPassThrough(t *testing.T) {
	for _, name := range []string{"optout"} {
		src, err := os.ReadFile(filepath.Join("..", "..", "testdata", "inject", name+".in.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		got, _, code := injectT(t, src)
		if code != 0 || got != string(src) {
			t.Errorf("%s: exit %d, output differs from input:\n%s", name, code, got)
		}
	}
	src, err := os.ReadFile(filepath.Join("..", "..", "testdata", "inject", "multidoc.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, _, _ := injectT(t, src)
	inDocs := splitYAMLDocuments(src)
	outDocs := splitYAMLDocuments([]byte(got))
	if len(outDocs) != 3 {
		t.Fatalf("multidoc: %d documents out; want 3", len(outDocs))
	}
	for i := 0; i < 2; i++ {
		if !bytes.Equal(inDocs[i], outDocs[i]) {
			t.Errorf("multidoc document %d changed:\n%s\nwant:\n%s", i+1, outDocs[i], inDocs[i])
		}
	}
}

// TestInjectReinjectWithOtherFlags: injecting a pod that an earlier run
// injected with other flags replaces the proxy and init container rather
// than adding a second pair, and switching back gives the first result.
func TestInjectReinjectWithOtherFlags(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "testdata", "inject", "job.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	native, _, code := injectT(t, src)
	if code != 0 {
		t.Fatal("first injection failed")
	}
	legacy, stderr, code := injectT(t, []byte(native), "--legacy-sidecar", "--mode", "tproxy")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	job := strictDecode(t, []byte(legacy)).(*batchv1.Job)
	checkInjected(t, &job.Spec.Template.ObjectMeta, &job.Spec.Template.Spec, true, "tproxy")
	back, _, _ := injectT(t, []byte(legacy))
	if back != native {
		t.Errorf("legacy then native again differs from native:\n%s", back)
	}
}

// TestInjectAnnotations checks what the annotations turn into.
func TestInjectAnnotations(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "testdata", "inject", "skipports.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, stderr, code := injectT(t, src)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	d := strictDecode(t, []byte(got)).(*appsv1.Deployment)
	spec := d.Spec.Template.Spec
	args := strings.Join(spec.InitContainers[0].Args, " ")
	if !strings.Contains(args, "--inbound-ports-to-ignore 4190,4191,25,9000-9010") {
		t.Errorf("init args %q: want the skipped inbound ports after 4190,4191", args)
	}
	if !strings.Contains(args, "--outbound-ports-to-ignore 4190,4191,587") {
		t.Errorf("init args %q: want --outbound-ports-to-ignore 4190,4191,587 (admin ports, then the annotation's)", args)
	}
	proxy := spec.InitContainers[1]
	var opaque string
	for _, e := range proxy.Env {
		if e.Name == "MESHPROXY_OPAQUE_PORTS" {
			opaque = e.Value
		}
	}
	if opaque != "3306,6379" {
		t.Errorf("MESHPROXY_OPAQUE_PORTS = %q; want 3306,6379", opaque)
	}
	res := proxy.Resources
	for _, c := range []struct {
		name string
		got  resource.Quantity
		want string
	}{
		{"cpu request", res.Requests[corev1.ResourceCPU], "50m"},
		{"cpu limit", res.Limits[corev1.ResourceCPU], "500m"},
		// A memory limit below the default request lowers the request.
		{"memory request", res.Requests[corev1.ResourceMemory], "16Mi"},
		{"memory limit", res.Limits[corev1.ResourceMemory], "16Mi"},
	} {
		if c.got.Cmp(resource.MustParse(c.want)) != 0 {
			t.Errorf("%s = %s; want %s", c.name, c.got.String(), c.want)
		}
	}
}

// TestInjectHostNetwork: a hostNetwork pod is left alone, with a warning,
// since init would rewrite the node's own firewall.
func TestInjectHostNetwork(t *testing.T) {
	src := []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: node-agent\nspec:\n  hostNetwork: true\n  containers:\n  - name: a\n    image: b\n")
	got, stderr, code := injectT(t, src)
	if code != 0 || got != string(src) {
		t.Errorf("exit %d, output:\n%s\nwant the input unchanged", code, got)
	}
	if !strings.Contains(stderr, "document 1") || !strings.Contains(stderr, "hostNetwork") {
		t.Errorf("stderr = %q; want a warning naming the document and hostNetwork", stderr)
	}
}

// TestInjectFiles: several -f files, "-" for stdin, output in order.
func TestInjectFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	if err := os.WriteFile(a, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, stderr, code := injectT(t, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n"), "-f", a, "-f", "-")
	want := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n"
	if code != 0 || got != want {
		t.Errorf("exit %d (%s), output:\n%s\nwant:\n%s", code, stderr, got, want)
	}
}

// TestInjectErrors: bad input exits 1 naming the document and kind; bad
// flags exit 2 with one line.
func TestInjectErrors(t *testing.T) {
	svc := "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n---\n"
	pod := func(ann string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    " + ann + "\nspec:\n  containers:\n  - name: a\n    image: b\n"
	}
	for _, tc := range []struct {
		name  string
		in    string
		args  []string
		code  int
		wants []string
	}{
		{"bad yaml", svc + "kind: [\n", nil, 1, []string{"document 2", "invalid YAML"}},
		{"numbering skips empty documents", "---\n# only a comment\n---\n" + svc + "\n---\nkind: [\n", nil, 1, []string{"document 2:", "invalid YAML"}},
		{"unknown field", svc + "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicaz: 2\n", nil, 1,
			[]string{"document 2", `Deployment "web"`, "replicaz"}},
		{"unknown field in container", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    imagee: b\n", nil, 1,
			[]string{"document 1", `Pod "p"`, "imagee"}},
		{"duplicate field", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  name: q\nspec: {}\n", nil, 1, []string{"document 1", "Pod"}},
		{"not an object", "- a\n- b\n", nil, 1, []string{"document 1", "apiVersion and kind"}},
		{"no kind", "metadata:\n  name: x\n", nil, 1, []string{"document 1", "apiVersion and kind are required"}},
		{"old apiVersion", "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata:\n  name: old\n", nil, 1,
			[]string{"document 1", `Deployment "old"`, "use apps/v1"}},
		{"bad port", pod(`meshproxy.io/skip-inbound-ports: "80,http"`), nil, 1, []string{"document 1", `Pod "p"`, "skip-inbound-ports", `"http"`}},
		{"range for opaque ports", pod(`meshproxy.io/opaque-ports: "3000-3005"`), nil, 1, []string{"opaque-ports", "ranges are not allowed"}},
		{"bad quantity", pod(`meshproxy.io/proxy-cpu-limit: lots`), nil, 1, []string{"proxy-cpu-limit", "not a quantity"}},
		{"request above limit", pod(`{meshproxy.io/proxy-cpu-request: "2", meshproxy.io/proxy-cpu-limit: "1"}`), nil, 1, []string{"above the limit"}},
		{"bad inject value", pod(`meshproxy.io/inject: "no"`), nil, 1, []string{"want enabled or disabled"}},
		{"port clash", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    image: b\n    ports:\n    - containerPort: 4143\n", nil, 1,
			[]string{`container "a" uses port 4143`}},
		{"missing file", "", []string{"-f", "/nonexistent/x.yaml"}, 1, []string{"/nonexistent/x.yaml"}},
		{"bad flag", "", []string{"--bogus"}, 2, []string{"-bogus", "meshproxy inject -h"}},
		{"bad mode", "", []string{"--mode", "nat"}, 2, []string{"--mode", "redirect or tproxy"}},
		{"root proxy uid", "", []string{"--proxy-uid", "0"}, 2, []string{"--proxy-uid"}},
		{"bad trust domain", "", []string{"--trust-domain", "Bad/Domain"}, 2, []string{"--trust-domain"}},
		{"stray argument", "", []string{"deploy.yaml"}, 2, []string{"unexpected argument"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, code := injectT(t, []byte(tc.in), tc.args...)
			if code != tc.code {
				t.Fatalf("exit = %d; want %d (stderr %q)", code, tc.code, stderr)
			}
			if out != "" {
				t.Errorf("stdout = %q; want nothing on error", out)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("stderr has several lines: %q", stderr)
			}
			for _, w := range tc.wants {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr = %q; want it to mention %q", stderr, w)
				}
			}
		})
	}
}

// TestKubernetesManifests decodes scripts/kubernetes/*.yaml strictly and
// checks the identity service's wiring; inject must leave it alone.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "scripts", "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in scripts/kubernetes: %v", err)
	}
	kinds := map[string]any{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range splitYAMLDocuments(data) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj := strictDecode(t, doc)
			var head metav1.TypeMeta
			_ = yaml.Unmarshal(doc, &head)
			kinds[head.Kind] = obj
		}
		got, stderr, code := injectT(t, data)
		if code != 0 || got != string(data) {
			t.Errorf("%s: inject changed it (exit %d, %s); the identity service must be opted out", f, code, stderr)
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "Deployment", "Service", "ConfigMap"} {
		if kinds[k] == nil {
			t.Errorf("no %s in scripts/kubernetes", k)
		}
	}
	d, _ := kinds["Deployment"].(*appsv1.Deployment)
	if d == nil {
		return
	}
	if d.Namespace != "meshproxy" {
		t.Errorf("identity Deployment namespace = %q; want meshproxy", d.Namespace)
	}
	c := d.Spec.Template.Spec.Containers[0]
	cmd := strings.Join(append(slices.Clone(c.Command), c.Args...), " ")
	if !strings.Contains(cmd, "identity serve --dir /var/run/meshproxy/ca --listen 0.0.0.0:8080") {
		t.Errorf("identity command = %q", cmd)
	}
	secret := false
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "meshproxy-ca" {
			secret = true
		}
	}
	if !secret {
		t.Error("identity Deployment does not mount Secret meshproxy-ca")
	}
	if s, _ := kinds["Service"].(*corev1.Service); s == nil || s.Name != "meshproxy-identity" || s.Spec.Ports[0].Port != 8080 {
		t.Errorf("Service = %+v; want meshproxy-identity on 8080", s)
	}
	if cm, _ := kinds["ConfigMap"].(*corev1.ConfigMap); cm == nil || cm.Name != "meshproxy-trust-anchors" || cm.Data["anchor.pem"] == "" {
		t.Errorf("ConfigMap = %+v; want meshproxy-trust-anchors with anchor.pem", cm)
	}
}

// TestInjectHelp: -h anywhere prints the usage with the annotations, exit 0.
func TestInjectHelp(t *testing.T) {
	out, _, code := injectT(t, nil, "--mode", "tproxy", "-h")
	if code != 0 || !strings.Contains(out, "meshproxy.io/inject: disabled") || !strings.Contains(out, "-legacy-sidecar") {
		t.Errorf("exit %d, usage:\n%s", code, out)
	}
}
