package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

const (
	// maxBurst bounds the bytes one splice burst moves before the copy
	// counts them, so the counters of a stream that never pauses stay
	// live.
	maxBurst = 4 << 20
	// pipeSize is the capacity asked for each splice pipe (the most an
	// unprivileged process may set by default, fs.pipe-max-size).
	pipeSize = 1 << 20
	// maxIdlePipes bounds the pipes kept for reuse (a few busy streams
	// each way). Pipe memory counts against fs.pipe-user-pages-soft (64
	// MiB by default), shared by every process of the proxy's user: 16
	// MiB kept idle per process leaves room for the pipes in use and for
	// a second proxy.
	maxIdlePipes = 16
)

var (
	// errIdle ends a connection with no bytes in either direction for the
	// idle timeout.
	errIdle = errors.New("idle timeout")
	// errWriteStall ends a connection whose peer accepted no data for
	// about an idle timeout while the proxy had some to deliver.
	errWriteStall = errors.New("write stalled: peer not reading")
)

// halfState is the activity of one direction of a proxied connection,
// shared with the other direction's copier for the idle decision.
type halfState struct {
	last atomic.Int64 // unix nanoseconds when bytes were last counted
	done atomic.Bool  // the direction reached EOF
	// quiet is set when a read deadline fired with no bytes moved and
	// nothing counted for the idle timeout; cleared by the next bytes. A
	// direction in the middle of a chunk has uncounted bytes, so only a
	// zero-byte deadline may say it is idle.
	quiet atomic.Bool
}

// isQuiet reports whether the direction is confirmed idle or finished.
func (h *halfState) isQuiet() bool { return h.done.Load() || h.quiet.Load() }

// idleClock is the idle and write-stall bookkeeping of one direction of a
// copy, the same for the spliced (proxyCopy) and the buffered
// (bufferedCopy) copier. With idle > 0, a read deadline idle after the
// direction's last byte marks it quiet (readTimedOut), and the copy ends
// with errIdle when the other direction is quiet too, so one direction
// busy keeps the connection; the destination's write deadline is set
// idle ahead whenever bytes move (armWrite), so a write that makes no
// progress for about idle fails: errWriteStall. Deadlines are re-armed
// lazily (read: when one fires; write: at most every idle/8), so a busy
// stream pays few timer updates. Zero idle disables both checks.
type idleClock struct {
	idle        time.Duration
	self, other *halfState
	wdSet       time.Time // when the write deadline was last set
}

// start sets src's first read deadline, idle after the last byte.
func (c *idleClock) start(src net.Conn) error {
	if c.idle <= 0 {
		return nil
	}
	return src.SetReadDeadline(time.Unix(0, c.self.last.Load()).Add(c.idle))
}

// armWrite moves dst's write deadline to idle after now, unless it was
// moved less than idle/8 ago.
func (c *idleClock) armWrite(dst net.Conn, now time.Time) {
	if c.idle > 0 && now.Sub(c.wdSet) > c.idle/8 {
		dst.SetWriteDeadline(now.Add(c.idle))
		c.wdSet = now
	}
}

// moved records that bytes moved (were counted) at now.
func (c *idleClock) moved(now time.Time) {
	c.self.last.Store(now.UnixNano())
	c.self.quiet.Store(false)
}

// readTimedOut handles a read deadline of src that fired (idle > 0): the
// direction is quiet when nothing moved for idle; then errIdle if the
// other direction is quiet (or finished) and had no activity for idle
// either, else src's read deadline is set again (idle after the last
// byte, or idle/2 from now when already quiet).
func (c *idleClock) readTimedOut(src net.Conn) error {
	now := time.Now()
	next := time.Unix(0, c.self.last.Load()).Add(c.idle)
	if !now.Before(next) {
		c.self.quiet.Store(true)
		// The other direction must be quiet (or finished) for idle too: a
		// direction that just ended (its EOF counts as activity) leaves
		// the peer its idle time to answer, as after a request whose end
		// is the client's half-close.
		if c.other.isQuiet() && now.Sub(time.Unix(0, c.other.last.Load())) >= c.idle {
			return errIdle
		}
		next = now.Add(c.idle / 2)
	}
	return src.SetReadDeadline(next)
}

// finished records the direction's EOF: it is done, and the EOF counts as
// its last activity.
func (c *idleClock) finished() {
	c.self.last.Store(time.Now().UnixNano())
	c.self.done.Store(true)
}

// stalled maps a write that hit its deadline to errWriteStall.
func stalled(err error) error {
	if isTimeout(err) {
		return errWriteStall
	}
	return err
}

// proxyCopy moves bytes from src to dst until src reaches EOF (returns nil,
// leaving the half-close to the caller) or an error. It never wraps the
// conns, and an idle connection holds no pipe and no buffer. It has two
// modes per direction:
//
//   - messages (the start, and request/response traffic): each wake-up
//     reads what src has into a pooled buffer, taken only once bytes are
//     there (readCopy), and writes it: one read and one write per message,
//     where a splice takes two splices and a readiness peek;
//   - a stream: once a read fills the buffer, more is likely waiting and
//     the direction splices, through a pipe taken from a small pool for
//     each burst (everything src has, up to maxBurst, with non-blocking
//     splices), until a burst moves less than a buffer.
//
// Either counts the bytes as they are delivered.
//
// Idle and write-stall checks follow idle as idleClock says: a connection
// is closed between idle and about 1.5 times idle after its last byte,
// and a write that makes no progress for about idle ends the copy with
// errWriteStall. Zero idle disables both checks; the counters stay live.
// When no pipe can be made (out of files), the burst goes through a
// pooled buffer instead.
func proxyCopy(dst, src *net.TCPConn, self, other *halfState, idle time.Duration, count prometheus.Counter, total *atomic.Int64) error {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	out := newRawSock(dst)
	if out == nil {
		return net.ErrClosed
	}
	clock := idleClock{idle: idle, self: self, other: other}
	if err := clock.start(src); err != nil {
		return err
	}
	inq := enableInq(srcRC)
	var burst int64
	delivered := func(n int64) {
		burst += n
		count.Add(float64(n))
		total.Add(n)
		now := time.Now()
		clock.moved(now)
		// A burst may be megabytes: a reader that keeps taking them
		// is not stalled, however long it takes.
		clock.armWrite(dst, now)
	}
	arm := func() {
		if idle > 0 {
			clock.armWrite(dst, time.Now())
		}
	}
	stream := false
	for {
		burst = 0
		if stream {
			err = waitReadable(src)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = fmt.Errorf("%w: %w", errReadDeadline, err)
			}
			if err == nil {
				arm()
				err = spliceBurst(dstRC, srcRC, dst, src, delivered)
			}
			stream = burst >= bufSize
		} else {
			stream, err = readCopy(out, srcRC, inq, arm, delivered)
		}
		switch {
		case err == nil, err == errWouldBlock:
		case err == io.EOF:
			clock.finished()
			return nil
		case errors.Is(err, errReadDeadline) && idle > 0:
			if err := clock.readTimedOut(src); err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// readCopy waits until src has bytes, holding no buffer meanwhile, reads
// what it has (up to bufSize) into a pooled buffer, calls before, and
// writes the bytes to dst, reporting them to delivered. full says a read
// filled the buffer: src likely has more. A read deadline comes back
// wrapped in errReadDeadline, src's end as io.EOF.
//
// Messages are moved inside one wait on src (its RawConn read), as the
// HTTP fast path serves requests (h1Conn.readOnce): once a message is
// written and the read left nothing behind (inq: TCP_INQ is on for src,
// sysReadInq), the wait goes on without first trying a read, which
// would find nothing: the poller's readiness was reset only when the
// wait began. Nothing inside waits for anything but src: a message dst
// cannot take at once (writeNoWait) is finished outside, where the
// write may wait for room; so a Close of src from another goroutine,
// which waits for the callback to return, never waits for dst. Nor for
// src to stop sending: a Close is seen only by a wait (or a new read
// call), so after heldReads reads in a row without a wait (src always
// had more) readCopy returns, and the caller's next call starts afresh.
func readCopy(dst *rawSock, srcRC syscall.RawConn, inq bool, before func(), delivered func(int64)) (full bool, err error) {
	var (
		bp      *[]byte
		n, sent int
		rerr    syscall.Errno
		werr    error
		again   bool // heldReads reads without a wait: come back
	)
	err = srcRC.Read(func(fd uintptr) bool {
		for reads := 1; ; reads++ {
			if bp == nil {
				bp = bufPool.Get().(*[]byte)
			}
			sent, werr = 0, nil
			more := true
			if inq {
				n, more, rerr = sysReadInq(fd, *bp)
			} else {
				n, rerr = sysRead(fd, *bp)
			}
			if rerr == syscall.EAGAIN {
				// Nothing yet: wait without the buffer.
				bufPool.Put(bp)
				bp = nil
				return false
			}
			if rerr != 0 || n == 0 || n == len(*bp) {
				return true // an error, the end, or a full buffer: below
			}
			before()
			sent, werr = dst.writeNoWait((*bp)[:n])
			if sent > 0 {
				delivered(int64(sent))
			}
			if werr != nil {
				return true // the rest, or the error, below
			}
			if more {
				if reads < heldReads {
					continue
				}
				again = true
				return true
			}
			bufPool.Put(bp)
			bp = nil
			return false
		}
	})
	if bp != nil {
		defer bufPool.Put(bp)
	}
	switch {
	case err != nil:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: %w", errReadDeadline, err)
		}
		return false, err
	case rerr != 0:
		return false, os.NewSyscallError("read", rerr)
	case n == 0:
		return false, io.EOF
	case werr != nil && werr != errWouldBlock:
		return false, stalled(werr)
	case again:
		return false, nil // all written; src has more
	case werr == nil:
		before() // a full buffer, not yet written
	}
	m, werr := dst.Write((*bp)[sent:n])
	if m > 0 {
		delivered(int64(m))
	}
	if werr != nil {
		return false, stalled(werr)
	}
	return n == len(*bp), nil
}

// heldReads bounds the reads readCopy makes inside one wait on src
// without waiting in between. A Close of src from another goroutine
// (an abort) waits for the callback, and only a wait or a new call sees
// it: a source that always has more after a read (small segments in a
// flood, or any source without TCP_INQ while it keeps sending) would
// otherwise hold the Close, and the abort's later closes, for as long
// as it sends.
const heldReads = 32

// spliceBursts counts the bursts proxyCopy spliced (tests read it to tell
// the stream mode from the message mode).
var spliceBursts atomic.Int64

// errReadDeadline wraps a read deadline that fired, to tell it from a
// write deadline (both are os.ErrDeadlineExceeded).
var errReadDeadline = errors.New("read deadline")

// spliceBurst moves what src has, up to maxBurst, to dst through a pooled
// pipe: non-blocking splices from src until it has nothing left
// (errWouldBlock) or reaches EOF (io.EOF, after the bytes before it are
// delivered), each batch pumped into dst before the next (waiting for dst
// to take it, up to its write deadline). It reports the bytes delivered
// to delivered as they go, so a slow reader's counters stay live.
func spliceBurst(dstRC, srcRC syscall.RawConn, dst, src *net.TCPConn, delivered func(int64)) error {
	spliceBursts.Add(1)
	p, err := getPipe()
	if err != nil {
		return copyBurst(dst, src, delivered)
	}
	var moved int64
	defer func() { putPipe(p) }()
	for moved < maxBurst {
		var n int64
		var serr error
		err := srcRC.Read(func(fd uintptr) bool {
			for {
				n, serr = unix.Splice(int(fd), nil, p.w, nil, p.size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if serr != unix.EINTR {
					return true
				}
			}
		})
		switch {
		case err != nil:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = fmt.Errorf("%w: %w", errReadDeadline, err)
			}
			return err
		case serr == unix.EAGAIN:
			return errWouldBlock
		case serr != nil:
			return os.NewSyscallError("splice", serr)
		case n == 0:
			return io.EOF
		}
		p.inPipe = int(n)
		for p.inPipe > 0 {
			var m int64
			err := dstRC.Write(func(fd uintptr) bool {
				for {
					m, serr = unix.Splice(p.r, nil, int(fd), nil, p.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
					if serr != unix.EINTR {
						return serr != unix.EAGAIN
					}
				}
			})
			if err == nil && serr != nil {
				err = os.NewSyscallError("splice", serr)
			}
			if err != nil {
				return stalled(err)
			}
			p.inPipe -= int(m)
			moved += m
			delivered(m)
		}
	}
	return nil
}

// copyBurst is spliceBurst without a pipe: one read into a pooled buffer
// (what src has, up to bufSize) and one write.
func copyBurst(dst, src *net.TCPConn, delivered func(int64)) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	n, err := rawReadNoWait(rc, *bp)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w: %w", errReadDeadline, err)
	}
	if n > 0 {
		m, werr := dst.Write((*bp)[:n])
		if m > 0 {
			delivered(int64(m))
		}
		if werr != nil {
			return stalled(werr)
		}
	}
	return err
}

// pipe is a splice pipe: read and write ends, capacity, and the bytes in
// it (non-zero only while a burst runs or after it failed).
type pipe struct {
	r, w   int
	size   int
	inPipe int
	used   time.Time // when it was last put back
}

// idlePipes holds empty pipes for reuse, the most recently used last. A
// pipe unused for pipeIdleTimeout is closed (by a timer, not a
// goroutine), so a proxy that stopped moving bytes holds no pipe.
var idlePipes struct {
	sync.Mutex
	pipes []*pipe
	sweep *time.Timer // armed while pipes is not empty
}

// pipeIdleTimeout is how long an idle pipe is kept.
const pipeIdleTimeout = time.Second

// getPipe returns an empty pipe, asking for pipeSize capacity for a new
// one (the kernel may give less: past fs.pipe-user-pages-soft, shared by
// every process of the user, new pipes are small).
func getPipe() (*pipe, error) {
	idlePipes.Lock()
	if n := len(idlePipes.pipes); n > 0 {
		p := idlePipes.pipes[n-1]
		idlePipes.pipes[n-1] = nil
		idlePipes.pipes = idlePipes.pipes[:n-1]
		idlePipes.Unlock()
		return p, nil
	}
	idlePipes.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
	unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize) // best effort
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	if err != nil || size <= 0 {
		size = 64 << 10
	}
	p.size = size
	return p, nil
}

// putPipe keeps an empty pipe for reuse and closes one with bytes stuck
// in it (a failed burst), a small one (made while the user's pipe budget
// was spent; a later one may be full size), or when enough are kept.
func putPipe(p *pipe) {
	if p.inPipe == 0 && p.size >= pipeSize {
		idlePipes.Lock()
		if len(idlePipes.pipes) < maxIdlePipes {
			p.used = time.Now()
			idlePipes.pipes = append(idlePipes.pipes, p)
			if idlePipes.sweep == nil {
				idlePipes.sweep = time.AfterFunc(pipeIdleTimeout, sweepPipes)
			}
			idlePipes.Unlock()
			return
		}
		idlePipes.Unlock()
	}
	p.close()
}

// sweepPipes closes the pipes idle for pipeIdleTimeout, and comes back
// while some are left.
func sweepPipes() {
	idlePipes.Lock()
	defer idlePipes.Unlock()
	now := time.Now()
	n := 0
	for n < len(idlePipes.pipes) && now.Sub(idlePipes.pipes[n].used) >= pipeIdleTimeout {
		idlePipes.pipes[n].close()
		n++
	}
	idlePipes.pipes = append(idlePipes.pipes[:0], idlePipes.pipes[n:]...)
	clear(idlePipes.pipes[len(idlePipes.pipes):cap(idlePipes.pipes)])
	if len(idlePipes.pipes) == 0 {
		idlePipes.sweep = nil
		return
	}
	idlePipes.sweep.Reset(idlePipes.pipes[0].used.Add(pipeIdleTimeout).Sub(now))
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
