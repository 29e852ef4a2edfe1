package main

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"go/format"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// k8sTypesFile is the generated mirror of the Kubernetes workload types.
const k8sTypesFile = "inject_types.go"

// k8sPackages names the generated types after the Go package of the type
// they mirror.
var k8sPackages = map[string]string{
	"k8s.io/api/core/v1":                   "Core",
	"k8s.io/api/apps/v1":                   "Apps",
	"k8s.io/api/batch/v1":                  "Batch",
	"k8s.io/apimachinery/pkg/apis/meta/v1": "Meta",
}

// k8sSpecial are the types with their own JSON encoding, mirrored by hand
// in inject_k8s.go.
var k8sSpecial = map[string]string{
	"k8s.io/apimachinery/pkg/api/resource.Quantity":   "k8sQuantity",
	"k8s.io/apimachinery/pkg/util/intstr.IntOrString": "k8sIntOrString",
	"k8s.io/apimachinery/pkg/apis/meta/v1.Time":       "k8sTime",
	"k8s.io/apimachinery/pkg/apis/meta/v1.FieldsV1":   "k8sFieldsV1",
}

// k8sPrefix is the name prefix of the types mirrored from a package: its
// group, and its version unless v1 ("Core", "SchedulingV1alpha3").
func k8sPrefix(pkg string) (string, bool) {
	if p, ok := k8sPackages[pkg]; ok {
		return p, true
	}
	rest, ok := strings.CutPrefix(pkg, "k8s.io/api/")
	group, ver, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || strings.Contains(ver, "/") {
		return "", false
	}
	p := strings.ToUpper(group[:1]) + group[1:]
	if ver != "v1" {
		p += strings.ToUpper(ver[:1]) + ver[1:]
	}
	return p, true
}

// k8sEmbedded holds the struct types that some mirrored struct embeds.
// Their mirrors get exported names (K8s...): sigs.k8s.io/yaml, which
// converts YAML scalars to the JSON type of the target field, does not look
// into embedded fields of unexported types, where encoding/json does.
var k8sEmbedded = map[reflect.Type]bool{}

// k8sTypeName is the name of the mirror of t.
func k8sTypeName(t reflect.Type) string {
	p, _ := k8sPrefix(t.PkgPath())
	if k8sEmbedded[t] {
		return "K8s" + p + t.Name()
	}
	return "k8s" + p + t.Name()
}

// findEmbedded records in k8sEmbedded every struct type embedded in a
// struct reachable from t.
func findEmbedded(t reflect.Type, seen map[reflect.Type]bool) {
	if seen[t] {
		return
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice:
		findEmbedded(t.Elem(), seen)
	case reflect.Map:
		findEmbedded(t.Key(), seen)
		findEmbedded(t.Elem(), seen)
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				k8sEmbedded[f.Type] = true
			}
			findEmbedded(f.Type, seen)
		}
	}
}

// generateK8sTypes writes Go declarations mirroring the JSON shape of the
// workload kinds inject accepts: the same fields, JSON tags and value kinds.
func generateK8sTypes() ([]byte, error) {
	var (
		queue = []reflect.Type{
			reflect.TypeFor[corev1.Pod](), reflect.TypeFor[appsv1.Deployment](), reflect.TypeFor[appsv1.StatefulSet](),
			reflect.TypeFor[appsv1.DaemonSet](), reflect.TypeFor[appsv1.ReplicaSet](), reflect.TypeFor[batchv1.Job](),
			reflect.TypeFor[batchv1.CronJob](),
		}
		seen  = map[reflect.Type]bool{}
		decls = map[string]string{}
	)
	marshalers := []reflect.Type{
		reflect.TypeFor[json.Marshaler](), reflect.TypeFor[json.Unmarshaler](),
		reflect.TypeFor[encoding.TextMarshaler](), reflect.TypeFor[encoding.TextUnmarshaler](),
	}
	var expr, structural func(t reflect.Type) (string, error)
	expr = func(t reflect.Type) (string, error) {
		full := t.PkgPath() + "." + t.Name()
		if s, ok := k8sSpecial[full]; ok {
			return s, nil
		}
		for _, m := range marshalers {
			if t.Name() == "" {
				break
			}
			if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
				return "", fmt.Errorf("%s has its own JSON encoding (%s): mirror it by hand and list it in k8sSpecial", full, m)
			}
		}
		if _, k8s := k8sPrefix(t.PkgPath()); k8s && t.Name() != "" && t.Kind() != reflect.Struct {
			// A named type (v1.Protocol, v1.ResourceList) is mirrored by a
			// named type too: JSON errors name it.
			name := k8sTypeName(t)
			if _, done := decls[name]; !done {
				decls[name] = ""
				seen[t] = true
				under, err := structural(t)
				if err != nil {
					return "", err
				}
				decls[name] = fmt.Sprintf("// %s mirrors %s.%s.\ntype %s %s\n", name, t.PkgPath(), t.Name(), name, under)
			}
			return name, nil
		}
		return structural(t)
	}
	structural = func(t reflect.Type) (string, error) {
		full := t.PkgPath() + "." + t.Name()
		switch t.Kind() {
		case reflect.Struct:
			if _, ok := k8sPrefix(t.PkgPath()); !ok || t.Name() == "" {
				return "", fmt.Errorf("struct %s is from an unexpected package", full)
			}
			if !seen[t] {
				seen[t] = true
				queue = append(queue, t)
			}
			return k8sTypeName(t), nil
		case reflect.Pointer:
			e, err := expr(t.Elem())
			return "*" + e, err
		case reflect.Slice:
			e, err := expr(t.Elem())
			return "[]" + e, err
		case reflect.Map:
			if t.Key().Kind() != reflect.String {
				return "", fmt.Errorf("map %s has non-string keys", t)
			}
			k, err := expr(t.Key())
			if err != nil {
				return "", err
			}
			e, err := expr(t.Elem())
			return "map[" + k + "]" + e, err
		case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			return t.Kind().String(), nil
		}
		return "", fmt.Errorf("type %s (%s) is not supported", t, t.Kind())
	}
	walked := map[reflect.Type]bool{}
	for _, t := range queue {
		seen[t] = true
		findEmbedded(t, walked)
	}
	for len(queue) > 0 {
		t := queue[0]
		queue = queue[1:]
		var b strings.Builder
		fmt.Fprintf(&b, "// %s mirrors %s.%s.\ntype %s struct {\n", k8sTypeName(t), t.PkgPath(), t.Name(), k8sTypeName(t))
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() && !f.Anonymous {
				continue
			}
			e, err := expr(f.Type)
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", t, f.Name, err)
			}
			tag := ""
			if j, ok := f.Tag.Lookup("json"); ok {
				tag = fmt.Sprintf(" `json:%q`", j)
			}
			if f.Anonymous {
				if f.Type.Kind() != reflect.Struct {
					return nil, fmt.Errorf("%s embeds %s, not a struct", t, f.Type)
				}
				fmt.Fprintf(&b, "\t%s%s\n", e, tag)
				continue
			}
			fmt.Fprintf(&b, "\t%s %s%s\n", f.Name, e, tag)
		}
		b.WriteString("}\n")
		decls[k8sTypeName(t)] = b.String()
	}
	var prefixes []string
	for t := range seen {
		p, _ := k8sPrefix(t.PkgPath())
		pkg := t.PkgPath()[strings.LastIndex(t.PkgPath(), "/")+1:]
		if e := p + "=" + pkg; !slices.Contains(prefixes, e) {
			prefixes = append(prefixes, e)
		}
	}
	// Longest first, so that no prefix hides a longer one.
	slices.SortFunc(prefixes, func(a, b string) int {
		if len(a) != len(b) {
			return len(b) - len(a)
		}
		return strings.Compare(a, b)
	})
	names := make([]string, 0, len(decls))
	for n := range decls {
		names = append(names, n)
	}
	sort.Strings(names)
	var src bytes.Buffer
	src.WriteString("// Code generated by TestInjectTypesGenerated from k8s.io/api; DO NOT EDIT.\n\n")
	src.WriteString("package main\n\n")
	src.WriteString("// k8sTypePackages lists PREFIX=PACKAGE pairs: the mirror of PACKAGE.Name is k8s+PREFIX+Name.\n")
	fmt.Fprintf(&src, "const k8sTypePackages = %q\n\n", strings.Join(prefixes, " "))
	for _, n := range names {
		src.WriteString(decls[n])
		src.WriteString("\n")
	}
	return format.Source(src.Bytes())
}

// TestInjectTypesGenerated checks that inject_types.go is what the
// generator writes from the k8s.io/api version in go.mod (-update rewrites
// it).
func TestInjectTypesGenerated(t *testing.T) {
	want, err := generateK8sTypes()
	if err != nil {
		t.Fatal(err)
	}
	if updateGolden() {
		if err := os.WriteFile(k8sTypesFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(k8sTypesFile)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/meshproxy -run TestInjectTypesGenerated -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with k8s.io/api: run go test ./cmd/meshproxy -run TestInjectTypesGenerated -update", k8sTypesFile)
	}
}

// TestInjectBinaryWithoutK8sAPI: the binary does not link k8s.io/api or
// k8s.io/apimachinery (only the tests do). Their package initialisation
// runs at every start of every subcommand and made an idle "meshproxy run"
// map about 3 MB more of the executable; inject uses the mirrors instead.
func TestInjectBinaryWithoutK8sAPI(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command: ", err)
	}
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/api/") || strings.HasPrefix(pkg, "k8s.io/apimachinery/") {
			t.Errorf("the meshproxy binary imports %s: use the mirrors in inject_types.go and inject_k8s.go", pkg)
		}
	}
}
