package balancer

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the package's Prometheus metrics. Create one per registry
// with NewMetrics and hand it to the Resolver, Balancer and Pool configs;
// a nil *Metrics records nothing.
//
//	meshproxy_balancer_endpoints{service, state}  gauge; state is ready, ejected or probing
//	meshproxy_pool_dials_total                    counter
//	meshproxy_pool_reuses_total                   counter
//	meshproxy_pool_stale_total                    counter (idle conns found closed by the peer)
//	meshproxy_pool_preconnects_total              counter (spares dialed ahead, PoolConfig.PreConnect;
//	                                              in meshproxy_pool_dials_total too)
//	meshproxy_dns_queries_total{result}           counter; result is success, nxdomain,
//	                                              nodata, server_failure, truncated, timeout or error
type Metrics struct {
	poolDials, poolReuses, poolStale, poolPreconnects prometheus.Counter
	dnsQueries                                        *prometheus.CounterVec
	endpoints                                         *endpointsCollector
}

// NewMetrics registers the package's metrics with reg. Registering twice
// on one registry fails.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		poolDials: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshproxy_pool_dials_total",
			Help: "Connections dialed by the connection pool.",
		}),
		poolReuses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshproxy_pool_reuses_total",
			Help: "Idle pooled connections handed out again.",
		}),
		poolStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshproxy_pool_stale_total",
			Help: "Idle pooled connections discarded because the peer had closed them.",
		}),
		poolPreconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshproxy_pool_preconnects_total",
			Help: "Spare connections the connection pool dialed ahead of need (also in meshproxy_pool_dials_total).",
		}),
		dnsQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshproxy_dns_queries_total",
			Help: "DNS queries sent by the discovery resolver, by result.",
		}, []string{"result"}),
		endpoints: &endpointsCollector{desc: prometheus.NewDesc(
			"meshproxy_balancer_endpoints",
			"Endpoints of each balanced service, by state (ready, ejected, probing).",
			[]string{"service", "state"}, nil)},
	}
	for _, c := range []prometheus.Collector{m.poolDials, m.poolReuses, m.poolStale, m.poolPreconnects, m.dnsQueries, m.endpoints} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering balancer metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) dnsQuery(result string) {
	if m != nil {
		m.dnsQueries.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) poolDial() {
	if m != nil {
		m.poolDials.Inc()
	}
}

func (m *Metrics) poolReuse() {
	if m != nil {
		m.poolReuses.Inc()
	}
}

func (m *Metrics) poolPreconnect() {
	if m != nil {
		m.poolPreconnects.Inc()
	}
}

func (m *Metrics) poolStaleConn() {
	if m != nil {
		m.poolStale.Inc()
	}
}

// addBalancer makes b's services show up in meshproxy_balancer_endpoints.
func (m *Metrics) addBalancer(b *Balancer) {
	if m == nil {
		return
	}
	m.endpoints.mu.Lock()
	m.endpoints.sources = append(m.endpoints.sources, b)
	m.endpoints.mu.Unlock()
}

func (m *Metrics) removeBalancer(b *Balancer) {
	if m == nil {
		return
	}
	m.endpoints.mu.Lock()
	defer m.endpoints.mu.Unlock()
	for i, s := range m.endpoints.sources {
		if s == b {
			m.endpoints.sources = append(m.endpoints.sources[:i], m.endpoints.sources[i+1:]...)
			return
		}
	}
}

// endpointsCollector reads endpoint states at scrape time, so a service
// that is forgotten leaves no stale series behind.
type endpointsCollector struct {
	desc    *prometheus.Desc
	mu      sync.Mutex
	sources []*Balancer
}

func (c *endpointsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *endpointsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	sources := append([]*Balancer(nil), c.sources...)
	c.mu.Unlock()
	for _, b := range sources {
		for _, s := range b.Snapshot() {
			counts := map[string]int{StateReady.String(): 0, StateEjected.String(): 0, StateProbing.String(): 0}
			for _, e := range s.Endpoints {
				counts[e.State]++
			}
			svc := s.Service
			for state, n := range counts {
				ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), svc, state)
			}
		}
	}
}
