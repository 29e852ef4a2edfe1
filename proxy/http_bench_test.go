package proxy

import (
	"fmt"
	"io"
	"net/http"
	"testing"
)

// BenchmarkHTTPRequests measures small HTTP/1.1 requests (keep-alive, 16
// in parallel): "direct" to the app, "outbound" through the HTTP-aware
// outbound proxy alone (unmeshed, pooled HTTP/1.1 upstream) and "mesh"
// through outbound and inbound proxies (HTTP/1.1 over pooled mTLS on
// loopback).
// Compare the req/s of the three.
func BenchmarkHTTPRequests(b *testing.B) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	run := func(b *testing.B, c *http.Client, url, host string) {
		b.SetParallelism(4) // 4 x GOMAXPROCS clients
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Host = host
				if !benchGet(b, c, req) {
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	}
	b.Run("direct", func(b *testing.B) {
		bs := startBackends(b, hello, 0, "127.0.0.1")
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		defer tr.CloseIdleConnections()
		run(b, &http.Client{Transport: tr}, "http://"+bs[0].addr.String()+"/", bs[0].addr.String())
	})
	b.Run("outbound", func(b *testing.B) {
		bs := startBackends(b, hello, 0, "127.0.0.1")
		z := newZoneDNS(b)
		z.set("web.test.", "127.0.0.1")
		srv := NewServer(Outbound, Config{OpaquePorts: noOpaque, HTTP: &HTTPConfig{Balancer: balancerFor(b, z)}}, nil, nil)
		d := newProxyDialer(b, srv, bs[0].addr)
		c := d.client()
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
		run(b, c, "http://"+bs[0].addr.String()+"/", fmt.Sprintf("web.test:%d", bs[0].addr.Port()))
		srv.closeIdleHTTP()
	})
	b.Run("mesh", func(b *testing.B) {
		e, d, authority := meshHTTPEnv(b, hello)
		c := d.client()
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
		run(b, c, "http://"+authority+"/", authority)
		e.out.closeIdleHTTP()
	})
}

// benchGet sends req with c and reads the whole response; false (and
// the benchmark failed) on an error or a status other than 200.
func benchGet(b *testing.B, c *http.Client, req *http.Request) bool {
	resp, err := c.Do(req)
	if err != nil {
		b.Error(err)
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Errorf("status %d", resp.StatusCode)
		return false
	}
	return true
}
