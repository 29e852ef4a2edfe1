package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// bufSize is the copy buffer for connections the kernel cannot splice
// (one side is TLS): two maximum-size TLS records.
const bufSize = 32 << 10

// bufPool holds copy buffers, shared by every buffered copier.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// halfCloser is a conn whose write side can be closed alone: *net.TCPConn
// (FIN) and *tls.Conn (close_notify).
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// forwardBuffered copies both ways between the client side a and the
// upstream b, where at least one is TLS, until both directions end, then
// closes both. Half-close travels (CloseWrite). Idle and write-stall
// checks follow Config.IdleTimeout as in forward.
func (s *Server) forwardBuffered(k *conn, a, b halfCloser) error {
	a.SetDeadline(time.Time{})
	b.SetDeadline(time.Time{})
	idle := s.cfg.idleTimeout()
	return k.pump(a, b,
		func(self, other *halfState) error {
			return bufferedCopy(b, a, self, other, idle, k.m.readBytes, &k.bytesIn)
		},
		func(self, other *halfState) error {
			return bufferedCopy(a, b, self, other, idle, k.m.writeBytes, &k.bytesOut)
		})
}

// bufferedCopy moves bytes from src to dst through a pooled buffer until
// src reaches EOF (returns nil; the caller half-closes) or an error.
// Bytes are counted as they move. With idle > 0, a read deadline idle
// after the last byte marks the direction quiet, and the copy ends with
// errIdle when the other direction is quiet too; a write that makes no
// progress for about idle ends it with errWriteStall. Deadlines are
// re-armed lazily (read: when one fires; write: at most every idle/8), so
// a busy stream pays few timer updates.
func bufferedCopy(dst, src net.Conn, self, other *halfState, idle time.Duration, count prometheus.Counter, total *atomic.Int64) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var wdSet time.Time
	if idle > 0 {
		if err := src.SetReadDeadline(time.Unix(0, self.last.Load()).Add(idle)); err != nil {
			return err
		}
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			now := time.Now()
			if idle > 0 && now.Sub(wdSet) > idle/8 {
				dst.SetWriteDeadline(now.Add(idle))
				wdSet = now
			}
			_, werr := dst.Write(buf[:n])
			count.Add(float64(n))
			total.Add(int64(n))
			self.last.Store(now.UnixNano())
			self.quiet.Store(false)
			if werr != nil {
				if isTimeout(werr) {
					return errWriteStall
				}
				return werr
			}
		}
		switch {
		case err == nil:
		case err == io.EOF:
			self.done.Store(true)
			return nil
		case idle > 0 && errors.Is(err, os.ErrDeadlineExceeded):
			now := time.Now()
			last := time.Unix(0, self.last.Load())
			next := last.Add(idle)
			if !now.Before(next) {
				self.quiet.Store(true)
				if other.isQuiet() {
					return errIdle
				}
				next = now.Add(idle / 2)
			}
			if err := src.SetReadDeadline(next); err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// waitReadable waits until c has bytes to read (or EOF, or an error), up
// to its read deadline, without consuming any: it peeks one byte.
func waitReadable(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var b [1]byte
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, perr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return perr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return perr
}
