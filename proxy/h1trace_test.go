package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// TestH1TraceContext: on the fast path a valid traceparent keeps its
// trace id and flags with our span id, and its tracestate passes; a
// malformed one, or two, start a new trace (valid, another trace id) and
// its tracestate goes (W3C: not read without a valid traceparent).
func TestH1TraceContext(t *testing.T) {
	type seen struct{ tp, ts []string }
	got := make(chan seen, 1)
	_, _, d, authority := h1Env(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Values(headerTraceparent), r.Header.Values("Tracestate")}
	}), 0)
	const valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	rc := dialRaw(t, d)
	for _, tc := range []struct {
		name, fields string
		keep         bool // the trace continues, tracestate passes
	}{
		{"valid", "Traceparent: " + valid + "\r\nTracestate: v=1\r\n", true},
		{"bad flags", "Traceparent: " + valid[:53] + "1\r\nTracestate: v=1\r\n", false},
		{"upper case", "Traceparent: " + strings.ToUpper(valid) + "\r\nTracestate: v=1\r\n", false},
		{"zero trace", "Traceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01\r\nTracestate: v=1\r\n", false},
		{"two", "Traceparent: " + valid + "\r\nTraceparent: " + valid + "\r\nTracestate: v=1\r\n", false},
		{"none", "Tracestate: v=1\r\n", false},
	} {
		rc.send("GET / HTTP/1.1\r\nHost: " + authority + "\r\n" + tc.fields + "\r\n")
		if resp, _ := rc.read("GET"); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: GET = %d", tc.name, resp.StatusCode)
		}
		s := <-got
		if len(s.tp) != 1 {
			t.Errorf("%s: the app saw traceparent %q; want one", tc.name, s.tp)
			continue
		}
		tp, ok := parseTraceparent(s.tp[0])
		switch {
		case !ok:
			t.Errorf("%s: the app saw traceparent %q; want a valid one", tc.name, s.tp[0])
		case tc.keep && (tp.traceIDString() != valid[3:35] || tp.spanIDString() == valid[36:52] || tp.flags != 1):
			t.Errorf("%s: the app saw traceparent %q; want trace %s, flags 01, a new span", tc.name, s.tp[0], valid[3:35])
		case !tc.keep && tp.traceIDString() == valid[3:35]:
			t.Errorf("%s: the app saw traceparent %q; want a new trace", tc.name, s.tp[0])
		}
		if tc.keep != (len(s.ts) == 1 && s.ts[0] == "v=1") || !tc.keep && len(s.ts) != 0 {
			t.Errorf("%s: the app saw tracestate %q; want it only with the trace continued", tc.name, s.ts)
		}
	}
}
