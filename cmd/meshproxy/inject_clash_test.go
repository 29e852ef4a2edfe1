package main

import (
	"strings"
	"testing"
)

// TestInjectKeepsAppNamedLikeProxy: a workload that was never injected
// (no meshproxy.io/injected annotation) but has a container or volume of
// its own under one of the names injection uses must not lose it silently;
// inject refuses it with one line naming the clash. An injected workload
// still has its injected parts replaced (TestInjectReinjectWithOtherFlags).
func TestInjectKeepsAppNamedLikeProxy(t *testing.T) {
	pod := func(spec string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n" + spec
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"container", pod("  containers:\n  - name: meshproxy\n    image: example.com/meshproxy-dashboard:1\n"), `container "meshproxy"`},
		{"init container", pod("  initContainers:\n  - name: meshproxy-init\n    image: example.com/setup:1\n  containers:\n  - name: a\n    image: b\n"), `container "meshproxy-init"`},
		{"volume", pod("  containers:\n  - name: a\n    image: b\n    volumeMounts:\n    - name: meshproxy-token\n      mountPath: /t\n  volumes:\n  - name: meshproxy-token\n    secret:\n      secretName: app-token\n"), `volume "meshproxy-token"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, code := injectT(t, []byte(tc.in))
			if code == 0 {
				t.Fatalf("exit 0; want a refusal, the app's own %s is lost in:\n%s", tc.name, out)
			}
			if !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("stderr = %q; want one line naming %s", stderr, tc.want)
			}
		})
	}
}
