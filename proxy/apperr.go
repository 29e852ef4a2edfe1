package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// errAppHeaderTimeout is the error of a delivery to the app whose
// response head did not come within the server side's response header
// timeout (see headerTimeoutRT).
var errAppHeaderTimeout = &appTimeoutError{}

// appTimeoutError is errAppHeaderTimeout's type: a net.Error whose
// Timeout is true, as net/http's own "timeout awaiting response headers".
type appTimeoutError struct{}

func (*appTimeoutError) Error() string   { return "timeout awaiting the app's response headers" }
func (*appTimeoutError) Timeout() bool   { return true }
func (*appTimeoutError) Temporary() bool { return false }

// headerTimeoutRT bounds rt's wait for a response head by d (no bound if
// d <= 0), for transports without a ResponseHeaderTimeout of their own
// (x/net/http2's). The body, once the head is in, is not bounded: its
// context ends when the body is closed.
func headerTimeoutRT(rt http.RoundTripper, d time.Duration) http.RoundTripper {
	if d <= 0 {
		return rt
	}
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		ctx, cancel := context.WithCancelCause(r.Context())
		t := time.AfterFunc(d, func() { cancel(errAppHeaderTimeout) })
		resp, err := rt.RoundTrip(r.WithContext(ctx))
		if !t.Stop() {
			// The timer fired: whatever came back is cut off by now.
			if err == nil {
				resp.Body.Close()
			}
			cancel(nil)
			return nil, fmt.Errorf("after %v: %w", d, errAppHeaderTimeout)
		}
		if err != nil {
			cancel(nil)
			return nil, err
		}
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: func() { cancel(nil) }}
		return resp, nil
	})
}

// appErrorHandler is the ReverseProxy ErrorHandler of the server side's
// net/http deliveries to the app on target: 502 app-unreachable when the
// app could not be reached (the client proxy may try another endpoint),
// 504 timeout when its response head did not come in time (logged at
// warn), else 502 upstream; each with meshproxy-error and no body.
func (s *Server) appErrorHandler(k *conn, target netip.AddrPort) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		status, reason := http.StatusBadGateway, "upstream"
		var ne net.Error
		switch {
		case isDialError(err):
			// The app never saw the request.
			reason = reasonAppUnreachable
		case r.Context().Err() == nil && errors.As(err, &ne) && ne.Timeout():
			status, reason = http.StatusGatewayTimeout, "timeout"
		}
		if status == http.StatusGatewayTimeout {
			s.log.Warn("http response timed out", "src", k.src, "target", target.String(),
				"timeout", s.inboundResponseTimeout(), "error", err)
		} else {
			s.log.Debug("http delivery failed", "src", k.src, "target", target.String(), "reason", reason, "error", err)
		}
		w.Header().Set(headerProxyError, reason)
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(status)
	}
}

// dropAppUnreachable removes meshproxy-error app-unreachable from an
// app's response (a ReverseProxy ModifyResponse of the server side's
// deliveries): only the server proxy may say that its app was not
// reached, which lets the client proxy send the request again, a POST
// included. An app that relays such an answer (a gateway, from its own
// proxy) has handled the request.
func dropAppUnreachable(resp *http.Response) error {
	for _, v := range resp.Header.Values(headerProxyError) {
		if strings.EqualFold(strings.TrimSpace(v), reasonAppUnreachable) {
			resp.Header.Del(headerProxyError)
			break
		}
	}
	return nil
}

// isAppUnreachable is dropAppUnreachable's test for the fast path: the
// field is meshproxy-error app-unreachable.
func isAppUnreachable(f h1Field) bool {
	return asciiEqualFold(f.name, headerProxyError) && asciiEqualFold(f.value, reasonAppUnreachable)
}
