package identity

import (
	"go/parser"
	"go/token"
	"testing"
)

func TestParseID(t *testing.T) {
	good := []string{
		"spiffe://cluster.local/ns/default/sa/web",
		"spiffe://example.org/ns/a-b_c.d/sa/X9",
	}
	for _, s := range good {
		id, err := ParseID(s)
		if err != nil {
			t.Errorf("ParseID(%q) error %v; want nil", s, err)
			continue
		}
		if id.String() != s || id.URL().String() != s {
			t.Errorf("round trip of %q gave String %q URL %q", s, id.String(), id.URL())
		}
	}
	bad := []string{
		"",
		"http://cluster.local/ns/default/sa/web",
		"spiffe://cluster.local",
		"spiffe://cluster.local/",
		"spiffe://cluster.local/ns/default",
		"spiffe://cluster.local/ns/default/sa/web/",
		"spiffe://cluster.local/ns/default/sa/web/extra",
		"spiffe://cluster.local/sa/web/ns/default",
		"spiffe://cluster.local/ns//sa/web",
		"spiffe://cluster.local/ns/../sa/web",
		"spiffe://Cluster.local/ns/default/sa/web",
		"spiffe://cluster.local:443/ns/default/sa/web",
		"spiffe://user@cluster.local/ns/default/sa/web",
		"spiffe://cluster.local/ns/default/sa/web?x=1",
		"spiffe://cluster.local/ns/default/sa/web#f",
		"spiffe://cluster.local/ns/def%41ult/sa/web",
		"spiffe:///ns/default/sa/web",
	}
	for _, s := range bad {
		if id, err := ParseID(s); err == nil {
			t.Errorf("ParseID(%q) = %v, nil; want an error", s, id)
		}
	}
}

// TestPackageDoc keeps the package comment in place.
func TestPackageDoc(t *testing.T) {
	pkgs, err := parser.ParseDir(token.NewFileSet(), ".", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range pkgs {
		docs := 0
		for _, f := range p.Files {
			if f.Doc != nil {
				docs++
			}
		}
		if name == "identity" && docs != 1 {
			t.Errorf("package %s has %d package doc comments; want exactly 1", name, docs)
		}
	}
}
