package netfilter

import (
	"fmt"

	"github.com/google/nftables"
)

// LiveMode reads which interception mode the namespace's live ruleset uses,
// from the type of its prerouting chain: nat for redirect, filter for
// tproxy. ok is false when there is no meshproxy table. Reading nftables
// needs CAP_NET_ADMIN; without it the error wraps the kernel's EPERM.
func (h *Handle) LiveMode() (mode Mode, ok bool, err error) {
	exists, err := h.tableExists(TableName)
	if err != nil || !exists {
		return "", false, err
	}
	chains, err := h.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", false, fmt.Errorf("listing nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != TableName || c.Name != ChainPrerouting || c.Type == "" {
			continue
		}
		switch c.Type {
		case nftables.ChainTypeNAT:
			return ModeRedirect, true, nil
		case nftables.ChainTypeFilter:
			return ModeTProxy, true, nil
		}
		return "", true, fmt.Errorf("table %s: chain %s has type %q, made by neither mode", TableName, ChainPrerouting, c.Type)
	}
	return "", true, fmt.Errorf("table %s has no %s base chain: run meshproxy init again", TableName, ChainPrerouting)
}
