package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// copyChunk is how many bytes one io.CopyN moves before the loop
	// updates counters and deadlines. io.CopyN wraps src in an
	// io.LimitedReader, which (*net.TCPConn).ReadFrom still splices
	// (net/splice_linux.go unwraps it), and 1 MiB matches the pipe size
	// the runtime's splice uses.
	copyChunk = 1 << 20
	// statsInterval bounds how long bytes of a slow stream may sit
	// uncounted: each chunk's read deadline is at most this far away, and
	// a deadline that fires mid-chunk reports the bytes moved so far.
	statsInterval = 5 * time.Second
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

// proxyCopy moves bytes from src to dst until src reaches EOF (returns nil,
// leaving the half-close to the caller) or an error. It never wraps the
// conns, so the kernel splices. Each chunk sets a read deadline on src so
// counters stay live and idleness is noticed. Bytes are counted when a
// chunk ends or its deadline fires, so a direction is known idle only when
// a deadline fires with nothing moved and nothing counted for idle; the
// connection closes when both directions are known idle (or finished), so
// one busy one way is never cut. A connection is thus closed between idle
// and about twice idle after its last byte. A write deadline one idle
// timeout past the read deadline catches a peer that stops reading. Zero
// idle disables both checks; the counters stay live.
func proxyCopy(dst, src *net.TCPConn, self, other *halfState, idle time.Duration, count prometheus.Counter, total *atomic.Int64) error {
	for {
		now := time.Now()
		rd := now.Add(statsInterval)
		var wd time.Time
		if idle > 0 {
			if d := time.Unix(0, self.last.Load()).Add(idle); d.After(now) && d.Before(rd) {
				rd = d
			}
			// Past the read deadline, so a read that waited its whole
			// time still leaves the write a full idle timeout.
			wd = rd.Add(idle)
		}
		if err := src.SetReadDeadline(rd); err != nil {
			return err
		}
		if err := dst.SetWriteDeadline(wd); err != nil {
			return err
		}
		n, err := io.CopyN(dst, src, copyChunk)
		if n > 0 {
			count.Add(float64(n))
			total.Add(n)
			self.last.Store(time.Now().UnixNano())
			self.quiet.Store(false)
		}
		switch {
		case err == nil:
		case err == io.EOF:
			self.done.Store(true)
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			now := time.Now()
			if !wd.IsZero() && !now.Before(wd) {
				return errWriteStall
			}
			if idle > 0 && n == 0 && now.Sub(time.Unix(0, self.last.Load())) >= idle {
				self.quiet.Store(true)
				if other.isQuiet() {
					return errIdle
				}
			}
		default:
			return err
		}
	}
}
