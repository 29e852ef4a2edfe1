package balancer

import "errors"

// Sentinel errors. Callers branch on them with errors.Is.
var (
	// ErrNotFound means the host has no addresses in DNS: every candidate
	// name (after search-list expansion) answered NXDOMAIN or had no A/AAAA
	// records, or the host is an IP literal and so is not a name to
	// discover. The proxy should send the request to its original
	// destination unchanged.
	ErrNotFound = errors.New("balancer: name not found")

	// ErrNoEndpoints means a service has an empty endpoint set.
	ErrNoEndpoints = errors.New("balancer: no endpoints")

	// ErrClosed is returned by a Discovery, Balancer or Pool after Close.
	ErrClosed = errors.New("balancer: closed")
)
