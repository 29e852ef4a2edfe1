package netfilter

import (
	"strings"
	"testing"
)

// FuzzParsePortRanges: any input fails or gives ranges within 1-65535
// whose rendering parses back to the same ranges.
func FuzzParsePortRanges(f *testing.F) {
	for _, s := range []string{"4190,4191", "8000-8100", "", "0", "65536", "1-", "-5", "5-1", " 80 , 443 ", "1,1,1", "1-65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParsePortRanges(s)
		if err != nil {
			return
		}
		var parts []string
		for _, r := range rs {
			if r.First == 0 || r.First > r.Last {
				t.Fatalf("ParsePortRanges(%q) gave bad range %+v", s, r)
			}
			parts = append(parts, r.String())
		}
		again, err := ParsePortRanges(strings.Join(parts, ","))
		if err != nil || len(again) != len(rs) {
			t.Fatalf("re-parsing %v: %v, %v", parts, again, err)
		}
	})
}

// FuzzParseSubnets: any input fails or gives canonical prefixes.
func FuzzParseSubnets(f *testing.F) {
	for _, s := range []string{"198.18.0.0/15", "2001:2::/48", "198.18.0.1/24", "1.2.3.4", "::/0", "", "300.0.0.0/8", "fe80::1%eth0/64"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParseSubnets(s)
		if err != nil {
			return
		}
		for _, p := range ps {
			if !p.IsValid() || p != p.Masked() {
				t.Fatalf("ParseSubnets(%q) gave non-canonical %v", s, p)
			}
		}
	})
}
