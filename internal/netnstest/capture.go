package netnstest

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
)

// Capture records the frames crossing one interface of a pod, like a
// packet capture, so a test can check what travelled on the wire.
type Capture struct {
	fd     int
	max    int
	mu     sync.Mutex
	frames [][]byte
	size   int
	done   chan struct{}
	stopFn func()
}

// Capture starts recording every frame on interface ifname of the pod,
// up to maxBytes in all (later frames are dropped). It stops when the test
// ends, or on Stop.
func (p *Pod) Capture(t testing.TB, ifname string, maxBytes int) *Capture {
	t.Helper()
	var fd int
	err := p.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := htons(syscall.ETH_P_ALL)
		fd, err = syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			syscall.Close(fd)
			return fmt.Errorf("binding to %s: %w", ifname, err)
		}
		// A receive timeout lets the reader notice Stop.
		tv := syscall.Timeval{Usec: 100_000}
		if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
			syscall.Close(fd)
			return err
		}
		return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<20)
	})
	if err != nil {
		t.Fatalf("netnstest: capture on %s in %s: %v", ifname, p.Name, err)
	}
	c := &Capture{fd: fd, max: maxBytes, done: make(chan struct{})}
	stop := make(chan struct{})
	go c.read(stop)
	var once sync.Once
	c.stopFn = func() {
		once.Do(func() {
			close(stop)
			<-c.done
			syscall.Close(fd)
		})
	}
	t.Cleanup(c.Stop)
	return c
}

func (c *Capture) read(stop <-chan struct{}) {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, _, err := syscall.Recvfrom(c.fd, buf, 0)
		if err != nil {
			continue // timeout or interrupted: check stop again
		}
		c.mu.Lock()
		if c.size+n <= c.max {
			c.frames = append(c.frames, bytes.Clone(buf[:n]))
			c.size += n
		}
		c.mu.Unlock()
	}
}

// Stop ends the capture; safe to call more than once.
func (c *Capture) Stop() { c.stopFn() }

// Contains reports whether any captured frame contains b.
func (c *Capture) Contains(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if bytes.Contains(f, b) {
			return true
		}
	}
	return false
}

// Bytes returns how many bytes of frames were captured.
func (c *Capture) Bytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
