package netfilter

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// github.com/google/nftables v0.3.0 silently drops expressions it cannot
// parse when it lists rules, and "tproxy" is one of them (its TProxy type
// can be marshalled but not read back). Check must see every expression,
// so it dumps the rules itself and turns each expression into canonical
// bytes: known expressions are parsed and marshalled again by the library,
// tproxy is decoded here, anything else is kept opaque (and so never equals
// a wanted expression).

// liveRule is a rule as read from the kernel.
type liveRule struct {
	Handle   uint64
	UserData []byte
	// Exprs holds one canonical encoding per expression, comparable with
	// canonicalExpr of a wanted expression.
	Exprs [][]byte
}

// dumpRules returns the rules of every chain of the inet table, in order.
func (h *Handle) dumpRules(table string) (map[string][]liveRule, error) {
	cfg := &netlink.Config{}
	if h.ns.IsOpen() {
		cfg.NetNS = int(h.ns)
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("dialing nftables netlink: %w", err)
	}
	defer conn.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return nil, fmt.Errorf("listing rules of table inet %s: %w", table, err)
	}
	out := map[string][]liveRule{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		chain, r, err := parseRuleMsg(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("parsing a rule of table inet %s: %w", table, err)
		}
		out[chain] = append(out[chain], r)
	}
	return out, nil
}

func parseRuleMsg(b []byte) (string, liveRule, error) {
	var chain string
	var r liveRule
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", r, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.Handle = ad.Uint64()
		case unix.NFTA_RULE_USERDATA:
			r.UserData = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					list.Nested(func(e *netlink.AttributeDecoder) error {
						var name string
						var data []byte
						for e.Next() {
							switch e.Type() {
							case unix.NFTA_EXPR_NAME:
								name = e.String()
							case unix.NFTA_EXPR_DATA:
								data = e.Bytes()
							}
						}
						r.Exprs = append(r.Exprs, decodeExpr(name, data))
						return e.Err()
					})
				}
				return list.Err()
			})
		}
	}
	return chain, r, ad.Err()
}

// decodeExpr turns one kernel expression into its canonical bytes.
func decodeExpr(name string, data []byte) []byte {
	opaque := append([]byte("opaque:"+name+":"), data...)
	var e expr.Any
	switch name {
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "payload":
		e = &expr.Payload{}
	case "lookup":
		e = &expr.Lookup{}
	case "immediate":
		e = &expr.Immediate{}
	case "ct":
		e = &expr.Ct{}
	case "redir":
		e = &expr.Redir{}
	case "tproxy":
		tp, err := decodeTProxy(data)
		if err != nil {
			return opaque
		}
		e = tp
	default:
		return opaque
	}
	if name != "tproxy" {
		if err := expr.Unmarshal(byte(unix.NFPROTO_INET), data, e); err != nil {
			return opaque
		}
	}
	// A verdict is an immediate into the verdict register.
	if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
		v := &expr.Verdict{}
		if err := expr.Unmarshal(byte(unix.NFPROTO_INET), data, v); err != nil {
			return opaque
		}
		e = v
	}
	b, err := canonicalExpr(e)
	if err != nil {
		return opaque
	}
	return b
}

// decodeTProxy reads the tproxy attributes, which are all 32-bit.
func decodeTProxy(data []byte) (*expr.TProxy, error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	tp := &expr.TProxy{}
	for ad.Next() {
		switch ad.Type() {
		case expr.NFTA_TPROXY_FAMILY:
			tp.Family = byte(ad.Uint32())
		case expr.NFTA_TPROXY_REG_ADDR:
			tp.RegAddr = ad.Uint32()
		case expr.NFTA_TPROXY_REG_PORT:
			tp.RegPort = ad.Uint32()
		}
	}
	return tp, ad.Err()
}

// canonicalExpr marshals an expression for comparison. Set IDs only exist
// within one transaction, so lookups compare by set name.
func canonicalExpr(e expr.Any) ([]byte, error) {
	switch v := e.(type) {
	case *expr.Lookup:
		c := *v
		c.SetID = 0
		e = &c
	case *expr.TProxy:
		c := *v
		c.TableFamily = 0
		e = &c
	}
	return expr.Marshal(byte(unix.NFPROTO_INET), e)
}
