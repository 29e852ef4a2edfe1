package balancer

import (
	"net/netip"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// MeshCache defaults.
const (
	// DefaultMeshCacheSize bounds how many addresses are remembered.
	DefaultMeshCacheSize = 10_000
	// DefaultMeshedTTL is how long an address stays known as meshed after
	// its last successful mesh connection.
	DefaultMeshedTTL = time.Hour
	// DefaultUnmeshedTTL is how long an address stays known as unmeshed
	// after a probe found nothing on its mesh port.
	DefaultUnmeshedTTL = 30 * time.Second
)

// MeshState is what is known about whether an address runs a mesh proxy.
type MeshState int

const (
	// MeshUnknown: never probed, or the answer expired. Probe it.
	MeshUnknown MeshState = iota
	// Meshed: a mesh handshake with this address succeeded recently.
	// Connections to it must use mutual TLS; a failure is an error, never
	// a reason to fall back to plaintext.
	Meshed
	// Unmeshed: nothing answered on the address's mesh port recently.
	Unmeshed
)

// String returns "unknown", "meshed" or "unmeshed".
func (s MeshState) String() string {
	switch s {
	case Meshed:
		return "meshed"
	case Unmeshed:
		return "unmeshed"
	}
	return "unknown"
}

// MeshCacheConfig tunes a MeshCache. The zero value works.
type MeshCacheConfig struct {
	// Size bounds the number of addresses remembered (least recently used
	// go first). Zero or negative means DefaultMeshCacheSize.
	Size int
	// MeshedTTL: zero or negative means DefaultMeshedTTL.
	MeshedTTL time.Duration
	// UnmeshedTTL: zero or negative means DefaultUnmeshedTTL.
	UnmeshedTTL time.Duration
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// meshEntry is one remembered answer.
type meshEntry struct {
	state   MeshState
	expires time.Time
}

// MeshCache remembers, per IP address, whether it runs a mesh proxy, so
// the proxy probes an address's mesh port once instead of on every
// connection. It is bounded in size (LRU) and entries expire: meshed
// answers after MeshedTTL without a successful connection (each
// SetMeshed refreshes it), unmeshed answers after UnmeshedTTL, so a pod
// that gains a proxy is meshed within that time. Expiry is checked
// lazily on Get, so a MeshCache starts no goroutine and needs no Close.
// It is safe for concurrent use.
//
// (hashicorp's expirable LRU was not used: it holds one TTL for all
// entries and starts a cleanup goroutine that can never be stopped.)
type MeshCache struct {
	meshedTTL, unmeshedTTL time.Duration
	now                    func() time.Time

	// mu makes Set's read-modify-write atomic; the LRU locks itself too.
	mu  sync.Mutex
	lru *lru.Cache[netip.Addr, meshEntry]
}

// NewMeshCache returns an empty cache.
func NewMeshCache(cfg MeshCacheConfig) *MeshCache {
	if cfg.Size <= 0 {
		cfg.Size = DefaultMeshCacheSize
	}
	if cfg.MeshedTTL <= 0 {
		cfg.MeshedTTL = DefaultMeshedTTL
	}
	if cfg.UnmeshedTTL <= 0 {
		cfg.UnmeshedTTL = DefaultUnmeshedTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c, err := lru.New[netip.Addr, meshEntry](cfg.Size)
	if err != nil {
		panic("balancer: lru.New with a positive size failed: " + err.Error())
	}
	return &MeshCache{meshedTTL: cfg.MeshedTTL, unmeshedTTL: cfg.UnmeshedTTL, now: cfg.Now, lru: c}
}

// key normalizes an address: IPv4-mapped IPv6 is the IPv4 address, and
// zones are dropped.
func key(ip netip.Addr) netip.Addr { return ip.Unmap().WithZone("") }

// Get returns what is known about ip. An expired answer is forgotten and
// reported as MeshUnknown. Get does not extend a meshed answer; only a
// successful connection (SetMeshed) does, so an address whose proxy went
// away is eventually probed again.
func (c *MeshCache) Get(ip netip.Addr) MeshState {
	k := key(ip)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(k)
	if !ok {
		return MeshUnknown
	}
	if !c.now().Before(e.expires) {
		c.lru.Remove(k)
		return MeshUnknown
	}
	return e.state
}

// SetMeshed records a successful mesh connection to ip, (re)starting its
// MeshedTTL.
func (c *MeshCache) SetMeshed(ip netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Add(key(ip), meshEntry{state: Meshed, expires: c.now().Add(c.meshedTTL)})
}

// SetUnmeshed records that nothing answered on ip's mesh port. It does
// nothing when ip is currently known as meshed: a meshed endpoint whose
// mesh port stops answering (its proxy restarting) must keep failing
// closed until the meshed answer expires, never turn to plaintext. It
// reports whether the answer was recorded.
func (c *MeshCache) SetUnmeshed(ip netip.Addr) bool {
	k := key(ip)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if e, ok := c.lru.Peek(k); ok && e.state == Meshed && now.Before(e.expires) {
		return false
	}
	c.lru.Add(k, meshEntry{state: Unmeshed, expires: now.Add(c.unmeshedTTL)})
	return true
}

// Forget drops whatever is known about ip.
func (c *MeshCache) Forget(ip netip.Addr) { c.lru.Remove(key(ip)) }

// Len returns the number of remembered addresses, expired ones included
// until they are next looked up or pushed out.
func (c *MeshCache) Len() int { return c.lru.Len() }
