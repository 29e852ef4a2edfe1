package netfilter

import (
	"fmt"
	"net/netip"
	"strings"
)

// Render prints the ruleset as nft text, the way "nft list table inet
// meshproxy" would show it, behind a header comment with the config. The
// policy routing of TPROXY mode, which is not part of nftables, follows as
// comment lines with the equivalent ip rule / ip route commands.
func (r *Ruleset) Render() string {
	var b strings.Builder
	c := r.Config
	fmt.Fprintf(&b, "# meshproxy interception ruleset, mode %s\n", c.Mode)
	fmt.Fprintf(&b, "#   outbound port %d, inbound port %d, proxy uid %s, proxy gid %s, ipv6 %v\n",
		c.OutboundPort, c.InboundPort, idString(c.ProxyUID), idString(c.ProxyGID), onOff(c.IPv6))
	fmt.Fprintf(&b, "#   inbound ports to ignore: %s\n", portsString(c.InboundPortsToIgnore, "none"))
	fmt.Fprintf(&b, "#   outbound ports to ignore: %s\n", portsString(c.OutboundPortsToIgnore, "none"))
	fmt.Fprintf(&b, "#   ports to redirect: %s\n", portsString(c.PortsToRedirect, "all"))
	fmt.Fprintf(&b, "#   subnets to ignore: %s\n", prefixesString(c.SubnetsToIgnore))
	if c.Mode == ModeTProxy {
		fmt.Fprintf(&b, "#   tproxy mark 0x%x, route table %d\n", c.Mark, c.RouteTable)
	}
	b.WriteString("# Applied atomically: the table below replaces any previous one.\n\n")

	t := r.Table
	fmt.Fprintf(&b, "table inet %s {\n", t.Name)
	for i, s := range t.Sets {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tset %s {\n", s.Name)
		fmt.Fprintf(&b, "\t\ttype %s\n", s.Type.nftName())
		b.WriteString("\t\tflags interval\n")
		fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(s.elementStrings(), ", "))
		b.WriteString("\t}\n")
	}
	for i, ch := range t.Chains {
		if i > 0 || len(t.Sets) > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n", ch.Name)
		if ch.Hook != "" {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %s; policy accept;\n", ch.Type, ch.Hook, priorityName(ch.Priority))
		}
		for _, rl := range ch.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", rl.nft())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")

	if len(r.Routing) > 0 {
		b.WriteString("\n# Policy routing (netlink, outside nftables): marked packets are delivered locally.\n")
		for _, p := range r.Routing {
			fam, any := "-4", "0.0.0.0/0"
			if p.IPv6 {
				fam, any = "-6", "::/0"
			}
			fmt.Fprintf(&b, "#   ip %s rule add priority %d fwmark 0x%x lookup %d\n", fam, p.Priority, p.Mark, p.Table)
			fmt.Fprintf(&b, "#   ip %s route replace local %s dev lo table %d\n", fam, any, p.Table)
		}
	}
	return b.String()
}

// nft returns the rule as one line of nft syntax.
func (r Rule) nft() string {
	parts := make([]string, 0, len(r.Stmts)+1)
	for _, s := range r.Stmts {
		parts = append(parts, s.nft())
	}
	if r.Comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.Comment))
	}
	return strings.Join(parts, " ")
}

func (t SetType) nftName() string {
	switch t {
	case SetIPv4:
		return "ipv4_addr"
	case SetIPv6:
		return "ipv6_addr"
	}
	return "inet_service"
}

func (s Set) elementStrings() []string {
	var out []string
	for _, p := range s.Ports {
		out = append(out, p.String())
	}
	for _, p := range s.Prefixes {
		if p.IsSingleIP() {
			out = append(out, p.Addr().String())
		} else {
			out = append(out, p.String())
		}
	}
	return out
}

func priorityName(p int) string {
	switch p {
	case PriorityMangle:
		return "mangle"
	case PriorityDstNAT:
		return "dstnat"
	}
	return fmt.Sprint(p)
}

func idString(id int) string {
	if id < 0 {
		return "unset"
	}
	return fmt.Sprint(id)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func portsString(rs []PortRange, empty string) string {
	if len(rs) == 0 {
		return empty
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

func prefixesString(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
