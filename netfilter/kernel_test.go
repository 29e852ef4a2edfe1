package netfilter

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var nsCounter atomic.Int32

// newNS creates a throwaway named network namespace with lo up and returns
// its path; it is deleted when the test ends.
func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and installs nftables rules")
	}
	name := fmt.Sprintf("mpnf-%d-%d", os.Getpid(), nsCounter.Add(1))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("creating netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("restoring netns: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		netns.DeleteNamed(name)
	})
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return "/run/netns/" + name
}

func openNS(t *testing.T) (*Handle, string) {
	t.Helper()
	path := newNS(t)
	h, err := Open(path)
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	t.Cleanup(func() { h.Close() })
	return h, path
}

func testConfig(mode Mode) Config {
	c := defaultConfig()
	c.Mode = mode
	return c
}

func fullConfig(mode Mode) Config {
	c := testConfig(mode)
	c.OutboundPortsToIgnore = []PortRange{{25, 25}, {3306, 3306}}
	c.PortsToRedirect = []PortRange{{80, 80}, {8000, 8100}}
	c.SubnetsToIgnore = mustSubnets("198.18.0.0/16,198.19.7.1,2001:2::/48")
	c.ProxyGID = 2103
	return c
}

// dump describes everything Apply may create, in a stable order.
func dump(t *testing.T, h *Handle) string {
	t.Helper()
	var b strings.Builder
	tables, err := h.nft.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		fmt.Fprintf(&b, "table %s\n", tb.Name)
		sets, err := h.nft.GetSets(tb)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sets {
			elems, err := h.nft.GetSetElements(s)
			if err != nil {
				t.Fatal(err)
			}
			var es []string
			for _, e := range elems {
				es = append(es, fmt.Sprintf("%x/%v", e.Key, e.IntervalEnd))
			}
			slices.Sort(es)
			fmt.Fprintf(&b, " set %s %s %v %v\n", s.Name, s.KeyType.Name, s.Interval, es)
		}
		chains, err := h.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			t.Fatal(err)
		}
		rules, err := h.dumpRules(tb.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			if ch.Table.Name != tb.Name {
				continue
			}
			fmt.Fprintf(&b, " chain %s %s\n", ch.Name, chainHeaderDiff(ch, &nftables.Chain{}))
			for _, r := range rules[ch.Name] {
				fmt.Fprintf(&b, "  rule %x:", r.UserData)
				for _, e := range r.Exprs {
					fmt.Fprintf(&b, " %x", e)
				}
				b.WriteString("\n")
			}
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := h.nl.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if r.Mark != 0 {
				fmt.Fprintf(&b, "iprule fam %d prio %d mark %#x table %d\n", fam, r.Priority, r.Mark, r.Table)
			}
		}
		routes, err := h.nl.RouteListFiltered(fam, &netlink.Route{Table: DefaultRouteTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			fmt.Fprintf(&b, "route fam %d type %d dst %v dev %d table %d\n", fam, r.Type, r.Dst, r.LinkIndex, r.Table)
		}
	}
	return b.String()
}

func TestApplyCheckRemove(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
	}{
		{"redirect", testConfig(ModeRedirect)},
		{"redirect-full", fullConfig(ModeRedirect)},
		{"tproxy", testConfig(ModeTProxy)},
		{"tproxy-full", fullConfig(ModeTProxy)},
		{"tproxy-ipv4-only", func() Config { c := testConfig(ModeTProxy); c.IPv6 = false; return c }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := openNS(t)
			if err := h.Apply(tc.c); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			once := dump(t, h)
			if !strings.Contains(once, "table meshproxy") {
				t.Fatalf("no table after Apply:\n%s", once)
			}
			if err := h.Check(tc.c); err != nil {
				t.Fatalf("Check after Apply: %v", err)
			}
			if err := h.Apply(tc.c); err != nil {
				t.Fatalf("second Apply: %v", err)
			}
			if twice := dump(t, h); twice != once {
				t.Errorf("Apply twice differs from Apply once:\nonce:\n%s\ntwice:\n%s", once, twice)
			}
			if err := h.Check(tc.c); err != nil {
				t.Fatalf("Check after second Apply: %v", err)
			}
			if err := h.Remove(tc.c); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if left := dump(t, h); left != "" {
				t.Errorf("Remove left state behind:\n%s", left)
			}
			if err := h.Check(tc.c); !errors.Is(err, ErrDrift) {
				t.Errorf("Check after Remove = %v; want ErrDrift", err)
			}
			if err := h.Remove(tc.c); err != nil {
				t.Errorf("Remove of nothing: %v", err)
			}
		})
	}
}

func TestCheckDetectsDrift(t *testing.T) {
	c := fullConfig(ModeTProxy)
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, h *Handle)
		want   string
	}{
		{"table deleted", func(t *testing.T, h *Handle) {
			if err := h.deleteTable(TableName); err != nil {
				t.Fatal(err)
			}
		}, "table inet meshproxy is missing"},
		{"rule deleted", func(t *testing.T, h *Handle) {
			rules := liveRules(t, h, ChainOutbound)
			if err := h.nft.DelRule(rules[3]); err != nil {
				t.Fatal(err)
			}
			flush(t, h)
		}, "chain outbound"},
		{"rule added", func(t *testing.T, h *Handle) {
			rules := liveRules(t, h, ChainInbound)
			h.nft.AddRule(&nftables.Rule{Table: rules[0].Table, Chain: rules[0].Chain,
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
			flush(t, h)
		}, "chain inbound: extra rule"},
		{"set element changed", func(t *testing.T, h *Handle) {
			s, err := h.nft.GetSetByName(nfTable(TableName), SetOutboundPortsToIgnore)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.nft.SetAddElements(s, []nftables.SetElement{{Key: []byte{0, 22}}, {Key: []byte{0, 23}, IntervalEnd: true}}); err != nil {
				t.Fatal(err)
			}
			flush(t, h)
		}, "set outbound-ports-to-ignore elements differ"},
		{"ip rule deleted", func(t *testing.T, h *Handle) {
			rules, err := h.markRules(false, DefaultMark, DefaultRouteTable)
			if err != nil || len(rules) != 1 {
				t.Fatalf("rules = %v, %v", rules, err)
			}
			if err := h.nl.RuleDel(&rules[0]); err != nil {
				t.Fatal(err)
			}
		}, "IPv4 policy rule priority 32000 fwmark 0x539 lookup 133 is missing"},
		{"route deleted", func(t *testing.T, h *Handle) {
			routes, err := h.localRoutes(true, DefaultRouteTable)
			if err != nil || len(routes) != 1 {
				t.Fatalf("routes = %v, %v", routes, err)
			}
			if err := h.nl.RouteDel(&routes[0]); err != nil {
				t.Fatal(err)
			}
		}, "IPv6 route local ::/0 dev lo table 133 is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := openNS(t)
			if err := h.Apply(c); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			tc.break_(t, h)
			err := h.Check(c)
			if !errors.Is(err, ErrDrift) {
				t.Fatalf("Check = %v; want ErrDrift", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check error = %v; want it to mention %q", err, tc.want)
			}
			// Apply repairs, Remove cleans up.
			if err := h.Apply(c); err != nil {
				t.Fatalf("re-Apply: %v", err)
			}
			if err := h.Check(c); err != nil {
				t.Errorf("Check after re-Apply: %v", err)
			}
		})
	}
}

func liveRules(t *testing.T, h *Handle, chain string) []*nftables.Rule {
	t.Helper()
	nt := nfTable(TableName)
	rules, err := h.nft.GetRules(nt, &nftables.Chain{Name: chain, Table: nt})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		r.Table = nt
		r.Chain = &nftables.Chain{Name: chain, Table: nt}
	}
	return rules
}

func flush(t *testing.T, h *Handle) {
	t.Helper()
	if err := h.nft.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestApplyRollsBackWhenNFTFails(t *testing.T) {
	h, _ := openNS(t)
	c := testConfig(ModeTProxy)
	h.beforeFlush = func(conn *nftables.Conn) {
		nt := nfTable(TableName)
		// A jump to a chain that does not exist: the kernel rejects the
		// whole batch.
		conn.AddRule(&nftables.Rule{Table: nt, Chain: &nftables.Chain{Name: ChainInbound, Table: nt},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "no-such-chain"}}})
	}
	err := h.Apply(c)
	if err == nil {
		t.Fatal("Apply succeeded; want the injected failure")
	}
	if left := dump(t, h); left != "" {
		t.Errorf("failed Apply left state behind:\n%s", left)
	}
	h.beforeFlush = nil
	if err := h.Apply(c); err != nil {
		t.Fatalf("Apply after failure: %v", err)
	}
}

func TestApplyKeepsExistingTableOnFailure(t *testing.T) {
	h, _ := openNS(t)
	c := testConfig(ModeTProxy)
	if err := h.Apply(c); err != nil {
		t.Fatal(err)
	}
	before := dump(t, h)
	h.beforeFlush = func(conn *nftables.Conn) {
		nt := nfTable(TableName)
		conn.AddRule(&nftables.Rule{Table: nt, Chain: &nftables.Chain{Name: ChainInbound, Table: nt},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "no-such-chain"}}})
	}
	if err := h.Apply(c); err == nil {
		t.Fatal("Apply succeeded; want the injected failure")
	}
	if after := dump(t, h); after != before {
		t.Errorf("failed re-Apply changed the live state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := h.Check(c); err != nil {
		t.Errorf("Check after failed re-Apply: %v", err)
	}
}

func TestRemoveHalfApplied(t *testing.T) {
	t.Run("routes but no table", func(t *testing.T) {
		h, _ := openNS(t)
		c := testConfig(ModeTProxy)
		r, _ := Build(c)
		for _, p := range r.Routing {
			if _, err := h.ensureRouting(p); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.Remove(c); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if left := dump(t, h); left != "" {
			t.Errorf("Remove left state behind:\n%s", left)
		}
	})
	t.Run("table with extra chains", func(t *testing.T) {
		h, _ := openNS(t)
		c := testConfig(ModeRedirect)
		if err := h.Apply(c); err != nil {
			t.Fatal(err)
		}
		nt := nfTable(TableName)
		h.nft.AddChain(&nftables.Chain{Name: "someone-elses", Table: nt})
		flush(t, h)
		if err := h.Check(c); !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), "extra chain someone-elses") {
			t.Errorf("Check = %v; want drift naming the extra chain", err)
		}
		if err := h.Remove(c); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if left := dump(t, h); left != "" {
			t.Errorf("Remove left state behind:\n%s", left)
		}
	})
}

func TestTProxyWithLoopbackDown(t *testing.T) {
	h, _ := openNS(t)
	lo, err := h.nl.LinkByIndex(h.loIndex)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.nl.LinkSetDown(lo); err != nil {
		t.Fatal(err)
	}
	c := testConfig(ModeTProxy)
	if err := h.Apply(c); err != nil {
		t.Fatalf("Apply with lo down: %v", err)
	}
	if err := h.Check(c); err != nil {
		t.Errorf("Check: %v", err)
	}
}

func TestSwitchModes(t *testing.T) {
	h, _ := openNS(t)
	if err := h.Apply(testConfig(ModeTProxy)); err != nil {
		t.Fatal(err)
	}
	c := testConfig(ModeRedirect)
	if err := h.Check(c); !errors.Is(err, ErrDrift) {
		t.Errorf("Check(redirect) with tproxy applied = %v; want ErrDrift", err)
	}
	if err := h.Apply(c); err != nil {
		t.Fatal(err)
	}
	if err := h.Check(c); err != nil {
		t.Errorf("Check after switching to redirect: %v (tproxy policy routing must be gone)", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open("/nonexistent/netns/x"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Open(nonexistent) = %v; want a does-not-exist error", err)
	}
	f, err := os.CreateTemp(t.TempDir(), "notns")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Open(f.Name()); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("Open(regular file) = %v; want a not-a-namespace error", err)
	}
}

// The library drops tproxy expressions when it lists rules; Check reads
// them itself, so a different tproxy port must show as drift.
func TestCheckSeesTProxyPort(t *testing.T) {
	h, _ := openNS(t)
	c := testConfig(ModeTProxy)
	if err := h.Apply(c); err != nil {
		t.Fatal(err)
	}
	c.OutboundPort = 5140
	err := h.Check(c)
	if !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), "chain divert-outbound: rule #1") {
		t.Fatalf("Check with another outbound port = %v; want drift in divert-outbound", err)
	}
	if strings.Contains(err.Error(), "chain outbound") {
		t.Errorf("Check reports unrelated drift: %v", err)
	}
}
