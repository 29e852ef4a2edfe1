package netfilter

import (
	"net"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Apply, re-Apply in another mode and Remove touch only what init owns:
// another inet table, an ip table named like ours, a policy rule for
// another mark and a route of another table all survive.
func TestOthersStateSurvives(t *testing.T) {
	h, _ := openNS(t)
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyIPv4} {
		name := "someone-else"
		if fam == nftables.TableFamilyIPv4 {
			name = TableName // "ip meshproxy" is not ours: ours is inet
		}
		tb := h.nft.AddTable(&nftables.Table{Name: name, Family: fam})
		h.nft.AddChain(&nftables.Chain{Name: "c", Table: tb})
	}
	flush(t, h)
	other := netlink.NewRule()
	other.Family = netlink.FAMILY_V4
	other.Mark = 0x77
	other.Table = 200
	other.Priority = RulePriority
	if err := h.nl.RuleAdd(other); err != nil {
		t.Fatal(err)
	}
	rt := &netlink.Route{LinkIndex: h.loIndex, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Table: 200, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
	if err := h.nl.RouteAdd(rt); err != nil {
		t.Fatal(err)
	}
	before := othersState(t, h)
	if strings.Count(before, "table ") != 2 || strings.Contains(before, "incomplete") {
		t.Fatalf("setup: others' state = %q; want two tables and the routing", before)
	}
	for _, step := range []func() error{
		func() error { return h.Apply(fullConfig(ModeTProxy)) },
		func() error { return h.Apply(fullConfig(ModeRedirect)) },
		func() error { return h.Apply(fullConfig(ModeTProxy)) },
		func() error { return h.Remove(fullConfig(ModeTProxy)) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
		if got := othersState(t, h); got != before {
			t.Fatalf("others' state changed:\nbefore:\n%s\nafter:\n%s", before, got)
		}
	}
}

// othersState describes the tables other than inet meshproxy and the
// routing of mark 0x77 / table 200.
func othersState(t *testing.T, h *Handle) string {
	t.Helper()
	var b strings.Builder
	tables, err := h.nft.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == TableName && tb.Family == nftables.TableFamilyINet {
			continue
		}
		b.WriteString("table " + tb.Name + "\n")
	}
	rules, err := h.nl.RuleListFiltered(netlink.FAMILY_V4, &netlink.Rule{Mark: 0x77}, netlink.RT_FILTER_MARK)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := h.localRoutes(false, 200)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || len(routes) != 1 {
		b.WriteString("mark 0x77 / table 200 routing incomplete\n")
	}
	return b.String()
}
