package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// listenerCollector exports the counters that package listener keeps
// (listener may not import Prometheus) as meshproxy_listener_* metrics.
type listenerCollector struct {
	listeners     []boundListener
	loops         *prometheus.Desc
	noOriginalDst *prometheus.Desc
	acceptErrors  *prometheus.Desc
}

var _ prometheus.Collector = (*listenerCollector)(nil)

func newListenerCollector(ls []boundListener) *listenerCollector {
	labels := []string{"direction", "addr"}
	return &listenerCollector{
		listeners: ls,
		loops: prometheus.NewDesc("meshproxy_listener_loops_refused_total",
			"Connections refused because their original destination was the proxy's own listener.", labels, nil),
		noOriginalDst: prometheus.NewDesc("meshproxy_listener_no_original_dst_total",
			"Connections closed because their original destination could not be recovered.", labels, nil),
		acceptErrors: prometheus.NewDesc("meshproxy_listener_accept_errors_total",
			"Temporary accept errors (such as running out of file descriptors) that were backed off and retried.", labels, nil),
	}
}

func (c *listenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.loops
	ch <- c.noOriginalDst
	ch <- c.acceptErrors
}

func (c *listenerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, b := range c.listeners {
		st := b.l.Stats()
		dir, addr := string(b.dir), b.l.Addr().String()
		ch <- prometheus.MustNewConstMetric(c.loops, prometheus.CounterValue, float64(st.LoopsRefused), dir, addr)
		ch <- prometheus.MustNewConstMetric(c.noOriginalDst, prometheus.CounterValue, float64(st.NoOriginalDst), dir, addr)
		ch <- prometheus.MustNewConstMetric(c.acceptErrors, prometheus.CounterValue, float64(st.AcceptErrors), dir, addr)
	}
}
