// Package listener provides transparent TCP listeners for the proxy: it
// accepts connections steered to it by the interception rules, recovers each
// connection's original destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST
// under REDIRECT, the local address of an IP_TRANSPARENT socket under
// TPROXY), refuses connections that would loop back into the proxy, and
// backs off on temporary accept errors such as running out of file
// descriptors.
//
// It knows nothing of what happens to a connection after Accept.
package listener

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mode says how the interception rules deliver connections, and therefore
// how the original destination is recovered.
type Mode string

const (
	// ModeRedirect: nftables REDIRECT (DNAT to the listener); the original
	// destination is read from conntrack.
	ModeRedirect Mode = "redirect"
	// ModeTProxy: nftables TPROXY delivers the unmodified connection to an
	// IP_TRANSPARENT socket; the original destination is its local address.
	ModeTProxy Mode = "tproxy"
)

// Accept backoff bounds for temporary errors, as in net/http's Server.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
	// logEvery rate-limits the accept error log line.
	logEvery = time.Second
)

// Config describes one transparent listener.
type Config struct {
	// Name identifies the listener in logs ("outbound", "inbound").
	Name string
	// Network is "tcp4" or "tcp6". A tcp6 listener is IPv6-only, so a v4
	// and a v6 listener can share a port.
	Network string
	// Addr is the address to bind, e.g. "127.0.0.1:4140" or "[::]:4143".
	// Port 0 picks a free port (see Listener.Addr).
	Addr string
	// Mode is ModeRedirect or ModeTProxy; anything else is an error.
	Mode Mode
	// Logger receives warnings and debug lines; nil discards them.
	Logger *slog.Logger
	// AllowSelf turns the loop guard off: a connection whose original
	// destination is this listener's own port is accepted instead of
	// refused. Set it on the inbound listener, whose port is also the mesh
	// port that peer proxies dial; leave it false (the default) everywhere
	// else.
	AllowSelf bool
}

// Stats is a snapshot of a listener's counters.
type Stats struct {
	// Accepted counts connections returned by Accept.
	Accepted uint64
	// LoopsRefused counts connections closed because their original
	// destination was the listener itself.
	LoopsRefused uint64
	// NoOriginalDst counts connections closed because their original
	// destination could not be recovered.
	NoOriginalDst uint64
	// AcceptErrors counts temporary accept errors that were retried.
	AcceptErrors uint64
}

// Conn is an accepted connection with its recovered original destination.
// The embedded *net.TCPConn is the raw kernel socket (never wrapped), so
// io.Copy between two of them can splice.
type Conn struct {
	*net.TCPConn
	// OriginalDst is where the client meant to connect.
	OriginalDst netip.AddrPort
}

// Listener is a transparent listener. Accept and Close may be called from
// different goroutines.
type Listener struct {
	cfg  Config
	log  *slog.Logger
	ln   *net.TCPListener
	addr netip.AddrPort

	// accept is ln.AcceptTCP; tests replace it to inject errors.
	accept func() (*net.TCPConn, error)
	// sleep waits d or until the listener is closed; tests may count it.
	sleep func(d time.Duration)

	closeOnce sync.Once
	closeErr  error
	done      chan struct{}

	accepted, loops, noDst, acceptErrs atomic.Uint64

	logMu      sync.Mutex
	lastLog    time.Time
	suppressed int
}

// Listen binds a transparent listener. In ModeTProxy the socket gets
// IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT (IPv6) before bind, which needs
// CAP_NET_ADMIN.
func Listen(cfg Config) (*Listener, error) {
	if cfg.Network != "tcp4" && cfg.Network != "tcp6" {
		return nil, fmt.Errorf("listener %s: network %q: want tcp4 or tcp6", cfg.Name, cfg.Network)
	}
	if cfg.Mode != ModeRedirect && cfg.Mode != ModeTProxy {
		return nil, fmt.Errorf("listener %s: mode %q: want %q or %q", cfg.Name, cfg.Mode, ModeRedirect, ModeTProxy)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lc := net.ListenConfig{Control: func(network, address string, rc syscall.RawConn) error {
		return control(cfg, rc)
	}}
	// A background context is fine: Listen does not block on the network.
	ln, err := lc.Listen(context.Background(), cfg.Network, cfg.Addr)
	if err != nil {
		if cfg.Mode == ModeTProxy && errors.Is(err, syscall.EPERM) {
			return nil, fmt.Errorf("listener %s: tproxy mode needs CAP_NET_ADMIN to set IP_TRANSPARENT: %w", cfg.Name, err)
		}
		return nil, fmt.Errorf("listener %s: listen on %s %s: %w", cfg.Name, cfg.Network, cfg.Addr, err)
	}
	tl := ln.(*net.TCPListener)
	ap := tl.Addr().(*net.TCPAddr).AddrPort()
	l := &Listener{
		cfg:  cfg,
		log:  log.With("listener", cfg.Name),
		ln:   tl,
		addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		done: make(chan struct{}),
	}
	l.accept = tl.AcceptTCP
	l.sleep = l.wait
	return l, nil
}

// control sets socket options between socket(2) and bind(2).
func control(cfg Config, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if cfg.Network == "tcp6" {
			if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
				serr = fmt.Errorf("setsockopt IPV6_V6ONLY: %w", err)
				return
			}
		}
		if cfg.Mode != ModeTProxy {
			return
		}
		if cfg.Network == "tcp6" {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
				serr = fmt.Errorf("setsockopt IPV6_TRANSPARENT: %w", err)
			}
			return
		}
		if err := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			serr = fmt.Errorf("setsockopt IP_TRANSPARENT: %w", err)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Addr returns the bound address (with the real port when Addr asked for 0).
func (l *Listener) Addr() netip.AddrPort { return l.addr }

// Mode returns the listener's interception mode.
func (l *Listener) Mode() Mode { return l.cfg.Mode }

// Name returns the listener's configured name.
func (l *Listener) Name() string { return l.cfg.Name }

// Stats returns a snapshot of the listener's counters.
func (l *Listener) Stats() Stats {
	return Stats{
		Accepted:      l.accepted.Load(),
		LoopsRefused:  l.loops.Load(),
		NoOriginalDst: l.noDst.Load(),
		AcceptErrors:  l.acceptErrs.Load(),
	}
}

// Close stops the listener; a blocked Accept returns net.ErrClosed. It is
// safe to call more than once; later calls return the first call's result.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.closeErr = l.ln.Close()
	})
	return l.closeErr
}

// closed reports whether Close has been called.
func (l *Listener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// wait sleeps d, returning early when the listener is closed.
func (l *Listener) wait(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-l.done:
	}
}

// Accept waits for the next connection whose original destination is known
// and does not loop back into the listener (unless Config.AllowSelf). Refused connections are closed
// and counted; temporary errors are retried with a backoff of 5ms doubling
// to 1s. Accept returns net.ErrClosed after Close, and any permanent error
// from the kernel as is (wrapped).
func (l *Listener) Accept() (*Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.accept()
		if err != nil {
			if l.closed() {
				return nil, net.ErrClosed
			}
			if !temporary(err) {
				return nil, fmt.Errorf("listener %s: accept: %w", l.cfg.Name, err)
			}
			if backoff == 0 {
				backoff = minBackoff
			} else {
				backoff = min(2*backoff, maxBackoff)
			}
			l.acceptErrs.Add(1)
			l.logAcceptError(err, backoff)
			l.sleep(backoff)
			continue
		}
		backoff = 0
		orig, err := OriginalDst(c, l.cfg.Mode)
		if err != nil {
			l.noDst.Add(1)
			l.log.Warn("refusing connection without original destination",
				"src", remote(c), "dst", c.LocalAddr().String(), "error", err)
			c.Close()
			continue
		}
		if !l.cfg.AllowSelf && l.isLoop(orig) {
			l.loops.Add(1)
			l.log.Warn("refusing connection that loops back to the proxy",
				"src", remote(c), "dst", orig.String(), "listener_addr", l.addr.String())
			c.Close()
			continue
		}
		l.accepted.Add(1)
		return &Conn{TCPConn: c, OriginalDst: orig}, nil
	}
}

// isLoop reports whether orig is the listener itself: same port, and the
// same IP, or the listener bound to the unspecified address, or a loopback
// destination.
func (l *Listener) isLoop(orig netip.AddrPort) bool {
	if orig.Port() != l.addr.Port() {
		return false
	}
	la := l.addr.Addr()
	oa := orig.Addr().Unmap()
	return oa == la || la.IsUnspecified() || oa.IsLoopback()
}

// logAcceptError logs a temporary accept error at most once per logEvery,
// reporting how many were suppressed in between.
func (l *Listener) logAcceptError(err error, backoff time.Duration) {
	l.logMu.Lock()
	now := time.Now()
	if now.Sub(l.lastLog) < logEvery {
		l.suppressed++
		l.logMu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.suppressed = 0
	l.lastLog = now
	l.logMu.Unlock()
	l.log.Warn("temporary accept error, backing off",
		"error", err, "backoff", backoff, "suppressed", suppressed)
}

// temporary reports whether an accept error is worth retrying: resource
// exhaustion or a connection that died before accept.
func temporary(err error) bool {
	for _, e := range []error{
		syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EPROTO,
		syscall.EPERM, // netfilter/seccomp refusals of an individual accept
		syscall.EAGAIN, syscall.EINTR,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// remote renders a connection's peer address for logs.
func remote(c *net.TCPConn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Compile-time check that Conn keeps the io.Closer of the raw socket.
var _ io.Closer = (*Conn)(nil)
