package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// Protocol is what protocol detection saw a client speak first.
type Protocol string

const (
	// ProtocolHTTP1 is an HTTP/1.x request line.
	ProtocolHTTP1 Protocol = "http/1"
	// ProtocolH2 is the HTTP/2 prior-knowledge connection preface.
	ProtocolH2 Protocol = "h2"
	// ProtocolTLS is a TLS ClientHello record.
	ProtocolTLS Protocol = "tls"
	// ProtocolOpaque is bytes that are none of the above.
	ProtocolOpaque Protocol = "opaque"
	// ProtocolMeshH2 is never detected: it is the transport header's
	// protocol for a mesh connection on which the client proxy speaks
	// HTTP/2, one stream per application request, whatever the
	// application spoke (the meshproxy-app-protocol request header says
	// which).
	ProtocolMeshH2 Protocol = "mesh-h2"
	// ProtocolNone means the client sent nothing before the timeout (or
	// closed without sending): likely a server-speaks-first protocol.
	ProtocolNone Protocol = "none"
)

// detectBufSize is the size of the detection buffer: enough for a request
// line with a long URL or a ClientHello with many extensions.
const detectBufSize = 4 << 10

// h2Preface is the HTTP/2 client connection preface (RFC 9113 section 3.4).
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// Detect reads the client's first bytes from c into buf, waiting at most
// timeout in all, and classifies them. It reads on while the bytes so far
// are too short to decide (a beginning of the h2 preface, of a TLS record
// header, of a request line: see undecided), so a client whose first
// write arrives split still gets its protocol; it returns as soon as the
// bytes decide, buf is full, or the timeout passes (then it classifies
// what came). It returns the protocol, the number of bytes read into buf
// (which the caller must forward before anything else), and an error only
// when the read failed, before any byte, for a reason other than the
// timeout. A client that closes its write side without sending yields
// ProtocolNone with io.EOF. The read deadline is cleared before Detect
// returns.
func Detect(c *net.TCPConn, timeout time.Duration, buf []byte) (Protocol, int, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return ProtocolNone, 0, err
	}
	n, err := readFirst(c, buf)
	if derr := c.SetReadDeadline(time.Time{}); derr != nil && err == nil {
		err = derr
	}
	if n > 0 {
		// Bytes win over any error that came with them; the copy loop
		// will see the error again.
		return classify(buf[:n]), n, nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ProtocolNone, 0, nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return ProtocolNone, 0, err
}

// readFirst reads a client's first bytes into buf, reading on while they
// are too short to decide (see undecided) and buf has room. The caller
// sets the read deadline (and may move it to cut the wait short). It
// returns the bytes read and the error that stopped the reading, if any:
// callers classify whatever bytes came, whatever the error.
func readFirst(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil || !undecided(buf[:n]) {
			return n, err
		}
		if m == 0 {
			return n, io.ErrNoProgress
		}
	}
	return n, nil
}

// classify names the protocol of a client's first bytes.
func classify(b []byte) Protocol {
	switch {
	case len(b) == 0:
		return ProtocolNone
	case isH2Preface(b):
		return ProtocolH2
	case isTLSClientHello(b):
		return ProtocolTLS
	case isHTTP1(b):
		return ProtocolHTTP1
	case undecided(b) && requestLineStart(b):
		// The reading stopped (the timeout, a full buffer, the end)
		// inside what begins a request line: a client that sends "G",
		// waits, then the rest, or a long target after a method not in
		// http1Methods. As bytes it would take the client's own
		// x-forwarded-client-cert to the app; the HTTP path reads the
		// rest (or refuses it) instead.
		return ProtocolHTTP1
	default:
		return ProtocolOpaque
	}
}

// isH2Preface reports whether b is the HTTP/2 preface or, when the read
// was short, a beginning of it long enough to tell it apart.
func isH2Preface(b []byte) bool {
	if len(b) >= len(h2Preface) {
		return bytes.HasPrefix(b, h2Preface)
	}
	return len(b) >= 4 && bytes.HasPrefix(h2Preface, b)
}

// isTLSClientHello checks the TLS record header: content type handshake
// (22), legacy record version 3.x, and (when present) handshake type
// ClientHello (1).
func isTLSClientHello(b []byte) bool {
	if len(b) < 3 || b[0] != 0x16 || b[1] != 0x03 || b[2] > 0x04 {
		return false
	}
	return len(b) < 6 || b[5] == 0x01
}

// http1Methods are the request methods accepted when the request line is
// cut short by the single read.
var http1Methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// isHTTP1 reports whether b starts with an HTTP/1.x request line
// "METHOD SP target SP HTTP/1.x CRLF". When the line is incomplete, a
// well-known method followed by a space is enough. It is as lenient as
// the servers behind the proxy, which take what it lets through as bytes:
// empty lines before the line are skipped (RFC 9112 section 2.2), and any
// "HTTP/" version, with spaces after it, counts (net/http serves
// HTTP/1.2, nginx allows trailing spaces); the proxy's HTTP path then
// serves or refuses the request, so a forged x-forwarded-client-cert
// never reaches the app.
func isHTTP1(b []byte) bool {
	b = bytes.TrimLeft(b, "\r\n")
	sp := bytes.IndexByte(b, ' ')
	if sp <= 0 || !isToken(b[:sp]) {
		return false
	}
	eol := bytes.IndexByte(b, '\n')
	if eol < 0 {
		return isKnownMethod(b[:sp])
	}
	line := bytes.TrimRight(b[:eol], " \t\r")
	return bytes.HasPrefix(line[bytes.LastIndexByte(line, ' ')+1:], []byte("HTTP/"))
}

// requestLineStart reports whether b, bytes undecided left (see
// undecided), begins a request line (after any empty lines): a
// beginning of a method in http1Methods, or "TOKEN SP target..." whose
// target begins as a request's does ("/", "*", or "http://" or
// "https://"). Other text stays opaque, such as a first message of
// words without a line end, or token bytes (bulk data such as hex).
func requestLineStart(b []byte) bool {
	b = bytes.TrimLeft(b, "\r\n")
	if len(b) == 0 {
		return false
	}
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		for _, m := range http1Methods {
			if strings.HasPrefix(m, string(b)) {
				return true
			}
		}
		return false
	}
	if sp == 0 || !isToken(b[:sp]) || sp+1 == len(b) {
		return false
	}
	target := b[sp+1:]
	if target[0] == '/' || target[0] == '*' {
		return true
	}
	for _, scheme := range []string{"http://", "https://"} {
		n := min(len(target), len(scheme))
		if string(target[:n]) == scheme[:n] {
			return true
		}
	}
	return false
}

// isKnownMethod reports whether b is one of http1Methods.
func isKnownMethod(b []byte) bool {
	return slices.Contains(http1Methods, string(b))
}

// isToken reports whether b is an RFC 9110 token (a method name).
func isToken(b []byte) bool {
	for _, c := range b {
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0:
		default:
			return false
		}
	}
	return len(b) > 0
}

// undecided reports whether b, the client's first bytes so far, is too
// short to classify: more bytes could still change what classify says. It
// holds for a proper beginning of the h2 preface, of a TLS record header up
// to the handshake type, and of a request line ("TOKEN", "TOKEN SP ...",
// after any empty lines) before its line ends, unless the method is a
// well-known one followed by a space (classify takes that for HTTP/1 at
// once).
func undecided(b []byte) bool {
	if len(b) < len(h2Preface) && bytes.HasPrefix(h2Preface, b) {
		return true
	}
	if b[0] == 0x16 {
		return len(b) < 6 && (len(b) < 2 || b[1] == 0x03) && (len(b) < 3 || b[2] <= 0x04)
	}
	// Empty lines before a request line are skipped (see isHTTP1).
	b = bytes.TrimLeft(b, "\r\n")
	if len(b) == 0 {
		return true
	}
	if bytes.IndexByte(b, '\n') >= 0 {
		return false
	}
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		return isToken(b)
	}
	if !isToken(b[:sp]) {
		return false
	}
	return !isKnownMethod(b[:sp])
}
