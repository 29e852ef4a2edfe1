package netfilter

import "testing"

func TestLiveMode(t *testing.T) {
	h, _ := openNS(t)
	if _, ok, err := h.LiveMode(); err != nil || ok {
		t.Fatalf("LiveMode with no table = ok %v, err %v; want not ok, nil", ok, err)
	}
	for _, mode := range []Mode{ModeRedirect, ModeTProxy, ModeRedirect} {
		c := Config{Mode: mode, OutboundPort: 4140, InboundPort: 4143, ProxyUID: 2102, ProxyGID: -1, IPv6: true}
		if err := h.Apply(c); err != nil {
			t.Fatalf("Apply(%s): %v", mode, err)
		}
		got, ok, err := h.LiveMode()
		if err != nil || !ok || got != mode {
			t.Errorf("LiveMode after applying %s = %q, %v, %v; want %s", mode, got, ok, err, mode)
		}
	}
}
