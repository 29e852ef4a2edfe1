//go:build race

package proxy

import (
	"runtime"
	"syscall"
	"unsafe"
)

// The race detector learns from the syscall package's own reads and
// writes that bytes written to a socket and read from another order what
// was done before the write before what is done after the read (a
// release and an acquire on a variable of that package). Raw I/O must
// join the same order, or a raw write read by Go's own I/O (a test's
// net.Conn, net/http) and the other way round order nothing, and the
// detector reports races that are not there. So, in race builds only,
// each raw read and write also makes an empty read or write of
// /dev/null through the syscall package: it moves nothing and carries
// the package's acquire and release.
var raceNullFD = func() int {
	fd, err := syscall.Open("/dev/null", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		panic("proxy: opening /dev/null for the race detector's raw I/O order: " + err.Error())
	}
	return fd
}()

// raceRead tells the race detector that a raw read filled p[:n], and
// orders it after the writes whose bytes it may have read.
func raceRead(p []byte, n int) {
	if n > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), n)
	}
	syscall.Read(raceNullFD, nil) // the syscall package's acquire
}

// raceWrite tells the race detector that a raw write reads p, and orders
// what came before it before the reads of its bytes.
func raceWrite(p []byte) {
	syscall.Write(raceNullFD, nil) // the syscall package's release
	if len(p) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&p[0]), len(p))
	}
}
