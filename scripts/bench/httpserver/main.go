// Command httpserver is the application side of the HTTP benchmarks: a
// small static response (200, 13 bytes, text/plain) on every path, over
// HTTP/1.1 keep-alive, on each address given.
//
//	httpserver -listen 0.0.0.0:8080,0.0.0.0:8082
//
// It runs until SIGINT or SIGTERM.
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
