package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/stun"
	"github.com/parley-rt/parley/turn"
	"github.com/parley-rt/parley/web"
)

// serveConfig is everything `parley serve` reads from flags and environment.
type serveConfig struct {
	addr, adminAddr string
	nodeID          string
	jwtSecret       string
	jwtPublicKey    string
	jwtKey          crypto.PublicKey // read from jwtPublicKey
	apiKey          string
	allowAnonymous  bool
	origins         []string
	historySize     int
	historyTTL      time.Duration
	ping            time.Duration
	drain           time.Duration
	queueLimit      int
	publishRate     float64
	maxRooms        int
	maxConnsPerIP   int
	poller          bool
	trustedProxies  []netip.Prefix
	replayLimit     int
	presenceRooms   []string
	nodeRooms       int
	historyBytes    int64
	roomHistBytes   int64
	redisURL        string
	presenceTTL     time.Duration
	calls           gateway.CallConfig
	logFormat       string
	logLevel        slog.Level

	tlsCert, tlsKey string
	tlsConf         *tls.Config // loaded from tlsCert and tlsKey
	turn            turnFlags
	stunAddr        string

	// flags name the settings in messages (--addr, or PARLEY_ADDR).
	flags *envFlags
	// warnings are the PARLEY_* variables that no flag reads.
	warnings []envWarning
}

// turnFlags configure the built-in TURN and STUN server.
type turnFlags struct {
	addr, tlsAddr  string
	publicIP       netip.Addr
	portMin        int
	portMax        int
	secret         string
	realm          string
	allowPeers     []netip.Prefix
	userQuota      int
	maxAllocations int
	credentialTTL  time.Duration
	// tlsHost is the host of turns: URLs, a name or an IP address the
	// certificate is valid for; empty means the address of the turn: URLs.
	tlsHost string
}

const serveSummary = `Run a Parley node: the public listener (WebSocket /v1/ws, SSE /v1/sse, the
HTTP API, /healthz, /readyz) and the admin listener (/metrics, /debug/pprof/,
and the live node dashboard at /dashboard).
With no --jwt-secret or --jwt-public-key the node runs in dev mode: every
client is an anonymous user, and it refuses a non-loopback --addr unless
--allow-anonymous is given. SIGTERM drains: clients are told to reconnect,
spread over --drain, then the process exits. The whole configuration is
checked before any socket opens.`

// parseServe reads serve's flags, environment and settings file (--config)
// and checks everything that the gateway, the bus and the TURN server would
// refuse, so that a bad value is reported before any socket opens. It reads
// the --config, --jwt-public-key and --tls-cert files. The config it
// returns is never nil: its warnings hold unknown PARLEY_* variables of
// environ even when err is not nil.
func parseServe(args []string, getenv func(string) string, environ []string, out io.Writer) (*serveConfig, error) {
	return parseSettings(newEnvFlags("serve", serveSummary, getenv, out), args, environ)
}

// parseSettings is parseServe for a command whose flags are serve's: it
// defines them on fs, which names the command in usage and errors.
func parseSettings(fs *envFlags, args []string, environ []string) (*serveConfig, error) {
	fs.example = "jwt-secret"
	c := &serveConfig{flags: fs}
	fs.StringVar(&c.addr, "addr", "localhost:8080", "public HTTP listener: WebSocket, SSE, HTTP API, web app")
	fs.StringVar(&c.adminAddr, "admin-addr", "127.0.0.1:9090", "admin listener for /metrics, /debug/pprof/ and the node dashboard (/dashboard, /v1/stats), without authentication; off disables it")
	fs.StringVar(&c.nodeID, "node-id", "", "this node's name in welcome frames, logs and presence (default hostname plus a random suffix)")
	fs.StringVar(&c.jwtSecret, "jwt-secret", "", "HS256 secret that client JWTs are verified with")
	fs.StringVar(&c.jwtPublicKey, "jwt-public-key", "", "PEM `file` with the public key (or a certificate) for RS256, ES256 or EdDSA JWTs")
	fs.StringVar(&c.apiKey, "api-key", "", "bearer key that backends use on the HTTP API")
	allowAnon := fs.Bool("allow-anonymous", false, "allow dev mode (no JWT key) on a non-loopback --addr")
	origins := fs.String("origins", "", "allowed browser origins for WebSocket, SSE and the HTTP API, comma-separated host patterns such as app.example.com,*.example.com or scheme://host patterns such as https://app.example.com (default: the request's own host)")
	historySize := fs.Int("history-size", 1000, "messages kept per room for recovery and the history API")
	historyTTL := fs.Duration("history-ttl", 24*time.Hour, "how long a message stays in history")
	ping := fs.Duration("ping", 25*time.Second, "heartbeat interval, at least 10ms: an idle client gets a ping this often")
	drain := fs.Duration("drain", 10*time.Second, "on SIGTERM, the window over which clients are told to reconnect")
	queueLimit := fs.Int("queue-limit", 1<<20, "bytes a session may have waiting to be sent before it is closed as a slow consumer (1013); at least 131072 (128 KiB), so that the largest message fits")
	publishRate := fs.Float64("publish-rate", 50, "publishes per second allowed to one session, and to one user on the HTTP API (burst twice that); the API key is not limited")
	maxRooms := fs.Int("max-rooms", 100, "rooms one session may subscribe to")
	maxConns := fs.Int("max-conns-per-ip", 1000, "concurrent WebSocket and SSE connections from one client address")
	fs.BoolVar(&c.poller, "poller", true, "hold idle WebSocket connections and SSE streams in one epoll poller, with no goroutine each (Linux; per idle connection about 9 KiB of memory instead of 19 on WebSocket, 5 instead of 34 on SSE); false gives every WebSocket session and SSE stream a goroutine of its own")
	replayLimit := fs.Int("replay-limit", 4<<20, "bytes of history one resume may replay; a resume that would replay more is answered recovered: false and the client reloads")
	presenceRooms := fs.String("presence-rooms", "", "room patterns whose every subscriber is in presence, comma-separated, a trailing * as wildcard (elsewhere only subscriptions that ask for presence are)")
	nodeRooms := fs.Int("max-node-rooms", 100000, "rooms this node holds at once; past it, a room it does not hold yet is refused with over_capacity (in-memory bus; with --redis, Redis holds the rooms)")
	historyBytes := fs.Int64("history-bytes", 256<<20, "bytes of history this node keeps for all rooms together; past it the oldest messages are dropped (in-memory bus; with --redis, size Redis's maxmemory)")
	roomHistBytes := fs.Int64("room-history-bytes", 8<<20, "bytes of history one room keeps; past it the room's oldest messages are dropped (in-memory bus)")
	trustedProxies := fs.String("trusted-proxies", "", "CIDRs or addresses of load balancers and reverse proxies whose X-Forwarded-For (or Forwarded) header names the client, comma-separated (default none: the TCP peer is the client)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate `file` for TURN over TLS, and HTTPS on --addr")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key `file` matching --tls-cert")
	fs.StringVar(&c.turn.addr, "turn-addr", "localhost:3478", "TURN and STUN listener on UDP and TCP; off disables them")
	fs.StringVar(&c.stunAddr, "stun-addr", "off", "an extra STUN-only listener on UDP, such as :19302, with per-source rate limits (the TURN ports answer STUN too); off disables it")
	fs.StringVar(&c.turn.tlsAddr, "turn-tls-addr", "", "TURN over TLS listener, such as :5349 (needs --tls-cert and --tls-key); may be the same as --addr, host written as --addr writes it (e.g. :443 for both), to share HTTPS's port")
	turnTLSHost := fs.String("turn-tls-host", "", "the host name put in turns: URLs; it must be a name (or IP) the --tls-cert certificate is valid for (default the address of the turn: URLs when the certificate is valid for it, else the certificate's first DNS name without a wildcard)")
	turnPublicIP := fs.String("turn-public-ip", "", "the address put in relay candidates and ICE server URLs (default the TURN listener's IP; required when --turn-addr listens on every address)")
	turnPorts := fs.String("turn-ports", "49152-65535", "relay port range")
	fs.StringVar(&c.turn.secret, "turn-secret", "", "TURN REST shared secret (default the JWT secret, else random)")
	fs.StringVar(&c.turn.realm, "turn-realm", "parley", "TURN realm")
	turnAllow := fs.String("turn-allow-peers", "", "CIDRs the relay may reach despite its deny list of loopback, private, link-local and other special ranges (default in dev mode on a loopback --addr 127.0.0.0/8,::1/128, else none)")
	userQuota := fs.Int("turn-user-quota", 10, "live TURN allocations per user")
	maxAllocs := fs.Int("turn-max-allocations", 10000, "live TURN allocations in all")
	iceTTL := fs.Duration("ice-ttl", time.Hour, "validity of the TURN credentials that /v1/ice-servers and call join acks hand out")
	fs.StringVar(&c.redisURL, "redis", "", "Redis `URL` that every Parley node of a deployment shares, so that they act as one: redis://[user:password@]host:port/db, rediss:// for TLS, unix:///path/to/socket; or a Redis Cluster (sharded pub/sub), redis+cluster://[user:password@]host:port,host:port,... with one or more seed nodes, rediss+cluster:// for TLS; Redis 7.0 or later (default empty: one node, in-memory fan-out)")
	fs.DurationVar(&c.presenceTTL, "presence-ttl", 30*time.Second, "with --redis, how long a node's presence members and call peers outlive the node when it dies without leaving (it renews them every third of this); signals held for an away call peer last this and a third")
	fs.IntVar(&c.calls.MaxPeers, "call-max-peers", 8, "peers in one WebRTC call, 2 to 64 (a mesh: each peer connects to every other)")
	fs.DurationVar(&c.calls.Grace, "call-grace", 10*time.Second, "how long a call peer whose connection dropped keeps its place, for a rejoin on any node with its resume token (at least 1s)")
	fs.Float64Var(&c.calls.SignalRate, "call-signal-rate", 100, "signals (SDP and ICE candidates) per second one connection may send, with bursts of four times this")
	fs.BoolVar(&c.calls.HideHostCandidates, "call-hide-host-candidates", false, "keep clients' host ICE candidates (their own IP addresses) from the other peers: calls then connect through STUN mappings or TURN")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.String("config", "", "TOML settings `file` whose keys are these flags' names (jwt-secret = \"...\"); a flag or PARLEY_* variable wins over it")
	c.warnings = fs.unknownEnv(environ)
	if err := fs.parse(args); err != nil {
		return c, err
	}
	c.allowAnonymous = *allowAnon
	c.origins = split(*origins)
	c.historySize, c.historyTTL = *historySize, *historyTTL
	c.ping, c.drain = *ping, *drain
	c.queueLimit, c.publishRate, c.maxRooms, c.maxConnsPerIP = *queueLimit, *publishRate, *maxRooms, *maxConns
	c.replayLimit, c.presenceRooms = *replayLimit, split(*presenceRooms)
	c.nodeRooms, c.historyBytes, c.roomHistBytes = *nodeRooms, *historyBytes, *roomHistBytes
	c.logFormat = *logFormat
	c.turn.credentialTTL = *iceTTL
	c.turn.userQuota, c.turn.maxAllocations = *userQuota, *maxAllocs

	var errs []error
	bad := func(err error) { errs = append(errs, err) }
	if err := c.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		bad(fs.badValue("log-level", "want debug, info, warn or error"))
	}
	if c.redisURL != "" {
		if err := fanout.CheckRedisURL(c.redisURL); err != nil {
			// The URL may carry a password: it is not shown (nor does the
			// reason quote it).
			bad(fs.badFlag("redis", "not a Redis URL (%s): want redis://[user:password@]host:port/db, rediss://... or unix:///path/to/socket for one server, redis+cluster://[user:password@]host:port,host:port,... (or rediss+cluster://) for a Redis Cluster", err))
		}
	}
	if c.presenceTTL < time.Second {
		bad(fs.badValue("presence-ttl", "want at least 1s"))
	}
	if c.calls.MaxPeers < 2 || c.calls.MaxPeers > 64 {
		bad(fs.badValue("call-max-peers", "want 2 to 64"))
	}
	if c.calls.Grace < time.Second {
		bad(fs.badValue("call-grace", "want at least 1s"))
	}
	if !(c.calls.SignalRate > 0) || math.IsInf(c.calls.SignalRate, 1) {
		bad(fs.badValue("call-signal-rate", "want a positive number"))
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		bad(fs.badValue("log-format", "want text or json"))
	}
	_, _, addrErr := net.SplitHostPort(c.addr)
	if addrErr != nil {
		bad(fs.badValue("addr", "want host:port"))
	}
	if c.adminAddr != "off" {
		if _, _, err := net.SplitHostPort(c.adminAddr); err != nil {
			bad(fs.badValue("admin-addr", "want host:port or off"))
		}
	}
	if c.jwtSecret != "" && c.jwtPublicKey != "" {
		bad(fmt.Errorf("%s and %s are exclusive: pick one", fs.label("jwt-secret"), fs.label("jwt-public-key")))
	}
	dev := c.jwtSecret == "" && c.jwtPublicKey == ""
	if addrErr == nil && dev && !c.allowAnonymous && !loopback(c.addr) {
		bad(fmt.Errorf("%s: not a loopback address, and no --jwt-secret or --jwt-public-key is set: anyone could connect as anonymous; set a JWT key, or --allow-anonymous to mean it", fs.setting("addr")))
	}
	if c.jwtPublicKey != "" {
		if key, err := readPublicKey(c.jwtPublicKey); err != nil {
			bad(fs.badValue("jwt-public-key", "%v", err))
		} else {
			c.jwtKey = key
		}
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"history-size", int64(c.historySize)}, {"queue-limit", int64(c.queueLimit)}, {"max-rooms", int64(c.maxRooms)},
		{"max-conns-per-ip", int64(c.maxConnsPerIP)}, {"replay-limit", int64(c.replayLimit)}, {"max-node-rooms", int64(c.nodeRooms)},
		{"history-bytes", c.historyBytes}, {"room-history-bytes", c.roomHistBytes},
		{"turn-user-quota", int64(c.turn.userQuota)}, {"turn-max-allocations", int64(c.turn.maxAllocations)},
	} {
		if f.v <= 0 {
			bad(fs.badValue(f.name, "must be positive"))
		}
	}
	if c.queueLimit > 0 && c.queueLimit < minQueueLimit {
		bad(fs.badValue("queue-limit", "must be at least %d (128 KiB): room messages, presence events and heartbeats count against it, one message can carry 64 KiB of data plus its envelope, and a session whose queue cannot hold it is closed as a slow consumer (1013) at the first such message", minQueueLimit))
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"history-ttl", c.historyTTL}, {"drain", c.drain}, {"ice-ttl", c.turn.credentialTTL}} {
		if f.v <= 0 {
			bad(fs.badValue(f.name, "must be positive"))
		}
	}
	if c.ping < minPing {
		bad(fs.badValue("ping", "must be at least %s", minPing))
	}
	// NaN and infinity parse as numbers; neither is a rate.
	if !(c.publishRate > 0 && c.publishRate <= 1_000_000) {
		bad(fs.badValue("publish-rate", "must be a number above 0 and at most 1000000"))
	}
	for _, p := range c.presenceRooms {
		if gateway.CheckRoomPattern(p) != nil {
			bad(fs.badFlag("presence-rooms", "%q is not a room pattern: %s", p, roomPatternRule))
		}
	}
	for _, o := range c.origins {
		if err := checkOrigin(o); err != nil {
			bad(fs.badFlag("origins", "%q %v; %s", o, err, originRule))
		}
	}
	for field := range strings.SplitSeq(*trustedProxies, ",") {
		p, err := gateway.ParseTrustedProxies(field)
		if err != nil {
			bad(fs.badFlag("trusted-proxies", "%s", plain(err, "gateway: ", "trusted proxies: ")))
		}
		c.trustedProxies = append(c.trustedProxies, p...)
	}

	if (c.tlsCert == "") != (c.tlsKey == "") {
		bad(fmt.Errorf("%s and %s go together", fs.label("tls-cert"), fs.label("tls-key")))
	} else if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			bad(fmt.Errorf("%s and %s: %s", fs.label("tls-cert"), fs.label("tls-key"), fileReason(err, "tls: ")))
		} else {
			c.tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
	}
	c.checkTURN(*turnPublicIP, *turnPorts, *turnAllow, *turnTLSHost, bad)
	if c.stunAddr != "off" {
		if _, _, err := net.SplitHostPort(c.stunAddr); err != nil {
			bad(fs.badValue("stun-addr", "want host:port or off"))
		}
	}
	if c.turn.secret == "" {
		c.turn.secret = c.jwtSecret
	}
	if c.turn.secret == "" {
		c.turn.secret = rand.Text()
	}
	if c.nodeID == "" {
		host, _ := os.Hostname()
		c.nodeID = host + "-" + randSuffix()
	}
	return c, fs.errors(errs)
}

// loopback reports whether a listen address only accepts local connections.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func newLogger(c *serveConfig, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// gatewayConfig is the gateway's part of c. ICE is left to the caller,
// which knows the relay's addresses once it listens.
func gatewayConfig(c *serveConfig, log *slog.Logger, reg prometheus.Registerer, bus fanout.Bus) gateway.Config {
	gcfg := gateway.Config{
		Bus:                bus,
		Logger:             log,
		Registerer:         reg,
		NodeID:             c.nodeID,
		APIKey:             c.apiKey,
		JWTPublicKey:       c.jwtKey,
		Origins:            c.origins,
		PingInterval:       c.ping,
		DrainTimeout:       c.drain,
		QueueLimit:         c.queueLimit,
		PublishRate:        c.publishRate,
		PublishBurst:       max(1, int(2*c.publishRate)),
		MaxRoomsPerSession: c.maxRooms,
		MaxConnsPerIP:      c.maxConnsPerIP,
		TrustedProxies:     c.trustedProxies,
		ReplayLimit:        c.replayLimit,
		PresenceRooms:      c.presenceRooms,
		Calls:              c.calls,
		NoPoller:           !c.poller,
	}
	if c.jwtSecret != "" {
		gcfg.JWTSecret = []byte(c.jwtSecret)
	}
	// A bus that reconnected has every live node's members back within a
	// third of the presence TTL (their renewal period).
	gcfg.Calls.ResyncDelay = c.presenceTTL/3 + time.Second
	// A peer whose node died can rejoin until its lease lapses (the TTL,
	// and up to a third more until a node sweeps): what is held for it
	// lasts as long.
	gcfg.Calls.HoldFor = max(c.calls.Grace, c.presenceTTL+c.presenceTTL/3)
	return gcfg
}

// listenErr names the flag of an address that could not be listened on and
// says why in the system's words: "--addr localhost:8080: address already
// in use".
func listenErr(c *serveConfig, flagName string, err error) error {
	reason := plain(err, "turn: ")
	var errno syscall.Errno
	var op *net.OpError
	switch {
	case errors.As(err, &errno):
		reason = errno.Error()
	case errors.As(err, &op) && op.Err != nil:
		reason = op.Err.Error()
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		// make run takes no flags: name the variable too.
		reason += fmt.Sprintf(" (another program holds it: move this listener with --%s or %s", flagName, envName(flagName))
		if flagName != "addr" {
			reason += ", or set it to off"
		}
		reason += ")"
	}
	return fmt.Errorf("%s: %s", c.flags.setting(flagName), reason)
}

func serveCmd(ctx context.Context, stop func(), args []string, getenv func(string) string, environ func() []string, stdout, stderr io.Writer) error {
	c, err := parseServe(args, getenv, environ(), stdout)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			for _, w := range c.warnings {
				fmt.Fprintln(stderr, "parley: warning:", w)
			}
		}
		return err
	}
	log := newLogger(c, stderr)
	for _, w := range c.warnings {
		log.Warn("unknown environment variable ignored", "name", w.name, "did_you_mean", w.closest)
	}

	started := time.Now()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return listenErr(c, "addr", err)
	}
	// With --turn-tls-addr on --addr, one listener serves HTTPS and TURN
	// over TLS: the split terminates TLS and hands each connection to the
	// gateway or to the relay. It closes once both have closed their part;
	// the deferred Close covers the paths that start neither.
	var split *turn.TLSSplit
	if c.tlsConf != nil && c.turnsOnAddr() && c.turn.addr != "off" {
		split, err = turn.SplitTLS(ln, turn.SplitConfig{TLSConfig: c.tlsConf, Logger: log, Registerer: reg})
		if err != nil {
			ln.Close()
			return err
		}
		defer split.Close()
		ln = split.HTTP()
	}
	var adminLn net.Listener
	if c.adminAddr != "off" {
		if adminLn, err = net.Listen("tcp", c.adminAddr); err != nil {
			ln.Close()
			return listenErr(c, "admin-addr", err)
		}
	}

	var tlsStreams net.Listener
	if split != nil {
		tlsStreams = split.TURN()
	}
	relay, err := startTURNWith(ctx, c, log, reg, tlsStreams)
	if err == nil && relay != nil {
		if err = c.checkTURNSHostOf(relay); err != nil {
			relay.Close()
		}
	}
	if err != nil {
		ln.Close()
		if adminLn != nil {
			adminLn.Close()
		}
		return err
	}
	bus, err := newBus(c, log, reg)
	if err != nil {
		ln.Close()
		if adminLn != nil {
			adminLn.Close()
		}
		if relay != nil {
			relay.Close()
		}
		return err
	}
	defer bus.Close()
	gcfg := gatewayConfig(c, log, reg, bus)
	if relay != nil {
		defer relay.Close()
		gcfg.ICE = iceConfig(c, relay)
	}
	stats := &nodeStats{node: c.nodeID, started: started, gather: reg, bus: bus, turn: relay != nil}
	gcfg.Stats = stats.handler("public")
	stunSrv, stunConn, err := startSTUN(c, log, reg)
	if err != nil {
		ln.Close()
		if adminLn != nil {
			adminLn.Close()
		}
		return err
	}
	if stunSrv != nil {
		defer stunConn.Close()
		defer stunSrv.Close()
		go stunSrv.Serve(stunConn)
	}

	gw, err := gateway.New(gcfg)
	if err != nil {
		ln.Close()
		if adminLn != nil {
			adminLn.Close()
		}
		return err
	}

	// The stats read the gateway, and say where it serves, from the first
	// request on: both are set before either listener serves.
	stats.gw = gw
	base := "http://" + ln.Addr().String()
	if c.tlsConf != nil {
		base = "https://" + ln.Addr().String()
	}
	// The banner names the host as it was configured (localhost, as the
	// docs do), with the port actually bound.
	base = strings.Replace(base, ln.Addr().String(), shownAddr(c.addr, ln.Addr()), 1)
	stats.setPublicURL(base)

	errc := make(chan error, 2)
	go func() {
		if c.tlsConf != nil && split == nil {
			// HTTPS with HTTP/2 by ALPN; TURN over TLS keeps c.tlsConf as it is.
			errc <- gw.ServeTLS(ln, c.tlsConf)
			return
		}
		// Plain HTTP, or the split's TLS connections: HTTPS with HTTP/2 by
		// the ALPN of their handshake.
		errc <- gw.Serve(ln)
	}()
	var admin *http.Server
	if adminLn != nil {
		admin = &http.Server{Handler: adminMux(reg, stats), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- admin.Serve(adminLn) }()
	}

	log.Info("parley node started", "node", c.nodeID, "addr", ln.Addr().String(), "admin", addrOf(adminLn), "dev_mode", c.jwtSecret == "" && c.jwtPublicKey == "")
	tokenArg := ""
	if c.jwtSecret != "" || c.jwtPublicKey != "" {
		tokenArg = "token=<jwt>" // browsers pass the JWT in the URL; others may send Authorization: Bearer
	}
	q := func(prefix string) string {
		if tokenArg == "" {
			return ""
		}
		return prefix + tokenArg
	}
	fmt.Fprintf(stdout, "Parley node %s listening on %s\n  WebSocket  %s/v1/ws%s\n  SSE        %s/v1/sse?rooms=lobby%s\n  HTTP API   %s/v1/rooms/{room}/messages\n",
		c.nodeID, base, strings.Replace(strings.Replace(base, "https://", "wss://", 1), "http://", "ws://", 1), q("?"), base, q("&"), base)
	if adminLn != nil {
		fmt.Fprintf(stdout, "  metrics    http://%s/metrics\n", adminLn.Addr())
		fmt.Fprintf(stdout, "  dashboard  http://%s/dashboard\n", adminLn.Addr())
	}
	if c.jwtSecret == "" && c.jwtPublicKey == "" {
		fmt.Fprintf(stdout, "  dev mode: no JWT key is set, every client is an anonymous user\n")
	}
	if relay != nil {
		fmt.Fprintf(stdout, "  STUN/TURN  %s (UDP and TCP)\n", shownAddr(c.turn.addr, relay.UDPAddr()))
		if a := relay.TLSAddr(); a != nil {
			shared := ""
			if split != nil {
				shared = " (shared with HTTPS)"
			}
			fmt.Fprintf(stdout, "  TURNS      %s%s\n", a, shared)
		}
	}
	if stunConn != nil {
		fmt.Fprintf(stdout, "  STUN       %s (UDP)\n", stunConn.LocalAddr())
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	stop() // a second signal ends the process at once
	log.Info("shutting down", "drain", c.drain)
	sctx, cancel := context.WithTimeout(context.Background(), c.drain+4*time.Second)
	defer cancel()
	if err := gw.Shutdown(sctx); err != nil {
		log.Warn("drain incomplete", "err", err)
	}
	if relay != nil {
		relay.Close()
	}
	if admin != nil {
		admin.Shutdown(sctx)
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return "off"
	}
	return ln.Addr().String()
}

// adminMux serves what operators read: metrics, pprof, and the node's live
// figures (/v1/stats) with the dashboard page that shows them, all without
// authentication: the admin listener is for the node's own host (loopback
// by default) or a private network.
func adminMux(reg *prometheus.Registry, stats *nodeStats) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if stats != nil {
		mux.Handle("GET /v1/stats", stats.handler("admin"))
		pages := web.Handler()
		// The dashboard and only what it loads: the other pages talk to
		// the public listener's endpoints, which this one does not serve.
		for _, p := range []string{"/dashboard.html", "/dashboard.js", "/dashboard.css", "/style.css", "/favicon.svg"} {
			mux.Handle("GET "+p, pages)
		}
		mux.HandleFunc("GET /dashboard", func(w http.ResponseWriter, r *http.Request) {
			r = r.Clone(r.Context())
			r.URL.Path = "/dashboard.html"
			pages.ServeHTTP(w, r)
		})
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/dashboard", http.StatusFound)
		})
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	return mux
}

func randSuffix() string {
	return strings.ToLower(rand.Text()[:5])
}

// startTURN opens the TURN and STUN sockets and starts the relay; nil when
// --turn-addr is off.
func startTURN(ctx context.Context, c *serveConfig, log *slog.Logger, reg prometheus.Registerer) (*turn.Server, error) {
	return startTURNWith(ctx, c, log, reg, nil)
}

// startTURNWith is startTURN with, when tlsStreams is not nil, the TURN
// listener of the port --turn-tls-addr shares with HTTPS (a TLSSplit's) in
// place of a listener of its own; tlsStreams is left to the caller if it
// fails.
func startTURNWith(ctx context.Context, c *serveConfig, log *slog.Logger, reg prometheus.Registerer, tlsStreams net.Listener) (*turn.Server, error) {
	if c.turn.addr == "off" {
		return nil, nil
	}
	udp, tcp, err := turn.Listen(ctx, c.turn.addr)
	if err != nil {
		return nil, listenErr(c, "turn-addr", err)
	}
	cfg := turn.Config{
		Logger:         log,
		Registerer:     reg,
		Realm:          c.turn.realm,
		Secret:         c.turn.secret,
		UDPConns:       udp,
		TCPListener:    tcp,
		PublicIP:       c.turn.publicIP,
		RelayPortMin:   c.turn.portMin,
		RelayPortMax:   c.turn.portMax,
		AllowPeers:     c.turn.allowPeers,
		UserQuota:      c.turn.userQuota,
		MaxAllocations: c.turn.maxAllocations,
	}
	closeAll := func() {
		for _, u := range udp {
			u.Close()
		}
		tcp.Close()
		if cfg.TLSListener != nil {
			cfg.TLSListener.Close()
		}
	}
	switch {
	case tlsStreams != nil:
		cfg.TLSStreams = tlsStreams
	case c.turn.tlsAddr != "":
		if cfg.TLSListener, err = net.Listen("tcp", c.turn.tlsAddr); err != nil {
			closeAll()
			return nil, listenErr(c, "turn-tls-addr", err)
		}
		cfg.TLSConfig = c.tlsConf
	}
	srv, err := turn.NewServer(cfg)
	if err != nil {
		// parseServe checks what NewServer refuses; this is the backstop.
		closeAll()
		return nil, fmt.Errorf("%s: %s", c.flags.label("turn-addr"), plain(err, "turn: ", "invalid config: "))
	}
	return srv, nil
}

// iceConfig is what clients are told of this node's relay: its STUN and
// TURN URLs, and the secret and TTL of the credentials minted for them.
// The turns: URL names the host of --turn-tls-host (chosen by parseServe
// when the flag is not set), which clients verify the certificate against;
// the others name the relay's address.
func iceConfig(c *serveConfig, relay *turn.Server) *gateway.ICE {
	host := c.turn.publicIP.String()
	if !c.turn.publicIP.IsValid() {
		host, _, _ = net.SplitHostPort(relay.UDPAddr().String())
	}
	_, port, _ := net.SplitHostPort(relay.UDPAddr().String())
	hp := net.JoinHostPort(host, port)
	turnURLs := []string{"turn:" + hp + "?transport=udp"}
	if a := relay.TCPAddr(); a != nil {
		_, tport, _ := net.SplitHostPort(a.String())
		turnURLs = append(turnURLs, "turn:"+net.JoinHostPort(host, tport)+"?transport=tcp")
	}
	if a := relay.TLSAddr(); a != nil {
		_, tport, _ := net.SplitHostPort(a.String())
		thost := host
		if c.turn.tlsHost != "" {
			thost = c.turn.tlsHost
		}
		turnURLs = append(turnURLs, "turns:"+net.JoinHostPort(thost, tport)+"?transport=tcp")
	}
	return &gateway.ICE{STUN: []string{"stun:" + hp}, TURN: turnURLs, Secret: c.turn.secret, TTL: c.turn.credentialTTL}
}

// startSTUN opens the STUN-only listener of --stun-addr; nil when it is off.
func startSTUN(c *serveConfig, log *slog.Logger, reg prometheus.Registerer) (*stun.Server, net.PacketConn, error) {
	if c.stunAddr == "off" {
		return nil, nil, nil
	}
	conn, err := net.ListenPacket("udp", c.stunAddr)
	if err != nil {
		return nil, nil, listenErr(c, "stun-addr", err)
	}
	srv, err := stun.NewServer(stun.Config{Logger: log, Registerer: reg})
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return srv, conn, nil
}

// newBus is the fan-out of --redis: Redis shared with the other nodes, or
// this node's memory.
func newBus(c *serveConfig, log *slog.Logger, reg prometheus.Registerer) (fanout.Bus, error) {
	if c.redisURL == "" {
		bus := fanout.NewMemory(fanout.MemoryConfig{
			HistorySize: c.historySize, HistoryTTL: c.historyTTL,
			MaxRooms: c.nodeRooms, MaxHistoryBytes: c.historyBytes, MaxRoomHistoryBytes: c.roomHistBytes,
		})
		registerMemoryMetrics(reg, bus)
		return bus, nil
	}
	// go-redis logs each failed dial on its own; the bus logs the
	// connection's state once per change, so the client's lines go to debug.
	redis.SetLogger(redisLogger{log})
	bus, err := fanout.NewRedis(fanout.RedisConfig{
		URL: c.redisURL, NodeID: c.nodeID,
		HistorySize: c.historySize, HistoryTTL: c.historyTTL, PresenceTTL: c.presenceTTL,
		Log: log, Registerer: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.flags.setting("redis"), err)
	}
	return bus, nil
}

// redisLogger puts go-redis's log lines in the node's log, at debug.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "redis-client")
}

// registerMemoryMetrics exports the in-memory bus's bounds: what it holds and
// what its bounds dropped or refused.
func registerMemoryMetrics(reg prometheus.Registerer, bus *fanout.Memory) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "parley_rooms_held", Help: "Rooms this node's bus holds (bounded by --max-node-rooms).",
		}, func() float64 { return float64(bus.Stats().Rooms) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "parley_history_bytes", Help: "History this node keeps, as counted against --history-bytes.",
		}, func() float64 { return float64(bus.Stats().HistoryBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "parley_history_evicted_total", Help: "Messages dropped from history by a byte bound, by bound (room: --room-history-bytes, node: --history-bytes).",
			ConstLabels: prometheus.Labels{"bound": "room"},
		}, func() float64 { return float64(bus.Stats().EvictedRoomBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "parley_history_evicted_total", Help: "Messages dropped from history by a byte bound, by bound (room: --room-history-bytes, node: --history-bytes).",
			ConstLabels: prometheus.Labels{"bound": "node"},
		}, func() float64 { return float64(bus.Stats().EvictedNodeBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "parley_rooms_refused_total", Help: "Subscribes, publishes, presence and call joins refused with over_capacity because the node held --max-node-rooms rooms.",
		}, func() float64 { return float64(bus.Stats().RoomsRefused) }),
	)
}

// shownAddr is a bound address as the user configured it: a host name (such
// as localhost) is kept, with the port that was actually bound.
func shownAddr(configured string, bound net.Addr) string {
	host, _, err := net.SplitHostPort(configured)
	_, port, perr := net.SplitHostPort(bound.String())
	if err != nil || perr != nil || host == "" || net.ParseIP(host) != nil {
		return bound.String()
	}
	return net.JoinHostPort(host, port)
}
