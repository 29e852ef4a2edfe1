package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestMutualTLS(t *testing.T) {
	ca := mustCA(t, "")
	foreignCA := mustCA(t, "")         // same trust domain, untrusted anchor
	otherTD := mustCA(t, "other.test") // trusted anchor, other trust domain
	anchors := append(ca.Anchors(), otherTD.Anchors()...)

	srvID := MustParseID("spiffe://cluster.local/ns/default/sa/server")
	cliID := MustParseID("spiffe://cluster.local/ns/default/sa/client")
	server := startManager(t, ca, srvID, time.Hour, anchors, nil)
	client := startManager(t, ca, cliID, time.Hour, nil, nil)
	addr, results := startTLSServer(t, server.ServerTLSConfig())

	t.Run("good", func(t *testing.T) {
		c, err := dialAndEcho(addr, client.ClientTLSConfig(&srvID))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := waitResult(t, results)
		if r.err != nil {
			t.Fatalf("server handshake: %v", r.err)
		}
		if got, err := PeerID(r.state); err != nil || got != cliID {
			t.Errorf("server PeerID = %v, %v; want %v", got, err, cliID)
		}
		if got, _ := PeerID(c.ConnectionState()); got != srvID {
			t.Errorf("client PeerID = %v; want %v", got, srvID)
		}
		if p := r.state.NegotiatedProtocol; p != ALPN {
			t.Errorf("ALPN = %q; want %q", p, ALPN)
		}
		if v := r.state.Version; v != tls.VersionTLS13 {
			t.Errorf("version = %x; want TLS 1.3", v)
		}
	})

	// clientWith returns a client config presenting cert (nil: none).
	clientWith := func(cert *tls.Certificate) *tls.Config {
		cfg := client.ClientTLSConfig(&srvID)
		cfg.ClientSessionCache = nil
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}
		return cfg
	}
	foreignCert, _ := foreignCA.Issue(cliID, time.Hour)
	otherTDCert, _ := otherTD.Issue(MustParseID("spiffe://other.test/ns/default/sa/client"), time.Hour)
	past := *ca
	past.now = func() time.Time { return time.Now().Add(-48 * time.Hour) }
	expiredCert, err := past.Issue(cliID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tls12 := client.ClientTLSConfig(&srvID)
	tls12.MaxVersion = tls.VersionTLS12
	tls12.MinVersion = tls.VersionTLS12
	noALPN := client.ClientTLSConfig(&srvID)
	noALPN.NextProtos = nil

	refusals := []struct {
		name string
		cfg  *tls.Config
		want error // nil: any error
	}{
		{"client cert from another CA", clientWith(foreignCert), ErrUntrusted},
		{"expired client cert", clientWith(expiredCert), ErrUntrusted},
		{"client cert of another trust domain", clientWith(otherTDCert), ErrTrustDomain},
		{"no client cert", clientWith(nil), nil},
		{"TLS 1.2", tls12, nil},
		{"no ALPN", noALPN, nil},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := dialAndEcho(addr, tt.cfg); err == nil {
				c.Close()
				t.Fatal("connection accepted; want refused")
			}
			r := waitResult(t, results)
			if r.err == nil {
				t.Fatal("server handshake succeeded; want refused")
			}
			if tt.want != nil && !errors.Is(r.err, tt.want) {
				t.Fatalf("server error = %v; want %v", r.err, tt.want)
			}
			t.Logf("server refused: %v", r.err)
		})
	}
}

func TestClientVerifiesServer(t *testing.T) {
	ca, foreignCA := mustCA(t, ""), mustCA(t, "")
	srvID := MustParseID("spiffe://cluster.local/ns/default/sa/server")
	cliID := MustParseID("spiffe://cluster.local/ns/default/sa/client")
	client := startManager(t, ca, cliID, time.Hour, nil, nil)

	good := startManager(t, ca, srvID, time.Hour, nil, nil)
	goodAddr, _ := startTLSServer(t, good.ServerTLSConfig())
	// A server whose certificate is from an untrusted CA (but it trusts us).
	rogue := startManager(t, foreignCA, srvID, time.Hour, append(ca.Anchors(), foreignCA.Anchors()...), nil)
	rogueAddr, _ := startTLSServer(t, rogue.ServerTLSConfig())

	other := MustParseID("spiffe://cluster.local/ns/default/sa/other")
	tests := []struct {
		name string
		addr string
		want *ID
		err  error
	}{
		{"expected identity", goodAddr, &srvID, nil},
		{"any identity", goodAddr, nil, nil},
		{"unexpected identity", goodAddr, &other, ErrUnexpectedPeer},
		{"untrusted server", rogueAddr, nil, ErrUntrusted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := dialAndEcho(tt.addr, client.ClientTLSConfig(tt.want))
			if err == nil {
				c.Close()
			}
			if tt.err == nil && err != nil || tt.err != nil && !errors.Is(err, tt.err) {
				t.Fatalf("dial = %v; want %v", err, tt.err)
			}
		})
	}
	// Not ready: the client refuses to handshake without a certificate.
	m, _ := NewManager(ManagerConfig{ID: cliID, Source: &LocalSource{CA: ca}, Anchors: ca.Anchors(), Log: quietLog()})
	if c, err := dialAndEcho(goodAddr, m.ClientTLSConfig(nil)); err == nil {
		c.Close()
		t.Fatal("client without a certificate got through")
	}
}

// TestRenewal: with a leaf of ~3s the Manager renews several times; a
// connection opened before the renewals keeps working; new handshakes see
// the new certificate.
func TestRenewal(t *testing.T) {
	ca := mustCA(t, "")
	srvID := MustParseID("spiffe://cluster.local/ns/default/sa/server")
	cliID := MustParseID("spiffe://cluster.local/ns/default/sa/client")
	var renewals atomic.Int32
	serials := make(chan string, 100)
	server := startManager(t, ca, srvID, 3*time.Second, nil, func(leaf *x509.Certificate) {
		renewals.Add(1)
		serials <- leaf.SerialNumber.String()
	})
	client := startManager(t, ca, cliID, 3*time.Second, nil, nil)
	addr, results := startTLSServer(t, server.ServerTLSConfig())

	first, err := dialAndEcho(addr, client.ClientTLSConfig(&srvID))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitResult(t, results)
	firstSerial := first.ConnectionState().PeerCertificates[0].SerialNumber.String()

	seen := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for len(seen) < 4 { // the initial certificate plus three renewals
		select {
		case s := <-serials:
			seen[s] = true
		case <-deadline:
			t.Fatalf("only %d distinct certificates in 20s; want 4", len(seen))
		}
		if err := echo(first); err != nil {
			t.Fatalf("connection opened before renewal %d broke: %v", len(seen)-1, err)
		}
	}
	// The old certificate has expired by now; the old connection still works.
	if err := echo(first); err != nil {
		t.Fatalf("old connection after renewals: %v", err)
	}
	// A new full handshake sees a newer certificate than the first one.
	cfg := client.ClientTLSConfig(&srvID)
	cfg.ClientSessionCache = nil
	c, err := dialAndEcho(addr, cfg)
	if err != nil {
		t.Fatalf("new handshake after renewals: %v", err)
	}
	defer c.Close()
	if r := waitResult(t, results); r.err != nil {
		t.Fatalf("server handshake: %v", r.err)
	}
	got := c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	if got == firstSerial {
		t.Error("new handshake got the first certificate; want a renewed one")
	}
	if !seen[got] {
		t.Error("new handshake got a certificate the Manager never installed")
	}
}

// TestResumption: a second connection with the shared session cache
// resumes and still identifies both peers.
func TestResumption(t *testing.T) {
	ca := mustCA(t, "")
	srvID := MustParseID("spiffe://cluster.local/ns/default/sa/server")
	cliID := MustParseID("spiffe://cluster.local/ns/default/sa/client")
	server := startManager(t, ca, srvID, time.Hour, nil, nil)
	client := startManager(t, ca, cliID, time.Hour, nil, nil)
	addr, results := startTLSServer(t, server.ServerTLSConfig())
	for i := 0; i < 2; i++ {
		c, err := dialAndEcho(addr, client.ClientTLSConfig(&srvID))
		if err != nil {
			t.Fatal(err)
		}
		r := waitResult(t, results)
		c.Close()
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.state.DidResume != (i == 1) {
			t.Errorf("connection %d: DidResume = %v", i, r.state.DidResume)
		}
		if id, _ := PeerID(r.state); id != cliID {
			t.Errorf("connection %d: server PeerID = %v; want %v", i, id, cliID)
		}
	}
}

// TestNoResumptionNearClientCertExpiry: a session whose client
// certificate expires within ResumeMargin is not resumed; the handshake
// is a full one and succeeds. Resuming it raced VerifyConnection, which
// checks that certificate again by the real clock later in the
// handshake, and lost by milliseconds under load.
func TestNoResumptionNearClientCertExpiry(t *testing.T) {
	expectNoResumption(t, time.Hour, ResumeMargin-2*time.Second, "client")
}

// expectNoResumption makes two connections between a server and a client
// whose certificates live serverLife and clientLife: both handshakes
// succeed, and neither resumes (whose certificate expires within
// ResumeMargin: "server" or "client", for the message).
func expectNoResumption(t *testing.T, serverLife, clientLife time.Duration, whose string) {
	t.Helper()
	ca := mustCA(t, "")
	srvID := MustParseID("spiffe://cluster.local/ns/default/sa/server")
	cliID := MustParseID("spiffe://cluster.local/ns/default/sa/client")
	server := startManager(t, ca, srvID, serverLife, nil, nil)
	client := startManager(t, ca, cliID, clientLife, nil, nil)
	addr, results := startTLSServer(t, server.ServerTLSConfig())
	cfg := client.ClientTLSConfig(&srvID)
	for i := 0; i < 2; i++ {
		c, err := dialAndEcho(addr, cfg)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		r := waitResult(t, results)
		c.Close()
		if r.err != nil {
			t.Fatalf("connection %d: server handshake: %v", i, r.err)
		}
		if r.state.DidResume {
			t.Errorf("connection %d resumed a session whose %s certificate expires within ResumeMargin", i, whose)
		}
	}
}

func benchmarkHandshake(b *testing.B, resume bool) {
	ca := mustCA(b, "")
	srvID := MustParseID("spiffe://cluster.local/ns/default/sa/server")
	cliID := MustParseID("spiffe://cluster.local/ns/default/sa/client")
	server := startManager(b, ca, srvID, time.Hour, nil, nil)
	client := startManager(b, ca, cliID, time.Hour, nil, nil)
	addr, _ := startTLSServer(b, server.ServerTLSConfig())
	cfg := client.ClientTLSConfig(&srvID)
	if !resume {
		cfg.ClientSessionCache = nil
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := dialAndEcho(addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if resume && i > 0 && !c.ConnectionState().DidResume {
			b.Fatal("session not resumed")
		}
		c.Close()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkHandshakeFull measures full mTLS handshakes (plus one echo).
func BenchmarkHandshakeFull(b *testing.B) { benchmarkHandshake(b, false) }

// BenchmarkHandshakeResumed measures resumed mTLS handshakes (plus one echo).
func BenchmarkHandshakeResumed(b *testing.B) { benchmarkHandshake(b, true) }
