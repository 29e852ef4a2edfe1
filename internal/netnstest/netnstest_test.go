package netnstest

import (
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestLinkedPodsTalk(t *testing.T) {
	a := NewPod(t, "a")
	b := NewPod(t, "b")
	Link(t, a, b,
		[]netip.Prefix{netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("2001:2::1/64")},
		[]netip.Prefix{netip.MustParsePrefix("198.18.0.2/24"), netip.MustParsePrefix("2001:2::2/64")})

	for _, addr := range []string{"198.18.0.2:7000", "[2001:2::2]:7000"} {
		l, err := b.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen %s: %v", addr, err)
		}
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from b")
			c.Close()
		}()
		c, err := a.Dial("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s from a: %v", addr, err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		l.Close()
		if string(got) != "hello from b" {
			t.Errorf("read %q from %s; want %q", got, addr, "hello from b")
		}
	}

	// The pods are isolated from the host: the address is not reachable
	// from the test's own namespace.
	if _, err := os.Stat(a.Path); err != nil {
		t.Errorf("namespace path %s: %v", a.Path, err)
	}
}

func TestStartRunsInNamespace(t *testing.T) {
	p := NewPod(t, "exec")
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	var out strings.Builder
	cmd.Stdout = &out
	if err := p.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got == self || got == "" {
		t.Errorf("child namespace = %q; want one different from the test's %q", got, self)
	}
}

func TestCaptureSeesPayload(t *testing.T) {
	a := NewPod(t, "a")
	b := NewPod(t, "b")
	Link(t, a, b, []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}, []netip.Prefix{netip.MustParsePrefix("198.18.0.2/24")})
	capture := b.Capture(t, "eth0", 1<<20)
	l, err := b.Listen("tcp", "198.18.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := a.Dial("tcp", "198.18.0.2:7000", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "a-marker-that-crosses-the-wire")
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for !capture.Contains([]byte("a-marker-that-crosses-the-wire")) {
		if time.Now().After(deadline) {
			t.Fatalf("capture of %d bytes lacks the payload", capture.Bytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if capture.Contains([]byte("never-sent-marker")) {
		t.Error("capture contains bytes that were never sent")
	}
}
