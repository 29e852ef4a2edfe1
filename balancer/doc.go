// Package balancer is endpoint discovery and choice for the outbound
// proxy: it turns an HTTP authority's host into endpoint addresses through
// DNS, spreads requests over them, and pools connections to them. It knows
// nothing of the proxy, listeners or identities.
//
// The pieces, bottom up:
//
//   - Resolver: a stub DNS resolver (miekg/dns) that reads a resolv.conf
//     and follows glibc: search list and ndots, A and AAAA, SERVFAIL and
//     timeouts retried on the next nameserver, UDP then TCP on truncation,
//     TTLs clamped. Lookup(ctx, host) (*Answer, error).
//   - Discovery: a cache over a Resolver. Resolve(ctx, host) answers the
//     first call synchronously (concurrent first calls share one lookup),
//     then refreshes the name in the background while it is used, serves
//     the last good answer for a bounded time when DNS fails, and forgets
//     names left unused.
//   - Service and Endpoint: the endpoint set of one (name, port). Pick
//     chooses by power of two choices over peak-EWMA latency × (in-flight+1)
//     (or round robin); the caller reports each request's outcome with
//     Endpoint.Release(err, latency). Consecutive failures eject an
//     endpoint with exponential backoff and one probe; with every endpoint
//     ejected Pick fails open.
//   - Balancer: Discovery plus one Service per (resolved name, port).
//     Pick(ctx, host, port) is the proxy's one call per request;
//     Snapshot feeds /debug/state.
//   - Pool: idle connections per endpoint, bounded by an LRU over
//     endpoints, with idle timeout, max idle and max lifetime; an idle
//     connection the peer closed is never handed out (ConnUsable).
//   - Metrics: meshproxy_balancer_endpoints, meshproxy_pool_*_total and
//     meshproxy_dns_queries_total on a Registerer handed in.
//   - MeshCache: the bounded memory of which addresses run a mesh proxy.
//
// The outbound proxy's use, per HTTP request to host:port:
//
//	ep, err := bal.Pick(ctx, host, port)
//	switch {
//	case errors.Is(err, balancer.ErrNotFound):
//		// IP literal or name not in DNS: forward to the original destination.
//	case err != nil:
//		// 503 (DNS unavailable, no endpoints) or ctx's error.
//	}
//	start := time.Now()
//	pc, reused, err := pool.Get(ctx, ep.Addr())
//	... send the request on pc.Conn, read the response ...
//	ep.Release(err, time.Since(start)) // err nil on success; exactly once
//	pool.Put(pc) // only after a clean exchange; otherwise pc.Conn.Close()
package balancer
