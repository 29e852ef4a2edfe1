// Command demoapp is the plain application of meshproxy's demo and test lab:
// it knows nothing of the mesh. "serve" runs an HTTP server that tells each
// caller which address it saw the request come from (and the client
// identity the mesh vouched for, if any); "get" fetches a URL and prints the
// status and body; "sniff" watches an interface, like a packet capture, and
// says whether a marker crossed it in the clear; "dns" is a tiny
// authoritative DNS server for the demo's cluster names; "echo" is a TCP
// echo server (the reliability tests hold thousands of connections to it
// from another process, so that no one process runs out of descriptors).
//
//	demoapp serve -listen 0.0.0.0:8080 -name server
//	demoapp get http://198.18.0.2:8080/hello
//	demoapp sniff -i eth0 -marker SECRET -for 3s
//	demoapp dns -listen 198.18.0.2:53 -record my-server-service.demo.svc.cluster.local=198.18.0.2
//	demoapp echo -listen 0.0.0.0:9000
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demoapp serve|get|sniff|dns|echo ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "get":
		os.Exit(get(os.Args[2:]))
	case "sniff":
		os.Exit(sniff(os.Args[2:]))
	case "dns":
		os.Exit(serveDNS(os.Args[2:]))
	case "echo":
		os.Exit(echo(os.Args[2:]))
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
		xfcc := r.Header.Get("X-Forwarded-Client-Cert")
		fmt.Printf("demoapp %s: %s %s from %s xfcc=%q\n", *name, r.Method, r.URL.Path, r.RemoteAddr, xfcc)
		fmt.Fprintf(w, "hello from %s: you asked for %s, and I saw you come from %s\n", *name, r.URL.Path, r.RemoteAddr)
		if xfcc != "" {
			fmt.Fprintf(w, "the mesh vouched for the caller: x-forwarded-client-cert: %s\n", xfcc)
		}
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	return 0
}

// records is a repeatable -record name=ip flag.
type records map[string][]net.IP

func (r records) String() string { return fmt.Sprint(map[string][]net.IP(r)) }

func (r records) Set(v string) error {
	name, ip, ok := strings.Cut(v, "=")
	addr := net.ParseIP(ip)
	if !ok || addr == nil || addr.To4() == nil {
		return fmt.Errorf("want name=IPv4, got %q", v)
	}
	r[dns.Fqdn(name)] = append(r[dns.Fqdn(name)], addr)
	return nil
}

// serveDNS answers A queries for the given records (TTL 5s) and NXDOMAIN
// for every other name, over UDP, until killed.
func serveDNS(args []string) int {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:53", "UDP address to serve on")
	recs := records{}
	fs.Var(recs, "record", "name=IPv4 (repeatable)")
	fs.Parse(args)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		name := q.Question[0].Name
		ips, ok := recs[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
		} else if q.Question[0].Qtype == dns.TypeA {
			for _, ip := range ips {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: ip})
			}
		}
		w.WriteMsg(m)
	})
	fmt.Printf("demoapp dns on %s serving %v\n", *listen, recs)
	if err := (&dns.Server{Addr: *listen, Net: "udp", Handler: h}).ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	return 0
}

// sniff captures frames on an interface for a while and reports whether a
// marker string appeared in any of them.
func sniff(args []string) int {
	fs := flag.NewFlagSet("sniff", flag.ExitOnError)
	ifname := fs.String("i", "eth0", "interface to watch")
	marker := fs.String("marker", "", "bytes to look for")
	dur := fs.Duration("for", 3*time.Second, "how long to watch")
	fs.Parse(args)
	ifi, err := net.InterfaceByName(*ifname)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	proto := uint16(syscall.ETH_P_ALL<<8 | syscall.ETH_P_ALL>>8)
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(proto))
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoapp: packet socket (needs root):", err)
		return 1
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	tv := syscall.Timeval{Usec: 100_000}
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	fmt.Printf("sniffing %s for %v\n", *ifname, *dur)
	buf := make([]byte, 1<<16)
	var frames, total int
	found := false
	for end := time.Now().Add(*dur); time.Now().Before(end); {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		frames++
		total += n
		if *marker != "" && bytes.Contains(buf[:n], []byte(*marker)) {
			found = true
		}
	}
	verdict := "NOT seen: the payload crossed encrypted"
	if found {
		verdict = "SEEN in the clear"
	}
	fmt.Printf("captured %d frames (%d bytes) on %s; marker %q %s\n", frames, total, *ifname, *marker, verdict)
	return 0
}

func get(args []string) int {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	data := fs.String("d", "", "send this as a POST body")
	fs.Parse(args)
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: demoapp get [-d BODY] URL")
		return 2
	}
	c := &http.Client{Timeout: 10 * time.Second}
	var resp *http.Response
	var err error
	if *data != "" {
		resp, err = c.Post(fs.Arg(0), "text/plain", strings.NewReader(*data))
	} else {
		resp, err = c.Get(fs.Arg(0))
	}
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

// echo runs a TCP echo server: every connection gets back what it sends,
// until it closes. Accept errors such as running out of descriptors are
// retried after a pause; only a closed listener ends it.
func echo(args []string) int {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	listen := fs.String("listen", "0.0.0.0:9000", "address to listen on")
	fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		return 1
	}
	fmt.Printf("demoapp echo listening on %s\n", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return 0
			}
			fmt.Fprintln(os.Stderr, "demoapp: accept:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			// A plain read-write loop, not io.Copy(c, c): between two
			// TCP sockets that splices through a pipe, and the pipe's two
			// descriptors stay open while the copy waits, three per
			// connection instead of one.
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
