package netfilter

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"meshproxy/internal/netnstest"
)

// TestIgnoresBypassInKernel checks in the kernel, for both modes and both
// families, that outbound connections matching an ignore list reach their
// destination while the others land on the proxy's outbound listener,
// including the edge intervals that run to the largest key (a port range
// ending at 65535, the prefixes 0.0.0.0/0 and ::/0).
func TestIgnoresBypassInKernel(t *testing.T) {
	for _, mode := range []Mode{ModeRedirect, ModeTProxy} {
		for _, tc := range []struct {
			name    string
			ports   string
			subnets string
			dport   uint16
			bypass  bool
		}{
			{"captured", "", "", 8080, false},
			{"port range to 65535", "60000-65535", "", 65535, true},
			{"port range to 65535, other port", "60000-65535", "", 8080, false},
			{"subnet", "", "198.18.1.0/24,2001:2::/64", 8080, true},
			{"default routes", "", "0.0.0.0/0,::/0", 8080, true},
		} {
			t.Run(string(mode)+"/"+tc.name, func(t *testing.T) {
				client := netnstest.NewPod(t, "nfc")
				server := netnstest.NewPod(t, "nfs")
				netnstest.Link(t, client, server,
					[]netip.Prefix{netip.MustParsePrefix("198.18.1.1/24"), netip.MustParsePrefix("2001:2::1/64")},
					[]netip.Prefix{netip.MustParsePrefix("198.18.1.2/24"), netip.MustParsePrefix("2001:2::2/64")})
				c := testConfig(mode)
				var err error
				if c.OutboundPortsToIgnore, err = ParsePortRanges(tc.ports); err != nil {
					t.Fatal(err)
				}
				if c.SubnetsToIgnore, err = ParseSubnets(tc.subnets); err != nil {
					t.Fatal(err)
				}
				h, err := Open(client.Path)
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				if err := h.Apply(c); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				for _, fam := range []struct{ network, proxy, dst string }{
					{"tcp4", "127.0.0.1:4140", "198.18.1.2"},
					{"tcp6", "[::1]:4140", "2001:2::2"},
				} {
					dst := netip.AddrPortFrom(netip.MustParseAddr(fam.dst), tc.dport).String()
					var proxyLn, serverLn net.Listener
					if err := client.Do(func() error {
						lc := net.ListenConfig{}
						if mode == ModeTProxy {
							lc.Control = transparent(fam.network)
						}
						proxyLn, err = lc.Listen(context.Background(), fam.network, fam.proxy)
						return err
					}); err != nil {
						t.Fatal(err)
					}
					defer proxyLn.Close()
					if serverLn, err = server.Listen(fam.network, dst); err != nil {
						t.Fatal(err)
					}
					defer serverLn.Close()
					conn, err := client.Dial(fam.network, dst, 5*time.Second)
					if err != nil {
						t.Fatalf("%s: dial %s: %v", fam.network, dst, err)
					}
					defer conn.Close()
					want, other := proxyLn, "the proxy"
					if tc.bypass {
						want, other = serverLn, "the server"
					}
					want.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
					got, err := want.Accept()
					if err != nil {
						t.Fatalf("%s: connection to %s did not reach %s (ignore ports %q, subnets %q): %v",
							fam.network, dst, other, tc.ports, tc.subnets, err)
					}
					got.Close()
				}
			})
		}
	}
}

// transparent sets IP_TRANSPARENT or IPV6_TRANSPARENT, as tproxy needs.
func transparent(network string) func(_, _ string, rc syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if network == "tcp6" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				return
			}
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}
}
