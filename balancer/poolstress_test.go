package balancer

import (
	"bufio"
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// flakyServer echoes lines and closes a quarter of its connections right
// after a reply.
func flakyServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil || rand.IntN(4) == 0 {
						return
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// TestPoolConcurrentChurn: many users Get, use, Put (sometimes twice),
// close or mark stale connections to peers that hang up at random, with
// endpoint eviction and the idle bound at work. No connection is ever
// held by two users at once, and the pool's books balance: the idle
// count matches its lists, stays within MaxIdle, and every watched idle
// socket is known to the watcher's map.
func TestPoolConcurrentChurn(t *testing.T) {
	addrs := []netip.AddrPort{flakyServer(t), flakyServer(t), flakyServer(t)}
	p := newTestPool(t, PoolConfig[net.Conn]{WatchClose: true, MaxIdle: 6, MaxIdlePerEndpoint: 4, MaxEndpoints: 2})
	var mu sync.Mutex
	inUse := map[net.Conn]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 5)
			for range 150 {
				pc, _, err := p.Get(context.Background(), addrs[rand.IntN(len(addrs))])
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if inUse[pc.Conn] {
					t.Error("a connection was handed to two users at once")
				}
				inUse[pc.Conn] = true
				mu.Unlock()
				pc.Conn.SetDeadline(time.Now().Add(2 * time.Second))
				_, werr := pc.Conn.Write([]byte("ping\n"))
				_, rerr := bufioReadFull(pc.Conn, buf)
				mu.Lock()
				delete(inUse, pc.Conn)
				mu.Unlock()
				switch {
				case werr != nil || rerr != nil:
					p.Stale(pc)
				case rand.IntN(10) == 0:
					pc.Conn.Close()
				case rand.IntN(10) == 0:
					p.Put(pc)
					p.Put(pc)
				default:
					p.Put(pc)
				}
			}
		}()
	}
	wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, k := range p.lru.Keys() {
		idle, _ := p.lru.Peek(k)
		n += len(*idle)
		for _, ic := range *idle {
			if ic.fd >= 0 && p.watched[ic.fd] != k {
				t.Errorf("idle socket %d of %v: watcher's map says %v", ic.fd, k, p.watched[ic.fd])
			}
		}
	}
	if n != p.idleN || p.idleN < 0 || p.idleN > 6 {
		t.Errorf("idle connections: %d in the lists, count %d; want equal, within [0, 6]", n, p.idleN)
	}
}
