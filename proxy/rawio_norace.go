//go:build !race

package proxy

// raceRead and raceWrite annotate raw I/O for the race detector; without
// it they do nothing (rawio_race.go).
func raceRead([]byte, int) {}
func raceWrite([]byte)     {}
