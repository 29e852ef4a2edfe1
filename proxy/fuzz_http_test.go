package proxy

// FuzzHTTPRequest feeds arbitrary bytes, as one client connection, into
// the real outbound HTTP path (Server.Handle with HTTP on, a real Balancer
// and DNS server, a real upstream on loopback that records what it gets),
// and checks that nothing is smuggled: every request the upstream receives
// is one the client's bytes frame (net/http's strict parser, run on the
// same bytes, is the reference), with the same method, path and body, and
// answers come back in order; anything else the proxy answers itself with
// an error status. Handle must return and its goroutines end.
//
// The corpus in testdata/fuzz/FuzzHTTPRequest runs with every
// `go test ./proxy/`. To fuzz (one worker: the machine is shared):
//
//	go test -run '^$' -fuzz '^FuzzHTTPRequest$' -fuzztime 2m -parallel 1 ./proxy/
//
// New interesting inputs land in
// $(go env GOCACHE)/fuzz/meshproxy/proxy/FuzzHTTPRequest; copy the useful
// ones into testdata/fuzz/FuzzHTTPRequest (never a failing one: report it).

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fuzzRecord is one request as the recording upstream received it.
type fuzzRecord struct {
	method, path string
	body         []byte
	bodyErr      error
	te           []string
}

// recUpstream is a real HTTP/1.1 server on loopback that records every
// request it gets and answers 200 with X-Seq, the record's index.
type recUpstream struct {
	addr     netip.AddrPort
	mu       sync.Mutex
	recs     []fuzzRecord
	inflight atomic.Int64
}

// startRecUpstream starts a recording upstream; stop closes it (and
// drops any request that still arrives).
func startRecUpstream(tb testing.TB) (u *recUpstream, stop func()) {
	tb.Helper()
	u = &recUpstream{}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	u.addr = netip.MustParseAddrPort(ln.Addr().String())
	srv := &http.Server{Handler: http.HandlerFunc(u.serve), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	return u, func() { srv.Close() }
}

func (u *recUpstream) serve(w http.ResponseWriter, r *http.Request) {
	u.inflight.Add(1)
	defer u.inflight.Add(-1)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	u.mu.Lock()
	seq := len(u.recs)
	u.recs = append(u.recs, fuzzRecord{method: r.Method, path: r.URL.Path, body: body, bodyErr: err, te: r.TransferEncoding})
	u.mu.Unlock()
	if err != nil {
		panic(http.ErrAbortHandler) // no answer for a body cut short
	}
	w.Header().Set("X-Seq", strconv.Itoa(seq))
	io.WriteString(w, "ok")
}

// take returns the records since the last take, once no request is in
// flight (or after 5s).
func (u *recUpstream) take() []fuzzRecord {
	for end := time.Now().Add(5 * time.Second); u.inflight.Load() > 0 && time.Now().Before(end); {
		time.Sleep(100 * time.Microsecond)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.recs
	u.recs = nil
	return r
}

// fuzzHTTPEnv is the outbound HTTP proxy shared by every input. Each
// input gets its own upstream (a new port), so a request that reaches an
// upstream late is never taken for one of the next input's.
type fuzzHTTPEnv struct {
	srv *Server
	ln  *net.TCPListener
}

func newFuzzHTTPEnv(tb testing.TB) *fuzzHTTPEnv {
	z := newZoneDNS(tb)
	z.set("web.test.", "127.0.0.1")
	srv := NewServer(Outbound, Config{
		OpaquePorts: noOpaque,
		// Every input the fuzz body serves classifies as HTTP/1 from
		// its first bytes, so detection never waits this out unless
		// the machine is slow to deliver them; then a short timeout
		// (it was 20 ms) forwards the bytes as opaque (the upstream
		// then saw a raw target: path "" where the reference framed
		// "/", once under a loaded full run).
		DetectTimeout: time.Second,
		HeaderTimeout: 2 * time.Second,
		HTTP: &HTTPConfig{
			Balancer:              balancerFor(tb, z),
			ResponseHeaderTimeout: 2 * time.Second,
			Retries:               -1, // one attempt: the upstream sees each request once
			MaxIdlePerEndpoint:    2,
		},
	}, nil, nil)
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &fuzzHTTPEnv{srv: srv, ln: ln}
}

// refRequest is one request of the client's bytes as net/http's strict
// parser frames them, with its whole body.
type refRequest struct {
	req  *http.Request
	body []byte
}

// refParse frames in as a sequence of complete HTTP/1 requests, stopping
// before the first that does not parse or whose framing is ambiguous (the
// proxy must refuse that one and what follows), and after one that closes
// the connection. A last request whose head parses but whose body is cut
// short comes back as partial, with the body bytes before the cut.
func refParse(in []byte) (complete []refRequest, partial *refRequest) {
	rd := bytes.NewReader(in)
	br := bufio.NewReader(rd)
	for len(complete) < 64 {
		start := len(in) - rd.Len() - br.Buffered()
		req, err := http.ReadRequest(br)
		if err != nil || ambiguousFraming(in[start:]) {
			break
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return complete, &refRequest{req, body}
		}
		complete = append(complete, refRequest{req, body})
		if req.Close {
			break
		}
		if req.Method == http.MethodPost {
			// net/http's server skips up to 4 CR/LF bytes after a
			// POST (RFC 9112 2.2 allows ignoring empty lines before a
			// request line); the reference does the same.
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
	}
	return complete, nil
}

// samePath reports whether got, the path the upstream saw, is what req's
// target becomes: its own path, "/" for a target without one (such as
// "a:"), anything for CONNECT (its target goes out as the upstream's
// authority).
func samePath(got string, req *http.Request) bool {
	return req.Method == http.MethodConnect || got == refPath(req)
}

// refPath is the path the upstream should see for req: its own, or "/"
// for a target without one.
func refPath(req *http.Request) string {
	if req.URL.Path == "" {
		return "/"
	}
	return req.URL.Path
}

// ambiguousFraming reports whether the request head at the start of b
// frames its body two ways: Content-Length with Transfer-Encoding, or
// Content-Length headers that differ.
func ambiguousFraming(b []byte) bool {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
	if _, err := tp.ReadLine(); err != nil {
		return false
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return false
	}
	cl, te := h.Values("Content-Length"), h.Values("Transfer-Encoding")
	if len(cl) > 0 && len(te) > 0 {
		return true
	}
	for _, v := range cl {
		if strings.TrimSpace(v) != strings.TrimSpace(cl[0]) {
			return true
		}
	}
	return false
}

// goroutines returns the stacks of every goroutine, by their first line
// ("goroutine N [state]:" without the state).
func goroutines() map[string]string {
	buf := make([]byte, 256<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	all := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(g, " [")
		all[id] = g
	}
	return all
}

// proxyGoroutines returns the stacks of goroutines running proxy code
// that are not in before, other than idle pooled upstream connections and
// the test's own.
func proxyGoroutines(before map[string]string) []string {
	var out []string
	for id, g := range goroutines() {
		if _, old := before[id]; old {
			continue
		}
		// The shared HTTP/1 server's Serve loop lives as long as the
		// Server (it starts with the first connection), not per input.
		if strings.Contains(g, "meshproxy/proxy.") && !strings.Contains(g, "_test.go") &&
			!strings.Contains(g, "net/http.(*persistConn)") && !strings.Contains(g, "(*sharedServer).serve") {
			out = append(out, g)
		}
	}
	return out
}

// waitConnEnded fails t unless srv counts no open connection within 10s.
func waitConnEnded(t *testing.T, srv *Server) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); srv.OpenConnections() > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d connections still open 10s after the client closed", srv.OpenConnections())
		}
	}
}

// waitProxyGoroutines fails t unless the proxy goroutines started since
// before end within 5s.
func waitProxyGoroutines(t *testing.T, before map[string]string) {
	t.Helper()
	var left []string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if left = proxyGoroutines(before); len(left) == 0 {
			return
		}
	}
	t.Fatalf("%d proxy goroutines still running after Handle returned; first:\n%s", len(left), left[0])
}

// fuzzGrace is how long FuzzHTTPRequest waits, after the answers the
// reference expects, for one it does not: short while fuzzing (throughput),
// longer for the corpus run as tests.
func fuzzGrace() time.Duration {
	if fl := flag.Lookup("test.fuzz"); fl != nil && fl.Value.String() != "" {
		return 3 * time.Millisecond
	}
	return 25 * time.Millisecond
}

func FuzzHTTPRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n",
		"GET /a?b=c HTTP/1.1\r\nHost: web.test\r\n\r\nHEAD /h HTTP/1.1\r\nHost: web.test\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\nabcde",
		"POST /c HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET http://web.test/abs HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	e := newFuzzHTTPEnv(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 64<<10 {
			return
		}
		if classify(in[:min(len(in), detectBufSize)]) != ProtocolHTTP1 {
			// Not served as HTTP/1 (opaque bytes go through as they
			// are; h2c has FuzzDetect and the h2 library's own tests):
			// FuzzDetect covers the decision.
			return
		}
		ref, partial := refParse(in)
		up, stopUp := startRecUpstream(t)
		defer stopUp()

		before := goroutines()
		client, err := net.DialTCP("tcp4", nil, e.ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		sc, err := e.ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		handled := make(chan struct{})
		go func() {
			defer close(handled)
			e.srv.Handle(context.Background(), sc, up.addr)
		}()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			client.Write(in)
		}()

		// Read the answers: one per reference request, in order; then
		// a grace time for any answer the reference does not expect (a
		// smuggled request's); then half-close (the rest of the input is
		// incomplete or malformed) and read whatever else comes until the
		// proxy closes.
		type answer struct {
			status int
			seq    int // X-Seq from the upstream, or -1: the proxy's own
		}
		var answers []answer
		br := bufio.NewReader(client)
		halfClosed, graced := false, false
		halfClose := func() {
			if !halfClosed {
				<-wrote
				client.CloseWrite()
				halfClosed = true
			}
		}
		startGrace := func() {
			graced = true
			client.SetReadDeadline(time.Now().Add(fuzzGrace()))
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if len(ref) == 0 {
			startGrace()
		}
		for {
			var req *http.Request
			if i := len(answers); i < len(ref) {
				req = ref[i].req
			}
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				if !isTimeout(err) {
					break
				}
				switch {
				case halfClosed:
					t.Fatalf("no answer and no close 5s after the client half-closed (%d answers, %d reference requests)", len(answers), len(ref))
				case !graced:
					startGrace()
				default:
					halfClose()
					client.SetReadDeadline(time.Now().Add(5 * time.Second))
				}
				continue
			}
			_, berr := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
				continue // interim (100 Continue)
			}
			a := answer{status: resp.StatusCode, seq: -1}
			if v := resp.Header.Get("X-Seq"); v != "" {
				a.seq, _ = strconv.Atoi(v)
			}
			answers = append(answers, a)
			if berr != nil || resp.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			if len(answers) >= len(ref) && !graced {
				startGrace()
			}
		}
		halfClose()
		client.Close()
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatalf("Handle did not return 10s after the client closed")
		}
		// Handle returns once the shared HTTP server has the connection:
		// the connection itself must end too.
		waitConnEnded(t, e.srv)

		// The proxy's goroutines for this connection end.
		waitProxyGoroutines(t, before)
		recs := up.take()

		// Every answer from the upstream is for the reference request of
		// the same index, and carries what the client framed.
		claimed := map[int]bool{}
		for i, a := range answers {
			if a.seq < 0 {
				if a.status < 400 {
					t.Errorf("answer %d: status %d made by the proxy itself; want an error status", i, a.status)
				}
				continue
			}
			if i >= len(ref) {
				t.Fatalf("answer %d came from the upstream (record %d), but the client's bytes frame only %d requests: smuggled %+v", i, a.seq, len(ref), recs)
			}
			if a.seq >= len(recs) || claimed[a.seq] {
				t.Fatalf("answer %d names upstream record %d of %d (claimed before: %v)", i, a.seq, len(recs), claimed[a.seq])
			}
			claimed[a.seq] = true
			r, want := recs[a.seq], ref[i]
			if r.method != want.req.Method || !samePath(r.path, want.req) || !bytes.Equal(r.body, want.body) || r.bodyErr != nil {
				t.Errorf("request %d: the upstream got %s %q body %q (err %v); the client framed %s %q body %q",
					i, r.method, r.path, r.body, r.bodyErr, want.req.Method, refPath(want.req), want.body)
			}
			if len(r.te) > 1 || (len(r.te) == 1 && r.te[0] != "chunked") {
				t.Errorf("request %d reached the upstream with Transfer-Encoding %q", i, r.te)
			}
		}
		// A request the upstream got without an answer coming back can
		// only be the client's last one, its body cut short, and the
		// upstream must have seen the cut (never a shorter body that
		// looks complete).
		var extra []string
		refused := false
		for j, r := range recs {
			if claimed[j] {
				continue
			}
			if partial != nil && r.method == partial.req.Method && samePath(r.path, partial.req) &&
				bytes.HasPrefix(partial.body, r.body) && r.bodyErr != nil {
				partial = nil // at most once
				continue
			}
			// The proxy, stricter than net/http about a chunked body
			// (a trailer ended by a bare LF), may refuse the next
			// request's body midway: the upstream saw the cut, and the
			// client's last answer is the proxy's own 400 for it.
			k := len(answers)
			if k > 0 && answers[k-1].seq < 0 && answers[k-1].status == http.StatusBadRequest {
				k--
			}
			if !refused && k < len(ref) && r.method == ref[k].req.Method && samePath(r.path, ref[k].req) &&
				bytes.HasPrefix(ref[k].body, r.body) && r.bodyErr != nil && len(ref[k].req.TransferEncoding) > 0 {
				refused = true // at most once
				continue
			}
			extra = append(extra, fmt.Sprintf("%s %q body %q (body error %v)", r.method, r.path, r.body, r.bodyErr))
		}
		if len(extra) > 0 {
			t.Fatalf("the upstream got %d requests no answer came back for (%s); the client's bytes frame %d, answers %+v", len(extra), strings.Join(extra, "; "), len(ref), answers)
		}
	})
}

// rawUpstream is a loopback server that answers every request head it
// reads with the same bytes, then half-closes and waits for the proxy to
// close. open counts the connections the proxy has not closed yet; stop
// closes everything.
type rawUpstream struct {
	addr netip.AddrPort
	ln   *net.TCPListener
	wg   sync.WaitGroup
	mu   sync.Mutex
	cs   map[*net.TCPConn]bool
}

func startRawUpstream(t *testing.T, answer []byte) *rawUpstream {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{addr: ln.Addr().(*net.TCPAddr).AddrPort(), ln: ln, cs: map[*net.TCPConn]bool{}}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.cs[c] = true
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer func() {
					u.mu.Lock()
					delete(u.cs, c)
					u.mu.Unlock()
					c.Close()
				}()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				tp := textproto.NewReader(bufio.NewReader(c))
				if _, err := tp.ReadLine(); err != nil {
					return
				}
				if _, err := tp.ReadMIMEHeader(); err != nil {
					return
				}
				c.Write(answer)
				c.CloseWrite()
				io.Copy(io.Discard, c) // until the proxy closes
			}()
		}
	}()
	return u
}

func (u *rawUpstream) open() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.cs)
}

func (u *rawUpstream) stop() {
	u.ln.Close()
	u.mu.Lock()
	for c := range u.cs {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// FuzzHTTPResponse answers a plain GET, sent through the outbound HTTP
// path, with arbitrary upstream bytes, and checks what the client gets:
// either the response as net/http's strict parser reads those bytes (same
// status and body; a body cut short stays cut short), or the proxy's own
// 502; never anything more on the connection (no response splitting).
// Handle must return and its goroutines end. To fuzz:
//
//	go test -run '^$' -fuzz '^FuzzHTTPResponse$' -fuzztime 2m -parallel 1 ./proxy/
func FuzzHTTPResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"garbage",
	} {
		f.Add([]byte(s))
	}
	e := newFuzzHTTPEnv(f)
	f.Fuzz(func(t *testing.T, answer []byte) {
		if len(answer) > 64<<10 {
			return
		}
		req, _ := http.NewRequest(http.MethodGet, "http://web.test/", nil)
		var ref *http.Response
		var refBody []byte
		var refErr error
		for br := bufio.NewReader(bytes.NewReader(answer)); ; {
			ref, refErr = http.ReadResponse(br, req)
			if refErr != nil || ref.StatusCode >= 200 || ref.StatusCode == http.StatusSwitchingProtocols {
				break
			}
		}
		if refErr == nil {
			refBody, refErr = io.ReadAll(ref.Body)
		}

		up := startRawUpstream(t, answer)
		defer up.stop()
		before := goroutines()
		client, err := net.DialTCP("tcp4", nil, e.ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		sc, err := e.ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		handled := make(chan struct{})
		go func() {
			defer close(handled)
			e.srv.Handle(context.Background(), sc, up.addr)
		}()
		if _, err := io.WriteString(client, "GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(client)
		var resp *http.Response
		for {
			resp, err = http.ReadResponse(br, req)
			if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
				break
			}
		}
		if isTimeout(err) {
			t.Fatalf("no answer 5s after the request (upstream sent %q)", answer)
		}
		if err == nil {
			body, berr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			switch {
			case resp.Header.Get(headerProxyError) != "":
				if resp.StatusCode < 500 {
					t.Errorf("the proxy's own answer has status %d; want 5xx", resp.StatusCode)
				}
			case refErr != nil && ref == nil:
				t.Errorf("upstream bytes %q do not parse (%v), yet the client got %d %q", answer, refErr, resp.StatusCode, body)
			case resp.StatusCode != ref.StatusCode:
				t.Errorf("client got status %d; the upstream sent %d", resp.StatusCode, ref.StatusCode)
			case berr == nil && refErr != nil:
				t.Errorf("client got a complete body %q; the upstream's was cut short (%v) after %q", body, refErr, refBody)
			case berr == nil && !bytes.Equal(body, refBody):
				t.Errorf("client got body %q; the upstream sent %q", body, refBody)
			case berr != nil && !bytes.HasPrefix(refBody, body):
				t.Errorf("client got body %q (cut: %v), not a beginning of the upstream's %q", body, berr, refBody)
			}
			if berr == nil && resp.StatusCode != http.StatusSwitchingProtocols {
				// Nothing more may come on the connection: any byte
				// now is an answer nobody asked for.
				client.SetReadDeadline(time.Now().Add(fuzzGrace()))
				if b, err := br.Peek(1); err == nil {
					rest, _ := br.Peek(br.Buffered())
					t.Errorf("after the answer, unasked bytes %q (upstream sent %q)", append(b[:0:0], rest...), answer)
				}
			}
		}
		client.Close()
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatalf("Handle did not return 10s after the client closed")
		}
		// Handle returns once the shared HTTP server has the connection:
		// the connection itself must end too.
		waitConnEnded(t, e.srv)
		waitProxyGoroutines(t, before)
		// The upstream connection is closed too (the upstream closed its
		// side; nothing keeps it).
		for end := time.Now().Add(2 * time.Second); up.open() > 0 && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
		if n := up.open(); n > 0 {
			t.Fatalf("%d upstream connections still open 2s after Handle returned (upstream sent %q)", n, answer)
		}
	})
}
