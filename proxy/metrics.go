package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the tls label on the tcp_* metrics, with Linkerd's meaning.
const (
	// TLSTrue: mesh mutual TLS (terminated or originated by the proxy).
	TLSTrue = "true"
	// TLSNoIdentity: plaintext while the mesh is on.
	TLSNoIdentity = "no_identity"
	// TLSOpaque: the application's own TLS, passed through untouched.
	TLSOpaque = "opaque"
	// TLSDisabled: the mesh is off; everything is plaintext to the proxy.
	TLSDisabled = "disabled"
)

// tcpLabels is the label set of every tcp_* series: client_id is the peer
// of an inbound mesh connection, server_id the peer of an outbound one,
// both empty otherwise.
var tcpLabels = []string{"direction", "tls", "client_id", "server_id"}

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
	authzAllow    *prometheus.CounterVec
	authzDeny     *prometheus.CounterVec
	refused       *prometheus.CounterVec
	meshErrors    *prometheus.CounterVec
	requests      *prometheus.CounterVec
	responses     *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	retries       *prometheus.CounterVec
	budgetOut     *prometheus.CounterVec
	rejected      *prometheus.CounterVec
}

// Values of the classification label of the HTTP response metrics.
const (
	classSuccess = "success"
	classFailure = "failure" // a 5xx, or an error the proxy produced
)

// statusClientClosed is the status_code label (nginx's 499 "client
// closed request") of a request whose client went away before its
// body ended (reset, end of file, idle timeout): no response was sent,
// and it counts as a failure.
const statusClientClosed = 499

// NewMetrics creates the proxy metrics and registers them on reg. A nil reg
// creates working but unregistered collectors (for tests and benchmarks).
// Registering twice on the same registry is an error.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		open: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_open_total",
			Help: "Total number of TCP connections accepted by the proxy.",
		}, tcpLabels),
		close: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_close_total",
			Help: "Total number of proxied TCP connections closed.",
		}, tcpLabels),
		openConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "meshproxy", Name: "tcp_open_connections",
			Help: "Number of proxied TCP connections currently open.",
		}, tcpLabels),
		readBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_read_bytes_total",
			Help: "Total bytes read from accepted client connections (after TLS termination).",
		}, tcpLabels),
		writeBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_write_bytes_total",
			Help: "Total bytes written to accepted client connections (before TLS).",
		}, tcpLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "meshproxy", Name: "tcp_connection_duration_seconds",
			Help: "Lifetime of proxied TCP connections, from accept to close.",
			// 1ms .. ~4.7h.
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 13),
		}, tcpLabels),
		connectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "tcp_connect_errors_total",
			Help: "Total failed connection attempts to upstream targets.",
		}, tcpLabels),
		detect: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "protocol_detect_total",
			Help: "Total protocol detection results on accepted connections.",
		}, []string{"direction", "protocol"}),
		authzAllow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "inbound_authz_allow_total",
			Help: "Inbound mesh connections allowed by the authorization rules (port is the deciding rule's port, * for any).",
		}, []string{"client_id", "port"}),
		authzDeny: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "inbound_authz_deny_total",
			Help: "Inbound connections denied by the authorization rules (port is * unless a rule names it; client_id is empty for a plaintext client on a port the rules cover).",
		}, []string{"client_id", "port"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "inbound_refused_total",
			Help: "Inbound connections refused before delivery, by reason (bad or missing client certificate, bad transport header, loop, plaintext in strict mode).",
		}, []string{"reason"}),
		meshErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "outbound_mesh_errors_total",
			Help: "Outbound connections closed because the mesh transport failed (never sent in plaintext instead), by reason.",
		}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "requests_total",
			Help: "Total HTTP requests the proxy received, by authority (host:port as the client wrote it).",
		}, []string{"direction", "authority"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "responses_total",
			Help: "Total HTTP responses the proxy sent, counted when the response ends; classification failure is a 5xx or an error the proxy produced.",
		}, []string{"direction", "authority", "status_code", "classification"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "meshproxy", Name: "response_latency_seconds",
			Help: "Time from receiving an HTTP request's headers to sending the response's headers.",
			// 1ms .. ~65s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 17),
		}, []string{"direction", "authority", "status_code", "classification"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "retries_total",
			Help: "Total HTTP request attempts the outbound proxy sent again under a route's retry policy, by authority.",
		}, []string{"authority"}),
		budgetOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "retry_budget_exhausted_total",
			Help: "Total retries a route's policy wanted but the service's retry budget refused, by authority.",
		}, []string{"authority"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshproxy", Name: "requests_rejected_total",
			Help: "Total HTTP requests the outbound proxy answered itself without sending them, by authority and reason (overloaded: the service's concurrency limit).",
		}, []string{"authority", "reason"}),
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
		m.writeBytes, m.duration, m.connectErrors, m.detect,
		m.authzAllow, m.authzDeny, m.refused, m.meshErrors,
		m.requests, m.responses, m.latency, m.retries, m.budgetOut, m.rejected}
}

// dirMetrics are a Metrics for one direction.
type dirMetrics struct {
	*Metrics
	dir string
}

func (m *Metrics) forDirection(d Direction) *dirMetrics {
	return &dirMetrics{Metrics: m, dir: string(d)}
}

// connLabels are the per-connection labels of the tcp_* series.
type connLabels struct {
	tls, clientID, serverID string
}

// connMetrics are the tcp_* series of one label set, resolved once per
// connection so byte counting does no label lookups.
type connMetrics struct {
	open, close, readBytes, writeBytes, connectErrors prometheus.Counter
	openConns                                         prometheus.Gauge
	duration                                          prometheus.Observer
}

func (d *dirMetrics) conn(l connLabels) *connMetrics {
	v := []string{d.dir, l.tls, l.clientID, l.serverID}
	return &connMetrics{
		open:          d.open.WithLabelValues(v...),
		close:         d.close.WithLabelValues(v...),
		readBytes:     d.readBytes.WithLabelValues(v...),
		writeBytes:    d.writeBytes.WithLabelValues(v...),
		connectErrors: d.connectErrors.WithLabelValues(v...),
		openConns:     d.openConns.WithLabelValues(v...),
		duration:      d.duration.WithLabelValues(v...),
	}
}
