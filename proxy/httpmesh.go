package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// inboundHTTP holds the transports that deliver mesh-h2 streams to the
// local application: HTTP/1.1 with keep-alive, or h2c. They are made on
// first use. The zero value is ready.
type inboundHTTP struct {
	once sync.Once
	h1   *http.Transport
	h2c  *http2.Transport
	// h2 serves mesh-h2 connections; base carries its settings, and its
	// Shutdown sends every such connection a GOAWAY.
	h2   *http2.Server
	base *http.Server
	// fast tracks the HTTP/1 fast path's connections (both directions).
	fast h1Registry
}

func (in *inboundHTTP) init(s *Server) {
	in.once.Do(func() {
		dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			c, err := s.dial(ctx, ap)
			if err != nil {
				return nil, &connectError{err}
			}
			return c, nil
		}
		idle := s.cfg.idleTimeout()
		if idle == 0 || idle > 90*time.Second {
			idle = 90 * time.Second
		}
		if s.cfg.InboundPoolIdleTimeout > 0 {
			idle = s.cfg.InboundPoolIdleTimeout
		}
		in.h1 = &http.Transport{
			DialContext:           dial,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       idle,
			DisableCompression:    true,
			Proxy:                 nil,
			ResponseHeaderTimeout: s.inboundResponseTimeout(),
		}
		in.h2c = &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return dial(ctx, network, addr)
			},
			DisableCompression: true,
			IdleConnTimeout:    idle,
		}
		in.base = &http.Server{ErrorLog: log.New(io.Discard, "", 0), MaxHeaderBytes: DefaultMaxHeaderBytes}
		in.h2 = &http2.Server{IdleTimeout: s.cfg.idleTimeout(), MaxConcurrentStreams: 1000}
		http2.ConfigureServer(in.base, in.h2) // registers GOAWAY on base.Shutdown
	})
}

// shutdown asks every mesh-h2 connection to finish (GOAWAY): the peer
// sends no new streams and the connection closes once its streams end.
// The outbound HTTP/1 client connections likewise: idle ones close now,
// busy ones after their response.
func (in *inboundHTTP) shutdown(s *Server) {
	in.fast.shutdown()
	if s.http != nil {
		s.http.h1srv.shutdown()
	}
	in.init(s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // nothing to wait for: the connections are not base's
	in.base.Shutdown(ctx)
}

// closeIdle closes the idle connections to the application, if any.
func (in *inboundHTTP) closeIdle(s *Server) {
	in.init(s)
	in.h1.CloseIdleConnections()
	in.h2c.CloseIdleConnections()
}

// serveMeshH2 serves an inbound mesh connection on which the client
// proxy speaks HTTP/2 (transport header protocol mesh-h2): every stream is
// one request, delivered to target in the protocol its
// meshproxy-app-protocol header names (HTTP/1.1 unless "h2"), with
// x-forwarded-client-cert set to xfcc. Trailers pass both ways. It
// returns when the connection ends.
func (s *Server) serveMeshH2(k *conn, tc *tls.Conn, target netip.AddrPort, xfcc string) error {
	return s.serveH2(k, tc, target, xfcc, false)
}

// serveH2 serves c, an inbound connection on which the client speaks
// HTTP/2, as serveMeshH2 describes; appH2 says the client is the
// application itself (h2 prior knowledge: plaintext on an app port, or
// over the mesh with transport header protocol h2), whose requests all go
// to target as h2c whatever meshproxy-app-protocol they carry. Either
// way the app sees x-forwarded-client-cert as xfcc only (none when xfcc
// is empty), never a copy the client sent.
func (s *Server) serveH2(k *conn, c net.Conn, target netip.AddrPort, xfcc string, appH2 bool) error {
	s.in.init(s)
	h2c := headerTimeoutRT(s.in.h2c, s.inboundResponseTimeout())
	tr := roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		if appH2 || r.Header.Get(headerAppProtocol) == "h2" {
			r.Header.Del(headerAppProtocol)
			return h2c.RoundTrip(r)
		}
		r.Header.Del(headerAppProtocol)
		return s.in.h1.RoundTrip(r)
	})
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			keepForwarded(pr)
			if v := pr.In.Header.Get(headerAppProtocol); v != "" {
				pr.Out.Header.Set(headerAppProtocol, v) // read and removed by tr
			}
			// Request trailers arrive in In.Trailer when the body ends (Out
			// has a copy made before): share the map so they are sent on.
			pr.Out.Trailer = pr.In.Trailer
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = target.String()
			delXFCC(pr.Out.Header)
			if xfcc != "" {
				pr.Out.Header.Set(headerXFCC, xfcc)
			}
		},
		Transport:     tr,
		FlushInterval: 0, // ReverseProxy still flushes at once for streamed (unknown length, event-stream) responses
		BufferPool:    bytePool{},
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler:  s.appErrorHandler(k, target),
		// The app's answer may not pass for the proxy's own.
		ModifyResponse: dropAppUnreachable,
	}
	s.in.h2.ServeConn(c, &http2.ServeConnOpts{Context: k.ctx, BaseConfig: s.in.base, Handler: s.instrument(rp)})
	c.Close()
	return k.ctx.Err()
}

// reasonAppUnreachable is the meshproxy-error reason of a server proxy's
// 502 when it could not connect to its app: the request went no further,
// so the client proxy treats it as a connect failure of that endpoint.
const reasonAppUnreachable = "app-unreachable"

// isDialError reports whether err is a failure to connect (the request
// was not sent).
func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// roundTripperFunc is a function as an http.RoundTripper.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
