package proxy

import "syscall"

// listen0 re-issues listen(2) with a backlog of 0.
func listen0(fd int) { syscall.Listen(fd, 0) }
