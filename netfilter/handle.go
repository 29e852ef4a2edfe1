package netfilter

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Handle talks to the nftables and routing subsystems of one network
// namespace. It is not safe for concurrent use.
type Handle struct {
	ns      netns.NsHandle
	nft     *nftables.Conn
	nl      *netlink.Handle
	loIndex int

	// beforeFlush, when set (tests only), runs on the batch right before
	// it is sent, so a test can make the kernel reject it.
	beforeFlush func(*nftables.Conn)
}

// Open returns a Handle for the network namespace at netnsPath (such as
// /run/netns/NAME or /proc/PID/ns/net); "" means the namespace of the
// calling thread at the time of the call.
func Open(netnsPath string) (*Handle, error) {
	// The current namespace is used as is (no setns, which would need
	// CAP_SYS_ADMIN): ns stays None and the netlink sockets are opened
	// where the caller is.
	ns := netns.None()
	var err error
	if netnsPath != "" {
		ns, err = netns.GetFromPath(netnsPath)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("network namespace %q does not exist: create it first (ip netns add NAME) or pass an existing /proc/PID/ns/net", netnsPath)
			}
			return nil, fmt.Errorf("opening network namespace %q: %w", netnsPath, err)
		}
		var st unix.Statfs_t
		// nsfs holds every namespace type: a mount or UTS namespace file
		// passes the first test and only NS_GET_NSTYPE tells it apart.
		if err := unix.Fstatfs(int(ns), &st); err != nil || st.Type != unix.NSFS_MAGIC || !isNetNS(int(ns)) {
			ns.Close()
			return nil, fmt.Errorf("%q is not a network namespace: pass a path like /run/netns/NAME or /proc/PID/ns/net", netnsPath)
		}
	}
	h := &Handle{ns: ns}
	if h.nft, err = nftables.New(h.nftOptions()...); err != nil {
		ns.Close()
		return nil, fmt.Errorf("opening nftables netlink connection: %w", err)
	}
	if ns.IsOpen() {
		h.nl, err = netlink.NewHandleAt(ns)
	} else {
		h.nl, err = netlink.NewHandle()
	}
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("opening rtnetlink handle: %w", err)
	}
	lo, err := h.nl.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("finding the loopback interface: %w", err)
	}
	h.loIndex = lo.Attrs().Index
	return h, nil
}

// isNetNS reports whether the nsfs file fd is a network namespace. A kernel
// too old for NS_GET_NSTYPE (before 4.11) gets the benefit of the doubt.
func isNetNS(fd int) bool {
	t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return true
	}
	return t == unix.CLONE_NEWNET
}

// nftOptions selects the handle's namespace for an nftables connection;
// none for the current namespace.
func (h *Handle) nftOptions() []nftables.ConnOption {
	if h.ns.IsOpen() {
		return []nftables.ConnOption{nftables.WithNetNSFd(int(h.ns))}
	}
	return nil
}

// Close releases the handle. It is safe to call twice.
func (h *Handle) Close() error {
	if h.nl != nil {
		h.nl.Close()
		h.nl = nil
	}
	if h.ns.IsOpen() {
		if err := h.ns.Close(); err != nil {
			return fmt.Errorf("closing network namespace: %w", err)
		}
		h.ns = netns.None()
	}
	return nil
}

// Apply makes the namespace's interception state equal to what c wants.
// Policy routing goes first, then the whole table is replaced in one
// atomic nftables transaction, then policy routing the new table does not
// need is removed, including that of an earlier apply with another mark or
// route table. Applying twice equals applying once. If the transaction
// fails, the policy routing this call added is removed again and the earlier
// state is left whole, so no half-applied state remains.
func (h *Handle) Apply(c Config) error {
	r, err := Build(c)
	if err != nil {
		return err
	}
	c = r.Config
	var undo routingUndo
	if len(r.Routing) > 0 {
		// The kernel refuses IPv6 routes via a down lo (ENETDOWN), and
		// TPROXY delivers through lo anyway; a fresh namespace has it
		// down. Remove leaves it up: every real namespace has lo up.
		if err := h.loUp(); err != nil {
			return err
		}
	}
	wanted := map[bool]bool{}
	for _, p := range r.Routing {
		wanted[p.IPv6] = true
		u, err := h.ensureRouting(p)
		undo = append(undo, u...)
		if err != nil {
			return errors.Join(fmt.Errorf("applying policy routing: %w", err), undo.run())
		}
	}
	// The routing the table in place uses, perhaps for another mark or
	// route table: replaced below once the new table is in.
	owned, err := h.ownedRouting()
	if err != nil {
		return errors.Join(fmt.Errorf("reading the live policy routing: %w", err), undo.run())
	}
	if err := h.applyTable(r.Table, c.Mode); err != nil {
		return errors.Join(err, undo.run())
	}
	// Leftovers of an earlier apply with another mode or IPv6 setting, and
	// stray rules for our mark and table, go only once the new table is
	// in: if the table fails, the old table keeps the routing it needs.
	for _, p := range r.Routing {
		if err := h.pruneRules(p); err != nil {
			return fmt.Errorf("removing stray policy rules: %w", err)
		}
	}
	for _, v6 := range []bool{false, true} {
		if !wanted[v6] {
			if err := h.removeRouting(v6, c.Mark, c.RouteTable); err != nil {
				return fmt.Errorf("removing stale policy routing: %w", err)
			}
		}
	}
	for _, o := range owned {
		if wanted[o.v6] && o.mark == c.Mark && o.table == c.RouteTable {
			continue
		}
		if err := h.removeRules(o.v6, o.mark, o.table); err != nil {
			return fmt.Errorf("removing the earlier policy routing: %w", err)
		}
		if wanted[o.v6] && o.table == c.RouteTable {
			continue // the table's route is the new routing's too
		}
		if err := h.removeRoutes(o.v6, o.table); err != nil {
			return fmt.Errorf("removing the earlier policy routing: %w", err)
		}
	}
	return nil
}

func (h *Handle) loUp() error {
	lo, err := h.nl.LinkByIndex(h.loIndex)
	if err != nil {
		return fmt.Errorf("finding the loopback interface: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := h.nl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing lo up (tproxy delivers through it): %w", err)
	}
	return nil
}

// applyTable replaces the table in one transaction: add (so the delete
// cannot fail when it is absent), delete, then build it afresh.
func (h *Handle) applyTable(t Table, mode Mode) error {
	// A fresh connection per batch: a Conn keeps a serialisation error
	// forever, and must not carry messages of a failed batch.
	conn, err := h.batchConn()
	if err != nil {
		return err
	}
	nt := nfTable(t.Name)
	conn.AddTable(nt)
	conn.DelTable(nt)
	conn.AddTable(nt)
	sets, ids := nfSets(nt, t.Sets)
	for _, s := range sets {
		// The element list of one message is one netlink attribute, whose
		// length the library writes as 16 bits without a check: past 64
		// KiB the kernel would get a truncated list. So the elements go in
		// chunks, one message each, all in this one batch.
		first, rest := splitElems(s.elems)
		if err := conn.AddSet(s.set, first); err != nil {
			return fmt.Errorf("encoding set %s: %w", s.set.Name, err)
		}
		for len(rest) > 0 {
			var chunk []nftables.SetElement
			chunk, rest = splitElems(rest)
			if err := conn.SetAddElements(s.set, chunk); err != nil {
				return fmt.Errorf("encoding set %s: %w", s.set.Name, err)
			}
		}
	}
	chains := map[string]*nftables.Chain{}
	for _, c := range t.Chains {
		chains[c.Name] = conn.AddChain(nfChain(nt, c))
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			conn.AddRule(nfRule(nt, chains[c.Name], r, ids))
		}
	}
	if h.beforeFlush != nil {
		h.beforeFlush(conn)
	}
	if err := conn.Flush(); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			n := 0
			for _, s := range sets {
				n += len(s.elems)
			}
			return fmt.Errorf("installing nftables table inet %s: the ruleset (%d set elements) is too big for one netlink batch: merge the ignored subnets or ports into fewer, wider ranges: %w", t.Name, n, err)
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			// Our batch is self-contained, so "not found" means the
			// kernel has no implementation of an expression or chain type.
			return fmt.Errorf("installing nftables table inet %s: the kernel refused it, most likely for lack of a kernel module %s mode needs (%s): load it with modprobe or build it in: %w", t.Name, mode, modeModules[mode], err)
		}
		return fmt.Errorf("installing nftables table inet %s: %w", t.Name, err)
	}
	return nil
}

// modeModules names the kernel modules each mode's ruleset needs beyond
// nf_tables itself, for the error when the kernel refuses the ruleset.
var modeModules = map[Mode]string{
	ModeRedirect: "nft_chain_nat, nft_redir, nf_nat, nf_conntrack",
	ModeTProxy:   "nft_tproxy, nf_tproxy_ipv4, nf_tproxy_ipv6, nft_ct, nf_conntrack",
}

// Remove deletes the table and the policy routing for c's mark and route
// table (IPv4 and IPv6, whatever c.Mode and c.IPv6 say), and the policy
// routing of the mark the live table diverts on, should it have been applied
// with another mark or route table. Absent or partial state is fine:
// whatever is there is removed.
func (h *Handle) Remove(c Config) error {
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	if c.RouteTable == 0 {
		c.RouteTable = DefaultRouteTable
	}
	var errs []error
	// The live table may have been applied with another mark or table.
	owned, err := h.ownedRouting()
	if err != nil {
		errs = append(errs, err)
	}
	if exists, err := h.tableExists(TableName); err != nil {
		errs = append(errs, err)
	} else if exists {
		if err := h.deleteTable(TableName); err != nil {
			errs = append(errs, fmt.Errorf("deleting nftables table inet %s: %w", TableName, err))
		}
	}
	for _, v6 := range []bool{false, true} {
		if err := h.removeRouting(v6, c.Mark, c.RouteTable); err != nil {
			errs = append(errs, err)
		}
	}
	for _, o := range owned {
		if err := h.removeRouting(o.v6, o.mark, o.table); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// elemsPerMessage bounds the elements of one set element message: the
// largest element (an IPv6 interval end) takes 36 bytes of attributes, so
// 1024 of them stay well below the 64 KiB an attribute can hold.
const elemsPerMessage = 1024

// splitElems returns the first elemsPerMessage elements and the rest.
func splitElems(es []nftables.SetElement) (head, rest []nftables.SetElement) {
	if len(es) <= elemsPerMessage {
		return es, nil
	}
	return es[:elemsPerMessage], es[elemsPerMessage:]
}

func (h *Handle) batchConn() (*nftables.Conn, error) {
	conn, err := nftables.New(h.nftOptions()...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink connection: %w", err)
	}
	return conn, nil
}

func (h *Handle) deleteTable(name string) error {
	conn, err := h.batchConn()
	if err != nil {
		return err
	}
	conn.DelTable(nfTable(name))
	return conn.Flush()
}

func (h *Handle) tableExists(name string) (bool, error) {
	tables, err := h.nft.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}
