package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshproxy/listener"
	"meshproxy/netfilter"
)

// The systemd units, the example settings and "make install" live in
// scripts/systemd and the Makefile; these tests install them into a
// temporary DESTDIR and check them with systemd-analyze and with the same
// parsers the binary uses.

const (
	repoRoot   = "../.."
	systemdSrc = repoRoot + "/scripts/systemd"
)

// needTools skips the test when a program it runs is missing.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			pkg := map[string]string{"systemd-analyze": "systemd", "make": "make", "go": "golang"}[tool]
			t.Skipf("needs %s (Debian package %q): %v", tool, pkg, err)
		}
	}
}

// makeInstall runs "make install" (or another target) with DESTDIR and
// BIN under a temporary directory and returns DESTDIR. Extra make
// variables go in vars.
func makeInstall(t *testing.T, destdir, target string, vars ...string) {
	t.Helper()
	needTools(t, "make", "go")
	args := append([]string{"-C", repoRoot, "--no-print-directory", target,
		"DESTDIR=" + destdir, "BIN=" + filepath.Join(filepath.Dir(destdir), "bin")}, vars...)
	cmd := exec.Command("make", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: line %q is neither a section nor key=value", path, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one returns the single value of section.key, failing if it is not set
// exactly once.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s = %q; want exactly one value", section, key, v)
	}
	return v[0]
}

// readEnvFile reads KEY=VALUE lines as systemd's EnvironmentFile= does
// for the simple, unquoted case our example uses.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not KEY=VALUE", path, line)
		}
		if strings.ContainsAny(v, `"'\`) {
			t.Fatalf("%s: %s: keep values unquoted; this test does not model systemd's quoting", path, k)
		}
		env[k] = v
	}
	return env
}

// execArgs splits an Exec*= command line the way systemd does for our
// units: unquoted words, and $VAR expanded into words from env.
func execArgs(t *testing.T, line string, env map[string]string) []string {
	t.Helper()
	var out []string
	for _, w := range strings.Fields(line) {
		if strings.HasPrefix(w, "$") {
			v, ok := env[w[1:]]
			if !ok {
				t.Fatalf("%q uses %s, which the environment file does not set", line, w)
			}
			out = append(out, strings.Fields(v)...)
			continue
		}
		out = append(out, w)
	}
	return out
}

func TestMakeInstall(t *testing.T) {
	tmp := t.TempDir()
	dest := filepath.Join(tmp, "root")
	makeInstall(t, dest, "install")

	for _, f := range []struct {
		path string
		mode fs.FileMode
		same string // source file it must equal, if any
	}{
		{"usr/local/bin/meshproxy", 0o755, ""},
		{"etc/systemd/system/meshproxy.service", 0o644, "meshproxy.service"},
		{"etc/systemd/system/meshproxy-init.service", 0o644, "meshproxy-init.service"},
		{"etc/sysusers.d/meshproxy.conf", 0o644, "meshproxy.sysusers"},
		{"etc/tmpfiles.d/meshproxy.conf", 0o644, "meshproxy.tmpfiles"},
		{"etc/meshproxy/meshproxy.yaml", 0o644, "meshproxy.yaml"},
		{"etc/meshproxy/init.env", 0o644, "init.env"},
		{"usr/local/share/doc/meshproxy/systemd.md", 0o644, "README.md"},
	} {
		p := filepath.Join(dest, f.path)
		st, err := os.Stat(p)
		if err != nil {
			t.Errorf("installed file: %v", err)
			continue
		}
		if got := st.Mode(); got != f.mode {
			t.Errorf("%s: mode %v; want %v", f.path, got, f.mode)
		}
		if f.same != "" {
			got, _ := os.ReadFile(p)
			want, err := os.ReadFile(filepath.Join(systemdSrc, f.same))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from scripts/systemd/%s (with the default PREFIX nothing should be rewritten)", f.path, f.same)
			}
		}
	}
	if st, err := os.Stat(filepath.Join(dest, "etc/meshproxy")); err == nil && st.Mode().Perm() != 0o755 {
		t.Errorf("etc/meshproxy: mode %v; want 0755", st.Mode().Perm())
	}

	// The installed binary is the real meshproxy.
	out, err := exec.Command(filepath.Join(dest, "usr/local/bin/meshproxy"), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "meshproxy ") {
		t.Errorf("installed meshproxy version = %q, %v; want \"meshproxy <version>\"", out, err)
	}

	t.Run("keeps existing settings", func(t *testing.T) {
		mine := []byte("# the operator's own settings\nmode: redirect\n")
		for _, f := range []string{"meshproxy.yaml", "init.env"} {
			if err := os.WriteFile(filepath.Join(dest, "etc/meshproxy", f), mine, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		makeInstall(t, dest, "install")
		for _, f := range []string{"meshproxy.yaml", "init.env"} {
			got, _ := os.ReadFile(filepath.Join(dest, "etc/meshproxy", f))
			if !bytes.Equal(got, mine) {
				t.Errorf("make install overwrote an existing etc/meshproxy/%s", f)
			}
		}
	})

	t.Run("uninstall", func(t *testing.T) {
		makeInstall(t, dest, "uninstall")
		var left []string
		filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(dest, p)
				left = append(left, rel)
			}
			return nil
		})
		want := []string{"etc/meshproxy/init.env", "etc/meshproxy/meshproxy.yaml"}
		if strings.Join(left, " ") != strings.Join(want, " ") {
			t.Errorf("after uninstall the files left are %q; want only the settings %q", left, want)
		}
	})
}

func TestMakeInstallPrefix(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "root")
	makeInstall(t, dest, "install", "PREFIX=/opt/meshproxy", "UNITDIR=/usr/lib/systemd/system")
	if _, err := os.Stat(filepath.Join(dest, "opt/meshproxy/bin/meshproxy")); err != nil {
		t.Errorf("binary not under PREFIX: %v", err)
	}
	for _, name := range []string{"meshproxy.service", "meshproxy-init.service"} {
		u := parseUnit(t, filepath.Join(dest, "usr/lib/systemd/system", name))
		for _, key := range []string{"ExecStart", "ExecStop"} {
			for _, v := range u["Service"][key] {
				if !strings.HasPrefix(v, "/opt/meshproxy/bin/meshproxy ") {
					t.Errorf("%s %s=%s; want the binary under PREFIX /opt/meshproxy", name, key, v)
				}
			}
		}
	}
}

// verifyOutput runs systemd-analyze verify on unit files and returns the
// lines it printed about them. verify exits 0 after mere warnings (an
// unknown key, an unparsable value), so the lines are what counts.
func verifyOutput(t *testing.T, units ...string) []string {
	t.Helper()
	cmd := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...)
	out, err := cmd.CombinedOutput()
	var ours []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		if strings.Contains(line, "meshproxy") {
			ours = append(ours, line)
		} else {
			t.Logf("systemd-analyze verify (not about our units): %s", line)
		}
	}
	if err != nil && len(ours) == 0 {
		ours = append(ours, "systemd-analyze verify failed: "+err.Error()+": "+string(out))
	}
	return ours
}

// unitsForVerify copies the installed units into dir with the binary path
// pointing into DESTDIR: verify insists that ExecStart= programs exist.
func unitsForVerify(t *testing.T, dest, dir string) []string {
	t.Helper()
	bin := filepath.Join(dest, "usr/local/bin/meshproxy")
	var paths []string
	for _, name := range []string{"meshproxy.service", "meshproxy-init.service"} {
		b, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system", name))
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/meshproxy"), []byte(bin))
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestSystemdAnalyze(t *testing.T) {
	needTools(t, "systemd-analyze")
	tmp := t.TempDir()
	dest := filepath.Join(tmp, "root")
	makeInstall(t, dest, "install")
	vdir := filepath.Join(tmp, "verify")
	if err := os.Mkdir(vdir, 0o755); err != nil {
		t.Fatal(err)
	}
	units := unitsForVerify(t, dest, vdir)

	t.Run("verify", func(t *testing.T) {
		if lines := verifyOutput(t, units...); len(lines) > 0 {
			t.Errorf("systemd-analyze verify complains:\n%s", strings.Join(lines, "\n"))
		}
	})

	// The check above must be able to fail: a unit with a typo is caught.
	t.Run("verify catches a broken unit", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "meshproxy.service")
		b, _ := os.ReadFile(units[0])
		b = bytes.Replace(b, []byte("NoNewPrivileges=yes"), []byte("NoNewPrivileges=yes\nProtectSytem=strict"), 1)
		if err := os.WriteFile(bad, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if lines := verifyOutput(t, bad, units[1]); len(lines) == 0 {
			t.Error("systemd-analyze verify said nothing about the unknown key ProtectSytem=")
		}
	})

	// Exposure scores (0-100; "systemd-analyze security" shows them /10).
	// Today: meshproxy.service 13, meshproxy-init.service 17. A unit that
	// loses its sandboxing goes over these.
	for i, threshold := range []int{20, 25} {
		name := filepath.Base(units[i])
		t.Run("security "+name, func(t *testing.T) {
			out, err := exec.Command("systemd-analyze", "security", "--offline=yes",
				"--threshold="+strconv.Itoa(threshold), units[i]).CombinedOutput()
			if err != nil {
				t.Errorf("systemd-analyze security %s: exposure above %d/100 (%v):\n%s", name, threshold, err, out)
			}
		})
	}
}

func TestSystemdUnitsAgree(t *testing.T) {
	svc := parseUnit(t, filepath.Join(systemdSrc, "meshproxy.service"))
	ini := parseUnit(t, filepath.Join(systemdSrc, "meshproxy-init.service"))

	if got := svc.one(t, "Service", "Type"); got != "notify" {
		t.Errorf("meshproxy.service Type=%s; want notify (the proxy calls sd_notify)", got)
	}
	if got := svc.one(t, "Unit", "Requires"); got != "meshproxy-init.service" {
		t.Errorf("meshproxy.service Requires=%s; want meshproxy-init.service", got)
	}
	if got := svc.one(t, "Unit", "After"); !strings.Contains(got, "meshproxy-init.service") {
		t.Errorf("meshproxy.service After=%s; want it after meshproxy-init.service", got)
	}
	if got := ini.one(t, "Unit", "Before"); !strings.Contains(got, "meshproxy.service") {
		t.Errorf("meshproxy-init.service Before=%s; want it before meshproxy.service", got)
	}
	if got := ini.one(t, "Service", "Type"); got != "oneshot" {
		t.Errorf("meshproxy-init.service Type=%s; want oneshot", got)
	}

	// One UID everywhere: the sysusers entry, the unit's user, init's
	// --proxy-uid, and the documented default.
	sysusers, err := os.ReadFile(filepath.Join(systemdSrc, "meshproxy.sysusers"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^u meshproxy (\d+) "[^"]+" (\S+)$`).FindSubmatch(sysusers)
	if m == nil {
		t.Fatalf("meshproxy.sysusers has no line u meshproxy UID \"...\" HOME:\n%s", sysusers)
	}
	uid := string(m[1])
	if uid != "2102" {
		t.Errorf("sysusers UID %s; want 2102, the proxy UID of DESIGN.md", uid)
	}
	if got := svc.one(t, "Service", "User"); got != "meshproxy" {
		t.Errorf("meshproxy.service User=%s; want meshproxy", got)
	}
	if home := string(m[2]); home != "/var/lib/"+svc.one(t, "Service", "StateDirectory") {
		t.Errorf("sysusers home %s is not the unit's StateDirectory", home)
	}

	env := readEnvFile(t, filepath.Join(systemdSrc, "init.env"))
	start := execArgs(t, ini.one(t, "Service", "ExecStart"), env)
	stop := execArgs(t, ini.one(t, "Service", "ExecStop"), env)
	if start[0] != "/usr/local/bin/meshproxy" || start[1] != "init" {
		t.Fatalf("meshproxy-init ExecStart=%q; want /usr/local/bin/meshproxy init ...", start)
	}
	icfg, _, act, err := parseInit(start[2:], io.Discard)
	if err != nil {
		t.Fatalf("init.env's flags: %v", err)
	}
	if act != actionApply {
		t.Errorf("ExecStart action %v; want apply", act)
	}
	if strconv.Itoa(int(icfg.ProxyUID)) != uid {
		t.Errorf("init.env --proxy-uid %d; want the meshproxy user's UID %s", icfg.ProxyUID, uid)
	}
	if _, _, act, err := parseInit(stop[2:], io.Discard); err != nil || act != actionRemove {
		t.Errorf("ExecStop %q: action %v, %v; want remove", stop, act, err)
	}

	// The proxy's settings: ExecStart's flags with the example config.
	args := execArgs(t, svc.one(t, "Service", "ExecStart"), nil)
	if args[0] != "/usr/local/bin/meshproxy" || args[1] != "run" {
		t.Fatalf("meshproxy.service ExecStart=%q; want /usr/local/bin/meshproxy run ...", args)
	}
	for i, a := range args {
		if a == "/etc/meshproxy/meshproxy.yaml" {
			args[i] = filepath.Join(systemdSrc, "meshproxy.yaml")
		}
	}
	rcfg, err := loadRunConfig(args[2:], io.Discard, func(string) string { return "" })
	if err != nil {
		t.Fatalf("meshproxy run with the example config: %v", err)
	}
	wantMode := map[netfilter.Mode]listener.Mode{netfilter.ModeRedirect: listener.ModeRedirect, netfilter.ModeTProxy: listener.ModeTProxy}[icfg.Mode]
	if rcfg.Mode != wantMode {
		t.Errorf("meshproxy.yaml mode %s but init.env --mode %s; they must match", rcfg.Mode, icfg.Mode)
	}
	if rcfg.Mode == listener.ModeTProxy && !strings.Contains(strings.Join(svc["Service"]["AmbientCapabilities"], " "), "CAP_NET_ADMIN") {
		t.Error("tproxy mode without AmbientCapabilities=CAP_NET_ADMIN: IP_TRANSPARENT would fail")
	}
	stopTimeout, err := time.ParseDuration(svc.one(t, "Service", "TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if stopTimeout <= rcfg.ShutdownGrace {
		t.Errorf("TimeoutStopSec=%v is not longer than shutdown-grace %v: systemd would kill the drain", stopTimeout, rcfg.ShutdownGrace)
	}
	if rcfg.Mesh.IdentityDir != "" && !strings.HasPrefix(rcfg.Mesh.IdentityDir, "/var/lib/"+svc.one(t, "Service", "StateDirectory")+"/") {
		t.Errorf("identity-dir %s is outside the unit's StateDirectory, which the meshproxy user owns", rcfg.Mesh.IdentityDir)
	}
}

// TestInitUnitCapabilities runs meshproxy-init.service's ExecStart,
// ExecStart again, and ExecStop, as installed, with init.env's flags, with
// only the capabilities the unit's CapabilityBoundingSet leaves, in a
// throwaway network namespace: the unit must work with what it grants.
func TestInitUnitCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and installs rules in it")
	}
	needTools(t, "setpriv")
	dest := filepath.Join(t.TempDir(), "root")
	makeInstall(t, dest, "install")
	u := parseUnit(t, filepath.Join(dest, "etc/systemd/system/meshproxy-init.service"))
	env := readEnvFile(t, filepath.Join(dest, "etc/meshproxy/init.env"))

	var caps []string // setpriv syntax: -all,+net_admin,...
	for _, c := range strings.Fields(u.one(t, "Service", "CapabilityBoundingSet")) {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	capList := strings.Join(append([]string{"-all"}, caps...), ",")

	// Every command runs in the same new namespace: the first one creates
	// it (Cloneflags) and the others enter it through /proc/PID/ns/net of
	// a sleeper kept alive for the purpose.
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := holder.Start(); err != nil {
		t.Fatalf("starting a process in a new network namespace: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	nsPath := "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/net"

	run := func(step, line string) {
		t.Helper()
		argv := execArgs(t, strings.ReplaceAll(line, "/usr/local/bin/meshproxy", filepath.Join(dest, "usr/local/bin/meshproxy")), env)
		// nsenter needs CAP_SYS_ADMIN, so it goes first and setpriv drops
		// to the unit's capabilities before meshproxy runs.
		args := append([]string{"--net=" + nsPath, "setpriv", "--bounding-set", capList,
			"--inh-caps", capList, "--ambient-caps", capList, "--"}, argv...)
		out, err := exec.Command("nsenter", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s with only %s: %v\n%s", step, u.one(t, "Service", "CapabilityBoundingSet"), err, out)
		}
	}
	needTools(t, "nsenter")
	run("ExecStart", u.one(t, "Service", "ExecStart"))
	run("ExecStart again", u.one(t, "Service", "ExecStart"))
	run("ExecStop", u.one(t, "Service", "ExecStop"))
}

// commentedSetting is an alternative setting in the example config,
// written "#key: value" with no space after the '#'.
var commentedSetting = regexp.MustCompile(`^#([a-z][a-z0-9-]*):`)

func TestExampleConfig(t *testing.T) {
	src := filepath.Join(systemdSrc, "meshproxy.yaml")
	noEnv := func(string) string { return "" }

	cfg, err := loadRunConfig([]string{"--config", src}, io.Discard, noEnv)
	if err != nil {
		t.Fatalf("loadRunConfig(example): %v", err)
	}
	if !cfg.Mesh.enabled() || cfg.Mesh.IdentityDir == "" {
		t.Errorf("example config: mesh enabled %v, identity-dir %q; want mTLS from a local CA", cfg.Mesh.enabled(), cfg.Mesh.IdentityDir)
	}

	// Every "#key: value" alternative is a real setting with a valid
	// value: switch them all on, in place of the keys they replace and of
	// identity-dir (the identity service alternative excludes it).
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	alt := map[string]bool{"identity-dir": true}
	for _, l := range lines {
		if m := commentedSetting.FindStringSubmatch(l); m != nil {
			alt[m[1]] = true
		}
	}
	var out []string
	for _, l := range lines {
		if m := commentedSetting.FindStringSubmatch(l); m != nil {
			out = append(out, l[1:])
			continue
		}
		if k, _, ok := strings.Cut(l, ":"); ok && alt[k] {
			continue
		}
		out = append(out, l)
	}
	altPath := filepath.Join(t.TempDir(), "alternatives.yaml")
	if err := os.WriteFile(altPath, []byte(strings.Join(out, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = loadRunConfig([]string{"--config", altPath}, io.Discard, noEnv)
	if err != nil {
		t.Fatalf("example config with its commented alternatives switched on: %v\n%s", err, strings.Join(out, "\n"))
	}
	if cfg.Mesh.IdentityAddr == "" || cfg.Mesh.IdentityDir != "" {
		t.Errorf("alternatives: identity-addr %q identity-dir %q; want the identity service variant", cfg.Mesh.IdentityAddr, cfg.Mesh.IdentityDir)
	}
}

// listenNotify listens on a unixgram socket as systemd does and points
// NOTIFY_SOCKET at it.
func listenNotify(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", addr)
	return c
}

// readNotify returns the next notification, failing after a generous
// deadline (this is not a speed check: the message is already queued).
func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reading the notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"path socket", func(t *testing.T) string { return filepath.Join(t.TempDir(), "notify") }},
		{"abstract socket", func(t *testing.T) string { return "@meshproxy-test-notify-" + strconv.Itoa(os.Getpid()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := listenNotify(t, tc.addr(t))
			for _, step := range []struct {
				call func() error
				want string
			}{
				{notifyReady, "READY=1"},
				{notifyReloading, "RELOADING=1\nMONOTONIC_USEC="},
				{notifyReady, "READY=1"},
				{func() error { return notifyStatus("waiting for a certificate") }, "STATUS=waiting for a certificate"},
				{notifyStopping, "STOPPING=1"},
			} {
				if err := step.call(); err != nil {
					t.Fatalf("notify %q: %v", step.want, err)
				}
				if got := readNotify(t, c); !strings.HasPrefix(got, step.want) {
					t.Errorf("notification = %q; want %q", got, step.want)
				}
			}
		})
	}

	t.Run("without systemd", func(t *testing.T) {
		t.Setenv("NOTIFY_SOCKET", "")
		os.Unsetenv("NOTIFY_SOCKET")
		for _, f := range []func() error{notifyReady, notifyReloading, notifyStopping} {
			if err := f(); err != nil {
				t.Errorf("without NOTIFY_SOCKET: %v; want no-op", err)
			}
		}
	})

	t.Run("socket gone", func(t *testing.T) {
		t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing"))
		if err := notifyReady(); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET") {
			t.Errorf("notifyReady to a missing socket = %v; want an error naming NOTIFY_SOCKET", err)
		}
	})
}

func TestWatchdog(t *testing.T) {
	c := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
	t.Setenv("WATCHDOG_USEC", "20000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { runWatchdog(ctx, slog.New(slog.DiscardHandler)); close(done) }()
	for i := 0; i < 3; i++ {
		if got := readNotify(t, c); got != "WATCHDOG=1" {
			t.Errorf("watchdog ping %d = %q; want WATCHDOG=1", i, got)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("runWatchdog did not return after its context ended")
	}

	t.Run("no watchdog", func(t *testing.T) {
		os.Unsetenv("WATCHDOG_USEC")
		done := make(chan struct{})
		go func() { runWatchdog(context.Background(), slog.New(slog.DiscardHandler)); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("runWatchdog without WATCHDOG_USEC did not return")
		}
	})
}
