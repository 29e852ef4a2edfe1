// Package netfilter builds and installs the traffic interception ruleset of
// meshproxy.
//
// A Config becomes a Ruleset value (Build): one inet table named "meshproxy"
// made of named sets, base chains, sub-chains and rules, each rule a list of
// small typed statements, plus the policy routing TPROXY mode needs. The same
// value is either rendered as nft text (Ruleset.Render, for --dry-run and
// golden tests) or installed in a network namespace over netlink (Handle.Apply),
// so the dry run shows exactly what is applied. No nft or iptables binary is
// involved: tables go through github.com/google/nftables in one atomic batch,
// rules and routes through github.com/vishvananda/netlink.
//
// Handle.Check compares the live state with the wanted one and Handle.Remove
// deletes everything Apply may have created, also after a failed apply.
package netfilter
