package proxy

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Retry budget defaults (Linkerd's and Finagle's).
const (
	// DefaultRetryRatio is the share of requests that may be retried.
	DefaultRetryRatio = 0.2
	// DefaultRetryMinPerSecond is the retries allowed per second whatever
	// the ratio, so a service with little traffic can still retry.
	DefaultRetryMinPerSecond = 10
	// DefaultRetryTTL is the window requests and retries are counted over.
	DefaultRetryTTL = 10 * time.Second
	// DefaultRetryBackoff is the base delay between attempts of a rule
	// that gives none (the routes loader fills it in; a RetryPolicy's
	// zero Backoff means no delay).
	DefaultRetryBackoff = 25 * time.Millisecond
	// MaxRetryBody is the largest request body buffered for retries;
	// requests with larger bodies, or bodies of unknown length, are never
	// retried once sent.
	MaxRetryBody = 64 << 10
)

// RetryBudget bounds route retries per service so that retries cannot
// multiply an outage: over the last TTL, retries may be at most Ratio
// times the requests plus MinPerSecond per second of TTL.
type RetryBudget struct {
	// Ratio is the retries allowed per request. Zero means
	// DefaultRetryRatio; negative means none beyond the floor.
	Ratio float64
	// MinPerSecond is the floor of retries per second. Zero means
	// DefaultRetryMinPerSecond; negative means no floor.
	MinPerSecond int
	// TTL is the counting window (whole seconds, at least one). Zero or
	// negative means DefaultRetryTTL.
	TTL time.Duration
}

func (b RetryBudget) withDefaults() RetryBudget {
	switch {
	case b.Ratio == 0:
		b.Ratio = DefaultRetryRatio
	case b.Ratio < 0:
		b.Ratio = 0
	}
	switch {
	case b.MinPerSecond == 0:
		b.MinPerSecond = DefaultRetryMinPerSecond
	case b.MinPerSecond < 0:
		b.MinPerSecond = 0
	}
	if b.TTL <= 0 {
		b.TTL = DefaultRetryTTL
	}
	if b.TTL < time.Second {
		b.TTL = time.Second
	}
	return b
}

// budget counts one service's requests and retries in per-second
// buckets over the TTL. It is safe for concurrent use.
type budget struct {
	cfg RetryBudget

	mu      sync.Mutex
	buckets []budgetBucket // ring, one per second
}

type budgetBucket struct {
	sec               int64 // unix second the counts belong to
	requests, retries int64
}

func newBudget(cfg RetryBudget) *budget {
	return &budget{cfg: cfg, buckets: make([]budgetBucket, int(cfg.TTL/time.Second))}
}

// bucketLocked returns the bucket of now, cleared if it is stale.
func (b *budget) bucketLocked(now time.Time) *budgetBucket {
	sec := now.Unix()
	bk := &b.buckets[int(sec%int64(len(b.buckets)))]
	if bk.sec != sec {
		*bk = budgetBucket{sec: sec}
	}
	return bk
}

// deposit counts a request.
func (b *budget) deposit(now time.Time) {
	b.mu.Lock()
	b.bucketLocked(now).requests++
	b.mu.Unlock()
}

// withdraw takes one retry from the budget, false when none is left.
func (b *budget) withdraw(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.bucketLocked(now)
	oldest := now.Unix() - int64(len(b.buckets)) + 1
	var requests, retries int64
	for _, bk := range b.buckets {
		if bk.sec >= oldest {
			requests += bk.requests
			retries += bk.retries
		}
	}
	allowed := b.cfg.Ratio*float64(requests) + float64(b.cfg.MinPerSecond)*float64(len(b.buckets))
	if float64(retries)+1 > allowed {
		return false
	}
	cur.retries++
	return true
}

// budgets holds the budget of every routed service.
type budgets struct {
	cfg RetryBudget
	mu  sync.Mutex
	m   map[string]*budget
}

func (bs *budgets) get(svc string) *budget {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b := bs.m[svc]
	if b == nil {
		if bs.m == nil {
			bs.m = map[string]*budget{}
		}
		b = newBudget(bs.cfg)
		bs.m[svc] = b
	}
	return b
}

// backoff is the delay before retry n (1 for the first retry): full
// jitter, uniform in [0, base*2^(n-1)), the exponent capped at 2^5; none
// when base is zero (a route's "backoff: 0s").
func backoff(base time.Duration, n int) time.Duration {
	if base <= 0 {
		return 0
	}
	shift := min(max(n-1, 0), 5)
	return rand.N(base << shift)
}
