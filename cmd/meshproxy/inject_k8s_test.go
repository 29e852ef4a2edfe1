package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// quantityCorpus are quantities as people write them, and the corner cases
// of apimachinery's parser.
var quantityCorpus = []string{
	"0", "1", "100m", "0.5", ".5", "1.5", "1.", "1.G", "1000m", "1500m", "1.500k", "1e3", "1E3", "1e-3", "1.5e3", "2e-10",
	"64Mi", "1024Mi", "1025Mi", "2048Ki", "1030Ki", "0.5Gi", ".5Gi", "1.5Ki", "1.Ki", "01Gi", "+1Gi", "-1Gi", "Ki", "m",
	"1n", "0.1n", "0.0000000001", "123456789012345678901", "9223372036854775807", "9223372036854775808", "16Ei", "8Ei",
	"10Ei", "1000Ei", "999999999999999999999Ei", "-0", "+0", "000", "00100", "1000E", "1000000E", "1000000000000000000000",
	"1k", "1K", "1Kb", "1i", "1e", "1e+3", "1e-", "1.2.3", "", " 1", "1 ", "-", "+", ".", "abc", "1MiB", "12345678901234567890m",
	"1.1m", "1.0001m", "0.000001", "0.0000001", "-1.5", "-0.1n", "1023", "1023Ki", "1024", "-1024Ki", "3Mi", "8Mi", "0.5Mi",
	"1.000000001", "1u", "1000u", "100e-3", "7e18", "1e19", "1e100", "1E-1", "50m", "250m", "2", "500Mi", "1Gi", "1.25Gi",
}

func k8sQuantityText(q resource.Quantity) string {
	b, err := q.MarshalJSON()
	if err != nil {
		return "error: " + err.Error()
	}
	return string(b)
}

// checkQuantity compares parseK8sQuantity with resource.ParseQuantity on s:
// both accept or both refuse it, and they write the same text.
func checkQuantity(t *testing.T, s string) {
	t.Helper()
	want, wantErr := resource.ParseQuantity(s)
	got, gotErr := parseK8sQuantity(s)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("quantity %q: error %v; apimachinery: %v", s, gotErr, wantErr)
	}
	if wantErr != nil {
		return
	}
	gotText, _ := got.MarshalJSON()
	if w := k8sQuantityText(want); string(gotText) != w {
		t.Errorf("quantity %q written as %s; apimachinery: %s", s, gotText, w)
	}
	if got.String() != want.String() {
		t.Errorf("quantity %q String %s; apimachinery: %s", s, got.String(), want.String())
	}
}

func TestK8sQuantityMatchesApimachinery(t *testing.T) {
	for _, s := range quantityCorpus {
		checkQuantity(t, s)
	}
	// Comparisons, pair by pair.
	var ours []k8sQuantity
	var theirs []resource.Quantity
	for _, s := range quantityCorpus {
		w, err := resource.ParseQuantity(s)
		if err != nil {
			continue
		}
		theirs = append(theirs, w)
		ours = append(ours, mustParseK8sQuantity(s))
	}
	for i := range ours {
		for j := range ours {
			if g, w := ours[i].Cmp(ours[j]), theirs[i].Cmp(theirs[j]); g != w {
				t.Errorf("Cmp(%s, %s) = %d; apimachinery: %d", theirs[i].String(), theirs[j].String(), g, w)
			}
		}
	}
}

// hugeExponent reports whether s has an exponent ("e" or "E" and a
// number) of four or more digits: a number of thousands of digits, slow to
// parse for apimachinery and for the mirror alike.
func hugeExponent(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != 'e' && s[i] != 'E' {
			continue
		}
		digits := strings.TrimLeft(s[i+1:], "+-")
		n := 0
		for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
			n++
		}
		if n >= 4 {
			return true
		}
	}
	return false
}

func FuzzK8sQuantity(f *testing.F) {
	for _, s := range quantityCorpus {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 40 || hugeExponent(s) {
			return // both take ages over numbers of millions of digits
		}
		checkQuantity(t, s)
	})
}

// TestK8sValueTypesMatchApimachinery: IntOrString, Time and FieldsV1 read
// and write JSON as the originals do.
func TestK8sValueTypesMatchApimachinery(t *testing.T) {
	for _, in := range []string{`80`, `"http"`, `"80"`, `null`, `1.5`, `"x\u00e9"`, `2147483648`, `-1`, `true`, `{}`} {
		var w intstr.IntOrString
		wantErr := json.Unmarshal([]byte(in), &w)
		var g k8sIntOrString
		gotErr := json.Unmarshal([]byte(in), &g)
		if (wantErr == nil) != (gotErr == nil) {
			t.Errorf("IntOrString %s: error %v; apimachinery: %v", in, gotErr, wantErr)
			continue
		}
		wb, _ := json.Marshal(w)
		gb, _ := json.Marshal(g)
		if wantErr == nil && string(wb) != string(gb) {
			t.Errorf("IntOrString %s written as %s; apimachinery: %s", in, gb, wb)
		}
	}
	for _, in := range []string{`null`, `"2024-05-01T10:00:00Z"`, `"2024-05-01T10:00:00+02:00"`, `"2024-05-01T10:00:00.123Z"`, `"2024-05-01"`, `5`, `""`} {
		var w metav1.Time
		wantErr := json.Unmarshal([]byte(in), &w)
		var g k8sTime
		gotErr := json.Unmarshal([]byte(in), &g)
		if (wantErr == nil) != (gotErr == nil) {
			t.Errorf("Time %s: error %v; apimachinery: %v", in, gotErr, wantErr)
			continue
		}
		wb, _ := json.Marshal(w)
		gb, _ := json.Marshal(g)
		if wantErr == nil && string(wb) != string(gb) {
			t.Errorf("Time %s written as %s; apimachinery: %s", in, gb, wb)
		}
	}
	for _, in := range []string{`null`, `{"f:metadata":{"f:labels":{}}}`, `{}`} {
		var w metav1.FieldsV1
		var g k8sFieldsV1
		if err := json.Unmarshal([]byte(in), &w); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(in), &g); err != nil {
			t.Fatal(err)
		}
		wb, _ := json.Marshal(w)
		gb, _ := json.Marshal(g)
		if string(wb) != string(gb) {
			t.Errorf("FieldsV1 %s written as %s; apimachinery: %s", in, gb, wb)
		}
	}
}

// roundTripCorpus are workload documents that exercise the typed round
// trip: value types, nulls, conversions, unknown and mistyped fields.
var roundTripCorpus = []string{
	`apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  creationTimestamp: "2024-05-01T10:00:00+02:00"
  generation: 3
  managedFields:
  - manager: kubectl
    operation: Apply
    fieldsType: FieldsV1
    fieldsV1: {"f:spec": {"f:replicas": {}}}
    time: "2024-05-01T10:00:00Z"
spec:
  replicas: 0
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 25%, maxUnavailable: 1}
  selector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [a, b]}]}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: web
        image: 123
        resources:
          requests: {cpu: 0.5, memory: 1024Mi, ephemeral-storage: 1.5Gi}
          limits: {cpu: "1000m", memory: 1e9, nvidia.com/gpu: 1}
        ports: [{containerPort: 8080, name: http, protocol: TCP}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 0}
        livenessProbe: {tcpSocket: {port: 8080}}
        env:
        - {name: A, value: "1"}
        - {name: B, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
        - {name: C, value: yes}
        - {name: D, value: null}
        stdin: false
        tty: true
      volumes:
      - {name: a, emptyDir: {sizeLimit: 500Mi, medium: ""}}
      - {name: b, persistentVolumeClaim: {claimName: data}}
status:
  replicas: 2
  conditions:
  - {type: Available, status: "True", lastUpdateTime: "2024-05-01T10:00:00Z", lastTransitionTime: null}
`,
	`apiVersion: v1
kind: Pod
metadata: {name: p, labels: null, annotations: {}}
spec:
  containers: []
  initContainers: null
  securityContext: {runAsUser: 1000, sysctls: [{name: a, value: b}]}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: k, operator: Exists}]}]
  tolerations: [{key: k, operator: Exists, effect: NoSchedule, tolerationSeconds: 10}]
  overhead: {cpu: 250m}
`,
	"apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  backoffLimit: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: a, image: b, Image: c}]\n",
	"apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: '* * * * *'\n  jobTemplate: {spec: {template: {spec: {containers: [{name: a, image: b}]}}}}\nstatus: {lastScheduleTime: '2024-01-01T00:00:00Z', active: [{name: x, kind: Job}]}\n",
	"apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: s}\nspec:\n  serviceName: s\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 10Gi}}}\n  template: {spec: {containers: [{name: a, image: b}]}}\n",
	"apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  updateStrategy: {rollingUpdate: {maxUnavailable: '10%'}}\n  template: {spec: {hostNetwork: false, containers: [{name: a, image: b}]}}\n",
	"apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: r}\nspec: {replicas: 1, template: {spec: {containers: [{name: a, image: b}]}}}\n",
	// YAML scalars that sigs.k8s.io/yaml converts to the type of the target
	// field, inside embedded structs (metadata, probe handlers, volume
	// sources, local object references).
	`apiVersion: apps/v1
kind: Deployment
metadata: {name: 0, labels: {version: 2, stable: true}, annotations: {ratio: 1.5}}
spec:
  selector: {matchLabels: {version: 2}}
  template:
    metadata: {labels: {version: 2}, annotations: {on: yes}}
    spec:
      containers:
      - name: 7
        image: b
        env: [{name: N, value: 10}]
        readinessProbe: {httpGet: {path: 404, port: 8080, host: 1}, exec: {command: [1, true]}}
      volumes:
      - {name: v, configMap: {name: 12, optional: false}, secret: {secretName: 3}}
`,
	// Refused alike:
	"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {replicas: '2'}\n",
	"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {replicas: 2.5}\n",
	"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {replicas: 2.0}\n",
	"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {replicas: 3000000000}\n",
	"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {template: {spec: {containers: [{name: a, resources: {limits: {cpu: lots}}}]}}}\n",
	"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {strategy: {rollingUpdate: {maxSurge: 1.5}}}\n",
	"apiVersion: v1\nkind: Pod\nmetadata: {name: p, creationTimestamp: yesterday}\n",
	"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, imagee: b}]}\n",
	"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: {name: a}}\n",
	"apiVersion: v1\nkind: Pod\nmetadata: {name: p, name: q}\n",
	"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, ports: [{containerPort: x}]}]}\n",
	"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, stdin: 'true'}]}\n",
	"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {phase: Running, startTime: '2024-01-01T00:00:00Z', bogus: 1}\n",
}

// typedRoundTrip decodes doc strictly into obj and writes it back as
// inject does; it returns the output or the error text.
func typedRoundTrip(doc []byte, obj any) string {
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return "error: " + k8sErrorText(err.Error())
	}
	out, err := marshalObject(obj)
	if err != nil {
		return "error: " + err.Error()
	}
	return string(out)
}

// checkRoundTrip compares the round trip of doc through the mirror types
// with the one through k8s.io/api.
func checkRoundTrip(t *testing.T, doc []byte) {
	t.Helper()
	var head metav1.TypeMeta
	if yaml.Unmarshal(doc, &head) != nil {
		return
	}
	var want, got any
	switch head.Kind {
	case "Pod":
		want, got = &corev1.Pod{}, &k8sCorePod{}
	case "Deployment":
		want, got = &appsv1.Deployment{}, &k8sAppsDeployment{}
	case "StatefulSet":
		want, got = &appsv1.StatefulSet{}, &k8sAppsStatefulSet{}
	case "DaemonSet":
		want, got = &appsv1.DaemonSet{}, &k8sAppsDaemonSet{}
	case "ReplicaSet":
		want, got = &appsv1.ReplicaSet{}, &k8sAppsReplicaSet{}
	case "Job":
		want, got = &batchv1.Job{}, &k8sBatchJob{}
	case "CronJob":
		want, got = &batchv1.CronJob{}, &k8sBatchCronJob{}
	default:
		return
	}
	w, g := typedRoundTrip(doc, want), typedRoundTrip(doc, got)
	if w != g {
		t.Errorf("%s round trip differs from k8s.io/api's:\n%s\ngot:\n%s\nwant:\n%s", head.Kind, doc, g, w)
	}
}

// TestK8sTypesRoundTripAsK8sAPI: the mirror types accept and refuse what
// k8s.io/api does, with the same message, and write the same YAML.
func TestK8sTypesRoundTripAsK8sAPI(t *testing.T) {
	docs := roundTripCorpus
	ins, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "inject", "*.yaml"))
	for _, in := range ins {
		data, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range splitYAMLDocuments(data) {
			docs = append(docs, string(d))
		}
	}
	for _, d := range docs {
		checkRoundTrip(t, []byte(d))
	}
}

func FuzzK8sTypesRoundTrip(f *testing.F) {
	for _, d := range roundTripCorpus {
		f.Add([]byte(d))
	}
	ins, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "inject", "*.yaml"))
	for _, in := range ins {
		data, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		for _, d := range splitYAMLDocuments(data) {
			f.Add(d)
		}
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		if len(doc) > 4096 || hugeExponent(string(doc)) {
			return
		}
		checkRoundTrip(t, doc)
	})
}
