package admin

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// knownStatus is a Status with one of everything.
func knownStatus(now time.Time) Status {
	return Status{
		Version: "v0.9.0-test",
		Started: now.Add(-(3*time.Hour + 12*time.Minute)),
		Listeners: []ListenerStatus{
			{Direction: "outbound", Addr: "127.0.0.1:4140", Mode: "redirect", Accepted: 1234567, LoopsRefused: 0},
			{Direction: "inbound", Addr: "198.18.0.2:4143", Mode: "redirect", Accepted: 42, LoopsRefused: 3},
		},
		OpenConnections: map[string]int{"outbound": 7, "inbound": 2},
		Services: []ServiceStatus{
			{Name: "web.default.svc.cluster.local:8080", Endpoints: []EndpointStatus{
				{Addr: "198.18.1.10:8080", State: "ready", EWMA: 3200 * time.Microsecond, InFlight: 4},
				{Addr: "198.18.1.11:8080", State: "failing", EWMA: 950 * time.Millisecond, InFlight: 0},
			}},
			{Name: "api.default.svc.cluster.local:9090", Endpoints: []EndpointStatus{
				{Addr: "198.18.1.20:9090", State: "ready", EWMA: 12 * time.Millisecond, InFlight: 1},
			}},
		},
		MTLS: true,
		Certificate: &CertStatus{
			Identity:  "spiffe://cluster.local/ns/default/sa/web",
			Serial:    "5f3a9c01d2",
			NotBefore: now.Add(-4 * time.Hour),
			NotAfter:  now.Add(20 * time.Hour),
		},
	}
}

// statusServer starts an admin server on 127.0.0.1:0 with known status
// and traffic: 50 requests at 3 ms and 20 connections since a sample taken
// 5s "ago". It returns the base URL.
func statusServer(t *testing.T) (*Server, string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := newTrafficMetrics(reg, true)
	m.reqs.WithLabelValues("outbound").Add(1000)
	m.latency.WithLabelValues("outbound").Observe(0.003)
	lv := new(slog.LevelVar)
	lv.Set(slog.LevelWarn)
	now := time.Now()
	s := NewWithOptions(reg, Options{LogLevel: lv, Status: func() Status { return knownStatus(time.Now()) }})
	s.rates.sample(now.Add(-5 * time.Second))
	for range 50 {
		m.reqs.WithLabelValues("outbound").Inc()
		m.latency.WithLabelValues("outbound").Observe(0.003)
	}
	m.conns.WithLabelValues("inbound").Add(20)
	s.SetNotReady("waiting for a certificate")

	return s, "http://" + serveLoopback(t, s) + "/"
}

// serveLoopback serves s on 127.0.0.1:0 until the test ends (then shuts
// it down and waits for Serve) and returns the address.
func serveLoopback(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return l.Addr().String()
}

// wantOnPage are fragments the rendered page must show for knownStatus.
var wantOnPage = []string{
	"v0.9.0-test",
	"up 3h 12m",
	"NOT READY: waiting for a certificate",
	"spiffe://cluster.local/ns/default/sa/web",
	"5f3a9c01d2",
	"20h 0m left",
	"127.0.0.1:4140", "198.18.0.2:4143", "1,234,567",
	"web.default.svc.cluster.local:8080", "198.18.1.10:8080", "failing", "3.20 ms", "950.0 ms",
	"api.default.svc.cluster.local:9090",
	"requests/s", "connections/s", "response latency", "3.00 ms", "4.96 ms",
	"log level <b>warn</b>",
}

func TestStatusPage(t *testing.T) {
	_, url := statusServer(t)
	code, body := get(t, url)
	if code != 200 {
		t.Fatalf("GET / = %d", code)
	}
	for _, w := range wantOnPage {
		if !strings.Contains(body, w) {
			t.Errorf("status page lacks %q", w)
		}
	}
	if !strings.Contains(body, `<meta http-equiv="refresh" content="5">`) {
		t.Error("status page does not refresh itself every 5s")
	}
	for _, bad := range []string{"<script", "src=", "http://", "https://", "@import"} {
		if strings.Contains(body, bad) {
			t.Errorf("status page contains %q: it must be self-contained, without scripts", bad)
		}
	}
	if code, _ := get(t, url+"index.html"); code != 404 {
		t.Errorf("GET /index.html = %d; want 404 (the page is only at /)", code)
	}
}

func TestStatusPageEmptyAndEscaped(t *testing.T) {
	s := NewWithOptions(prometheus.NewRegistry(), Options{})
	code, body := do(t, s.Handler(), "GET", "/", "", remote, "admin.example")
	if code != 200 {
		t.Fatalf("GET / = %d", code)
	}
	for _, w := range []string{"no HTTP services discovered yet", "mTLS disabled", "no listeners", "no traffic metrics yet", "NOT READY: starting"} {
		if !strings.Contains(body, w) {
			t.Errorf("empty status page lacks %q", w)
		}
	}

	evil := `<script>alert("x")</script>`
	s = NewWithOptions(prometheus.NewRegistry(), Options{Status: func() Status {
		return Status{MTLS: true, Version: evil, Services: []ServiceStatus{{Name: evil}},
			Listeners: []ListenerStatus{{Direction: evil, Addr: evil}}}
	}})
	_, body = do(t, s.Handler(), "GET", "/", "", remote, "admin.example")
	if strings.Contains(body, "<script") {
		t.Errorf("status page does not escape provider strings:\n%s", body)
	}
	for _, w := range []string{"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", "no endpoints", "waiting for a certificate"} {
		if !strings.Contains(body, w) {
			t.Errorf("status page lacks %q", w)
		}
	}
}

func TestCertViewExpiry(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name              string
		notBefore, expiry time.Duration
		left, class       string
	}{
		{"fresh", -time.Hour, 23 * time.Hour, "23h 0m left", "good"},
		{"past renewal point", -20 * time.Hour, 4 * time.Hour, "4h 0m left", "warn"},
		{"no NotBefore, under an hour", 0, 30 * time.Minute, "30m 0s left", "warn"},
		{"expired", -25 * time.Hour, -90 * time.Second, "expired 1m 30s ago", "bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &CertStatus{NotAfter: now.Add(tt.expiry)}
			if tt.notBefore != 0 {
				c.NotBefore = now.Add(tt.notBefore)
			}
			v := certViewOf(c, now)
			if v.Left != tt.left || v.Class != tt.class {
				t.Errorf("left, class = %q, %q; want %q, %q", v.Left, v.Class, tt.left, tt.class)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{formatCount(0), "0"}, {formatCount(999), "999"}, {formatCount(1000), "1,000"}, {formatCount(1234567), "1,234,567"},
		{formatAge(0), "0s"}, {formatAge(59 * time.Second), "59s"}, {formatAge(61 * time.Minute), "1h 1m"}, {formatAge(50 * time.Hour), "2d 2h"},
		{formatSeconds(0.0042), "4.20 ms"}, {formatSeconds(0.25), "250.0 ms"}, {formatSeconds(2.5), "2.50 s"}, {formatSeconds(3600), "1h 0m"},
		{formatRate(0), "0"}, {formatRate(2.345), "2.35"}, {formatRate(123.45), "123.5"}, {formatRate(12345.6), "12,346"},
		{formatQuantile(quantileResult{}), "–"}, {formatQuantile(quantileResult{Value: 1, Above: true, OK: true}), "> 1.00 s"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q; want %q", tt.got, tt.want)
		}
	}
}

// chromium finds a headless-capable Chromium, or skips when there is none
// and the test cannot expect one (CI runs as root and installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs chromium (Debian package \"chromium\") or root: the status page is checked in a headless browser")
	}
	t.Fatal("chromium not found: install it with `apt-get install -y chromium` (CI's .ci/run does)")
	return ""
}

// runChromium runs headless Chromium with args, bounded in time, and
// returns its stdout.
func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + filepath.Join(dir, "profile")}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("chromium %v: timed out after 60s\nstderr:\n%s", args, stderr.String())
		}
		t.Fatalf("chromium %v: %v\nstderr:\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}

// TestStatusPageInBrowser renders the status page in headless Chromium and
// checks what an operator would see, then takes a screenshot. Set
// MESHPROXY_STATUS_PNG to a path to keep the screenshot.
func TestStatusPageInBrowser(t *testing.T) {
	bin := chromium(t)
	_, url := statusServer(t)

	dom := string(runChromium(t, bin, "--dump-dom", url))
	for _, w := range wantOnPage {
		if !strings.Contains(dom, w) {
			t.Errorf("rendered DOM lacks %q", w)
		}
	}
	// The request rate over the window is a positive number of requests/s.
	m := regexp.MustCompile(`([0-9][0-9.,]*)(?:</span>)? <span class="unit">requests/s</span>`).FindAllStringSubmatch(dom, -1)
	if len(m) != 2 {
		t.Fatalf("rendered DOM: found %d request rates; want 2 (recent, window)\n%s", len(m), dom)
	}
	if r, err := strconv.ParseFloat(strings.ReplaceAll(m[1][1], ",", ""), 64); err != nil || r <= 0 {
		t.Errorf("request rate over the window = %q; want a positive number", m[1][1])
	}
	if t.Failed() {
		t.Logf("rendered DOM:\n%s", dom)
	}

	png := filepath.Join(t.TempDir(), "page.png")
	runChromium(t, bin, "--screenshot="+png, "--window-size=1200,900", "--hide-scrollbars", url)
	b, err := os.ReadFile(png)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	if len(b) < 1000 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("screenshot is %d bytes, PNG header %v; want a real PNG", len(b), bytes.HasPrefix(b, []byte("\x89PNG")))
	}
	if keep := os.Getenv("MESHPROXY_STATUS_PNG"); keep != "" {
		if err := os.WriteFile(keep, b, 0o644); err != nil {
			t.Errorf("keeping screenshot: %v", err)
		}
	}
}
