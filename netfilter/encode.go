package netfilter

import (
	"bytes"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
)

// This file turns the Ruleset data into github.com/google/nftables values.
// Apply and Check both use it, so what is checked is what is applied.

// nfTable is the inet table of the given name.
func nfTable(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
}

// nfSet is one set with its elements, ready for Conn.AddSet.
type nfSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

// nfSets encodes the sets; set IDs are numbered from 1 within the batch
// (we pick them ourselves instead of the library's unsynchronised global
// counter).
func nfSets(t *nftables.Table, sets []Set) ([]nfSet, map[string]uint32) {
	ids := map[string]uint32{}
	var out []nfSet
	for i, s := range sets {
		ns := &nftables.Set{
			Table:        t,
			ID:           uint32(i + 1),
			Name:         s.Name,
			Interval:     true,
			KeyByteOrder: binaryutil.BigEndian,
		}
		switch s.Type {
		case SetPorts:
			ns.KeyType = nftables.TypeInetService
		case SetIPv4:
			ns.KeyType = nftables.TypeIPAddr
		case SetIPv6:
			ns.KeyType = nftables.TypeIP6Addr
		}
		ids[s.Name] = ns.ID
		out = append(out, nfSet{set: ns, elems: s.elements()})
	}
	return out, ids
}

// interval is a half-open key range [start, end); end is nil when the range
// runs to the largest key.
type interval struct{ start, end []byte }

// elements encodes the set as interval elements: a start key, then the key
// after the last one flagged as interval end (omitted when the range runs to
// the largest key). Adjacent ranges are merged, as the kernel refuses an
// end element equal to the next start.
func (s Set) elements() []nftables.SetElement {
	var ivs []interval
	for _, r := range s.Ports {
		iv := interval{start: binaryutil.BigEndian.PutUint16(r.First)}
		if r.Last < 0xffff {
			iv.end = binaryutil.BigEndian.PutUint16(r.Last + 1)
		}
		ivs = append(ivs, iv)
	}
	for _, p := range s.Prefixes {
		ivs = append(ivs, prefixInterval(p))
	}
	slices.SortFunc(ivs, func(a, b interval) int { return bytes.Compare(a.start, b.start) })
	var merged []interval
	for _, iv := range ivs {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if last.end == nil {
				continue
			}
			if bytes.Compare(iv.start, last.end) <= 0 {
				if iv.end == nil || bytes.Compare(iv.end, last.end) > 0 {
					last.end = iv.end
				}
				continue
			}
		}
		merged = append(merged, iv)
	}
	var out []nftables.SetElement
	for _, iv := range merged {
		out = append(out, nftables.SetElement{Key: iv.start})
		if iv.end != nil {
			out = append(out, nftables.SetElement{Key: iv.end, IntervalEnd: true})
		}
	}
	return out
}

func prefixInterval(p netip.Prefix) interval {
	p = p.Masked()
	start := p.Addr().AsSlice()
	last := slices.Clone(start)
	bits := p.Bits()
	for i := range last {
		for b := 0; b < 8; b++ {
			if i*8+b >= bits {
				last[i] |= 0x80 >> b
			}
		}
	}
	// end = last + 1, nil on overflow.
	end := slices.Clone(last)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return interval{start: start, end: end}
		}
	}
	return interval{start: start}
}

// nfChain encodes a chain; base chains get hook, type, priority and policy
// accept.
func nfChain(t *nftables.Table, c Chain) *nftables.Chain {
	ch := &nftables.Chain{Name: c.Name, Table: t}
	if c.Hook == "" {
		return ch
	}
	switch c.Hook {
	case HookPrerouting:
		ch.Hooknum = nftables.ChainHookPrerouting
	case HookOutput:
		ch.Hooknum = nftables.ChainHookOutput
	}
	ch.Type = nftables.ChainType(c.Type)
	ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.Priority))
	accept := nftables.ChainPolicyAccept
	ch.Policy = &accept
	return ch
}

// nfRule encodes a rule; its comment becomes userdata as nft stores it.
func nfRule(t *nftables.Table, ch *nftables.Chain, r Rule, setIDs map[string]uint32) *nftables.Rule {
	nr := &nftables.Rule{Table: t, Chain: ch}
	for _, s := range r.Stmts {
		nr.Exprs = append(nr.Exprs, s.exprs(setIDs)...)
	}
	if r.Comment != "" {
		nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
	}
	return nr
}
