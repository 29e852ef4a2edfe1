package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// h1App is a loopback HTTP/1.1 app that counts its connections and tells
// when one closes.
type h1App struct {
	addr   string
	srv    *http.Server
	conns  atomic.Int32
	closed chan struct{} // one value per closed connection
}

func startH1App(t *testing.T, h http.Handler) *h1App {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &h1App{addr: ln.Addr().String(), closed: make(chan struct{}, 100)}
	a.srv = &http.Server{Handler: h, ConnState: func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			a.conns.Add(1)
		case http.StateClosed, http.StateHijacked:
			a.closed <- struct{}{}
		}
	}}
	go a.srv.Serve(ln)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

func newTestH1Client(fallback http.RoundTripper) *h1Client {
	var d net.Dialer
	return &h1Client{
		dial:     d.DialContext,
		fallback: func() http.RoundTripper { return fallback },
		maxIdle:  4,
	}
}

func h1Get(t *testing.T, c http.RoundTripper, ctx context.Context, url string) (string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// fallbackCounter is an http.Transport that counts its requests.
type fallbackCounter struct {
	http.Transport
	n atomic.Int32
}

func (f *fallbackCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	f.n.Add(1)
	return f.Transport.RoundTrip(r)
}

func TestH1ClientReusesOneConnection(t *testing.T) {
	app := startH1App(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hi "+r.Method)
	}))
	fb := &fallbackCounter{}
	defer fb.CloseIdleConnections()
	c := newTestH1Client(fb)
	defer c.closeIdle()
	for i := range 5 {
		body, err := h1Get(t, c, context.Background(), "http://"+app.addr+"/")
		if err != nil || body != "hi GET" {
			t.Fatalf("GET %d = %q, %v; want \"hi GET\"", i, body, err)
		}
	}
	if n := app.conns.Load(); n != 1 {
		t.Errorf("5 GETs in a row took %d connections, want 1", n)
	}
	// A request with a body goes to the fallback transport.
	req, _ := http.NewRequest(http.MethodPost, "http://"+app.addr+"/", strings.NewReader("x"))
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hi POST" || fb.n.Load() != 1 {
		t.Errorf("POST with a body = %q, fallback used %d times; want \"hi POST\" through the fallback once", b, fb.n.Load())
	}
}

func TestH1ClientServerClosedIdleConnection(t *testing.T) {
	app := startH1App(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	c := newTestH1Client(http.DefaultTransport)
	defer c.closeIdle()
	url := "http://" + app.addr + "/"
	if _, err := h1Get(t, c, context.Background(), url); err != nil {
		t.Fatal(err)
	}
	// The app closes its idle connection; the pooled one is now dead.
	app.srv.SetKeepAlivesEnabled(false) // closes idle connections
	select {
	case <-app.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the app did not close its idle connection")
	}
	app.srv.SetKeepAlivesEnabled(true)
	for i := range 3 {
		if body, err := h1Get(t, c, context.Background(), url); err != nil || body != "ok" {
			t.Fatalf("GET %d after the app closed the idle connection = %q, %v; want ok", i, body, err)
		}
	}
	if n := app.conns.Load(); n != 2 {
		t.Errorf("app saw %d connections, want 2 (the first, closed; one new)", n)
	}
}

func TestH1ClientIdleTimeoutAndAbandonedBody(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	app := startH1App(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			io.WriteString(w, big)
			return
		}
		io.WriteString(w, "ok")
	}))
	c := newTestH1Client(http.DefaultTransport)
	defer c.closeIdle()
	// A body closed before its end: the connection is not reused.
	req, _ := http.NewRequest(http.MethodGet, "http://"+app.addr+"/big", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case <-app.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("a connection whose response body was abandoned stayed open")
	}
	// An idle connection closes after the idle timeout.
	c.idleTimeout = 50 * time.Millisecond
	if body, err := h1Get(t, c, context.Background(), "http://"+app.addr+"/"); err != nil || body != "ok" {
		t.Fatalf("GET = %q, %v; want ok", body, err)
	}
	select {
	case <-app.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("an idle pooled connection stayed open past the idle timeout")
	}
	if n := app.conns.Load(); n != 2 {
		t.Errorf("app saw %d connections, want 2", n)
	}
}

func TestH1ClientCancelWhileWaiting(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	app := startH1App(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	c := newTestH1Client(http.DefaultTransport)
	defer c.closeIdle()
	ctx, cancel := context.WithCancelCause(context.Background())
	errTest := errors.New("test cancel")
	go func() {
		time.Sleep(50 * time.Millisecond)
		cancel(errTest)
	}()
	done := make(chan error, 1)
	go func() {
		_, err := h1Get(t, c, ctx, "http://"+app.addr+"/")
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errTest) {
			t.Errorf("GET cancelled while waiting for the response = %v, want the context's cause", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("GET did not return after its context was cancelled")
	}
	once.Do(func() { close(release) })
}
