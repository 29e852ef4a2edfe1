// Package netnstest is meshproxy's test lab: throwaway network namespaces
// ("pods") joined by veth links, with helpers to listen, dial and start
// processes inside them. Everything it creates is removed by t.Cleanup.
//
// It needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); tests call RequireRoot
// first so they skip, with a reason, elsewhere.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables rules")
	}
}

// Pod is a network namespace made for one test. Its loopback is up.
type Pod struct {
	// Name is the namespace's name, unique per test run.
	Name string
	// Path is the namespace's bind mount, usable as "meshproxy init --netns".
	Path string
	ns   netns.NsHandle
}

// NewPod creates a named network namespace with its loopback up, and
// removes it when the test ends. label is a short word that appears in the
// name, to make failures readable.
func NewPod(t testing.TB, label string) *Pod {
	t.Helper()
	RequireRoot(t)
	name := "mp-" + label + "-" + randHex(4)
	ns, err := newNamed(name)
	if err != nil {
		t.Fatalf("netnstest: creating namespace %s: %v", name, err)
	}
	p := &Pod{Name: name, Path: filepath.Join("/run/netns", name), ns: ns}
	t.Cleanup(func() {
		p.ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("netnstest: deleting namespace %s: %v", name, err)
		}
	})
	// Links made later come up without IPv6 duplicate address detection,
	// so their link-local addresses are usable at once and the first
	// neighbour solicitation is not lost.
	if err := p.Do(func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("netnstest: %s: disabling IPv6 DAD: %v", name, err)
	}
	h, err := p.netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("netnstest: %s: finding lo: %v", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("netnstest: %s: setting lo up: %v", name, err)
	}
	return p
}

// newNamed creates a named namespace without leaving the calling thread in
// it (netns.NewNamed switches the thread).
func newNamed(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, fmt.Errorf("getting current namespace: %w", err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		return 0, err
	}
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: do not unlock it, so
		// the runtime throws the thread away with the goroutine.
		runtime.LockOSThread()
		return 0, fmt.Errorf("returning to the original namespace: %w", err)
	}
	return ns, nil
}

func (p *Pod) netlink() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(p.ns)
	if err != nil {
		return nil, fmt.Errorf("netnstest: netlink handle in %s: %w", p.Name, err)
	}
	return h, nil
}

// Do runs f on an OS thread that has entered the pod's namespace. Sockets
// made inside f stay in the namespace and may be used from any goroutine
// afterwards; processes started inside f run in the namespace.
func (p *Pod) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: when this goroutine exits the
		// runtime discards the thread instead of reusing it in the wrong
		// namespace.
		if err := netns.Set(p.ns); err != nil {
			errc <- fmt.Errorf("netnstest: entering %s: %w", p.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Listen opens a listener inside the pod.
func (p *Pod) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := p.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Dial connects from inside the pod, with a timeout.
func (p *Pod) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// DialContext is a dialer for http.Transport: every connection is made
// inside the pod.
func (p *Pod) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := p.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Start starts cmd inside the pod's namespace.
func (p *Pod) Start(cmd *exec.Cmd) error {
	return p.Do(cmd.Start)
}

// Link joins pods a and b with a veth pair named eth0 on both ends, assigns
// the given addresses (IPv6 without duplicate address detection, so they are
// usable at once) and brings both ends up.
func Link(t testing.TB, a, b *Pod, aAddrs, bAddrs []netip.Prefix) {
	t.Helper()
	LinkNamed(t, a, b, "eth0", "eth0", aAddrs, bAddrs)
}

// LinkNamed is Link with the interface names chosen, so one pod can have
// several links (eth0, eth1, ...).
func LinkNamed(t testing.TB, a, b *Pod, aName, bName string, aAddrs, bAddrs []netip.Prefix) {
	t.Helper()
	ha, err := a.netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	hb, err := b.netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.ns),
	}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatalf("netnstest: veth %s:%s<->%s:%s: %v", a.Name, aName, b.Name, bName, err)
	}
	type side struct {
		h     *netlink.Handle
		addrs []netip.Prefix
		pod   *Pod
		name  string
		link  netlink.Link
	}
	sides := []*side{{h: ha, addrs: aAddrs, pod: a, name: aName}, {h: hb, addrs: bAddrs, pod: b, name: bName}}
	for _, side := range sides {
		link, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatalf("netnstest: %s: %s: %v", side.pod.Name, side.name, err)
		}
		side.link = link
		for _, pfx := range side.addrs {
			addr := &netlink.Addr{IPNet: prefixToIPNet(pfx)}
			if pfx.Addr().Is6() {
				addr.Flags = 0x02 // IFA_F_NODAD
			}
			if err := side.h.AddrAdd(link, addr); err != nil {
				t.Fatalf("netnstest: %s: adding %s: %v", side.pod.Name, pfx, err)
			}
		}
		if err := side.h.LinkSetUp(link); err != nil {
			t.Fatalf("netnstest: %s: %s up: %v", side.pod.Name, side.name, err)
		}
	}
	// Permanent neighbour entries for the peer's addresses: the first
	// IPv6 neighbour solicitation on a fresh veth is often lost, which
	// costs a one-second SYN retransmit, and a lab has no need of ARP/ND.
	for i, s := range sides {
		peer := sides[1-i]
		for _, pfx := range peer.addrs {
			n := &netlink.Neigh{
				LinkIndex:    s.link.Attrs().Index,
				State:        netlink.NUD_PERMANENT,
				IP:           pfx.Addr().AsSlice(),
				HardwareAddr: peer.link.Attrs().HardwareAddr,
			}
			if err := s.h.NeighSet(n); err != nil {
				t.Fatalf("netnstest: %s: neighbour %s: %v", s.pod.Name, pfx.Addr(), err)
			}
		}
	}
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// WaitListening polls until a TCP connection to addr from inside the pod
// succeeds, or timeout passes.
func (p *Pod) WaitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := p.Dial("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netnstest: %s: nothing listening on %s after %v: %w", p.Name, addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// ListenPacket opens a packet listener (UDP) inside the pod.
func (p *Pod) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := p.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}
