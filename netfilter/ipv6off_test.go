package netfilter

import (
	"os"
	"strings"
	"testing"
)

// In a namespace with IPv6 disabled by sysctl, tproxy with IPv6 capture on
// cannot route IPv6 through lo: Apply must say so (not a bare "permission
// denied" to root) and leave nothing behind; with IPv6 off it works.
func TestTProxyIPv6DisabledInNamespace(t *testing.T) {
	h, path := openNS(t)
	inNS(t, path, func() {
		for _, f := range []string{"all", "default", "lo"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0); err != nil {
				t.Error(err)
			}
		}
	})
	c := testConfig(ModeTProxy)
	err := h.Apply(c)
	if err == nil {
		t.Fatal("Apply with IPv6 capture in an IPv6-disabled namespace succeeded; want an error")
	}
	if !strings.Contains(err.Error(), "IPv6 is disabled") || !strings.Contains(err.Error(), "disable_ipv6") {
		t.Errorf("Apply error = %q; want it to say IPv6 is disabled (disable_ipv6) and how to go on", err)
	}
	if left := dump(t, h); left != "" {
		t.Errorf("failed Apply left state behind:\n%s", left)
	}
	c.IPv6 = false
	if err := h.Apply(c); err != nil {
		t.Fatalf("Apply with IPv6 capture off: %v", err)
	}
	if err := h.Check(c); err != nil {
		t.Errorf("Check: %v", err)
	}
}
