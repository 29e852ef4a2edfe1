package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"meshproxy/balancer"
	"meshproxy/identity"
)

// DefaultMeshPort is the port peer proxies dial for the mesh transport
// (the inbound port, as in Linkerd).
const DefaultMeshPort = 4143

// DefaultMaxHandshakes is the default bound on concurrent TLS handshakes
// per Server (Mesh.MaxHandshakes): enough to keep every core busy while
// some handshakes wait on the network, few enough that the runtime still
// schedules accepts, connects and data promptly during a burst.
var DefaultMaxHandshakes = max(32, 16*runtime.GOMAXPROCS(0))

// DefaultProxyPorts are the proxy's own ports (outbound, mesh/inbound,
// Linkerd's tap/admin pair) that an inbound mesh connection may never ask
// to be delivered to.
var DefaultProxyPorts = []uint16{4140, 4143, 4190, 4191}

// InboundPolicy says what the inbound side accepts besides mesh mTLS.
type InboundPolicy string

const (
	// Permissive forwards plaintext and the application's own TLS on
	// application ports, and terminates mesh mTLS on the mesh port.
	Permissive InboundPolicy = "permissive"
	// Strict refuses everything that is not mesh mTLS.
	Strict InboundPolicy = "strict"
)

// AuthzRule allows clients to reach a port over the mesh.
type AuthzRule struct {
	// Port is the application port the rule covers; 0 means any port.
	Port uint16
	// Client is an exact SPIFFE ID, a prefix ending in "/*" (such as
	// "spiffe://cluster.local/ns/ops/*"), or "*" for any client with a
	// valid mesh certificate.
	Client string
}

// String renders the rule as ParseAuthz reads it.
func (r AuthzRule) String() string {
	p := "*"
	if r.Port != 0 {
		p = strconv.Itoa(int(r.Port))
	}
	return p + "=" + r.Client
}

// matches reports whether client (a SPIFFE ID string) may use the rule.
func (r AuthzRule) matches(client string) bool {
	switch {
	case r.Client == "*":
		return true
	case strings.HasSuffix(r.Client, "/*"):
		return strings.HasPrefix(client, r.Client[:len(r.Client)-1])
	}
	return client == r.Client
}

// ParseAuthz parses a comma-separated list of PORT=CLIENT rules, where
// PORT is a port number or "*" (any port) and CLIENT an exact SPIFFE ID, a
// prefix ending in "/*", or "*". Example:
// "8080=spiffe://cluster.local/ns/a/sa/b,*=spiffe://cluster.local/ns/ops/*".
// An empty string is no rules.
func ParseAuthz(s string) ([]AuthzRule, error) {
	var rules []AuthzRule
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ps, client, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("authz rule %q: want PORT=CLIENT, e.g. 8080=spiffe://cluster.local/ns/default/sa/web or *=*", item)
		}
		ps, client = strings.TrimSpace(ps), strings.TrimSpace(client)
		var r AuthzRule
		if ps != "*" {
			p, err := strconv.ParseUint(ps, 10, 16)
			if err != nil || p == 0 {
				return nil, fmt.Errorf("authz rule %q: port %q: want 1-65535 or * for any port", item, ps)
			}
			r.Port = uint16(p)
		}
		switch {
		case client == "*":
		case strings.HasSuffix(client, "/*"):
			if !strings.HasPrefix(client, "spiffe://") || len(client) <= len("spiffe://")+2 || strings.Count(client, "*") != 1 {
				return nil, fmt.Errorf("authz rule %q: client prefix %q: want spiffe://<trust-domain>/... ending in /*", item, client)
			}
		default:
			if _, err := identity.ParseID(client); err != nil {
				return nil, fmt.Errorf("authz rule %q: client: %w (or use a prefix ending in /*, or * for any client)", item, err)
			}
		}
		r.Client = client
		rules = append(rules, r)
	}
	return rules, nil
}

// Mesh configures the mesh transport: mutual TLS between proxies.
type Mesh struct {
	// Port is the peers' inbound (mesh) port, dialed outbound and
	// terminated inbound. Zero means DefaultMeshPort.
	Port uint16
	// ClientTLS builds the config for an outbound mesh dial; expected is
	// the server identity to insist on, or nil for any identity of the
	// trust domain. Required for the outbound direction
	// (identity.Manager.ClientTLSConfig).
	ClientTLS func(expected *identity.ID) *tls.Config
	// ServerTLS terminates inbound mesh connections; built once and
	// shared. Required for the inbound direction
	// (identity.Manager.ServerTLSConfig).
	ServerTLS *tls.Config
	// LocalID is this proxy's identity, the By= of x-forwarded-client-cert.
	LocalID identity.ID
	// Meshed destinations are always dialed with mutual TLS, Unmeshed
	// ones always in plaintext (Meshed wins when both match). Others are
	// probed on the mesh port and the answer cached.
	Meshed, Unmeshed []netip.Prefix
	// RequireOutboundTLS refuses outbound connections to destinations
	// that are not meshed instead of sending them in plaintext.
	RequireOutboundTLS bool
	// InboundPolicy: the zero value means Permissive.
	InboundPolicy InboundPolicy
	// Authz limits which clients reach which ports over the mesh. Empty
	// allows any client with a valid mesh certificate. Otherwise a
	// connection is allowed only when a rule for its port (or for any
	// port) matches its client; a port no rule covers is closed (add
	// "*=*" to leave the rest open). A port a rule covers is closed to
	// plaintext clients in permissive mode too: they have no identity
	// a rule could match.
	Authz []AuthzRule
	// ProxyPorts are the proxy's own ports, which an inbound mesh
	// connection may not target (it would loop). Nil means
	// DefaultProxyPorts; Port is always included.
	ProxyPorts []uint16
	// HandshakeTimeout bounds the TLS handshake and, inbound, reading the
	// client's hello and the transport header. Inbound, the wait for the
	// hello, the wait for a handshake slot, the handshake and the header
	// all end this long after the connection arrived; outbound, a dial
	// may wait four times this for a slot (see MaxHandshakes), then has
	// this long for the handshake. Zero means 10s.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds how many TLS handshakes of this Server run at
	// once; the others wait their turn instead of all competing for the
	// CPU. Without a bound, a burst of thousands of new mesh connections
	// keeps thousands of goroutines runnable with handshake cryptography,
	// the runtime gets to a finished connect or a waiting accept seconds
	// late, and dials fail their connect timeout although the kernel
	// connected them. Queued handshakes also resume the sessions the first
	// ones established, which costs far less. Outbound, a dial takes its
	// slot before it connects, so the server proxy sees the connection
	// only when the hello follows (a connection queued at the client
	// would use up the server's handshake timeout); a connect not done
	// within a short grace (a destination dropping SYNs) gives its slot
	// back and queues again once connected. Zero means
	// DefaultMaxHandshakes.
	MaxHandshakes int
	// Cache remembers which destinations are meshed. Nil means a new
	// balancer.MeshCache with its defaults (10k addresses, meshed for 1h
	// after the last success, unmeshed for 30s).
	Cache *balancer.MeshCache
}

// Refusal reasons (the reason label of meshproxy_inbound_refused_total
// and meshproxy_outbound_mesh_errors_total, and the reason of log lines).
const (
	reasonNoClientCert = "no_client_cert" // inbound: mesh client without certificate
	reasonNoALPN       = "no_alpn"        // inbound: mesh client without ALPN meshproxy/1
	reasonUntrusted    = "untrusted"      // peer chain not trusted / other trust domain / unexpected identity
	reasonNotTLS       = "not_tls"        // inbound: garbage on the mesh port
	reasonHandshake    = "handshake"      // other handshake failures (including the peer refusing us)
	reasonTimeout      = "timeout"        // handshake or header not done in time
	reasonBadHeader    = "bad_header"     // inbound: transport header truncated/oversized/invalid
	reasonLoop         = "loop"           // inbound: header targets one of the proxy's own ports
	reasonPlaintext    = "plaintext"      // inbound strict: plaintext on an application port
	reasonAppTLS       = "app_tls"        // inbound strict: the application's own TLS, not mesh mTLS
	reasonConnect      = "connect"        // outbound: a meshed endpoint's mesh port did not answer
	reasonNotMeshed    = "not_meshed"     // outbound: RequireOutboundTLS and the destination is not meshed
	reasonHeaderWrite  = "header_write"   // outbound: sending the transport header failed
)

// Handshake errors the inbound side's VerifyConnection wrapper returns.
var (
	errNoClientCert = errors.New("mesh client presented no certificate")
	errNoALPN       = fmt.Errorf("mesh client did not negotiate ALPN %q (is it a meshproxy?)", identity.ALPN)
)

// meshRuntime is a Mesh resolved for one Server.
type meshRuntime struct {
	cfg        Mesh
	port       uint16
	proxyPorts []uint16
	serverTLS  *tls.Config
	cache      *balancer.MeshCache
	policy     InboundPolicy
	hsTimeout  time.Duration
	localID    string
	// hsSlots holds a token per running handshake (MaxHandshakes).
	hsSlots chan struct{}
	// inHandshake counts the TLS handshakes running now, peakHandshakes
	// the most that ever ran at once (for tests: never above the slots).
	inHandshake, peakHandshakes atomic.Int64
}

func newMeshRuntime(m Mesh) *meshRuntime {
	r := &meshRuntime{cfg: m, port: m.Port, cache: m.Cache, policy: m.InboundPolicy, hsTimeout: m.HandshakeTimeout}
	r.cfg.Meshed = unmapPrefixes(m.Meshed)
	r.cfg.Unmeshed = unmapPrefixes(m.Unmeshed)
	r.cfg.Authz = slices.Clone(m.Authz)
	if r.port == 0 {
		r.port = DefaultMeshPort
	}
	r.proxyPorts = slices.Clone(m.ProxyPorts)
	if m.ProxyPorts == nil {
		r.proxyPorts = slices.Clone(DefaultProxyPorts)
	}
	if !slices.Contains(r.proxyPorts, r.port) {
		r.proxyPorts = append(r.proxyPorts, r.port)
	}
	if r.cache == nil {
		r.cache = balancer.NewMeshCache(balancer.MeshCacheConfig{})
	}
	if r.policy == "" {
		r.policy = Permissive
	}
	if r.hsTimeout <= 0 {
		r.hsTimeout = 10 * time.Second
	}
	n := m.MaxHandshakes
	if n <= 0 {
		n = DefaultMaxHandshakes
	}
	r.hsSlots = make(chan struct{}, n)
	if !m.LocalID.IsZero() {
		r.localID = m.LocalID.String()
	}
	if m.ServerTLS != nil {
		r.serverTLS = wrapServerTLS(m.ServerTLS)
	}
	return r
}

// unmapPrefixes copies ps with every IPv4-mapped IPv6 prefix
// (::ffff:a.b.c.d/n, n >= 96) written as the IPv4 prefix it is:
// meshState matches unmapped destinations, which a mapped prefix never
// contains (a meshed CIDR so written was probed, and could go plaintext).
func unmapPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	for i, p := range out {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			out[i] = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked()
		}
	}
	return out
}

// wrapServerTLS clones cfg (once per Server, so session tickets still
// work across connections) and checks the client certificate's presence
// and ALPN in VerifyConnection before cfg's own check, so refusals can be
// told apart by reason. The certificate stays required: an empty one
// fails errNoClientCert, and cfg's VerifyConnection verifies the chain.
func wrapServerTLS(cfg *tls.Config) *tls.Config {
	c := cfg.Clone()
	inner := c.VerifyConnection
	if inner == nil {
		return c // the library verifies (RequireAndVerifyClientCert); reasons are coarser
	}
	if c.ClientAuth == tls.RequireAnyClientCert {
		c.ClientAuth = tls.RequestClientCert // presence checked below
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errNoClientCert
		}
		if cs.NegotiatedProtocol != identity.ALPN {
			return errNoALPN
		}
		return inner(cs)
	}
	return c
}

// errHandshakeQueue is the error of a handshake that waited its whole
// allowance for a slot (Mesh.MaxHandshakes).
var errHandshakeQueue = fmt.Errorf("waited too long for a TLS handshake slot: %w (the proxy is busy with other handshakes; see Mesh.MaxHandshakes)", os.ErrDeadlineExceeded)

// slotQueueFactor is how many handshake timeouts an outbound dial may
// wait for a handshake slot: a burst of thousands of new connections
// queues for several seconds and still succeeds.
const slotQueueFactor = 4

// handshakeSlot waits for a free handshake slot until ctx ends or wait
// passes, and returns the function that frees it.
func (r *meshRuntime) handshakeSlot(ctx context.Context, wait time.Duration) (release func(), err error) {
	select {
	case r.hsSlots <- struct{}{}:
		return r.releaseSlot, nil
	default:
	}
	if wait <= 0 {
		return nil, errHandshakeQueue
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r.hsSlots <- struct{}{}:
		return r.releaseSlot, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, errHandshakeQueue
	}
}

// handshake runs tc's handshake, holding a slot the caller took, and
// keeps count of the handshakes in progress (inHandshake, peakHandshakes).
func (r *meshRuntime) handshake(ctx context.Context, tc *tls.Conn) error {
	n := r.inHandshake.Add(1)
	for {
		peak := r.peakHandshakes.Load()
		if n <= peak || r.peakHandshakes.CompareAndSwap(peak, n) {
			break
		}
	}
	err := tc.HandshakeContext(ctx)
	r.inHandshake.Add(-1)
	return err
}

func (r *meshRuntime) releaseSlot() { <-r.hsSlots }

// meshState says whether dst must, must not, or may be meshed.
func (r *meshRuntime) meshState(dst netip.Addr) (state balancer.MeshState, forced bool) {
	dst = dst.Unmap()
	for _, p := range r.cfg.Meshed {
		if p.Contains(dst) {
			return balancer.Meshed, true
		}
	}
	for _, p := range r.cfg.Unmeshed {
		if p.Contains(dst) {
			return balancer.Unmeshed, true
		}
	}
	return r.cache.Get(dst), false
}

// authorize reports whether client may reach port, and the port label of
// the decision: the port of the rule that allowed it, the port itself
// when some rule names it, else "*" (so the label's values are bounded by
// the configuration, not by what clients ask for).
func (r *meshRuntime) authorize(client string, port uint16) (bool, string) {
	if len(r.cfg.Authz) == 0 {
		return true, "*"
	}
	for _, rule := range r.cfg.Authz {
		if rule.Port != 0 && rule.Port != port {
			continue
		}
		if rule.matches(client) {
			if rule.Port == 0 {
				return true, "*"
			}
			return true, strconv.Itoa(int(port))
		}
	}
	return false, r.portLabel(port)
}

// covers reports whether some authorization rule guards port (names it,
// or any port): a client without a mesh identity may not reach it.
func (r *meshRuntime) covers(port uint16) bool {
	for _, rule := range r.cfg.Authz {
		if rule.Port == 0 || rule.Port == port {
			return true
		}
	}
	return false
}

// portLabel is the port label of a denial on port: the port when some
// rule names it, else "*".
func (r *meshRuntime) portLabel(port uint16) string {
	for _, rule := range r.cfg.Authz {
		if rule.Port == port {
			return strconv.Itoa(int(port))
		}
	}
	return "*"
}

// handshakeReason maps a mesh handshake error (either side) to a reason
// label.
func handshakeReason(err error) string {
	var rh tls.RecordHeaderError
	switch {
	case errors.Is(err, errNoClientCert):
		return reasonNoClientCert
	case errors.Is(err, errNoALPN):
		return reasonNoALPN
	case errors.Is(err, identity.ErrUntrusted), errors.Is(err, identity.ErrTrustDomain),
		errors.Is(err, identity.ErrUnexpectedPeer), errors.Is(err, identity.ErrNoIdentity):
		return reasonUntrusted
	case errors.As(err, &rh):
		return reasonNotTLS
	case isTimeout(err):
		return reasonTimeout
	}
	return reasonHandshake
}
