package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var updateReference = flag.Bool("update-reference", false, "rewrite docs/reference.md from the flag declarations")

// referenceDoc renders every setting of "meshproxy run" and every flag of
// "meshproxy init" from the flag sets the binary really uses.
func referenceDoc() string {
	var b strings.Builder
	b.WriteString("# meshproxy settings reference\n\n")
	b.WriteString("Generated from the code by `go test ./cmd/meshproxy -run TestReferenceDoc -update-reference`;\n")
	b.WriteString("a test fails when this page and the code disagree.\n\n")

	b.WriteString("## `meshproxy run`\n\n")
	b.WriteString("Each setting is a flag (`--name`), a key of the YAML file given by `--config`,\n")
	b.WriteString("and an environment variable. Sources override each other in this order:\n")
	b.WriteString("defaults, then the file, then the environment, then flags. Unknown keys in\n")
	b.WriteString("the file are errors. Lists are comma-separated (a YAML list in the file).\n")
	b.WriteString("`meshproxy run --check-config` validates everything and prints the\n")
	b.WriteString("effective settings without starting the proxy.\n\n")
	b.WriteString("| setting | environment | default | meaning |\n|---|---|---|---|\n")
	var cfg runConfig
	fs, _ := runFlags(&cfg, io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if def == "" {
			def = "—"
		} else {
			def = "`" + def + "`"
		}
		file := ""
		if slices.Contains(fileOnlySettings, f.Name) {
			file = " (flag only)"
		}
		env := "`" + envName(f.Name) + "`"
		if f.Name == "check-config" {
			// A flag only: an environment variable would make every
			// start a check (loadRunConfig reads MESHPROXY_CONFIG, not
			// this).
			env = "—"
		}
		fmt.Fprintf(&b, "| `%s`%s | %s | %s | %s |\n", f.Name, file, env, def, escapeCell(f.Usage))
	})

	b.WriteString("\n## `meshproxy init`\n\n")
	b.WriteString("Flags only (init is a one-shot command).\n\n")
	b.WriteString("| flag | default | meaning |\n|---|---|---|\n")
	ifs, _ := newInitFlagSet()
	ifs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if def == "" {
			def = "—"
		} else {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `--%s` | %s | %s |\n", f.Name, def, escapeCell(f.Usage))
	})
	return b.String()
}

func escapeCell(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// TestReferenceDoc: docs/reference.md documents exactly the settings the
// code declares, with the same defaults and descriptions.
func TestReferenceDoc(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "reference.md")
	want := referenceDoc()
	if *updateReference {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (generate it with -update-reference)", err)
	}
	if string(got) != want {
		t.Errorf("%s is out of date with the flag declarations: run go test ./cmd/meshproxy -run TestReferenceDoc -update-reference", path)
	}
}
