package netfilter

import (
	"strconv"
	"strings"
	"testing"
)

// Re-running init with another --tproxy-mark or --tproxy-table replaces
// the policy routing instead of adding a second set beside the first, and
// --remove with the default mark and table still removes the routing of
// the mark the live table uses.
func TestMarkOrTableChange(t *testing.T) {
	custom := func(mark uint32, table int) Config {
		c := testConfig(ModeTProxy)
		c.Mark, c.RouteTable = mark, table
		return c
	}
	for _, tc := range []struct {
		name  string
		first Config
	}{
		{"mark and table", custom(0x100, 140)},
		{"mark only", custom(0x100, DefaultRouteTable)},
		{"table only", custom(DefaultMark, 140)},
	} {
		t.Run(tc.name+"/reapply", func(t *testing.T) {
			h, _ := openNS(t)
			if err := h.Apply(tc.first); err != nil {
				t.Fatal(err)
			}
			next := testConfig(ModeTProxy)
			if err := h.Apply(next); err != nil {
				t.Fatal(err)
			}
			if err := h.Check(next); err != nil {
				t.Errorf("Check: %v", err)
			}
			assertOnlyRouting(t, h, next)
			// Back to redirect: no policy routing at all.
			if err := h.Apply(testConfig(ModeRedirect)); err != nil {
				t.Fatal(err)
			}
			assertOnlyRouting(t, h, Config{})
		})
		t.Run(tc.name+"/reapply-redirect", func(t *testing.T) {
			h, _ := openNS(t)
			if err := h.Apply(tc.first); err != nil {
				t.Fatal(err)
			}
			if err := h.Apply(testConfig(ModeRedirect)); err != nil {
				t.Fatal(err)
			}
			assertOnlyRouting(t, h, Config{})
		})
		t.Run(tc.name+"/remove", func(t *testing.T) {
			h, _ := openNS(t)
			if err := h.Apply(tc.first); err != nil {
				t.Fatal(err)
			}
			if err := h.Remove(testConfig(ModeTProxy)); err != nil {
				t.Fatal(err)
			}
			if left := dump(t, h) + routingDump(t, h, 140); left != "" {
				t.Errorf("Remove left state behind:\n%s", left)
			}
		})
	}
}

// assertOnlyRouting fails unless the only marked policy rules and the only
// routes of tables 133 and 140 are those c (in tproxy mode) wants; a
// zero c wants none.
func assertOnlyRouting(t *testing.T, h *Handle, c Config) {
	t.Helper()
	got := routingDump(t, h, 140)
	if c.Mode == "" {
		if got != "" {
			t.Errorf("policy routing left behind:\n%s", got)
		}
		return
	}
	if strings.Count(got, "iprule") != 2 || strings.Count(got, "route fam") != 2 {
		t.Errorf("want one rule and one route per family, have:\n%s", got)
	}
}

// routingDump lists the marked policy rules and the routes of the default
// route table and of table extra, as dump does.
func routingDump(t *testing.T, h *Handle, extra int) string {
	t.Helper()
	var b strings.Builder
	for _, v6 := range []bool{false, true} {
		rules, err := h.nl.RuleList(familyOf(v6))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if r.Mark != 0 {
				b.WriteString(famName(v6) + " iprule prio " + strconv.Itoa(r.Priority) + " mark " + strconv.Itoa(int(r.Mark)) + " table " + strconv.Itoa(r.Table) + "\n")
			}
		}
		for _, table := range []int{DefaultRouteTable, extra} {
			routes, err := h.localRoutes(v6, table)
			if err != nil {
				t.Fatal(err)
			}
			for range routes {
				b.WriteString(famName(v6) + " route fam table " + strconv.Itoa(table) + "\n")
			}
		}
	}
	return b.String()
}
