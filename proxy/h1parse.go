package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
)

// The HTTP/1.1 fast path's strict parser. It accepts a subset of what
// net/http accepts and frames every message it accepts exactly as
// net/http does; anything else is left to net/http (a request: the
// connection is handed off) or refused (a response: 502).

// h1Field is one header field of a parsed head; name and value point
// into the head's buffer (the value without surrounding whitespace).
type h1Field struct {
	name, value []byte
}

// h1Msg is a parsed request or response head.
type h1Msg struct {
	// request line
	method, target []byte
	// status line
	status int
	http10 bool // the response's version is HTTP/1.0

	fields    []h1Field
	cl        int64 // Content-Length, -1 when absent
	chunked   bool  // Transfer-Encoding: chunked
	connClose bool  // Connection: close
	connToks  [][]byte
	host      []byte
	upgrade   bool // an Upgrade header (request: hand off)
	expect    bool // an Expect header (request: hand off)
	proxyErr  []byte
}

func (m *h1Msg) reset() {
	fields := m.fields[:0]
	toks := m.connToks[:0]
	*m = h1Msg{fields: fields, connToks: toks, cl: -1}
}

// Errors of head reading.
var (
	errHeadTooLarge = errors.New("http head larger than the buffer")
	errBadChunk     = errors.New("malformed chunked encoding")
)

// h1Reader reads a connection into a buffer it consumes from.
type h1Reader struct {
	c    net.Conn
	buf  []byte
	r, w int
}

func (b *h1Reader) buffered() []byte { return b.buf[b.r:b.w] }

// fill reads more bytes, making room first; errHeadTooLarge when the
// buffer is full of unconsumed bytes.
func (b *h1Reader) fill() (int, error) {
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
	if b.w == len(b.buf) {
		if b.r == 0 {
			return 0, errHeadTooLarge
		}
		copy(b.buf, b.buf[b.r:b.w])
		b.w -= b.r
		b.r = 0
	}
	n, err := b.c.Read(b.buf[b.w:])
	b.w += n
	if n > 0 {
		err = nil
	}
	if err == nil && n == 0 {
		err = io.ErrNoProgress
	}
	return n, err
}

// headEnd returns the length of the head at the start of b (through the
// empty line that ends it, a bare LF line ending included, as net/http
// reads heads), or -1 when b holds no complete head. from is where to
// resume the search.
func headEnd(b []byte, from int) int {
	for i := from; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
	return -1
}

// errNotStrict: a head being read already has a line the strict parser
// refuses, so there is no point waiting for its end.
var errNotStrict = errors.New("http head not strictly well-formed")

// readHead reads until b holds a complete head and returns its length.
// grow, when above len(b.buf), lets the buffer grow up to that size.
// While the head is incomplete, its lines so far are checked (the
// first with firstOK): a bad one ends the wait with errNotStrict.
func readHead(b *h1Reader, grow int, firstOK func([]byte) bool) (int, error) {
	from := 0
	for {
		if n := headEnd(b.buffered(), from); n >= 0 {
			return n, nil
		}
		if !partialHeadOK(b.buffered(), firstOK) {
			return -1, errNotStrict
		}
		from = max(b.w-b.r-3, 0)
		if b.r == 0 && b.w == len(b.buf) && len(b.buf) < grow {
			nb := make([]byte, min(2*len(b.buf), grow))
			copy(nb, b.buf[:b.w])
			b.buf = nb
		}
		if _, err := b.fill(); err != nil {
			return -1, err
		}
	}
}

// partialHeadOK checks the lines of an incomplete head: the complete
// ones strictly, the last one for bytes no head line may hold.
func partialHeadOK(b []byte, firstOK func([]byte) bool) bool {
	for i := 0; len(b) > 0; i++ {
		j := bytes.IndexByte(b, '\n')
		if j < 0 {
			for _, c := range b {
				if c < ' ' && c != '\t' && c != '\r' || c == 0x7f {
					return false
				}
			}
			return true
		}
		line, rest, ok := nextLine(b)
		if !ok {
			return false
		}
		if i == 0 {
			if !firstOK(line) {
				return false
			}
		} else if !fieldLineOK(line) {
			return false
		}
		b = rest
	}
	return true
}

// fieldLineOK checks a header line as parseFields does.
func fieldLineOK(line []byte) bool {
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || !isTokenBytes(name) {
		return false
	}
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// requestLineOK checks a request line's shape (method, target, version).
func requestLineOK(line []byte) bool {
	method, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || !isTokenBytes(method) {
		return false
	}
	target, version, ok := bytes.Cut(rest, []byte(" "))
	return ok && string(version) == "HTTP/1.1" && validTarget(target)
}

// statusLineOK checks a status line's shape.
func statusLineOK(line []byte) bool {
	var m h1Msg
	return parseResponseHead(append(append([]byte(nil), line...), "\r\n\r\n"...), &m)
}

// nextLine splits the first CRLF-terminated line off b; ok is false
// when the line has a bare CR or LF.
func nextLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, false
	}
	return line, b[i+1:], true
}

// isTokenByte reports an RFC 9110 tchar.
func isTokenByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return c < 0x80 && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

func isTokenBytes(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isTokenByte(c) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// validTarget accepts an origin-form request target net/http parses the
// same way: printable ASCII starting with '/', no fragment, valid
// percent escapes in the path.
func validTarget(t []byte) bool {
	if len(t) == 0 || t[0] != '/' {
		return false
	}
	inPath := true
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c <= ' ' || c >= 0x7f || c == '#':
			return false
		case c == '?':
			inPath = false
		case c == '%' && inPath:
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
		}
	}
	return true
}

// validHost accepts a Host value of host name or IP literal characters.
func validHost(h []byte) bool {
	if len(h) == 0 {
		return false
	}
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}

// parseDecimal parses a Content-Length: digits only, at most 18.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// parseFields parses the header lines of head (after its first line)
// into m; false when one is not strictly well-formed or the framing is
// not one the fast path relays (several Content-Lengths or
// Transfer-Encodings, both together, a coding other than chunked).
func parseFields(rest []byte, m *h1Msg) bool {
	var cls, tes int
	for {
		line, r, ok := nextLine(rest)
		if !ok {
			return false
		}
		rest = r
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || !isTokenBytes(name) {
			return false // also obs-fold and whitespace before the colon
		}
		value = trimOWS(value)
		for _, c := range value {
			if c < ' ' && c != '\t' || c == 0x7f {
				return false
			}
		}
		m.fields = append(m.fields, h1Field{name, value})
		switch {
		case len(name) == 4 && asciiEqualFold(name, "Host"):
			if m.host != nil {
				return false
			}
			m.host = value
		case asciiEqualFold(name, "Content-Length"):
			cls++
			n, ok := parseDecimal(value)
			if !ok || cls > 1 {
				return false
			}
			m.cl = n
		case asciiEqualFold(name, "Transfer-Encoding"):
			tes++
			if tes > 1 || !asciiEqualFold(value, "chunked") {
				return false
			}
			m.chunked = true
		case asciiEqualFold(name, "Connection"):
			for t := range bytes.SplitSeq(value, []byte(",")) {
				t = trimOWS(t)
				if asciiEqualFold(t, "close") {
					m.connClose = true
				}
				if len(t) > 0 {
					m.connToks = append(m.connToks, t)
				}
			}
		case asciiEqualFold(name, "Upgrade"):
			m.upgrade = true
		case asciiEqualFold(name, "Expect"):
			m.expect = true
		case asciiEqualFold(name, headerProxyError):
			m.proxyErr = value
		}
	}
	if len(rest) != 0 {
		return false
	}
	return !(m.chunked && m.cl >= 0)
}

// asciiEqualFold compares b and s ignoring ASCII case.
func asciiEqualFold[T []byte | string](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if x, y := b[i], s[i]; x != y && lowerASCII(x) != lowerASCII(y) {
			return false
		}
	}
	return true
}

// lowerASCII is c in lower case when it is an ASCII capital.
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// parseRequestHead parses a request head the fast path serves: an
// HTTP/1.1 request line with an origin-form target, one Host, and
// well-formed fields. false: hand the connection to net/http.
func parseRequestHead(head []byte, m *h1Msg) bool {
	m.reset()
	line, rest, ok := nextLine(head)
	if !ok {
		return false
	}
	method, line, ok := bytes.Cut(line, []byte(" "))
	if !ok || !isTokenBytes(method) {
		return false
	}
	target, version, ok := bytes.Cut(line, []byte(" "))
	if !ok || string(version) != "HTTP/1.1" || !validTarget(target) {
		return false
	}
	m.method, m.target = method, target
	if !parseFields(rest, m) || !validHost(m.host) {
		return false
	}
	return true
}

// parseResponseHead parses a response head (HTTP/1.1 or 1.0, a status
// from 100 to 599). false: the upstream's answer is refused (502).
func parseResponseHead(head []byte, m *h1Msg) bool {
	m.reset()
	line, rest, ok := nextLine(head)
	if !ok || len(line) < 12 {
		return false
	}
	switch string(line[:9]) {
	case "HTTP/1.1 ":
	case "HTTP/1.0 ":
		m.http10 = true
	default:
		return false
	}
	code := line[9:12]
	if len(line) > 12 && line[12] != ' ' {
		return false
	}
	for _, c := range line[12:] {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	n, ok := parseDecimal(code)
	if !ok || n < 100 || n > 599 {
		return false
	}
	m.status = int(n)
	// RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty
	// framing (net/http ignores it and reads to the close): refused.
	return parseFields(rest, m) && !(m.http10 && m.chunked)
}

// hopByHop reports a header a proxy does not pass on (as
// httputil.ReverseProxy), or one the message's Connection header names
// (but never the framing fields or Host, which net/http keeps outside
// the header map ReverseProxy drops them from: a request without its
// Host would get a 400 from the upstream).
func (m *h1Msg) hopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return asciiEqualFold(name, "Te")
	case 7:
		return asciiEqualFold(name, "Upgrade")
	case 10:
		if asciiEqualFold(name, "Connection") || asciiEqualFold(name, "Keep-Alive") {
			return true
		}
	case 16:
		if asciiEqualFold(name, "Proxy-Connection") {
			return true
		}
	case 18:
		if asciiEqualFold(name, "Proxy-Authenticate") {
			return true
		}
	case 19:
		if asciiEqualFold(name, "Proxy-Authorization") {
			return true
		}
	}
	for _, t := range m.connToks {
		if len(t) == len(name) && asciiEqualFold(name, string(t)) && !asciiEqualFold(t, "Transfer-Encoding") &&
			!asciiEqualFold(t, "Content-Length") && !asciiEqualFold(t, "Host") {
			return true
		}
	}
	return false
}

// chunkScanner follows a chunked body as net/http's chunked reader and
// trailer reader do, to find where it ends.
type chunkScanner struct {
	state  int
	remain uint64
}

const (
	csSize = iota
	csData
	csDataEnd
	csTrailerStart
	csTrailer
	csDone
)

// maxChunkLine is net/http's longest chunk-size line (its 4 KiB read
// buffer), CRLF included; also the longest trailer block.
const maxChunkLine = 4096

// scan consumes whole units of the chunked body from b and returns how
// many bytes of b belong to the body; the body ended when s.state is
// csDone. Fewer bytes than len(b) (and not done) means more are needed.
func (s *chunkScanner) scan(b []byte) (int, error) {
	i := 0
	for i < len(b) && s.state != csDone {
		switch s.state {
		case csSize:
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				if len(b)-i >= maxChunkLine {
					return i, errBadChunk
				}
				return i, nil
			}
			line := b[i : i+j+1]
			if len(line) > maxChunkLine {
				return i, errBadChunk
			}
			cr := bytes.IndexByte(line, '\r')
			if cr < 0 || cr != len(line)-2 {
				return i, errBadChunk
			}
			p := trimOWSRight(line[:len(line)-2])
			p, _, _ = bytes.Cut(p, []byte(";"))
			n, ok := parseHex(p)
			if !ok {
				return i, errBadChunk
			}
			i += len(line)
			if n == 0 {
				s.state = csTrailerStart
			} else {
				s.state, s.remain = csData, n
			}
		case csData:
			n := uint64(len(b) - i)
			if n > s.remain {
				n = s.remain
			}
			i += int(n)
			s.remain -= n
			if s.remain == 0 {
				s.state = csDataEnd
			}
		case csDataEnd:
			if len(b)-i < 2 {
				return i, nil
			}
			if b[i] != '\r' || b[i+1] != '\n' {
				return i, errBadChunk
			}
			i += 2
			s.state = csSize
		case csTrailerStart:
			if len(b)-i < 2 {
				return i, nil
			}
			if b[i] == '\r' && b[i+1] == '\n' {
				i += 2
				s.state = csDone
				continue
			}
			s.state = csTrailer
		case csTrailer:
			// net/http wants a CRLFCRLF within its buffer, then reads
			// header lines to the first empty one. The trailer goes on
			// to the peer as it is, so it must be strictly formed (CRLF
			// lines, well-formed fields): a bare LF line, which net/http
			// takes for the end, another parser may not, and would read
			// the next request as trailer fields.
			t := b[i:]
			k := bytes.Index(t, []byte("\r\n\r\n"))
			if k < 0 || k+4 > maxChunkLine {
				if len(t) >= maxChunkLine || k >= 0 || bytes.IndexByte(t, '\n') >= 0 && !partialTrailerOK(t) {
					return i, errBadChunk
				}
				return i, nil
			}
			if !trailerOK(t[:k+4]) {
				return i, errBadChunk
			}
			i += k + 4
			s.state = csDone
		}
	}
	return i, nil
}

// trailerOK checks a complete trailer block (fields and the empty line,
// ending at the first CRLFCRLF): every line CRLF-terminated and a
// well-formed field.
func trailerOK(t []byte) bool {
	for {
		line, rest, ok := nextLine(t)
		if !ok {
			return false
		}
		if len(line) == 0 {
			return len(rest) == 0
		}
		if !fieldLineOK(line) {
			return false
		}
		t = rest
	}
}

// partialTrailerOK checks the complete lines of a trailer block being
// read.
func partialTrailerOK(t []byte) bool {
	for {
		j := bytes.IndexByte(t, '\n')
		if j < 0 {
			return true
		}
		line, rest, ok := nextLine(t)
		if !ok || len(line) == 0 || !fieldLineOK(line) {
			return false
		}
		t = rest
	}
}

func trimOWSRight(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// parseHex parses a chunk size as net/http does: 1 to 16 hex digits.
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(d)
	}
	return n, true
}
