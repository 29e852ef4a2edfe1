package listener

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
}

// inNetns runs fn on a locked OS thread moved into a fresh network namespace
// with loopback up. Sockets created by fn live in that namespace; the thread
// is discarded afterwards (the goroutine exits without unlocking).
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	needRoot(t, "creates a network namespace")
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("netns setup: %v", err)
	}
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// acceptAsync runs Accept in the background.
func acceptAsync(l *Listener) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := l.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

type acceptResult struct {
	c   *Conn
	err error
}

// waitStats polls until cond holds or fails the test after 5s.
func waitStats(t *testing.T, l *Listener, cond func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := l.Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never reached the wanted state: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectClosedByPeer asserts that the listener closed the client's conn.
func expectClosedByPeer(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("read = %d, %v; want the proxy to close the connection", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read timed out; want the proxy to close the connection")
	}
}

func TestListenBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Name: "x", Network: "tcp", Addr: "127.0.0.1:0", Mode: ModeRedirect},
		{Name: "x", Network: "tcp4", Addr: "127.0.0.1:0", Mode: "nat"},
		{Name: "x", Network: "tcp4", Addr: "[::1]:0", Mode: ModeRedirect},
	} {
		if l, err := Listen(cfg); err == nil {
			l.Close()
			t.Errorf("Listen(%+v) succeeded; want an error", cfg)
		}
	}
}

func TestRedirectDirectConnectionHasNoOriginalDst(t *testing.T) {
	l, err := Listen(Config{Name: "outbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: ModeRedirect})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	res := acceptAsync(l)
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectClosedByPeer(t, c)
	s := waitStats(t, l, func(s Stats) bool { return s.NoOriginalDst == 1 })
	if s.Accepted != 0 || s.LoopsRefused != 0 {
		t.Errorf("stats = %+v; want only NoOriginalDst", s)
	}
	l.Close()
	if r := <-res; !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, %v; want net.ErrClosed", r.c, r.err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

func TestTProxyLoopRefused(t *testing.T) {
	needRoot(t, "IP_TRANSPARENT needs CAP_NET_ADMIN")
	for _, tc := range []struct{ network, addr string }{
		{"tcp4", "127.0.0.1:0"},
		{"tcp6", "[::1]:0"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			l, err := Listen(Config{Name: "inbound", Network: tc.network, Addr: tc.addr, Mode: ModeTProxy})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			acceptAsync(l)
			c, err := net.Dial(tc.network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			expectClosedByPeer(t, c)
			s := waitStats(t, l, func(s Stats) bool { return s.LoopsRefused == 1 })
			if s.Accepted != 0 || s.NoOriginalDst != 0 {
				t.Errorf("stats = %+v; want only LoopsRefused", s)
			}
		})
	}
}

// TestTProxyAllowSelf: with AllowSelf, a connection to the listener's own
// address (the mesh port case) is accepted with that address as its
// original destination.
func TestTProxyAllowSelf(t *testing.T) {
	needRoot(t, "IP_TRANSPARENT needs CAP_NET_ADMIN")
	l, err := Listen(Config{Name: "inbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: ModeTProxy, AllowSelf: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	res := acceptAsync(l)
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("Accept = %v; want the connection", r.err)
		}
		defer r.c.Close()
		if r.c.OriginalDst != l.Addr() {
			t.Errorf("OriginalDst = %s; want the listener's own %s", r.c.OriginalDst, l.Addr())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AllowSelf listener did not accept a connection to itself within 10s")
	}
	if s := l.Stats(); s.LoopsRefused != 0 || s.Accepted != 1 {
		t.Errorf("stats = %+v; want Accepted 1, LoopsRefused 0", s)
	}
}

func TestIsLoop(t *testing.T) {
	for _, tc := range []struct {
		listen, orig string
		want         bool
	}{
		{"127.0.0.1:4140", "127.0.0.1:4140", true},
		{"127.0.0.1:4140", "127.0.0.2:4140", true}, // loopback, same port
		{"127.0.0.1:4140", "198.18.0.1:4140", false},
		{"127.0.0.1:4140", "127.0.0.1:8080", false},
		{"0.0.0.0:4143", "198.18.0.1:4143", true},
		{"0.0.0.0:4143", "198.18.0.1:8080", false},
		{"[::]:4143", "[2001:2::1]:4143", true},
		{"[::1]:4140", "[::1]:4140", true},
		{"[::1]:4140", "[2001:2::1]:4140", false},
		{"198.18.0.1:4143", "198.18.0.2:4143", false},
	} {
		l := &Listener{addr: netip.MustParseAddrPort(tc.listen)}
		if got := l.isLoop(netip.MustParseAddrPort(tc.orig)); got != tc.want {
			t.Errorf("listener %s: isLoop(%s) = %v; want %v", tc.listen, tc.orig, got, tc.want)
		}
	}
}

// TestTProxyOriginalDstIsLocalAddress accepts a connection to a second,
// ordinary socket through a tproxy listener's Accept path: its original
// destination must be that socket's local address, and it is not a loop.
func TestTProxyOriginalDstIsLocalAddress(t *testing.T) {
	needRoot(t, "IP_TRANSPARENT needs CAP_NET_ADMIN")
	l, err := Listen(Config{Name: "inbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: ModeTProxy})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l.accept = other.AcceptTCP
	res := acceptAsync(l)
	c, err := net.Dial("tcp4", other.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.c.Close()
	want := other.Addr().(*net.TCPAddr).AddrPort()
	if r.c.OriginalDst != want {
		t.Errorf("OriginalDst = %v; want %v", r.c.OriginalDst, want)
	}
	if got, err := OriginalDst(r.c.TCPConn, ModeTProxy); err != nil || got != want {
		t.Errorf("OriginalDst(tproxy) = %v, %v; want %v", got, err, want)
	}
	if got := l.Stats().Accepted; got != 1 {
		t.Errorf("Accepted = %d; want 1", got)
	}
	// The same conn has no conntrack NAT entry.
	if _, err := OriginalDst(r.c.TCPConn, ModeRedirect); !errors.Is(err, ErrNoOriginalDst) {
		t.Errorf("OriginalDst(redirect) error = %v; want ErrNoOriginalDst", err)
	}
}

// TestTProxyBindsNonLocalAddress proves IP_TRANSPARENT is set before bind:
// only a transparent socket may bind an address the host does not own.
func TestTProxyBindsNonLocalAddress(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{
		{"tcp4", "198.18.0.1:4143"},
		{"tcp6", "[2001:2::1]:4143"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			inNetns(t, func() {
				l, err := Listen(Config{Name: "inbound", Network: tc.network, Addr: tc.addr, Mode: ModeTProxy})
				if err != nil {
					t.Errorf("tproxy Listen(%s) = %v; want success on a non-local address", tc.addr, err)
				} else {
					l.Close()
				}
				l, err = Listen(Config{Name: "inbound", Network: tc.network, Addr: tc.addr, Mode: ModeRedirect})
				if !errors.Is(err, syscall.EADDRNOTAVAIL) {
					t.Errorf("redirect Listen(%s) error = %v; want EADDRNOTAVAIL", tc.addr, err)
				}
				if l != nil {
					l.Close()
				}
			})
		})
	}
}

// TestV4AndV6ShareAPort: the tcp6 listener is v6-only.
func TestV4AndV6ShareAPort(t *testing.T) {
	inNetns(t, func() {
		l4, err := Listen(Config{Name: "inbound", Network: "tcp4", Addr: "0.0.0.0:4143", Mode: ModeRedirect})
		if err != nil {
			t.Errorf("tcp4: %v", err)
			return
		}
		defer l4.Close()
		l6, err := Listen(Config{Name: "inbound", Network: "tcp6", Addr: "[::]:4143", Mode: ModeRedirect})
		if err != nil {
			t.Errorf("tcp6 on the same port: %v", err)
			return
		}
		l6.Close()
	})
}

// fakeAccept returns errs in order, then conns from ln.
type fakeAccept struct {
	errs  []error
	ln    *net.TCPListener
	calls atomic.Int64
}

func (f *fakeAccept) accept() (*net.TCPConn, error) {
	i := f.calls.Add(1) - 1
	if int(i) < len(f.errs) {
		return nil, f.errs[i]
	}
	if f.ln == nil {
		return nil, syscall.EMFILE
	}
	return f.ln.AcceptTCP()
}

func TestAcceptBacksOffOnTemporaryErrorsAndRecovers(t *testing.T) {
	needRoot(t, "uses a tproxy listener (IP_TRANSPARENT)")
	l, err := Listen(Config{Name: "outbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: ModeTProxy})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	f := &fakeAccept{ln: other}
	for range 8 {
		f.errs = append(f.errs, emfile)
	}
	f.errs = append(f.errs, syscall.ENFILE, syscall.ECONNABORTED)
	l.accept = f.accept
	var slept []time.Duration
	l.sleep = func(d time.Duration) { slept = append(slept, d) }

	c, err := net.Dial("tcp4", other.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept = %v; want recovery after temporary errors", err)
	}
	got.Close()
	if n := f.calls.Load(); n != int64(len(f.errs))+1 {
		t.Errorf("accept calls = %d; want %d (one per error, then success)", n, len(f.errs)+1)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	if len(slept) != len(want) {
		t.Fatalf("backoffs = %v; want %v ms", slept, want)
	}
	for i := range want {
		if slept[i] != want[i]*time.Millisecond {
			t.Errorf("backoff[%d] = %v; want %v", i, slept[i], want[i]*time.Millisecond)
		}
	}
	if s := l.Stats(); s.AcceptErrors != uint64(len(f.errs)) || s.Accepted != 1 {
		t.Errorf("stats = %+v; want AcceptErrors=%d Accepted=1", s, len(f.errs))
	}
}

// TestAcceptBackoffDoesNotSpinAndStopsOnClose uses real sleeps: with accept
// failing forever, 300ms allow only a handful of attempts, and Close ends
// the wait at once.
func TestAcceptBackoffDoesNotSpinAndStopsOnClose(t *testing.T) {
	l, err := Listen(Config{Name: "outbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: ModeRedirect})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAccept{} // EMFILE forever
	l.accept = f.accept
	res := acceptAsync(l)
	time.Sleep(300 * time.Millisecond)
	l.Close()
	select {
	case r := <-res:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Errorf("Accept = %v; want net.ErrClosed", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5s after Close")
	}
	// 5+10+20+40+80+160 = 315ms: at most ~7 calls fit in 300ms; a spinning
	// loop would make millions.
	if n := f.calls.Load(); n > 10 || n < 2 {
		t.Errorf("accept calls in 300ms = %d; want a handful (backoff)", n)
	}
}

func TestAcceptPermanentErrorReturned(t *testing.T) {
	l, err := Listen(Config{Name: "outbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: ModeRedirect})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f := &fakeAccept{errs: []error{syscall.EBADF}}
	l.accept = f.accept
	if _, err := l.Accept(); !errors.Is(err, syscall.EBADF) {
		t.Errorf("Accept = %v; want the permanent EBADF", err)
	}
}

// TestAcceptRealEMFILE runs the test binary again with a tiny RLIMIT_NOFILE
// so the kernel itself returns EMFILE from accept.
func TestAcceptRealEMFILE(t *testing.T) {
	if os.Getenv("LISTENER_EMFILE_CHILD") == "1" {
		emfileChild()
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestAcceptRealEMFILE$", "-test.v")
	cmd.Env = append(os.Environ(), "LISTENER_EMFILE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child: %s", out)
}

// emfileChild fills the descriptor table, connects a client (its socket was
// opened before the fill), and checks Accept backs off then recovers when a
// descriptor is freed.
func emfileChild() {
	fail := func(format string, args ...any) {
		os.Stderr.WriteString("FAIL: " + fmt.Sprintf(format, args...) + "\n")
		os.Exit(1)
	}
	l, err := Listen(Config{Name: "outbound", Network: "tcp4", Addr: "127.0.0.1:0", Mode: ModeRedirect})
	if err != nil {
		fail("listen: %v", err)
	}
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		fail("dial: %v", err)
	}
	defer c.Close()
	var calls atomic.Int64
	real := l.accept
	l.accept = func() (*net.TCPConn, error) { calls.Add(1); return real() }
	// Fill every free descriptor under a small limit.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fail("getrlimit: %v", err)
	}
	lim.Cur = 256
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fail("setrlimit: %v", err)
	}
	var fds []int
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fds = append(fds, fd)
	}
	if len(fds) == 0 {
		fail("could not fill descriptor table")
	}
	go l.Accept() // the direct connection has no original dst: refused, then Accept waits on
	time.Sleep(200 * time.Millisecond)
	mid := l.Stats()
	for _, fd := range fds {
		unix.Close(fd)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().NoOriginalDst == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s := l.Stats()
	if mid.AcceptErrors == 0 {
		fail("AcceptErrors = 0 while descriptors were exhausted; want EMFILE seen and retried (stats %+v)", mid)
	}
	if n := mid.AcceptErrors; n > 8 {
		fail("%d accept errors in 200ms; backoff (5ms doubling) should allow a handful", n)
	}
	if s.NoOriginalDst != 1 {
		fail("NoOriginalDst = %d; want the connection accepted after recovery (stats %+v)", s.NoOriginalDst, s)
	}
	fmt.Printf("accept errors while exhausted: %d, calls: %d\n", mid.AcceptErrors, calls.Load())
}

func TestParseSockaddr(t *testing.T) {
	v4 := make([]byte, unix.SizeofSockaddrInet4)
	*(*uint16)(unsafe.Pointer(&v4[0])) = unix.AF_INET
	binary.BigEndian.PutUint16(v4[2:], 8080)
	copy(v4[4:], []byte{198, 18, 0, 7})
	v6 := make([]byte, unix.SizeofSockaddrInet6)
	*(*uint16)(unsafe.Pointer(&v6[0])) = unix.AF_INET6
	binary.BigEndian.PutUint16(v6[2:], 443)
	a6 := netip.MustParseAddr("2001:2::9").As16()
	copy(v6[8:], a6[:])
	mapped := append([]byte(nil), v6...)
	m := netip.MustParseAddr("::ffff:198.18.0.3").As16()
	copy(mapped[8:], m[:])
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"v4", v4, "198.18.0.7:8080"},
		{"v6", v6, "[2001:2::9]:443"},
		{"v4-mapped", mapped, "198.18.0.3:443"},
	} {
		got, err := parseSockaddr(tc.b)
		if err != nil || got.String() != tc.want {
			t.Errorf("%s: parseSockaddr = %v, %v; want %s", tc.name, got, err, tc.want)
		}
	}
	if _, err := parseSockaddr(v4[:3]); !errors.Is(err, ErrNoOriginalDst) {
		t.Errorf("short sockaddr error = %v; want ErrNoOriginalDst", err)
	}
}
