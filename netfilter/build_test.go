package netfilter

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/netfilter")

// defaultConfig is what "meshproxy init --proxy-uid 2102" asks for.
func defaultConfig() Config {
	return Config{
		Mode:                 ModeRedirect,
		ProxyUID:             2102,
		ProxyGID:             -1,
		InboundPortsToIgnore: []PortRange{{4190, 4190}, {4191, 4191}},
		IPv6:                 true,
	}
}

func mustSubnets(s string) []netip.Prefix {
	p, err := ParseSubnets(s)
	if err != nil {
		panic(err)
	}
	return p
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    func() Config
	}{
		{"redirect-default", defaultConfig},
		{"redirect-full", func() Config {
			c := defaultConfig()
			c.InboundPortsToIgnore = []PortRange{{4190, 4191}, {22, 22}}
			c.OutboundPortsToIgnore = []PortRange{{25, 25}, {3306, 3306}, {5432, 5433}}
			c.PortsToRedirect = []PortRange{{80, 80}, {8000, 8100}, {8080, 8080}}
			c.SubnetsToIgnore = mustSubnets("198.18.0.0/16,198.19.7.1,2001:2::/48,2001:2:0:1::/64")
			return c
		}},
		{"tproxy-default", func() Config { c := defaultConfig(); c.Mode = ModeTProxy; return c }},
		{"tproxy-ipv6-off", func() Config {
			c := defaultConfig()
			c.Mode = ModeTProxy
			c.IPv6 = false
			c.SubnetsToIgnore = mustSubnets("198.18.0.0/15,2001:2::/48")
			return c
		}},
		{"redirect-ipv6-off", func() Config { c := defaultConfig(); c.IPv6 = false; return c }},
		{"redirect-gid-only", func() Config { c := defaultConfig(); c.ProxyUID = -1; c.ProxyGID = 2102; return c }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Build(tc.c())
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			got := r.Render()
			if again, _ := Build(tc.c()); again.Render() != got {
				t.Fatal("Render is not stable across two Builds")
			}
			path := filepath.Join("..", "testdata", "netfilter", tc.name+".nft")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("reading golden file (run go test ./netfilter -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("Render() differs from %s (run with -update if intended):\n%s", path, got)
			}
		})
	}
}

func TestBuildShape(t *testing.T) {
	c := defaultConfig()
	c.IPv6 = false
	r, err := Build(c)
	if err != nil {
		t.Fatal(err)
	}
	out := r.Render()
	for _, want := range []string{
		"meta nfproto ipv6 return",
		"tcp dport @inbound-ports-to-ignore return",
		"meta skuid 2102 return",
		`oifname "lo" return`,
		"redirect to :4143",
		"redirect to :4140",
		"elements = { 4190-4191 }",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Render() lacks %q:\n%s", want, out)
		}
	}
	for _, absent := range []string{"skgid", "ports-to-redirect", "subnets-to-ignore", "ip rule"} {
		if strings.Contains(out, absent) {
			t.Errorf("Render() has %q, which this config does not ask for", absent)
		}
	}
	if len(r.Routing) != 0 {
		t.Errorf("redirect mode Routing = %v; want none", r.Routing)
	}

	c.Mode = ModeTProxy
	c.IPv6 = true
	r, _ = Build(c)
	if len(r.Routing) != 2 {
		t.Errorf("tproxy Routing = %v; want v4 and v6", r.Routing)
	}
}

func TestValidate(t *testing.T) {
	ok := defaultConfig()
	for _, tc := range []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"no proxy user", func(c *Config) { c.ProxyUID, c.ProxyGID = -1, -1 }, "proxy UID or GID is required"},
		{"bad mode", func(c *Config) { c.Mode = "tproxi" }, `unknown mode "tproxi"`},
		{"same ports", func(c *Config) { c.InboundPort, c.OutboundPort = 4140, 4140 }, "two different ports"},
		{"reversed range", func(c *Config) { c.PortsToRedirect = []PortRange{{9, 3}} }, "invalid port range 9-3"},
		{"reserved table", func(c *Config) { c.RouteTable = 254 }, "reserved"},
		{"root proxy uid", func(c *Config) { c.ProxyUID = 0 }, "proxy UID 0 is root"},
		{"root proxy gid", func(c *Config) { c.ProxyUID, c.ProxyGID = -1, 0 }, "proxy GID 0 is root"},
		{"zero config", func(c *Config) { *c = Config{} }, "proxy UID 0 is root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.modify(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v; want error containing %q", err, tc.want)
			}
			if _, err := Build(c); err == nil {
				t.Error("Build accepted an invalid config")
			}
		})
	}
	c := ok
	c.ProxyUID = -1
	if err := c.Validate(); !errors.Is(err, ErrNoProxyUser) {
		// gid unset too in defaultConfig
		t.Errorf("Validate() = %v; want ErrNoProxyUser", err)
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate(default) = %v", err)
	}
}

func TestParsePortRanges(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []PortRange
		wantErr string
	}{
		{"", nil, ""},
		{"4190,4191", []PortRange{{4190, 4190}, {4191, 4191}}, ""},
		{" 80 , 8000-8100 ", []PortRange{{80, 80}, {8000, 8100}}, ""},
		{"70000", nil, `port "70000" out of range 1-65535`},
		{"0", nil, `port "0" out of range 1-65535`},
		{"http", nil, `port "http" is not a number`},
		{"90-80", nil, "reversed"},
		{"80,,81", nil, "empty port"},
		{"80-", nil, "not a number"},
	} {
		got, err := ParsePortRanges(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParsePortRanges(%q) error = %v; want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParsePortRanges(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSubnets(t *testing.T) {
	got, err := ParseSubnets("198.18.0.1/15, 2001:2::/48,198.19.0.9")
	want := []netip.Prefix{
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("2001:2::/48"),
		netip.MustParsePrefix("198.19.0.9/32"),
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ParseSubnets = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"198.18.0.0/33", "not-an-ip", "198.18.0.0/15,", "::ffff:198.18.0.0/112"} {
		if _, err := ParseSubnets(bad); err == nil {
			t.Errorf("ParseSubnets(%q) succeeded; want an error", bad)
		}
	}
	if got, err := ParseSubnets(""); got != nil || err != nil {
		t.Errorf(`ParseSubnets("") = %v, %v; want nil, nil`, got, err)
	}
}

func TestSetElements(t *testing.T) {
	s := Set{Type: SetPorts, Ports: normalizePorts([]PortRange{{4191, 4191}, {4190, 4190}, {65000, 65535}})}
	got := s.elements()
	if len(got) != 3 || string(got[0].Key) != "\x10\x5e" || string(got[1].Key) != "\x10\x60" || !got[1].IntervalEnd || got[2].IntervalEnd {
		t.Errorf("elements = %+v; want 4190, end 4192, 65000 (open)", got)
	}
	v4 := Set{Type: SetIPv4, Prefixes: normalizePrefixes(mustSubnets("198.18.0.0/16,198.19.0.0/16,198.18.5.0/24,0.0.0.0/0"), false)}
	if got := v4.elements(); len(got) != 1 || string(got[0].Key) != "\x00\x00\x00\x00" {
		t.Errorf("0.0.0.0/0 elements = %+v; want a single open interval from 0", got)
	}
	adj := Set{Type: SetIPv4, Prefixes: normalizePrefixes(mustSubnets("198.18.0.0/16,198.19.0.0/16"), false)}
	if got := adj.elements(); len(got) != 2 || string(got[1].Key) != "\xc6\x14\x00\x00" {
		t.Errorf("adjacent prefixes elements = %+v; want one merged interval 198.18.0.0-198.20.0.0", got)
	}
}
