package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startService runs a Service for ca on a loopback port (or on l if given).
func startService(t testing.TB, ca *CA, l net.Listener) (*Service, string) {
	t.Helper()
	if l == nil {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	}
	s := NewService(ca, nil, quietLog())
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after Close; want nil", err)
		}
		s.Close() // twice is fine
	})
	return s, l.Addr().String()
}

func TestServiceIssues(t *testing.T) {
	ca := mustCA(t, "")
	_, addr := startService(t, ca, nil)
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	tok, _ := ca.IssueToken(web, time.Hour)

	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(tok+"\n"), 0o600)
	client := &Client{Addr: addr, Anchors: ca.Anchors(), TokenFile: tokFile}
	cert, err := Obtain(t.Context(), client, web, 2*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := IDFromCert(cert.Leaf); got != web {
		t.Errorf("issued for %v; want %v", got, web)
	}
	if life := time.Until(cert.Leaf.NotAfter); life > 2*time.Hour || life < 2*time.Hour-5*time.Second {
		t.Errorf("lifetime %v; want ~2h as asked", life)
	}
	// Asking for more than the service's maximum gets the maximum.
	long, err := Obtain(t.Context(), client, web, 1000*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(long.Leaf.NotAfter); life > DefaultLeafTTL {
		t.Errorf("lifetime %v; want capped at %v", life, DefaultLeafTTL)
	}

	// Renewal with the current certificate works without any token.
	renewer := &Client{Addr: addr, Anchors: ca.Anchors()}
	if _, err := Obtain(t.Context(), renewer, web, 0, cert); err != nil {
		t.Errorf("renewal by certificate: %v", err)
	}
	// ... but a certificate for web does not renew db.
	db := MustParseID("spiffe://cluster.local/ns/default/sa/db")
	_, err = Obtain(t.Context(), renewer, db, 0, cert)
	var se *ServiceError
	if !errors.As(err, &se) || se.Status != http.StatusUnauthorized {
		t.Errorf("db renewal with web's certificate: err = %v; want HTTP 401", err)
	}
	// No credential at all: refused locally with a clear message.
	if _, err := Obtain(t.Context(), renewer, web, 0, nil); err == nil {
		t.Error("request without token or certificate succeeded")
	}
}

func TestServiceRefuses(t *testing.T) {
	ca, other := mustCA(t, ""), mustCA(t, "")
	_, addr := startService(t, ca, nil)
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	db := MustParseID("spiffe://cluster.local/ns/default/sa/db")
	webTok, _ := ca.IssueToken(web, time.Hour)
	otherTok, _ := other.IssueToken(db, time.Hour)
	old := *ca
	old.now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
	expiredTok, _ := old.IssueToken(db, time.Hour)
	tampered := strings.Replace(webTok, webTok[len(webTok)-8:len(webTok)-4], "AAAA", 1)

	tests := []struct {
		name   string
		token  string
		id     ID
		status int
		reason string
	}{
		{"token for web, CSR for db", webTok, db, http.StatusForbidden, "token is for spiffe://cluster.local/ns/default/sa/web, not spiffe://cluster.local/ns/default/sa/db"},
		{"token from another CA", otherTok, db, http.StatusUnauthorized, "signature does not verify"},
		{"expired token", expiredTok, db, http.StatusUnauthorized, "expired"},
		{"tampered token", tampered, web, http.StatusUnauthorized, "join token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Client{Addr: addr, Anchors: ca.Anchors(), Token: tt.token}
			_, err := Obtain(t.Context(), c, tt.id, 0, nil)
			var se *ServiceError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v; want a *ServiceError", err)
			}
			if se.Status != tt.status || !strings.Contains(se.Reason, tt.reason) {
				t.Fatalf("refusal = %d %q; want %d containing %q", se.Status, se.Reason, tt.status, tt.reason)
			}
			t.Logf("refused: %v", err)
		})
	}

	// A CSR whose signature is broken, posted by hand.
	t.Run("bad CSR signature", func(t *testing.T) {
		_, der, _ := NewCSR(web)
		der[len(der)-1] ^= 0xff
		status, reason := postRaw(t, addr, ca, signRequest{
			CSR:   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
			Token: webTok,
		})
		if status != http.StatusBadRequest || !strings.Contains(reason, "signature") {
			t.Fatalf("refusal = %d %q; want 400 about the signature", status, reason)
		}
	})
	t.Run("CSR signed by another key", func(t *testing.T) {
		// A CSR carrying one public key but signed with another.
		k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der1, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*urlT{web.URL()}}, k1)
		der2, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*urlT{web.URL()}}, k2)
		c1, _ := x509.ParseCertificateRequest(der1)
		c2, _ := x509.ParseCertificateRequest(der2)
		// Splice c1's signed body with c2's signature.
		forged := bytes.Replace(der2, c2.RawTBSCertificateRequest, c1.RawTBSCertificateRequest, 1)
		status, reason := postRaw(t, addr, ca, signRequest{
			CSR:   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: forged})),
			Token: webTok,
		})
		if status != http.StatusBadRequest || !strings.Contains(reason, "signature") {
			t.Fatalf("refusal = %d %q; want 400 about the signature", status, reason)
		}
	})
	t.Run("not JSON", func(t *testing.T) {
		status, _ := postRaw(t, addr, ca, "nope")
		if status != http.StatusBadRequest {
			t.Fatalf("status = %d; want 400", status)
		}
	})
}

// postRaw posts body (JSON-encoded) to the service over verified TLS.
func postRaw(t *testing.T, addr string, ca *CA, body any) (int, string) {
	t.Helper()
	v, _ := NewVerifier(ca.Anchors(), ca.TrustDomain())
	want := ServiceID(ca.TrustDomain())
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := v.Verify(cs.PeerCertificates, &want, x509.ExtKeyUsageServerAuth)
			return err
		},
	}}
	defer tr.CloseIdleConnections()
	b, _ := json.Marshal(body)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("https://"+addr+CertificatePath, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out signResponse
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.Error
}

// TestClientRefusesUntrustedService: a client that trusts another CA's
// anchors does not send its token to this service.
func TestClientRefusesUntrustedService(t *testing.T) {
	ca, other := mustCA(t, ""), mustCA(t, "")
	_, addr := startService(t, ca, nil)
	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	tok, _ := ca.IssueToken(web, time.Hour)
	c := &Client{Addr: addr, Anchors: other.Anchors(), Token: tok}
	_, err := Obtain(t.Context(), c, web, 0, nil)
	if !errors.Is(err, ErrUntrusted) {
		t.Fatalf("err = %v; want ErrUntrusted", err)
	}
	// Expecting another service identity also fails.
	wrong := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	c = &Client{Addr: addr, Anchors: ca.Anchors(), Token: tok, ServerID: &wrong}
	if _, err := Obtain(t.Context(), c, web, 0, nil); !errors.Is(err, ErrUnexpectedPeer) {
		t.Fatalf("err = %v; want ErrUnexpectedPeer", err)
	}
}

// TestManagerWaitsForService: with the service down the Manager is not
// ready and keeps retrying; once the service starts it becomes ready.
func TestManagerWaitsForService(t *testing.T) {
	ca := mustCA(t, "")
	// Reserve a port, then free it so nothing listens there yet.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	web := MustParseID("spiffe://cluster.local/ns/default/sa/web")
	tok, _ := ca.IssueToken(web, time.Hour)
	failures := make(chan error, 100)
	m, err := NewManager(ManagerConfig{
		ID: web, Anchors: ca.Anchors(), Log: quietLog(),
		Source:     &Client{Addr: addr, Anchors: ca.Anchors(), Token: tok, Timeout: time.Second},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnRefresh: func(err error) {
			select {
			case failures <- err:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for i := 0; i < 3; i++ {
		select {
		case err := <-failures:
			if err == nil {
				t.Fatal("refresh succeeded with no service running")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no refresh attempt within 10s")
		}
	}
	if m.Ready() {
		t.Fatal("Manager ready with no service running")
	}
	if _, err := m.ServerTLSConfig().GetCertificate(nil); !errors.Is(err, ErrNotReady) {
		t.Errorf("GetCertificate while not ready: err = %v; want ErrNotReady", err)
	}
	select {
	case <-m.Installed():
		t.Fatal("Installed() woke with no certificate installed")
	default:
	}

	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("could not re-listen on %s: %v", addr, err)
	}
	startService(t, ca, l)
	// A watcher learns of the certificate from Installed, without polling.
	select {
	case <-m.Installed():
	case <-time.After(15 * time.Second):
		t.Fatal("Installed() did not wake within 15s after the service started")
	}
	if !m.Ready() {
		t.Fatal("Manager not ready when Installed() woke")
	}
	if id, serial, notAfter := m.Current(); id != web || serial == "" || notAfter.IsZero() {
		t.Errorf("Current() = %v, %q, %v", id, serial, notAfter)
	}
}
