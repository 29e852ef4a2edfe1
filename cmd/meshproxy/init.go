package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"meshproxy/netfilter"
)

func init() {
	register("init", command{
		summary: "install the traffic interception ruleset (nftables, policy routing)",
		run:     runInit,
	})
}

// initAction is what one "meshproxy init" invocation does.
type initAction int

const (
	actionApply initAction = iota
	actionDryRun
	actionCheck
	actionRemove
)

// hasNetAdmin reports whether the process may change netfilter and routing;
// tests replace it.
var hasNetAdmin = effectiveNetAdmin

// parseInit turns the init flags into a netfilter.Config, the namespace path
// and the action. Errors are one line, prefixed with "init: ".
// initFlags holds the flag values of "meshproxy init".
type initFlags struct {
	mode      *string
	outPort   *string
	inPort    *string
	uid       *string
	gid       *string
	inIgnore  *string
	outIgnore *string
	subnets   *string
	redirect  *string
	ipv6      *bool
	nsPath    *string
	dryRun    *bool
	check     *bool
	remove    *bool
	mark      *string
	table     *string
}

// newInitFlagSet declares the flags of "meshproxy init"; the reference page
// (docs/reference.md) is generated from the same declarations.
func newInitFlagSet() (*flag.FlagSet, *initFlags) {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	f := &initFlags{}
	f.mode = fs.String("mode", string(netfilter.ModeRedirect), "interception mode: redirect or tproxy")
	f.outPort = fs.String("outbound-port", "4140", "port of the proxy's outbound listener")
	f.inPort = fs.String("inbound-port", "4143", "port of the proxy's inbound listener")
	f.uid = fs.String("proxy-uid", "", "UID the proxy runs as; its own traffic is never captured (this or --proxy-gid is required)")
	f.gid = fs.String("proxy-gid", "", "GID the proxy runs as; its own traffic is never captured")
	f.inIgnore = fs.String("inbound-ports-to-ignore", "4190,4191", "inbound destination ports that go straight to the app (list, ranges like 8000-8100)")
	f.outIgnore = fs.String("outbound-ports-to-ignore", "4190,4191", "outbound destination ports that bypass the proxy (by default other proxies' admin ports, so their callers are seen as remote)")
	f.subnets = fs.String("subnets-to-ignore", "", "CIDRs (IPv4 and IPv6) whose traffic bypasses the proxy, both directions")
	f.redirect = fs.String("ports-to-redirect", "", "inbound allow-list of destination ports; empty means all")
	f.ipv6 = fs.Bool("ipv6", true, "also capture IPv6 traffic")
	f.nsPath = fs.String("netns", "", "network namespace to work in (e.g. /run/netns/NAME or /proc/PID/ns/net); default the current one")
	f.dryRun = fs.Bool("dry-run", false, "print the ruleset as nft text and change nothing")
	f.check = fs.Bool("check", false, "exit 0 only if the live rules equal the wanted ones; list differences otherwise")
	f.remove = fs.Bool("remove", false, "delete the table and policy routing init created")
	f.mark = fs.String("tproxy-mark", "0x539", "fwmark used by tproxy mode's policy routing")
	f.table = fs.String("tproxy-table", "133", "routing table used by tproxy mode's policy routing")

	return fs, f
}

func parseInit(args []string, stderr io.Writer) (netfilter.Config, string, initAction, error) {
	fs, f := newInitFlagSet()
	// Parse errors are reported as one line below, not followed by the
	// whole usage; -h prints the usage.
	fs.SetOutput(io.Discard)
	usage := func() {
		fs.SetOutput(stderr)
		fmt.Fprintln(stderr, "usage: meshproxy init [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Installs the rules that steer a namespace's TCP traffic into the proxy:")
		fmt.Fprintln(stderr, "one nftables table \"inet meshproxy\", applied atomically, plus policy")
		fmt.Fprintln(stderr, "routing in tproxy mode. Applying twice equals applying once.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	fs.Usage = func() {}
	var c netfilter.Config
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return c, "", 0, err
		}
		return c, "", 0, fmt.Errorf("init: %v (run \"meshproxy init -h\" for the flags)", err)
	}
	if fs.NArg() > 0 {
		return c, "", 0, fmt.Errorf("init: unexpected argument %q: init takes only flags", fs.Arg(0))
	}

	n := 0
	action := actionApply
	for _, a := range []struct {
		set bool
		act initAction
	}{{*f.dryRun, actionDryRun}, {*f.check, actionCheck}, {*f.remove, actionRemove}} {
		if a.set {
			n++
			action = a.act
		}
	}
	if n > 1 {
		return c, "", 0, errors.New("init: --dry-run, --check and --remove exclude each other: pick one")
	}

	var err error
	c.Mode = netfilter.Mode(*f.mode)
	if c.Mode != netfilter.ModeRedirect && c.Mode != netfilter.ModeTProxy {
		return c, "", 0, fmt.Errorf("init: --mode %q is not a mode: use redirect or tproxy", *f.mode)
	}
	if c.OutboundPort, err = parsePortFlag("outbound-port", *f.outPort); err != nil {
		return c, "", 0, err
	}
	if c.InboundPort, err = parsePortFlag("inbound-port", *f.inPort); err != nil {
		return c, "", 0, err
	}
	if c.ProxyUID, err = parseIDFlag("proxy-uid", *f.uid); err != nil {
		return c, "", 0, err
	}
	if c.ProxyGID, err = parseIDFlag("proxy-gid", *f.gid); err != nil {
		return c, "", 0, err
	}
	for _, pf := range []struct {
		name string
		val  string
		dst  *[]netfilter.PortRange
	}{
		{"inbound-ports-to-ignore", *f.inIgnore, &c.InboundPortsToIgnore},
		{"outbound-ports-to-ignore", *f.outIgnore, &c.OutboundPortsToIgnore},
		{"ports-to-redirect", *f.redirect, &c.PortsToRedirect},
	} {
		if *pf.dst, err = netfilter.ParsePortRanges(pf.val); err != nil {
			return c, "", 0, fmt.Errorf("init: --%s: %v", pf.name, err)
		}
	}
	if c.SubnetsToIgnore, err = netfilter.ParseSubnets(*f.subnets); err != nil {
		return c, "", 0, fmt.Errorf("init: --subnets-to-ignore: %v", err)
	}
	c.IPv6 = *f.ipv6
	m, err := strconv.ParseUint(*f.mark, 0, 32)
	if err != nil || m == 0 {
		return c, "", 0, fmt.Errorf("init: --tproxy-mark %q is not a non-zero 32-bit number (like 0x539)", *f.mark)
	}
	c.Mark = uint32(m)
	t, err := strconv.Atoi(*f.table)
	if err != nil || t <= 0 || t >= 1<<31 {
		return c, "", 0, fmt.Errorf("init: --tproxy-table %q is not a routing table number (like 133)", *f.table)
	}
	c.RouteTable = t

	// Removal needs only the mark and table; everything else is checked.
	if action != actionRemove {
		if err := c.Validate(); err != nil {
			if errors.Is(err, netfilter.ErrNoProxyUser) {
				return c, "", 0, errors.New("init: --proxy-uid or --proxy-gid is required: without it the proxy's own connections would loop back into it")
			}
			return c, "", 0, fmt.Errorf("init: %v", err)
		}
	}
	if *f.nsPath != "" && action != actionDryRun {
		if _, err := os.Stat(*f.nsPath); err != nil {
			return c, "", 0, fmt.Errorf("init: --netns %q: no such network namespace: create it first (ip netns add NAME) or pass an existing /proc/PID/ns/net", *f.nsPath)
		}
	}
	return c, *f.nsPath, action, nil
}

func parsePortFlag(name, s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("init: --%s %q is not a port (1-65535)", name, s)
	}
	return uint16(n), nil
}

func parseIDFlag(name, s string) (int, error) {
	if strings.TrimSpace(s) == "" {
		return -1, nil
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("init: --%s %q is not a numeric ID (0-4294967294)", name, s)
	}
	return int(n), nil
}

func runInit(args []string, stdout, stderr io.Writer) int {
	c, nsPath, action, err := parseInit(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintln(stderr, err)
		return 2
	}

	if action == actionDryRun {
		r, err := netfilter.Build(c)
		if err != nil {
			fmt.Fprintf(stderr, "init: %v\n", err)
			return 2
		}
		fmt.Fprint(stdout, r.Render())
		return 0
	}

	if !hasNetAdmin() {
		fmt.Fprintln(stderr, "init: needs CAP_NET_ADMIN (run as root) to change nftables and routing; --dry-run works without it")
		return 1
	}
	h, err := netfilter.Open(nsPath)
	if err != nil {
		fmt.Fprintf(stderr, "init: %v\n", err)
		return 1
	}
	defer h.Close()
	where := "the current network namespace"
	if nsPath != "" {
		where = "network namespace " + nsPath
	}

	switch action {
	case actionCheck:
		if err := h.Check(c); err != nil {
			fmt.Fprintf(stderr, "init: check in %s: %v\n", where, err)
			return 1
		}
		fmt.Fprintf(stdout, "init: rules in %s are in sync (%s mode)\n", where, c.Mode)
	case actionRemove:
		if err := h.Remove(c); err != nil {
			fmt.Fprintf(stderr, "init: removing from %s: %v\n", where, err)
			return 1
		}
		fmt.Fprintf(stdout, "init: removed table inet %s and policy routing from %s\n", netfilter.TableName, where)
	default:
		if err := h.Apply(c); err != nil {
			fmt.Fprintf(stderr, "init: applying in %s: %v\n", where, err)
			return 1
		}
		fmt.Fprintf(stdout, "init: applied %s mode in %s (outbound :%d, inbound :%d)\n",
			c.Mode, where, c.OutboundPort, c.InboundPort)
	}
	return 0
}

// effectiveNetAdmin reports whether CAP_NET_ADMIN is in the effective set.
func effectiveNetAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return os.Geteuid() == 0
	}
	const capNetAdmin = unix.CAP_NET_ADMIN
	return data[capNetAdmin/32].Effective&(1<<(capNetAdmin%32)) != 0
}
