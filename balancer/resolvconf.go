package balancer

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultResolvConf is where the system's resolver configuration lives.
const DefaultResolvConf = "/etc/resolv.conf"

// Defaults and limits of resolv.conf(5), as glibc applies them.
const (
	defaultNdots    = 1
	maxNdots        = 15
	defaultTimeout  = 5 * time.Second
	maxTimeoutSecs  = 30
	defaultAttempts = 2
	maxAttempts     = 5
	maxNameservers  = 3
)

// ResolvConf is the part of resolv.conf(5) the resolver uses.
type ResolvConf struct {
	// Nameservers are the servers to ask, in order, at most three (glibc's
	// MAXNS). Port 53 unless the file says otherwise: as a meshproxy
	// extension a nameserver line may carry a port ("127.0.0.1:5353",
	// "[::1]:5353"). An empty file means 127.0.0.1:53, as in glibc.
	Nameservers []netip.AddrPort
	// Search is the search list; "domain X" sets it to [X]. The last
	// search or domain line wins.
	Search []string
	// Ndots: names with at least this many dots are tried as given first.
	Ndots int
	// Timeout is how long to wait for one nameserver's answer.
	Timeout time.Duration
	// Attempts is how many rounds over all nameservers a query gets.
	Attempts int
}

// ReadResolvConf reads and parses the resolv.conf at path.
func ReadResolvConf(path string) (*ResolvConf, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading resolver config: %w", err)
	}
	defer f.Close()
	c, err := ParseResolvConf(f)
	if err != nil {
		return nil, fmt.Errorf("reading resolver config %s: %w", path, err)
	}
	return c, nil
}

// ParseResolvConf parses resolv.conf text. Like glibc it ignores lines
// and options it does not know, and clamps ndots (15), timeout (30s) and
// attempts (5).
func ParseResolvConf(r io.Reader) (*ResolvConf, error) {
	c := &ResolvConf{Ndots: defaultNdots, Timeout: defaultTimeout, Attempts: defaultAttempts}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(c.Nameservers) >= maxNameservers {
				continue
			}
			if ap, ok := parseNameserver(f[1]); ok {
				c.Nameservers = append(c.Nameservers, ap)
			}
		case "domain":
			c.Search = nil
			if d := normDomain(f[1]); d != "" { // "." (the root) adds none
				c.Search = []string{d}
			}
		case "search":
			c.Search = c.Search[:0:0]
			for _, d := range f[1:] {
				if d = normDomain(d); d != "" {
					c.Search = append(c.Search, d)
				}
			}
		case "options":
			for _, o := range f[1:] {
				name, val, _ := strings.Cut(o, ":")
				n, err := strconv.Atoi(val)
				if err != nil || n < 0 {
					continue
				}
				switch name {
				case "ndots":
					c.Ndots = min(n, maxNdots)
				case "timeout":
					c.Timeout = time.Duration(max(min(n, maxTimeoutSecs), 1)) * time.Second
				case "attempts":
					c.Attempts = max(min(n, maxAttempts), 1)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(c.Nameservers) == 0 {
		c.Nameservers = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}
	}
	return c, nil
}

// parseNameserver accepts "IP", "IP%zone", "IPv4:port" and "[IPv6]:port".
func parseNameserver(s string) (netip.AddrPort, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, true
	}
	return netip.AddrPort{}, false
}

// normDomain lowercases a search domain and drops dots around it.
func normDomain(d string) string { return strings.Trim(strings.ToLower(d), ".") }

// Candidates returns the fully qualified names (with a trailing dot) that
// glibc's res_nsearch would query for name, in order:
//   - a name ending in a dot is absolute: only itself;
//   - a name with at least Ndots dots: itself first, then with each
//     search domain appended;
//   - fewer dots: each search domain first, then itself.
func (c *ResolvConf) Candidates(name string) []string {
	name = strings.ToLower(name)
	if strings.HasSuffix(name, ".") {
		return []string{name}
	}
	out := make([]string, 0, len(c.Search)+1)
	asIs := name + "."
	if strings.Count(name, ".") >= c.Ndots {
		out = append(out, asIs)
	}
	for _, d := range c.Search {
		out = append(out, name+"."+d+".")
	}
	if strings.Count(name, ".") < c.Ndots {
		out = append(out, asIs)
	}
	return out
}
