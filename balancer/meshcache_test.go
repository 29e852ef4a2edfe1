package balancer

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for expiry tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeClock) add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

func newTestCache(size int) (*MeshCache, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	return NewMeshCache(MeshCacheConfig{Size: size, MeshedTTL: time.Hour, UnmeshedTTL: 30 * time.Second, Now: clk.now}), clk
}

var (
	a = netip.MustParseAddr("198.18.0.1")
	b = netip.MustParseAddr("198.18.0.2")
)

func TestMeshCacheStates(t *testing.T) {
	c, _ := newTestCache(0)
	if got := c.Get(a); got != MeshUnknown {
		t.Errorf("Get(new) = %v; want unknown", got)
	}
	c.SetMeshed(a)
	if !c.SetUnmeshed(b) {
		t.Error("SetUnmeshed(b) = false; want true")
	}
	if got := c.Get(a); got != Meshed {
		t.Errorf("Get(a) = %v; want meshed", got)
	}
	if got := c.Get(b); got != Unmeshed {
		t.Errorf("Get(b) = %v; want unmeshed", got)
	}
	// A meshed address is never demoted by a failed probe.
	if c.SetUnmeshed(a) {
		t.Error("SetUnmeshed(meshed a) = true; want false")
	}
	if got := c.Get(a); got != Meshed {
		t.Errorf("Get(a) after SetUnmeshed = %v; want still meshed", got)
	}
	// An unmeshed address that gains a proxy is promoted.
	c.SetMeshed(b)
	if got := c.Get(b); got != Meshed {
		t.Errorf("Get(b) after SetMeshed = %v; want meshed", got)
	}
	c.Forget(b)
	if got := c.Get(b); got != MeshUnknown {
		t.Errorf("Get(b) after Forget = %v; want unknown", got)
	}
}

func TestMeshCacheMappedAddressesAreOneKey(t *testing.T) {
	c, _ := newTestCache(0)
	c.SetMeshed(netip.MustParseAddr("::ffff:198.18.0.1"))
	if got := c.Get(a); got != Meshed {
		t.Errorf("Get(v4) after SetMeshed(v4-mapped v6) = %v; want meshed", got)
	}
}

func TestMeshCacheExpiry(t *testing.T) {
	c, clk := newTestCache(0)
	c.SetMeshed(a)
	c.SetUnmeshed(b)
	clk.add(29 * time.Second)
	if got := c.Get(b); got != Unmeshed {
		t.Errorf("unmeshed at 29s = %v; want unmeshed", got)
	}
	clk.add(time.Second)
	if got := c.Get(b); got != MeshUnknown {
		t.Errorf("unmeshed at 30s = %v; want unknown (expired)", got)
	}
	// Get does not refresh a meshed answer; SetMeshed does.
	clk.add(50 * time.Minute)
	if got := c.Get(a); got != Meshed {
		t.Errorf("meshed at 50m = %v; want meshed", got)
	}
	c.SetMeshed(a)
	clk.add(50 * time.Minute)
	if got := c.Get(a); got != Meshed {
		t.Errorf("meshed 50m after a refresh = %v; want meshed", got)
	}
	clk.add(10 * time.Minute)
	if got := c.Get(a); got != MeshUnknown {
		t.Errorf("meshed 60m after the last refresh = %v; want unknown (expired)", got)
	}
	// An expired meshed answer no longer blocks an unmeshed one.
	c.SetMeshed(a)
	clk.add(time.Hour)
	if !c.SetUnmeshed(a) {
		t.Error("SetUnmeshed after the meshed answer expired = false; want true")
	}
}

func TestMeshCacheBounded(t *testing.T) {
	c, _ := newTestCache(100)
	base := netip.MustParseAddr("198.18.0.0")
	ip := base
	for range 1000 {
		ip = ip.Next()
		c.SetUnmeshed(ip)
	}
	if n := c.Len(); n != 100 {
		t.Errorf("Len = %d; want 100 (the size bound)", n)
	}
	if got := c.Get(base.Next()); got != MeshUnknown {
		t.Errorf("oldest address = %v; want evicted (unknown)", got)
	}
	if got := c.Get(ip); got != Unmeshed {
		t.Errorf("newest address = %v; want unmeshed", got)
	}
}

func TestMeshCacheDefaults(t *testing.T) {
	c := NewMeshCache(MeshCacheConfig{})
	if c.meshedTTL != DefaultMeshedTTL || c.unmeshedTTL != DefaultUnmeshedTTL {
		t.Errorf("TTLs = %v/%v; want %v/%v", c.meshedTTL, c.unmeshedTTL, DefaultMeshedTTL, DefaultUnmeshedTTL)
	}
	c.SetMeshed(a)
	if got := c.Get(a); got != Meshed {
		t.Errorf("Get = %v; want meshed", got)
	}
}

func TestMeshCacheConcurrent(t *testing.T) {
	c, _ := newTestCache(64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := netip.AddrFrom4([4]byte{198, 18, byte(g), 0})
			for range 1000 {
				ip = ip.Next()
				c.SetMeshed(ip)
				c.SetUnmeshed(ip)
				c.Get(ip)
			}
		}()
	}
	wg.Wait()
	if n := c.Len(); n > 64 {
		t.Errorf("Len = %d; want at most 64", n)
	}
}
