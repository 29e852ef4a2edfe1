package proxy

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A wait on a socket inside its RawConn read (the HTTP fast path's
// readOnce and readOnceTLS, the opaque copy's readCopy) may start without a read that found nothing (EAGAIN)
// only when the last read proves the socket drained: the poller's
// readiness is not set again for what was already there. A read that
// returns fewer bytes than asked does not prove it: the read that takes
// the last bytes also takes a FIN queued after them (the next read
// returns 0, and nothing signals it again), and a read stops short at
// urgent data. With TCP_INQ on, recvmsg(2) says, in the same call, what
// the read left: the bytes still queued, or 1 for an end of stream not
// yet returned (tcp_inq_hint).

// enableInq turns TCP_INQ on for the socket under rc; false when the
// kernel refuses (then every read that brought bytes is followed by
// another before a wait).
func enableInq(rc syscall.RawConn) bool {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_INQ, 1)
	})
	return err == nil && serr == nil
}

// inqSpace is the control buffer of sysReadInq: one TCP_CM_INQ message
// (an int), 8-byte aligned for its header.
type inqSpace [4]uint64

// sysReadInq is sysRead on a socket with TCP_INQ on (enableInq):
// recvmsg(2), which also says whether the read left anything for the
// next one (more: bytes, or the end of stream). When the kernel sent no
// TCP_CM_INQ message, more is true.
func sysReadInq(fd uintptr, p []byte) (n int, more bool, e syscall.Errno) {
	var oob inqSpace
	iov := syscall.Iovec{Base: unsafe.SliceData(p)}
	iov.SetLen(len(p))
	var msg syscall.Msghdr
	if len(p) > 0 {
		msg.Iov = &iov
		msg.Iovlen = 1
	}
	msg.Control = (*byte)(unsafe.Pointer(&oob))
	msg.SetControllen(int(unsafe.Sizeof(oob)))
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, false, e
		}
		raceRead(p, int(r))
		return int(r), inqMore(&oob, int(msg.Controllen)), 0
	}
}

// inqMore reads the TCP_CM_INQ message in oob (ln bytes of it filled):
// whether bytes or an end of stream are left to read.
func inqMore(oob *inqSpace, ln int) bool {
	b := unsafe.Slice((*byte)(unsafe.Pointer(oob)), unsafe.Sizeof(*oob))
	hl := syscall.CmsgLen(0)
	if ln < syscall.CmsgLen(4) {
		return true
	}
	h := (*syscall.Cmsghdr)(unsafe.Pointer(oob))
	if h.Level != unix.SOL_TCP || h.Type != unix.TCP_CM_INQ || int(h.Len) < syscall.CmsgLen(4) {
		return true
	}
	return *(*int32)(unsafe.Pointer(&b[hl])) != 0
}
