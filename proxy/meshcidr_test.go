package proxy

import (
	"net/netip"
	"testing"

	"meshproxy/balancer"
)

// TestUnmeshedMappedPrefix: an unmeshed CIDR written in its IPv4-mapped
// IPv6 form forces the IPv4 destinations it covers unmeshed, whichever
// form the destination comes in (the meshed case end to end:
// TestForcedMeshedNeverPlain).
func TestUnmeshedMappedPrefix(t *testing.T) {
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
