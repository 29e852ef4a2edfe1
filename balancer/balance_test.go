package balancer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func addrs(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)}), 8080)
	}
	return out
}

func newTestService(t testing.TB, n int, cfg ServiceConfig) (*Service, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	cfg.Now = clk.now
	s := NewService("web.test", 8080, cfg)
	s.Update(addrs(n))
	return s, clk
}

// simulate picks n times; each request completes at once with the
// latency lat(endpoint) and the clock moves 1ms per request.
func simulate(t *testing.T, s *Service, clk *fakeClock, n int, lat func(*Endpoint) time.Duration) map[netip.AddrPort]int {
	t.Helper()
	counts := map[netip.AddrPort]int{}
	for range n {
		ep, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		counts[ep.Addr()]++
		ep.Release(nil, lat(ep))
		clk.add(time.Millisecond)
	}
	return counts
}

func TestP2CEqualLatenciesSpreadEvenly(t *testing.T) {
	s, clk := newTestService(t, 3, ServiceConfig{})
	const n = 3000
	counts := simulate(t, s, clk, n, func(*Endpoint) time.Duration { return 10 * time.Millisecond })
	chi2 := 0.0
	for _, a := range addrs(3) {
		d := float64(counts[a]) - n/3.0
		chi2 += d * d / (n / 3.0)
	}
	// 2 degrees of freedom: 13.8 is p = 0.001.
	if chi2 > 13.8 {
		t.Errorf("picks = %v; chi-square %.1f over 13.8: not an even spread", counts, chi2)
	}
}

func TestP2CAvoidsSlowEndpoint(t *testing.T) {
	s, clk := newTestService(t, 3, ServiceConfig{})
	slow := addrs(3)[2]
	counts := simulate(t, s, clk, 3000, func(e *Endpoint) time.Duration {
		if e.Addr() == slow {
			return 100 * time.Millisecond
		}
		return 10 * time.Millisecond
	})
	if counts[slow] > 300 {
		t.Errorf("picks = %v; want the slow endpoint under 10%%", counts)
	}
}

func TestP2CWeighsInFlight(t *testing.T) {
	s, clk := newTestService(t, 3, ServiceConfig{})
	busy := s.Endpoints()[0]
	// Five requests stay in flight on one endpoint.
	for range 5 {
		busy.acquire()
	}
	counts := simulate(t, s, clk, 3000, func(*Endpoint) time.Duration { return 10 * time.Millisecond })
	if counts[busy.Addr()] > 150 {
		t.Errorf("picks = %v; want the endpoint with 5 requests in flight under 5%%", counts)
	}
	if st := s.Snapshot(); st.Endpoints[0].InFlight != 5 {
		t.Errorf("snapshot in-flight = %d; want 5", st.Endpoints[0].InFlight)
	}
}

func TestRoundRobinExact(t *testing.T) {
	s, _ := newTestService(t, 3, ServiceConfig{Policy: RoundRobin})
	want := addrs(3)
	for i := range 300 {
		ep, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if ep.Addr() != want[i%3] {
			t.Fatalf("pick %d = %v; want %v", i, ep.Addr(), want[i%3])
		}
		ep.Release(nil, time.Millisecond)
	}
}

func TestNoEndpoints(t *testing.T) {
	s := NewService("empty.test", 80, ServiceConfig{})
	if _, err := s.Pick(); !errors.Is(err, ErrNoEndpoints) {
		t.Errorf("Pick on an empty service: err = %v; want ErrNoEndpoints", err)
	}
}

var errUpstream = errors.New("upstream failed")

// pickAddr picks until it gets want (releasing others with success); it
// fails the test if want is not picked within 20 picks.
func pickAddr(t *testing.T, s *Service, want netip.AddrPort) *Endpoint {
	t.Helper()
	for range 20 {
		ep, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if ep.Addr() == want {
			return ep
		}
		ep.Release(nil, time.Millisecond)
	}
	t.Fatalf("%v not picked in 20 picks", want)
	return nil
}

// notPicked checks that 20 picks never return addr.
func notPicked(t *testing.T, s *Service, addr netip.AddrPort, when string) {
	t.Helper()
	for range 20 {
		ep, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		ep.Release(nil, time.Millisecond)
		if ep.Addr() == addr {
			t.Fatalf("%s: %v picked; want it skipped", when, addr)
		}
	}
}

func stateOf(s *Service, addr netip.AddrPort) EndpointState {
	for _, e := range s.Snapshot().Endpoints {
		if e.Addr == addr.String() {
			return e
		}
	}
	return EndpointState{State: "absent"}
}

func TestFailureAccrual(t *testing.T) {
	s, clk := newTestService(t, 2, ServiceConfig{
		Policy: RoundRobin, FailureThreshold: 3, BackoffMin: time.Second, BackoffMax: 8 * time.Second, BackoffJitter: -1,
	})
	a := addrs(2)[0]
	for i := range 3 {
		if st := stateOf(s, a); st.State != "ready" {
			t.Fatalf("after %d failures: state %s; want ready", i, st.State)
		}
		pickAddr(t, s, a).Release(errUpstream, time.Millisecond)
	}
	if st := stateOf(s, a); st.State != "ejected" || st.ConsecutiveFailures != 3 {
		t.Fatalf("after 3 failures: %+v; want ejected with 3 consecutive failures", st)
	}
	// Backoffs 1s, 2s, 4s, 8s, 8s (capped): not picked before, one probe at.
	for _, backoff := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		clk.add(backoff - time.Millisecond)
		notPicked(t, s, a, fmt.Sprintf("%v into a %v backoff", backoff-time.Millisecond, backoff))
		clk.add(time.Millisecond)
		probe := pickAddr(t, s, a)
		if st := stateOf(s, a); st.State != "probing" {
			t.Fatalf("probe picked: state %s; want probing", st.State)
		}
		notPicked(t, s, a, "while the probe is in flight")
		probe.Release(errUpstream, time.Millisecond)
		if st := stateOf(s, a); st.State != "ejected" {
			t.Fatalf("probe failed: state %s; want ejected", st.State)
		}
	}
	// A successful probe re-admits and resets the backoff.
	clk.add(8 * time.Second)
	pickAddr(t, s, a).Release(nil, time.Millisecond)
	if st := stateOf(s, a); st.State != "ready" || st.ConsecutiveFailures != 0 {
		t.Fatalf("probe succeeded: %+v; want ready with 0 failures", st)
	}
	pickAddr(t, s, a).Release(nil, time.Millisecond)
	for range 3 {
		pickAddr(t, s, a).Release(errUpstream, time.Millisecond)
	}
	clk.add(time.Second - time.Millisecond)
	notPicked(t, s, a, "just under 1s into the first ejection after re-admission")
	clk.add(time.Millisecond)
	if pickAddr(t, s, a); stateOf(s, a).State != "probing" {
		t.Errorf("1s after the first ejection since re-admission: state %s; want probing (backoff reset to 1s)", stateOf(s, a).State)
	}
}

func TestBackoffJitter(t *testing.T) {
	s, clk := newTestService(t, 1, ServiceConfig{FailureThreshold: 1, BackoffMin: time.Second, BackoffJitter: 0.5})
	ep, _ := s.Pick()
	ep.Release(errUpstream, 0)
	until := *stateOf(s, ep.Addr()).EjectedUntil
	if d := until.Sub(clk.now()); d < time.Second || d >= 1500*time.Millisecond {
		t.Errorf("ejection = %v; want in [1s, 1.5s)", d)
	}
}

// TestFailOpen: with every endpoint ejected, Pick still answers, with the
// endpoint whose last failure is the oldest; a success re-admits it.
func TestFailOpen(t *testing.T) {
	s, clk := newTestService(t, 2, ServiceConfig{Policy: RoundRobin, FailureThreshold: 1, BackoffJitter: -1})
	a, b := addrs(2)[0], addrs(2)[1]
	pickAddr(t, s, a).Release(errUpstream, 0)
	clk.add(time.Millisecond)
	pickAddr(t, s, b).Release(errUpstream, 0)
	for range 5 {
		ep, err := s.Pick()
		if err != nil {
			t.Fatalf("all ejected: err = %v; want fail-open", err)
		}
		if ep.Addr() != a {
			t.Fatalf("fail-open pick = %v; want %v (oldest failure)", ep.Addr(), a)
		}
		ep.Release(context.Canceled, 0)
	}
	ep, _ := s.Pick()
	clk.add(time.Millisecond)
	ep.Release(nil, time.Millisecond/2)
	if st := stateOf(s, a); st.State != "ready" {
		t.Errorf("fail-open success: state %s; want ready", st.State)
	}
}

func TestOutcomeOfRequestStartedBeforeEjection(t *testing.T) {
	s, clk := newTestService(t, 2, ServiceConfig{Policy: RoundRobin, FailureThreshold: 2, BackoffJitter: -1})
	a := addrs(2)[0]
	old := pickAddr(t, s, a)
	clk.add(100 * time.Millisecond)
	pickAddr(t, s, a).Release(errUpstream, time.Millisecond)
	pickAddr(t, s, a).Release(errUpstream, time.Millisecond)
	clk.add(100 * time.Millisecond)
	old.Release(nil, 200*time.Millisecond)
	if st := stateOf(s, a); st.State != "ejected" {
		t.Errorf("success of a request from before the ejection: state %s; want still ejected", st.State)
	}
}

func TestCanceledIsNotAFailure(t *testing.T) {
	s, _ := newTestService(t, 1, ServiceConfig{FailureThreshold: 1})
	for range 3 {
		ep, _ := s.Pick()
		ep.Release(fmt.Errorf("client gone: %w", context.Canceled), time.Millisecond)
	}
	if st := s.Snapshot().Endpoints[0]; st.State != "ready" || st.ConsecutiveFailures != 0 || st.InFlight != 0 {
		t.Errorf("after cancellations: %+v; want ready, 0 failures, 0 in flight", st)
	}
}

func TestUpdateKeepsStateAndRemovedEndpointsFinish(t *testing.T) {
	s, _ := newTestService(t, 3, ServiceConfig{Policy: RoundRobin})
	all := addrs(3)
	gone := pickAddr(t, s, all[0])
	kept := pickAddr(t, s, all[1])
	s.Update([]netip.AddrPort{all[1], all[2], all[2]})
	if n := len(s.Endpoints()); n != 2 {
		t.Fatalf("endpoints after update = %d; want 2 (duplicates dropped)", n)
	}
	if stateOf(s, all[1]).InFlight != 1 {
		t.Errorf("kept endpoint lost its in-flight count")
	}
	for range 50 {
		ep, _ := s.Pick()
		if ep == gone {
			t.Fatal("removed endpoint picked after Update")
		}
		ep.Release(nil, time.Millisecond)
	}
	gone.Release(nil, time.Millisecond)
	kept.Release(nil, time.Millisecond)
	if gone.inflight.Load() != 0 || stateOf(s, all[1]).InFlight != 0 {
		t.Errorf("in-flight after release: removed %d, kept %d; want 0, 0", gone.inflight.Load(), stateOf(s, all[1]).InFlight)
	}
	if st := stateOf(s, all[0]); st.State != "absent" {
		t.Errorf("removed endpoint in snapshot: %+v", st)
	}
}

func TestServiceConcurrent(t *testing.T) {
	s := NewService("web.test", 8080, ServiceConfig{FailureThreshold: 3, BackoffMin: time.Millisecond})
	s.Update(addrs(5))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				ep, err := s.Pick()
				if err != nil {
					t.Error(err)
					return
				}
				var err2 error
				if (i+g)%7 == 0 {
					err2 = errUpstream
				}
				ep.Release(err2, time.Duration(i%10)*time.Millisecond)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			s.Update(addrs(3 + i%5))
		}
	}()
	wg.Wait()
	for _, e := range s.Snapshot().Endpoints {
		if e.InFlight != 0 {
			t.Errorf("%s: in flight %d after all releases; want 0", e.Addr, e.InFlight)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	for _, n := range []int{3, 100} {
		b.Run(fmt.Sprintf("P2C/%d", n), func(b *testing.B) {
			s := NewService("web.test", 8080, ServiceConfig{})
			s.Update(addrs(n))
			b.ReportAllocs()
			for b.Loop() {
				ep, _ := s.Pick()
				ep.Release(nil, time.Millisecond)
			}
		})
		b.Run(fmt.Sprintf("RoundRobin/%d", n), func(b *testing.B) {
			s := NewService("web.test", 8080, ServiceConfig{Policy: RoundRobin})
			s.Update(addrs(n))
			b.ReportAllocs()
			for b.Loop() {
				ep, _ := s.Pick()
				ep.Release(nil, time.Millisecond)
			}
		})
	}
}

// TestPickAvoids: a pick leaves out the endpoints a request already failed
// on, even when they look fastest (a dead endpoint fails in no time), and
// falls back to all of them when nothing else is left.
func TestPickAvoids(t *testing.T) {
	for _, policy := range []Policy{P2C, RoundRobin} {
		s, _ := newTestService(t, 3, ServiceConfig{Policy: policy})
		eps := s.Endpoints()
		// The two to avoid are the "fast" ones, as dead endpoints are.
		for _, e := range eps[:2] {
			e.acquire()
			e.Release(nil, time.Microsecond)
		}
		avoid := []netip.AddrPort{eps[0].Addr(), eps[1].Addr()}
		for range 100 {
			ep, err := s.Pick(avoid...)
			if err != nil {
				t.Fatal(err)
			}
			if ep != eps[2] {
				t.Fatalf("policy %v: picked %v, which the request already failed on", policy, ep.Addr())
			}
			ep.Release(nil, time.Millisecond)
		}
		all := []netip.AddrPort{eps[0].Addr(), eps[1].Addr(), eps[2].Addr()}
		if ep, err := s.Pick(all...); err != nil || ep == nil {
			t.Fatalf("policy %v: Pick avoiding every endpoint = %v, %v; want one of them", policy, ep, err)
		} else {
			ep.Release(nil, time.Millisecond)
		}
	}
}
