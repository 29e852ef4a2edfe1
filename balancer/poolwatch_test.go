package balancer

import (
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestPoolCloseReleasesWatcher: Close stops the close watcher and
// releases its epoll descriptor (no descriptor leaks per pool).
func TestPoolCloseReleasesWatcher(t *testing.T) {
	srv := newEchoServer(t, nil)
	p, err := NewPool(PoolConfig[net.Conn]{Dial: tcpDial, WatchClose: true})
	if err != nil {
		t.Fatal(err)
	}
	if p.watch == nil {
		t.Skip("no epoll here")
	}
	pc, _ := get(t, p, srv.addr)
	p.Put(pc) // watched
	link := "/proc/self/fd/" + strconv.Itoa(p.watch.epfd)
	if l, err := os.Readlink(link); err != nil || l != "anon_inode:[eventpoll]" {
		t.Fatalf("watcher's descriptor %s -> %q, %v; want an epoll", link, l, err)
	}
	p.Close()
	srv.waitEOFs(t, 1) // the idle connection is closed
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := os.Readlink(link)
		if err != nil || l != "anon_inode:[eventpoll]" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("watcher's epoll descriptor still open 5s after Close")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
