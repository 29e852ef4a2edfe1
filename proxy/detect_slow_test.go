package proxy

import (
	"bufio"
	"io"
	"net/netip"
	"testing"
	"time"
)

// TestSlowRequestLineXFCC: a client that sends the first byte of a
// request, waits past the detection timeout, then the rest with a forged
// x-forwarded-client-cert gets its request served by the HTTP path (the
// header replaced), not copied as bytes to the app: from outside the mesh
// (permissive) and through it.
func TestSlowRequestLineXFCC(t *testing.T) {
	const forged = "URI=spiffe://cluster.local/ns/kube-system/sa/admin"
	rest := "ET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: " + forged + "\r\n\r\n"
	t.Run("plaintext inbound", func(t *testing.T) {
		e := newMeshEnv(t, meshOpts{})
		app := newHTTPApp(t)
		h := handleOne(t, e.in, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), app.addr.Port()))
		io.WriteString(h.client, "G")
		time.Sleep(1500 * time.Millisecond) // past the default 1 s detection timeout
		if got := doHTTP(t, h.client, bufio.NewReader(h.client), rest); got != "200 GET /x 0" {
			t.Errorf("response = %q", got)
		}
		if v := app.next(t).Header.Values("X-Forwarded-Client-Cert"); len(v) != 0 {
			t.Errorf("app saw XFCC %q from a plaintext client whose first byte came alone", v)
		}
	})
	t.Run("through the mesh", func(t *testing.T) {
		e := newMeshEnv(t, meshOpts{})
		app := newHTTPApp(t)
		h := handleOne(t, e.out, app.addr)
		io.WriteString(h.client, "G")
		time.Sleep(1500 * time.Millisecond)
		if got := doHTTP(t, h.client, bufio.NewReader(h.client), rest); got != "200 GET /x 0" {
			t.Errorf("response = %q", got)
		}
		want := "By=" + serverID.String() + ";URI=" + clientID.String()
		if v := app.next(t).Header.Values("X-Forwarded-Client-Cert"); len(v) != 1 || v[0] != want {
			t.Errorf("app saw XFCC %q through the mesh; want [%s]", v, want)
		}
	})
}
