package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/signal"
	"syscall"
	"time"

	"meshproxy/identity"
)

func init() {
	register("identity", command{
		summary: "run the identity service: serve --dir D --listen ADDR",
		run:     runIdentity,
	})
}

const identityUsage = `usage: meshproxy identity serve --dir D --listen ADDR [--max-ttl 24h]

  serve  sign certificate requests for proxies holding a join token (or a
         still-valid certificate) with the CA in D, over TLS on ADDR, until
         SIGTERM or SIGINT
`

// runIdentity dispatches "meshproxy identity <sub>".
func runIdentity(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, identityUsage)
		return 2
	}
	switch args[0] {
	case "serve":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return identityServe(ctx, args[1:], stdout, stderr, nil)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, identityUsage)
		return 0
	}
	fmt.Fprintf(stderr, "meshproxy identity: unknown subcommand %q (want serve)\n", args[0])
	return 2
}

// identityServe runs the identity service until ctx is done. If ready is
// not nil it receives the listening address once the service accepts.
func identityServe(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- string) int {
	fs := flag.NewFlagSet("identity serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the CA (made by \"meshproxy ca init\")")
	listen := fs.String("listen", "", "address to serve on, e.g. 0.0.0.0:8083")
	maxTTL := fs.Duration("max-ttl", identity.DefaultLeafTTL, "longest certificate lifetime to grant")
	if c := idParseFlags(fs, args, stdout, stderr); c >= 0 {
		return c
	}
	if c := idRequire(fs, stderr, "dir", "listen"); c >= 0 {
		return c
	}
	if *maxTTL <= 0 {
		fmt.Fprintln(stderr, "meshproxy identity serve: --max-ttl must be positive, e.g. 24h")
		return 2
	}
	ca, err := identity.LoadCA(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy identity serve: %v\n", err)
		return 1
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "meshproxy identity serve: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	svc := identity.NewService(ca, nil, log)
	svc.MaxTTL = *maxTTL
	done := make(chan error, 1)
	go func() { done <- svc.Serve(l) }()
	if ready != nil {
		ready <- l.Addr().String()
	}
	select {
	case <-ctx.Done():
		log.Info("identity service stopping")
		svc.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		return 0
	case err := <-done:
		if err != nil {
			fmt.Fprintf(stderr, "meshproxy identity serve: %v\n", err)
			return 1
		}
		return 0
	}
}
