package proxy

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
)

// headerTraceparent is the W3C Trace Context header.
const headerTraceparent = "Traceparent"

// traceContext is the part of a W3C traceparent the proxy keeps: the
// trace id, the proxy's own span id and the flags.
type traceContext struct {
	traceID [16]byte
	spanID  [8]byte
	flags   byte
}

// parseTraceparent parses a version-00 traceparent: 00-<32 hex trace
// id>-<16 hex parent id>-<2 hex flags>, lowercase, neither id all zeros.
func parseTraceparent(v string) (traceContext, bool) {
	var tc traceContext
	if len(v) != 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' || v[:2] != "00" {
		return tc, false
	}
	for _, c := range []byte(v) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return tc, false
		}
	}
	var parent [8]byte
	var flags [1]byte
	if _, err := hex.Decode(tc.traceID[:], []byte(v[3:35])); err != nil {
		return tc, false
	}
	if _, err := hex.Decode(parent[:], []byte(v[36:52])); err != nil {
		return tc, false
	}
	if _, err := hex.Decode(flags[:], []byte(v[53:55])); err != nil {
		return tc, false
	}
	if tc.traceID == ([16]byte{}) || parent == ([8]byte{}) {
		return tc, false
	}
	tc.flags = flags[0]
	return tc, true
}

// String renders tc as a traceparent value.
func (tc traceContext) String() string {
	b := make([]byte, 0, 55)
	b = append(b, "00-"...)
	b = hex.AppendEncode(b, tc.traceID[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, tc.spanID[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, []byte{tc.flags})
	return string(b)
}

func (tc traceContext) traceIDString() string { return hex.EncodeToString(tc.traceID[:]) }
func (tc traceContext) spanIDString() string  { return hex.EncodeToString(tc.spanID[:]) }

// randomNonZero fills b with random bytes, never all zeros.
func randomNonZero(b []byte) {
	for {
		for i := 0; i < len(b); i += 8 {
			var w [8]byte
			u := rand.Uint64()
			for j := range w {
				w[j] = byte(u >> (8 * j))
			}
			copy(b[i:], w[:])
		}
		for _, c := range b {
			if c != 0 {
				return
			}
		}
	}
}

// traceRequest gives r our span: a valid traceparent keeps its trace id
// and flags with a new span id (ours, the parent of the next hop), and
// tracestate passes untouched; an absent or invalid one is replaced by a
// new trace, sampled with probability rate, and tracestate is dropped
// with it (W3C: it must not be read without a valid traceparent).
func traceRequest(r *http.Request, rate float64) traceContext {
	tc, fresh := continueTrace(r.Header.Get(headerTraceparent), len(r.Header.Values(headerTraceparent)), rate)
	if fresh {
		r.Header.Del("Tracestate") // it belonged to a trace we do not continue
	}
	r.Header.Set(headerTraceparent, tc.String())
	return tc
}

// continueTrace gives a request our span, from its first traceparent
// value v of count: see traceRequest. fresh says a new trace started
// (tracestate must go).
func continueTrace(v string, count int, rate float64) (tc traceContext, fresh bool) {
	tc, ok := parseTraceparent(v)
	if !ok || count > 1 {
		fresh = true
		tc = traceContext{}
		randomNonZero(tc.traceID[:])
		if rate > 0 && rand.Float64() < rate {
			tc.flags = 0x01
		}
	}
	randomNonZero(tc.spanID[:])
	return tc, fresh
}
