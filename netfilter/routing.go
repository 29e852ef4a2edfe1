package netfilter

import (
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file manages the TPROXY policy routing: "fwmark M lookup T" rules
// and "local <any> dev lo table T" routes, per address family.

func familyOf(v6 bool) int {
	if v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func famName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func anyNet(v6 bool) *net.IPNet {
	if v6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

// markRules lists the policy rules of the family that send mark to table.
func (h *Handle) markRules(v6 bool, mark uint32, table int) ([]netlink.Rule, error) {
	filter := &netlink.Rule{Mark: mark, Table: table}
	rules, err := h.nl.RuleListFiltered(familyOf(v6), filter, netlink.RT_FILTER_MARK|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing %s policy rules: %w", famName(v6), err)
	}
	return rules, nil
}

// localRoutes lists the routes of the family in table that are ours:
// type local, default destination, via lo.
func (h *Handle) localRoutes(v6 bool, table int) ([]netlink.Route, error) {
	routes, err := h.nl.RouteListFiltered(familyOf(v6), &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing %s routes of table %d: %w", famName(v6), table, err)
	}
	var out []netlink.Route
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL && isDefault(r.Dst) && r.LinkIndex == h.loIndex {
			out = append(out, r)
		}
	}
	return out, nil
}

func isDefault(n *net.IPNet) bool {
	if n == nil {
		return true
	}
	ones, _ := n.Mask.Size()
	return ones == 0
}

// routingUndo removes what ensureRouting added.
type routingUndo []func() error

func (u routingUndo) run() error {
	var errs []error
	for i := len(u) - 1; i >= 0; i-- {
		errs = append(errs, u[i]())
	}
	return errors.Join(errs...)
}

// ensureRouting installs the policy routing of p unless present and
// returns how to undo exactly what it added.
func (h *Handle) ensureRouting(p PolicyRoute) (routingUndo, error) {
	var undo routingUndo
	routes, err := h.localRoutes(p.IPv6, p.Table)
	if err != nil {
		return undo, err
	}
	if len(routes) == 0 {
		rt := &netlink.Route{
			LinkIndex: h.loIndex,
			Dst:       anyNet(p.IPv6),
			Table:     p.Table,
			Type:      unix.RTN_LOCAL,
			Scope:     netlink.SCOPE_HOST,
		}
		if err := h.nl.RouteReplace(rt); err != nil {
			if p.IPv6 && errors.Is(err, unix.EACCES) {
				// The kernel's answer when lo has IPv6 disabled.
				return undo, fmt.Errorf("adding IPv6 route local %s dev lo table %d: IPv6 is disabled in this namespace (net.ipv6.conf.lo.disable_ipv6=1): enable it, or turn IPv6 capture off (meshproxy init --ipv6=false): %w", rt.Dst, p.Table, err)
			}
			return undo, fmt.Errorf("adding %s route local %s dev lo table %d: %w", famName(p.IPv6), rt.Dst, p.Table, err)
		}
		undo = append(undo, func() error { return h.nl.RouteDel(rt) })
	}
	rules, err := h.markRules(p.IPv6, p.Mark, p.Table)
	if err != nil {
		return undo, err
	}
	found := false
	for _, r := range rules {
		if r.Priority == p.Priority && !r.Invert {
			found = true
		}
	}
	if !found {
		r := h.newRule(p)
		err := h.nl.RuleAdd(r)
		switch {
		case errors.Is(err, unix.EEXIST):
			// Another init added it since the listing: present, and
			// not ours to undo.
		case err != nil:
			return undo, fmt.Errorf("adding %s rule fwmark 0x%x lookup %d: %w", famName(p.IPv6), p.Mark, p.Table, err)
		default:
			undo = append(undo, func() error { return h.nl.RuleDel(r) })
		}
	}
	return undo, nil
}

// pruneRules deletes the rules sending p's mark to p's table other than
// the one ensureRouting keeps (at p.Priority, not inverted), which Check
// reports as drift.
func (h *Handle) pruneRules(p PolicyRoute) error {
	rules, err := h.markRules(p.IPv6, p.Mark, p.Table)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.Priority == p.Priority && !r.Invert {
			continue
		}
		r := r
		if err := h.nl.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting %s rule priority %d fwmark 0x%x lookup %d: %w", famName(p.IPv6), r.Priority, p.Mark, p.Table, err)
		}
	}
	return nil
}

func (h *Handle) newRule(p PolicyRoute) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = familyOf(p.IPv6)
	r.Mark = p.Mark
	r.Table = p.Table
	r.Priority = p.Priority
	return r
}

// removeRouting deletes every rule sending mark to table and every route of
// ours in table, for one family. Absent state is not an error.
func (h *Handle) removeRouting(v6 bool, mark uint32, table int) error {
	if err := h.removeRules(v6, mark, table); err != nil {
		return err
	}
	return h.removeRoutes(v6, table)
}

// removeRules deletes every rule of the family sending mark to table.
func (h *Handle) removeRules(v6 bool, mark uint32, table int) error {
	rules, err := h.markRules(v6, mark, table)
	if err != nil {
		return err
	}
	for _, r := range rules {
		r := r
		if err := h.nl.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting %s rule fwmark 0x%x lookup %d: %w", famName(v6), mark, table, err)
		}
	}
	return nil
}

// removeRoutes deletes our routes (local, default, dev lo) of the family in
// table.
func (h *Handle) removeRoutes(v6 bool, table int) error {
	routes, err := h.localRoutes(v6, table)
	if err != nil {
		return err
	}
	for _, rt := range routes {
		rt := rt
		if err := h.nl.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting %s route local %s dev lo table %d: %w", famName(v6), anyNet(v6), table, err)
		}
	}
	return nil
}

// ownedRoute is policy routing the live table uses: a rule at RulePriority
// for the table's mark, and the table it looks up.
type ownedRoute struct {
	v6    bool
	mark  uint32
	table int
}

// ownedRouting lists the policy routing of the live table, whatever mark
// and route table it was applied with (they may differ from the Config at
// hand when init runs again with other --tproxy-mark or --tproxy-table).
// It is empty when there is no live tproxy table.
func (h *Handle) ownedRouting() ([]ownedRoute, error) {
	mark, ok, err := h.liveMark()
	if err != nil || !ok {
		return nil, err
	}
	var out []ownedRoute
	for _, v6 := range []bool{false, true} {
		rules, err := h.nl.RuleListFiltered(familyOf(v6), &netlink.Rule{Mark: mark}, netlink.RT_FILTER_MARK)
		if err != nil {
			return nil, fmt.Errorf("listing %s policy rules: %w", famName(v6), err)
		}
		for _, r := range rules {
			if r.Priority == RulePriority && !r.Invert {
				out = append(out, ownedRoute{v6: v6, mark: mark, table: r.Table})
			}
		}
	}
	return out, nil
}

// liveMark reads the mark the live table's prerouting chain diverts on
// (tproxy mode); ok is false without a table or such a rule.
func (h *Handle) liveMark() (mark uint32, ok bool, err error) {
	exists, err := h.tableExists(TableName)
	if err != nil || !exists {
		return 0, false, err
	}
	nt := nfTable(TableName)
	rules, err := h.nft.GetRules(nt, &nftables.Chain{Name: ChainPrerouting, Table: nt})
	if err != nil {
		return 0, false, fmt.Errorf("listing rules of chain %s: %w", ChainPrerouting, err)
	}
	for _, r := range rules {
		for i := 0; i+1 < len(r.Exprs); i++ {
			m, isMeta := r.Exprs[i].(*expr.Meta)
			c, isCmp := r.Exprs[i+1].(*expr.Cmp)
			if isMeta && isCmp && m.Key == expr.MetaKeyMARK && c.Op == expr.CmpOpEq && len(c.Data) == 4 {
				return binaryutil.NativeEndian.Uint32(c.Data), true, nil
			}
		}
	}
	return 0, false, nil
}
