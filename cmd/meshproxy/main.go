// Command meshproxy is the single binary of the meshproxy service mesh data
// plane. Each subcommand parses its own flags and wires the library packages
// together; no traffic logic lives here.
//
// Usage:
//
//	meshproxy init [flags]   install the interception ruleset
//	meshproxy run [flags]    run the proxy
//	meshproxy help           list the subcommands
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one subcommand of the binary.
type command struct {
	// summary is the one-line description shown by "meshproxy help".
	summary string
	// run executes the subcommand with the arguments after its name and
	// returns the process exit code.
	run func(args []string, stdout, stderr io.Writer) int
}

// commands holds every subcommand; files register theirs from init.
var commands = map[string]command{}

// register adds a subcommand. It panics on a duplicate name, which is a
// programming error.
func register(name string, c command) {
	if _, dup := commands[name]; dup {
		panic("meshproxy: duplicate command " + name)
	}
	commands[name] = c
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

// dispatch runs the subcommand named by args[0] and returns the exit code.
func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	case "version", "--version":
		fmt.Fprintln(stdout, "meshproxy", version)
		return 0
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "meshproxy: unknown command %q (run \"meshproxy help\" for the list)\n", name)
		return 2
	}
	return c.run(args[1:], stdout, stderr)
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: meshproxy <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "  help       show this list")
	fmt.Fprintln(w, "  version    print the version")
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "meshproxy <command> -h" for a command's flags.`)
}
