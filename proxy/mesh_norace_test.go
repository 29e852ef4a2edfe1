//go:build !race

package proxy

// raceEnabled reports a -race build (see mesh_race_test.go).
const raceEnabled = false
