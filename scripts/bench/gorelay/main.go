// Command gorelay is the benchmark's simplest Go proxy, a baseline for
// what Go's runtime costs on the machine. It accepts on each
// listen address, dials the matching target, and moves bytes both ways
// with one goroutine per direction and a plain read/write loop: no
// parsing, no TLS, no metrics, no pooling, no splice. Run as a pair in
// the bench's two-hop shape, it shows what Go's netpoller and scheduler
// cost (a goroutine parked and woken per read), apart from anything
// meshproxy does. It is a baseline, not a floor: a proxy may move bytes
// for less (splice, for one).
//
//	gorelay -pairs 127.0.0.1:35201=198.18.0.2:15447,127.0.0.1:38080=198.18.0.2:15448
//
// It runs until SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	pairs := flag.String("pairs", "", "comma-separated listen=target address pairs")
	flag.Parse()
	if *pairs == "" {
		fmt.Fprintln(os.Stderr, "gorelay: -pairs is required (listen=target,...)")
		os.Exit(2)
	}
	for _, p := range strings.Split(*pairs, ",") {
		listen, target, ok := strings.Cut(p, "=")
		if !ok || listen == "" || target == "" {
			fmt.Fprintf(os.Stderr, "gorelay: pair %q is not listen=target\n", p)
			os.Exit(2)
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gorelay: %v\n", err)
			os.Exit(1)
		}
		go serve(ln, target)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

// serve relays every connection ln accepts to target.
func serve(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "gorelay: accept: %v\n", err)
			return
		}
		go func() {
			up, err := net.Dial("tcp", target)
			if err != nil {
				fmt.Fprintf(os.Stderr, "gorelay: dial %s: %v\n", target, err)
				c.Close()
				return
			}
			done := make(chan struct{})
			go func() { relay(up, c); close(done) }()
			relay(c, up)
			<-done
			c.Close()
			up.Close()
		}()
	}
}

// relay copies src to dst until src ends, then half-closes dst.
func relay(dst, src net.Conn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
