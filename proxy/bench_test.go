package proxy

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// bulkSink starts an upstream that counts what it reads until EOF and
// reports the count on the returned channel.
func bulkSink(b *testing.B) (netip.AddrPort, chan int64) {
	got := make(chan int64, 1)
	ap := upstream(b, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		got <- n
	})
	return ap, got
}

// bulkWrite writes b.N MiB on c, half-closes it, and fails unless the sink
// behind it counted every byte.
func bulkWrite(b *testing.B, c *net.TCPConn, got chan int64) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	select {
	case n := <-got:
		if n != int64(b.N)*int64(len(buf)) {
			b.Fatalf("sink read %d bytes; want %d", n, int64(b.N)*int64(len(buf)))
		}
	case <-time.After(time.Minute):
		b.Fatal("sink did not finish")
	}
	b.StopTimer()
}

// BenchmarkForward measures bulk throughput on loopback: "direct" writes to
// a sink server, "proxied" writes to the same kind of sink through one
// Handle hop (splice both ways). Compare the MB/s of the two.
func BenchmarkForward(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		ap, got := bulkSink(b)
		c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(ap))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		bulkWrite(b, c, got)
	})
	b.Run("proxied", func(b *testing.B) {
		ap, got := bulkSink(b)
		srv := NewServer(Outbound, Config{OpaquePorts: []uint16{ap.Port()}}, nil, nil)
		h := handleOne(b, srv, ap)
		bulkWrite(b, h.client, got)
	})
}

// BenchmarkMeshForward measures bulk throughput on loopback through one
// proxy hop in plaintext (spliced) and through the mesh: outbound proxy ->
// mutual TLS -> inbound proxy -> app (two hops, AES-GCM both ways of the
// TLS link). Compare the MB/s.
func BenchmarkMeshForward(b *testing.B) {
	b.Run("plaintext", func(b *testing.B) {
		ap, got := bulkSink(b)
		srv := NewServer(Outbound, Config{OpaquePorts: []uint16{ap.Port()}}, nil, nil)
		h := handleOne(b, srv, ap)
		bulkWrite(b, h.client, got)
	})
	b.Run("mtls", func(b *testing.B) {
		e := newMeshEnv(b, meshOpts{})
		ap, got := bulkSink(b)
		out := NewServer(Outbound, Config{OpaquePorts: []uint16{ap.Port()}, Mesh: &Mesh{Port: e.meshPort,
			ClientTLS: e.clientMgr.ClientTLSConfig, Cache: e.cache}}, nil, nil)
		h := handleOne(b, out, ap)
		bulkWrite(b, h.client, got)
	})
}
