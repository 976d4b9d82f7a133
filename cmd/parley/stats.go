package main

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-rt/parley/fanout"
)

// latencyWindow is the span of the recent past that the delivery latency
// percentiles of /v1/stats cover.
const latencyWindow = 10 * time.Second

// latencySampleEvery is how often the histogram is remembered for later
// windows: one sample a second at most, however often /v1/stats is asked.
const latencySampleEvery = time.Second

// snapshotReuse is how long one gathered snapshot answers every request:
// many dashboards open on one node cost one gathering a quarter second.
const snapshotReuse = 250 * time.Millisecond

// statsGateway is what nodeStats reads of the gateway.
type statsGateway interface {
	Rooms() int
	Ready() bool
}

// nodeStats answers GET /v1/stats with a snapshot of the node: what its
// metrics registry counts (the gateway's, signaling's, TURN's), what its
// gateway and bus hold right now, and delivery latency percentiles over the
// last latencyWindow, from the cumulative histogram's difference with a
// sample taken that long ago.
type nodeStats struct {
	node    string
	started time.Time
	gather  prometheus.Gatherer
	bus     fanout.Bus
	turn    bool // a TURN server runs
	// now is the clock; nil means time.Now.
	now func() time.Time
	// gw and publicURL are set before either listener serves.
	gw        statsGateway
	publicURL string

	mu      sync.Mutex
	samples []histSample // oldest first, at least latencySampleEvery apart
	last    *statsSnapshot
	lastAt  time.Duration
}

// histSample is the delivery latency histogram's cumulative counts at an
// uptime: one per bucket bound, and the total last.
type histSample struct {
	at     time.Duration
	counts []uint64
}

// statsSnapshot is the body of /v1/stats. Counters are monotonic from the
// node's start: a reader derives rates from two snapshots and their
// uptime_seconds.
type statsSnapshot struct {
	Node string `json:"node"`
	// Listener is "admin" or "public"; PublicURL, on the admin listener,
	// is where the node serves its clients.
	Listener           string       `json:"listener"`
	PublicURL          string       `json:"public_url,omitempty"`
	Time               time.Time    `json:"time"`
	Started            time.Time    `json:"started"`
	UptimeSeconds      float64      `json:"uptime_seconds"`
	Ready              bool         `json:"ready"`
	Draining           bool         `json:"draining"`
	Connections        connStats    `json:"connections"`
	Rooms              roomStats    `json:"rooms"`
	Calls              callStats    `json:"calls"`
	Messages           messageStats `json:"messages"`
	Latency            latencyStats `json:"delivery_latency"`
	SlowConsumerCloses uint64       `json:"slow_consumer_closes"`
	// TURN is null when the node runs no TURN server (--turn-addr off).
	TURN    *turnStats   `json:"turn"`
	Cluster clusterStats `json:"cluster"`
}

type connStats struct {
	WebSocket int `json:"websocket"`
	SSE       int `json:"sse"`
	Total     int `json:"total"`
}

type roomStats struct {
	// Subscribed counts the rooms with a session of this node in them.
	Subscribed int `json:"subscribed"`
	// Held is what the in-memory bus holds (rooms with subscribers or
	// history), against --max-node-rooms; absent with Redis.
	Held *int `json:"held,omitempty"`
}

type callStats struct {
	Active    int `json:"active"`
	Peers     int `json:"peers"`
	PeersAway int `json:"peers_away"`
}

type messageStats struct {
	In             uint64            `json:"in"`
	Out            uint64            `json:"out"`
	InBySource     map[string]uint64 `json:"in_by_source"`
	OutByTransport map[string]uint64 `json:"out_by_transport"`
}

// latencyStats are delivery latency percentiles over the last
// WindowSeconds, estimated from a Prometheus histogram: a percentile is
// interpolated within the bucket it falls in (as histogram_quantile does),
// and the maximum is the upper bound of the highest bucket with a delivery.
type latencyStats struct {
	WindowSeconds float64  `json:"window_seconds"`
	Count         uint64   `json:"count"`
	P50           *float64 `json:"p50_ms"`
	P90           *float64 `json:"p90_ms"`
	P99           *float64 `json:"p99_ms"`
	Max           *float64 `json:"max_ms"`
	// Capped says that some deliveries took longer than the last bucket
	// bound: figures at that bound are lower bounds.
	Capped bool   `json:"capped,omitempty"`
	Method string `json:"method"`
}

type turnStats struct {
	Allocations  int    `json:"allocations"`
	RelayedBytes uint64 `json:"relayed_bytes"`
}

type clusterStats struct {
	// Bus is "memory" (one node) or "redis".
	Bus string `json:"bus"`
	// Nodes are the deployment's live nodes, this node first: with Redis,
	// the nodes that announce themselves there; with the in-memory bus,
	// this node alone. NodesError, when set, says why Nodes is this node
	// alone although the bus is Redis.
	Nodes      []nodeStat  `json:"nodes"`
	NodesError string      `json:"nodes_error,omitempty"`
	Redis      *redisStats `json:"redis,omitempty"`
}

// nodeStat is a live node. Its times are by this node's clock.
type nodeStat struct {
	ID string `json:"id"`
	// URL is where the node serves its clients, when it knows.
	URL           string    `json:"url,omitempty"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// LastSeen is the node's latest announcement in Redis; null for this
	// node before its first.
	LastSeen *time.Time `json:"last_seen"`
	Self     bool       `json:"self"`
}

// redisStats is what this node's bus knows of Redis.
type redisStats struct {
	Connected  bool         `json:"connected"`
	Reconnects uint64       `json:"reconnects"`
	Errors     uint64       `json:"errors"`
	Members    int          `json:"presence_members"`
	Sessions   int          `json:"sessions"`
	Shards     []redisShard `json:"shards"`
}

type redisShard struct {
	Addr      string `json:"addr"`
	Connected bool   `json:"connected"`
	Channels  int    `json:"channels"`
}

const latencyMethod = "estimated from the parley_delivery_latency_seconds histogram (buckets from 0.5 ms to 5 s): " +
	"percentiles are interpolated within their bucket, max is the upper bound of the highest bucket with a delivery"

// handler serves the snapshot as JSON, naming the listener it answers on.
func (n *nodeStats) handler(listener string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		snap := n.snapshot()
		snap.Listener = listener
		if listener != "admin" {
			snap.PublicURL = ""
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		enc.Encode(snap)
	})
}

// snapshot returns the node's figures now, or those gathered less than
// snapshotReuse ago. The caller may change the copy it gets.
func (n *nodeStats) snapshot() statsSnapshot {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now
	if n.now != nil {
		now = n.now
	}
	up := now().Sub(n.started)
	if n.last != nil && up-n.lastAt < snapshotReuse {
		return *n.last
	}
	// Gather returns what it could gather along with any error: a
	// collector that failed leaves its figures at zero, and the rest
	// stands.
	mfs, _ := n.gather.Gather()
	f := make(families, len(mfs))
	for _, mf := range mfs {
		f[mf.GetName()] = mf
	}
	s := statsSnapshot{
		Node:          n.node,
		PublicURL:     n.publicURL,
		Time:          n.started.Add(up).UTC().Round(time.Millisecond),
		Started:       n.started.UTC().Round(time.Millisecond),
		UptimeSeconds: math.Round(up.Seconds()*1000) / 1000,
		Draining:      f.sum("parley_draining") > 0,
	}
	conns := f.by("parley_connections", "transport")
	s.Connections = connStats{WebSocket: int(conns["ws"]), SSE: int(conns["sse"])}
	s.Connections.Total = s.Connections.WebSocket + s.Connections.SSE
	if n.gw != nil {
		s.Ready = n.gw.Ready()
		s.Rooms.Subscribed = n.gw.Rooms()
	}
	s.Calls = callStats{
		Active:    int(f.sum("parley_calls_active")),
		Peers:     int(f.sum("parley_call_peers")),
		PeersAway: int(f.sum("parley_call_peers", "state", "away")),
	}
	s.Messages = messageStats{
		InBySource:     counts(f.by("parley_messages_published_total", "source")),
		OutByTransport: counts(f.by("parley_messages_delivered_total", "transport")),
	}
	for _, v := range s.Messages.InBySource {
		s.Messages.In += v
	}
	for _, v := range s.Messages.OutByTransport {
		s.Messages.Out += v
	}
	// The wire says ws; people read WebSocket.
	if v, ok := s.Messages.OutByTransport["ws"]; ok {
		delete(s.Messages.OutByTransport, "ws")
		s.Messages.OutByTransport["websocket"] = v
	}
	s.SlowConsumerCloses = uint64(f.sum("parley_slow_consumer_closes_total"))
	s.Latency = n.latencyLocked(up, f.histogram("parley_delivery_latency_seconds"))
	if n.turn {
		s.TURN = &turnStats{
			Allocations:  int(f.sum("parley_turn_allocations_active")),
			RelayedBytes: uint64(f.sum("parley_turn_relayed_bytes_total")),
		}
	}
	s.Cluster.Nodes, s.Cluster.NodesError = n.nodesLocked(n.started.Add(up))
	switch bus := n.bus.(type) {
	case *fanout.Memory:
		held := bus.Stats().Rooms
		s.Rooms.Held = &held
		s.Cluster.Bus = "memory"
	case *fanout.Redis:
		st := bus.Stats()
		s.Cluster.Bus = "redis"
		rs := &redisStats{Connected: st.Connected, Reconnects: st.Reconnects, Errors: st.Errors,
			Members: st.Members, Sessions: st.Sessions, Shards: []redisShard{}}
		for _, sh := range st.Shards {
			rs.Shards = append(rs.Shards, redisShard{Addr: sh.Addr, Connected: sh.Connected, Channels: sh.Channels})
		}
		s.Cluster.Redis = rs
	}
	n.last, n.lastAt = &s, up
	return s
}

// nodesTimeout bounds the wait for the bus's list of nodes: a snapshot
// that Redis keeps waiting shows this node alone rather than nothing.
const nodesTimeout = time.Second

// nodeLister is a bus that lists the deployment's live nodes.
type nodeLister interface {
	Nodes(ctx context.Context) ([]fanout.NodeInfo, error)
}

// nodesLocked returns the deployment's live nodes at now, this node first
// and the others by ID, or this node alone and why when the bus cannot list
// them. It does not ask a bus that is not Ready: Redis is out of reach, and
// the request would only wait and count a failure. n.mu is held.
func (n *nodeStats) nodesLocked(now time.Time) ([]nodeStat, string) {
	var infos []fanout.NodeInfo
	why := ""
	if l, ok := n.bus.(nodeLister); ok {
		if !n.bus.Ready() {
			why = "this node cannot reach Redis"
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), nodesTimeout)
			var err error
			infos, err = l.Nodes(ctx)
			cancel()
			if err != nil {
				infos, why = nil, "Redis did not answer the list of nodes"
			}
		}
	}
	if !slices.ContainsFunc(infos, func(i fanout.NodeInfo) bool { return i.Self }) {
		infos = append(infos, fanout.NodeInfo{Self: true})
	}
	out := make([]nodeStat, 0, len(infos))
	for _, i := range infos {
		ns := nodeStat{ID: i.ID, URL: linkable(i.URL), Started: i.Started, Self: i.Self}
		if i.Self {
			// What this node knows of itself is firsthand.
			ns.ID, ns.URL, ns.Started = n.node, linkable(n.publicURL), n.started
		}
		ns.UptimeSeconds = math.Round(max(now.Sub(ns.Started), 0).Seconds()*1000) / 1000
		ns.Started = ns.Started.UTC().Round(time.Millisecond)
		if !i.LastSeen.IsZero() {
			seen := i.LastSeen.UTC().Round(time.Millisecond)
			ns.LastSeen = &seen
		}
		out = append(out, ns)
	}
	slices.SortStableFunc(out, func(a, b nodeStat) int {
		if a.Self != b.Self {
			if a.Self {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, why
}

// linkable returns u when it is a URL that a page can link to: http or
// https, with a host that names a machine. A listener bound to every
// address (":8080", "0.0.0.0:8080") names none: its node does not know
// where it is reached.
func linkable(u string) string {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Hostname() == "" {
		return ""
	}
	if ip := net.ParseIP(p.Hostname()); ip != nil && ip.IsUnspecified() {
		return ""
	}
	return u
}

// setPublicURL sets where the node serves its clients, before either
// listener serves: the snapshot says it on the admin listener, and the bus
// announces it to the other nodes, when it can be linked to.
func (n *nodeStats) setPublicURL(base string) {
	n.publicURL = base
	if r, ok := n.bus.(*fanout.Redis); ok {
		r.SetPublicURL(linkable(base))
	}
}

// latencyLocked returns the percentiles of the deliveries since the newest
// sample at least latencyWindow old (or the oldest sample, or the node's
// start, when there is none that old yet), and remembers h for later
// windows. n.mu is held.
func (n *nodeStats) latencyLocked(up time.Duration, h *dto.Histogram) latencyStats {
	out := latencyStats{Method: latencyMethod}
	var bounds []float64
	var cur []uint64
	if h != nil {
		for _, b := range h.GetBucket() {
			if math.IsInf(b.GetUpperBound(), 1) {
				continue
			}
			bounds = append(bounds, b.GetUpperBound())
			cur = append(cur, b.GetCumulativeCount())
		}
		cur = append(cur, h.GetSampleCount())
	}
	// A histogram whose buckets changed is another histogram: what was
	// remembered of the old one says nothing of it.
	if len(n.samples) > 0 && len(n.samples[0].counts) != len(cur) {
		n.samples = nil
	}
	// With no sample yet, the window is the node's life so far; with none
	// latencyWindow old yet, it is as old as the oldest.
	base := histSample{counts: make([]uint64, len(cur))}
	keep := 0
	for i := len(n.samples) - 1; i >= 0; i-- {
		if up-n.samples[i].at >= latencyWindow {
			base, keep = n.samples[i], i
			break
		}
		base, keep = n.samples[i], i
	}
	n.samples = n.samples[keep:]
	if len(n.samples) == 0 || up-n.samples[len(n.samples)-1].at >= latencySampleEvery {
		n.samples = append(n.samples, histSample{at: up, counts: cur})
	}
	out.WindowSeconds = math.Round((up-base.at).Seconds()*1000) / 1000
	if len(cur) == 0 {
		return out
	}
	delta := make([]uint64, len(cur))
	for i := range cur {
		delta[i] = cur[i] - min(cur[i], base.counts[i])
	}
	q := estimate(bounds, delta)
	out.Count, out.P50, out.P90, out.P99, out.Max, out.Capped = q.count, q.p50, q.p90, q.p99, q.max, q.capped
	return out
}

// estimated are percentiles and the maximum of a histogram's counts, in
// milliseconds; nil when it counted nothing.
type estimated struct {
	count              uint64
	p50, p90, p99, max *float64
	capped             bool
}

// estimate reads percentiles off cumulative bucket counts: cum[i] counts the
// observations at or below bounds[i] (seconds), and the last entry of cum,
// one past bounds, counts them all.
func estimate(bounds []float64, cum []uint64) estimated {
	total := cum[len(cum)-1]
	e := estimated{count: total}
	if total == 0 || len(bounds) == 0 {
		return e
	}
	ms := func(sec float64) *float64 {
		v := math.Round(sec*1e6) / 1e3 // microsecond precision
		return &v
	}
	quantile := func(q float64) *float64 {
		rank := q * float64(total)
		var lower float64
		var below uint64
		for i, b := range bounds {
			if float64(cum[i]) >= rank && cum[i] > below {
				return ms(lower + (b-lower)*(rank-float64(below))/float64(cum[i]-below))
			}
			lower, below = b, cum[i]
		}
		return ms(bounds[len(bounds)-1])
	}
	e.p50, e.p90, e.p99 = quantile(0.5), quantile(0.9), quantile(0.99)
	last := len(bounds) - 1
	if total > cum[last] {
		e.capped = true
		e.max = ms(bounds[last])
		return e
	}
	for i := last; i >= 0; i-- {
		prev := uint64(0)
		if i > 0 {
			prev = cum[i-1]
		}
		if cum[i] > prev {
			e.max = ms(bounds[i])
			break
		}
	}
	return e
}

// families are gathered metric families by name.
type families map[string]*dto.MetricFamily

// sum adds the values of name's series whose labels include the given
// name, value pairs.
func (f families) sum(name string, labels ...string) float64 {
	var total float64
	mf := f[name]
	if mf == nil {
		return 0
	}
	for _, m := range mf.GetMetric() {
		if matches(m, labels) {
			total += value(m)
		}
	}
	return total
}

// by returns name's values by the value of label.
func (f families) by(name, label string) map[string]float64 {
	out := map[string]float64{}
	mf := f[name]
	if mf == nil {
		return out
	}
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				out[lp.GetValue()] += value(m)
			}
		}
	}
	return out
}

// histogram returns name's histogram, or nil.
func (f families) histogram(name string) *dto.Histogram {
	mf := f[name]
	if mf == nil || len(mf.GetMetric()) == 0 {
		return nil
	}
	return mf.GetMetric()[0].GetHistogram()
}

func matches(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		if !slices.ContainsFunc(m.GetLabel(), func(lp *dto.LabelPair) bool {
			return lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

func counts(m map[string]float64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = uint64(v)
	}
	return out
}
