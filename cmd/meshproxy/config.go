package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

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
			if fs.Lookup(k) == nil || skipped[k] {
				return fmt.Errorf("config %s: unknown setting %q (known: %s)", path, k, strings.Join(settingNames(fs, skipped), ", "))
			}
			if fromFlags[k] {
				continue
			}
			if err := fs.Set(k, values[k]); err != nil {
				return fmt.Errorf("config %s: setting %q: %w", path, k, err)
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
			errs = append(errs, fmt.Errorf("environment %s: %w", envName(f.Name), err))
		}
	})
	return errors.Join(errs...)
}

// readConfigFile reads a YAML mapping of setting names to scalars or lists
// of scalars, and returns each value as the string a flag would take
// (lists joined with commas).
func readConfigFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	var doc map[string]yaml.Node
	dec := yaml.NewDecoder(f)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]string{}, nil
		}
		return nil, fmt.Errorf("config %s: not a YAML mapping of settings: %w", path, err)
	}
	out := make(map[string]string, len(doc))
	for k, n := range doc {
		switch n.Kind {
		case yaml.ScalarNode:
			out[k] = n.Value
		case yaml.SequenceNode:
			parts := make([]string, 0, len(n.Content))
			for _, item := range n.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("config %s: line %d: setting %q: list items must be plain values", path, item.Line, k)
				}
				parts = append(parts, item.Value)
			}
			out[k] = strings.Join(parts, ",")
		default:
			return nil, fmt.Errorf("config %s: line %d: setting %q: want a value or a list of values", path, n.Line, k)
		}
	}
	return out, nil
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
