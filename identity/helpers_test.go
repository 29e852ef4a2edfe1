package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustCA(t testing.TB, td string) *CA {
	t.Helper()
	ca, err := NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// startManager makes a Manager for id signed by ca (LocalSource), trusting
// anchors (ca's own when nil), and runs it until the test ends. It waits
// for the first certificate.
func startManager(t testing.TB, ca *CA, id ID, ttl time.Duration, anchors []*x509.Certificate, onCert func(*x509.Certificate)) *Manager {
	t.Helper()
	if anchors == nil {
		anchors = ca.Anchors()
	}
	m, err := NewManager(ManagerConfig{ID: id, Source: &LocalSource{CA: ca}, Anchors: anchors, TTL: ttl,
		Log: quietLog(), OnCertificate: onCert, MinBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// handshakeResult is what the test server saw of one connection.
type handshakeResult struct {
	err   error
	state tls.ConnectionState
}

// startTLSServer serves cfg on a loopback port: every accepted connection is
// handshaken, reported on the returned channel, then echoed until closed.
func startTLSServer(t testing.TB, cfg *tls.Config) (addr string, results <-chan handshakeResult) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan handshakeResult, 64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, cfg)
				defer tc.Close()
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				err := tc.Handshake()
				select {
				case ch <- handshakeResult{err: err, state: tc.ConnectionState()}:
				default:
				}
				if err != nil {
					return
				}
				tc.SetDeadline(time.Time{})
				io.Copy(tc, tc)
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l.Addr().String(), ch
}

// dialAndEcho connects with cfg, completes the handshake, and checks an
// echo round trip (which also makes sure the server accepted us).
func dialAndEcho(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := echo(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func echo(c *tls.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func waitResult(t testing.TB, ch <-chan handshakeResult) handshakeResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("server saw no handshake within 10s")
	}
	return handshakeResult{}
}
