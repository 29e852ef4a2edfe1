package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// caFileRef is a CA file named in the install docs: "the CA's anchor.pem"
// or a path ".../ca/anchor.pem".
var caFileRef = regexp.MustCompile(`(?:CA's |ca/)([A-Za-z0-9_.-]+\.pem)`)

// TestInstallDocsNameCAFiles: every CA file the install docs (README.md,
// scripts/systemd) tell a user to pick up is one "meshproxy ca init" makes.
func TestInstallDocsNameCAFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var errb bytes.Buffer
	if code := dispatch([]string{"ca", "init", "--dir", dir}, io.Discard, &errb); code != 0 {
		t.Fatalf("ca init: exit %d: %s", code, errb.String())
	}
	docs, err := filepath.Glob(filepath.Join(systemdSrc, "*"))
	if err != nil {
		t.Fatal(err)
	}
	refs := 0
	for _, doc := range append(docs, filepath.Join(repoRoot, "README.md")) {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range caFileRef.FindAllStringSubmatch(string(b), -1) {
			refs++
			if _, err := os.Stat(filepath.Join(dir, m[1])); err != nil {
				t.Errorf("%s names the CA's %s, which ca init does not make", filepath.Base(doc), m[1])
			}
		}
	}
	if refs == 0 {
		t.Error("no CA file named in the install docs: the pattern no longer matches them")
	}
}
