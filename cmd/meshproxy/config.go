package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Settings of a subcommand are its flags. The same names are the keys of
// the YAML config file, and, upper-cased with '-' as '_' and prefixed
// MESHPROXY_, the environment variables. Each source overrides the one
// before it: defaults, then the file, then the environment, then flags.

// envName returns the environment variable for a setting.
func envName(setting string) string {
	return "MESHPROXY_" + strings.ToUpper(strings.ReplaceAll(setting, "-", "_"))
}

// layerConfig applies the config file (when path is not empty) and the
// environment to fs, after fs has parsed the command line. Settings given as
// flags keep their flag value. Settings named in skip (such as "config"
// itself) cannot come from the file. getenv is os.Getenv outside tests.
func layerConfig(fs *flag.FlagSet, path string, getenv func(string) string, skip ...string) error {
	fromFlags := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { fromFlags[f.Name] = true })
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}

	if path != "" {
		values, err := readConfigFile(path)
		if err != nil {
			return err
		}
		keys := make([]string, 0, len(values))
		for k := range values {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v := values[k]
			f := fs.Lookup(k)
			if f == nil || skipped[k] {
				names := settingNames(fs, skipped)
				if m := closestName(k, names); m != "" {
					return fmt.Errorf("config %s: line %d: unknown setting %q: did you mean %s?", path, v.line, k, m)
				}
				return fmt.Errorf("config %s: line %d: unknown setting %q (known: %s)", path, v.line, k, strings.Join(names, ", "))
			}
			if fromFlags[k] {
				continue
			}
			if err := fs.Set(k, v.value); err != nil {
				return fmt.Errorf("config %s: line %d: setting %q: %w", path, v.line, k, valueError(f, v.value, err))
			}
		}
	}

	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if fromFlags[f.Name] || skipped[f.Name] {
			return
		}
		v := getenv(envName(f.Name))
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment %s: %w", envName(f.Name), valueError(f, v, err)))
		}
	})
	return errors.Join(errs...)
}

// valueError explains a value that setting f refused: the value, and the
// form f's type takes (the flag package says only "parse error" for its
// own types; the custom ones explain themselves).
func valueError(f *flag.Flag, value string, err error) error {
	hint := ""
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			hint = "a duration such as 10s, 500ms or 1m30s"
		case bool:
			hint = "true or false"
		case int, int64:
			hint = "a whole number"
		case uint, uint64:
			hint = "a whole number, 0 or more"
		case float64:
			hint = "a number such as 0.5"
		}
	}
	if hint == "" {
		return fmt.Errorf("value %q: %w", value, err)
	}
	return fmt.Errorf("value %q: want %s (%w)", value, hint, err)
}

// configValue is one setting of the config file: its value as the string
// a flag would take, and its line.
type configValue struct {
	value string
	line  int
}

// readConfigFile reads a YAML mapping of setting names to scalars or lists
// of scalars, and returns each value as the string a flag would take
// (lists joined with commas).
func readConfigFile(path string) (map[string]configValue, error) {
	data, err := readFileLimited(path, maxConfigFileBytes)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var doc map[string]yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]configValue{}, nil
		}
		return nil, fmt.Errorf("config %s: not a YAML mapping of settings: %w", path, err)
	}
	// Settings after a "---" would be silently dropped: refuse them.
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, fmt.Errorf("config %s: after the settings: %w", path, err)
	case len(extra.Content) > 0 && !(extra.Content[0].Kind == yaml.ScalarNode && extra.Content[0].Tag == "!!null"):
		return nil, fmt.Errorf("config %s: line %d: a second YAML document: the settings must be one mapping (remove the --- before it)", path, extra.Line)
	}
	out := make(map[string]configValue, len(doc))
	for k, n := range doc {
		switch n.Kind {
		case yaml.ScalarNode:
			out[k] = configValue{n.Value, n.Line}
		case yaml.SequenceNode:
			parts := make([]string, 0, len(n.Content))
			for _, item := range n.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("config %s: line %d: setting %q: list items must be plain values", path, item.Line, k)
				}
				parts = append(parts, item.Value)
			}
			out[k] = configValue{strings.Join(parts, ","), n.Line}
		default:
			return nil, fmt.Errorf("config %s: line %d: setting %q: want a value or a list of values", path, n.Line, k)
		}
	}
	return out, nil
}

// closestName returns the name of names that key most likely misspells
// (another case, '_' for '-', up to two letters wrong), or "".
func closestName(key string, names []string) string {
	norm := strings.ReplaceAll(strings.ToLower(key), "_", "-")
	best, bestDist := "", 3
	for _, n := range names {
		if n == norm {
			return n
		}
		if d := editDistance(norm, n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func settingNames(fs *flag.FlagSet, skipped map[string]bool) []string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if !skipped[f.Name] {
			names = append(names, f.Name)
		}
	})
	return names
}

// printEffective writes settings as a YAML mapping, in name order, in the
// form the config file takes (lists as YAML lists).
func printEffective(w io.Writer, settings map[string]string) error {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	names := make([]string, 0, len(settings))
	for k := range settings {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := settings[k]
		key := &yaml.Node{Kind: yaml.ScalarNode, Value: k}
		var val *yaml.Node
		if strings.Contains(v, ",") {
			val = &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
			for _, item := range strings.Split(v, ",") {
				val.Content = append(val.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: item})
			}
		} else {
			val = &yaml.Node{Kind: yaml.ScalarNode, Value: v}
		}
		doc.Content = append(doc.Content, key, val)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("printing the effective config: %w", err)
	}
	return enc.Close()
}

// maxConfigFileBytes bounds a config or routes file (a Kubernetes
// ConfigMap holds at most 1 MiB): parsing YAML holds every node in
// memory, several times the file's size.
const maxConfigFileBytes = 1 << 20

// readFileLimited reads a file of at most max bytes; a larger one is an
// error naming it (read through a limit: a pipe or device has no size).
func readFileLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes, the limit of a config or routes file (routes may be split into files of a directory)", path, max)
	}
	return data, nil
}

// unknownEnvironment returns a warning for each MESHPROXY_ variable of
// environ ("NAME=value" entries) that names no setting of fs: a misspelt
// one would otherwise be silently ignored. Kubernetes' service links for
// a Service named meshproxy (MESHPROXY_SERVICE_HOST, MESHPROXY_PORT_...)
// are not settings and pass. Warnings, not errors: such a variable may
// be meant for another program.
func unknownEnvironment(environ []string, fs *flag.FlagSet) []string {
	known := map[string]string{} // environment name -> setting
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "check-config" {
			return // a flag only: MESHPROXY_CHECK_CONFIG is not read
		}
		known[envName(f.Name)] = f.Name
		names = append(names, f.Name)
	})
	var warnings []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "MESHPROXY_") || known[name] != "" ||
			strings.HasPrefix(name, "MESHPROXY_SERVICE_") || name == "MESHPROXY_PORT" || strings.HasPrefix(name, "MESHPROXY_PORT_") {
			continue
		}
		w := fmt.Sprintf("environment %s is not a setting and is ignored", name)
		if m := closestName(strings.TrimPrefix(name, "MESHPROXY_"), names); m != "" {
			w += fmt.Sprintf(": did you mean %s?", envName(m))
		}
		warnings = append(warnings, w)
	}
	sort.Strings(warnings)
	return warnings
}
