package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshproxy/identity"
)

// countHellos makes the inbound mesh config count the client hellos it
// receives (every handshake attempt, full or resumed).
func countHellos(n *atomic.Int64) func(*Mesh) {
	return func(m *Mesh) {
		c := m.ServerTLS.Clone()
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			n.Add(1)
			return nil, nil // go on with the config itself (and its ticket keys)
		}
		m.ServerTLS = c
	}
}

// TestMeshHandshakeNoRetryUntrusted: a server proxy the client does not
// trust costs one handshake attempt, not two (a full handshake that
// failed would fail again).
func TestMeshHandshakeNoRetryUntrusted(t *testing.T) {
	var hellos atomic.Int64
	e := newMeshEnv(t, meshOpts{clientCA: testCA(t), inMesh: countHellos(&hellos)})
	md := e.out.dialMesh(context.Background(), loopback, true, false)
	if md.err == nil {
		md.tc.Close()
		t.Fatal("handshake with an untrusted server succeeded")
	}
	if md.reason != reasonUntrusted {
		t.Errorf("reason = %q; want %q (%v)", md.reason, reasonUntrusted, md.err)
	}
	if n := hellos.Load(); n != 1 {
		t.Errorf("server saw %d client hellos; want 1 (no retry after a failed full handshake)", n)
	}
}

// TestMeshHandshakeNoRetryTimeout: a mesh port that accepts but never
// answers the hello costs one handshake timeout and one connection.
func TestMeshHandshakeNoRetryTimeout(t *testing.T) {
	silent, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var (
		accepted atomic.Int64
		wg       sync.WaitGroup
	)
	t.Cleanup(func() { silent.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			held = append(held, c) // read nothing, answer nothing
		}
	}()
	e := newMeshEnv(t, meshOpts{noInbound: true, outMesh: func(m *Mesh) {
		m.Port = uint16(silent.Addr().(*net.TCPAddr).Port)
		m.HandshakeTimeout = 200 * time.Millisecond
	}})
	md := e.out.dialMesh(context.Background(), loopback, true, false)
	if md.err == nil {
		md.tc.Close()
		t.Fatal("handshake with a silent server succeeded")
	}
	if md.reason != reasonTimeout {
		t.Errorf("reason = %q; want %q (%v)", md.reason, reasonTimeout, md.err)
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("silent server accepted %d connections; want 1 (no retry after a timeout)", n)
	}
}

// TestMeshHandshakeRetriesRefusedResumption: a resumed session the client
// refuses (as when the server certificate in the ticket expired between
// the offer and verification) is retried once with a full handshake, and
// the connection works. The refusal is simulated by the client's
// VerifyConnection failing resumed sessions while failResumed is set.
func TestMeshHandshakeRetriesRefusedResumption(t *testing.T) {
	var (
		hellos      atomic.Int64
		failResumed atomic.Bool
		refused     atomic.Int64
	)
	e := newMeshEnv(t, meshOpts{
		inMesh: countHellos(&hellos),
		outMesh: func(m *Mesh) {
			inner := m.ClientTLS
			m.ClientTLS = func(expected *identity.ID) *tls.Config {
				cfg := inner(expected)
				verify := cfg.VerifyConnection
				cfg.VerifyConnection = func(cs tls.ConnectionState) error {
					if cs.DidResume && failResumed.Load() {
						refused.Add(1)
						return fmt.Errorf("%w: test: the certificate in the resumed session expired", identity.ErrUntrusted)
					}
					return verify(cs)
				}
				return cfg
			}
		},
	})
	app, _ := countingApp(t, echo)
	// The first connection makes a session (its ticket arrives with the
	// echo).
	h := handleOne(t, e.out, app)
	if got := echoRoundTrip(t, h.client, []byte("first")); string(got) != "first" {
		t.Fatalf("first echo = %q", got)
	}
	h.waitDone(t)
	if n := hellos.Load(); n != 1 {
		t.Fatalf("first connection: %d client hellos; want 1", n)
	}

	failResumed.Store(true)
	h = handleOne(t, e.out, app)
	msg := []byte("after a refused resumption")
	if got := echoRoundTrip(t, h.client, msg); !bytes.Equal(got, msg) {
		t.Fatalf("echo after a refused resumption = %q; want %q (retried in full)", got, msg)
	}
	h.waitDone(t)
	if n := refused.Load(); n != 1 {
		t.Fatalf("the client refused %d resumed sessions; want 1 (did the second connection resume?)", n)
	}
	if n := hellos.Load(); n != 3 {
		t.Errorf("%d client hellos in all; want 3 (one, then a refused resumption and its full retry)", n)
	}
}
