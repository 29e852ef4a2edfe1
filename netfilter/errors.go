package netfilter

import "errors"

// ErrDrift is wrapped by the error Check returns when the live ruleset or
// policy routing differs from the wanted one. The error text lists the
// differences; callers branch with errors.Is(err, ErrDrift).
var ErrDrift = errors.New("live interception rules differ from the wanted ones")

// ErrNoProxyUser is returned by Config.Validate when neither ProxyUID nor
// ProxyGID is set: without an exemption for the proxy's own traffic, its
// upstream connections would be captured again and loop back into it.
var ErrNoProxyUser = errors.New("a proxy UID or GID is required: without it the proxy's own connections would loop back into it")
