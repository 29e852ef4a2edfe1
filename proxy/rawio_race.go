//go:build race

package proxy

import (
	"runtime"
	"unsafe"
)

// rawIOSync stands for the kernel between a raw write and a raw read, as
// the syscall package's own I/O does for the race detector: bytes
// written to a socket and read from another order what was done before
// the write before what is done after the read.
var rawIOSync int64

// raceRead tells the race detector that a raw read filled p[:n].
func raceRead(p []byte, n int) {
	if n > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), n)
	}
	runtime.RaceAcquire(unsafe.Pointer(&rawIOSync))
}

// raceWrite tells the race detector that a raw write reads p.
func raceWrite(p []byte) {
	runtime.RaceReleaseMerge(unsafe.Pointer(&rawIOSync))
	if len(p) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&p[0]), len(p))
	}
}
