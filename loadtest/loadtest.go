package loadtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config describes one load test run. Zero values take the documented defaults.
type Config struct {
	// URL is the node's WebSocket endpoint, such as ws://127.0.0.1:8080/v1/ws.
	// On Linux, connections to an IPv4 loopback URL (or localhost) come from
	// 127.0.0.1 to 127.0.0.254 in turn, so a node's limit on connections per
	// client address applies to each of them.
	URL string
	// URLs are more nodes of the same cluster. Subscribers are spread over
	// URL and URLs in turn, publishers use URL, and the report gives the
	// delivery latency of each node's subscribers: the latency a message
	// adds crossing from one node to another.
	URLs []string
	// PublishURL, when set, is the endpoint the fanout publishers connect
	// to instead of URL.
	PublishURL string
	// Metrics are the nodes' /metrics endpoints, read for their resident
	// memory and CPU time (summed over the nodes); empty skips those figures.
	Metrics []string
	// Token is sent by every client; empty in dev mode.
	Token string
	// Scenario is one of Scenarios; zero means "fanout".
	Scenario string
	// Transport is how the subscribers connect: "ws" (WebSocket) or "sse"
	// (a GET of the node's SSE endpoint, URL with /ws replaced by /sse);
	// zero means "ws". The fanout publishers always use WebSocket, and the
	// rooms and resume scenarios are WebSocket only.
	Transport string
	// Conns is the number of subscriber connections; zero means 1000.
	Conns int
	// Rooms spreads the subscribers over this many rooms; zero means 10.
	Rooms int
	// Rate is publishes per second into each room (fanout, resume), or by
	// each subscriber (rooms), call setups per second (calls), or TURN
	// allocations per second (turn); zero means 10 (calls: 5, turn: 100). A
	// node limits each session's publishes (--publish-rate, 50 a second by
	// default).
	Rate float64
	// Size is the payload size in bytes of each published message, or of
	// each packet relayed through TURN; zero means 64 (turn: 1000).
	Size int
	// Duration is how long the scenario runs after every connection is up;
	// zero means 10s. It is capped at 10 minutes.
	Duration time.Duration
	// Ramp is how many connections are opened per second; zero means 2000.
	Ramp int
	// Drop is the share of the subscribers the resume scenario drops at
	// once, halfway through the run; zero means 0.1.
	Drop float64
	// Calls is how many calls the calls scenario sets up, each between two
	// peers of their own; zero means 20.
	Calls int
	// Relay makes the calls relay-only, through the node's TURN server.
	Relay bool
	// Allocations is how many TURN allocations the turn scenario makes;
	// zero means 100.
	Allocations int
	// PacketRate is how many packets a second each pair of allocations
	// relays to each other in the turn scenario; zero means 100.
	PacketRate int
	// AllowRemote permits a target that is not a loopback address.
	AllowRemote bool
	// Progress receives the run's progress; nil discards it.
	Progress io.Writer
	// Bar makes the progress one line redrawn with a bar (for a terminal)
	// instead of a line a second.
	Bar bool
}

// Scenarios are the scenarios Run knows. "idle" is the former name of
// "connect".
var Scenarios = []string{"connect", "fanout", "rooms", "resume", "calls", "turn"}

// errRunBound ends a run that outlived its duration by MaxDuration.
var errRunBound = errors.New("loadtest: the run's time bound passed")

// The bounds of a Config: MaxDuration bounds every run; the counts are
// bounded because a run makes room for them before it dials anything;
// MaxRate bounds Rate, Ramp and PacketRate, and MinRate is the least Rate
// (one every 1000 s).
const (
	MaxDuration    = 10 * time.Minute
	MaxConns       = 1_000_000
	MaxRooms       = 100_000
	MaxCalls       = 10_000
	MaxAllocations = 100_000
	MaxRate        = 1_000_000
	MinRate        = 0.001
	MaxSize        = 1 << 20
)

func (c *Config) setDefaults() error {
	if c.URL == "" {
		return errors.New("loadtest: URL is required")
	}
	switch c.Scenario {
	case "":
		c.Scenario = "fanout"
	case "idle":
		c.Scenario = "connect"
	}
	known := false
	for _, s := range Scenarios {
		known = known || s == c.Scenario
	}
	if !known {
		return fmt.Errorf("loadtest: scenario %q: want one of %s", c.Scenario, strings.Join(Scenarios, ", "))
	}
	if c.Transport == "" {
		c.Transport = "ws"
	}
	if c.Transport != "ws" && c.Transport != "sse" {
		return fmt.Errorf("loadtest: transport %q: want ws or sse", c.Transport)
	}
	if (c.Scenario == "rooms" || c.Scenario == "resume") && c.Transport != "ws" {
		return fmt.Errorf("loadtest: the %s scenario is WebSocket only", c.Scenario)
	}
	if c.Conns == 0 {
		c.Conns = 1000
	}
	if c.Rooms == 0 {
		c.Rooms = 10
	}
	if c.Rate == 0 {
		switch c.Scenario {
		case "calls":
			c.Rate = 5
		case "turn":
			c.Rate = 100
		default:
			c.Rate = 10
		}
	}
	if c.Size == 0 {
		c.Size = 64
		if c.Scenario == "turn" {
			c.Size = 1000
		}
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Ramp == 0 {
		c.Ramp = 2000
	}
	if c.Drop == 0 {
		c.Drop = 0.1
	}
	if c.Calls == 0 {
		c.Calls = 20
	}
	if c.Allocations == 0 {
		c.Allocations = 100
	}
	if c.PacketRate == 0 {
		c.PacketRate = 100
	}
	switch {
	case c.Conns < 0 || c.Rooms < 0 || c.Size < 0 || c.Ramp < 0 || !(c.Rate >= 0) || c.Duration < 0 ||
		c.Calls < 0 || c.Allocations < 0 || c.PacketRate < 0:
		return errors.New("loadtest: counts, rates and durations must not be negative")
	case c.Duration > MaxDuration:
		return fmt.Errorf("loadtest: duration %s is over the %s bound", c.Duration, MaxDuration)
	case c.Ramp > MaxRate || c.Rate > MaxRate || c.PacketRate > MaxRate:
		return errors.New("loadtest: rates are at most 1000000 a second")
	case !(c.Drop > 0 && c.Drop <= 1):
		return errors.New("loadtest: the share of connections to drop must be above 0 and at most 1")
	case c.Size > MaxSize:
		return errors.New("loadtest: size is at most 1 MiB")
	case c.Rate < MinRate:
		return fmt.Errorf("loadtest: a rate of %g a second is below the least, %g", c.Rate, MinRate)
	case c.Conns > MaxConns || c.Rooms > MaxRooms || c.Calls > MaxCalls || c.Allocations > MaxAllocations:
		return fmt.Errorf("loadtest: at most %d connections, %d rooms, %d calls and %d allocations", MaxConns, MaxRooms, MaxCalls, MaxAllocations)
	}
	c.Rooms = min(c.Rooms, c.Conns)
	if !c.AllowRemote {
		for _, raw := range append(append([]string{c.URL, c.PublishURL}, c.URLs...), c.Metrics...) {
			if raw == "" {
				continue
			}
			if err := requireLoopback(raw); err != nil {
				return err
			}
		}
	}
	return nil
}

// requireLoopback refuses a target whose host is not a loopback address.
func requireLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("loadtest: %q: %w", raw, err)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("loadtest: %s is not a loopback address; loading a remote node takes --allow-remote", host)
	}
	return nil
}

// Report is the outcome of a run.
type Report struct {
	// Started is when the run started.
	Started   time.Time `json:"started"`
	Scenario  string    `json:"scenario"`
	Transport string    `json:"transport"`
	Nodes     int       `json:"nodes"`
	// Conns is the connections asked for, Opened those that opened.
	Conns  int `json:"conns"`
	Opened int `json:"opened"`
	// Interrupted is set when the run was stopped (its context ended)
	// before it was over: the figures cover the part that ran.
	Interrupted bool          `json:"interrupted,omitempty"`
	Rooms       int           `json:"rooms"`
	ConnectIn   time.Duration `json:"connect_time_ns"`
	// ConnectRate is connections opened a second while opening them.
	ConnectRate float64       `json:"connects_per_second"`
	Duration    time.Duration `json:"duration_ns"`
	// ConnectErrors counts connections that could not be opened.
	ConnectErrors int `json:"connect_errors"`
	// FirstError is why the first connection that failed did.
	FirstError string `json:"first_error,omitempty"`
	// Sources is how many source addresses the connections came from: 254
	// on Linux for an IPv4 loopback target, else 1.
	Sources int `json:"source_addresses"`

	Published int64 `json:"published"`
	// PublishErrors counts publishes the node refused or did not
	// acknowledge within 10 s; PublishesSkipped the publishes not sent
	// because a publisher already had 32 waiting for their acks: the node
	// could not keep up with the rate asked.
	PublishErrors    int64 `json:"publish_errors"`
	PublishesSkipped int64 `json:"publishes_skipped"`
	// FirstPublishError is why the first publish that failed did.
	FirstPublishError string  `json:"first_publish_error,omitempty"`
	Delivered         int64   `json:"delivered"`
	PerSecond         float64 `json:"deliveries_per_second"`
	Gaps              int64   `json:"gaps"`
	Duplicates        int64   `json:"duplicates"`
	Lost              int64   `json:"lost_events"`

	// Delivery latency percentiles (fanout, rooms, resume), from an HDR
	// histogram: each within 0.1% of the true value. Distributions holds
	// them with the whole spectrum.
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`

	// RSSBefore and RSSAfter are the nodes' resident memory before the
	// connections opened and with all of them open; PerConn is the
	// difference divided by the connections open.
	RSSBefore int64 `json:"rss_before_bytes"`
	RSSAfter  int64 `json:"rss_after_bytes"`
	PerConn   int64 `json:"per_conn_bytes"`

	// NodeCPU is the CPU time the nodes used while the scenario ran (after
	// the connections were open), from their metrics; CPUPerMillion is
	// that per million deliveries.
	NodeCPU       float64 `json:"node_cpu_seconds,omitempty"`
	CPUPerMillion float64 `json:"node_cpu_seconds_per_million_deliveries,omitempty"`

	// Distributions are the run's latencies: delivery, and each scenario's
	// own (recovery, call setup, allocation, ...).
	Distributions []Distribution `json:"distributions,omitempty"`
	// ByNode gives the delivery latency of each node's subscribers when
	// there are several nodes.
	ByNode []NodeLatency `json:"by_node,omitempty"`

	Resume *ResumeReport `json:"resume,omitempty"`
	Calls  *CallsReport  `json:"calls,omitempty"`
	TURN   *TURNReport   `json:"turn,omitempty"`
}

// NodeLatency is the delivery latency of the subscribers of one node.
type NodeLatency struct {
	URL     string       `json:"url"`
	Conns   int          `json:"conns"`
	Latency Distribution `json:"latency"`
}

// String renders the report for people.
func (r Report) String() string {
	var b strings.Builder
	from := "one source address"
	if r.Sources > 1 {
		from = strconv.Itoa(r.Sources) + " source addresses"
	}
	nodes := ""
	if r.Nodes > 1 {
		nodes = " on " + strconv.Itoa(r.Nodes) + " nodes"
	}
	switch r.Scenario {
	case "calls", "turn":
		fmt.Fprintf(&b, "scenario %s%s\n", r.Scenario, nodes)
	default:
		rooms := "rooms"
		if r.Rooms == 1 {
			rooms = "room"
		}
		conns := strconv.Itoa(r.Conns) + " connections"
		if r.Opened != r.Conns {
			conns = fmt.Sprintf("%d of %d connections", r.Opened, r.Conns)
		}
		fmt.Fprintf(&b, "scenario %s over %s%s: %s over %d %s from %s, opened in %s (%.0f a second, %d failed)\n",
			r.Scenario, r.Transport, nodes, conns, r.Rooms, rooms, from, r.ConnectIn.Round(time.Millisecond), r.ConnectRate, r.ConnectErrors)
	}
	if r.Interrupted {
		fmt.Fprintf(&b, "interrupted after %s: the figures cover the part that ran\n", round(r.Duration))
	}
	if r.FirstError != "" {
		fmt.Fprintf(&b, "first failure: %s\n", r.FirstError)
	}
	if r.RSSAfter > 0 {
		fmt.Fprintf(&b, "node memory: %.1f MiB before, %.1f MiB with all connections: %.1f KiB per connection",
			float64(r.RSSBefore)/(1<<20), float64(r.RSSAfter)/(1<<20), float64(r.PerConn)/1024)
		if r.PerConn <= 0 {
			b.WriteString(" (the node's memory did not grow: it was in use before; measure on a freshly started node)")
		}
		b.WriteByte('\n')
	}
	switch r.Scenario {
	case "fanout", "rooms", "resume":
		fmt.Fprintf(&b, "published %d, delivered %d in %s: %.0f deliveries/s; gaps %d, duplicates %d, lost-recovery events %d\n",
			r.Published, r.Delivered, r.Duration.Round(time.Millisecond), r.PerSecond, r.Gaps, r.Duplicates, r.Lost)
		if r.PublishErrors > 0 {
			fmt.Fprintf(&b, "publishes that failed: %d; the first: %s\n", r.PublishErrors, r.FirstPublishError)
		}
		if r.PublishesSkipped > 0 {
			fmt.Fprintf(&b, "publishes not sent because %d were already waiting for acks: %d; the node did not keep up with --rate\n", maxInFlight, r.PublishesSkipped)
		}
		fmt.Fprintf(&b, "delivery latency: p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n", round(r.P50), round(r.P90), round(r.P99), round(r.P999), round(r.Max))
		for _, n := range r.ByNode {
			fmt.Fprintf(&b, "  subscribers of %s (%d): p50 %s  p99 %s  p99.9 %s  max %s\n", n.URL, n.Conns, round(n.Latency.P50), round(n.Latency.P99), round(n.Latency.P999), round(n.Latency.Max))
		}
	}
	if r.NodeCPU > 0 && r.TURN == nil {
		fmt.Fprintf(&b, "node CPU: %.2f s while running", r.NodeCPU)
		if r.CPUPerMillion > 0 {
			fmt.Fprintf(&b, ", %.1f s per million deliveries", r.CPUPerMillion)
		}
		b.WriteByte('\n')
	}
	if r.Resume != nil {
		b.WriteString(r.Resume.String())
	}
	if r.Calls != nil {
		b.WriteString(r.Calls.String())
	}
	if r.TURN != nil {
		b.WriteString(r.TURN.String())
	}
	return b.String()
}

// run is what a scenario works with.
type run struct {
	cfg  *Config
	rep  *Report
	prog *progress
	// hc dials the nodes' HTTP and WebSocket endpoints from the source
	// addresses.
	hc   *http.Client
	srcs []netip.Addr
	// cpu is the nodes' CPU seconds when measuring started; cpuRead says
	// whether they could be read.
	cpu     float64
	cpuRead bool
}

// urls returns the nodes' WebSocket endpoints: URL, then URLs.
func (r *run) urls() []string {
	return append([]string{r.cfg.URL}, r.cfg.URLs...)
}

// Run executes one load test; it stops when the scenario ends or ctx is done.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return Report{}, err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Duration+MaxDuration, errRunBound)
	defer cancel()
	rep := Report{Started: time.Now(), Scenario: cfg.Scenario, Transport: cfg.Transport, Nodes: 1 + len(cfg.URLs), Sources: 1}
	r := &run{cfg: &cfg, rep: &rep, prog: newProgress(cfg.Progress, cfg.Bar)}
	defer r.prog.end()
	r.srcs = sourceAddrs(cfg.URL)
	if len(r.srcs) > 0 {
		rep.Sources = len(r.srcs)
	}
	r.hc = httpClient(r.srcs)
	if r.hc != http.DefaultClient {
		defer r.hc.CloseIdleConnections()
	}
	var err error
	switch cfg.Scenario {
	case "calls":
		err = runCalls(ctx, r)
	case "turn":
		err = runTURN(ctx, r)
	default:
		err = runRooms(ctx, r)
	}
	r.prog.end()
	rep.Interrupted = ctx.Err() != nil && !errors.Is(context.Cause(ctx), errRunBound)
	return rep, err
}

// measureStart reads the nodes' CPU time at the start of what a scenario
// measures.
func (r *run) measureStart(ctx context.Context) {
	var err error
	r.cpu, err = r.readMetric(ctx, "process_cpu_seconds_total")
	r.cpuRead = err == nil
}

// measureEnd sets the report's NodeCPU to the nodes' CPU time since
// measureStart, and CPUPerMillion from the deliveries counted by then.
func (r *run) measureEnd(ctx context.Context, deliveries int64) {
	if len(r.cfg.Metrics) == 0 || !r.cpuRead {
		return
	}
	cpu, err := r.readMetric(ctx, "process_cpu_seconds_total")
	if err != nil {
		return
	}
	r.rep.NodeCPU = cpu - r.cpu
	if deliveries > 0 {
		r.rep.CPUPerMillion = r.rep.NodeCPU / float64(deliveries) * 1e6
	}
}

// readMetric returns the sum over the nodes of a gauge or counter without
// labels; 0 without metrics endpoints.
func (r *run) readMetric(ctx context.Context, name string) (float64, error) {
	var sum float64
	for _, u := range r.cfg.Metrics {
		v, err := readMetric(ctx, u, name)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

// readMetric reads a metric without labels from a Prometheus endpoint.
func readMetric(ctx context.Context, metricsURL, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, fmt.Errorf("loadtest: metrics: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("loadtest: metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("loadtest: metrics: %s answered %s", metricsURL, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("loadtest: metrics: %s: %w", name, err)
			}
			return f, nil
		}
	}
	return 0, fmt.Errorf("loadtest: metrics: %s has no %s", metricsURL, name)
}
