package main

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshproxy/balancer"
	"meshproxy/identity"
	"meshproxy/proxy"
)

// httpSettings are the HTTP-aware outbound settings of "meshproxy run".
type httpSettings struct {
	Enabled         bool
	ResolvConf      string
	LBPolicy        string
	ResponseTimeout time.Duration
	PoolIdleTimeout time.Duration
	PoolMaxLifetime time.Duration

	Routes                  string
	ClusterDomain           string
	Namespace               string
	RetryBudgetRatio        float64
	RetryBudgetMinPerSecond int
	MaxConcurrent           int
	MaxPending              int
	TraceSampleRate         float64
	StreamIdleTimeout       time.Duration
	AccessLog               bool
}

// namespace is the workload's namespace: the setting, else the namespace
// of its SPIFFE identity, else "default".
func (h *httpSettings) namespace(identityID string) string {
	if h.Namespace != "" {
		return h.Namespace
	}
	if id, err := identity.ParseID(identityID); err == nil {
		return id.Namespace
	}
	return "default"
}

func (h *httpSettings) validate() error {
	if h.LBPolicy != "p2c" && h.LBPolicy != "round-robin" {
		return fmt.Errorf("lb-policy %q is neither p2c nor round-robin", h.LBPolicy)
	}
	if h.Namespace != "" && (len(h.Namespace) > 63 || !dns1123Label.MatchString(h.Namespace)) {
		return fmt.Errorf("namespace %q is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63 characters)", h.Namespace)
	}
	if h.Routes != "" && !h.Enabled {
		return fmt.Errorf("routes need the HTTP-aware outbound: set http to true")
	}
	if !(h.TraceSampleRate >= 0 && h.TraceSampleRate <= 1) { // NaN too
		return fmt.Errorf("trace-sample-rate %v is not between 0 and 1", h.TraceSampleRate)
	}
	if math.IsNaN(h.RetryBudgetRatio) || math.IsInf(h.RetryBudgetRatio, 0) {
		return fmt.Errorf("retry-budget-ratio %v is not a number: give a share of requests such as 0.2 (0: none)", h.RetryBudgetRatio)
	}
	if h.ResponseTimeout == 0 {
		return fmt.Errorf("response-timeout is 0: give a duration such as 30s, or a negative one (-1s) for no limit")
	}
	if h.RetryBudgetRatio < 0 || h.RetryBudgetMinPerSecond < 0 || h.MaxConcurrent < 0 || h.MaxPending < -1 {
		return fmt.Errorf("retry-budget-*, max-concurrent-per-service must not be negative; max-pending-per-service is -1 or more")
	}
	if h.StreamIdleTimeout < 0 {
		return fmt.Errorf("stream-idle-timeout must not be negative")
	}
	if h.PoolIdleTimeout <= 0 || h.PoolMaxLifetime <= 0 {
		return fmt.Errorf("pool-idle-timeout and pool-max-lifetime must be positive")
	}
	if h.Enabled {
		if _, err := balancer.ReadResolvConf(h.ResolvConf); err != nil {
			return fmt.Errorf("resolv-conf: %w (or set http to false)", err)
		}
	}
	return nil
}

// newBalancer builds discovery and balancing from the settings, and
// returns the balancer package's metrics for the connection pool too;
// stop releases them.
func newBalancer(h *httpSettings, reg prometheus.Registerer, log *slog.Logger) (*balancer.Balancer, *balancer.Metrics, func(), error) {
	m, err := balancer.NewMetrics(reg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("balancer metrics: %w", err)
	}
	r, err := balancer.NewResolver(balancer.ResolverConfig{ResolvConf: h.ResolvConf, Metrics: m})
	if err != nil {
		return nil, nil, nil, err
	}
	d := balancer.NewDiscovery(r, balancer.DiscoveryConfig{Logger: log})
	policy := balancer.P2C
	if h.LBPolicy == "round-robin" {
		policy = balancer.RoundRobin
	}
	b := balancer.New(d, balancer.BalancerConfig{Metrics: m, Service: balancer.ServiceConfig{Policy: policy}})
	return b, m, func() { b.Close(); d.Close() }, nil
}

// retryBudget is the proxy's retry budget for the settings. A setting of
// 0 means none (no share of the requests, no floor); proxy.RetryBudget
// reads a zero field as its default, and a negative one as none.
func (h *httpSettings) retryBudget() proxy.RetryBudget {
	b := proxy.RetryBudget{Ratio: h.RetryBudgetRatio, MinPerSecond: h.RetryBudgetMinPerSecond}
	if b.Ratio == 0 {
		b.Ratio = -1
	}
	if b.MinPerSecond == 0 {
		b.MinPerSecond = -1
	}
	return b
}
