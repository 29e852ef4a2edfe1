package proxy

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
)

// DefaultClusterDomain is the DNS suffix of service names when a
// RouteTable gives none.
const DefaultClusterDomain = "cluster.local"

// lookup finds the routes of the service an authority names, spelled as
// the application wrote it: web, web.demo, web.demo.svc or the full
// name, with or without a port. Names are expanded as a pod's resolv.conf
// search list would (ns.svc.<domain>, svc.<domain>, <domain>) with ns the
// proxy's own namespace; with no namespace known, a bare name matches
// when exactly one service of the table has it. A route for the exact
// port wins over one for any port (key port 0).
func (t *RouteTable) lookup(host string, port uint16, ns string) *ServiceRoutes {
	if t == nil || len(t.Services) == 0 || host == "" {
		return nil
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	domain := strings.Trim(strings.ToLower(t.ClusterDomain), ".")
	if domain == "" {
		domain = DefaultClusterDomain
	}
	var cands []string
	if ns != "" {
		cands = append(cands, host+"."+ns+".svc."+domain)
	}
	cands = append(cands, host+".svc."+domain, host+"."+domain, host)
	for _, c := range cands {
		if sr := t.Services[ServiceKey(c, port)]; sr != nil {
			return sr
		}
		if sr := t.Services[ServiceKey(c, 0)]; sr != nil {
			return sr
		}
	}
	if ns != "" || strings.Contains(host, ".") {
		return nil
	}
	var found *ServiceRoutes
	for _, sr := range t.Services {
		if strings.EqualFold(sr.Name, host) && (sr.Port == port || sr.Port == 0) {
			if found != nil && found != sr && !strings.EqualFold(found.Namespace, sr.Namespace) {
				return nil // ambiguous: the app's namespace would decide
			}
			if found == nil || sr.Port == port {
				found = sr
			}
		}
	}
	return found
}

// match returns the first rule of sr that accepts r, or nil.
func (sr *ServiceRoutes) match(r *http.Request) *RouteRule {
	for i := range sr.Rules {
		rule := &sr.Rules[i]
		if len(rule.Matches) == 0 {
			return rule
		}
		for j := range rule.Matches {
			if rule.Matches[j].accepts(r) {
				return rule
			}
		}
	}
	return nil
}

// accepts reports whether every condition of m holds for r.
func (m *RouteMatch) accepts(r *http.Request) bool {
	if m.Path != nil && !m.Path.accepts(r.URL.Path) {
		return false
	}
	if m.Method != "" && m.Method != r.Method {
		return false
	}
	for _, h := range m.Headers {
		vs := r.Header.Values(h.Name)
		if strings.EqualFold(h.Name, "Host") {
			// net/http moves the Host header into Request.Host.
			vs = []string{r.Host}
		}
		ok := false
		for _, v := range vs {
			if v == h.Value {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// accepts matches a path with Gateway API semantics: a prefix matches
// whole segments (/foo matches /foo and /foo/bar, not /foobar).
func (p *PathMatch) accepts(path string) bool {
	if path == "" {
		path = "/"
	}
	switch p.Type {
	case PathExact:
		return path == p.Value
	case PathPrefix:
		v := strings.TrimSuffix(p.Value, "/")
		if v == "" {
			return true
		}
		return path == v || strings.HasPrefix(path, v+"/")
	}
	return false
}

// pickBackend chooses one of the rule's backends by weight; ok is false
// when every weight is 0. A rule without backends returns nil, true: the
// parent service itself.
func (rule *RouteRule) pickBackend() (b *WeightedBackend, ok bool) {
	if len(rule.Backends) == 0 {
		return nil, true
	}
	total := 0
	for _, be := range rule.Backends {
		if be.Weight > 0 {
			total += be.Weight
		}
	}
	if total == 0 {
		return nil, false
	}
	n := rand.IntN(total)
	for i := range rule.Backends {
		w := rule.Backends[i].Weight
		if w <= 0 {
			continue
		}
		if n < w {
			return &rule.Backends[i], true
		}
		n -= w
	}
	return &rule.Backends[len(rule.Backends)-1], true // not reached
}

// fqdn is the backend's DNS name in a cluster domain.
func (b *WeightedBackend) fqdn(domain string) string {
	if domain == "" {
		domain = DefaultClusterDomain
	}
	return b.Name + "." + b.Namespace + ".svc." + strings.Trim(domain, ".")
}

// routeName names a rule of sr for logs: namespace/name:port/rule.
func (sr *ServiceRoutes) routeName(rule *RouteRule) string {
	s := sr.Namespace + "/" + sr.Name
	if sr.Port != 0 {
		s += ":" + strconv.Itoa(int(sr.Port))
	}
	if rule != nil {
		s += "/" + rule.Name
	}
	return s
}
