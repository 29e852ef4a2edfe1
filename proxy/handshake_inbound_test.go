package proxy

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMeshInboundSlotWaitBoundedFromArrival: the inbound side's wait for
// the hello and for a handshake slot together end one handshake timeout
// after the connection arrived, when the client (whose own handshake
// deadline started at its connect) has given up; not a whole timeout
// after the hello came. The client here sends its hello late and every
// slot stays busy: the refusal (reason timeout) must come at the
// timeout from arrival, well before hello delay plus timeout.
func TestMeshInboundSlotWaitBoundedFromArrival(t *testing.T) {
	const (
		timeout    = 2 * time.Second
		helloDelay = 1600 * time.Millisecond
		// Halfway between the bound (timeout) and the old one
		// (helloDelay+timeout).
		latest = timeout + helloDelay/2
	)
	e := newMeshEnv(t, meshOpts{inMesh: func(m *Mesh) {
		m.MaxHandshakes = 1
		m.HandshakeTimeout = timeout
	}})
	e.in.mesh.hsSlots <- struct{}{} // every slot busy
	defer e.in.mesh.releaseSlot()

	start := time.Now()
	raw, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(e.meshAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	time.Sleep(helloDelay)
	tc := tls.Client(raw, e.clientMgr.ClientTLSConfig(nil))
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	err = tc.Handshake()
	took := time.Since(start)
	if err == nil {
		t.Fatal("handshake succeeded while every slot was busy")
	}
	if isTimeout(err) {
		t.Fatalf("the server had not closed the connection 10s after the hello: %v", err)
	}
	if took > latest {
		t.Errorf("refused %v after the connection arrived; want about %v (the handshake timeout from arrival), before %v", took.Round(time.Millisecond), timeout, latest)
	}
	waitValue(t, "inbound refused{timeout}", e.inM.refused.WithLabelValues(reasonTimeout), 1)
	if got := testutil.ToFloat64(e.inM.refused.WithLabelValues(reasonHandshake)); got != 0 {
		t.Errorf("refused{handshake} = %v; want 0", got)
	}
}
