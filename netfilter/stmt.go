package netfilter

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// exprAny is a netlink expression of github.com/google/nftables.
type exprAny = expr.Any

// Registers: the four legacy 128-bit registers, as nft uses them.
const (
	reg1 = unix.NFT_REG_1
	reg2 = unix.NFT_REG_2
)

// L4Proto matches the layer 4 protocol: "meta l4proto tcp", or with Not
// "meta l4proto != tcp".
type L4Proto struct {
	Proto uint8
	Not   bool
}

func (s L4Proto) nft() string { return "meta l4proto " + neq(s.Not) + protoName(s.Proto) }
func (s L4Proto) exprs(map[string]uint32) []exprAny {
	return []exprAny{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: cmpOp(s.Not), Register: reg1, Data: []byte{s.Proto}},
	}
}

// NFProto matches the network protocol in an inet table: "meta nfproto
// ipv4" or "meta nfproto ipv6".
type NFProto struct{ IPv6 bool }

func (s NFProto) nft() string                       { return "meta nfproto " + ipvName(s.IPv6) }
func (s NFProto) exprs(map[string]uint32) []exprAny { return nfprotoExprs(s.IPv6) }

func nfprotoExprs(v6 bool) []exprAny {
	p := byte(unix.NFPROTO_IPV4)
	if v6 {
		p = unix.NFPROTO_IPV6
	}
	return []exprAny{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}},
	}
}

// IfName matches the input (iifname) or, with Out, the output (oifname)
// interface name.
type IfName struct {
	Out  bool
	Name string
}

func (s IfName) nft() string {
	k := "iifname"
	if s.Out {
		k = "oifname"
	}
	return fmt.Sprintf("%s %q", k, s.Name)
}

func (s IfName) exprs(map[string]uint32) []exprAny {
	k := expr.MetaKeyIIFNAME
	if s.Out {
		k = expr.MetaKeyOIFNAME
	}
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, s.Name)
	return []exprAny{
		&expr.Meta{Key: k, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: name},
	}
}

// MarkIs matches the packet mark: "meta mark 0x00000539".
type MarkIs struct{ Mark uint32 }

func (s MarkIs) nft() string { return fmt.Sprintf("meta mark 0x%08x", s.Mark) }
func (s MarkIs) exprs(map[string]uint32) []exprAny {
	return []exprAny{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.Mark)},
	}
}

// SkUID matches the UID owning the local socket: "meta skuid 2102".
type SkUID struct{ UID uint32 }

func (s SkUID) nft() string { return fmt.Sprintf("meta skuid %d", s.UID) }
func (s SkUID) exprs(map[string]uint32) []exprAny {
	return []exprAny{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.UID)},
	}
}

// SkGID matches the GID owning the local socket: "meta skgid 2102".
type SkGID struct{ GID uint32 }

func (s SkGID) nft() string { return fmt.Sprintf("meta skgid %d", s.GID) }
func (s SkGID) exprs(map[string]uint32) []exprAny {
	return []exprAny{
		&expr.Meta{Key: expr.MetaKeySKGID, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.GID)},
	}
}

// CtReply matches packets travelling in the reply direction of their
// connection: "ct direction reply".
type CtReply struct{}

func (CtReply) nft() string { return "ct direction reply" }
func (CtReply) exprs(map[string]uint32) []exprAny {
	return []exprAny{
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{ctDirReply}},
	}
}

// AddrInSet matches the source (or, with Dst, destination) address
// against a named set: "ip saddr @subnets-to-ignore-v4". Like nft, it
// first matches the network protocol, as an inet table sees both.
type AddrInSet struct {
	IPv6 bool
	Dst  bool
	Set  string
}

func (s AddrInSet) nft() string {
	fam, dir := "ip", "saddr"
	if s.IPv6 {
		fam = "ip6"
	}
	if s.Dst {
		dir = "daddr"
	}
	return fmt.Sprintf("%s %s @%s", fam, dir, s.Set)
}

func (s AddrInSet) exprs(ids map[string]uint32) []exprAny {
	off, n := uint32(12), uint32(4) // IPv4 saddr
	switch {
	case !s.IPv6 && s.Dst:
		off = 16
	case s.IPv6 && !s.Dst:
		off, n = 8, 16
	case s.IPv6 && s.Dst:
		off, n = 24, 16
	}
	return append(nfprotoExprs(s.IPv6),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: reg1, SetName: s.Set, SetID: ids[s.Set]},
	)
}

// DPortInSet matches the TCP destination port against a named set:
// "tcp dport @inbound-ports-to-ignore", or with Not "tcp dport !=
// @ports-to-redirect". Like nft, it first matches l4proto tcp.
type DPortInSet struct {
	Set string
	Not bool
}

func (s DPortInSet) nft() string { return "tcp dport " + neq(s.Not) + "@" + s.Set }
func (s DPortInSet) exprs(ids map[string]uint32) []exprAny {
	return append(L4Proto{Proto: unix.IPPROTO_TCP}.exprs(nil),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: s.Set, SetID: ids[s.Set], Invert: s.Not},
	)
}

// SetMark sets the packet mark: "meta mark set 0x00000539".
type SetMark struct{ Mark uint32 }

func (s SetMark) nft() string { return fmt.Sprintf("meta mark set 0x%08x", s.Mark) }
func (s SetMark) exprs(map[string]uint32) []exprAny {
	return []exprAny{
		&expr.Immediate{Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.Mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// Return ends the current chain: "return".
type Return struct{}

func (Return) nft() string { return "return" }
func (Return) exprs(map[string]uint32) []exprAny {
	return []exprAny{&expr.Verdict{Kind: expr.VerdictReturn}}
}

// Accept accepts the packet for this hook: "accept".
type Accept struct{}

func (Accept) nft() string { return "accept" }
func (Accept) exprs(map[string]uint32) []exprAny {
	return []exprAny{&expr.Verdict{Kind: expr.VerdictAccept}}
}

// Jump continues in another chain of the table: "jump inbound".
type Jump struct{ Chain string }

func (s Jump) nft() string { return "jump " + s.Chain }
func (s Jump) exprs(map[string]uint32) []exprAny {
	return []exprAny{&expr.Verdict{Kind: expr.VerdictJump, Chain: s.Chain}}
}

// RedirectTo redirects the connection to a local port (nat chains only):
// "redirect to :4143".
type RedirectTo struct{ Port uint16 }

func (s RedirectTo) nft() string { return fmt.Sprintf("redirect to :%d", s.Port) }
func (s RedirectTo) exprs(map[string]uint32) []exprAny {
	return []exprAny{
		&expr.Immediate{Register: reg1, Data: binaryutil.BigEndian.PutUint16(s.Port)},
		// As the kernel reports it back: min and max port from the same
		// register, NF_NAT_RANGE_PROTO_SPECIFIED.
		&expr.Redir{RegisterProtoMin: reg1, RegisterProtoMax: reg1, Flags: natRangeProtoSpecified},
	}
}

// TProxyTo hands the packet to a local transparent socket (prerouting
// only): "tproxy ip to 127.0.0.1:4140", or "tproxy ip to :4143" when Addr
// is the zero value (the packet's destination address is kept). In an inet
// table the kernel needs the family of the statement, and nft insists on a
// preceding "meta nfproto" match of the same family.
type TProxyTo struct {
	IPv6 bool
	Addr netip.Addr
	Port uint16
}

func (s TProxyTo) nft() string {
	fam := "ip"
	if s.IPv6 {
		fam = "ip6"
	}
	addr := ""
	if s.Addr.IsValid() {
		addr = s.Addr.String()
		if s.IPv6 {
			addr = "[" + addr + "]"
		}
	}
	return fmt.Sprintf("tproxy %s to %s:%d", fam, addr, s.Port)
}

func (s TProxyTo) exprs(map[string]uint32) []exprAny {
	fam := byte(unix.NFPROTO_IPV4)
	if s.IPv6 {
		fam = unix.NFPROTO_IPV6
	}
	var out []exprAny
	tp := &expr.TProxy{Family: fam, TableFamily: unix.NFPROTO_INET, RegPort: reg1}
	if s.Addr.IsValid() {
		out = append(out, &expr.Immediate{Register: reg1, Data: s.Addr.AsSlice()})
		tp.RegAddr = reg1
		tp.RegPort = reg2
	}
	out = append(out, &expr.Immediate{Register: tp.RegPort, Data: binaryutil.BigEndian.PutUint16(s.Port)})
	return append(out, tp)
}

func neq(not bool) string {
	if not {
		return "!= "
	}
	return ""
}

func cmpOp(not bool) expr.CmpOp {
	if not {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

func ipvName(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return fmt.Sprint(p)
}

// ctDirReply is IP_CT_DIR_REPLY of linux/netfilter/nf_conntrack_tuple_common.h.
const ctDirReply = 1

// natRangeProtoSpecified is NF_NAT_RANGE_PROTO_SPECIFIED of
// linux/netfilter/nf_nat.h.
const natRangeProtoSpecified = 0x2
