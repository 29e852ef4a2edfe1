package netfilter

import (
	"errors"
	"fmt"
	"net"

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
		if err := h.nl.RuleAdd(r); err != nil {
			return undo, fmt.Errorf("adding %s rule fwmark 0x%x lookup %d: %w", famName(p.IPv6), p.Mark, p.Table, err)
		}
		undo = append(undo, func() error { return h.nl.RuleDel(r) })
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
