package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// outOfFiles makes the process unable to open another file (pipe2 fails
// with EMFILE) until the returned function restores the limit: the soft
// RLIMIT_NOFILE is lowered to the lowest free descriptor, so every number
// a new file could take is at or past it. Descriptors already open keep
// working. Nothing else in the test binary may open files meanwhile
// (this package's tests do not run in parallel).
func outOfFiles(t *testing.T) (restore func()) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	lowest := f.Fd()
	f.Close()
	low := lim
	low.Cur = uint64(lowest)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	return func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatalf("restoring RLIMIT_NOFILE: %v", err)
		}
	}
}

// dropIdlePipes closes the pooled pipes, so the next getPipe makes one.
func dropIdlePipes() {
	idlePipes.Lock()
	defer idlePipes.Unlock()
	for i, p := range idlePipes.pipes {
		p.close()
		idlePipes.pipes[i] = nil
	}
	idlePipes.pipes = idlePipes.pipes[:0]
}

// TestSpliceFallbackOutOfFiles: when no pipe can be made (the process is
// out of files) the spliced copy still moves every byte, through a pooled
// buffer (copyBurst), counts them and ends at EOF.
func TestSpliceFallbackOutOfFiles(t *testing.T) {
	srcW, srcR := tcpPair(t)
	dstW, dstR := tcpPair(t)
	msg := make([]byte, 3<<20+5)
	rand.Read(msg)
	count := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_bytes_total", Help: "bytes"})
	var total atomic.Int64

	dropIdlePipes()
	var once sync.Once
	restoreLimit := outOfFiles(t)
	restore := func() { once.Do(restoreLimit) }
	defer restore()
	if p, err := getPipe(); !errors.Is(err, unix.EMFILE) {
		if err == nil {
			putPipe(p)
		}
		t.Fatalf("getPipe while out of files: %v; want EMFILE", err)
	}
	errc := runCopy(proxyCopy, dstW, srcR, time.Minute, count, &total)
	got := make(chan []byte, 1)
	go func() {
		dstR.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, _ := io.ReadAll(dstR)
		got <- b
	}()
	srcW.SetWriteDeadline(time.Now().Add(20 * time.Second))
	_, werr := srcW.Write(msg)
	srcW.CloseWrite()
	var cerr error
	select {
	case cerr = <-errc:
	case <-time.After(20 * time.Second):
		cerr = errors.New("copy did not end within 20s of the EOF")
	}
	restore()
	if werr != nil {
		t.Fatalf("writing the source: %v", werr)
	}
	if cerr != nil {
		t.Fatalf("copy: %v; want nil at EOF", cerr)
	}
	dstW.CloseWrite()
	if b := <-got; !bytes.Equal(b, msg) {
		t.Fatalf("destination got %d bytes; want the %d sent, intact", len(b), len(msg))
	}
	if c := testutil.ToFloat64(count); c != float64(len(msg)) || total.Load() != int64(len(msg)) {
		t.Errorf("counted %v (total %d); want %d", c, total.Load(), len(msg))
	}
}
