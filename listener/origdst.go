package listener

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h,
// read at level SOL_IPV6 (x/sys/unix does not name it).
const ip6tSOOriginalDst = 80

// OriginalDst returns the destination the client originally connected to.
//
// In ModeRedirect it asks conntrack through SO_ORIGINAL_DST (IPv4) or
// IP6T_SO_ORIGINAL_DST (IPv6); a connection that was not NATed yields an
// error wrapping ErrNoOriginalDst. In ModeTProxy the kernel delivered the
// connection unchanged to an IP_TRANSPARENT socket, so the original
// destination is the accepted socket's local address. IPv4-mapped IPv6
// addresses are unmapped.
func OriginalDst(c *net.TCPConn, mode Mode) (netip.AddrPort, error) {
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || la == nil {
		return netip.AddrPort{}, fmt.Errorf("%w: connection has no local address", ErrNoOriginalDst)
	}
	local := la.AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	switch mode {
	case ModeTProxy:
		return local, nil
	case ModeRedirect:
		return redirectOriginalDst(c, local.Addr().Is6())
	default:
		return netip.AddrPort{}, fmt.Errorf("original destination: unknown mode %q (want %q or %q)", mode, ModeRedirect, ModeTProxy)
	}
}

// redirectOriginalDst reads the pre-NAT destination from conntrack.
func redirectOriginalDst(c *net.TCPConn, v6 bool) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	level, opt, name := unix.SOL_IP, unix.SO_ORIGINAL_DST, "SO_ORIGINAL_DST"
	size := uint32(unix.SizeofSockaddrInet4)
	if v6 {
		level, opt, name = unix.SOL_IPV6, ip6tSOOriginalDst, "IP6T_SO_ORIGINAL_DST"
		size = unix.SizeofSockaddrInet6
	}
	// A raw buffer big enough for a sockaddr_in6; parsed by hand below.
	var buf [unix.SizeofSockaddrInet6]byte
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		l := size
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if errno != 0 {
			serr = errno
			return
		}
		size = l
	})
	if cerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", cerr)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: getsockopt %s: %w", ErrNoOriginalDst, name, serr)
	}
	return parseSockaddr(buf[:size])
}

// parseSockaddr decodes a raw sockaddr_in or sockaddr_in6 as the kernel
// writes it: family in host byte order, port in network byte order.
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, fmt.Errorf("%w: short sockaddr (%d bytes)", ErrNoOriginalDst, len(b))
	}
	family := *(*uint16)(unsafe.Pointer(&b[0]))
	switch {
	case family == unix.AF_INET && len(b) >= unix.SizeofSockaddrInet4:
		addr := netip.AddrFrom4([4]byte(b[4:8]))
		return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(b[2:4])), nil
	case family == unix.AF_INET6 && len(b) >= unix.SizeofSockaddrInet6:
		addr := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(b[2:4])), nil
	default:
		return netip.AddrPort{}, fmt.Errorf("%w: unexpected sockaddr family %d (%d bytes)", ErrNoOriginalDst, family, len(b))
	}
}
