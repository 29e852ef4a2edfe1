package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"meshproxy/admin"
	"meshproxy/balancer"
	"meshproxy/identity"
	"meshproxy/listener"
	"meshproxy/proxy"
)

func init() {
	register("run", command{summary: "run the proxy (outbound, inbound and admin listeners)", run: runRun})
}

// boundListener is a listener and the direction of traffic it takes.
type boundListener struct {
	dir proxy.Direction
	l   *listener.Listener
}

// runConfig is the effective configuration of "meshproxy run".
type runConfig struct {
	Mode           listener.Mode
	OutboundListen []string
	InboundListen  []string
	AdminListen    string
	AdminShutdown  bool
	IPv6           bool
	DetectTimeout  time.Duration
	ConnectTimeout time.Duration
	HeaderTimeout  time.Duration
	IdleTimeout    time.Duration
	OpaquePorts    []uint16
	ShutdownGrace  time.Duration
	LogLevel       string
	LogFormat      string
	Mesh           meshSettings
	HTTP           httpSettings
	// effective is every setting's final value as text, keyed by name;
	// shown by /debug/state and --check-config.
	effective map[string]string
	// checkOnly is --check-config: validate, print, exit.
	checkOnly bool
}

// listValue is a comma-separated list flag.
type listValue struct{ items *[]string }

func (l listValue) String() string {
	if l.items == nil {
		return ""
	}
	return strings.Join(*l.items, ",")
}

func (l listValue) Set(s string) error {
	*l.items = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.items = append(*l.items, p)
		}
	}
	return nil
}

// portsValue is a comma-separated list of TCP ports.
type portsValue struct{ ports *[]uint16 }

func (p portsValue) String() string {
	if p.ports == nil {
		return ""
	}
	s := make([]string, len(*p.ports))
	for i, v := range *p.ports {
		s[i] = strconv.Itoa(int(v))
	}
	return strings.Join(s, ",")
}

func (p portsValue) Set(s string) error {
	out := []uint16{} // empty, not nil: proxy.Config reads nil as its defaults
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("port %q is not a number in 1-65535", f)
		}
		out = append(out, uint16(n))
	}
	*p.ports = out
	return nil
}

// modeValue accepts "redirect" or "tproxy".
type modeValue struct{ mode *listener.Mode }

func (m modeValue) String() string {
	if m.mode == nil {
		return ""
	}
	return string(*m.mode)
}

func (m modeValue) Set(s string) error {
	switch listener.Mode(s) {
	case listener.ModeRedirect, listener.ModeTProxy:
		*m.mode = listener.Mode(s)
		return nil
	}
	return fmt.Errorf("mode %q is neither redirect nor tproxy", s)
}

// runFlags declares the settings of "meshproxy run" on a new flag set.
func runFlags(cfg *runConfig, stderr io.Writer) (*flag.FlagSet, *string) {
	*cfg = runConfig{
		Mode:           listener.ModeRedirect,
		OutboundListen: []string{"127.0.0.1:4140", "[::1]:4140"},
		InboundListen:  []string{"0.0.0.0:4143", "[::]:4143"},
		AdminListen:    "0.0.0.0:4191",
		IPv6:           true,
		DetectTimeout:  time.Second,
		ConnectTimeout: 3 * time.Second,
		HeaderTimeout:  10 * time.Second,
		IdleTimeout:    time.Hour,
		OpaquePorts:    append([]uint16(nil), proxy.DefaultOpaquePorts...),
		ShutdownGrace:  30 * time.Second,
		LogLevel:       "info",
		LogFormat:      "text",
		Mesh: meshSettings{
			MeshPort:      4143,
			InboundPolicy: string(proxy.Permissive),
		},
		HTTP: httpSettings{
			Enabled:                 true,
			ResolvConf:              balancer.DefaultResolvConf,
			LBPolicy:                "p2c",
			ResponseTimeout:         proxy.DefaultResponseHeaderTimeout,
			PoolIdleTimeout:         balancer.DefaultPoolIdleTimeout,
			PoolMaxLifetime:         balancer.DefaultMaxLifetime,
			ClusterDomain:           proxy.DefaultClusterDomain,
			RetryBudgetRatio:        proxy.DefaultRetryRatio,
			RetryBudgetMinPerSecond: proxy.DefaultRetryMinPerSecond,
		},
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML file of settings (keys are these flag names)")
	fs.BoolVar(&cfg.checkOnly, "check-config", false, "validate the settings (and the routes file), print the effective ones as YAML, and exit")
	fs.Var(modeValue{&cfg.Mode}, "mode", "interception mode the rules use: redirect or tproxy")
	fs.Var(listValue{&cfg.OutboundListen}, "outbound-listen", "outbound listener addresses, comma-separated")
	fs.Var(listValue{&cfg.InboundListen}, "inbound-listen", "inbound listener addresses, comma-separated")
	fs.StringVar(&cfg.AdminListen, "admin-listen", cfg.AdminListen, "admin server address (metrics, health)")
	fs.BoolVar(&cfg.AdminShutdown, "admin-shutdown", false, "enable POST /shutdown on the admin port (loopback callers only), e.g. for Jobs with a legacy sidecar")
	fs.BoolVar(&cfg.IPv6, "ipv6", cfg.IPv6, "also listen on the IPv6 addresses of the listener lists")
	fs.DurationVar(&cfg.DetectTimeout, "detect-timeout", cfg.DetectTimeout, "how long to wait for a client's first bytes before forwarding as opaque TCP")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", cfg.ConnectTimeout, "timeout for connecting upstream")
	fs.DurationVar(&cfg.HeaderTimeout, "header-timeout", cfg.HeaderTimeout, "how long an HTTP client may take to send a request's headers (slowloris guard)")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "close a connection idle in both directions this long (negative: never)")
	fs.Var(portsValue{&cfg.OpaquePorts}, "opaque-ports", "ports forwarded as opaque TCP without protocol detection (server-speaks-first protocols)")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", cfg.ShutdownGrace, "on SIGTERM, how long open connections may drain before they are closed")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format: text or json")
	m := &cfg.Mesh
	fs.StringVar(&m.Identity, "identity", "", "this proxy's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web")
	fs.StringVar(&m.IdentityDir, "identity-dir", "", "local CA directory (meshproxy ca init) to issue this proxy's certificate from, for single-host use")
	fs.StringVar(&m.IdentityAddr, "identity-addr", "", "address of the identity service (meshproxy identity serve) to get certificates from")
	fs.StringVar(&m.IdentityTokenFile, "identity-token-file", "", "file holding the join token for the identity service (re-read at each request)")
	fs.StringVar(&m.TrustAnchors, "trust-anchors", "", "PEM file of trusted CA roots (default with identity-dir: the CA's own anchors)")
	fs.DurationVar(&m.IdentityTTL, "identity-ttl", 0, "lifetime to ask for the leaf certificate (0: the CA's default, 24h)")
	fs.UintVar(&m.MeshPort, "mesh-port", m.MeshPort, "port peer proxies accept mTLS on (their inbound port)")
	fs.StringVar(&m.InboundPolicy, "inbound-policy", m.InboundPolicy, "permissive (accept plaintext too) or strict (mesh mTLS only)")
	fs.Var(listValue{&m.InboundAuthz}, "inbound-authz", "client identities allowed in, as PORT=ID or *=ID (ID exact, prefix/*, or *); empty: any mesh identity; a port a rule covers is closed to plaintext clients (no identity), in permissive mode too")
	fs.Var(listValue{&m.MeshedCIDRs}, "meshed-cidrs", "destinations always treated as meshed (mTLS, never plaintext)")
	fs.Var(listValue{&m.UnmeshedCIDRs}, "unmeshed-cidrs", "destinations always sent plain TCP without probing for a proxy")
	fs.BoolVar(&m.RequireTLS, "outbound-require-tls", false, "refuse outbound connections to destinations that are not meshed")
	h := &cfg.HTTP
	fs.BoolVar(&h.Enabled, "http", h.Enabled, "HTTP-aware outbound: read each request's authority, discover its endpoints in DNS and balance over them (off: HTTP is forwarded as opaque TCP)")
	fs.StringVar(&h.ResolvConf, "resolv-conf", h.ResolvConf, "resolv.conf whose nameservers, search domains and ndots discovery uses")
	fs.StringVar(&h.LBPolicy, "lb-policy", h.LBPolicy, "endpoint choice: p2c (power of two choices over peak-EWMA latency) or round-robin")
	fs.DurationVar(&h.ResponseTimeout, "response-timeout", h.ResponseTimeout, "how long to wait for an upstream's response headers before 504 (the app's too, on the server side, even with --http off; negative: no limit)")
	fs.DurationVar(&h.PoolIdleTimeout, "pool-idle-timeout", h.PoolIdleTimeout, "close pooled HTTP connections (to upstreams, and to the app on the inbound side) idle this long")
	fs.DurationVar(&h.PoolMaxLifetime, "pool-max-lifetime", h.PoolMaxLifetime, "stop reusing an upstream HTTP connection after this long, so load spreads again")
	fs.StringVar(&h.Routes, "routes", "", "file or directory of Gateway API HTTPRoute documents (timeouts, retries, splits, header matches); reloaded on change and on SIGHUP")
	fs.StringVar(&h.ClusterDomain, "cluster-domain", h.ClusterDomain, "DNS suffix of service names (<name>.<namespace>.svc.<cluster-domain>)")
	fs.StringVar(&h.Namespace, "namespace", "", "this workload's namespace, to expand short service names in routes (default: the namespace of identity, else default)")
	fs.Float64Var(&h.RetryBudgetRatio, "retry-budget-ratio", h.RetryBudgetRatio, "retries allowed per service as a share of its requests")
	fs.IntVar(&h.RetryBudgetMinPerSecond, "retry-budget-min-per-second", h.RetryBudgetMinPerSecond, "retries allowed per service per second whatever the traffic")
	fs.IntVar(&h.MaxConcurrent, "max-concurrent-per-service", 0, "requests in flight per service before new ones wait (0: no limit)")
	fs.IntVar(&h.MaxPending, "max-pending-per-service", 0, "requests that may wait for a slot per service; beyond it a fast 503 (0: no limit, -1: none may wait)")
	fs.Float64Var(&h.TraceSampleRate, "trace-sample-rate", 0, "share of requests without a traceparent that start a sampled trace (0-1)")
	fs.DurationVar(&h.StreamIdleTimeout, "stream-idle-timeout", 0, "cut a response stream that moves no bytes for this long (0: never)")
	fs.BoolVar(&h.AccessLog, "access-log", false, "write one JSON access log line per request (trace id, identities, route, status, latency)")
	return fs, configPath
}

// fileOnlySettings are flags that are not settings: they cannot come from
// the config file, and are not part of the effective configuration.
var fileOnlySettings = []string{"config", "check-config"}

// loadRunConfig parses args, then layers the config file and environment
// under them.
func loadRunConfig(args []string, stderr io.Writer, getenv func(string) string) (runConfig, error) {
	var cfg runConfig
	fs, configPath := runFlags(&cfg, stderr)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	path := *configPath
	if path == "" {
		path = getenv(envName("config"))
	}
	if err := layerConfig(fs, path, getenv, fileOnlySettings...); err != nil {
		return cfg, err
	}
	cfg.effective = map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if !slices.Contains(fileOnlySettings, f.Name) {
			cfg.effective[f.Name] = f.Value.String()
		}
	})
	return cfg, cfg.validate()
}

func (c *runConfig) validate() error {
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("log-format %q is neither text nor json", c.LogFormat)
	}
	if len(c.OutboundListen) == 0 && len(c.InboundListen) == 0 {
		return errors.New("no listener: outbound-listen and inbound-listen are both empty")
	}
	for _, a := range append(append([]string{c.AdminListen}, c.OutboundListen...), c.InboundListen...) {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return fmt.Errorf("listen address %q: want IP:port (for example 127.0.0.1:4140 or [::1]:4140)", a)
		}
	}
	if err := c.checkListeners(); err != nil {
		return err
	}
	if c.DetectTimeout <= 0 || c.ConnectTimeout <= 0 || c.HeaderTimeout <= 0 {
		return errors.New("detect-timeout, connect-timeout and header-timeout must be positive")
	}
	if c.IdleTimeout == 0 {
		return errors.New("idle-timeout is 0: give a duration such as 1h, or a negative one (-1s) to never close idle connections")
	}
	if c.ShutdownGrace < 0 {
		return errors.New("shutdown-grace must not be negative")
	}
	if err := c.HTTP.validate(); err != nil {
		return err
	}
	return c.Mesh.validate()
}

// checkListeners finds listeners that could not all bind: one address and
// port twice, or an address beside the wildcard of its family on one port
// (Linux refuses it). The outbound and inbound listeners are of one
// family each (IPv6 ones IPv6-only); the admin listener on a wildcard
// address takes both, as Go listens dual-stack there. It also refuses
// listener lists that bind nothing once ipv6 is off.
func (c *runConfig) checkListeners() error {
	type bound struct {
		setting string
		text    string
		addr    netip.Addr
		port    uint16
		fams    int // 1: IPv4, 2: IPv6
	}
	var all []bound
	proxied := 0
	for _, l := range []struct {
		setting string
		addrs   []string
	}{{"outbound-listen", c.OutboundListen}, {"inbound-listen", c.InboundListen}} {
		for _, a := range l.addrs {
			ap := netip.MustParseAddrPort(a) // validated
			b := bound{setting: l.setting, text: a, addr: ap.Addr().Unmap(), port: ap.Port(), fams: 1}
			if b.addr.Is6() {
				if !c.IPv6 {
					continue // not bound
				}
				b.fams = 2
			}
			all = append(all, b)
			proxied++
		}
	}
	if proxied == 0 {
		return errors.New("no listener: with ipv6 false, outbound-listen and inbound-listen have no IPv4 address to bind")
	}
	ap := netip.MustParseAddrPort(c.AdminListen)
	admin := bound{setting: "admin-listen", text: c.AdminListen, addr: ap.Addr().Unmap(), port: ap.Port(), fams: 1}
	switch {
	case admin.addr.IsUnspecified():
		admin.fams = 3
	case admin.addr.Is6():
		admin.fams = 2
	}
	all = append(all, admin)
	for i, a := range all {
		for _, b := range all[:i] {
			if a.port == 0 || a.port != b.port || a.fams&b.fams == 0 {
				continue
			}
			if a.addr == b.addr || a.addr.IsUnspecified() || b.addr.IsUnspecified() {
				return fmt.Errorf("%s %s and %s %s cannot both listen (one port, overlapping addresses): give them different ports", b.setting, b.text, a.setting, a.text)
			}
		}
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log-level %q is not one of debug, info, warn, error", s)
	}
	return l, nil
}

func newLogger(w io.Writer, format string, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func runRun(args []string, stdout, stderr io.Writer) int {
	cfg, err := loadRunConfig(args, stderr, os.Getenv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 2
	}
	var names runConfig
	fs, _ := runFlags(&names, io.Discard)
	for _, w := range unknownEnvironment(os.Environ(), fs) {
		fmt.Fprintf(stderr, "run: warning: %s\n", w)
	}
	if cfg.checkOnly {
		if cfg.HTTP.Routes != "" {
			if _, err := loadRoutes(cfg.HTTP.Routes, cfg.HTTP.ClusterDomain); err != nil {
				fmt.Fprintf(stderr, "run: routes: %v\n", err)
				return 2
			}
		}
		if err := printEffective(stdout, cfg.effective); err != nil {
			fmt.Fprintf(stderr, "run: %v\n", err)
			return 1
		}
		return 0
	}
	// SIGHUP is caught from here until the process exits, so that it never
	// takes its default action (death, every connection cut) while the
	// proxy starts or drains; handleHangups answers it while it runs.
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)
	// The first SIGTERM or SIGINT starts the drain (ctx); a second one, an
	// operator pressing Ctrl-C again, ends it at once (now).
	stops := make(chan os.Signal, 1)
	signal.Notify(stops, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(stops)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	now, stopNow := context.WithCancel(context.Background())
	defer stopNow()
	go func() {
		for _, cancel := range []context.CancelFunc{stop, stopNow} {
			select {
			case <-stops:
				cancel()
			case <-now.Done(): // serve returned
				return
			}
		}
	}()
	if err := serve(ctx, now, hups, cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	return 0
}

// lifecycle orders the changes of /ready and what systemd is told, under
// one lock: READY=1 ends systemd's start-up only when the proxy is ready,
// a reload is announced (RELOADING=1, then READY=1) only after that, and
// once the drain has begun (STOPPING=1) nothing marks the proxy ready
// again, whichever goroutine tries.
type lifecycle struct {
	mu       sync.Mutex
	started  bool // READY=1 sent
	draining bool
}

// start runs f, which marks the proxy ready and sends READY=1, unless the
// drain has begun.
func (l *lifecycle) start(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.draining {
		f()
		l.started = true
	}
}

// update runs f, a change of readiness after the start, unless the drain
// has begun.
func (l *lifecycle) update(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.draining {
		f()
	}
}

// running runs f and reports true if the start is over and the drain has
// not begun.
func (l *lifecycle) running(f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.started || l.draining {
		return false
	}
	f()
	return true
}

// drain marks the drain begun, then runs f (STOPPING=1, /ready false).
func (l *lifecycle) drain(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.draining = true
	f()
}

// handleHangups answers SIGHUP (systemctl reload), received on hups, until
// ctx ends: it reloads the routes (a bad file is refused and the old routes
// keep running; the watcher logs and counts it). Other settings change with
// a restart. hups stays registered after ctx ends (runRun), so a SIGHUP
// during the drain is ignored rather than fatal. systemd hears of the
// reload only once the start is over: a READY=1 before that would end the
// start-up while the proxy is not ready.
func handleHangups(ctx context.Context, hups <-chan os.Signal, routes *routeWatcher, lc *lifecycle, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hups:
			told := lc.running(func() {
				if err := notifyReloading(); err != nil {
					log.Warn("telling systemd we reload", "err", err)
				}
			})
			if routes == nil {
				log.Info("SIGHUP: no routes to reload; other settings change with a restart")
			} else if err := routes.Reload(); err == nil {
				log.Info("SIGHUP: routes reloaded; other settings change with a restart")
			}
			if told {
				lc.running(func() {
					if err := notifyReady(); err != nil {
						log.Warn("telling systemd we are ready", "err", err)
					}
				})
			}
		}
	}
}

// serve runs the proxy until ctx is cancelled, then drains and returns nil.
// The drain lasts at most the shutdown grace, and ends at once when now is
// cancelled. SIGHUPs arrive on hups.
func serve(ctx, now context.Context, hups <-chan os.Signal, cfg runConfig, logw io.Writer) error {
	level := new(slog.LevelVar)
	lvl, _ := parseLevel(cfg.LogLevel)
	level.Set(lvl)
	log := newLogger(logw, cfg.LogFormat, level)

	if err := checkLiveMode(cfg.Mode, log); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := proxy.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	ctx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var listeners []boundListener
	var servers map[proxy.Direction]*proxy.Server
	var mgr *identity.Manager
	var bal *balancer.Balancer
	var routes *routeWatcher
	started := time.Now()
	opts := admin.Options{
		Logger:   log,
		LogLevel: level,
		Status: func() admin.Status {
			return statusPage(started, cfg, listeners, servers, mgr, bal)
		},
	}
	if cfg.AdminShutdown {
		opts.Shutdown = func() {
			log.Info("shutdown requested on the admin port")
			stopRun()
		}
	}
	adm := admin.NewWithOptions(reg, opts)

	pcfg := proxy.Config{
		DetectTimeout:  cfg.DetectTimeout,
		ConnectTimeout: cfg.ConnectTimeout,
		HeaderTimeout:  cfg.HeaderTimeout,
		IdleTimeout:    cfg.IdleTimeout,
		// The inbound side pools connections to the app as the
		// outbound pools its upstreams.
		InboundPoolIdleTimeout: cfg.HTTP.PoolIdleTimeout,
		// Peers' HTTP is delivered even with --http off: the app's
		// response head is bounded by --response-timeout all the same.
		InboundResponseTimeout: cfg.HTTP.ResponseTimeout,
		OpaquePorts:            cfg.OpaquePorts,
	}
	if cfg.HTTP.Enabled {
		var stop func()
		var balMetrics *balancer.Metrics
		bal, balMetrics, stop, err = newBalancer(&cfg.HTTP, reg, log)
		if err != nil {
			return err
		}
		defer stop()
		pcfg.HTTP = &proxy.HTTPConfig{
			Balancer:                bal,
			ResponseHeaderTimeout:   cfg.HTTP.ResponseTimeout,
			IdleTimeout:             cfg.HTTP.PoolIdleTimeout,
			MaxLifetime:             cfg.HTTP.PoolMaxLifetime,
			Namespace:               cfg.HTTP.namespace(cfg.Mesh.Identity),
			RetryBudget:             cfg.HTTP.retryBudget(),
			MaxConcurrentPerService: cfg.HTTP.MaxConcurrent,
			MaxPendingPerService:    cfg.HTTP.MaxPending,
			TraceSampleRate:         cfg.HTTP.TraceSampleRate,
			StreamIdleTimeout:       cfg.HTTP.StreamIdleTimeout,
			PoolMetrics:             balMetrics,
		}
		if cfg.HTTP.AccessLog {
			pcfg.HTTP.AccessLog = slog.New(slog.NewJSONHandler(logw, nil)).With("log", "access")
		}
		if cfg.HTTP.Routes != "" {
			table := new(atomic.Pointer[proxy.RouteTable])
			routes, err = newRouteWatcher(cfg.HTTP.Routes, cfg.HTTP.ClusterDomain, table.Store, reg, log)
			if err != nil {
				return fmt.Errorf("routes: %w", err)
			}
			go routes.Run(ctx)
			pcfg.HTTP.Routes = table
		}
	}
	if cfg.Mesh.enabled() {
		mgr, err = newIdentityManager(&cfg.Mesh, reg, log)
		if err != nil {
			return err
		}
		own := []int{int(cfg.Mesh.MeshPort), portOf(cfg.AdminListen)}
		for _, a := range append(append([]string{}, cfg.OutboundListen...), cfg.InboundListen...) {
			own = append(own, portOf(a))
		}
		pcfg.Mesh, err = meshConfig(&cfg.Mesh, mgr, portList(own...))
		if err != nil {
			return err
		}
	}
	servers = map[proxy.Direction]*proxy.Server{
		proxy.Outbound: proxy.NewServer(proxy.Outbound, pcfg, metrics, log),
		proxy.Inbound:  proxy.NewServer(proxy.Inbound, pcfg, metrics, log),
	}

	// Bind everything before serving anything, so a bad address fails the
	// start cleanly.
	closeAll := func() {
		for _, b := range listeners {
			b.l.Close()
		}
	}
	bind := func(dir proxy.Direction, addrs []string) error {
		for _, a := range addrs {
			ap := netip.MustParseAddrPort(a) // validated
			network := "tcp4"
			if ap.Addr().Is6() && !ap.Addr().Is4In6() {
				if !cfg.IPv6 {
					continue
				}
				network = "tcp6"
			}
			l, err := listener.Listen(listener.Config{
				Name: string(dir), Network: network, Addr: a, Mode: cfg.Mode, Logger: log,
				// With the mesh on, the inbound port is also where peer
				// proxies connect: a connection to it is not a loop.
				AllowSelf: dir == proxy.Inbound && cfg.Mesh.enabled() && int(ap.Port()) == int(cfg.Mesh.MeshPort),
			})
			if err != nil {
				return fmt.Errorf("%s listener: %w", dir, err)
			}
			listeners = append(listeners, boundListener{dir: dir, l: l})
			log.Info("listening", "direction", string(dir), "addr", l.Addr().String(), "mode", string(cfg.Mode))
		}
		return nil
	}
	if err := bind(proxy.Outbound, cfg.OutboundListen); err != nil {
		closeAll()
		return err
	}
	if err := bind(proxy.Inbound, cfg.InboundListen); err != nil {
		closeAll()
		return err
	}
	reg.MustRegister(newListenerCollector(listeners))
	adminL, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		closeAll()
		return fmt.Errorf("admin listener: %w", err)
	}

	adm.HandleState(func() any { return debugState(cfg, listeners, servers, mgr, bal, routes) })
	errc := make(chan error, len(listeners)+1)
	go func() { errc <- adm.Serve(adminL) }()
	for _, b := range listeners {
		srv := servers[b.dir]
		go func() { errc <- srv.Serve(b.l) }()
	}
	// status sets the line "systemctl status" shows; it stays until the
	// next one, so every change of readiness sets it.
	status := func(s string) {
		if err := notifyStatus(s); err != nil {
			log.Warn("telling systemd our status", "err", err)
		}
	}
	lc := new(lifecycle)
	markReady := func() {
		lc.start(func() {
			adm.SetReady()
			log.Info("meshproxy ready", "version", version, "admin", adminL.Addr().String(), "mtls", mgr != nil,
				"startup", time.Since(started).Round(time.Millisecond).String())
			if err := notifyReady(); err != nil {
				log.Warn("telling systemd we are ready", "err", err)
			}
			status("ready")
		})
	}
	if mgr == nil {
		markReady()
	} else {
		adm.SetNotReady("no certificate yet")
		status("waiting for a certificate")
		go watchIdentity(ctx, mgr, markReady, func(ok bool, reason string) {
			lc.update(func() {
				if ok {
					adm.SetReady()
					status("ready")
				} else {
					adm.SetNotReady(reason)
					status("not ready: " + reason)
				}
			})
		}, log)
	}
	go runWatchdog(ctx, log)
	go handleHangups(ctx, hups, routes, lc, log)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining open connections (signal again to close them at once)", "grace", cfg.ShutdownGrace.String())
	case runErr = <-errc:
		log.Error("a listener failed; shutting down", "err", runErr)
	}
	// From here on nothing may mark the proxy ready again (lc; the
	// identity watcher also stops with ctx), whichever way the run ended.
	stopRun()
	lc.drain(func() {
		if err := notifyStopping(); err != nil {
			log.Warn("telling systemd we are stopping", "err", err)
		}
		adm.SetNotReady("draining")
		status("draining open connections")
	})
	drainCtx, cancel := context.WithTimeout(now, cfg.ShutdownGrace)
	defer cancel()
	// Both directions at once: each Shutdown first closes its listeners,
	// and one after the other the second direction would go on accepting
	// while the first drained.
	var drains sync.WaitGroup
	for dir, srv := range servers {
		drains.Go(func() {
			if err := srv.Shutdown(drainCtx); err != nil {
				msg := "closing connections that did not drain in time"
				if now.Err() != nil {
					msg = "second signal: closing open connections now"
				}
				// The count when the grace ended, before Shutdown
				// closed them (OpenConnections may be 0 by now).
				open := srv.OpenConnections()
				if de, ok := errors.AsType[*proxy.DrainError](err); ok {
					open = de.Open
				}
				log.Warn(msg, "direction", string(dir), "open", open)
			}
		})
	}
	drains.Wait()
	closeAll()
	shutCtx, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if err := adm.Shutdown(shutCtx); err != nil {
		log.Warn("admin shutdown", "err", err)
	}
	log.Info("meshproxy stopped")
	return runErr
}
