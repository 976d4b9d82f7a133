package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/parley-rt/parley/gateway/client"
)

// Config describes one load test run. Zero values take the documented defaults.
type Config struct {
	// URL is the node's WebSocket endpoint, such as ws://127.0.0.1:8080/v1/ws.
	// On Linux, connections to an IPv4 loopback URL (or localhost) come from
	// 127.0.0.1 to 127.0.0.254 in turn, so a node's limit on connections per
	// client address applies to each of them.
	URL string
	// PublishURL, when set, is the endpoint the fanout publishers connect
	// to instead of URL: another node of the same cluster, so that the
	// latencies include the trip between nodes.
	PublishURL string
	// MetricsURL is the node's /metrics, read for its resident memory; empty
	// skips the memory figures.
	MetricsURL string
	// Token is sent by every client; empty in dev mode.
	Token string
	// Scenario is "idle", "fanout" or "rooms"; zero means "fanout". In
	// rooms, every subscriber also publishes into its room over its own
	// connection (WebSocket only): many small chatty rooms.
	Scenario string
	// Transport is how the subscribers connect: "ws" (WebSocket) or "sse"
	// (a GET of the node's SSE endpoint, URL with /ws replaced by /sse);
	// zero means "ws". The fanout publishers always use WebSocket.
	Transport string
	// Conns is the number of subscriber connections; zero means 1000.
	Conns int
	// Rooms spreads the subscribers over this many rooms; zero means 10.
	Rooms int
	// Rate is publishes per second into each room (fanout), or by each
	// subscriber (rooms); zero means 10. A node limits each session's
	// publishes (--publish-rate, 50 a second by default).
	Rate float64
	// Size is the payload size in bytes of each published message; zero
	// means 64.
	Size int
	// Duration is how long the scenario runs after every connection is up;
	// zero means 10s. It is capped at 10 minutes.
	Duration time.Duration
	// Ramp is how many connections are opened per second; zero means 2000.
	Ramp int
	// AllowRemote permits a target that is not a loopback address.
	AllowRemote bool
	// Progress receives a line a second while the run goes on; nil discards.
	Progress io.Writer
}

// maxDuration bounds every run.
const maxDuration = 10 * time.Minute

// Latencies are recorded in an HDR histogram of microseconds from 1 µs to
// maxLatency, to 3 significant digits (0.1%): a fixed amount of memory,
// whatever the number of deliveries. A latency past maxLatency counts as
// maxLatency.
const (
	maxLatency    = time.Minute
	latencyDigits = 3
)

// newLatencies returns an empty latency histogram.
func newLatencies() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, maxLatency.Microseconds(), latencyDigits)
}

// recordLatency adds d to h, clamped to the histogram's range.
func recordLatency(h *hdrhistogram.Histogram, d time.Duration) {
	h.RecordValue(min(max(d.Microseconds(), 1), maxLatency.Microseconds()))
}

// latencyAt returns the latency at quantile q (0 to 100) of h.
func latencyAt(h *hdrhistogram.Histogram, q float64) time.Duration {
	return time.Duration(h.ValueAtQuantile(q)) * time.Microsecond
}

func (c *Config) setDefaults() error {
	if c.URL == "" {
		return errors.New("loadtest: URL is required")
	}
	if c.Scenario == "" {
		c.Scenario = "fanout"
	}
	if c.Scenario != "fanout" && c.Scenario != "idle" && c.Scenario != "rooms" {
		return fmt.Errorf("loadtest: scenario %q: want idle, fanout or rooms", c.Scenario)
	}
	if c.Transport == "" {
		c.Transport = "ws"
	}
	if c.Transport != "ws" && c.Transport != "sse" {
		return fmt.Errorf("loadtest: transport %q: want ws or sse", c.Transport)
	}
	if c.Scenario == "rooms" && c.Transport != "ws" {
		return errors.New("loadtest: the rooms scenario publishes over the subscribers' own connections: WebSocket only")
	}
	if c.Conns == 0 {
		c.Conns = 1000
	}
	if c.Rooms == 0 {
		c.Rooms = 10
	}
	if c.Rate == 0 {
		c.Rate = 10
	}
	if c.Size == 0 {
		c.Size = 64
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Ramp == 0 {
		c.Ramp = 2000
	}
	switch {
	case c.Conns < 0 || c.Rooms < 0 || c.Size < 0 || c.Ramp < 0 || !(c.Rate >= 0) || c.Duration < 0:
		return errors.New("loadtest: counts, rates and durations must not be negative")
	case c.Duration > maxDuration:
		return fmt.Errorf("loadtest: duration %s is over the %s bound", c.Duration, maxDuration)
	case c.Ramp > 1_000_000 || c.Rate > 1_000_000:
		return errors.New("loadtest: --ramp and --rate are at most 1000000 a second")
	}
	c.Rooms = min(c.Rooms, c.Conns)
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if !c.AllowRemote {
		for _, raw := range []string{c.URL, c.PublishURL, c.MetricsURL} {
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
		return fmt.Errorf("loadtest: %s is not a loopback address; pass AllowRemote (--allow-remote) to load a remote node", host)
	}
	return nil
}

// Report is the outcome of a run.
type Report struct {
	Scenario  string        `json:"scenario"`
	Transport string        `json:"transport"`
	Conns     int           `json:"conns"`
	Rooms     int           `json:"rooms"`
	ConnectIn time.Duration `json:"connect_time"`
	Duration  time.Duration `json:"duration"`
	// ConnectErrors counts connections that could not be opened.
	ConnectErrors int `json:"connect_errors"`
	// Sources is how many source addresses the connections came from: 254
	// on Linux for an IPv4 loopback target, else 1.
	Sources int `json:"source_addresses"`

	Published  int64   `json:"published"`
	Delivered  int64   `json:"delivered"`
	PerSecond  float64 `json:"deliveries_per_second"`
	Gaps       int64   `json:"gaps"`
	Duplicates int64   `json:"duplicates"`
	Lost       int64   `json:"lost_events"`

	// Delivery latency percentiles (fanout), from an HDR histogram: each
	// within 0.1% of the true value.
	P50, P90, P99, P999, Max time.Duration

	// RSSBefore and RSSAfter are the node's resident memory before the
	// connections opened and with all of them open; PerConn is the
	// difference divided by Conns.
	RSSBefore, RSSAfter int64
	PerConn             int64
}

// String renders the report for people.
func (r Report) String() string {
	var b strings.Builder
	from := "one source address"
	if r.Sources > 1 {
		from = strconv.Itoa(r.Sources) + " source addresses"
	}
	fmt.Fprintf(&b, "scenario %s over %s: %d connections over %d rooms from %s, opened in %s (%d failed)\n", r.Scenario, r.Transport, r.Conns, r.Rooms, from, r.ConnectIn.Round(time.Millisecond), r.ConnectErrors)
	if r.RSSAfter > 0 {
		fmt.Fprintf(&b, "node memory: %.1f MiB before, %.1f MiB with all connections: %.1f KiB per connection\n",
			float64(r.RSSBefore)/(1<<20), float64(r.RSSAfter)/(1<<20), float64(r.PerConn)/1024)
	}
	if r.Scenario != "idle" {
		fmt.Fprintf(&b, "published %d, delivered %d in %s: %.0f deliveries/s; gaps %d, duplicates %d, lost-recovery events %d\n",
			r.Published, r.Delivered, r.Duration.Round(time.Millisecond), r.PerSecond, r.Gaps, r.Duplicates, r.Lost)
		fmt.Fprintf(&b, "delivery latency: p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n", r.P50, r.P90, r.P99, r.P999, r.Max)
	}
	return b.String()
}

// publisher publishes into room number room over c.
type publisher struct {
	c    *client.Client
	room int
}

// payload is what the fanout publishers send: the send time for latency.
type payload struct {
	Sent int64  `json:"sent"`
	Pad  string `json:"pad,omitempty"`
}

// Run executes one load test; it stops when the scenario ends or ctx is done.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return Report{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration+maxDuration)
	defer cancel()
	var endpoint string // of SSE
	if cfg.Transport == "sse" {
		var err error
		if endpoint, err = sseEndpoint(cfg.URL); err != nil {
			return Report{}, err
		}
	}
	rep := Report{Scenario: cfg.Scenario, Transport: cfg.Transport, Conns: cfg.Conns, Rooms: cfg.Rooms, Sources: 1}
	srcs := sourceAddrs(cfg.URL)
	if len(srcs) > 0 {
		rep.Sources = len(srcs)
	}
	hc := httpClient(srcs)
	if hc != http.DefaultClient {
		defer hc.CloseIdleConnections()
	}
	// An SSE stream is one response that lasts the whole run.
	sseClient := *hc
	sseClient.Timeout = 0
	if cfg.MetricsURL != "" {
		rss, err := readRSS(ctx, cfg.MetricsURL)
		if err != nil {
			return rep, err
		}
		rep.RSSBefore = rss
	}

	var (
		delivered, gaps, dups, lost atomic.Int64
		samplesMu                   sync.Mutex
		samples                     = newLatencies()
	)
	record := func(d time.Duration) {
		samplesMu.Lock()
		recordLatency(samples, d)
		samplesMu.Unlock()
	}
	// message counts a room message at offset with data, for a subscriber
	// whose previous one was at last (0 for none); it returns offset.
	message := func(last, offset uint64, data []byte) uint64 {
		if last != 0 && offset > last+1 {
			gaps.Add(int64(offset - last - 1))
		}
		if offset <= last {
			dups.Add(1)
		}
		delivered.Add(1)
		var p payload
		if json.Unmarshal(data, &p) == nil && p.Sent > 0 {
			record(time.Duration(time.Now().UnixNano() - p.Sent))
		}
		return offset
	}

	// Open subscribers at the ramp rate.
	start := time.Now()
	clients := make([]io.Closer, 0, cfg.Conns) // WebSocket clients or SSE streams
	// members counts the subscribers of each room; in rooms, each WebSocket
	// subscriber publishes too.
	members := make([]int64, cfg.Rooms)
	var pubs []publisher
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	var (
		readers  sync.WaitGroup
		firstErr error // why the first connection that failed did
	)
	// failed counts a connection that could not be set up; when none has
	// been, the run stops after a few, saying why, instead of measuring
	// nothing for its whole duration.
	failed := func(err error) error {
		rep.ConnectErrors++
		if firstErr == nil {
			firstErr = err
		}
		if len(clients) == 0 && rep.ConnectErrors >= 10 {
			return fmt.Errorf("loadtest: no connection to %s succeeded (%d tried): %w", cfg.URL, rep.ConnectErrors, firstErr)
		}
		return nil
	}
	tick := time.NewTicker(time.Second / time.Duration(max(1, cfg.Ramp)))
	progress := time.NewTicker(time.Second)
	for i := 0; i < cfg.Conns; i++ {
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-progress.C:
			fmt.Fprintf(cfg.Progress, "connecting: %d/%d\n", i, cfg.Conns)
		case <-tick.C:
		}
		r := i % cfg.Rooms
		room := "load-" + strconv.Itoa(r)
		if cfg.Transport == "sse" {
			s, err := dialSSE(ctx, &sseClient, endpoint, room, cfg.Token)
			if err != nil {
				if err := failed(err); err != nil {
					return rep, err
				}
				continue
			}
			clients = append(clients, s)
			members[r]++
			readers.Add(1)
			go func() {
				defer readers.Done()
				var last uint64
				s.read(func(offset uint64, data []byte) { last = message(last, offset, data) })
			}()
			continue
		}
		c, err := client.Dial(ctx, client.Options{URL: cfg.URL, Token: cfg.Token, EventBuffer: 16, HTTPClient: hc})
		if err != nil {
			if err := failed(err); err != nil {
				return rep, err
			}
			continue
		}
		if _, err := c.Subscribe(ctx, room, client.SubscribeOptions{}); err != nil {
			c.Close()
			if err := failed(err); err != nil {
				return rep, err
			}
			continue
		}
		clients = append(clients, c)
		members[r]++
		if cfg.Scenario == "rooms" {
			pubs = append(pubs, publisher{c, r})
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			var last uint64
			for e := range c.Events() {
				switch e.Kind {
				case client.EventMessage:
					last = message(last, e.Message.Offset, e.Message.Data)
				case client.EventLost:
					lost.Add(1)
				}
			}
		}()
	}
	tick.Stop()
	rep.ConnectIn = time.Since(start)
	fmt.Fprintf(cfg.Progress, "connected: %d in %s (%d failed)\n", len(clients), rep.ConnectIn.Round(time.Millisecond), rep.ConnectErrors)

	var published atomic.Int64
	perRoom := make([]atomic.Int64, cfg.Rooms) // publishes accepted, by room
	runStart := time.Now()
	if cfg.Scenario != "idle" && len(clients) > 0 {
		if cfg.Scenario == "fanout" {
			// One publisher connection per room, so the node's
			// per-session publish rate limit (--publish-rate) is not what
			// the run measures.
			for r := range cfg.Rooms {
				pubURL := cfg.URL
				if cfg.PublishURL != "" {
					pubURL = cfg.PublishURL
				}
				pub, err := client.Dial(ctx, client.Options{URL: pubURL, Token: cfg.Token, HTTPClient: hc})
				if err != nil {
					return rep, fmt.Errorf("loadtest: publisher: %w", err)
				}
				defer pub.Close()
				pubs = append(pubs, publisher{pub, r})
			}
		}
		pad := strings.Repeat("x", max(0, cfg.Size-24))
		var publishers sync.WaitGroup
		runCtx, stop := context.WithTimeout(ctx, cfg.Duration)
		for _, pub := range pubs {
			publishers.Add(1)
			go func() {
				defer publishers.Done()
				room := "load-" + strconv.Itoa(pub.room)
				period := time.Duration(float64(time.Second) / cfg.Rate)
				// Publishers start spread over one period, not all at
				// once: thousands of them (rooms) would otherwise publish
				// in bursts.
				first := time.NewTimer(rand.N(period))
				select {
				case <-runCtx.Done():
					first.Stop()
					return
				case <-first.C:
				}
				t := time.NewTicker(period)
				defer t.Stop()
				for {
					data, _ := json.Marshal(payload{Sent: time.Now().UnixNano(), Pad: pad})
					if _, err := pub.c.Publish(ctx, room, json.RawMessage(data), ""); err == nil {
						published.Add(1)
						perRoom[pub.room].Add(1)
					}
					select {
					case <-runCtx.Done():
						return
					case <-t.C:
					}
				}
			}()
		}
		report := time.NewTicker(time.Second)
	wait:
		for {
			select {
			case <-runCtx.Done():
				break wait
			case <-report.C:
				fmt.Fprintf(cfg.Progress, "running: %s published %d delivered %d\n", time.Since(runStart).Round(time.Second), published.Load(), delivered.Load())
			}
		}
		report.Stop()
		stop()
		publishers.Wait()
		// Let the last messages arrive: every member of a room gets each
		// of its messages.
		var want int64
		for r := range perRoom {
			want += perRoom[r].Load() * members[r]
		}
		deadline := time.Now().Add(5 * time.Second)
		for delivered.Load() < want && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	} else {
		t := time.NewTimer(cfg.Duration)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	rep.Duration = time.Since(runStart)
	progress.Stop()
	if cfg.MetricsURL != "" {
		if rss, err := readRSS(ctx, cfg.MetricsURL); err == nil {
			rep.RSSAfter = rss
			if n := int64(len(clients)); n > 0 {
				rep.PerConn = (rep.RSSAfter - rep.RSSBefore) / n
			}
		}
	}
	for _, c := range clients {
		c.Close()
	}
	clients = nil
	readers.Wait()

	rep.Published, rep.Delivered = published.Load(), delivered.Load()
	rep.Gaps, rep.Duplicates, rep.Lost = gaps.Load(), dups.Load(), lost.Load()
	if rep.Duration > 0 {
		rep.PerSecond = float64(rep.Delivered) / rep.Duration.Seconds()
	}
	if samples.TotalCount() > 0 {
		rep.P50, rep.P90, rep.P99, rep.P999 = latencyAt(samples, 50), latencyAt(samples, 90), latencyAt(samples, 99), latencyAt(samples, 99.9)
		rep.Max = time.Duration(samples.Max()) * time.Microsecond
	}
	return rep, nil
}

// readRSS reads process_resident_memory_bytes from a Prometheus endpoint.
func readRSS(ctx context.Context, metricsURL string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, fmt.Errorf("loadtest: metrics: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("loadtest: metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "process_resident_memory_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("loadtest: metrics: %w", err)
			}
			return int64(f), nil
		}
	}
	return 0, errors.New("loadtest: metrics: no process_resident_memory_bytes")
}
