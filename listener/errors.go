package listener

import "errors"

// ErrLoop reports a connection whose original destination is the listener
// itself: forwarding it would connect the proxy back to itself forever.
// Accept refuses (closes) such connections and counts them in
// Stats.LoopsRefused.
var ErrLoop = errors.New("connection loops back to the proxy listener")

// ErrNoOriginalDst reports a connection whose original destination cannot be
// recovered, typically a connection made straight to the listener port
// without passing through the interception rules (no NAT entry). Accept
// closes such connections and counts them in Stats.NoOriginalDst.
var ErrNoOriginalDst = errors.New("original destination not available")
