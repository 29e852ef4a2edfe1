// Command httpserver is the application side of the HTTP benchmarks: a
// small static response (200, 13 bytes, text/plain) on every path, over
// HTTP/1.1 keep-alive, on each address given.
//
//	httpserver -listen 0.0.0.0:8080,0.0.0.0:8082
//
// It runs until SIGINT or SIGTERM. It is shared by every setup and must
// not be the noise in their latency: net/http allocates a few KB per
// request, which at the default GOGC means a garbage collection every
// second or so at 1000 req/s (a stop-the-world pause, and on a busy
// 2-core box a few ms of waiting for its threads); it runs with GOGC
// 2000 (a heap goal of 80 MB or more), so a collection comes every
// half-minute or so at that rate.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var body = []byte("hello, bench\n")

func main() {
	fs := flag.NewFlagSet("httpserver", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "addresses to serve on, comma-separated")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	debug.SetGCPercent(2000)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 8)
	for _, a := range strings.Split(*listen, ",") {
		l, err := net.Listen("tcp", a)
		if err != nil {
			fmt.Fprintf(os.Stderr, "httpserver: listening on %s: %v\n", a, err)
			os.Exit(1)
		}
		go func() { errc <- srv.Serve(l) }()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "httpserver: %v\n", err)
			os.Exit(1)
		}
	}
	srv.Close()
}
