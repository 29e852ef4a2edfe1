package netfilter

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Mode selects how connections are steered into the proxy.
type Mode string

const (
	// ModeRedirect rewrites destinations with nat REDIRECT; the proxy
	// recovers the original destination with SO_ORIGINAL_DST.
	ModeRedirect Mode = "redirect"
	// ModeTProxy keeps destinations intact with TPROXY and policy routing;
	// the proxy's IP_TRANSPARENT listeners see the original destination as
	// their local address.
	ModeTProxy Mode = "tproxy"
)

// Defaults applied by Build when the matching Config field is zero.
const (
	DefaultOutboundPort uint16 = 4140
	DefaultInboundPort  uint16 = 4143
	DefaultMark         uint32 = 0x539
	DefaultRouteTable          = 133
	// RulePriority is the priority of the "fwmark lookup table" policy
	// routing rule in TPROXY mode. It sits before the main table's rule
	// (32766) so marked packets are delivered locally instead of being
	// routed out, and after the local table's rule (0).
	RulePriority = 32000
	// TableName is the name of the one inet table all rules live in.
	TableName = "meshproxy"
)

// Config describes the interception wanted in one network namespace.
// The zero value is not usable: ProxyUID/ProxyGID 0 means root, which
// Validate refuses, so set the unused one to -1.
type Config struct {
	// Mode is ModeRedirect or ModeTProxy. Empty means ModeRedirect.
	Mode Mode
	// OutboundPort is the proxy's outbound listener port; zero means 4140.
	OutboundPort uint16
	// InboundPort is the proxy's inbound listener port; zero means 4143.
	InboundPort uint16
	// ProxyUID is the UID the proxy runs as; its traffic is never captured.
	// -1 means unset; 0 (root) is refused. At least one of ProxyUID and
	// ProxyGID must be set.
	ProxyUID int
	// ProxyGID is the GID the proxy runs as; -1 means unset; 0 (root) is
	// refused.
	ProxyGID int
	// InboundPortsToIgnore are destination ports of inbound connections
	// that go straight to the application. Nil means none (the init
	// command's flag defaults to 4190,4191).
	InboundPortsToIgnore []PortRange
	// OutboundPortsToIgnore are destination ports of outbound connections
	// that bypass the proxy. Nil means none.
	OutboundPortsToIgnore []PortRange
	// SubnetsToIgnore mixes IPv4 and IPv6 prefixes: inbound connections
	// from them and outbound connections to them bypass the proxy. IPv6
	// prefixes are ignored when IPv6 is false.
	SubnetsToIgnore []netip.Prefix
	// PortsToRedirect is an inbound allow-list of destination ports; nil
	// means every port not ignored is captured.
	PortsToRedirect []PortRange
	// IPv6 also captures IPv6 traffic. When false IPv6 traffic is left
	// alone entirely.
	IPv6 bool
	// Mark is the fwmark TPROXY mode uses for policy routing; zero means
	// 0x539. Unused in redirect mode except to find leftovers to remove.
	Mark uint32
	// RouteTable is the policy routing table of TPROXY mode; zero means 133.
	RouteTable int
}

// PortRange is an inclusive range of ports; a single port has First == Last.
type PortRange struct{ First, Last uint16 }

// String formats the range as nft does: "80" or "8000-8100".
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

func (c Config) mode() Mode {
	if c.Mode == "" {
		return ModeRedirect
	}
	return c.Mode
}

func (c Config) outboundPort() uint16 {
	if c.OutboundPort == 0 {
		return DefaultOutboundPort
	}
	return c.OutboundPort
}

func (c Config) inboundPort() uint16 {
	if c.InboundPort == 0 {
		return DefaultInboundPort
	}
	return c.InboundPort
}

func (c Config) mark() uint32 {
	if c.Mark == 0 {
		return DefaultMark
	}
	return c.Mark
}

func (c Config) routeTable() int {
	if c.RouteTable == 0 {
		return DefaultRouteTable
	}
	return c.RouteTable
}

// Validate reports the first problem that would make the ruleset wrong or
// unloadable. It wraps ErrNoProxyUser when no proxy UID/GID is set.
func (c Config) Validate() error {
	switch c.mode() {
	case ModeRedirect, ModeTProxy:
	default:
		return fmt.Errorf("unknown mode %q: use %q or %q", c.Mode, ModeRedirect, ModeTProxy)
	}
	if c.ProxyUID < 0 && c.ProxyGID < 0 {
		return ErrNoProxyUser
	}
	// Exempting root would let every root process's connections bypass the
	// proxy unseen, and the proxy need not run as root.
	if c.ProxyUID == 0 {
		return errors.New("proxy UID 0 is root: exempting it would let every root process bypass the proxy; run the proxy as its own user (such as 2102) and pass that UID")
	}
	if c.ProxyGID == 0 {
		return errors.New("proxy GID 0 is root: exempting it would let every root-group process bypass the proxy; run the proxy with its own group and pass that GID")
	}
	if c.ProxyUID > math.MaxUint32-1 {
		return fmt.Errorf("proxy UID %d out of range 0-%d", c.ProxyUID, uint32(math.MaxUint32-1))
	}
	if c.ProxyGID > math.MaxUint32-1 {
		return fmt.Errorf("proxy GID %d out of range 0-%d", c.ProxyGID, uint32(math.MaxUint32-1))
	}
	if c.outboundPort() == c.inboundPort() {
		return fmt.Errorf("outbound and inbound port are both %d: the proxy needs two different ports", c.outboundPort())
	}
	for name, rs := range map[string][]PortRange{
		"inbound ports to ignore":  c.InboundPortsToIgnore,
		"outbound ports to ignore": c.OutboundPortsToIgnore,
		"ports to redirect":        c.PortsToRedirect,
	} {
		for _, r := range rs {
			if r.First == 0 || r.First > r.Last {
				return fmt.Errorf("%s: invalid port range %d-%d: ports are 1-65535, first <= last", name, r.First, r.Last)
			}
		}
	}
	for _, p := range c.SubnetsToIgnore {
		if !p.IsValid() {
			return errors.New("subnets to ignore: invalid prefix")
		}
	}
	if c.RouteTable < 0 || c.RouteTable == 253 || c.RouteTable == 254 || c.RouteTable == 255 {
		return fmt.Errorf("route table %d is reserved or invalid: pick an unused table such as %d", c.RouteTable, DefaultRouteTable)
	}
	return nil
}

// ParsePortRanges parses a comma separated list of ports and inclusive
// ranges such as "4190,4191,8000-8100". The empty string yields nil.
func ParsePortRanges(s string) ([]PortRange, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []PortRange
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("empty port in list %q", s)
		}
		first, last, isRange := strings.Cut(item, "-")
		lo, err := parsePort(first)
		if err != nil {
			return nil, err
		}
		hi := lo
		if isRange {
			if hi, err = parsePort(last); err != nil {
				return nil, err
			}
			if lo > hi {
				return nil, fmt.Errorf("port range %q is reversed: write %d-%d", item, hi, lo)
			}
		}
		out = append(out, PortRange{First: lo, Last: hi})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q out of range 1-65535", s)
	}
	return uint16(n), nil
}

// ParseSubnets parses a comma separated list of IPv4 and IPv6 CIDR prefixes
// such as "198.18.0.0/15,2001:2::/48". A bare address means a single host.
// Host bits are cleared. The empty string yields nil.
func ParseSubnets(s string) ([]netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []netip.Prefix
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("empty subnet in list %q", s)
		}
		var p netip.Prefix
		if strings.Contains(item, "/") {
			var err error
			if p, err = netip.ParsePrefix(item); err != nil {
				return nil, fmt.Errorf("subnet %q is not a CIDR prefix like 198.18.0.0/15 or 2001:2::/48", item)
			}
		} else {
			a, err := netip.ParseAddr(item)
			if err != nil {
				return nil, fmt.Errorf("subnet %q is not a CIDR prefix like 198.18.0.0/15 or 2001:2::/48", item)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("subnet %q is an IPv4-mapped IPv6 prefix: write it as IPv4", item)
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("subnet %q has a zone: zones are not allowed", item)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// normalizePorts sorts the ranges and merges overlapping and adjacent ones,
// as the kernel refuses overlapping intervals in one set.
func normalizePorts(rs []PortRange) []PortRange {
	if len(rs) == 0 {
		return nil
	}
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	out := []PortRange{s[0]}
	for _, r := range s[1:] {
		last := &out[len(out)-1]
		if uint32(r.First) <= uint32(last.Last)+1 {
			last.Last = max(last.Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// normalizePrefixes keeps the prefixes of one family, sorted, with those
// contained in another dropped.
func normalizePrefixes(ps []netip.Prefix, v6 bool) []netip.Prefix {
	var fam []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == v6 {
			fam = append(fam, p.Masked())
		}
	}
	slices.SortFunc(fam, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range fam {
		if n := len(out); n > 0 && out[n-1].Overlaps(p) && out[n-1].Bits() <= p.Bits() {
			continue
		}
		out = append(out, p)
	}
	return out
}
