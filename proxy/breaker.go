package proxy

import (
	"context"
	"errors"
	"sync"
)

// errOverloaded is the answer of a service at its concurrency limit.
var errOverloaded = errors.New("too many concurrent requests to the service")

// limiter caps the requests in flight per service and the requests that
// wait for a slot. Entries exist only while a service has requests, so
// the map stays as small as the traffic. It is safe for concurrent use.
type limiter struct {
	maxActive  int // 0: unlimited
	maxPending int // 0: unlimited; negative: none wait

	mu  sync.Mutex
	svc map[string]*svcLimit
}

type svcLimit struct {
	active, pending int
	free            chan struct{} // one token per freed slot, buffered
}

// acquire takes a slot for svc, waiting while the service is full and
// fewer than maxPending wait; it fails at once with errOverloaded beyond
// that, or with ctx's error while waiting. The caller calls the returned
// release once.
func (l *limiter) acquire(ctx context.Context, svc string) (release func(), err error) {
	if l.maxActive <= 0 {
		return func() {}, nil
	}
	l.mu.Lock()
	if l.svc == nil {
		l.svc = map[string]*svcLimit{}
	}
	s := l.svc[svc]
	if s == nil {
		s = &svcLimit{free: make(chan struct{}, 1)}
		l.svc[svc] = s
	}
	if s.active < l.maxActive && s.pending == 0 {
		s.active++
		l.mu.Unlock()
		return l.releaser(svc, s), nil
	}
	if l.maxPending < 0 || (l.maxPending > 0 && s.pending >= l.maxPending) {
		l.mu.Unlock()
		return nil, errOverloaded
	}
	s.pending++
	l.mu.Unlock()
	for {
		select {
		case <-s.free:
		case <-ctx.Done():
			l.mu.Lock()
			s.pending--
			l.dropLocked(svc, s)
			l.mu.Unlock()
			return nil, ctx.Err()
		}
		l.mu.Lock()
		if s.active < l.maxActive {
			s.active++
			s.pending--
			l.wakeLocked(s)
			l.mu.Unlock()
			return l.releaser(svc, s), nil
		}
		l.mu.Unlock()
	}
}

func (l *limiter) releaser(svc string, s *svcLimit) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			s.active--
			l.wakeLocked(s)
			l.dropLocked(svc, s)
			l.mu.Unlock()
		})
	}
}

// wakeLocked lets one waiter look again when there is room.
func (l *limiter) wakeLocked(s *svcLimit) {
	if s.pending > 0 && s.active < l.maxActive {
		select {
		case s.free <- struct{}{}:
		default:
		}
	}
}

func (l *limiter) dropLocked(svc string, s *svcLimit) {
	if s.active == 0 && s.pending == 0 && l.svc[svc] == s {
		delete(l.svc, svc)
	}
}
