package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunConfigPrecedence: defaults, then the file, then MESHPROXY_*
// environment, then flags; each overrides the one before.
func TestRunConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "meshproxy.yaml")
	if err := os.WriteFile(file, []byte(`
mode: tproxy
detect-timeout: 2s
connect-timeout: 4s
idle-timeout: 5m
opaque-ports: [25, 3306]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MESHPROXY_CONNECT_TIMEOUT": "6s",
		"MESHPROXY_IDLE_TIMEOUT":    "7m",
	}
	getenv := func(k string) string { return env[k] }
	cfg, err := loadRunConfig([]string{"--config", file, "--idle-timeout", "8m"}, io.Discard, getenv)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"mode (file)", string(cfg.Mode), "tproxy"},
		{"detect-timeout (file)", cfg.DetectTimeout, 2 * time.Second},
		{"connect-timeout (env over file)", cfg.ConnectTimeout, 6 * time.Second},
		{"idle-timeout (flag over env and file)", cfg.IdleTimeout, 8 * time.Minute},
		{"opaque-ports (file list)", len(cfg.OpaquePorts), 2},
		{"shutdown-grace (default)", cfg.ShutdownGrace, 30 * time.Second},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v; want %v", tc.name, tc.got, tc.want)
		}
	}

	// The config path itself may come from the environment.
	env["MESHPROXY_CONFIG"] = file
	cfg, err = loadRunConfig(nil, io.Discard, getenv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != "tproxy" {
		t.Errorf("mode with MESHPROXY_CONFIG = %q; want tproxy", cfg.Mode)
	}
}

func TestRunConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	none := func(string) string { return "" }
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		want   string
	}{
		{"unknown key", []string{"--config", write("a.yaml", "mode: redirect\nbogus-setting: 1\n")}, none, `unknown setting "bogus-setting"`},
		{"bad value in file", []string{"--config", write("b.yaml", "detect-timeout: soon\n")}, none, `setting "detect-timeout"`},
		{"nested map", []string{"--config", write("c.yaml", "mode:\n  a: b\n")}, none, `line 2: setting "mode"`},
		{"not a mapping", []string{"--config", write("d.yaml", "- a\n- b\n")}, none, "not a YAML mapping"},
		{"bad env", nil, func(k string) string {
			if k == "MESHPROXY_IDLE_TIMEOUT" {
				return "forever"
			}
			return ""
		}, "MESHPROXY_IDLE_TIMEOUT"},
		{"config key in file", []string{"--config", write("e.yaml", "config: other.yaml\n")}, none, `unknown setting "config"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadRunConfig(tc.args, io.Discard, tc.getenv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v; want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestCheckConfig: --check-config prints the effective settings as YAML
// that reads back as a config file to the same settings, and starts nothing.
func TestCheckConfig(t *testing.T) {
	var out, errb strings.Builder
	code := runRun([]string{"--check-config", "--mode", "tproxy", "--opaque-ports", "25,3306", "--admin-listen", "127.0.0.1:1"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"mode: tproxy", "opaque-ports: [25, 3306]", "admin-listen: 127.0.0.1:1", "inbound-policy: permissive"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--check-config output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "check-config") || strings.Contains(out.String(), "config:") {
		t.Errorf("output lists flag-only settings:\n%s", out.String())
	}
	// The output is itself a valid config file.
	file := filepath.Join(t.TempDir(), "effective.yaml")
	os.WriteFile(file, []byte(out.String()), 0o644)
	cfg, err := loadRunConfig([]string{"--config", file}, io.Discard, func(string) string { return "" })
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, out.String())
	}
	if cfg.Mode != "tproxy" || len(cfg.OpaquePorts) != 2 || cfg.AdminListen != "127.0.0.1:1" {
		t.Errorf("round trip changed settings: %+v", cfg)
	}
	// A bad config is reported, non-zero.
	errb.Reset()
	if code := runRun([]string{"--check-config", "--inbound-policy", "lax"}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "inbound-policy") {
		t.Errorf("bad config: exit %d, %q; want failure naming inbound-policy", code, errb.String())
	}
}

// FuzzConfigFile: any config file is refused with an error or gives
// settings that, printed by --check-config and read back, are the same.
func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"mode: tproxy\nopaque-ports: [25, 3306]\n",
		"detect-timeout: 2s\nidle-timeout: -1s\n",
		"inbound-authz: ['8080=spiffe://cluster.local/ns/a/sa/b']\n",
		"mode: [a, b]\n",
		"bogus: 1\n",
		"- a\n",
		"",
		"mode: !!binary aGVsbG8=\n",
		"identity-dir: /x\nidentity: spiffe://cluster.local/ns/a/sa/b\n",
	} {
		f.Add(s)
	}
	none := func(string) string { return "" }
	f.Fuzz(func(t *testing.T, body string) {
		file := filepath.Join(t.TempDir(), "c.yaml")
		os.WriteFile(file, []byte(body), 0o644)
		cfg, err := loadRunConfig([]string{"--config", file}, io.Discard, none)
		if err != nil {
			return
		}
		var out strings.Builder
		if err := printEffective(&out, cfg.effective); err != nil {
			t.Fatalf("printing %+v: %v", cfg.effective, err)
		}
		again := filepath.Join(t.TempDir(), "again.yaml")
		os.WriteFile(again, []byte(out.String()), 0o644)
		cfg2, err := loadRunConfig([]string{"--config", again}, io.Discard, none)
		if err != nil {
			t.Fatalf("printed config does not load: %v\n%s", err, out.String())
		}
		for k, v := range cfg.effective {
			if cfg2.effective[k] != v {
				t.Fatalf("setting %s: %q became %q after a round trip", k, v, cfg2.effective[k])
			}
		}
	})
}

// TestCheckConfigRoutes: --check-config also loads the routes file, so a
// bad route is caught before a restart.
func TestCheckConfigRoutes(t *testing.T) {
	var out, errb strings.Builder
	good := filepath.Join("..", "..", "testdata", "routes", "example.yaml")
	if code := runRun([]string{"--check-config", "--routes", good}, &out, &errb); code != 0 {
		t.Fatalf("example routes: exit %d: %s", code, errb.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec:\n  hostnames: [a.example]\n"), 0o644)
	errb.Reset()
	if code := runRun([]string{"--check-config", "--routes", bad}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "hostnames") {
		t.Errorf("bad routes: exit %d, %q; want a failure naming hostnames", code, errb.String())
	}
}
