//go:build race

package proxy

// raceEnabled: the race detector slows handshake cryptography about
// tenfold, so burst tests open fewer connections.
const raceEnabled = true
