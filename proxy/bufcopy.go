package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

// copyBufSize is the buffer of one burst of a buffered copy: up to this
// many bytes are read (several reads when the source is TLS, one record
// each) before they are written, as one write (TLS: the records of one
// Write gathered by a batchConn).
const copyBufSize = 128 << 10

// copyPool holds copyBufSize buffers. A direction takes one only while
// bytes are waiting, so idle connections hold none.
var copyPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// forwardBuffered copies both ways between the client side a and the
// upstream b, where at least one is TLS, until both directions end, then
// closes both. Half-close travels (CloseWrite). Idle and write-stall
// checks follow Config.IdleTimeout as in forward.
func (s *Server) forwardBuffered(k *conn, a, b halfCloser) error {
	a.SetDeadline(time.Time{})
	b.SetDeadline(time.Time{})
	idle := s.cfg.idleTimeout()
	ea, eb := newCopyEnd(a), newCopyEnd(b)
	return k.pump(a, b,
		func(self, other *halfState) error {
			return bufferedCopy(eb, ea, self, other, idle, k.m.readBytes, &k.bytesIn)
		},
		func(self, other *halfState) error {
			return bufferedCopy(ea, eb, self, other, idle, k.m.writeBytes, &k.bytesOut)
		})
}

// copyEnd is one side of a buffered copy: the conn bytes are read from
// and written to (a *tls.Conn or a *net.TCPConn), and, when it sits on a
// socket this package made, the socket and the batchConn under the TLS.
type copyEnd struct {
	c     halfCloser
	sock  *net.TCPConn // the socket under c (c itself for TCP); nil: unknown
	batch *batchConn   // under a *tls.Conn made with newBatchConn
	raw   *rawSock     // sock's raw I/O (under TLS, the batchConn's)
}

func newCopyEnd(c halfCloser) copyEnd {
	e := copyEnd{c: c}
	switch v := c.(type) {
	case *net.TCPConn:
		e.sock, e.raw = v, newRawSock(v)
	case *tls.Conn:
		if bc, ok := v.NetConn().(*batchConn); ok {
			e.batch, e.sock, e.raw = bc, bc.TCPConn, bc.s
		}
	}
	if e.raw == nil {
		e.sock = nil // no socket to be had (closed): the slow path
	}
	return e
}

// fast reports whether reads can drain without waiting (readNoWait).
func (e copyEnd) fast() bool {
	_, isTLS := e.c.(*tls.Conn)
	return e.sock != nil && (!isTLS || e.batch != nil)
}

// readNoWait reads what is there without waiting for more: it returns
// errWouldBlock when nothing is. Only for a fast end.
func (e copyEnd) readNoWait(p []byte) (int, error) {
	if e.batch != nil {
		return e.batch.readTLSNoWait(e.c, p)
	}
	return e.raw.readNoWait(p)
}

// write writes p to the end as one write where it can: the TLS records
// of p are gathered and written together.
func (e copyEnd) write(p []byte) (int, error) {
	if e.batch == nil {
		if e.sock != nil {
			return e.raw.Write(p)
		}
		return e.c.Write(p)
	}
	e.batch.startBatch()
	n, err := e.c.Write(p)
	if ferr := e.batch.flush(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}

// bufferedCopy moves bytes from src to dst until src reaches EOF (returns
// nil; the caller half-closes) or an error. Bytes are counted as they
// move. Idle and write-stall checks follow idle as idleClock says, as in
// proxyCopy.
//
// When both ends are sockets of this package (fast), the copy waits for
// bytes without a buffer, then takes a pooled copyBufSize one and reads
// without waiting until it is full or nothing is left (for TLS: every
// record already there), and writes that burst at once: few syscalls per
// byte, and no buffer held by an idle connection.
func bufferedCopy(dst, src copyEnd, self, other *halfState, idle time.Duration, count prometheus.Counter, total *atomic.Int64) error {
	fast := src.fast()
	var (
		bp  *[]byte
		buf []byte
	)
	if !fast {
		bp = bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		buf = *bp
	} else {
		// Start by draining without waiting: the TLS layer may already
		// hold records (read with the handshake or the transport
		// header) that the socket will never signal again.
		bp = copyPool.Get().(*[]byte)
	}
	defer func() {
		if fast && bp != nil {
			copyPool.Put(bp)
		}
	}()
	clock := idleClock{idle: idle, self: self, other: other}
	if err := clock.start(src.c); err != nil {
		return err
	}
	for {
		var n int
		var err error
		if fast {
			n, err = fillBurst(src, &bp)
			if bp != nil {
				buf = *bp
			}
		} else {
			n, err = src.c.Read(buf)
		}
		if n > 0 {
			now := time.Now()
			clock.armWrite(dst.c, now)
			w, werr := dst.write(buf[:n])
			count.Add(float64(w))
			total.Add(int64(w))
			clock.moved(now)
			if werr != nil {
				return stalled(werr)
			}
		}
		if fast && bp != nil && err != nil {
			copyPool.Put(bp) // drained: an idle direction holds no buffer
			bp = nil
		}
		switch {
		case err == nil, err == errWouldBlock:
		case err == io.EOF:
			clock.finished()
			return nil
		case idle > 0 && errors.Is(err, os.ErrDeadlineExceeded):
			if err := clock.readTimedOut(src.c); err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// fillBurst reads one burst from src into a pooled buffer: when *bp is
// nil (the last burst drained src) it first waits for src to be readable,
// without a buffer, then takes one. It reads without waiting until the
// buffer is full (returns nil: more may be there) or src has nothing left
// (returns errWouldBlock, or src's EOF or error with the bytes before it).
func fillBurst(src copyEnd, bp **[]byte) (int, error) {
	if *bp == nil {
		if err := waitReadable(src.sock); err != nil {
			return 0, err
		}
		*bp = copyPool.Get().(*[]byte)
	}
	buf := **bp
	n := 0
	for n < len(buf) {
		m, err := src.readNoWait(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// errWouldBlock is what a no-wait read returns when nothing is there. It
// is a temporary net.Error, so a tls.Conn keeps working after it.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "no bytes waiting" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// rawReadNoWait is one read(2) on rc that does not wait: errWouldBlock
// when nothing is there, io.EOF at end of stream.
func rawReadNoWait(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var rerr syscall.Errno
	err := rc.Read(func(fd uintptr) bool {
		n, rerr = sysRead(fd, p)
		return true
	})
	switch {
	case err != nil:
		return 0, err
	case rerr == syscall.EAGAIN:
		return 0, errWouldBlock
	case rerr != 0:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// batchConn is the socket under a mesh tls.Conn. It gathers the TLS
// records of one Write (startBatch .. flush) into one write(2), instead
// of one per 16 KiB record, and can make the TLS layer's reads not wait
// (noWait, for draining every record already received). Writes outside a
// batch (alerts, key updates from the reading side) go straight through,
// in order with the batches.
type batchConn struct {
	*net.TCPConn
	s *rawSock // the socket's reads and writes

	noWait atomic.Bool
	// In no-wait mode a read takes everything the socket has (up to
	// copyBufSize) into rbuf, and the TLS layer's record-sized reads are
	// served from it: one read(2) per burst, not per record. rbuf is held
	// only while it has bytes. Reads come from one goroutine at a time
	// (the tls.Conn's input lock).
	rbuf       *[]byte
	rpos, rend int

	mu       sync.Mutex // orders batches and direct writes
	batching bool
	bp       *[]byte

	h1dl upDeadlines // the HTTP fast path's (h1Conn.dlCache)

	// held is set while the goroutine reading through the TLS layer
	// holds the socket's RawConn read callback (h1Conn.readOnceTLS):
	// Read then reads the socket directly, fd held-1 (held > 0), or not
	// at all (held < 0), and answers errWouldBlock instead of waiting,
	// as a wait there would need the read lock the callback holds.
	// drained says such a read found the socket empty (EAGAIN) or left
	// nothing in it (with inq, TCP_INQ on: sysReadInq; a short read
	// alone may have taken an end of stream the poller does not signal
	// again); the callback clears it. All three belong to that
	// goroutine.
	held    int
	drained bool
	inq     bool
}

// readTLSNoWait reads from tc, the TLS layer over b, what the records
// already received hold, without waiting for more: errWouldBlock (a
// temporary error, which the TLS layer does not keep) when there is
// nothing.
func (b *batchConn) readTLSNoWait(tc net.Conn, p []byte) (int, error) {
	b.noWait.Store(true)
	defer b.noWait.Store(false)
	return tc.Read(p)
}

// newBatchConn wraps c for tls.Client/tls.Server.
func newBatchConn(c *net.TCPConn) net.Conn {
	s := newRawSock(c)
	if s == nil {
		return c // a closed socket; TLS fails on it anyway
	}
	return &batchConn{TCPConn: c, s: s}
}

// Read returns bytes read ahead first, then reads from the socket; in
// no-wait mode it reads ahead what the socket has and returns
// errWouldBlock instead of waiting when it has nothing.
func (b *batchConn) Read(p []byte) (int, error) {
	if b.rbuf == nil {
		if b.held != 0 {
			return b.heldRead(p)
		}
		if !b.noWait.Load() {
			return b.s.Read(p)
		}
		if len(p) >= copyBufSize {
			return b.s.readNoWait(p)
		}
		bp := copyPool.Get().(*[]byte)
		n, err := b.s.readNoWait(*bp)
		if n == 0 {
			copyPool.Put(bp)
			return 0, err
		}
		b.rbuf, b.rpos, b.rend = bp, 0, n
	}
	n := copy(p, (*b.rbuf)[b.rpos:b.rend])
	b.rpos += n
	if b.rpos == b.rend {
		copyPool.Put(b.rbuf)
		b.rbuf = nil
	}
	return n, nil
}

// heldRead is Read while held: one read(2) on the socket, or none.
func (b *batchConn) heldRead(p []byte) (int, error) {
	if b.held < 0 {
		return 0, errWouldBlock
	}
	var n int
	var e syscall.Errno
	more := true
	if b.inq {
		n, more, e = sysReadInq(uintptr(b.held-1), p)
	} else {
		n, e = sysRead(uintptr(b.held-1), p)
	}
	switch {
	case e == syscall.EAGAIN:
		b.drained = true
		return 0, errWouldBlock
	case e != 0:
		return 0, b.s.opError("read", e)
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	b.drained = !more
	return n, nil
}

// Write appends p to the batch when one is open, else writes it.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batching {
		*b.bp = append(*b.bp, p...)
		return len(p), nil
	}
	return b.s.Write(p)
}

// startBatch opens a batch: writes are gathered until flush.
func (b *batchConn) startBatch() {
	b.mu.Lock()
	b.batching = true
	if b.bp == nil {
		b.bp = batchPool.Get().(*[]byte)
	}
	b.mu.Unlock()
}

// flush writes the gathered bytes in one write and closes the batch.
func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	if b.bp == nil {
		return nil
	}
	var err error
	if len(*b.bp) > 0 {
		_, err = b.s.Write(*b.bp)
	}
	*b.bp = (*b.bp)[:0]
	batchPool.Put(b.bp)
	b.bp = nil
	return err
}

// batchPool holds batch buffers: a copyBufSize burst sealed into TLS
// records (a 22-byte overhead per 16 KiB record).
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, copyBufSize+4<<10); return &b }}

// waitReadable waits until c has bytes to read (or EOF, or an error), up
// to its read deadline, without consuming any: it peeks one byte.
func waitReadable(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var b [1]byte
	var perr syscall.Errno
	err = rc.Read(func(fd uintptr) bool {
		_, perr = sysPeek(fd, b[:])
		return perr != syscall.EAGAIN
	})
	if err != nil {
		return err
	}
	if perr != 0 {
		return perr
	}
	return nil
}
