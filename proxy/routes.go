package proxy

import (
	"strconv"
	"time"
)

// This file holds the traffic policy as data: the routes of HTTPRoute
// documents, already parsed and validated (by the binary's config
// loading), in the form the HTTP outbound applies per request. A
// RouteTable is immutable once built; a reload builds a new one and swaps
// it in whole (HTTPConfig.Routes), so requests in flight keep the table
// they started with.

// RouteTable maps services to their routes. The zero value (and nil)
// routes nothing: every request goes to its authority as without routes.
type RouteTable struct {
	// Services is keyed by ServiceKey(fqdn, port), e.g.
	// "web.demo.svc.cluster.local:8080". A route whose parent reference
	// has no port applies to every port: key ServiceKey(fqdn, 0).
	Services map[string]*ServiceRoutes
	// ClusterDomain is the DNS suffix of service names ("cluster.local"),
	// used to match an authority however the app spelled it (web,
	// web.demo, web.demo.svc, the full name; with or without the port).
	ClusterDomain string
}

// ServiceKey is the RouteTable key of a service name and port (0 = any
// port).
func ServiceKey(fqdn string, port uint16) string {
	return fqdn + ":" + strconv.Itoa(int(port))
}

// ServiceRoutes are the rules that govern one service's traffic, in the
// order Gateway API precedence gives them (the loader sorts them: exact
// path before longer prefix before shorter prefix, then more header
// matches first, then document order).
type ServiceRoutes struct {
	// Name, Namespace and Port identify the parent Service.
	Name, Namespace string
	Port            uint16
	// Rules are tried in order; the first whose matches accept the
	// request governs it. A request no rule matches goes to the service
	// itself with no policy.
	Rules []RouteRule
	// Source says where the routes came from ("routes.yaml, document 2,
	// HTTPRoute demo/web-split"), for logs and /debug/state.
	Source string
}

// RouteRule is one rules[] entry of an HTTPRoute.
type RouteRule struct {
	// Name is the rule's name if it has one, else "rule-<index>", for
	// metrics and logs.
	Name string
	// Matches: the rule applies when any match accepts the request; no
	// matches accepts every request.
	Matches []RouteMatch
	// Backends share the rule's requests by weight; each is its own
	// service (DNS name and endpoints). Empty means the parent service.
	Backends []WeightedBackend
	// Timeouts of the rule; zero fields mean none.
	Timeouts RouteTimeouts
	// Retry, when not nil, retries failed attempts of the rule's requests.
	Retry *RetryPolicy
}

// RouteMatch is one matches[] entry: every condition given must hold.
type RouteMatch struct {
	// Path, when not nil, must match the request path.
	Path *PathMatch
	// Method, when not empty, must equal the request method.
	Method string
	// Headers must all be present with the given values.
	Headers []HeaderMatch
}

// PathMatchType is how a PathMatch compares.
type PathMatchType string

// Path match types of the Gateway API that meshproxy supports.
const (
	PathExact  PathMatchType = "Exact"
	PathPrefix PathMatchType = "PathPrefix"
)

// PathMatch matches the request path.
type PathMatch struct {
	Type  PathMatchType
	Value string
}

// HeaderMatch matches one request header exactly (names are
// case-insensitive).
type HeaderMatch struct {
	Name, Value string
}

// WeightedBackend is one backendRefs[] entry: a Service that receives a
// share of a rule's requests.
type WeightedBackend struct {
	// Name, Namespace and Port of the backend Service; its authority is
	// Name.Namespace.svc.<cluster domain>:Port.
	Name, Namespace string
	Port            uint16
	// Weight is the backend's share relative to its siblings; 0 takes
	// none. A rule whose weights are all 0 answers 500, as the Gateway API
	// says.
	Weight int
}

// RouteTimeouts are a rule's timeouts.
type RouteTimeouts struct {
	// Request bounds the whole request, retries included (504 "timeout").
	Request time.Duration
	// BackendRequest bounds each attempt (per-try timeout).
	BackendRequest time.Duration
}

// RetryPolicy is a rule's retry settings (Gateway API HTTPRouteRetry).
type RetryPolicy struct {
	// Attempts is how many retries after the first attempt.
	Attempts int
	// Codes are response status codes that are retried (e.g. 502, 503,
	// 504); connect errors and reset streams are always retryable.
	Codes []int
	// Backoff is the base delay between attempts (with jitter); zero
	// retries at once.
	Backoff time.Duration
	// NonIdempotent allows retrying requests whose method is not
	// idempotent (POST, PATCH), when the route says so.
	NonIdempotent bool
}
