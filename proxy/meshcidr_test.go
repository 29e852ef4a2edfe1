package proxy

import (
	"net/netip"
	"testing"

	"meshproxy/balancer"
)

// TestForcedMeshedMappedPrefix: a meshed CIDR written in its IPv4-mapped
// IPv6 form (::ffff:127.0.0.0/104, as a dual-stack tool may print it)
// still forces the IPv4 destinations it covers meshed: with nothing on
// the mesh port the connection fails closed instead of being probed,
// found unmeshed and sent in plaintext (meshState unmaps the destination,
// so the mapped prefix matched nothing). An unmeshed CIDR so written
// likewise forces plaintext without a probe.
func TestForcedMeshedMappedPrefix(t *testing.T) {
	e := newMeshEnv(t, meshOpts{noInbound: true, outMesh: func(m *Mesh) {
		m.Meshed = []netip.Prefix{netip.MustParsePrefix("::ffff:127.0.0.0/104")}
	}})
	app, conns := countingApp(t, echo)
	h := handleOne(t, e.out, app)
	h.client.Write([]byte("secret"))
	expectClosed(t, h.client)
	h.waitDone(t)
	if n := conns(); n != 0 {
		t.Errorf("app connections = %d; want 0 (a meshed destination never gets plaintext)", n)
	}
	if s := e.cache.Get(loopback); s != balancer.MeshUnknown {
		t.Errorf("cache = %v; want untouched (the destination is forced, not probed)", s)
	}

	r := newMeshRuntime(Mesh{Unmeshed: []netip.Prefix{netip.MustParsePrefix("::ffff:198.18.0.0/111")}})
	for _, a := range []string{"198.18.3.4", "::ffff:198.19.0.1"} {
		if s, forced := r.meshState(netip.MustParseAddr(a)); s != balancer.Unmeshed || !forced {
			t.Errorf("meshState(%s) = %v, forced %v; want unmeshed, forced", a, s, forced)
		}
	}
	if s, forced := r.meshState(netip.MustParseAddr("198.20.0.1")); forced {
		t.Errorf("meshState(198.20.0.1) = %v, forced; want not forced (outside the prefix)", s)
	}
}
