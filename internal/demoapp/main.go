// Command demoapp is the plain application of meshproxy's demo and test lab:
// it knows nothing of the mesh. "serve" runs an HTTP server that tells each
// caller which address it saw the request come from; "get" fetches a URL and
// prints the status and body.
//
//	demoapp serve -listen 0.0.0.0:8080 -name server
//	demoapp get http://198.18.0.2:8080/hello
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demoapp serve|get ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "get":
		os.Exit(get(os.Args[2:]))
	}
	fmt.Fprintf(os.Stderr, "demoapp: unknown command %q\n", os.Args[1])
	os.Exit(2)
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "0.0.0.0:8080", "address to listen on")
	name := fs.String("name", "server", "name to answer with")
	fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	fmt.Printf("demoapp %s listening on %s\n", *name, l.Addr())
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("demoapp %s: %s %s from %s\n", *name, r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s: you asked for %s, and I saw you come from %s\n", *name, r.URL.Path, r.RemoteAddr)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	return 0
}

func get(args []string) int {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	fs.Parse(args)
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: demoapp get URL")
		return 2
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s %s\n%s", resp.Proto, resp.Status, body)
	if resp.StatusCode >= 400 {
		return 1
	}
	return 0
}
