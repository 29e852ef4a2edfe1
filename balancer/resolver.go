package balancer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Resolver defaults.
const (
	// DefaultMinTTL is the shortest time an answer is kept.
	DefaultMinTTL = 5 * time.Second
	// DefaultMaxTTL is the longest time an answer is kept.
	DefaultMaxTTL = 5 * time.Minute
	// DefaultNegativeTTL is how long "not found" is kept.
	DefaultNegativeTTL = 5 * time.Second
)

// ResolverConfig configures a Resolver. The zero value reads
// /etc/resolv.conf and asks for both A and AAAA records.
type ResolverConfig struct {
	// ResolvConf is the path of the resolv.conf to read once, at
	// NewResolver. Empty means DefaultResolvConf. Ignored when Conf is set.
	ResolvConf string
	// Conf, when not nil, is used instead of reading a file.
	Conf *ResolvConf
	// Network is "ip" (A and AAAA; the default when empty), "ip4" (A only)
	// or "ip6" (AAAA only).
	Network string
	// Timeout, when positive, overrides resolv.conf's per-server timeout
	// (which has a one-second granularity).
	Timeout time.Duration
	// MinTTL and MaxTTL clamp the TTL of positive answers. Zero or
	// negative means DefaultMinTTL / DefaultMaxTTL.
	MinTTL, MaxTTL time.Duration
	// NegativeTTL is the TTL given to ErrNotFound answers. Zero or
	// negative means DefaultNegativeTTL.
	NegativeTTL time.Duration
	// Metrics, when not nil, counts queries.
	Metrics *Metrics
}

// Answer is the outcome of resolving one host. It is never modified
// after it is returned, so it may be shared and compared by pointer.
type Answer struct {
	// Host is the name as asked for.
	Host string
	// Name is the fully qualified name (with a trailing dot) that
	// answered, after search-list expansion.
	Name string
	// Addrs are the addresses, A records first, each list in the
	// nameserver's order. Never empty in an answer without error.
	Addrs []netip.Addr
	// TTL is the smallest record TTL, clamped to [MinTTL, MaxTTL].
	TTL time.Duration
	// Expires is when the answer was received plus TTL.
	Expires time.Time
}

// Resolver is a stub DNS resolver that follows the rules of glibc's: the
// nameservers, search list and options of a resolv.conf, UDP with a TCP
// retry on truncation, SERVFAIL and timeouts moving on to the next
// nameserver. It does not cache; Discovery does. It is safe for
// concurrent use.
type Resolver struct {
	conf                   *ResolvConf
	qtypes                 []uint16
	timeout                time.Duration
	minTTL, maxTTL, negTTL time.Duration
	metrics                *Metrics
	udp, tcp               *dns.Client
}

// NewResolver reads the resolver configuration and returns a Resolver.
func NewResolver(cfg ResolverConfig) (*Resolver, error) {
	conf := cfg.Conf
	if conf == nil {
		path := cfg.ResolvConf
		if path == "" {
			path = DefaultResolvConf
		}
		c, err := ReadResolvConf(path)
		if err != nil {
			return nil, fmt.Errorf("resolver: %w (set resolv-conf to a readable resolv.conf)", err)
		}
		conf = c
	}
	r := &Resolver{conf: conf, metrics: cfg.Metrics}
	switch cfg.Network {
	case "", "ip":
		r.qtypes = []uint16{dns.TypeA, dns.TypeAAAA}
	case "ip4":
		r.qtypes = []uint16{dns.TypeA}
	case "ip6":
		r.qtypes = []uint16{dns.TypeAAAA}
	default:
		return nil, fmt.Errorf("resolver: network %q: want ip, ip4 or ip6", cfg.Network)
	}
	r.timeout = conf.Timeout
	if cfg.Timeout > 0 {
		r.timeout = cfg.Timeout
	}
	if r.timeout <= 0 {
		r.timeout = defaultTimeout
	}
	r.minTTL = orDefault(cfg.MinTTL, DefaultMinTTL)
	r.maxTTL = max(orDefault(cfg.MaxTTL, DefaultMaxTTL), r.minTTL)
	r.negTTL = orDefault(cfg.NegativeTTL, DefaultNegativeTTL)
	r.udp = &dns.Client{Net: "udp", Timeout: r.timeout}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.timeout}
	return r, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Conf returns the resolver configuration in use. Do not modify it.
func (r *Resolver) Conf() *ResolvConf { return r.conf }

// NegativeTTL returns how long a not-found answer should be kept.
func (r *Resolver) NegativeTTL() time.Duration { return r.negTTL }

// queryOutcome classifies one query for one name and type.
type queryOutcome int

const (
	outFound queryOutcome = iota
	outNXDomain
	outNoData
	outFailed // every server failed or timed out
)

// Lookup resolves host (a name without port; an IP literal is refused
// with ErrNotFound) into addresses. Candidates from the search list are
// tried in glibc's order; NXDOMAIN or no data moves to the next one. When
// no candidate has addresses the error is ErrNotFound, unless some
// candidate could not be answered (SERVFAIL, timeouts), in which case it
// is a temporary error that does not match ErrNotFound.
func (r *Resolver) Lookup(ctx context.Context, host string) (*Answer, error) {
	if host == "" {
		return nil, fmt.Errorf("resolving an empty name: %w", ErrNotFound)
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return nil, fmt.Errorf("resolving %s: an IP literal: %w", host, ErrNotFound)
	}
	if _, ok := dns.IsDomainName(host); !ok {
		return nil, fmt.Errorf("resolving %q: not a domain name: %w", host, ErrNotFound)
	}
	var failed error
	for _, name := range r.conf.Candidates(host) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
		if _, ok := dns.IsDomainName(name); !ok {
			continue // a search domain made it too long: no such name
		}
		addrs, ttl, out, err := r.lookupName(ctx, name)
		switch out {
		case outFound:
			ttl = min(max(ttl, r.minTTL), r.maxTTL)
			return &Answer{Host: host, Name: name, Addrs: addrs, TTL: ttl, Expires: time.Now().Add(ttl)}, nil
		case outFailed:
			if failed == nil {
				failed = err
			}
		}
	}
	if failed != nil {
		return nil, fmt.Errorf("resolving %s: %w", host, failed)
	}
	return nil, fmt.Errorf("resolving %s: %w", host, ErrNotFound)
}

// lookupName asks for every wanted type of one fully qualified name, in
// parallel as glibc does.
func (r *Resolver) lookupName(ctx context.Context, name string) ([]netip.Addr, time.Duration, queryOutcome, error) {
	type result struct {
		addrs []netip.Addr
		ttl   time.Duration
		out   queryOutcome
		err   error
	}
	res := make([]result, len(r.qtypes))
	var wg sync.WaitGroup
	for i, qt := range r.qtypes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, t, o, e := r.query(ctx, name, qt)
			res[i] = result{a, t, o, e}
		}()
	}
	wg.Wait()
	var addrs []netip.Addr
	ttl := time.Duration(math.MaxInt64)
	out := outNXDomain
	var err error
	for _, x := range res {
		switch x.out {
		case outFound:
			addrs = append(addrs, x.addrs...)
			ttl = min(ttl, x.ttl)
			out = outFound
		case outFailed:
			if out != outFound {
				out, err = outFailed, x.err
			}
		case outNoData:
			if out == outNXDomain {
				out = outNoData
			}
		}
	}
	return addrs, ttl, out, err
}

// query asks the nameservers, Attempts rounds, for one name and type.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) ([]netip.Addr, time.Duration, queryOutcome, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	var lastErr error
	for range max(r.conf.Attempts, 1) {
		for _, ns := range r.conf.Nameservers {
			resp, err := r.exchange(ctx, m, ns.String())
			if err != nil {
				lastErr = err
				if ctx.Err() != nil {
					return nil, 0, outFailed, ctx.Err()
				}
				continue
			}
			switch resp.Rcode {
			case dns.RcodeSuccess:
			case dns.RcodeNameError:
				r.metrics.dnsQuery("nxdomain")
				return nil, 0, outNXDomain, nil
			default:
				r.metrics.dnsQuery("server_failure")
				lastErr = fmt.Errorf("nameserver %s answered %s for %s", ns, dns.RcodeToString[resp.Rcode], name)
				continue
			}
			addrs, ttl := addrsOf(resp, name, qtype)
			if len(addrs) == 0 {
				r.metrics.dnsQuery("nodata")
				return nil, 0, outNoData, nil
			}
			r.metrics.dnsQuery("success")
			return addrs, ttl, outFound, nil
		}
	}
	return nil, 0, outFailed, lastErr
}

// exchange sends one query over UDP, and again over TCP if the answer
// came back truncated (TC set, whether or not the rest parses). Network errors and timeouts are counted here.
func (r *Resolver) exchange(ctx context.Context, m *dns.Msg, server string) (*dns.Msg, error) {
	m = m.Copy()
	m.Id = dns.Id()
	resp, _, err := r.udp.ExchangeContext(ctx, m, server)
	// Truncated: ask again over TCP, even when the cut answer does not
	// parse (a server truncating to a size may cut a record in half),
	// as glibc does. (A parse error still returns the header.)
	if resp != nil && resp.Id == m.Id && resp.Truncated {
		r.metrics.dnsQuery("truncated")
		m.Id = dns.Id()
		resp, _, err = r.tcp.ExchangeContext(ctx, m, server)
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			r.metrics.dnsQuery("timeout")
		} else {
			r.metrics.dnsQuery("error")
		}
		return nil, fmt.Errorf("asking %s for %s: %w", server, m.Question[0].Name, err)
	}
	return resp, nil
}

// addrsOf returns the addresses of type qtype in the answer section
// that belong to name or to its CNAME chain (records of other names are
// ignored, as glibc does), and the smallest TTL of those records and of
// the chain's CNAMEs.
func addrsOf(resp *dns.Msg, name string, qtype uint16) ([]netip.Addr, time.Duration) {
	ttl := uint32(math.MaxUint32)
	cnames := map[string]*dns.CNAME{}
	for _, rr := range resp.Answer {
		if c, ok := rr.(*dns.CNAME); ok {
			if k := dns.CanonicalName(c.Hdr.Name); cnames[k] == nil {
				cnames[k] = c
			}
		}
	}
	// The chain, followed from name until it ends or loops.
	owners := map[string]bool{}
	for n := dns.CanonicalName(name); !owners[n]; {
		owners[n] = true
		c := cnames[n]
		if c == nil {
			break
		}
		ttl = min(ttl, c.Hdr.Ttl)
		n = dns.CanonicalName(c.Target)
	}
	var addrs []netip.Addr
	for _, rr := range resp.Answer {
		var ip net.IP
		switch v := rr.(type) {
		case *dns.A:
			if qtype == dns.TypeA {
				ip = v.A
			}
		case *dns.AAAA:
			if qtype == dns.TypeAAAA {
				ip = v.AAAA
			}
		}
		if ip == nil || !owners[dns.CanonicalName(rr.Header().Name)] {
			continue
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		if qtype == dns.TypeA {
			a = a.Unmap()
		}
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
		ttl = min(ttl, rr.Header().Ttl)
	}
	return addrs, time.Duration(ttl) * time.Second
}
