package main

import (
	"sort"
	"time"

	"meshproxy/admin"
	"meshproxy/balancer"
	"meshproxy/identity"
	"meshproxy/proxy"
)

// stateListener is one listener in /debug/state.
type stateListener struct {
	Direction     string `json:"direction"`
	Addr          string `json:"addr"`
	Accepted      uint64 `json:"accepted"`
	LoopsRefused  uint64 `json:"loops_refused"`
	NoOriginalDst uint64 `json:"no_original_dst"`
	AcceptErrors  uint64 `json:"accept_errors"`
}

// stateRoute summarises the routes in force for one service.
type stateRoute struct {
	Service string `json:"service"`
	Rules   int    `json:"rules"`
	Source  string `json:"source"`
}

// stateCert describes the current certificate; never the key.
type stateCert struct {
	Identity string    `json:"identity"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

// state is the JSON document of /debug/state.
type state struct {
	Version         string                  `json:"version"`
	Config          map[string]string       `json:"config"`
	Listeners       []stateListener         `json:"listeners"`
	OpenConnections map[string]int          `json:"open_connections"`
	MTLS            bool                    `json:"mtls"`
	Certificate     *stateCert              `json:"certificate,omitempty"`
	Services        []balancer.ServiceState `json:"services"`
	Routes          []stateRoute            `json:"routes,omitempty"`
}

func debugState(cfg runConfig, ls []boundListener, servers map[proxy.Direction]*proxy.Server, mgr *identity.Manager, bal *balancer.Balancer, routes *routeWatcher) any {
	st := state{Version: version, Config: cfg.effective, OpenConnections: map[string]int{}, MTLS: mgr != nil}
	// The token file's path is shown; its content is never read here.
	for _, b := range ls {
		s := b.l.Stats()
		st.Listeners = append(st.Listeners, stateListener{
			Direction: string(b.dir), Addr: b.l.Addr().String(),
			Accepted: s.Accepted, LoopsRefused: s.LoopsRefused, NoOriginalDst: s.NoOriginalDst, AcceptErrors: s.AcceptErrors,
		})
	}
	for dir, srv := range servers {
		st.OpenConnections[string(dir)] = srv.OpenConnections()
	}
	if mgr != nil && mgr.Ready() {
		id, serial, notAfter := mgr.Current()
		st.Certificate = &stateCert{Identity: id.String(), Serial: serial, NotAfter: notAfter.UTC()}
	}
	if bal != nil {
		st.Services = bal.Snapshot()
	}
	if routes != nil {
		if t := routes.Table(); t != nil {
			for key, sr := range t.Services {
				st.Routes = append(st.Routes, stateRoute{Service: key, Rules: len(sr.Rules), Source: sr.Source})
			}
			sort.Slice(st.Routes, func(i, j int) bool { return st.Routes[i].Service < st.Routes[j].Service })
		}
	}
	return st
}

// statusPage gathers what the admin status page shows.
func statusPage(started time.Time, cfg runConfig, ls []boundListener, servers map[proxy.Direction]*proxy.Server, mgr *identity.Manager, bal *balancer.Balancer) admin.Status {
	st := admin.Status{Version: version, Started: started, MTLS: mgr != nil, OpenConnections: map[string]int{}}
	for _, b := range ls {
		s := b.l.Stats()
		st.Listeners = append(st.Listeners, admin.ListenerStatus{
			Direction: string(b.dir), Addr: b.l.Addr().String(), Mode: string(cfg.Mode),
			Accepted: s.Accepted, LoopsRefused: s.LoopsRefused,
		})
	}
	for dir, srv := range servers {
		st.OpenConnections[string(dir)] = srv.OpenConnections()
	}
	if mgr != nil && mgr.Ready() {
		id, serial, notAfter := mgr.Current()
		st.Certificate = &admin.CertStatus{Identity: id.String(), Serial: serial, NotAfter: notAfter}
	}
	if bal != nil {
		for _, svc := range bal.Snapshot() {
			ss := admin.ServiceStatus{Name: svc.Service}
			for _, ep := range svc.Endpoints {
				ss.Endpoints = append(ss.Endpoints, admin.EndpointStatus{
					Addr: ep.Addr, State: ep.State, InFlight: int(ep.InFlight),
					EWMA: time.Duration(ep.EWMAMillis * float64(time.Millisecond)),
				})
			}
			st.Services = append(st.Services, ss)
		}
	}
	return st
}
