package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/redistest"
)

// statsNode is a `parley serve` run in this process for the /v1/stats tests.
type statsNode struct {
	base, admin string
	client      *http.Client
	// stop shuts the node down, as SIGTERM does, and waits for it.
	stop func()
}

var dashboardRE = regexp.MustCompile(`dashboard +(http://\S+)/dashboard`)

// startStatsNode runs serve with its listeners on loopback and args after
// the defaults, until the test ends.
func startStatsNode(t *testing.T, args ...string) *statsNode {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncBuffer
	done := make(chan error, 1)
	all := append([]string{"--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--turn-addr", "off", "--drain", "100ms"}, args...)
	go func() { done <- run(ctx, func() {}, all, env(), nil, &out, &logs) }()
	tr := &http.Transport{}
	n := &statsNode{base: waitListening(t, &out), client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	m := dashboardRE.FindStringSubmatch(out.String())
	if m == nil {
		cancel()
		<-done
		t.Fatalf("no dashboard address in the banner:\n%s", out.String())
	}
	n.admin = m[1]
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve returned %v, logs:\n%s", err, logs.String())
				}
			case <-time.After(15 * time.Second):
				t.Errorf("serve did not return after cancel")
			}
			tr.CloseIdleConnections()
		})
	}
	t.Cleanup(n.stop)
	return n
}

// get requests url with the Authorization header auth (none if empty).
func (n *statsNode) get(t *testing.T, url, auth string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// stats reads the admin listener's /v1/stats.
func (n *statsNode) stats(t *testing.T) statsSnapshot {
	t.Helper()
	resp, body := n.get(t, n.admin+"/v1/stats", "")
	var s statsSnapshot
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &s) != nil {
		t.Fatalf("GET admin /v1/stats: %s %s", resp.Status, body)
	}
	return s
}

// TestStatsAccess checks who gets the node's figures: anyone on the admin
// listener, and on the public one only a request with the API key in its
// Authorization header; without a configured key the public listener does
// not serve them at all.
func TestStatsAccess(t *testing.T) {
	const key = "stats-test-key"
	withKey := startStatsNode(t, "--api-key", key, "--node-id", "stats-a")
	noKey := startStatsNode(t, "--node-id", "stats-b")
	tests := []struct {
		name     string
		node     *statsNode
		url      string
		auth     string
		status   int
		code     string // of the JSON error
		listener string // of the answer, when 200
	}{
		{"admin, no credential", withKey, withKey.admin + "/v1/stats", "", 200, "", "admin"},
		{"public, no credential", withKey, withKey.base + "/v1/stats", "", 401, "unauthorized", ""},
		{"public, a wrong key", withKey, withKey.base + "/v1/stats", "Bearer not-the-key", 401, "unauthorized", ""},
		{"public, a user token", withKey, withKey.base + "/v1/stats", "Bearer a.b.c", 401, "unauthorized", ""},
		{"public, not a bearer header", withKey, withKey.base + "/v1/stats", "Basic " + key, 401, "unauthorized", ""},
		{"public, the key in the URL", withKey, withKey.base + "/v1/stats?token=" + key, "", 401, "unauthorized", ""},
		{"public, the key", withKey, withKey.base + "/v1/stats", "Bearer " + key, 200, "", "public"},
		{"public without a configured key", noKey, noKey.base + "/v1/stats", "", 404, "not_found", ""},
		{"public without a configured key, a bearer", noKey, noKey.base + "/v1/stats", "Bearer " + key, 404, "not_found", ""},
		{"admin without a configured key", noKey, noKey.admin + "/v1/stats", "", 200, "", "admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tt.node.get(t, tt.url, tt.auth)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %s %s, want %d", resp.Status, body, tt.status)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if tt.status != http.StatusOK {
				var e struct {
					Error struct{ Code, Message string }
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != tt.code || e.Error.Message == "" {
					t.Errorf("body %s, want a JSON error with code %s and a message", body, tt.code)
				}
				if strings.Contains(string(body), key) {
					t.Errorf("the refusal %s repeats the key", body)
				}
				return
			}
			var s statsSnapshot
			if err := json.Unmarshal(body, &s); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if s.Listener != tt.listener || !strings.HasPrefix(s.Node, "stats-") || s.Cluster.Bus != "memory" {
				t.Errorf("got listener %q, node %q, bus %q; want %s, stats-…, memory", s.Listener, s.Node, s.Cluster.Bus, tt.listener)
			}
			// With the in-memory bus, the cluster is this node.
			if ns := s.Cluster.Nodes; len(ns) != 1 || ns[0].ID != s.Node || !ns[0].Self || ns[0].URL != tt.node.base || ns[0].LastSeen == nil || !ns[0].Started.Equal(s.Started) {
				t.Errorf("nodes %+v, want this node alone, at %s, started %v, seen", ns, tt.node.base, s.Started)
			}
			// Only the admin listener says where the public one is.
			if (s.PublicURL == tt.node.base) != (tt.listener == "admin") {
				t.Errorf("public_url %q on the %s listener", s.PublicURL, tt.listener)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", cc)
			}
		})
	}
}

// TestStatsDashboardServed checks the pages each listener serves: the admin
// listener the dashboard (at /dashboard, its root leading there) and only
// what it loads, the public one the dashboard among its pages.
func TestStatsDashboardServed(t *testing.T) {
	n := startStatsNode(t)
	n.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	tests := []struct {
		url    string
		status int
		want   string // in the body, or the Location of a redirect
	}{
		{n.admin + "/dashboard", 200, "<title>Node dashboard"},
		{n.admin + "/dashboard.html", 200, "<title>Node dashboard"},
		{n.admin + "/dashboard.js", 200, "/v1/stats"},
		{n.admin + "/dashboard.css", 200, ".dash-tiles"},
		{n.admin + "/style.css", 200, ":root"},
		{n.admin + "/", 302, "/dashboard"},
		{n.admin + "/chat.html", 404, ""},
		{n.base + "/dashboard.html", 200, "<title>Node dashboard"},
	}
	for _, tt := range tests {
		resp, body := n.get(t, tt.url, "")
		if resp.StatusCode != tt.status {
			t.Errorf("GET %s: got %s, want %d", tt.url, resp.Status, tt.status)
			continue
		}
		got := string(body)
		if tt.status == 302 {
			got = resp.Header.Get("Location")
		}
		if !strings.Contains(got, tt.want) {
			t.Errorf("GET %s: got %.80q, want it to contain %q", tt.url, got, tt.want)
		}
		if strings.HasSuffix(tt.url, "dashboard") && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: no Content-Security-Policy", tt.url)
		}
	}
}

// TestStatsFiguresMove puts real traffic through a node, a WebSocket
// subscriber, an SSE stream, an HTTP publish and a TURN relay, and checks
// that /v1/stats counts each, and that the connections are gone from it once
// closed.
func TestStatsFiguresMove(t *testing.T) {
	const key = "stats-move-key"
	n := startStatsNode(t, "--api-key", key, "--turn-addr", "127.0.0.1:0")
	before := n.stats(t)
	if before.Connections.Total != 0 || before.Messages.Out != 0 || before.Latency.Count != 0 || before.TURN == nil || before.TURN.Allocations != 0 {
		t.Fatalf("an idle node: %+v", before)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.base, "http")+"/v1/ws", &websocket.DialOptions{Subprotocols: []string{"parley.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	read := func(typ string) map[string]any {
		t.Helper()
		for {
			_, b, err := ws.Read(ctx)
			if err != nil {
				t.Fatalf("waiting for %s: %v", typ, err)
			}
			// A text frame may hold several objects, one a line.
			for line := range bytes.SplitSeq(b, []byte("\n")) {
				var f map[string]any
				if json.Unmarshal(line, &f) == nil && f["type"] == typ {
					return f
				}
			}
		}
	}
	read("welcome")
	ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"1","room":"stats-room"}`))
	read("ack")

	sctx, scancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, n.base+"/v1/sse?rooms=stats-room", nil)
	sse, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sseDone := make(chan struct{})
	go func() {
		defer close(sseDone)
		io.Copy(io.Discard, sse.Body)
		sse.Body.Close()
	}()
	defer func() {
		scancel()
		<-sseDone
	}()
	waitStats(t, n, "the SSE stream counted", func(s statsSnapshot) bool { return s.Connections.SSE == 1 })

	preq, _ := http.NewRequest(http.MethodPost, n.base+"/v1/rooms/stats-room/messages", strings.NewReader(`{"text":"hello"}`))
	preq.Header.Set("Authorization", "Bearer "+key)
	preq.Header.Set("Content-Type", "application/json")
	presp, err := n.client.Do(preq)
	if err != nil {
		t.Fatal(err)
	}
	presp.Body.Close()
	if presp.StatusCode != http.StatusOK {
		t.Fatalf("publish: %s", presp.Status)
	}
	read("message")

	user, pass, turnAddr := turnCredentials(t, n)
	peer := udpEchoForTURNS(t)
	relayUDP(t, turnAddr, user, pass, peer, func() {
		s := waitStats(t, n, "the traffic counted", func(s statsSnapshot) bool {
			return s.Messages.Out >= 2 && s.Latency.Count >= 2 && s.TURN.RelayedBytes > 0
		})
		want := []struct {
			what      string
			got, want int
		}{
			{"WebSocket connections", s.Connections.WebSocket, 1},
			{"SSE connections", s.Connections.SSE, 1},
			{"connections", s.Connections.Total, 2},
			{"rooms with a subscriber", s.Rooms.Subscribed, 1},
			{"messages in", int(s.Messages.In), 1},
			{"messages in over HTTP", int(s.Messages.InBySource["http"]), 1},
			{"messages out over WebSocket", int(s.Messages.OutByTransport["websocket"]), 1},
			{"messages out over SSE", int(s.Messages.OutByTransport["sse"]), 1},
			{"TURN allocations", s.TURN.Allocations, 1},
		}
		for _, w := range want {
			if w.got != w.want {
				t.Errorf("%s: got %d, want %d", w.what, w.got, w.want)
			}
		}
		l := s.Latency
		if l.P50 == nil || *l.P50 <= 0 || l.P99 == nil || *l.P99 < *l.P50 || l.Max == nil || *l.Max < *l.P99 || l.WindowSeconds <= 0 || l.Method == "" {
			t.Errorf("delivery latency %+v: want p50 above zero, p50 <= p99 <= max, a window and a method", l)
		}
		if s.Rooms.Held == nil || *s.Rooms.Held != 1 {
			t.Errorf("rooms held %v, want 1", s.Rooms.Held)
		}
		if !s.Ready || s.Draining || s.UptimeSeconds <= before.UptimeSeconds {
			t.Errorf("ready %v, draining %v, uptime %v after %v; want ready, not draining, later", s.Ready, s.Draining, s.UptimeSeconds, before.UptimeSeconds)
		}
	})

	ws.Close(websocket.StatusNormalClosure, "")
	scancel()
	<-sseDone
	waitStats(t, n, "the connections and the allocation gone", func(s statsSnapshot) bool {
		return s.Connections.Total == 0 && s.Rooms.Subscribed == 0 && s.TURN.Allocations == 0
	})
}

// TestStatsRedis checks the cluster part of /v1/stats with a real Redis:
// the bus and its connection, which turn unready while Redis is down and
// ready again once it is back, and the list of nodes: two nodes on one
// Redis list each other, each marking itself, and a node that shuts down
// leaves the other's list at once.
func TestStatsRedis(t *testing.T) {
	redis := redistest.Start(t)
	n := startStatsNode(t, "--redis", redis.URL(), "--node-id", "stats-r1")
	other := startStatsNode(t, "--redis", redis.URL(), "--node-id", "stats-r2")
	up := func(s statsSnapshot) bool {
		r := s.Cluster.Redis
		return s.Ready && r != nil && r.Connected && len(r.Shards) == 1 && r.Shards[0].Connected
	}
	s := waitStats(t, n, "Redis connected", up)
	if s.Cluster.Bus != "redis" || s.Rooms.Held != nil {
		t.Errorf("bus %q, rooms held %v; want redis and no held count (Redis holds the rooms)", s.Cluster.Bus, s.Rooms.Held)
	}
	both := func(s statsSnapshot) bool {
		ns := s.Cluster.Nodes
		return len(ns) == 2 && ns[0].LastSeen != nil && ns[1].LastSeen != nil
	}
	for _, c := range []struct {
		node       *statsNode
		self, peer string
		peerURL    string
	}{{n, "stats-r1", "stats-r2", other.base}, {other, "stats-r2", "stats-r1", n.base}} {
		s := waitStats(t, c.node, "both nodes listed", both)
		self, peer := s.Cluster.Nodes[0], s.Cluster.Nodes[1]
		if !self.Self || self.ID != c.self || self.URL != c.node.base || !self.Started.Equal(s.Started) || self.UptimeSeconds != s.UptimeSeconds {
			t.Errorf("%s lists itself as %+v, want it first, marked, at %s, started %v, up %v s", c.self, self, c.node.base, s.Started, s.UptimeSeconds)
		}
		if peer.Self || peer.ID != c.peer || peer.URL != c.peerURL || peer.Started.After(s.Time) || peer.UptimeSeconds <= 0 {
			t.Errorf("%s lists %+v, want %s at %s, not itself, started before %v", c.self, peer, c.peer, c.peerURL, s.Time)
		}
		// Announced every 5 s; the clocks are one machine's.
		if ago := s.Time.Sub(*peer.LastSeen); ago < -time.Second || ago > 16*time.Second {
			t.Errorf("%s last saw %s %v before its answer, want within 15 s", c.self, c.peer, ago)
		}
		if s.Cluster.NodesError != "" {
			t.Errorf("nodes_error %q with Redis up", s.Cluster.NodesError)
		}
	}

	redis.Kill()
	s = waitStats(t, n, "Redis seen down", func(s statsSnapshot) bool {
		return !s.Ready && s.Cluster.Redis != nil && !s.Cluster.Redis.Connected
	})
	if s.Draining {
		t.Errorf("a node that lost Redis says it drains")
	}
	if ns := s.Cluster.Nodes; len(ns) != 1 || !ns[0].Self || s.Cluster.NodesError == "" {
		t.Errorf("with Redis down: nodes %+v, nodes_error %q; want this node alone, and why", ns, s.Cluster.NodesError)
	}
	redis.Restart()
	s = waitStats(t, n, "Redis back", up)
	if s.Cluster.Redis.Reconnects == 0 {
		t.Errorf("reconnects %d after Redis came back, want at least 1", s.Cluster.Redis.Reconnects)
	}
	// Redis came back empty: each node announces itself again.
	waitStats(t, n, "both nodes listed again", both)

	other.stop()
	s = waitStats(t, n, "the stopped node gone", func(s statsSnapshot) bool { return len(s.Cluster.Nodes) == 1 })
	if ns := s.Cluster.Nodes; !ns[0].Self || ns[0].ID != "stats-r1" {
		t.Errorf("after stats-r2 stopped, nodes %+v, want stats-r1 alone", ns)
	}
}

// TestStatsNodesURL checks the URLs of the list: a node's public URL is
// announced to the others when a page can link to it, and not when its
// listener is bound to every address, which says nothing of where the
// node is reached.
func TestStatsNodesURL(t *testing.T) {
	redis := redistest.Start(t)
	start := func(id, base string) *nodeStats {
		bus, err := fanout.NewRedis(fanout.RedisConfig{URL: redis.URL(), NodeID: id})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bus.Close() })
		n := &nodeStats{node: id, started: time.Now(), gather: prometheus.NewRegistry(), bus: bus}
		n.setPublicURL(base)
		return n
	}
	a := start("url-a", "http://10.1.2.3:8080")
	b := start("url-b", "http://[::]:8080")
	deadline := time.Now().Add(20 * time.Second)
	for {
		sa, sb := a.snapshot(), b.snapshot()
		na, nb := sa.Cluster.Nodes, sb.Cluster.Nodes
		if len(na) == 2 && len(nb) == 2 && nb[1].URL != "" {
			if nb[1].ID != "url-a" || nb[1].URL != "http://10.1.2.3:8080" {
				t.Errorf("url-b lists %+v, want url-a at http://10.1.2.3:8080", nb[1])
			}
			if na[1].ID != "url-b" || na[1].URL != "" || nb[0].URL != "" {
				t.Errorf("url-b, bound to every address, is %+v on url-a's list and %+v on its own, want no URL on either", na[1], nb[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nodes did not list each other with url-a's URL: url-a lists %+v, url-b %+v", na, nb)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestLinkable(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"http://localhost:8080", "http://localhost:8080"},
		{"https://gw-1.example.com", "https://gw-1.example.com"},
		{"http://10.0.0.5:8080", "http://10.0.0.5:8080"},
		{"http://[::]:8080", ""},
		{"http://0.0.0.0:8080", ""},
		{"javascript:alert(1)", ""},
		{"ftp://h/", ""},
		{"http://", ""},
		{"", ""},
	} {
		if got := linkable(tt.in); got != tt.want {
			t.Errorf("linkable(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

// waitStats polls the admin /v1/stats until cond holds, and returns what
// it read last.
func waitStats(t *testing.T, n *statsNode, what string, cond func(statsSnapshot) bool) statsSnapshot {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := n.stats(t)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(s)
			t.Fatalf("timed out waiting for %s; the node says %s", what, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// turnCredentials returns the TURN credentials and UDP address of
// /v1/ice-servers.
func turnCredentials(t *testing.T, n *statsNode) (user, pass, addr string) {
	t.Helper()
	resp, body := n.get(t, n.base+"/v1/ice-servers", "")
	var ans struct {
		ICEServers []struct {
			URLs       []string `json:"urls"`
			Username   string   `json:"username"`
			Credential string   `json:"credential"`
		} `json:"iceServers"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &ans) != nil {
		t.Fatalf("GET /v1/ice-servers: %s %s", resp.Status, body)
	}
	for _, s := range ans.ICEServers {
		for _, u := range s.URLs {
			if rest, ok := strings.CutPrefix(u, "turn:"); ok && strings.HasSuffix(u, "?transport=udp") {
				addr, _ = url.QueryUnescape(strings.TrimSuffix(rest, "?transport=udp"))
				return s.Username, s.Credential, addr
			}
		}
	}
	t.Fatalf("no TURN UDP URL in %s", body)
	return "", "", ""
}

// relayUDP allocates on the TURN server at addr over UDP, relays a datagram
// to peer and back, and calls during with the allocation still held.
func relayUDP(t *testing.T, addr, user, pass string, peer net.Addr, during func()) {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	relayEcho(t, conn, addr, user, pass, peer, []byte("counted by the dashboard"), nil, during)
}

// TestStatsLatencyWindow checks the window of the latency percentiles: the
// node's life until a sample exists, then the deliveries since the newest
// sample at least latencyWindow old, each answer saying what it covers.
func TestStatsLatencyWindow(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "parley_delivery_latency_seconds",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	reg.MustRegister(h)
	start := time.Now()
	clock := start
	n := &nodeStats{node: "n", started: start, gather: reg, now: func() time.Time { return clock }}
	at := func(sec float64) latencyStats {
		clock = start.Add(time.Duration(sec * float64(time.Second)))
		return n.snapshot().Latency
	}
	for range 10 {
		h.Observe(0.0002)
	}
	l := at(1)
	if l.Count != 10 || l.WindowSeconds != 1 || *l.P50 != 0.25 || *l.Max != 0.5 {
		t.Errorf("at 1 s: %+v, want 10 writes over the node's first second, p50 0.25 ms, max 0.5 ms", l)
	}
	for range 5 {
		h.Observe(0.02)
	}
	if l := at(5); l.Count != 5 || l.WindowSeconds != 4 || *l.P50 <= 10 || *l.P50 > 25 {
		t.Errorf("at 5 s: %+v, want the 5 slow writes since the sample at 1 s, p50 in (10, 25] ms", l)
	}
	// Reused within snapshotReuse, whatever happened meanwhile.
	h.Observe(0.2)
	if l := at(5.1); l.Count != 5 || l.WindowSeconds != 4 {
		t.Errorf("at 5.1 s: %+v, want the answer of 5 s again", l)
	}
	if l := at(12); l.Count != 6 || l.WindowSeconds != 11 {
		t.Errorf("at 12 s: %+v, want 6 writes since the sample at 1 s, the newest 10 s old", l)
	}
	if l := at(16); l.Count != 1 || l.WindowSeconds != 11 || *l.P50 <= 100 || *l.P50 > 250 {
		t.Errorf("at 16 s: %+v, want 1 write since the sample at 5 s", l)
	}
	if l := at(40); l.Count != 0 || l.P50 != nil || l.Max != nil || l.WindowSeconds != 24 {
		t.Errorf("at 40 s: %+v, want no writes since the sample at 16 s, no percentiles", l)
	}
}

func TestEstimate(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	tests := []struct {
		name          string
		bounds        []float64
		cum           []uint64
		p50, p90, p99 *float64
		max           *float64
		capped        bool
	}{
		{name: "nothing", bounds: []float64{.001, .01}, cum: []uint64{0, 0, 0}},
		{"all in the first bucket", []float64{.001, .01}, []uint64{4, 4, 4}, f(0.5), f(0.9), f(0.99), f(1), false},
		{"spread", []float64{.001, .01, .1}, []uint64{50, 90, 100, 100}, f(1), f(10), f(91), f(100), false},
		{"past the last bound", []float64{.001}, []uint64{1, 3}, f(1), f(1), f(1), f(1), true},
	}
	str := func(p *float64) string {
		if p == nil {
			return "nil"
		}
		b, _ := json.Marshal(*p)
		return string(b)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := estimate(tt.bounds, tt.cum)
			for _, c := range []struct {
				what      string
				got, want *float64
			}{{"p50", e.p50, tt.p50}, {"p90", e.p90, tt.p90}, {"p99", e.p99, tt.p99}, {"max", e.max, tt.max}} {
				if str(c.got) != str(c.want) {
					t.Errorf("%s: got %s, want %s", c.what, str(c.got), str(c.want))
				}
			}
			if e.capped != tt.capped {
				t.Errorf("capped: got %v, want %v", e.capped, tt.capped)
			}
		})
	}
}
