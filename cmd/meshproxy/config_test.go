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
