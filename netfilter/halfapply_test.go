package netfilter

import (
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// A failed Apply that would switch away from tproxy (to redirect, or to
// tproxy without IPv6) must leave the earlier state whole: the old table
// stays, so its policy routing must stay too.
func TestFailedApplyKeepsPreviousRouting(t *testing.T) {
	for _, tc := range []struct {
		name string
		next func() Config
	}{
		{"tproxy to redirect", func() Config { return testConfig(ModeRedirect) }},
		{"tproxy to tproxy IPv4 only", func() Config { c := testConfig(ModeTProxy); c.IPv6 = false; return c }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := openNS(t)
			first := testConfig(ModeTProxy)
			if err := h.Apply(first); err != nil {
				t.Fatal(err)
			}
			before := dump(t, h)
			h.beforeFlush = func(conn *nftables.Conn) {
				nt := nfTable(TableName)
				conn.AddRule(&nftables.Rule{Table: nt, Chain: &nftables.Chain{Name: ChainInbound, Table: nt},
					Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "no-such-chain"}}})
			}
			if err := h.Apply(tc.next()); err == nil {
				t.Fatal("Apply succeeded; want the injected failure")
			}
			if after := dump(t, h); after != before {
				t.Errorf("failed Apply half-changed the live state:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if err := h.Check(first); err != nil {
				t.Errorf("Check of the earlier config after the failed Apply: %v", err)
			}
			h.beforeFlush = nil
			if err := h.Apply(tc.next()); err != nil {
				t.Fatalf("Apply after failure: %v", err)
			}
			if err := h.Check(tc.next()); err != nil {
				t.Errorf("Check after successful Apply: %v", err)
			}
		})
	}
}
