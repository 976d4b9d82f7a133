package loadtest

import (
	"bytes"
	"context"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/redistest"
	"github.com/parley-rt/parley/gateway"
)

// startNodes serves n gateways on 127.0.0.1:0 that act as one through a
// real redis-server, as the nodes of a cluster do, and returns their
// WebSocket endpoints.
func startNodes(t *testing.T, n int) []string {
	t.Helper()
	srv := redistest.Start(t)
	var urls []string
	for i := range n {
		bus, err := fanout.NewRedis(fanout.RedisConfig{URL: srv.URL(), NodeID: "load-node-" + strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		// As a node's /readyz does, wait for the bus to be connected.
		for deadline := time.Now().Add(10 * time.Second); !bus.Ready(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the Redis bus did not connect in 10 s")
			}
		}
		t.Cleanup(func() { bus.Close() })
		urls = append(urls, serveGateway(t, gateway.Config{Bus: bus}, nil))
	}
	return urls
}

// startMetrics serves this process's metrics as a node's admin listener
// does (the nodes of these tests run in the test process).
func startMetrics(t *testing.T) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	hs := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(hs.Close)
	return hs.URL + "/metrics"
}

// Cut under their clients halfway through, a share of the subscribers
// reconnect, resume their rooms and catch up with no gap, duplicate or
// lost-recovery event, and the report says how long that took.
func TestResume(t *testing.T) {
	url := startNode(t)
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "resume", Conns: 20, Rooms: 2, Rate: 20, Drop: 0.5, Duration: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Resume == nil || rep.Resume.Dropped != 10 {
		t.Fatalf("got %+v, want 10 dropped", rep.Resume)
	}
	if rep.Resume.Recovered != 10 {
		t.Errorf("%d of 10 dropped subscribers recovered", rep.Resume.Recovered)
	}
	if rep.Gaps != 0 || rep.Duplicates != 0 || rep.Lost != 0 {
		t.Errorf("gaps %d, duplicates %d, lost %d: want none", rep.Gaps, rep.Duplicates, rep.Lost)
	}
	if want := rep.Published * 10; rep.Delivered != want {
		t.Errorf("delivered %d, want %d (every subscriber gets every message)", rep.Delivered, want)
	}
	r := rep.Resume.Recovery
	if r.P50 <= 0 || r.Max < r.P50 || r.Max > 3*time.Second {
		t.Errorf("recovery times %+v: want positive and within the run", r)
	}
	if s := rep.String(); !strings.Contains(s, "resume: dropped 10 connections at once, 10 recovered") || !strings.Contains(s, "time to recover") {
		t.Errorf("report lacks the resume figures:\n%s", s)
	}
	var names []string
	for _, d := range rep.Distributions {
		names = append(names, d.Name)
	}
	if want := []string{"delivery latency", "reconnect after a drop", "recovery after a drop"}; !slices.Equal(names, want) {
		t.Errorf("distributions %q, want %q", names, want)
	}
}

// Against two nodes, subscribers are spread over both, every one gets every
// message, and the report gives each node's subscribers their latency.
func TestTwoNodes(t *testing.T) {
	urls := startNodes(t, 2)
	// One room, so that every message crosses from the publishers' node to
	// the other.
	rep, err := Run(context.Background(), Config{URL: urls[0], URLs: urls[1:], Scenario: "fanout", Conns: 20, Rooms: 1, Rate: 20, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Nodes != 2 || len(rep.ByNode) != 2 {
		t.Fatalf("got %d nodes and %d by node, want 2 and 2", rep.Nodes, len(rep.ByNode))
	}
	for i, n := range rep.ByNode {
		if n.URL != urls[i] || n.Conns != 10 || n.Latency.Count == 0 {
			t.Errorf("node %d: %+v, want %s with 10 subscribers and latencies", i, n, urls[i])
		}
	}
	if rep.Published == 0 || rep.Delivered != rep.Published*20 || rep.Gaps != 0 {
		t.Errorf("published %d, delivered %d, gaps %d: want every message to all 20 members of the room", rep.Published, rep.Delivered, rep.Gaps)
	}
	if s := rep.String(); !strings.Contains(s, "on 2 nodes") || !strings.Contains(s, "subscribers of "+urls[1]+" (10)") {
		t.Errorf("report lacks the nodes:\n%s", s)
	}
}

// connect reports its connect rate, and with a metrics endpoint the node's
// memory per connection; fanout reports the node's CPU per delivery.
func TestNodeFigures(t *testing.T) {
	url := startNode(t)
	metrics := startMetrics(t)
	rep, err := Run(context.Background(), Config{URL: url, Metrics: []string{metrics}, Scenario: "connect", Conns: 50, Rooms: 5, Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ConnectRate <= 0 || rep.RSSBefore <= 0 || rep.RSSAfter <= 0 {
		t.Errorf("connect rate %.0f, memory %d then %d: want all positive", rep.ConnectRate, rep.RSSBefore, rep.RSSAfter)
	}
	rep, err = Run(context.Background(), Config{URL: url, Metrics: []string{metrics}, Scenario: "fanout", Conns: 20, Rooms: 1, Rate: 50, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NodeCPU <= 0 || rep.CPUPerMillion <= 0 {
		t.Errorf("node CPU %.3f s, %.1f s per million: want positive", rep.NodeCPU, rep.CPUPerMillion)
	}
	if !strings.Contains(rep.String(), "per million deliveries") {
		t.Errorf("report lacks the CPU per delivery:\n%s", rep)
	}
	// A metrics endpoint that does not answer is an error before any
	// connection, not figures of zero.
	if _, err := Run(context.Background(), Config{URL: url, Metrics: []string{"http://127.0.0.1:1/metrics"}, Scenario: "connect", Conns: 1}); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Errorf("unreachable metrics: got %v, want an error naming them", err)
	}
}

// Progress is a line a second in a log, and one redrawn line with a bar on
// a terminal, ended by a newline when the phase ends.
func TestProgress(t *testing.T) {
	var done atomic.Int64
	var lines bytes.Buffer
	p := newProgress(&lines, false)
	p.begin("connecting", 10, done.Load, func() string { return "2 failed" })
	done.Store(4)
	time.Sleep(1100 * time.Millisecond)
	done.Store(10)
	p.end()
	p.end() // a second end does nothing
	got := lines.String()
	if strings.Contains(got, "\r") || strings.Count(got, "\n") != 2 || !strings.Contains(got, "4/10  2 failed") || !strings.HasSuffix(got, "10/10  2 failed\n") {
		t.Errorf("line progress: %q", got)
	}

	var bar bytes.Buffer
	p = newProgress(&bar, true)
	done.Store(5)
	p.begin("running", 10, done.Load, nil)
	time.Sleep(250 * time.Millisecond)
	p.end()
	got = bar.String()
	if !strings.Contains(got, "\r\x1b[K") || !strings.Contains(got, "[===============               ] 5/10") || strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "\n") {
		t.Errorf("bar progress: %q", got)
	}
}

// A run stopped from outside (Ctrl-C) returns the figures of the part that
// ran, marked as interrupted; a resume run stopped before its drop claims
// no dropped connection.
func TestInterrupted(t *testing.T) {
	url := startNode(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(1500*time.Millisecond, cancel)
	rep, err := Run(ctx, Config{URL: url, Scenario: "resume", Conns: 10, Rooms: 1, Rate: 20, Duration: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Interrupted || rep.Opened != 10 || rep.Resume == nil || rep.Resume.Dropped != 0 {
		t.Errorf("interrupted %v, opened %d, resume %+v: want interrupted, 10 opened, nothing dropped", rep.Interrupted, rep.Opened, rep.Resume)
	}
	if !strings.Contains(rep.String(), "interrupted after") {
		t.Errorf("the report does not say it was interrupted:\n%s", rep)
	}
}
