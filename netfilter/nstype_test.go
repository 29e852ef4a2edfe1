package netfilter

import (
	"os"
	"strings"
	"testing"
)

// A namespace file of another type (mount, UTS, ...) passes the nsfs check
// but is not a network namespace: Open must say so, not fail later with a
// bare "invalid argument" from setns.
func TestOpenOtherNamespaceType(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: opens namespace files")
	}
	for _, p := range []string{"/proc/self/ns/uts", "/proc/self/ns/mnt"} {
		h, err := Open(p)
		if err == nil {
			h.Close()
			t.Errorf("Open(%q) succeeded; want a not-a-network-namespace error", p)
			continue
		}
		if !strings.Contains(err.Error(), "not a network namespace") {
			t.Errorf("Open(%q) = %v; want it to say it is not a network namespace", p, err)
		}
	}
}
