package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the proxy's Prometheus collectors. Create one per process
// with NewMetrics and share it between the outbound and inbound servers;
// every series carries a direction label.
type Metrics struct {
	open          *prometheus.CounterVec
	close         *prometheus.CounterVec
	openConns     *prometheus.GaugeVec
	readBytes     *prometheus.CounterVec
	writeBytes    *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	connectErrors *prometheus.CounterVec
	detect        *prometheus.CounterVec
}

// NewMetrics creates the proxy metrics and registers them on reg. A nil reg
// creates working but unregistered collectors (for tests and benchmarks).
// Registering twice on the same registry is an error.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	dir := []string{"direction"}
	m := &Metrics{
		open: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_open_total",
			Help: "Total number of TCP connections accepted by the proxy.",
		}, dir),
		close: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_close_total",
			Help: "Total number of proxied TCP connections closed.",
		}, dir),
		openConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "meshproxy", Name: "tcp_open_connections",
			Help: "Number of proxied TCP connections currently open.",
		}, dir),
		readBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_read_bytes_total",
			Help: "Total bytes read from accepted client connections.",
		}, dir),
		writeBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_write_bytes_total",
			Help: "Total bytes written to accepted client connections.",
		}, dir),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "meshproxy", Name: "tcp_connection_duration_seconds",
			Help: "Lifetime of proxied TCP connections, from accept to close.",
			// 1ms .. ~4.7h.
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 13),
		}, dir),
		connectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_connect_errors_total",
			Help: "Total failed connection attempts to upstream targets.",
		}, dir),
		detect: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "protocol_detect_total",
			Help: "Total protocol detection results on accepted connections.",
		}, []string{"direction", "protocol"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering proxy metrics: %w", err)
		}
	}
	return m, nil
}

// collectors lists every collector, for registration and lint tests.
func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.open, m.close, m.openConns, m.readBytes,
		m.writeBytes, m.duration, m.connectErrors, m.detect}
}

// dirMetrics are a Metrics curried to one direction, resolved once so the
// per-chunk byte counting does no label lookups.
type dirMetrics struct {
	open, close, readBytes, writeBytes, connectErrors prometheus.Counter
	openConns                                         prometheus.Gauge
	duration                                          prometheus.Observer
	detect                                            *prometheus.CounterVec
	dir                                               string
}

func (m *Metrics) forDirection(d Direction) *dirMetrics {
	l := string(d)
	return &dirMetrics{
		open:          m.open.WithLabelValues(l),
		close:         m.close.WithLabelValues(l),
		readBytes:     m.readBytes.WithLabelValues(l),
		writeBytes:    m.writeBytes.WithLabelValues(l),
		connectErrors: m.connectErrors.WithLabelValues(l),
		openConns:     m.openConns.WithLabelValues(l),
		duration:      m.duration.WithLabelValues(l),
		detect:        m.detect,
		dir:           l,
	}
}
