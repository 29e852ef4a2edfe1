package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func noEnv(string) string { return "" }

// TestRetryBudgetZero: retry-budget-ratio 0 and
// retry-budget-min-per-second 0 mean no retries from that source; the
// proxy package reads a zero RetryBudget field as "the default" (0.2, 10
// a second), so the settings must not reach it as zeros.
func TestRetryBudgetZero(t *testing.T) {
	cfg, err := loadRunConfig([]string{"--retry-budget-ratio", "0", "--retry-budget-min-per-second", "0"}, io.Discard, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.HTTP.retryBudget()
	if b.Ratio >= 0 || b.MinPerSecond >= 0 {
		t.Errorf("settings 0 and 0 give proxy.RetryBudget %+v; want negative fields (none), not zeros (the defaults 0.2 and 10/s)", b)
	}
	cfg, err = loadRunConfig([]string{"--retry-budget-ratio", "0.5", "--retry-budget-min-per-second", "3"}, io.Discard, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.HTTP.retryBudget(); b.Ratio != 0.5 || b.MinPerSecond != 3 {
		t.Errorf("settings 0.5 and 3 give %+v", b)
	}
}

// TestOpaquePortsEmpty: an empty opaque-ports list (flag, file or
// environment) means no opaque ports. proxy.Config reads a nil list as
// DefaultOpaquePorts, so the setting must reach it as an empty, non-nil
// list.
func TestOpaquePortsEmpty(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("opaque-ports: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
	}{
		{"flag", []string{"--opaque-ports", ""}, noEnv},
		{"file", []string{"--config", file}, noEnv},
		{"environment", nil, func(k string) string {
			if k == "MESHPROXY_OPAQUE_PORTS" {
				return ","
			}
			return ""
		}},
	} {
		cfg, err := loadRunConfig(tc.args, io.Discard, tc.getenv)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if cfg.OpaquePorts == nil || len(cfg.OpaquePorts) != 0 {
			t.Errorf("%s: empty opaque-ports gives %#v; want an empty non-nil list (nil is the proxy's default list)", tc.name, cfg.OpaquePorts)
		}
	}
}

// TestRunConfigNoSilentDefault: values the proxy package would silently
// replace (a zero duration it reads as its default) or cannot use (NaN,
// infinities) are refused with an error naming the setting.
func TestRunConfigNoSilentDefault(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--idle-timeout", "0"}, "idle-timeout"},
		{[]string{"--response-timeout", "0s"}, "response-timeout"},
		{[]string{"--trace-sample-rate", "NaN"}, "trace-sample-rate"},
		{[]string{"--retry-budget-ratio", "NaN"}, "retry-budget-ratio"},
		{[]string{"--retry-budget-ratio", "+Inf"}, "retry-budget-ratio"},
	} {
		_, err := loadRunConfig(tc.args, io.Discard, noEnv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v; want one naming %s", tc.args, err, tc.want)
		}
	}
	// Negative durations keep their meaning: never, no limit.
	if _, err := loadRunConfig([]string{"--idle-timeout", "-1s", "--response-timeout", "-1s"}, io.Discard, noEnv); err != nil {
		t.Errorf("negative idle-timeout and response-timeout: %v", err)
	}
}

// TestRunConfigValueErrors: a value of the wrong type names the file (or
// environment variable), the line, the setting, the value and the form
// it should take, not only the flag package's "parse error".
func TestRunConfigValueErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := func(name, value string) func(string) string {
		return func(k string) string {
			if k == name {
				return value
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		want   []string
	}{
		{"duration without unit", []string{"--config", write("a.yaml", "mode: redirect\ndetect-timeout: 5\n")}, noEnv,
			[]string{"a.yaml", "line 2", `"detect-timeout"`, `"5"`, "duration", "10s"}},
		{"yes for a bool", []string{"--config", write("b.yaml", "http: yes\n")}, noEnv,
			[]string{"b.yaml", "line 1", `"http"`, `"yes"`, "true or false"}},
		{"word for a number", []string{"--config", write("c.yaml", "\n\nmax-concurrent-per-service: lots\n")}, noEnv,
			[]string{"c.yaml", "line 3", `"max-concurrent-per-service"`, `"lots"`, "whole number"}},
		{"port out of range", []string{"--config", write("d.yaml", "mesh-port: -1\n")}, noEnv,
			[]string{"d.yaml", "line 1", `"mesh-port"`, `"-1"`, "whole number"}},
		{"environment", nil, env("MESHPROXY_CONNECT_TIMEOUT", "3"),
			[]string{"MESHPROXY_CONNECT_TIMEOUT", `"3"`, "duration"}},
		{"flag", []string{"--idle-timeout", "forever"}, noEnv,
			[]string{"idle-timeout", "forever"}},
	} {
		_, err := loadRunConfig(tc.args, io.Discard, tc.getenv)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %v; want it to say %s", tc.name, err, w)
			}
		}
	}
}

// TestConfigFileOneDocument: settings after a "---" are not silently
// dropped: a second YAML document in the config file is an error.
func TestConfigFileOneDocument(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("mode: redirect\n---\nmode: tproxy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadRunConfig([]string{"--config", file}, io.Discard, noEnv)
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "document") {
		t.Errorf("two documents: mode %s, error %v; want an error naming the second document's line", cfg.Mode, err)
	}
	// A document separator at the start, or a trailing empty document,
	// is fine.
	if err := os.WriteFile(file, []byte("---\nmode: tproxy\n---\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if cfg, err := loadRunConfig([]string{"--config", file}, io.Discard, noEnv); err != nil || cfg.Mode != "tproxy" {
		t.Errorf("one document between separators: mode %s, error %v", cfg.Mode, err)
	}
}

// TestConfigFileMisspeltKey: an unknown setting that is a known one
// misspelt (underscores, case, a typo) names the one meant.
func TestConfigFileMisspeltKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	for key, want := range map[string]string{
		"detect_timeout": "detect-timeout",
		"Log-Level":      "log-level",
		"idle-timout":    "idle-timeout",
		"opaque-port":    "opaque-ports",
	} {
		if err := os.WriteFile(file, []byte(key+": x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := loadRunConfig([]string{"--config", file}, io.Discard, noEnv)
		if err == nil || !strings.Contains(err.Error(), "did you mean "+want+"?") {
			t.Errorf("%s: error %v; want it to suggest %s", key, err, want)
		}
	}
}

// TestReferenceEnvironment: every environment variable docs/reference.md
// lists for meshproxy run is one the settings are really read from.
func TestReferenceEnvironment(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "reference.md"))
	if err != nil {
		t.Fatal(err)
	}
	asked := map[string]bool{}
	if _, err := loadRunConfig(nil, io.Discard, func(k string) string { asked[k] = true; return "" }); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(doc), "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) < 4 || !strings.HasPrefix(cells[1], "`MESHPROXY_") {
			continue
		}
		n++
		if env := strings.Trim(cells[1], "`"); !asked[env] {
			t.Errorf("docs/reference.md lists %s for %s, but meshproxy run never reads it", env, cells[0])
		}
	}
	if n < 30 {
		t.Fatalf("found %d environment variables in docs/reference.md; the table's format changed?", n)
	}
}

// TestHugeFiles: a config or routes file past its size limit is refused
// before it is parsed (a YAML parse holds every node in memory, several
// times the file's size), with an error naming the file and the limit.
func TestHugeFiles(t *testing.T) {
	dir := t.TempDir()
	// Valid YAML throughout: comments, then one setting or route.
	big := strings.Repeat("# "+strings.Repeat("x", 98)+"\n", (maxConfigFileBytes/100)+100)
	cfgFile := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(cfgFile, []byte(big+"mode: tproxy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadRunConfig([]string{"--config", cfgFile}, io.Discard, noEnv); err == nil || !strings.Contains(err.Error(), "big.yaml") || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("huge config file: error %v; want it refused as too large", err)
	}
	routesFile := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(routesFile, []byte(big+routeHead+"metadata: {name: web}\nspec:\n  parentRefs: [{kind: Service, name: web}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadRoutes(routesFile, ""); err == nil || !strings.Contains(err.Error(), "routes.yaml") || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("huge routes file: error %v; want it refused as too large", err)
	}
}

// TestListenConflicts: two listeners that cannot both bind (one address
// and port twice, or an address beside its family's wildcard on one port)
// and listener lists that bind nothing are configuration errors, found by
// --check-config, not a failed start.
func TestListenConflicts(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string // "" for no error
	}{
		{[]string{"--outbound-listen", "127.0.0.1:4140", "--inbound-listen", "127.0.0.1:4140"}, []string{"outbound-listen", "inbound-listen", "127.0.0.1:4140"}},
		{[]string{"--outbound-listen", "127.0.0.1:4140,127.0.0.1:4140"}, []string{"outbound-listen", "127.0.0.1:4140"}},
		{[]string{"--inbound-listen", "0.0.0.0:4143", "--admin-listen", "127.0.0.1:4143"}, []string{"admin-listen", "inbound-listen", "0.0.0.0:4143"}},
		{[]string{"--inbound-listen", "[::]:4191"}, []string{"admin-listen", "inbound-listen", "[::]:4191"}}, // admin 0.0.0.0 is dual-stack
		{[]string{"--ipv6=false", "--outbound-listen", "[::1]:4140", "--inbound-listen", "[::]:4143"}, []string{"ipv6"}},
		{nil, nil}, // the defaults: 0.0.0.0 and [::] on one port are apart (IPv6-only)
		{[]string{"--outbound-listen", "127.0.0.1:0", "--inbound-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, nil},
		{[]string{"--ipv6=false", "--inbound-listen", "[::]:4191"}, nil}, // not bound at all
	} {
		_, err := loadRunConfig(tc.args, io.Discard, noEnv)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%v: %v", tc.args, err)
			}
			continue
		}
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %v; want it to name %s", tc.args, err, w)
			}
		}
	}
}

// TestMeshSettingsNeedMTLS: settings that only mean something with mTLS
// (an allow-list of client identities, refusing plaintext upstreams,
// destinations that must be mTLS) are refused when the mesh is off,
// instead of being ignored while every connection goes in plaintext.
func TestMeshSettingsNeedMTLS(t *testing.T) {
	for _, args := range [][]string{
		{"--inbound-authz", "*=spiffe://cluster.local/ns/default/sa/web"},
		{"--outbound-require-tls"},
		{"--meshed-cidrs", "198.18.0.0/24"},
	} {
		_, err := loadRunConfig(args, io.Discard, noEnv)
		setting := strings.TrimPrefix(args[0], "--")
		if err == nil || !strings.Contains(err.Error(), setting) || !strings.Contains(err.Error(), "identity-dir or identity-addr") {
			t.Errorf("%v without mTLS: error %v; want one naming %s and the fix", args, err, setting)
		}
	}
	// unmeshed-cidrs asks for plaintext: fine without the mesh.
	if _, err := loadRunConfig([]string{"--unmeshed-cidrs", "198.18.0.0/24"}, io.Discard, noEnv); err != nil {
		t.Errorf("unmeshed-cidrs without mTLS: %v", err)
	}
}

// TestNamespaceSetting: namespace expands short service names in route
// lookups; a value no Kubernetes namespace can have (capitals, dots)
// would make every short name miss its routes, so it is refused.
func TestNamespaceSetting(t *testing.T) {
	for _, ns := range []string{"Demo", "demo.svc", "-x"} {
		if _, err := loadRunConfig([]string{"--namespace", ns}, io.Discard, noEnv); err == nil || !strings.Contains(err.Error(), "namespace") {
			t.Errorf("namespace %q: error %v; want it refused", ns, err)
		}
	}
	if _, err := loadRunConfig([]string{"--namespace", "demo-1"}, io.Discard, noEnv); err != nil {
		t.Errorf("namespace demo-1: %v", err)
	}
}

// TestUnknownEnvironment: a MESHPROXY_ variable that names no setting (a
// misspelt one) is reported, not silently ignored; Kubernetes' service
// links for a Service named meshproxy are not settings and pass quietly.
func TestUnknownEnvironment(t *testing.T) {
	t.Setenv("MESHPROXY_IDLE_TIMOUT", "5m")
	t.Setenv("MESHPROXY_SERVICE_HOST", "198.18.0.1")
	t.Setenv("MESHPROXY_PORT_4191_TCP", "tcp://198.18.0.1:4191")
	t.Setenv("MESHPROXY_LOG_LEVEL", "info")
	t.Setenv("MESHPROXY_CHECK_CONFIG", "true") // a flag only
	var out, errb strings.Builder
	if code := runRun([]string{"--check-config"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "MESHPROXY_IDLE_TIMOUT") || !strings.Contains(errb.String(), "did you mean MESHPROXY_IDLE_TIMEOUT?") {
		t.Errorf("stderr %q; want a warning naming MESHPROXY_IDLE_TIMOUT and MESHPROXY_IDLE_TIMEOUT", errb.String())
	}
	if !strings.Contains(errb.String(), "MESHPROXY_CHECK_CONFIG is not a setting") {
		t.Errorf("stderr %q; want a warning that MESHPROXY_CHECK_CONFIG is not read", errb.String())
	}
	for _, quiet := range []string{"MESHPROXY_SERVICE_HOST", "MESHPROXY_PORT_4191_TCP", "MESHPROXY_LOG_LEVEL"} {
		if strings.Contains(errb.String(), quiet) {
			t.Errorf("stderr %q names %s", errb.String(), quiet)
		}
	}
}
