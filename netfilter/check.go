package netfilter

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

// DriftError is the error Check returns when live and wanted state differ.
// It wraps ErrDrift.
type DriftError struct {
	// Diffs lists the differences, one human readable line each.
	Diffs []string
}

// Error lists the differences, one per line.
func (e *DriftError) Error() string {
	return fmt.Sprintf("%v:\n  %s", ErrDrift, strings.Join(e.Diffs, "\n  "))
}

// Unwrap makes errors.Is(err, ErrDrift) true.
func (e *DriftError) Unwrap() error { return ErrDrift }

// Check compares the namespace's live table and policy routing with what c
// wants. It returns nil when they are equal, a *DriftError (wrapping
// ErrDrift) listing the differences when they are not, and another error
// when the state cannot be read.
func (h *Handle) Check(c Config) error {
	r, err := Build(c)
	if err != nil {
		return err
	}
	var diffs []string
	d, err := h.checkTable(r.Table)
	if err != nil {
		return err
	}
	diffs = append(diffs, d...)
	d, err = h.checkRouting(r)
	if err != nil {
		return err
	}
	diffs = append(diffs, d...)
	if len(diffs) > 0 {
		return &DriftError{Diffs: diffs}
	}
	return nil
}

func (h *Handle) checkTable(want Table) ([]string, error) {
	exists, err := h.tableExists(want.Name)
	if err != nil {
		return nil, err
	}
	if !exists {
		return []string{fmt.Sprintf("table inet %s is missing", want.Name)}, nil
	}
	nt := nfTable(want.Name)
	var diffs []string

	// Sets.
	liveSets, err := h.nft.GetSets(nt)
	if err != nil {
		return nil, fmt.Errorf("listing sets of table inet %s: %w", want.Name, err)
	}
	liveSetByName := map[string]*nftables.Set{}
	for _, s := range liveSets {
		liveSetByName[s.Name] = s
	}
	wantSets, ids := nfSets(nt, want.Sets)
	for _, ws := range wantSets {
		ls, ok := liveSetByName[ws.set.Name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("set %s is missing", ws.set.Name))
			continue
		}
		delete(liveSetByName, ws.set.Name)
		if ls.KeyType.Name != ws.set.KeyType.Name || ls.Interval != ws.set.Interval || ls.IsMap || ls.Constant {
			diffs = append(diffs, fmt.Sprintf("set %s has type %s (interval %v), want %s (interval %v)",
				ls.Name, ls.KeyType.Name, ls.Interval, ws.set.KeyType.Name, ws.set.Interval))
			continue
		}
		elems, err := h.nft.GetSetElements(ls)
		if err != nil {
			return nil, fmt.Errorf("listing elements of set %s: %w", ls.Name, err)
		}
		if !sameElements(elems, ws.elems) {
			diffs = append(diffs, fmt.Sprintf("set %s elements differ from { %s }", ls.Name,
				strings.Join(setByName(want.Sets, ls.Name).elementStrings(), ", ")))
		}
	}
	for _, name := range sortedKeys(liveSetByName) {
		diffs = append(diffs, fmt.Sprintf("extra set %s", name))
	}

	// Chains.
	liveChains, err := h.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	liveRules, err := h.dumpRules(want.Name)
	if err != nil {
		return nil, err
	}
	liveChainByName := map[string]*nftables.Chain{}
	for _, ch := range liveChains {
		if ch.Table.Name == want.Name {
			liveChainByName[ch.Name] = ch
		}
	}
	for _, wc := range want.Chains {
		lc, ok := liveChainByName[wc.Name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("chain %s is missing", wc.Name))
			continue
		}
		delete(liveChainByName, wc.Name)
		if d := chainHeaderDiff(lc, nfChain(nt, wc)); d != "" {
			diffs = append(diffs, fmt.Sprintf("chain %s: %s", wc.Name, d))
		}
		diffs = append(diffs, ruleDiffs(wc, liveRules[wc.Name], nfChain(nt, wc), nt, ids)...)
	}
	for _, name := range sortedKeys(liveChainByName) {
		diffs = append(diffs, fmt.Sprintf("extra chain %s", name))
	}
	return diffs, nil
}

func chainHeaderDiff(live, want *nftables.Chain) string {
	describe := func(c *nftables.Chain) string {
		if c.Hooknum == nil {
			return "regular chain"
		}
		s := fmt.Sprintf("type %s hook %d priority %d", c.Type, *c.Hooknum, *c.Priority)
		if c.Policy != nil {
			s += fmt.Sprintf(" policy %d", *c.Policy)
		}
		return s
	}
	l, w := describe(live), describe(want)
	if l != w {
		return fmt.Sprintf("is %q, want %q", l, w)
	}
	return ""
}

func ruleDiffs(wc Chain, live []liveRule, ch *nftables.Chain, nt *nftables.Table, ids map[string]uint32) []string {
	var diffs []string
	for i, wr := range wc.Rules {
		if i >= len(live) {
			diffs = append(diffs, fmt.Sprintf("chain %s: missing rule #%d %q", wc.Name, i+1, wr.nft()))
			continue
		}
		want := nfRule(nt, ch, wr, ids)
		if !sameRule(live[i], want) {
			diffs = append(diffs, fmt.Sprintf("chain %s: rule #%d (handle %d) is not the wanted %q", wc.Name, i+1, live[i].Handle, wr.nft()))
		}
	}
	for i := len(wc.Rules); i < len(live); i++ {
		diffs = append(diffs, fmt.Sprintf("chain %s: extra rule #%d (handle %d)%s", wc.Name, i+1, live[i].Handle, commentOf(live[i].UserData)))
	}
	return diffs
}

func commentOf(ud []byte) string {
	if c, ok := userdata.GetString(ud, userdata.TypeComment); ok {
		return fmt.Sprintf(" comment %q", c)
	}
	return ""
}

// sameRule compares the canonical expressions and the userdata (comment).
func sameRule(live liveRule, want *nftables.Rule) bool {
	if !bytes.Equal(live.UserData, want.UserData) || len(live.Exprs) != len(want.Exprs) {
		return false
	}
	for i := range want.Exprs {
		b, err := canonicalExpr(want.Exprs[i])
		if err != nil || !bytes.Equal(live.Exprs[i], b) {
			return false
		}
	}
	return true
}

// sameElements compares set elements by key and interval-end flag, in any
// order.
func sameElements(live, want []nftables.SetElement) bool {
	norm := func(es []nftables.SetElement) []string {
		out := make([]string, len(es))
		for i, e := range es {
			out[i] = fmt.Sprintf("%x/%v", e.Key, e.IntervalEnd)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(norm(live), norm(want))
}

func setByName(sets []Set, name string) Set {
	for _, s := range sets {
		if s.Name == name {
			return s
		}
	}
	return Set{}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (h *Handle) checkRouting(r *Ruleset) ([]string, error) {
	var diffs []string
	c := r.Config
	wanted := map[bool]PolicyRoute{}
	for _, p := range r.Routing {
		wanted[p.IPv6] = p
	}
	for _, v6 := range []bool{false, true} {
		rules, err := h.markRules(v6, c.Mark, c.RouteTable)
		if err != nil {
			return nil, err
		}
		routes, err := h.localRoutes(v6, c.RouteTable)
		if err != nil {
			return nil, err
		}
		fam := famName(v6)
		p, want := wanted[v6]
		if !want {
			if len(rules) > 0 {
				diffs = append(diffs, fmt.Sprintf("%s policy rule fwmark 0x%x lookup %d present but not wanted in %s mode", fam, c.Mark, c.RouteTable, c.Mode))
			}
			if len(routes) > 0 {
				diffs = append(diffs, fmt.Sprintf("%s route local %s dev lo table %d present but not wanted in %s mode", fam, anyNet(v6), c.RouteTable, c.Mode))
			}
			continue
		}
		good := 0
		for _, lr := range rules {
			if lr.Priority == p.Priority && !lr.Invert {
				good++
			}
		}
		switch {
		case good == 0:
			diffs = append(diffs, fmt.Sprintf("%s policy rule priority %d fwmark 0x%x lookup %d is missing", fam, p.Priority, p.Mark, p.Table))
		case len(rules) > 1:
			diffs = append(diffs, fmt.Sprintf("%s policy rule fwmark 0x%x lookup %d is present %d times", fam, p.Mark, p.Table, len(rules)))
		}
		if len(routes) == 0 {
			diffs = append(diffs, fmt.Sprintf("%s route local %s dev lo table %d is missing", fam, anyNet(v6), p.Table))
		}
	}
	return diffs, nil
}

var _ error = (*DriftError)(nil)
