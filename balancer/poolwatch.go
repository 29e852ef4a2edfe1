package balancer

import (
	"net"
	"sync"
	"syscall"
)

// closeWatcher notices, without a goroutine per connection, when the
// peer of an idle pooled connection closes it: the idle sockets are in
// one epoll set, watched for a hang-up (EPOLLRDHUP) only, so bytes that
// arrive (a TLS session ticket) do not count. One goroutine waits on the
// set and reports hang-ups to gone.
type closeWatcher struct {
	epfd int
	gone func(fd int32)
	done chan struct{}
	once sync.Once
}

// newCloseWatcher starts a watcher; nil when epoll is not available.
func newCloseWatcher(gone func(fd int32)) *closeWatcher {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	w := &closeWatcher{epfd: epfd, gone: gone, done: make(chan struct{})}
	go w.loop()
	return w
}

// watchTimeoutMs is how long one wait lasts, so the loop notices close.
const watchTimeoutMs = 500

func (w *closeWatcher) loop() {
	defer syscall.Close(w.epfd)
	events := make([]syscall.EpollEvent, 64)
	for {
		select {
		case <-w.done:
			return
		default:
		}
		n, err := syscall.EpollWait(w.epfd, events, watchTimeoutMs)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			w.gone(ev.Fd)
		}
	}
}

// fdOf returns the socket descriptor under c (unwrapping a *tls.Conn),
// or -1.
func fdOf(c net.Conn) int32 {
	raw, _ := rawConnOf(c)
	if raw == nil {
		return -1
	}
	fd := int32(-1)
	if raw.Control(func(f uintptr) { fd = int32(f) }) != nil {
		return -1
	}
	return fd
}

// add watches fd for a hang-up, edge-triggered: one event when the peer
// closes, and none for data.
func (w *closeWatcher) add(fd int32) bool {
	ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | -syscall.EPOLLET, Fd: fd}
	return syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev) == nil
}

// close stops the watcher; its goroutine ends within a wait.
func (w *closeWatcher) close() { w.once.Do(func() { close(w.done) }) }
