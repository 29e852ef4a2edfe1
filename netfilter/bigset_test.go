package netfilter

import (
	"net/netip"
	"strings"
	"testing"
)

// spreadPrefixes returns n disjoint, non-adjacent /31 prefixes of
// 198.18.0.0/15 (IPv4) or /127 prefixes of 2001:2::/48 (IPv6).
func spreadPrefixes(n int, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for i := range n {
		if v6 {
			a := [16]byte{0x20, 0x01, 0, 0x02, 14: byte(i >> 6), 15: byte(i<<2) & 0xfc}
			a[13] = byte(i >> 14)
			out = append(out, netip.PrefixFrom(netip.AddrFrom16(a), 127))
			continue
		}
		a := [4]byte{198, 18 + byte(i>>14&1), byte(i >> 6), byte(i<<2) & 0xfc}
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(a), 31))
	}
	return out
}

// A set whose elements do not fit in one netlink attribute (64 KiB) must
// still be installed whole: the library writes the attribute length as 16
// bits, so the kernel used to get a silently truncated list, ending in an
// interval start without its end, which ignores every address above it.
func TestLargeSetsInstalledWhole(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    func() Config
	}{
		{"IPv4 subnets", func() Config {
			c := testConfig(ModeTProxy)
			c.SubnetsToIgnore = spreadPrefixes(2000, false)
			return c
		}},
		{"IPv6 subnets", func() Config {
			c := testConfig(ModeRedirect)
			c.SubnetsToIgnore = spreadPrefixes(1500, true)
			return c
		}},
		{"ports", func() Config {
			c := testConfig(ModeRedirect)
			for p := uint16(10000); p < 16000; p += 2 {
				c.OutboundPortsToIgnore = append(c.OutboundPortsToIgnore, PortRange{p, p})
			}
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := openNS(t)
			c := tc.c()
			if err := h.Apply(c); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if err := h.Check(c); err != nil {
				t.Errorf("Check after Apply: %.400v", err)
			}
			r, err := Build(c)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range r.Table.Sets {
				ls, err := h.nft.GetSetByName(nfTable(TableName), s.Name)
				if err != nil {
					t.Fatal(err)
				}
				live, err := h.nft.GetSetElements(ls)
				if err != nil {
					t.Fatal(err)
				}
				if want := len(s.elements()); len(live) != want {
					t.Errorf("set %s has %d elements in the kernel; want %d", s.Name, len(live), want)
				}
			}
		})
	}
}

// A ruleset too big for one netlink batch fails whole, with an error that
// says what to do, and leaves the earlier state in place.
func TestTooBigRulesetRefusedWhole(t *testing.T) {
	h, _ := openNS(t)
	if err := h.Apply(testConfig(ModeTProxy)); err != nil {
		t.Fatal(err)
	}
	before := dump(t, h)
	c := testConfig(ModeTProxy)
	c.SubnetsToIgnore = spreadPrefixes(20000, false)
	err := h.Apply(c)
	if err == nil {
		t.Fatal("Apply of 20000 ignored subnets succeeded; this test wants a ruleset too big for one batch")
	}
	if !strings.Contains(err.Error(), "too big") || !strings.Contains(err.Error(), "wider") {
		t.Errorf("Apply error = %q; want it to say the ruleset is too big and to use fewer, wider ranges", err)
	}
	if after := dump(t, h); after != before {
		t.Errorf("failed Apply changed the live state")
	}
}
