package netfilter

import (
	"testing"

	"github.com/vishvananda/netlink"
)

// Re-running Apply must repair what Check reports about the policy rules:
// a rule for our mark and table at another priority or inverted (left by
// another version or by hand; the kernel refuses exact duplicates) is
// removed, so exactly one rule, at RulePriority, remains.
func TestApplyRepairsPolicyRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(r *netlink.Rule)
	}{
		{"other priority", func(r *netlink.Rule) { r.Priority = 100 }},
		{"inverted", func(r *netlink.Rule) { r.Priority = 100; r.Invert = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := openNS(t)
			c := testConfig(ModeTProxy)
			if err := h.Apply(c); err != nil {
				t.Fatal(err)
			}
			r, err := Build(c)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range r.Routing {
				nr := h.newRule(p)
				tc.modify(nr)
				if err := h.nl.RuleAdd(nr); err != nil {
					t.Fatalf("adding the extra %s rule: %v", famName(p.IPv6), err)
				}
			}
			if err := h.Check(c); err == nil {
				t.Fatal("Check = nil with an extra policy rule; want drift")
			}
			if err := h.Apply(c); err != nil {
				t.Fatalf("re-Apply: %v", err)
			}
			if err := h.Check(c); err != nil {
				t.Errorf("Check after re-Apply: %v", err)
			}
			for _, p := range r.Routing {
				rules, err := h.markRules(p.IPv6, p.Mark, p.Table)
				if err != nil {
					t.Fatal(err)
				}
				if len(rules) != 1 || rules[0].Priority != RulePriority || rules[0].Invert {
					t.Errorf("%s rules for mark 0x%x table %d after re-Apply: %+v; want one at priority %d",
						famName(p.IPv6), p.Mark, p.Table, rules, RulePriority)
				}
			}
		})
	}
}
