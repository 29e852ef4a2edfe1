package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// slowThenEcho answers /slow once release is closed (saying on started
// that it began), and everything else at once, with the request's path.
func slowThenEcho(started chan<- struct{}, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, r.URL.Path)
	})
}

// TestH1RequestDuringExchange: a request that reaches the client proxy
// while it is still answering the one before it is served right after
// it, not left waiting for the idle timeout. The fast path serves a
// plain client's simple requests inside one wait on its socket and
// waits again without a read first; this is the request whose arrival
// that wait must not miss.
func TestH1RequestDuringExchange(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	_, _, d, authority := h1Env(t, slowThenEcho(started, release), 0)
	rc := dialRaw(t, d)
	// Far shorter than the idle timeout: a missed arrival fails here.
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.send("GET /first HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "/first" {
		t.Fatalf("first answer %d %q; want 200 /first", resp.StatusCode, body)
	}
	rc.send("GET /slow HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	<-started
	rc.send("GET /next HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // /next is in the proxy's socket, unread
	close(release)
	for _, want := range []string{"/slow", "/next"} {
		if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("answer %d %q; want 200 %q", resp.StatusCode, body, want)
		}
	}
	// And the wait goes on as usual after it.
	rc.send("GET /after HTTP/1.1\r\nHost: " + authority + "\r\n\r\n")
	if resp, body := rc.read("GET"); resp.StatusCode != 200 || body != "/after" {
		t.Fatalf("answer %d %q; want 200 /after", resp.StatusCode, body)
	}
}
