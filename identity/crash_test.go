package identity

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestInitCASurvivesCrash: "meshproxy ca init" returning means the CA is on
// disk. A snapshot of an ext4 file system taken right after InitCA returns
// (what a power cut leaves: the journal, not the page cache) must hold a
// CA that loads, not missing or zero-length key files.
func TestInitCASurvivesCrash(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts loop-backed ext4 file systems")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("needs loop devices: %v", err)
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	// later: something else on the host makes the journal commit (an
	// fsync of an unrelated file) before the crash. Without a sync of its
	// own a renamed file then survives as an empty one.
	for _, later := range []bool{false, true} {
		crashAfterInitCA(t, later)
	}
}

func crashAfterInitCA(t *testing.T, later bool) {
	tmp := t.TempDir()
	img, snap := filepath.Join(tmp, "disk.img"), filepath.Join(tmp, "crash.img")
	mnt, snapMnt := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "crash")
	for _, d := range []string{mnt, snapMnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	mount := func(image, dir string) {
		t.Helper()
		run("mount", "-t", "ext4", "-o", "loop", image, dir)
		t.Cleanup(func() { exec.Command("umount", dir).Run() })
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(32 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	run("mkfs.ext4", "-q", "-F", img)
	mount(img, mnt)

	if _, err := InitCA(filepath.Join(mnt, "ca"), "", false); err != nil {
		t.Fatal(err)
	}
	if later {
		o, err := os.Create(filepath.Join(mnt, "other"))
		if err != nil {
			t.Fatal(err)
		}
		o.WriteString("x")
		if err := o.Sync(); err != nil {
			t.Fatal(err)
		}
		o.Close()
	}
	// The "crash": copy the disk as the kernel has written it so far.
	copyFile(t, img, snap)
	mount(snap, snapMnt)
	dir := filepath.Join(snapMnt, "ca")
	for _, name := range []string{AnchorFile, AnchorKeyFile, IssuerFile, IssuerKeyFile, TokenKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("crash (later commit %v): %v", later, err)
			continue
		}
		if fi.Size() == 0 {
			t.Errorf("crash (later commit %v): %s is empty", later, name)
		}
	}
	if _, err := LoadCA(dir); err != nil {
		t.Errorf("crash (later commit %v): the CA does not load: %v", later, err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLoadCAWithoutAccessToAnchorKey: the root (anchor) key signs nothing
// after "ca init", so the identity service and proxies running under their
// own user need no access to it. A CA directory chowned to that user with
// the anchor key left root-only (or moved offline) must load.
func TestLoadCAWithoutAccessToAnchorKey(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: changes file owners and runs a process as another user")
	}
	const uid = 65534 // nobody
	base := t.TempDir()
	for d := base; d != filepath.Dir(d) && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(base, "ca")
	if _, err := InitCA(dir, "", false); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", AnchorFile, IssuerFile, IssuerKeyFile, TokenKeyFile} {
		if err := os.Chown(filepath.Join(dir, name), uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	// AnchorKeyFile stays root's, mode 0600.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "identity.test")
	copyFile(t, self, bin)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestLoadCAHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "MESHPROXY_TEST_LOADCA_DIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CA loaded") {
		t.Fatalf("LoadCA as uid %d with %s root-only: %v\n%s", uid, AnchorKeyFile, err, out)
	}
}

// TestLoadCAHelper is run by TestLoadCAWithoutAccessToAnchorKey in a
// process of another user; on its own it does nothing.
func TestLoadCAHelper(t *testing.T) {
	dir := os.Getenv("MESHPROXY_TEST_LOADCA_DIR")
	if dir == "" {
		t.Skip("helper of TestLoadCAWithoutAccessToAnchorKey")
	}
	if _, err := LoadCA(dir); err != nil {
		t.Fatal(err)
	}
	t.Log("CA loaded")
}

// TestInitCADiskFull: "ca init" failing halfway (the disk full) leaves no
// partial CA behind, so that running it again once there is room works,
// instead of being refused as "already holds a CA, pass --force".
func TestInitCADiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a small tmpfs")
	}
	mnt := t.TempDir()
	// Room for three of the five files: tmpfs gives each a 4 KiB page.
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=12k"); err != nil {
		t.Skipf("mounting tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, 0) })
	dir := filepath.Join(mnt, "ca")
	_, err := InitCA(dir, "", false)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("InitCA on a full disk: err = %v; want ENOSPC", err)
	}
	t.Logf("disk full: %v", err)
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if _, err := InitCA(dir, "", false); err != nil {
		t.Fatalf("InitCA again once there is room: %v", err)
	}
	if _, err := LoadCA(dir); err != nil {
		t.Fatal(err)
	}
}
