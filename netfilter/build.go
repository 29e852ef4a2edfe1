package netfilter

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Names of the sets and chains of the table; operators read them in
// "nft list table inet meshproxy".
const (
	SetInboundPortsToIgnore  = "inbound-ports-to-ignore"
	SetOutboundPortsToIgnore = "outbound-ports-to-ignore"
	SetPortsToRedirect       = "ports-to-redirect"
	SetSubnetsToIgnoreV4     = "subnets-to-ignore-v4"
	SetSubnetsToIgnoreV6     = "subnets-to-ignore-v6"

	ChainPrerouting     = "prerouting"
	ChainOutput         = "output"
	ChainInbound        = "inbound"
	ChainOutbound       = "outbound"
	ChainDivertOutbound = "divert-outbound"
)

// Build turns a Config into the wanted Ruleset. It talks to no kernel.
func Build(c Config) (*Ruleset, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid interception config: %w", err)
	}
	c.Mode = c.mode()
	c.OutboundPort = c.outboundPort()
	c.InboundPort = c.inboundPort()
	c.Mark = c.mark()
	c.RouteTable = c.routeTable()
	c.InboundPortsToIgnore = normalizePorts(c.InboundPortsToIgnore)
	c.OutboundPortsToIgnore = normalizePorts(c.OutboundPortsToIgnore)
	c.PortsToRedirect = normalizePorts(c.PortsToRedirect)

	b := builder{c: c,
		v4: normalizePrefixes(c.SubnetsToIgnore, false),
	}
	if c.IPv6 {
		b.v6 = normalizePrefixes(c.SubnetsToIgnore, true)
	}
	r := &Ruleset{Config: c, Table: Table{Name: TableName}}
	r.Table.Sets = b.sets()
	if c.Mode == ModeTProxy {
		r.Table.Chains = b.tproxyChains()
		r.Routing = []PolicyRoute{{Mark: c.Mark, Table: c.RouteTable, Priority: RulePriority}}
		if c.IPv6 {
			r.Routing = append(r.Routing, PolicyRoute{IPv6: true, Mark: c.Mark, Table: c.RouteTable, Priority: RulePriority})
		}
	} else {
		r.Table.Chains = b.redirectChains()
	}
	return r, nil
}

// builder holds a normalised config while the chains are assembled.
type builder struct {
	c      Config
	v4, v6 []netip.Prefix
}

func (b builder) sets() []Set {
	var out []Set
	addPorts := func(name string, rs []PortRange) {
		if len(rs) > 0 {
			out = append(out, Set{Name: name, Type: SetPorts, Ports: rs})
		}
	}
	addPorts(SetInboundPortsToIgnore, b.c.InboundPortsToIgnore)
	addPorts(SetOutboundPortsToIgnore, b.c.OutboundPortsToIgnore)
	addPorts(SetPortsToRedirect, b.c.PortsToRedirect)
	if len(b.v4) > 0 {
		out = append(out, Set{Name: SetSubnetsToIgnoreV4, Type: SetIPv4, Prefixes: b.v4})
	}
	if len(b.v6) > 0 {
		out = append(out, Set{Name: SetSubnetsToIgnoreV6, Type: SetIPv6, Prefixes: b.v6})
	}
	return out
}

func rule(comment string, stmts ...Stmt) Rule { return Rule{Stmts: stmts, Comment: comment} }

var notTCP = L4Proto{Proto: unix.IPPROTO_TCP, Not: true}

// commonHead are the first rules of both sub-chains: only TCP is captured,
// and IPv6 only when enabled.
func (b builder) commonHead() []Rule {
	rs := []Rule{rule("only TCP is proxied", notTCP, Return{})}
	if !b.c.IPv6 {
		rs = append(rs, rule("IPv6 capture disabled", NFProto{IPv6: true}, Return{}))
	}
	return rs
}

// ignores are the exemptions by peer subnet and port. dst selects the
// destination address (outbound) rather than the source (inbound).
func (b builder) ignores(dst bool, portSet string, ports []PortRange) []Rule {
	var rs []Rule
	what := "from"
	if dst {
		what = "to"
	}
	if len(b.v4) > 0 {
		rs = append(rs, rule("connections "+what+" ignored subnets", AddrInSet{Dst: dst, Set: SetSubnetsToIgnoreV4}, Return{}))
	}
	if len(b.v6) > 0 {
		rs = append(rs, rule("connections "+what+" ignored subnets", AddrInSet{IPv6: true, Dst: dst, Set: SetSubnetsToIgnoreV6}, Return{}))
	}
	if len(ports) > 0 {
		rs = append(rs, rule("ignored ports", DPortInSet{Set: portSet}, Return{}))
	}
	return rs
}

// proxyExempt are the rules that keep the proxy's own traffic out.
func (b builder) proxyExempt() []Rule {
	var rs []Rule
	if b.c.ProxyUID >= 0 {
		rs = append(rs, rule("the proxy's own connections", SkUID{UID: uint32(b.c.ProxyUID)}, Return{}))
	}
	if b.c.ProxyGID >= 0 {
		rs = append(rs, rule("the proxy's own connections", SkGID{GID: uint32(b.c.ProxyGID)}, Return{}))
	}
	return rs
}

func (b builder) inboundHead() []Rule {
	rs := b.ignores(false, SetInboundPortsToIgnore, b.c.InboundPortsToIgnore)
	if len(b.c.PortsToRedirect) > 0 {
		rs = append(rs, rule("only ports on the allow-list", DPortInSet{Set: SetPortsToRedirect, Not: true}, Return{}))
	}
	return rs
}

var loopbackIn = IfName{Name: "lo"}
var loopbackOut = IfName{Out: true, Name: "lo"}

func (b builder) redirectChains() []Chain {
	inbound := b.commonHead()
	inbound = append(inbound, b.inboundHead()...)
	inbound = append(inbound, rule("to the proxy's inbound listener", RedirectTo{Port: b.c.InboundPort}))

	outbound := b.commonHead()
	outbound = append(outbound, rule("loopback traffic stays local", loopbackOut, Return{}))
	outbound = append(outbound, b.proxyExempt()...)
	outbound = append(outbound, b.ignores(true, SetOutboundPortsToIgnore, b.c.OutboundPortsToIgnore)...)
	outbound = append(outbound, rule("to the proxy's outbound listener", RedirectTo{Port: b.c.OutboundPort}))

	return []Chain{
		{Name: ChainPrerouting, Hook: HookPrerouting, Type: ChainNAT, Priority: PriorityDstNAT, Rules: []Rule{
			rule("local traffic (including the proxy's delivery to the app) is not inbound", loopbackIn, Return{}),
			rule("", Jump{Chain: ChainInbound}),
		}},
		{Name: ChainInbound, Rules: inbound},
		{Name: ChainOutput, Hook: HookOutput, Type: ChainNAT, Priority: PriorityDstNAT, Rules: []Rule{
			rule("", Jump{Chain: ChainOutbound}),
		}},
		{Name: ChainOutbound, Rules: outbound},
	}
}

func (b builder) tproxyChains() []Chain {
	c := b.c
	tcp := L4Proto{Proto: unix.IPPROTO_TCP}
	divert := []Rule{rule("outbound connections to the proxy's outbound listener",
		tcp, NFProto{}, TProxyTo{Addr: netip.MustParseAddr("127.0.0.1"), Port: c.OutboundPort}, Accept{})}
	if c.IPv6 {
		divert = append(divert, rule("outbound connections to the proxy's outbound listener",
			tcp, NFProto{IPv6: true}, TProxyTo{IPv6: true, Addr: netip.IPv6Loopback(), Port: c.OutboundPort}, Accept{}))
	}

	inbound := b.commonHead()
	inbound = append(inbound, rule("replies to connections this host opened", CtReply{}, Return{}))
	inbound = append(inbound, b.inboundHead()...)
	inbound = append(inbound, rule("to the proxy's inbound listener",
		tcp, NFProto{}, TProxyTo{Port: c.InboundPort}, SetMark{Mark: c.Mark}, Accept{}))
	if c.IPv6 {
		inbound = append(inbound, rule("to the proxy's inbound listener",
			tcp, NFProto{IPv6: true}, TProxyTo{IPv6: true, Port: c.InboundPort}, SetMark{Mark: c.Mark}, Accept{}))
	}

	outbound := b.commonHead()
	outbound = append(outbound, rule("loopback traffic stays local", loopbackOut, Return{}))
	outbound = append(outbound, rule("replies of accepted connections", CtReply{}, Return{}))
	outbound = append(outbound, b.proxyExempt()...)
	outbound = append(outbound, b.ignores(true, SetOutboundPortsToIgnore, c.OutboundPortsToIgnore)...)
	outbound = append(outbound, rule("reroute to lo by policy routing, then divert-outbound", SetMark{Mark: c.Mark}))

	return []Chain{
		{Name: ChainPrerouting, Hook: HookPrerouting, Type: ChainFilter, Priority: PriorityMangle, Rules: []Rule{
			rule("marked outbound traffic rerouted to lo", loopbackIn, MarkIs{Mark: c.Mark}, Jump{Chain: ChainDivertOutbound}),
			rule("other local traffic is not inbound", loopbackIn, Return{}),
			rule("", Jump{Chain: ChainInbound}),
		}},
		{Name: ChainDivertOutbound, Rules: divert},
		{Name: ChainInbound, Rules: inbound},
		{Name: ChainOutput, Hook: HookOutput, Type: ChainRoute, Priority: PriorityMangle, Rules: []Rule{
			rule("", Jump{Chain: ChainOutbound}),
		}},
		{Name: ChainOutbound, Rules: outbound},
	}
}
