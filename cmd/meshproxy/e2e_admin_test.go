package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshproxy/internal/netnstest"
)

// adminDo sends method path to addr's admin port from inside pod p.
func adminDo(t *testing.T, p *netnstest.Pod, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := httpClient(p).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminEndpoints checks the admin port of a running proxy: mutating
// endpoints refuse callers from other hosts and work from loopback, and
// /shutdown drains and exits when it is enabled.
func TestAdminEndpoints(t *testing.T) {
	ca := newCADir(t, "cluster.local")
	l := newLab(t, labOptions{mode: "redirect",
		clientArgs: meshArgs(ca, clientID),
		serverArgs: meshArgs(ca, serverID, "--admin-shutdown")})
	remote := "http://" + hostPort(serverV4, 4191)
	local := "http://127.0.0.1:4191"

	// Read-only endpoints answer anyone (the admin port is reached
	// through a port-forward); the page names the certificate.
	if code, body := adminDo(t, l.client, "GET", remote+"/", ""); code != 200 || !strings.Contains(body, serverID) {
		t.Errorf("GET / from another host = %d; want 200 with %s", code, serverID)
	}
	if code, _ := adminDo(t, l.client, "GET", remote+"/debug/pprof/", ""); code != 200 {
		t.Errorf("GET /debug/pprof/ = %d; want 200", code)
	}
	// Mutations from another host are refused.
	for _, tc := range []struct{ method, path, body string }{
		{"PUT", "/log-level", "debug"},
		{"POST", "/shutdown", ""},
	} {
		if code, body := adminDo(t, l.client, tc.method, remote+tc.path, tc.body); code != http.StatusForbidden {
			t.Errorf("%s %s from another host = %d %q; want 403", tc.method, tc.path, code, body)
		}
	}
	// The client proxy has /shutdown off.
	if code, _ := adminDo(t, l.client, "POST", local+"/shutdown", ""); code == http.StatusAccepted {
		t.Error("POST /shutdown worked on a proxy without --admin-shutdown")
	}
	// From loopback the log level changes at run time.
	if code, body := adminDo(t, l.server, "PUT", local+"/log-level", "warn"); code != 200 {
		t.Fatalf("PUT /log-level from loopback = %d %q", code, body)
	}
	if _, body := adminDo(t, l.server, "GET", local+"/log-level", ""); strings.TrimSpace(body) != "warn" {
		t.Errorf("GET /log-level = %q; want warn", body)
	}
	// And /shutdown drains and exits 0.
	if code, body := adminDo(t, l.server, "POST", local+"/shutdown", ""); code != http.StatusAccepted {
		t.Fatalf("POST /shutdown from loopback = %d %q; want 202", code, body)
	}
	select {
	case <-l.serverProxy.done:
		if l.serverProxy.waitErr != nil {
			t.Errorf("exit after /shutdown = %v; want 0", l.serverProxy.waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("proxy still running 10s after /shutdown")
	}
}

// TestStatusPageInBrowser loads a running proxy's status page in headless
// Chromium, inside the proxy's pod, and checks what an operator sees.
func TestStatusPageInBrowser(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("needs chromium (Debian package \"chromium\"; CI's .ci/run installs it)")
	}
	ca := newCADir(t, "cluster.local")
	l := newLab(t, labOptions{mode: "redirect",
		clientArgs: meshArgs(ca, clientID),
		serverArgs: meshArgs(ca, serverID)})
	serveHTTP(t, l.server, "0.0.0.0:8080")
	for i := 0; i < 5; i++ {
		getBody(t, l.client, "http://"+hostPort(serverV4, 8080)+"/")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+filepath.Join(dir, "profile"),
		"--dump-dom", "http://127.0.0.1:4191/")
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.WaitDelay = 5 * time.Second
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := l.server.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	dom := out.String()
	for _, want := range []string{serverID, "0.0.0.0:4143", "127.0.0.1:4140", "inbound", "TCP connections"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("rendered DOM:\n%s", dom)
	}
}
