package balancer

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Service defaults.
const (
	// DefaultRTT is the latency a new endpoint is assumed to have (Linkerd's).
	DefaultRTT = 30 * time.Millisecond
	// DefaultDecay is the time constant of the peak-EWMA latency.
	DefaultDecay = 10 * time.Second
	// DefaultFailureThreshold is how many consecutive failures eject an endpoint.
	DefaultFailureThreshold = 5
	// DefaultBackoffMin is the first ejection's length.
	DefaultBackoffMin = time.Second
	// DefaultBackoffMax caps the ejection length.
	DefaultBackoffMax = time.Minute
	// DefaultBackoffJitter is the fraction of random extra ejection time.
	DefaultBackoffJitter = 0.2
)

// Policy is how a Service chooses among its endpoints.
type Policy int

const (
	// P2C is the power of two choices over peak-EWMA latency × (in-flight+1),
	// as Linkerd balances. The default.
	P2C Policy = iota
	// RoundRobin takes the ready endpoints in turn.
	RoundRobin
)

// State is an endpoint's standing in failure accrual.
type State int32

const (
	// StateReady: the endpoint gets picks.
	StateReady State = iota
	// StateEjected: FailureThreshold consecutive failures took the endpoint
	// out until its backoff runs out.
	StateEjected
	// StateProbing: the backoff ran out and one probe request is in flight;
	// its outcome re-admits or re-ejects the endpoint.
	StateProbing
)

// String returns "ready", "ejected" or "probing".
func (s State) String() string {
	switch s {
	case StateEjected:
		return "ejected"
	case StateProbing:
		return "probing"
	}
	return "ready"
}

// ServiceConfig tunes a Service. The zero value works: P2C with Linkerd's
// constants and failure accrual at 5 consecutive failures.
type ServiceConfig struct {
	// Policy: zero is P2C.
	Policy Policy
	// DefaultRTT: the latency estimate of an endpoint without observations.
	// Zero or negative means DefaultRTT.
	DefaultRTT time.Duration
	// Decay: the peak-EWMA time constant. Zero or negative means DefaultDecay.
	Decay time.Duration
	// FailureThreshold: consecutive failures that eject an endpoint. Zero
	// means DefaultFailureThreshold; negative disables ejection.
	FailureThreshold int
	// BackoffMin, BackoffMax: the n-th consecutive ejection lasts
	// BackoffMin·2^(n-1), at most BackoffMax, plus jitter. Zero or negative
	// means DefaultBackoffMin / DefaultBackoffMax.
	BackoffMin, BackoffMax time.Duration
	// BackoffJitter: each ejection is lengthened by a random fraction in
	// [0, BackoffJitter) of itself. Zero means DefaultBackoffJitter;
	// negative means none.
	BackoffJitter float64
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

func (c ServiceConfig) withDefaults() ServiceConfig {
	c.DefaultRTT = orDefault(c.DefaultRTT, DefaultRTT)
	c.Decay = orDefault(c.Decay, DefaultDecay)
	if c.FailureThreshold == 0 {
		c.FailureThreshold = DefaultFailureThreshold
	}
	c.BackoffMin = orDefault(c.BackoffMin, DefaultBackoffMin)
	c.BackoffMax = max(orDefault(c.BackoffMax, DefaultBackoffMax), c.BackoffMin)
	if c.BackoffJitter == 0 {
		c.BackoffJitter = DefaultBackoffJitter
	}
	if c.BackoffJitter < 0 {
		c.BackoffJitter = 0
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Service is the endpoint set of one (name, port) and the choice among
// its endpoints. Update replaces the set without disturbing requests in
// flight; Pick chooses. It is safe for concurrent use.
type Service struct {
	name string
	port uint16
	cfg  ServiceConfig

	mu  sync.Mutex // serializes Update
	eps atomic.Pointer[[]*Endpoint]
	rr  atomic.Uint64

	lastUsed atomic.Int64           // unix nanos of the last Pick, for Balancer
	answer   atomic.Pointer[Answer] // the DNS answer eps came from, for Balancer
	// answerMu serializes Balancer's updates from DNS answers, so an
	// answer is published only after its endpoints are in place.
	answerMu sync.Mutex
}

// NewService returns a Service with no endpoints.
func NewService(name string, port uint16, cfg ServiceConfig) *Service {
	s := &Service{name: name, port: port, cfg: cfg.withDefaults()}
	s.eps.Store(new([]*Endpoint))
	return s
}

// Name returns the service's name.
func (s *Service) Name() string { return s.name }

// Port returns the service's port.
func (s *Service) Port() uint16 { return s.port }

// Update sets the endpoint set to addrs (duplicates ignored). Endpoints
// that stay keep their latency estimate, in-flight count and failure
// state; new ones start at DefaultRTT; removed ones get no new picks from
// the moment Update returns, while their requests in flight finish and
// Release normally.
func (s *Service) Update(addrs []netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.eps.Load()
	byAddr := make(map[netip.AddrPort]*Endpoint, len(old))
	for _, e := range old {
		byAddr[e.addr] = e
	}
	next := make([]*Endpoint, 0, len(addrs))
	seen := make(map[netip.AddrPort]bool, len(addrs))
	now := s.cfg.Now()
	for _, a := range addrs {
		if seen[a] {
			continue
		}
		seen[a] = true
		e := byAddr[a]
		if e == nil {
			e = &Endpoint{addr: a, svc: s, ewma: float64(s.cfg.DefaultRTT), ewmaAt: now}
		}
		next = append(next, e)
	}
	s.eps.Store(&next)
}

// Endpoints returns the current endpoints.
func (s *Service) Endpoints() []*Endpoint { return append([]*Endpoint(nil), *s.eps.Load()...) }

// Pick chooses an endpoint for one request and counts it in flight. The
// caller must call Release on it exactly once when the request is done.
// It returns ErrNoEndpoints when the set is empty.
//
// Ejected endpoints are skipped. An ejected endpoint whose backoff has
// run out gets exactly one probe request, and is preferred over a ready
// one so that the probe happens. When every endpoint is ejected (none
// ready, none due for a probe) Pick fails open: it returns the endpoint
// whose last failure is the oldest, rather than failing the request. A
// service whose every endpoint is down then sees its requests fail as
// they would without a balancer, spread over the endpoints, and an
// endpoint that recovers is found by the first request that succeeds.
//
// Endpoints in avoid (those a request already failed on) are left out
// of the choice unless nothing else is left.
func (s *Service) Pick(avoid ...netip.AddrPort) (*Endpoint, error) {
	eps := without(*s.eps.Load(), avoid)
	n := len(eps)
	if n == 0 {
		return nil, ErrNoEndpoints
	}
	now := s.cfg.Now()
	s.lastUsed.Store(now.UnixNano())
	if s.cfg.Policy == RoundRobin {
		start := s.rr.Add(1) - 1
		for k := range uint64(n) {
			if e := eps[(start+k)%uint64(n)]; e.tryAcquire(now) {
				return e, nil
			}
		}
		return s.failOpen(eps), nil
	}
	if n == 1 {
		if eps[0].tryAcquire(now) {
			return eps[0], nil
		}
		return s.failOpen(eps), nil
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a, b := eps[i], eps[j]
	ca, sa := a.cost(now)
	cb, sb := b.cost(now)
	// A probe first, then the cheaper ready endpoint.
	if sa == avProbe && a.tryAcquire(now) {
		return a, nil
	}
	if sb == avProbe && b.tryAcquire(now) {
		return b, nil
	}
	if sa == avReady && sb == avReady {
		if cb < ca {
			a = b
		}
		a.acquire()
		return a, nil
	}
	if sa == avReady {
		a.acquire()
		return a, nil
	}
	if sb == avReady {
		b.acquire()
		return b, nil
	}
	// Both candidates are out: choose among the ones that are not.
	return s.pickSlow(eps, now), nil
}

// without returns eps minus the endpoints at the addresses in avoid, or
// eps itself when avoid is empty or would leave nothing.
func without(eps []*Endpoint, avoid []netip.AddrPort) []*Endpoint {
	if len(avoid) == 0 {
		return eps
	}
	var left []*Endpoint
	for _, e := range eps {
		if !slices.Contains(avoid, e.Addr()) {
			left = append(left, e)
		}
	}
	if len(left) == 0 {
		return eps
	}
	return left
}

// pickSlow is P2C's fallback when both random candidates are ejected: the
// cheapest endpoint that can take a request, or failOpen.
func (s *Service) pickSlow(eps []*Endpoint, now time.Time) *Endpoint {
	var best *Endpoint
	bestCost := math.Inf(1)
	off := rand.IntN(len(eps))
	for k := range eps {
		e := eps[(off+k)%len(eps)]
		c, av := e.cost(now)
		if av == avProbe && e.tryAcquire(now) {
			return e
		}
		if av == avReady && c < bestCost {
			best, bestCost = e, c
		}
	}
	if best != nil {
		best.acquire()
		return best
	}
	return s.failOpen(eps)
}

// failOpen returns the endpoint whose last failure is the oldest.
func (s *Service) failOpen(eps []*Endpoint) *Endpoint {
	var best *Endpoint
	var bestAt time.Time
	for _, e := range eps {
		e.mu.Lock()
		at := e.lastFailure
		e.mu.Unlock()
		if best == nil || at.Before(bestAt) {
			best, bestAt = e, at
		}
	}
	best.acquire()
	return best
}

// availability of an endpoint for a new request.
type availability int

const (
	avReady availability = iota
	avProbe              // ejected, backoff over, no probe in flight
	avOut
)

// Endpoint is one address of a Service, with its load and failure state.
// Pick hands it out; the request's outcome comes back through Release.
type Endpoint struct {
	addr     netip.AddrPort
	svc      *Service
	inflight atomic.Int64

	mu           sync.Mutex
	ewma         float64   // nanoseconds
	ewmaAt       time.Time // time of the last estimate update
	state        State
	consecutive  int // consecutive failures
	ejections    int // consecutive ejections, for the backoff
	ejectedAt    time.Time
	ejectedUntil time.Time
	lastFailure  time.Time
}

// Addr returns the endpoint's address.
func (e *Endpoint) Addr() netip.AddrPort { return e.addr }

// decayedLocked returns the peak-EWMA estimate decayed to now (toward 0,
// as in Linkerd and tower, so an endpoint that is not chosen for a while
// becomes attractive again).
func (e *Endpoint) decayedLocked(now time.Time) float64 {
	el := now.Sub(e.ewmaAt)
	if el <= 0 {
		return e.ewma
	}
	return e.ewma * math.Exp(-float64(el)/float64(e.svc.cfg.Decay))
}

// cost returns the endpoint's load (estimate × (in-flight+1)) and whether
// it can take a request.
func (e *Endpoint) cost(now time.Time) (float64, availability) {
	e.mu.Lock()
	est := e.decayedLocked(now)
	av := avReady
	switch e.state {
	case StateEjected:
		av = avOut
		if !now.Before(e.ejectedUntil) {
			av = avProbe
		}
	case StateProbing:
		av = avOut
	}
	e.mu.Unlock()
	return est * float64(e.inflight.Load()+1), av
}

// tryAcquire counts a request in flight if the endpoint is ready, or
// turns it into probing if it is due for a probe.
func (e *Endpoint) tryAcquire(now time.Time) bool {
	e.mu.Lock()
	ok := e.state == StateReady
	if e.state == StateEjected && !now.Before(e.ejectedUntil) {
		e.state, ok = StateProbing, true
	}
	e.mu.Unlock()
	if ok {
		e.inflight.Add(1)
	}
	return ok
}

func (e *Endpoint) acquire() { e.inflight.Add(1) }

// Release reports the outcome of a request Pick handed out: err nil for
// success, non-nil for a failure of the endpoint (connect error, reset,
// 5xx-class answer — the caller decides), and the request's latency. A
// context.Canceled error (the client went away) updates the in-flight
// count only. Call it exactly once per Pick.
//
// Failure accrual: FailureThreshold consecutive failures eject a ready
// endpoint; the outcome of the probe re-admits it (success) or ejects it
// again for twice as long (failure). Outcomes of requests that started
// before the endpoint's latest ejection do not change its state, so slow
// requests from before an ejection neither re-admit nor re-eject it; any
// other success re-admits it (a fail-open request, for instance).
func (e *Endpoint) Release(err error, latency time.Duration) {
	e.inflight.Add(-1)
	if errors.Is(err, context.Canceled) {
		return
	}
	cfg := &e.svc.cfg
	now := cfg.Now()
	latency = max(latency, 0)
	e.mu.Lock()
	defer e.mu.Unlock()
	// Peak EWMA: a slower observation replaces the estimate; a faster one
	// is averaged in with a weight that grows with the time since the
	// last update.
	rtt := float64(latency)
	est := e.decayedLocked(now)
	if rtt > est {
		e.ewma = rtt
	} else {
		w := math.Exp(-float64(max(now.Sub(e.ewmaAt), 0)) / float64(cfg.Decay))
		e.ewma = e.ewma*w + rtt*(1-w)
	}
	e.ewmaAt = now

	startedBeforeEjection := e.state != StateReady && now.Add(-latency).Before(e.ejectedAt)
	if err == nil {
		e.consecutive = 0
		if e.state != StateReady && !startedBeforeEjection {
			e.state, e.ejections = StateReady, 0
		}
		return
	}
	e.consecutive++
	e.lastFailure = now
	if cfg.FailureThreshold < 0 || startedBeforeEjection {
		return
	}
	switch {
	case e.state == StateProbing,
		e.state == StateReady && e.consecutive >= cfg.FailureThreshold:
		e.ejectLocked(now)
	}
}

// ejectLocked takes the endpoint out for its next backoff.
func (e *Endpoint) ejectLocked(now time.Time) {
	cfg := &e.svc.cfg
	e.ejections++
	d := float64(cfg.BackoffMin) * math.Pow(2, float64(min(e.ejections-1, 62)))
	d = min(d, float64(cfg.BackoffMax))
	d += d * cfg.BackoffJitter * rand.Float64()
	e.state = StateEjected
	e.ejectedAt = now
	e.ejectedUntil = now.Add(time.Duration(d))
}

// EndpointState is a snapshot of one endpoint, for /debug/state.
type EndpointState struct {
	Addr                string  `json:"addr"`
	State               string  `json:"state"`
	EWMAMillis          float64 `json:"ewma_ms"`
	InFlight            int64   `json:"in_flight"`
	ConsecutiveFailures int     `json:"consecutive_failures"`
	// EjectedUntil is set while the endpoint is ejected.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
}

// ServiceState is a snapshot of one service, for /debug/state.
type ServiceState struct {
	// Service is "name:port", the metrics label.
	Service   string          `json:"service"`
	Name      string          `json:"name"`
	Port      uint16          `json:"port"`
	Endpoints []EndpointState `json:"endpoints"`
}

// Snapshot returns the service's current endpoints and their state.
func (s *Service) Snapshot() ServiceState {
	now := s.cfg.Now()
	st := ServiceState{Service: s.label(), Name: s.name, Port: s.port}
	for _, e := range *s.eps.Load() {
		st.Endpoints = append(st.Endpoints, e.snapshot(now))
	}
	return st
}

func (s *Service) label() string {
	return netJoin(s.name, s.port)
}

func (e *Endpoint) snapshot(now time.Time) EndpointState {
	e.mu.Lock()
	defer e.mu.Unlock()
	es := EndpointState{
		Addr:                e.addr.String(),
		State:               e.state.String(),
		EWMAMillis:          e.decayedLocked(now) / float64(time.Millisecond),
		InFlight:            e.inflight.Load(),
		ConsecutiveFailures: e.consecutive,
	}
	if e.state == StateEjected {
		t := e.ejectedUntil
		es.EjectedUntil = &t
	}
	return es
}
