package admin

import (
	_ "embed"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Status is what the binary reports about the running proxy for the
// status page. Every field is optional; the zero value shows a page with
// empty sections.
type Status struct {
	// Version is the proxy's version string.
	Version string
	// Started is when the proxy started. Zero means when the admin server
	// was created.
	Started time.Time
	// Ready and NotReadyReason are ignored on the page, which shows the
	// admin server's own readiness (SetReady, SetNotReady); a provider
	// need not set them.
	Ready          bool
	NotReadyReason string
	// Listeners are the proxy's traffic listeners.
	Listeners []ListenerStatus
	// OpenConnections counts open proxied connections by direction
	// ("outbound", "inbound"). Nil means the page sums the
	// meshproxy_tcp_open_connections gauge by its direction label.
	OpenConnections map[string]int
	// Services are the HTTP services discovered so far, with their
	// endpoints.
	Services []ServiceStatus
	// MTLS reports that the mesh (mutual TLS) is enabled. With a nil
	// Certificate the page then says it is waiting for a certificate;
	// with MTLS false and a nil Certificate it says "mTLS disabled".
	MTLS bool
	// Certificate is the proxy's current leaf certificate, nil if none.
	Certificate *CertStatus
}

// ListenerStatus describes one traffic listener.
type ListenerStatus struct {
	// Direction is "outbound" or "inbound".
	Direction string
	// Addr is the bound address, host:port.
	Addr string
	// Mode is the interception mode ("redirect" or "tproxy"); may be empty.
	Mode string
	// Accepted counts connections accepted.
	Accepted uint64
	// LoopsRefused counts connections refused because they would loop
	// back into the proxy.
	LoopsRefused uint64
}

// ServiceStatus is one discovered HTTP service and its endpoints.
type ServiceStatus struct {
	// Name is the service's authority, e.g. "web.default.svc:8080".
	Name string
	// Endpoints are the service's resolved endpoints.
	Endpoints []EndpointStatus
}

// EndpointStatus is one endpoint of a service, as the balancer sees it.
type EndpointStatus struct {
	// Addr is the endpoint's address, host:port.
	Addr string
	// State is the balancer's word for it ("ready", "failing", ...).
	State string
	// EWMA is the endpoint's peak-EWMA latency estimate.
	EWMA time.Duration
	// InFlight is the number of requests outstanding to it.
	InFlight int
}

// CertStatus describes the proxy's leaf certificate. It holds no secrets.
type CertStatus struct {
	// Identity is the SPIFFE ID the certificate carries.
	Identity string
	// Serial is the certificate's serial number, as text (hex or decimal).
	Serial string
	// NotBefore is when the certificate became valid; zero if unknown.
	// With it the page warns when less than 30% of the lifetime is left
	// (renewal is due at 70%); without it, below one hour.
	NotBefore time.Time
	// NotAfter is when the certificate expires.
	NotAfter time.Time
}

//go:embed status.html
var statusHTML string

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"count": formatCount,
}).Parse(statusHTML))

// statusPage serves GET /: the HTML status page.
func (s *Server) statusPage(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	var st Status
	if s.opts.Status != nil {
		st = s.opts.Status()
	}
	v := s.view(st, now)
	var b strings.Builder
	if err := statusTmpl.Execute(&b, v); err != nil {
		s.log.Error("rendering status page", "err", err)
		http.Error(w, "rendering status page failed; see the proxy's log", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// No scripts, no external anything: only the page's own inline CSS.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
	fmt.Fprint(w, b.String())
}

// pageView is the status page's template data, everything preformatted.
type pageView struct {
	Version        string
	Ready          bool
	NotReadyReason string
	Uptime         string
	StartedAt      string
	Generated      string
	Refresh        int

	Cert     *certView
	MTLS     bool
	LogLevel string

	Traffic     []trafficRow
	TrafficNote string
	// RecentOver and WindowOver are the periods the traffic figures
	// cover, the same for every row.
	RecentOver, WindowOver string

	Listeners []ListenerStatus
	OpenConns []dirCount

	Services []serviceView
}

type certView struct {
	Identity, Serial, NotAfter, Left, Class string
}

type trafficRow struct {
	Kind       string // "HTTP requests" or "TCP connections"
	Unit       string // "requests/s" or "connections/s"
	Recent     string // rate over the recent period
	RecentOver string
	Window     string // rate over the whole window
	WindowOver string
	Events     string // events in the window
	QuantileOf string // "response latency" or "connection duration"
	P50        string
	P90        string
	P99        string
}

type dirCount struct {
	Direction string
	N         int
}

type serviceView struct {
	Name      string
	Endpoints []endpointView
}

type endpointView struct {
	Addr, State, Class, EWMA string
	InFlight                 int
	First                    bool
	Rows                     int
}

func (s *Server) view(st Status, now time.Time) pageView {
	started := st.Started
	if started.IsZero() {
		started = s.started
	}
	reason, _ := s.notReady.Load().(string)
	v := pageView{
		Version:        st.Version,
		Ready:          s.Ready(),
		NotReadyReason: reason,
		Uptime:         formatAge(now.Sub(started)),
		StartedAt:      started.UTC().Format("2006-01-02 15:04:05 UTC"),
		Generated:      now.UTC().Format("2006-01-02 15:04:05 UTC"),
		Refresh:        max(int(s.opts.sampleInterval().Round(time.Second)/time.Second), 1),
		MTLS:           st.MTLS || st.Certificate != nil,
		Listeners:      st.Listeners,
	}
	if v.Version == "" {
		v.Version = "unknown version"
	}
	if s.opts.LogLevel != nil {
		v.LogLevel = levelName(s.opts.LogLevel.Level())
	}
	if c := st.Certificate; c != nil {
		v.Cert = certViewOf(c, now)
	}

	cur := takeSnapshot(s.gatherer, now)
	v.Traffic, v.TrafficNote = s.trafficRows(cur, now)
	if len(v.Traffic) > 0 {
		v.RecentOver, v.WindowOver = v.Traffic[0].RecentOver, v.Traffic[0].WindowOver
	}

	open := st.OpenConnections
	if open == nil {
		open = cur.OpenConns
	}
	for d, n := range open {
		v.OpenConns = append(v.OpenConns, dirCount{Direction: d, N: n})
	}
	slices.SortFunc(v.OpenConns, func(a, b dirCount) int { return strings.Compare(a.Direction, b.Direction) })

	for _, svc := range st.Services {
		sv := serviceView{Name: svc.Name}
		for i, ep := range svc.Endpoints {
			sv.Endpoints = append(sv.Endpoints, endpointView{
				Addr: ep.Addr, State: ep.State, Class: stateClass(ep.State),
				EWMA: formatSeconds(ep.EWMA.Seconds()), InFlight: ep.InFlight,
				First: i == 0, Rows: len(svc.Endpoints),
			})
		}
		v.Services = append(v.Services, sv)
	}
	return v
}

// trafficRows computes the request and connection figures from the kept
// snapshots to cur. note explains an empty result.
func (s *Server) trafficRows(cur snapshot, now time.Time) (rows []trafficRow, note string) {
	if !cur.HasRequests && !cur.HasConns {
		return nil, "no traffic metrics yet"
	}
	recentBase, windowBase, ok := s.rates.bases(now, s.opts.sampleInterval())
	if !ok {
		return nil, "collecting: rates appear after the first metrics sample"
	}
	rReq, rReqOK, rConn, rConnOK := between(recentBase, cur)
	wReq, wReqOK, wConn, wConnOK := between(windowBase, cur)
	if rReqOK && wReqOK {
		rows = append(rows, makeRow("HTTP requests", "requests/s", "response latency", rReq, wReq))
	}
	if rConnOK && wConnOK {
		rows = append(rows, makeRow("TCP connections", "connections/s", "connection duration", rConn, wConn))
	}
	if len(rows) == 0 {
		note = "collecting: rates appear after the first metrics sample"
	}
	return rows, note
}

func makeRow(kind, unit, of string, recent, window traffic) trafficRow {
	return trafficRow{
		Kind: kind, Unit: unit, QuantileOf: of,
		Recent: formatRate(recent.Rate), RecentOver: formatAge(recent.Over),
		Window: formatRate(window.Rate), WindowOver: formatAge(window.Over),
		Events: formatCount(uint64(math.Round(window.Events))),
		P50:    formatQuantile(window.P50), P90: formatQuantile(window.P90), P99: formatQuantile(window.P99),
	}
}

func certViewOf(c *CertStatus, now time.Time) *certView {
	v := &certView{
		Identity: c.Identity,
		Serial:   c.Serial,
		NotAfter: c.NotAfter.UTC().Format("2006-01-02 15:04:05 UTC"),
		Class:    "good",
	}
	left := c.NotAfter.Sub(now)
	switch {
	case left <= 0:
		v.Left, v.Class = "expired "+formatAge(-left)+" ago", "bad"
	default:
		v.Left = formatAge(left) + " left"
		warn := left < time.Hour
		if !c.NotBefore.IsZero() && c.NotAfter.After(c.NotBefore) {
			warn = float64(left) < 0.3*float64(c.NotAfter.Sub(c.NotBefore))
		}
		if warn {
			v.Class = "warn"
		}
	}
	return v
}

// stateClass maps a balancer state word to a CSS class.
func stateClass(state string) string {
	switch strings.ToLower(state) {
	case "ready", "ok", "up", "healthy", "active":
		return "good"
	case "failing", "failed", "down", "unhealthy", "ejected", "unreachable":
		return "bad"
	case "":
		return ""
	}
	return "warn"
}

// formatAge renders d coarsely for people: "45s", "12m 3s", "3h 12m",
// "2d 4h".
func formatAge(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	if d < time.Second {
		return "0s"
	}
	d = d.Round(time.Second)
	days, d := d/(24*time.Hour), d%(24*time.Hour)
	h, d := d/time.Hour, d%time.Hour
	m, d := d/time.Minute, d%time.Minute
	sec := d / time.Second
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh", days, h)
	case h > 0:
		return fmt.Sprintf("%dh %dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %ds", m, sec)
	}
	return fmt.Sprintf("%ds", sec)
}

// formatSeconds renders a duration in seconds with a unit that suits it.
func formatSeconds(sec float64) string {
	switch {
	case sec <= 0:
		return "0 ms"
	case sec < 0.01:
		return strconv.FormatFloat(sec*1000, 'f', 2, 64) + " ms"
	case sec < 1:
		return strconv.FormatFloat(sec*1000, 'f', 1, 64) + " ms"
	case sec < 60:
		return strconv.FormatFloat(sec, 'f', 2, 64) + " s"
	}
	return formatAge(time.Duration(sec * float64(time.Second)))
}

func formatQuantile(q quantileResult) string {
	switch {
	case !q.OK:
		return "–"
	case q.Above:
		return "> " + formatSeconds(q.Value)
	}
	return formatSeconds(q.Value)
}

func formatRate(r float64) string {
	switch {
	case r == 0:
		return "0"
	case r < 10:
		return strconv.FormatFloat(r, 'f', 2, 64)
	case r < 1000:
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return formatCount(uint64(math.Round(r)))
}

// formatCount renders n with thousands separators: 1234567 -> "1,234,567".
func formatCount(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
