package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

func runInitArgs(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = dispatch(append([]string{"init"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestInitBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--proxy-uid", "2102", "--bogus"}, "flag provided but not defined: -bogus"},
		{"bad port", []string{"--proxy-uid", "2102", "--inbound-ports-to-ignore", "70000"}, `port "70000" out of range 1-65535`},
		{"bad port range", []string{"--proxy-uid", "2102", "--ports-to-redirect", "90-80"}, "reversed"},
		{"bad outbound port", []string{"--proxy-uid", "2102", "--outbound-port", "0"}, `--outbound-port "0" is not a port`},
		{"bad CIDR", []string{"--proxy-uid", "2102", "--subnets-to-ignore", "198.18.0.0/33"}, `subnet "198.18.0.0/33" is not a CIDR prefix`},
		{"bad mode", []string{"--proxy-uid", "2102", "--mode", "tproxi"}, `--mode "tproxi" is not a mode: use redirect or tproxy`},
		{"missing uid", nil, "init: --proxy-uid or --proxy-gid is required: without it the proxy's own connections would loop back into it"},
		{"bad uid", []string{"--proxy-uid", "root"}, `--proxy-uid "root" is not a numeric ID`},
		{"root uid", []string{"--proxy-uid", "0", "--dry-run"}, "init: proxy UID 0 is root"},
		{"missing netns", []string{"--proxy-uid", "2102", "--netns", "/run/netns/meshproxy-does-not-exist"}, "no such network namespace"},
		{"bad mark", []string{"--proxy-uid", "2102", "--tproxy-mark", "zero"}, "--tproxy-mark"},
		{"two actions", []string{"--proxy-uid", "2102", "--check", "--remove"}, "exclude each other"},
		{"same ports", []string{"--proxy-uid", "2102", "--inbound-port", "4140"}, "two different ports"},
		{"stray argument", []string{"--proxy-uid", "2102", "apply"}, `unexpected argument "apply"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runInitArgs(tc.args...)
			if code == 0 {
				t.Fatalf("exit code 0; want non-zero (stderr %q)", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q; want nothing", stdout)
			}
			if n := strings.Count(stderr, "\n"); n != 1 || !strings.HasPrefix(stderr, "init: ") {
				t.Errorf("stderr = %q; want one line starting with \"init: \"", stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr = %q; want it to contain %q", stderr, tc.want)
			}
		})
	}
}

func TestInitDryRun(t *testing.T) {
	code, stdout, stderr := runInitArgs("--proxy-uid", "2102", "--mode", "tproxy", "--dry-run",
		"--subnets-to-ignore", "198.18.0.0/15,2001:2::/48", "--outbound-ports-to-ignore", "25,3306")
	if code != 0 {
		t.Fatalf("exit code %d, stderr %q", code, stderr)
	}
	for _, want := range []string{
		"table inet meshproxy {",
		"tproxy ip to 127.0.0.1:4140",
		"tcp dport @outbound-ports-to-ignore return",
		"elements = { 198.18.0.0/15 }",
		"ip -4 rule add priority 32000 fwmark 0x539 lookup 133",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestInitNeedsNetAdmin(t *testing.T) {
	old := hasNetAdmin
	hasNetAdmin = func() bool { return false }
	defer func() { hasNetAdmin = old }()
	code, _, stderr := runInitArgs("--proxy-uid", "2102")
	if code == 0 || !strings.Contains(stderr, "needs CAP_NET_ADMIN (run as root)") {
		t.Errorf("code %d, stderr %q; want a CAP_NET_ADMIN error", code, stderr)
	}
	// The dry run needs no privilege.
	if code, _, stderr := runInitArgs("--proxy-uid", "2102", "--dry-run"); code != 0 {
		t.Errorf("dry run without CAP_NET_ADMIN: code %d, stderr %q", code, stderr)
	}
}

func TestInitApplyCheckRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and installs rules in it")
	}
	name := fmt.Sprintf("mpinit-%d", os.Getpid())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	orig.Close()
	runtime.UnlockOSThread()
	defer func() {
		ns.Close()
		netns.DeleteNamed(name)
	}()
	path := "/run/netns/" + name

	for _, mode := range []string{"redirect", "tproxy"} {
		base := []string{"--netns", path, "--proxy-uid", "2102", "--mode", mode}
		step := func(wantCode int, extra ...string) string {
			t.Helper()
			code, stdout, stderr := runInitArgs(append(append([]string{}, base...), extra...)...)
			if code != wantCode {
				t.Fatalf("%s init %v: code %d, want %d; stdout %q stderr %q", mode, extra, code, wantCode, stdout, stderr)
			}
			return stdout + stderr
		}
		if out := step(0); !strings.Contains(out, "applied "+mode+" mode") {
			t.Errorf("apply output %q lacks a summary", out)
		}
		step(0, "--check")
		if out := step(1, "--check", "--outbound-ports-to-ignore", "25"); !strings.Contains(out, "outbound-ports-to-ignore") {
			t.Errorf("check with other settings: %q; want the differing set named", out)
		}
		step(0, "--remove")
		if out := step(1, "--check"); !strings.Contains(out, "table inet meshproxy is missing") {
			t.Errorf("check after remove: %q", out)
		}
	}
}
