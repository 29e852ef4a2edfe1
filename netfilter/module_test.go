package netfilter

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// When the kernel lacks a module an expression or chain type needs, it
// answers a bare ENOENT ("no such file or directory"). Every module here
// is built in, so an xtables match the kernel has no module for stands in:
// Apply must name the likely cause and the modules of the mode, and leave
// nothing behind.
func TestMissingKernelModule(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		want string
	}{
		{ModeRedirect, "nft_redir"},
		{ModeTProxy, "nft_tproxy"},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			h, _ := openNS(t)
			h.beforeFlush = func(conn *nftables.Conn) {
				nt := nfTable(TableName)
				conn.AddRule(&nftables.Rule{Table: nt, Chain: &nftables.Chain{Name: ChainInbound, Table: nt},
					Exprs: []expr.Any{&expr.Match{Name: "meshproxy-no-such-module", Info: &xt.Unknown{}}}})
			}
			err := h.Apply(testConfig(tc.mode))
			if err == nil {
				t.Fatal("Apply succeeded; want the kernel to refuse the unknown match")
			}
			if !strings.Contains(err.Error(), "kernel module") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Apply error = %q; want it to point at a missing kernel module such as %s", err, tc.want)
			}
			if left := dump(t, h); left != "" {
				t.Errorf("failed Apply left state behind:\n%s", left)
			}
		})
	}
}
