package identity

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// ALPN is the application protocol both ends of the mesh transport
// negotiate.
const ALPN = "meshproxy/1"

// ResumeMargin is how long before its client certificate expires a TLS
// session is no longer resumed by ServerTLSConfig, or before its server
// certificate expires by ClientTLSConfig: the handshake is then a full
// one, with the peer's current certificate. It covers the time
// between the library's expiry check and VerifyConnection's, which can
// be as long as a handshake.
const ResumeMargin = 10 * time.Second

// ServerTLSConfig returns the config for the inbound side of the mesh
// transport: TLS 1.3 only, ALPN meshproxy/1 required, the current
// certificate served through GetCertificate (so rotation never touches
// open connections), and a client certificate required and verified
// against the trust anchors and trust domain in VerifyConnection (which
// also runs on resumed sessions). Use PeerID on the connection state to
// learn who the client is. Handshakes fail with ErrNotReady while the
// Manager holds no certificate. Build it once and share it between
// connections: session ticket keys live in the Config, so a fresh Config
// per connection would defeat resumption.
func (m *Manager) ServerTLSConfig() *tls.Config {
	return &tls.Config{
		// The library resumes a session only while the client
		// certificate it carries has not expired by this clock, and
		// VerifyConnection checks that certificate again, later in the
		// handshake, by the real clock: a session resumed in the last
		// moments of that certificate failed there (a client that
		// renewed long ago still offers tickets with its old
		// certificate). Running the library's clock ResumeMargin ahead
		// makes such a client do a full handshake with its current
		// certificate instead. The library uses this clock for nothing
		// else that matters (ticket ages and ticket key rotation move by
		// the same margin); certificates are verified by our verifier,
		// on the real clock.
		Time:       func() time.Time { return time.Now().Add(ResumeMargin) },
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// Full-size records from the first byte: the peer is a proxy on a
		// fast link, not a browser waiting to render the first packet.
		DynamicRecordSizingDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.certOrErr()
		},
		// Chain verification is done in VerifyConnection, by our own
		// rules (SPIFFE URI SAN, trust domain), instead of by the library.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("identity: client did not negotiate ALPN %q (is it a meshproxy?)", ALPN)
			}
			if _, err := m.verifier.Verify(cs.PeerCertificates, nil, x509.ExtKeyUsageClientAuth); err != nil {
				return fmt.Errorf("identity: refusing client: %w", err)
			}
			return nil
		},
	}
}

// ClientTLSConfig returns the config for the outbound side of the mesh
// transport: TLS 1.3 only, ALPN meshproxy/1, the current certificate
// presented through GetClientCertificate, and the server's chain verified
// against the trust anchors and trust domain, and, when expectedServer is
// not nil, against that exact identity. Server names (DNS SANs) are not
// used: identity is the SPIFFE ID, so InsecureSkipVerify is set and all
// verification happens in VerifyConnection, also on resumed sessions.
// Every config from one Manager shares one session cache, so reconnecting
// to an endpoint resumes its TLS session.
func (m *Manager) ClientTLSConfig(expectedServer *ID) *tls.Config {
	var want *ID
	if expectedServer != nil {
		w := *expectedServer
		want = &w
	}
	return &tls.Config{
		// As in ServerTLSConfig, for the server's certificate: a cached
		// session keeps the one of its first handshake (the server may
		// have renewed since), which the library checks before resuming
		// and VerifyConnection again, later, by the real clock. The
		// library's clock ResumeMargin ahead makes a session whose
		// server certificate is about to expire a full handshake.
		Time:                        func() time.Time { return time.Now().Add(ResumeMargin) },
		MinVersion:                  tls.VersionTLS13,
		NextProtos:                  []string{ALPN},
		DynamicRecordSizingDisabled: true, // as in ServerTLSConfig
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.certOrErr()
		},
		InsecureSkipVerify: true, // verified in VerifyConnection; see above
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := m.verifier.Verify(cs.PeerCertificates, want, x509.ExtKeyUsageServerAuth); err != nil {
				return fmt.Errorf("identity: refusing server: %w", err)
			}
			return nil
		},
		ClientSessionCache: m.sessions,
	}
}

// PeerID returns the SPIFFE ID of the peer of a completed handshake made
// with ServerTLSConfig or ClientTLSConfig (which already verified it).
func PeerID(cs tls.ConnectionState) (ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return ID{}, fmt.Errorf("%w: peer presented no certificate", ErrNoIdentity)
	}
	return IDFromCert(cs.PeerCertificates[0])
}
