package proxy

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	// Touch every vector so each family has a series to lint.
	for _, d := range []Direction{Outbound, Inbound} {
		dm := m.forDirection(d)
		cm := dm.conn(connLabels{tls: TLSTrue, clientID: "spiffe://cluster.local/ns/a/sa/b"})
		cm.open.Inc()
		cm.duration.Observe(1)
		dm.detect.WithLabelValues(string(d), string(ProtocolHTTP1)).Inc()
	}
	m.authzAllow.WithLabelValues("spiffe://cluster.local/ns/a/sa/b", "8080").Inc()
	m.authzDeny.WithLabelValues("spiffe://cluster.local/ns/a/sa/b", "*").Inc()
	m.refused.WithLabelValues(reasonBadHeader).Inc()
	m.meshErrors.WithLabelValues(reasonHandshake).Inc()
	m.requests.WithLabelValues(string(Outbound), "web:8080").Inc()
	m.responses.WithLabelValues(string(Outbound), "web:8080", "200", classSuccess).Inc()
	m.latency.WithLabelValues(string(Outbound), "web:8080", "200", classSuccess).Observe(0.01)
	m.retries.WithLabelValues("web:8080").Inc()
	m.budgetOut.WithLabelValues("web:8080").Inc()
	m.rejected.WithLabelValues("web:8080", "overloaded").Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"meshproxy_tcp_open_total": true, "meshproxy_tcp_close_total": true,
		"meshproxy_tcp_open_connections": true, "meshproxy_tcp_read_bytes_total": true,
		"meshproxy_tcp_write_bytes_total": true, "meshproxy_tcp_connection_duration_seconds": true,
		"meshproxy_tcp_connect_errors_total": true, "meshproxy_protocol_detect_total": true,
		"meshproxy_inbound_authz_allow_total": true, "meshproxy_inbound_authz_deny_total": true,
		"meshproxy_inbound_refused_total": true, "meshproxy_outbound_mesh_errors_total": true,
		"meshproxy_requests_total": true, "meshproxy_responses_total": true,
		"meshproxy_response_latency_seconds": true,
		"meshproxy_retries_total":            true, "meshproxy_retry_budget_exhausted_total": true,
		"meshproxy_requests_rejected_total": true,
	}
	for _, mf := range mfs {
		delete(want, mf.GetName())
	}
	for name := range want {
		t.Errorf("metric %s not registered", name)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestNewMetricsTwiceOnOneRegistryFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("second NewMetrics on the same registry succeeded; want a duplicate registration error")
	}
}
