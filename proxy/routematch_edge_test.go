package proxy

import (
	"net/http"
	"testing"
)

// TestRouteMatchHostHeader: a header match on Host sees the request's
// host. net/http moves the Host header out of Header into Request.Host,
// so a lookup in Header alone never matched it.
func TestRouteMatchHostHeader(t *testing.T) {
	r, err := http.NewRequest("GET", "http://web.demo:8080/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		m    RouteMatch
		want bool
	}{
		{RouteMatch{Headers: []HeaderMatch{{"Host", "web.demo:8080"}}}, true},
		{RouteMatch{Headers: []HeaderMatch{{"host", "web.demo:8080"}}}, true},
		{RouteMatch{Headers: []HeaderMatch{{"Host", "api"}}}, false},
	} {
		if got := tc.m.accepts(r); got != tc.want {
			t.Errorf("%+v accepts Host %q = %v; want %v", tc.m, r.Host, got, tc.want)
		}
	}
}
