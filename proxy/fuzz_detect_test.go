package proxy

// FuzzDetect fuzzes protocol detection: classify on arbitrary first bytes,
// and Detect on a real loopback TCP connection that gets the same bytes in
// two writes (split anywhere). The corpus in testdata/fuzz/FuzzDetect runs
// with every `go test ./proxy/`. To fuzz (one worker: the machine is
// shared):
//
//	go test -run '^$' -fuzz '^FuzzDetect$' -fuzztime 2m -parallel 1 ./proxy/
//
// New interesting inputs land in $(go env GOCACHE)/fuzz/meshproxy/proxy/FuzzDetect;
// copy the useful ones (and any crasher, once fixed) into testdata/fuzz/FuzzDetect.

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// detectLn is one loopback listener shared by every FuzzDetect input.
var detectLn struct {
	once sync.Once
	ln   *net.TCPListener
	err  error
}

// detectPair returns a connected loopback TCP pair (client, server).
func detectPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	detectLn.once.Do(func() {
		detectLn.ln, detectLn.err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	})
	if detectLn.err != nil {
		t.Fatal(detectLn.err)
	}
	client, err := net.DialTCP("tcp4", nil, detectLn.ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	server, err := detectLn.ln.AcceptTCP()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	return client, server
}

// isRequestLine is an independent, strict oracle for an HTTP/1.x request
// line: "token SP target SP HTTP/1.x", target visible ASCII.
func isRequestLine(line []byte) bool {
	parts := bytes.Split(line, []byte(" "))
	if len(parts) != 3 || !isToken(parts[0]) || len(parts[1]) == 0 {
		return false
	}
	for _, c := range parts[1] {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	v := string(parts[2])
	return v == "HTTP/1.1" || v == "HTTP/1.0"
}

// checkClassify asserts the invariants of classify on b.
func checkClassify(t *testing.T, b []byte) Protocol {
	t.Helper()
	got := classify(b)
	if again := classify(b); again != got {
		t.Fatalf("classify(%q) = %q then %q: not deterministic", b, got, again)
	}
	switch got {
	case ProtocolNone, ProtocolH2, ProtocolTLS, ProtocolHTTP1, ProtocolOpaque:
	default:
		t.Fatalf("classify(%q) = %q: not a detectable protocol", b, got)
	}
	if (len(b) == 0) != (got == ProtocolNone) {
		t.Fatalf("classify(%q) = %q; none is for no bytes, and only for that", b, got)
	}
	if len(b) == 0 {
		return got
	}
	// h2: the full preface, or a beginning of it of at least "PRI ".
	isH2 := bytes.HasPrefix(b, h2Preface) || (len(b) >= 4 && bytes.HasPrefix(h2Preface, b))
	if isH2 != (got == ProtocolH2) {
		t.Fatalf("classify(%q) = %q; h2 preface match is %v", b, got, isH2)
	}
	// TLS: a handshake record of version 3.0-3.4 whose handshake, when
	// the read reached it, is a ClientHello.
	isTLS := len(b) >= 3 && b[0] == 0x16 && b[1] == 3 && b[2] <= 4 && (len(b) < 6 || b[5] == 1)
	if isTLS != (got == ProtocolTLS) {
		t.Fatalf("classify(%q) = %q; TLS ClientHello match is %v", b, got, isTLS)
	}
	if got == ProtocolHTTP1 {
		// After any empty lines (which servers skip).
		rl := bytes.TrimLeft(b, "\r\n")
		sp := bytes.IndexByte(rl, ' ')
		if (sp <= 0 || !isToken(rl[:sp])) && !(sp < 0 && beginsMethod(rl)) {
			t.Fatalf("classify(%q) = http/1 without a method token and a space, or a beginning of a well-known method", b)
		}
	}
	if line, _, ok := bytes.Cut(b, []byte("\n")); ok && !isH2 {
		if isRequestLine(bytes.TrimSuffix(line, []byte("\r"))) && got != ProtocolHTTP1 {
			t.Fatalf("classify(%q) = %q; a valid request line is http/1", b, got)
		}
	}
	return got
}

// beginsMethod reports whether b is a non-empty beginning of a
// well-known method (what a client waiting after its first bytes sent).
func beginsMethod(b []byte) bool {
	for _, m := range []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"} {
		if len(b) > 0 && strings.HasPrefix(m, string(b)) {
			return true
		}
	}
	return false
}

func FuzzDetect(f *testing.F) {
	for _, s := range []string{
		"",
		"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
		"POST /x HTTP/1.0\n",
		"DELETE /very/long/pa",
		"M-SEARCH * HTTP/1.1\r\n",
		"\r\nGET / HTTP/1.1\r\n",
		"GET / HTTP/1.2 \r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
		"PRI * HTTP/1.1\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
		"\x16\x03\x01\x02\x00",
		"\x16\x03\x05\x00\x00\x01",
		"SSH-2.0-OpenSSH_9.6\r\n",
		"PING\r\n",
		"\x00\x01binary",
	} {
		for _, split := range []uint16{0, 1, 2, 5, 12} {
			f.Add([]byte(s), split)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		if len(in) > detectBufSize {
			in = in[:detectBufSize]
		}
		whole := checkClassify(t, in)
		// Every beginning classifies without breaking an invariant (that
		// is what a short first read sees), and a beginning that decides
		// decides as the whole input does, except a well-known method's
		// request line (after any empty lines) cut short before its
		// version.
		for i := range min(len(in), 64) {
			p := checkClassify(t, in[:i])
			cutShort := p == ProtocolHTTP1 && bytes.IndexByte(bytes.TrimLeft(in[:i], "\r\n"), '\n') < 0
			if !undecided(in[:i]) && !cutShort && p != whole {
				t.Fatalf("classify(%q) = %q, said decided; the whole %q is %q", in[:i], p, in, whole)
			}
		}
		if len(in) == 0 {
			return
		}

		// The same bytes on a real connection, in two writes.
		k := 1 + int(split)%len(in)
		client, server := detectPair(t)
		defer client.Close()
		defer server.Close()
		if _, err := client.Write(in[:k]); err != nil {
			t.Fatal(err)
		}
		rest := in[k:]
		done := make(chan error, 1)
		go func() {
			// The second write comes a little later: a split read.
			time.Sleep(time.Millisecond)
			_, err := client.Write(rest)
			done <- err
		}()
		// A complete input too short to decide ends with the timeout:
		// keep that one short.
		timeout, waits := 5*time.Second, undecided(in)
		if waits {
			timeout = 5 * time.Millisecond
		}
		buf := make([]byte, detectBufSize)
		proto, n, err := Detect(server, timeout, buf)
		if err != nil {
			t.Fatalf("Detect: %v", err)
		}
		if n == 0 || n > len(in) || !bytes.Equal(buf[:n], in[:n]) {
			t.Fatalf("Detect peeked %q; want a non-empty beginning of %q", buf[:n], in)
		}
		if want := classify(buf[:n]); proto != want {
			t.Fatalf("Detect = %q; classify of the same %d bytes = %q", proto, n, want)
		}
		if !waits && n < len(in) {
			if undecided(buf[:n]) {
				t.Fatalf("Detect stopped at %q, too short to decide, with %q still coming", buf[:n], in[n:])
			}
			// A decision does not change with more bytes (so does not
			// depend on how the client's writes were split), except a
			// well-known method's request line cut short, taken for
			// HTTP/1 before its version is seen.
			cutShort := proto == ProtocolHTTP1 && bytes.IndexByte(bytes.TrimLeft(buf[:n], "\r\n"), '\n') < 0
			if whole := classify(in); whole != proto && !cutShort {
				t.Fatalf("Detect of %q split at %d = %q from %q; the whole input is %q", in, k, proto, buf[:n], whole)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// Nothing lost, and the read deadline is cleared.
		tail := make([]byte, len(in)-n)
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(server, tail); err != nil || !bytes.Equal(tail, in[n:]) {
			t.Fatalf("after Detect read %q, %v; want %q", tail, err, in[n:])
		}
	})
}
