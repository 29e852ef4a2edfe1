package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// rawSock does the reads and writes of one non-blocking socket as raw
// system calls, waiting for readiness through its RawConn (Go's network
// poller, with the socket's deadlines), instead of through net.Conn's
// Read and Write.
//
// The difference is the scheduler's bookkeeping around each call. Go's
// own socket I/O enters and leaves a "system call" state, in which the
// runtime's monitor may take the goroutine's processor away and wake
// another thread to run it when the call seems to last: more than 20 µs
// of wall time, which on a busy machine is any call whose thread the
// kernel preempted. A proxy on an oversubscribed box then trades
// processors between threads (futex wake-ups, context switches) on a
// fair share of its reads and writes. A read or write on a non-blocking
// socket never sleeps in the kernel, so nothing is gained by letting the
// processor go: a raw call keeps it.
//
// A read's and a write's state live in the rawSock (its callbacks are
// made once, so a read or write allocates nothing), set outside the
// RawConn's locks: one reader and one writer at a time may use it raw.
// net.Conn lets any number of goroutines read and write at once, so a
// read or write that finds another one of its kind in progress (rbusy,
// wbusy) goes through c's own Read or Write instead, which the socket's
// locks order with the raw one.
type rawSock struct {
	c  net.Conn // the socket itself (never a wrapper over this rawSock)
	rc syscall.RawConn

	rbusy, wbusy atomic.Bool // a raw read, a raw write in progress

	rp    []byte // the read in progress
	rn    int
	rerr  syscall.Errno
	wp    []byte // what is left of the write in progress
	wn    int
	werr  syscall.Errno
	rd    func(uintptr) bool
	wr    func(uintptr) bool
	rdNow func(uintptr) bool
	wrNow func(uintptr) bool

	// awaitAfter's write, its check, whether it ran, its error, and
	// its callback.
	aw      func() error
	awCheck bool
	awRan   bool
	awErr   error
	awaitf  func(uintptr) bool
}

// newRawSock returns the raw I/O of c, or nil when c has no socket.
func newRawSock(c net.Conn) *rawSock {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &rawSock{c: c, rc: rc}
	s.rd, s.wr, s.rdNow, s.wrNow, s.awaitf = s.readFD, s.writeFD, s.readFDNow, s.writeFDNow, s.awaitFD
	return s
}

// sysRead is read(2) without the scheduler's system call state. p may be
// empty (as for syscall.Read): the kernel then moves nothing.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if e != syscall.EINTR {
			if e != 0 {
				return 0, e
			}
			raceRead(p, int(r))
			return int(r), 0
		}
	}
}

// sysWrite is write(2) without the scheduler's system call state.
func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	raceWrite(p)
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if e != syscall.EINTR {
			if e != 0 {
				return 0, e
			}
			return int(r), 0
		}
	}
}

// sysPeek is a non-blocking recv(2) with MSG_PEEK, without the
// scheduler's system call state.
func sysPeek(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)),
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			if e != 0 {
				return 0, e
			}
			return int(r), 0
		}
	}
}

func (s *rawSock) readFD(fd uintptr) bool {
	s.rn, s.rerr = sysRead(fd, s.rp)
	return s.rerr != syscall.EAGAIN
}

// readFDNow is readFD that does not wait: EAGAIN is an answer.
func (s *rawSock) readFDNow(fd uintptr) bool {
	s.rn, s.rerr = sysRead(fd, s.rp)
	return true
}

func (s *rawSock) writeFD(fd uintptr) bool {
	for len(s.wp) > 0 {
		n, e := sysWrite(fd, s.wp)
		if e == syscall.EAGAIN {
			return false
		}
		if e != 0 {
			s.werr = e
			return true
		}
		s.wn += n
		s.wp = s.wp[n:]
	}
	return true
}

// writeFDNow is writeFD that does not wait: what the socket does not
// take now is left in wp.
func (s *rawSock) writeFDNow(fd uintptr) bool {
	s.writeFD(fd)
	return true
}

// Read reads into p as net.Conn's Read does: it waits for bytes up to
// the read deadline; io.EOF at the end of the stream.
func (s *rawSock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		// Nothing to read, as net.Conn's; but a closed connection
		// says so (its Read takes the socket's lock first).
		return 0, netOp(s.rc.Control(noControl), "read")
	}
	if !s.rbusy.CompareAndSwap(false, true) {
		return s.c.Read(p) // another reader is on the raw state
	}
	return s.read(p, s.rd)
}

// readNoWait is Read that does not wait: errWouldBlock when the socket
// has nothing.
func (s *rawSock) readNoWait(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !s.rbusy.CompareAndSwap(false, true) {
		return rawReadNoWait(s.rc, p) // another reader is on the raw state
	}
	return s.read(p, s.rdNow)
}

// read is one read into p through the callback fn (readFD, which waits,
// or readFDNow, whose EAGAIN comes back as errWouldBlock), by the reader
// that set rbusy, which it clears.
func (s *rawSock) read(p []byte, fn func(uintptr) bool) (int, error) {
	s.rp, s.rn, s.rerr = p, 0, 0
	err := s.rc.Read(fn)
	n, e := s.rn, s.rerr
	s.rp = nil
	s.rbusy.Store(false)
	switch {
	case err != nil:
		return 0, netOp(err, "read")
	case e == syscall.EAGAIN:
		return 0, errWouldBlock
	case e != 0:
		return 0, s.opError("read", e)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p as net.Conn's Write does, waiting while the
// socket's buffer is full, up to the write deadline; on an error it
// returns how much was written.
func (s *rawSock) Write(p []byte) (int, error) {
	if len(p) == 0 {
		// Nothing to write, as net.Conn's; but a closed connection
		// or a passed write deadline says so.
		return 0, netOp(s.rc.Write(writeNothing), "write")
	}
	if !s.wbusy.CompareAndSwap(false, true) {
		return s.c.Write(p) // another writer is on the raw state
	}
	return s.write(p, s.wr)
}

// write is one write of p through the callback fn (writeFD, which waits
// for room, or writeFDNow, which leaves what the socket did not take,
// errWouldBlock), by the writer that set wbusy, which it clears.
func (s *rawSock) write(p []byte, fn func(uintptr) bool) (int, error) {
	s.wp, s.wn, s.werr = p, 0, 0
	err := s.rc.Write(fn)
	n, e, left := s.wn, s.werr, len(s.wp)
	s.wp = nil
	s.wbusy.Store(false)
	switch {
	case err != nil:
		return n, netOp(err, "write")
	case e != 0:
		return n, s.opError("write", e)
	case left > 0:
		return n, errWouldBlock
	}
	return n, nil
}

// awaitAfter runs write, which sends a request on this socket (through
// whatever layers sit above it: TLS), and then waits until the socket is
// readable, up to its read deadline, without reading: the caller's next
// Read finds the reply there.
//
// Read alone would first try a read(2), which finds nothing this soon
// after the request (EAGAIN), then wait, then read: a system call per
// reply for nothing. The poller forgets what readiness it saw before a
// wait starts, and a wait is only safe when a read follows that reset;
// here the reset comes before the request is written, so the reply,
// which cannot come before its request, is seen. What was waiting
// before the write is not: an end of stream (FIN) that came before the
// reset goes unseen until something else comes. A peer that closed for
// good answers the request with a reset, which ends the wait; one that
// only half-closed (it still reads: a lingering close, RFC 9112 section
// 9.6) answers nothing, and the wait lasts to the read deadline, where
// Read alone would have found the end of stream at once. So, with
// check, the socket is first peeked inside the wait (the one system
// call the caller's check before reuse costs anyway, with no window
// between it and the reset): when it is not quiet (bytes, an end of
// stream, an error wait) nothing is written and the error is
// errNotQuiet. Without check, this is for a socket whose peer sends
// nothing unasked and closes for good (an upstream connection between
// its requests, checked by other means) and whose reads are not
// buffered above it. A wait that ends in an error (a deadline, a close)
// is left for the next Read to find again. One caller at a time.
func (s *rawSock) awaitAfter(write func() error, check bool) error {
	s.aw, s.awCheck, s.awRan, s.awErr = write, check, false, nil
	s.rc.Read(s.awaitf)
	ran, err := s.awRan, s.awErr
	s.aw, s.awErr = nil, nil
	if !ran {
		// The socket refused the wait before the write (closed, or
		// its read deadline passed): write as without one.
		return write()
	}
	return err
}

// errNotQuiet is awaitAfter's error when its check found the socket not
// quiet: nothing was written.
var errNotQuiet = errors.New("the kept connection was closed by its peer, or has bytes nobody asked for")

// awaitFD is awaitAfter's RawConn callback: the check and the write, the
// first time (false: now wait), then done.
func (s *rawSock) awaitFD(fd uintptr) bool {
	if s.awRan {
		return true
	}
	s.awRan = true
	if s.awCheck {
		var b [1]byte
		if _, e := sysPeek(fd, b[:]); e != syscall.EAGAIN {
			s.awErr = errNotQuiet
			return true
		}
	}
	s.awErr = s.aw()
	return s.awErr != nil
}

// writeNoWait writes what of p the socket takes now, without waiting
// for room: the count, and errWouldBlock when that is not all of p (or
// another writer is on the raw state: nothing written). A write
// deadline already passed and a closed socket are errors as for Write.
// It waits for nothing only when it is the socket's one writer: a
// concurrent Write through c (not raw: another raw one makes this
// return errWouldBlock) holds the socket's write lock while it waits
// for room, and this would wait for that lock.
func (s *rawSock) writeNoWait(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !s.wbusy.CompareAndSwap(false, true) {
		return 0, errWouldBlock
	}
	return s.write(p, s.wrNow)
}

// noControl and writeNothing are the RawConn callbacks of an empty read
// and write: they only take the socket's checks.
func noControl(uintptr)         {}
func writeNothing(uintptr) bool { return true }

// opError is the error net.Conn would return for errno e.
func (s *rawSock) opError(op string, e syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: os.NewSyscallError(op, e)}
}

// netOp names the operation of err, the RawConn's error for a read or
// write (a deadline, a closed socket: a *net.OpError of its own, made
// for this call, whose Op is "raw-read", "raw-write" or "raw-control"),
// as net.Conn's Read and Write do: "read", "write".
func netOp(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}

// rawTCPConn is a TCP connection whose Read and Write are raw (rawSock);
// everything else is its *net.TCPConn's.
type rawTCPConn struct {
	*net.TCPConn
	s *rawSock

	h1dl upDeadlines // the HTTP fast path's, when pooled (h1Conn.dlCache)
}

// newRawTCPConn wraps c, or returns c itself when it is not a TCP socket.
func newRawTCPConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	s := newRawSock(tc)
	if s == nil {
		return c
	}
	return &rawTCPConn{TCPConn: tc, s: s}
}

// Read reads with a raw read(2).
func (c *rawTCPConn) Read(p []byte) (int, error) { return c.s.Read(p) }

// Write writes with raw write(2)s.
func (c *rawTCPConn) Write(p []byte) (int, error) { return c.s.Write(p) }
