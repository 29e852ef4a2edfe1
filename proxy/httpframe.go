package proxy

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// frameChecker follows the HTTP/1 message framing of a client's byte
// stream, as net/http reads it, to catch the request-smuggling shapes
// net/http accepts: it resolves Content-Length together with
// Transfer-Encoding by dropping Content-Length, and only then does the
// handler see the request. frameChecker records, per request head, whether
// its framing was ambiguous; the handler takes the verdicts in order.
//
// It stops following (and reports every later request as fine) when the
// stream stops being plain requests: an upgrade or CONNECT, a framing it
// does not understand, or a head past its size limit — the cases net/http
// rejects or tunnels on its own. It is safe for concurrent use.
type frameChecker struct {
	mu       sync.Mutex
	off      bool
	state    int
	line     []byte
	head     [][]byte // header lines of the head being read
	remain   int64    // bytes left in a body or chunk
	limit    int      // longest head followed
	headSize int
	verdicts []string // "" fine, else the reason the framing is ambiguous
}

const (
	fsHead = iota
	fsBody
	fsChunkSize
	fsChunkData
	fsChunkEnd
	fsTrailer
)

func newFrameChecker(limit int) *frameChecker { return &frameChecker{limit: limit} }

// observe follows the bytes p, read from the client.
func (f *frameChecker) observe(p []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(p) > 0 && !f.off {
		switch f.state {
		case fsBody, fsChunkData:
			n := int64(len(p))
			if n > f.remain {
				n = f.remain
			}
			f.remain -= n
			p = p[n:]
			if f.remain == 0 {
				if f.state == fsBody {
					f.state = fsHead
				} else {
					f.state = fsChunkEnd
				}
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			f.line = append(f.line, p...)
			p = nil
			if len(f.line) > f.limit {
				f.off = true
			}
			break
		}
		f.line = append(f.line, p[:i]...)
		p = p[i+1:]
		line := bytes.TrimSuffix(f.line, []byte("\r"))
		f.line = f.line[:0]
		f.onLine(line)
	}
}

// onLine advances the state machine by one line (without its CRLF).
func (f *frameChecker) onLine(line []byte) {
	switch f.state {
	case fsHead:
		if len(f.head) == 0 && len(line) == 0 {
			return // empty lines before a request line
		}
		f.headSize += len(line) + 2
		if f.headSize > f.limit {
			f.off = true
			return
		}
		if len(line) > 0 {
			f.head = append(f.head, bytes.Clone(line))
			return
		}
		f.endHead()
	case fsChunkSize:
		s, _, _ := strings.Cut(string(line), ";")
		n, err := strconv.ParseInt(strings.TrimSpace(s), 16, 64)
		switch {
		case err != nil || n < 0:
			f.off = true
		case n == 0:
			f.state = fsTrailer
		default:
			f.state, f.remain = fsChunkData, n
		}
	case fsChunkEnd:
		if len(line) != 0 {
			f.off = true
			return
		}
		f.state = fsChunkSize
	case fsTrailer:
		if len(line) == 0 {
			f.state = fsHead
		}
	}
}

// endHead judges a complete head and sets up reading its body.
func (f *frameChecker) endHead() {
	head := f.head
	f.head, f.headSize = nil, 0
	reqLine := string(head[0])
	var cls []string
	var te []string
	upgrade := strings.HasPrefix(reqLine, "CONNECT ")
	for _, l := range head[1:] {
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok {
			continue // net/http rejects it
		}
		v := strings.TrimSpace(string(value))
		switch {
		case strings.EqualFold(string(name), "Content-Length"):
			cls = append(cls, v)
		case strings.EqualFold(string(name), "Transfer-Encoding"):
			te = append(te, v)
		case strings.EqualFold(string(name), "Upgrade"):
			upgrade = true
		case len(name) > 0 && (name[len(name)-1] == ' ' || name[len(name)-1] == '\t'):
			// "Content-Length : 5": net/http rejects whitespace before the colon.
		}
	}
	verdict := ""
	switch {
	case len(te) > 0 && len(cls) > 0:
		verdict = "Content-Length together with Transfer-Encoding"
	case len(cls) > 1 && !allEqual(cls):
		verdict = "differing Content-Length headers"
	case len(te) > 0 && strings.HasSuffix(reqLine, " HTTP/1.0"):
		// net/http ignores it (no body), so a peer that honours it
		// would send its body as what net/http reads as the next
		// request; RFC 9112 section 6.1: faulty framing.
		verdict = "Transfer-Encoding in an HTTP/1.0 request"
	}
	f.verdicts = append(f.verdicts, verdict)
	switch {
	case verdict != "", upgrade:
		f.off = true // the connection closes, or becomes a tunnel
	case len(te) > 0:
		if !strings.EqualFold(te[len(te)-1], "chunked") || len(te) > 1 {
			f.off = true // net/http answers 501 and closes
			return
		}
		f.state = fsChunkSize
	case len(cls) > 0:
		n, err := strconv.ParseInt(cls[0], 10, 64)
		if err != nil || n < 0 {
			f.off = true
			return
		}
		if n > 0 {
			f.state, f.remain = fsBody, n
		}
	}
}

func allEqual(s []string) bool {
	for _, v := range s[1:] {
		if v != s[0] {
			return false
		}
	}
	return true
}

// next returns the verdict of the next request, "" when fine or unknown.
func (f *frameChecker) next() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.verdicts) == 0 {
		return ""
	}
	v := f.verdicts[0]
	f.verdicts = f.verdicts[1:]
	return v
}

// rejectAmbiguous answers 400 (and closes the connection) for requests
// whose framing their connection's frameChecker (reqInfo.frames) found
// ambiguous, and passes the others to next.
func rejectAmbiguous(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := infoOf(r).frames; f != nil {
			if reason := f.next(); reason != "" {
				w.Header().Set(headerProxyError, "bad-request")
				w.Header().Set("Connection", "close")
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusBadRequest)
				w.Write([]byte("400 Bad Request: " + reason + "\n"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
