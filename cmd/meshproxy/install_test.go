package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstallWithoutGo follows scripts/systemd/README.md: "make" as a
// user with Go, then "sudo make install", whose PATH (sudo's secure_path)
// usually has no Go. install must then install what make built, and
// without a built binary say what to do, not fail on a missing go.
func TestMakeInstallWithoutGo(t *testing.T) {
	needTools(t, "make", "go")
	const sudoPath = "/usr/sbin:/usr/bin:/sbin:/bin" // Debian's secure_path without /usr/local
	for _, d := range filepath.SplitList(sudoPath) {
		if _, err := os.Stat(filepath.Join(d, "go")); err == nil {
			t.Skipf("go is in %s: cannot make a PATH without it", d)
		}
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	mk := func(path string, args ...string) (string, error) {
		cmd := exec.Command("make", append([]string{"-C", repoRoot, "--no-print-directory", "BIN=" + bin}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+path)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// No binary built yet, no Go: a clear refusal.
	if out, err := mk(sudoPath, "install", "DESTDIR="+filepath.Join(dir, "early")); err == nil || !strings.Contains(out, "run make first") {
		t.Errorf("install with neither Go nor a built binary: %v\n%s\nwant a failure saying to run make first", err, out)
	}

	if out, err := mk(os.Getenv("PATH"), "build"); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	dest := filepath.Join(dir, "root")
	if out, err := mk(sudoPath, "install", "DESTDIR="+dest); err != nil {
		t.Fatalf("make install with a PATH without Go, after make: %v\n%s", err, out)
	}
	built, err := os.ReadFile(filepath.Join(bin, "meshproxy"))
	if err != nil {
		t.Fatal(err)
	}
	installed, err := os.ReadFile(filepath.Join(dest, "usr/local/bin/meshproxy"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(built, installed) {
		t.Error("the installed binary is not the one make built")
	}
}
