package admin

import (
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric names the status page reads from the gatherer.
const (
	metricRequests     = "meshproxy_requests_total"
	metricLatency      = "meshproxy_response_latency_seconds"
	metricConnections  = "meshproxy_tcp_open_total"
	metricConnDuration = "meshproxy_tcp_connection_duration_seconds"
	metricOpenConns    = "meshproxy_tcp_open_connections"
)

// bucket is one cumulative histogram bucket: Count observations were at
// most Upper. The last bucket of a histogram has Upper +Inf and holds the
// total count.
type bucket struct {
	Upper float64
	Count float64
}

// quantileResult is a quantile estimated from histogram buckets.
type quantileResult struct {
	// Value is the estimate, in the histogram's unit.
	Value float64
	// Above is true when the quantile lies in the +Inf bucket: the true
	// value is above Value, the largest finite bound.
	Above bool
	// OK is false when the histogram holds no observations.
	OK bool
}

// quantile estimates the q-quantile (0 < q <= 1) of the observations in
// the cumulative buckets b, sorted by Upper, the way Prometheus's
// histogram_quantile does: find the bucket holding the rank q*total and
// interpolate linearly between its lower and upper bound (the first
// bucket's lower bound is 0).
func quantile(q float64, b []bucket) quantileResult {
	if len(b) == 0 || q <= 0 || math.IsNaN(q) {
		return quantileResult{}
	}
	q = min(q, 1)
	total := b[len(b)-1].Count
	if !(total > 0) {
		return quantileResult{}
	}
	rank := q * total
	i := slices.IndexFunc(b, func(x bucket) bool { return x.Count >= rank })
	if i < 0 { // non-monotonic input; the last bucket is the total
		i = len(b) - 1
	}
	lower, below := 0.0, 0.0
	if i > 0 {
		lower, below = b[i-1].Upper, b[i-1].Count
	}
	if math.IsInf(b[i].Upper, +1) {
		return quantileResult{Value: lower, Above: true, OK: true}
	}
	if i == 0 && b[0].Upper <= 0 {
		return quantileResult{Value: b[0].Upper, OK: true}
	}
	frac := (rank - below) / (b[i].Count - below)
	return quantileResult{Value: lower + (b[i].Upper-lower)*frac, OK: true}
}

// snapshot is the traffic metrics at one moment, summed over all label
// sets.
type snapshot struct {
	At           time.Time
	HasRequests  bool
	Requests     float64
	Latency      []bucket
	HasConns     bool
	Conns        float64
	ConnDuration []bucket
	// OpenConns is meshproxy_tcp_open_connections summed by direction;
	// nil when the gauge is absent.
	OpenConns map[string]int
}

// takeSnapshot reads the traffic metrics from g. A gather error still
// yields whatever families were gathered.
func takeSnapshot(g prometheus.Gatherer, at time.Time) snapshot {
	s := snapshot{At: at}
	if g == nil {
		return s
	}
	mfs, _ := g.Gather()
	for _, mf := range mfs {
		switch mf.GetName() {
		case metricRequests:
			s.HasRequests = true
			s.Requests = sumCounter(mf)
		case metricLatency:
			s.Latency = sumHistogram(mf)
		case metricConnections:
			s.HasConns = true
			s.Conns = sumCounter(mf)
		case metricConnDuration:
			s.ConnDuration = sumHistogram(mf)
		case metricOpenConns:
			s.OpenConns = map[string]int{}
			for _, m := range mf.GetMetric() {
				dir := "unknown"
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "direction" {
						dir = lp.GetValue()
					}
				}
				s.OpenConns[dir] += int(m.GetGauge().GetValue())
			}
		}
	}
	return s
}

func sumCounter(mf *dto.MetricFamily) float64 {
	var n float64
	for _, m := range mf.GetMetric() {
		n += m.GetCounter().GetValue()
	}
	return n
}

// sumHistogram adds up the classic buckets of every series in mf, by upper
// bound, ending with the +Inf bucket (the total count).
func sumHistogram(mf *dto.MetricFamily) []bucket {
	byUpper := map[float64]float64{}
	for _, m := range mf.GetMetric() {
		h := m.GetHistogram()
		if h == nil {
			continue
		}
		for _, b := range h.GetBucket() {
			byUpper[b.GetUpperBound()] += float64(b.GetCumulativeCount())
		}
		byUpper[math.Inf(+1)] += float64(h.GetSampleCount())
	}
	out := make([]bucket, 0, len(byUpper))
	for u, c := range byUpper {
		out = append(out, bucket{Upper: u, Count: c})
	}
	slices.SortFunc(out, func(a, b bucket) int { return cmpFloat(a.Upper, b.Upper) })
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// deltaBuckets returns the observations made between old and cur, both
// cumulative bucket lists. A bound missing from old counts as zero there;
// negative deltas (a counter reset) count as zero, and the result is kept
// cumulative (non-decreasing).
func deltaBuckets(old, cur []bucket) []bucket {
	before := make(map[float64]float64, len(old))
	for _, b := range old {
		before[b.Upper] = b.Count
	}
	out := make([]bucket, len(cur))
	run := 0.0
	for i, b := range cur {
		d := max(b.Count-before[b.Upper], 0)
		run = max(run, d)
		out[i] = bucket{Upper: b.Upper, Count: run}
	}
	return out
}

// traffic is the status page's figures for one kind of traffic between
// two snapshots.
type traffic struct {
	// Rate is events per second.
	Rate float64
	// Over is the time the rate and quantiles cover.
	Over time.Duration
	// Events is how many events happened in Over.
	Events        float64
	P50, P90, P99 quantileResult
}

// between computes requests (HTTP) and connections (TCP) figures from old
// to cur. ok is false for a kind cur has no metrics for, or when no time
// passed.
func between(old, cur snapshot) (req traffic, reqOK bool, conn traffic, connOK bool) {
	over := cur.At.Sub(old.At)
	if over <= 0 {
		return traffic{}, false, traffic{}, false
	}
	mk := func(n0, n1 float64, h0, h1 []bucket) traffic {
		d := max(n1-n0, 0) // a reset counts as no events
		h := deltaBuckets(h0, h1)
		return traffic{
			Rate: d / over.Seconds(), Over: over, Events: d,
			P50: quantile(0.50, h), P90: quantile(0.90, h), P99: quantile(0.99, h),
		}
	}
	// A family missing from old had no series yet: its counts were zero.
	if cur.HasRequests {
		req, reqOK = mk(old.Requests, cur.Requests, old.Latency, cur.Latency), true
	}
	if cur.HasConns {
		conn, connOK = mk(old.Conns, cur.Conns, old.ConnDuration, cur.ConnDuration), true
	}
	return req, reqOK, conn, connOK
}

// sampler keeps a ring of the last n snapshots of a gatherer.
// Its methods are safe for concurrent use.
type sampler struct {
	g    prometheus.Gatherer
	n    int
	mu   sync.Mutex
	ring []snapshot // oldest first, at most n
}

func newSampler(g prometheus.Gatherer, n int) *sampler {
	return &sampler{g: g, n: max(n, 1)}
}

// sample takes a snapshot at now and keeps it.
func (s *sampler) sample(now time.Time) {
	snap := takeSnapshot(s.g, now)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ring) == s.n {
		s.ring = slices.Delete(s.ring, 0, 1)
	}
	s.ring = append(s.ring, snap)
}

// run samples every interval until stop is closed, starting at once.
func (s *sampler) run(interval time.Duration, stop <-chan struct{}) {
	s.sample(time.Now())
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			s.sample(now)
		}
	}
}

// bases returns the kept snapshot taken closest to now-recent (and before
// now), for the recent figures, and the oldest kept snapshot, for the
// window figures. ok is false when nothing is kept yet.
func (s *sampler) bases(now time.Time, recent time.Duration) (rec, oldest snapshot, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ring) == 0 {
		return snapshot{}, snapshot{}, false
	}
	target := now.Add(-recent)
	best := -1
	for i, sn := range s.ring {
		if !sn.At.Before(now) {
			continue
		}
		if best < 0 || absDuration(sn.At.Sub(target)) < absDuration(s.ring[best].At.Sub(target)) {
			best = i
		}
	}
	if best < 0 {
		best = 0
	}
	return s.ring[best], s.ring[0], true
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
