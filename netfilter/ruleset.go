package netfilter

import (
	"net/netip"
)

// Ruleset is the complete wanted state for one network namespace: one inet
// table and, in TPROXY mode, the policy routing that delivers marked
// packets locally. Build makes it; Render prints it; Handle.Apply installs it.
type Ruleset struct {
	// Config is the validated configuration the ruleset was built from,
	// with defaults filled in.
	Config Config
	// Table is the one inet table.
	Table Table
	// Routing lists the policy routing rules and routes (TPROXY mode
	// only), one per address family.
	Routing []PolicyRoute
}

// Table is an nftables table of the inet family.
type Table struct {
	Name   string
	Sets   []Set
	Chains []Chain
}

// SetType is the key type of a named set.
type SetType int

// Set key types used by the ruleset.
const (
	// SetPorts holds TCP/UDP ports (nft type inet_service).
	SetPorts SetType = iota
	// SetIPv4 holds IPv4 addresses (nft type ipv4_addr).
	SetIPv4
	// SetIPv6 holds IPv6 addresses (nft type ipv6_addr).
	SetIPv6
)

// Set is a named interval set. Exactly one of Ports and Prefixes is used,
// depending on Type; both are kept sorted and merged.
type Set struct {
	Name     string
	Type     SetType
	Ports    []PortRange
	Prefixes []netip.Prefix
}

// Hook is the netfilter hook of a base chain.
type Hook string

// Hooks used by the ruleset.
const (
	HookPrerouting Hook = "prerouting"
	HookOutput     Hook = "output"
)

// ChainType is the type of a base chain.
type ChainType string

// Chain types used by the ruleset.
const (
	ChainNAT    ChainType = "nat"
	ChainFilter ChainType = "filter"
	ChainRoute  ChainType = "route"
)

// Standard chain priorities, as nft names them.
const (
	PriorityMangle = -150
	PriorityDstNAT = -100
)

// Chain is a chain of the table. A base chain has a non-empty Hook and
// is attached to the hook with Type and Priority and policy accept; a
// regular chain (Hook == "") is only reached by jumps.
type Chain struct {
	Name     string
	Hook     Hook
	Type     ChainType
	Priority int
	Rules    []Rule
}

// Rule is a list of statements evaluated left to right: matches first, then
// at most one action that ends the rule. Comment is stored in the kernel as
// rule userdata, as nft does.
type Rule struct {
	Stmts   []Stmt
	Comment string
}

// Stmt is one match or action of a rule. The concrete types are the small
// values in stmt.go; each knows its nft text and its netlink expressions.
type Stmt interface {
	// nft returns the statement as nft syntax.
	nft() string
	// exprs returns the netlink expressions of the statement.
	exprs(setIDs map[string]uint32) []exprAny
}

// PolicyRoute is the TPROXY policy routing of one address family: the rule
// "fwmark Mark lookup Table" at Priority and the route
// "local <any> dev lo table Table".
type PolicyRoute struct {
	IPv6     bool
	Mark     uint32
	Table    int
	Priority int
}
