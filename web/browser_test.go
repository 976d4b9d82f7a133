package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
)

// pingInterval is short so that the browser tests see several heartbeats.
const pingInterval = 250 * time.Millisecond

// browserTools finds node, Chromium and playwright-core. When one is missing
// the test is skipped, or fails under CI=true: `bash .ci/web-deps` installs them.
func browserTools(t *testing.T) (node, chromium string) {
	t.Helper()
	missing := func(what string) {
		t.Helper()
		msg := what + " is missing; install the browser test dependencies with `bash .ci/web-deps`"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node (Node.js 20 or later)")
	}
	chromium = os.Getenv("PARLEY_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		missing("Chromium (" + chromium + ", Debian's chromium package)")
	}
	if _, err := os.Stat(filepath.Join("node_modules", "playwright-core", "package.json")); err != nil {
		missing("playwright-core (web/node_modules)")
	}
	return node, chromium
}

// node is one gateway on 127.0.0.1 with its own Memory bus.
type node struct {
	srv    *gateway.Server
	bus    *fanout.Memory
	url    string
	addr   string
	served chan error
	once   sync.Once
}

// startNode starts a node; configure, if given, changes its configuration
// first (a JWT secret, say).
func startNode(t *testing.T, name string, configure ...func(*gateway.Config)) (*node, error) {
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	cfg := gateway.Config{
		Bus:          bus,
		NodeID:       name,
		PingInterval: pingInterval,
		PongTimeout:  5 * time.Second, // roomy: a loaded machine may starve the browser
		DrainTimeout: 300 * time.Millisecond,
	}
	for _, f := range configure {
		f(&cfg)
	}
	srv, err := gateway.New(cfg)
	if err != nil {
		bus.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Shutdown(context.Background())
		bus.Close()
		return nil, err
	}
	n := &node{srv: srv, bus: bus, addr: ln.Addr().String(), url: "http://" + ln.Addr().String(), served: make(chan error, 1)}
	go func() { n.served <- srv.Serve(ln) }()
	t.Cleanup(n.stop)
	return n, nil
}

// stop drains the node (clients are told to reconnect) and waits for it.
func (n *node) stop() {
	n.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n.srv.Shutdown(ctx)
		<-n.served
		n.bus.Close()
	})
}

// proxy stands between the browser and a node, so a test can cut the
// network under a page (every connection closed, new ones held until
// restore) or move it to another node, without the page's knowledge.
type proxy struct {
	ln net.Listener
	wg sync.WaitGroup

	mu      sync.Mutex
	backend string
	cut     bool
	held    []net.Conn
	conns   map[net.Conn]struct{}
}

func startProxy(t *testing.T, backend string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, backend: backend, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.held = append(p.held, c)
			p.mu.Unlock()
			continue
		}
		backend := p.backend
		p.wg.Add(1)
		p.mu.Unlock()
		go p.pipe(c, backend)
	}
}

// pipe copies between c and a new connection to backend until either side
// ends or the proxy cuts them.
func (p *proxy) pipe(c net.Conn, backend string) {
	defer p.wg.Done()
	b, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.cut || p.conns == nil {
		p.mu.Unlock()
		c.Close()
		b.Close()
		return
	}
	p.conns[c], p.conns[b] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		io.Copy(b, c)
		b.Close()
		c.Close()
		close(done)
	}()
	io.Copy(c, b)
	c.Close()
	b.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, b)
	p.mu.Unlock()
}

// cutAll closes every proxied connection and holds new ones until restore.
func (p *proxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// restore lets held and new connections through to the backend.
func (p *proxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for _, c := range p.held {
		p.wg.Add(1)
		go p.pipe(c, p.backend)
	}
	p.held = nil
}

func (p *proxy) setBackend(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.backend = addr
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	for _, c := range p.held {
		c.Close()
	}
	p.held, p.conns = nil, nil
	p.mu.Unlock()
	p.wg.Wait()
}

// world is what a browser script talks to: a node behind a proxy, and a
// control endpoint that cuts, restores and drains.
type world struct {
	proxy   *proxy
	mu      sync.Mutex
	node    *node
	control *httptest.Server
}

// direct is the current node's URL, bypassing the proxy.
func (w *world) direct() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.node.url
}

func startWorld(t *testing.T) *world {
	t.Helper()
	n, err := startNode(t, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	w := &world{node: n, proxy: startProxy(t, n.addr)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cut", func(rw http.ResponseWriter, r *http.Request) {
		w.proxy.cutAll()
		rw.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /restore", func(rw http.ResponseWriter, r *http.Request) {
		w.proxy.restore()
		rw.Write([]byte("{}"))
	})
	// drain starts a node with an empty history, points the proxy at it and
	// drains the old one, whose clients are told to reconnect.
	mux.HandleFunc("POST /drain", func(rw http.ResponseWriter, r *http.Request) {
		next, err := startNode(t, "node-b")
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		w.mu.Lock()
		old := w.node
		w.node = next
		w.mu.Unlock()
		w.proxy.setBackend(next.addr)
		old.stop()
		json.NewEncoder(rw).Encode(map[string]string{"direct": next.url})
	})
	w.control = httptest.NewServer(mux)
	t.Cleanup(w.control.Close)
	return w
}

// env is what a browser script needs to reach w (lib.mjs lists it).
func (w *world) env() []string {
	return []string{
		"PARLEY_URL=" + w.proxy.url(),
		"PARLEY_DIRECT=" + w.direct(),
		"PARLEY_CONTROL=" + w.control.URL,
	}
}

// runScript runs a browser script of testdata/ with env (the addresses it
// talks to) and decodes the JSON line it prints into result.
func runScript(t *testing.T, env []string, script string, result any) {
	t.Helper()
	nodeBin, chromium := browserTools(t)
	shots := os.Getenv("PARLEY_SCREENSHOT_DIR")
	if shots == "" {
		shots = screenshotDir(t)
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	// Generous bounds for a loaded machine; a normal run takes a few seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, filepath.Join("testdata", script))
	// On timeout, SIGTERM first: playwright then closes the browser it started.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env,
		"PARLEY_SCREENSHOT_DIR="+shots,
		"PARLEY_CHROMIUM="+chromium,
		"PARLEY_TIMEOUT_MS=100000",
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("node %s (%v):\n%s", script, time.Since(start).Round(time.Millisecond), stderr.String())
	if err != nil {
		t.Fatalf("browser script %s failed: %v (its log is above)", script, err)
	}
	line := bytes.TrimSpace(stdout.Bytes())
	if i := bytes.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal(line, result); err != nil {
		t.Fatalf("browser script %s printed %q, not its JSON result: %v", script, stdout.String(), err)
	}
	t.Logf("result: %s\nscreenshots in %s", line, shots)
}

// pageLog is what every script reports about the pages themselves.
type pageLog struct {
	PageErrors    []string `json:"pageErrors"`
	ConsoleErrors []string `json:"consoleErrors"`
}

func (l pageLog) check(t *testing.T) {
	t.Helper()
	for _, e := range l.PageErrors {
		t.Errorf("uncaught exception in a page: %s", e)
	}
	for _, e := range l.ConsoleErrors {
		// A cut connection is reported by the browser itself; anything else,
		// such as a Content-Security-Policy violation, is the page's fault.
		if strings.Contains(e, "net::ERR_") || strings.Contains(e, "WebSocket connection") {
			t.Logf("browser console: %s", e)
			continue
		}
		t.Errorf("console error: %s", e)
	}
}

type shownMessage struct {
	Offset uint64
	Text   string
}

func (m *shownMessage) UnmarshalJSON(b []byte) error {
	var pair [2]json.RawMessage
	if err := json.Unmarshal(b, &pair); err != nil {
		return err
	}
	if err := json.Unmarshal(pair[0], &m.Offset); err != nil {
		return err
	}
	return json.Unmarshal(pair[1], &m.Text)
}

type delivered struct {
	Epoch  string
	Offset uint64
}

func (d *delivered) UnmarshalJSON(b []byte) error {
	var pair [2]json.RawMessage
	if err := json.Unmarshal(b, &pair); err != nil {
		return err
	}
	if err := json.Unmarshal(pair[0], &d.Epoch); err != nil {
		return err
	}
	return json.Unmarshal(pair[1], &d.Offset)
}

type presencePage struct {
	Sessions []string `json:"sessions"`
	Total    int      `json:"total"`
	Next     bool     `json:"next"`
}

type chatResult struct {
	pageLog
	Room         string   `json:"room"`
	Users        []string `json:"users"`
	MemberCounts []string `json:"memberCounts"`
	Presence     struct {
		First, Second presencePage
		All           []string
	} `json:"presencePages"`
	Sessions   []string `json:"sessions"`
	Heartbeats []struct {
		Pings, Pongs int
	} `json:"heartbeats"`
	SessionsAfterPings []string         `json:"sessionsAfterPings"`
	SessionsAfterCut   []string         `json:"sessionsAfterCut"`
	SessionsAfterDrain []string         `json:"sessionsAfterDrain"`
	ShownAfterCut      [][]shownMessage `json:"shownAfterCut"`
	StatusWhileAway    string           `json:"statusWhileAway"`
	Notice             string           `json:"notice"`
	Pages              []struct {
		User      string         `json:"user"`
		Shown     []shownMessage `json:"shown"`
		Delivered []delivered    `json:"delivered"`
		Lost      []string       `json:"lost"`
		States    []string       `json:"states"`
	} `json:"pages"`
}

// TestChatPage runs chat.html in two browser contexts: they exchange
// messages and see each other's presence, ride out a network cut (messages
// published meanwhile arrive once each, in order) and a drain onto a node
// that lost the history (the page says so and goes on).
func TestChatPage(t *testing.T) {
	browserTools(t)
	w := startWorld(t)
	var res chatResult
	runScript(t, w.env(), "chat.mjs", &res)
	res.check(t)

	if len(res.Pages) != 2 || len(res.ShownAfterCut) != 2 {
		t.Fatalf("got %d pages, want 2", len(res.Pages))
	}
	if res.Users[0] == res.Users[1] {
		t.Errorf("both pages are user %s, want two anonymous users", res.Users[0])
	}
	if !slices.Equal(res.MemberCounts, []string{"(2)", "(2)"}) {
		t.Errorf("member counts shown %q, want (2) on both pages", res.MemberCounts)
	}
	// client.presence with limit 1 pages through the two sessions in session
	// order; allMembers walks both pages.
	p := res.Presence
	sessions := slices.Sorted(slices.Values(res.Sessions))
	if want := (presencePage{Sessions: sessions[:1], Total: 2, Next: true}); !slices.Equal(p.First.Sessions, want.Sessions) || p.First.Total != 2 || !p.First.Next {
		t.Errorf("presence page 1: got %+v, want %+v", p.First, want)
	}
	if want := (presencePage{Sessions: sessions[1:], Total: 2, Next: false}); !slices.Equal(p.Second.Sessions, want.Sessions) || p.Second.Total != 2 || p.Second.Next {
		t.Errorf("presence page 2: got %+v, want %+v", p.Second, want)
	}
	if !slices.Equal(p.All, sessions) {
		t.Errorf("allMembers: got sessions %v, want %v", p.All, sessions)
	}
	for i, h := range res.Heartbeats {
		if h.Pings < 3 || h.Pongs < h.Pings {
			t.Errorf("page %d got %d pings and sent %d pongs, want at least 3 pings, each answered", i, h.Pings, h.Pongs)
		}
	}
	if strings.Join(res.Sessions, ",") != strings.Join(res.SessionsAfterPings, ",") {
		t.Errorf("sessions %v became %v across heartbeats, want the same connections", res.Sessions, res.SessionsAfterPings)
	}
	for i := range 2 {
		if res.SessionsAfterCut[i] == res.Sessions[i] || res.SessionsAfterDrain[i] == res.SessionsAfterCut[i] {
			t.Errorf("page %d sessions %s, %s, %s: want a new one after the cut and after the drain",
				i, res.Sessions[i], res.SessionsAfterCut[i], res.SessionsAfterDrain[i])
		}
	}
	if res.StatusWhileAway != "Reconnecting…" {
		t.Errorf("status while cut off: got %q, want %q", res.StatusWhileAway, "Reconnecting…")
	}

	// Before the drain, both showed the same six messages, once each, in
	// offset order.
	want := []string{"Hello from A", "Hi A, B here", "While you were away 1", "While you were away 2", "While you were away 3", "Typed while reconnecting"}
	for i, shown := range res.ShownAfterCut {
		var texts []string
		for j, m := range shown {
			texts = append(texts, m.Text)
			if m.Offset != uint64(j+1) {
				t.Errorf("page %d message %d has offset %d, want %d", i, j, m.Offset, j+1)
			}
		}
		// The API's three were published before the network came back, A's
		// queued publish only after: so this order, each once.
		if !slices.Equal(texts, want) {
			t.Errorf("page %d shows %q, want %q", i, texts, want)
		}
	}

	for i, p := range res.Pages {
		// The SDK handed every message to the application once, in order per epoch.
		last := map[string]uint64{}
		var epochs []string
		for _, d := range p.Delivered {
			if _, ok := last[d.Epoch]; !ok {
				epochs = append(epochs, d.Epoch)
			}
			if d.Offset != last[d.Epoch]+1 {
				t.Errorf("page %d: delivered %s/%d after %d, want every offset once in order (all: %v)", i, d.Epoch, d.Offset, last[d.Epoch], p.Delivered)
			}
			last[d.Epoch] = d.Offset
		}
		if len(epochs) != 2 || last[epochs[0]] != 6 || last[epochs[1]] != 1 {
			t.Errorf("page %d: delivered %v, want offsets 1-6 of the first node's epoch and 1 of the second's", i, p.Delivered)
		}
		if len(p.Lost) != 1 || p.Lost[0] != res.Room {
			t.Errorf("page %d: onLost for %v, want once for %s (after the drain)", i, p.Lost, res.Room)
		}
		if len(p.Shown) != 1 || p.Shown[0].Text != "After the move" || p.Shown[0].Offset != 1 {
			t.Errorf("page %d after the drain shows %v, want only \"After the move\" at offset 1", i, p.Shown)
		}
		if !slices.Contains(p.States, "reconnecting") || p.States[len(p.States)-1] != "open" {
			t.Errorf("page %d went through states %v, want reconnecting and back to open", i, p.States)
		}
	}
	if !strings.Contains(res.Notice, "no longer") {
		t.Errorf("notice after the drain: got %q, want it to say the messages are no longer in history", res.Notice)
	}
}

type eventsResult struct {
	pageLog
	Room      string   `json:"room"`
	Other     string   `json:"other"`
	FirstText string   `json:"firstText"`
	Shown     [][2]any `json:"shown"`
}

// TestEventsPage runs events.html: EventSource receives the event its own
// button publishes through the HTTP API, a backend's events in two rooms, and
// after a cut the events it missed, once each.
func TestEventsPage(t *testing.T) {
	browserTools(t)
	w := startWorld(t)
	var res eventsResult
	runScript(t, w.env(), "events.mjs", &res)
	res.check(t)

	if !strings.Contains(res.FirstText, "Test event from the browser") {
		t.Errorf("first event shows %q, want the page's test event", res.FirstText)
	}
	// Newest first: room 4, 3, 2, then other 1, then room 1 (other's event was
	// published after room's second).
	var got []string
	for _, s := range res.Shown {
		got = append(got, fmt.Sprintf("%v/%v", s[0], s[1]))
	}
	want := []string{res.Room + "/4", res.Room + "/3", res.Other + "/1", res.Room + "/2", res.Room + "/1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events shown %v, want %v", got, want)
	}
}

// mintHandler answers POST /token?user=U&ttl_ms=N with a token of U, signed
// with secret, that the node accepts for about N ms (exp has whole seconds:
// between N-1000 and N; a negative N makes a token expired that long ago).
// With subscribe=P the token allows subscribing to rooms matching P only.
func mintHandler(secret []byte) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ms, err := strconv.Atoi(q.Get("ttl_ms"))
		if err != nil {
			http.Error(rw, "ttl_ms: "+err.Error(), http.StatusBadRequest)
			return
		}
		var perms *gateway.Permissions
		if p := q.Get("subscribe"); p != "" {
			perms = &gateway.Permissions{Subscribe: []string{p}}
		}
		tok, err := gateway.MintToken(secret, q.Get("user"), time.Duration(ms)*time.Millisecond-tokenLeeway, perms, time.Now())
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(rw).Encode(map[string]string{"token": tok})
	}
}

// tokenLeeway is the clock skew the node allows past a token's exp
// (docs/PROTOCOL.md): a token minted with ttl d is accepted for d + 5 s.
const tokenLeeway = 5 * time.Second

type sseExpiryLog struct {
	Streams   int                              `json:"streams"`
	Raw       [][2]any                         `json:"raw"`
	Errors    []struct{ Code, Message string } `json:"errors"`
	Welcomes  int                              `json:"welcomes"`
	Delivered []uint64                         `json:"delivered"`
	States    []string                         `json:"states"`
	State     string                           `json:"state"`
}

// serverErrors returns the data of the events named error that carry data
// (the node's, not the browser's connection errors), and of any welcome event
// that holds an error frame.
func (l sseExpiryLog) serverErrors() (errs []map[string]any, welcomes []string) {
	for _, ev := range l.Raw {
		data, ok := ev[1].(string)
		if !ok {
			continue
		}
		switch ev[0] {
		case "error":
			var f map[string]any
			json.Unmarshal([]byte(data), &f)
			errs = append(errs, f)
		case "welcome":
			if strings.Contains(data, `"type":"error"`) {
				welcomes = append(welcomes, data)
			}
		}
	}
	return errs, welcomes
}

type sseExpiryResult struct {
	pageLog
	Room       string       `json:"room"`
	TokenCalls int          `json:"tokenCalls"`
	Renewing   sseExpiryLog `json:"renewing"`
	Fixed      sseExpiryLog `json:"fixed"`
}

// TestSSETokenExpiry runs ParleySSE in Chromium (a real EventSource) against
// a node that checks JWTs. When a stream's token expires, the node sends an
// `error` event (code unauthorized) and ends the stream. With a token
// function the page gets a fresh token and resumes from its last event,
// missing none of the messages published meanwhile; with a fixed token it
// reports the error and stops, instead of reconnecting with a token the node
// refuses.
func TestSSETokenExpiry(t *testing.T) {
	browserTools(t)
	secret := []byte("web-sse-expiry-secret")
	n, err := startNode(t, "node-jwt", func(c *gateway.Config) { c.JWTSecret = secret })
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", mintHandler(secret))
	control := httptest.NewServer(mux)
	t.Cleanup(control.Close)

	var res sseExpiryResult
	runScript(t, []string{"PARLEY_URL=" + n.url, "PARLEY_CONTROL=" + control.URL}, "sse-expiry.mjs", &res)
	res.check(t)

	for name, l := range map[string]sseExpiryLog{"renewing": res.Renewing, "fixed": res.Fixed} {
		errs, welcomes := l.serverErrors()
		if len(welcomes) > 0 {
			t.Errorf("%s: the node sent an error as a welcome event: %q", name, welcomes)
		}
		if len(errs) != 1 || errs[0]["type"] != "error" || errs[0]["code"] != "unauthorized" {
			t.Errorf("%s: the stream's error events carried %v, want one {type: error, code: unauthorized}", name, errs)
		}
		if len(l.Errors) != 1 || l.Errors[0].Code != "unauthorized" {
			t.Errorf("%s: the application got errors %+v, want one unauthorized", name, l.Errors)
		}
	}

	r := res.Renewing
	if res.TokenCalls != 2 {
		t.Errorf("renewing: the token function was called %d times, want 2 (the first stream, the renewal)", res.TokenCalls)
	}
	if r.Streams != 2 || r.Welcomes != 2 {
		t.Errorf("renewing: %d streams, %d welcomes; want 2 of each (the expired stream and its successor)", r.Streams, r.Welcomes)
	}
	if !slices.Equal(r.Delivered, []uint64{1, 2, 3, 4}) {
		t.Errorf("renewing: delivered offsets %v, want 1 to 4 once each (2 and 3 published while the token was renewed)", r.Delivered)
	}
	if r.State != "open" {
		t.Errorf("renewing: ended in state %q, want open", r.State)
	}

	f := res.Fixed
	if f.Streams != 1 {
		t.Errorf("fixed: %d streams, want 1: the client must not reconnect with a refused token", f.Streams)
	}
	if f.State != "closed" {
		t.Errorf("fixed: ended in state %q, want closed", f.State)
	}
}

type refusedStep struct {
	Notice   string `json:"notice"`
	Status   string `json:"status"`
	State    string `json:"state"`
	TokenBox bool   `json:"tokenBox"`
}

type eventsRefusedResult struct {
	pageLog
	NoToken struct {
		refusedStep
		ShownAfterMS   int      `json:"shownAfterMs"`
		GoRequests     int64    `json:"goRequests"`
		GoRequestsLate int64    `json:"goRequestsLate"`
		PageRequests   []string `json:"pageRequests"`
		PageLate       []string `json:"pageRequestsLate"`
	} `json:"noToken"`
	Expired   refusedStep `json:"expired"`
	Forbidden refusedStep `json:"forbidden"`
	Allowed   refusedStep `json:"allowed"`
	Full      struct {
		refusedStep
		Retried   bool  `json:"retried"`
		Requests  int64 `json:"requests"`
		AfterStop int64 `json:"afterStop"`
	} `json:"full"`
	Chat struct {
		NoToken   refusedStep `json:"noToken"`
		Joined    refusedStep `json:"joined"`
		Forbidden refusedStep `json:"forbidden"`
	} `json:"chat"`
}

// TestPagesRefused runs events.html against a node that checks JWTs and
// holds as many rooms as it may, counting the node's /v1/sse requests with a
// handler in front of it. Without a token the page says, within a few
// seconds, that the node needs one and where to put it, and sends no further
// request. An expired token and a room the token does not allow are plain
// sentences too; a full node is retried, and the page says why. Then
// chat.html: without a token it says so, and joins once given one; a room
// the token does not allow is a sentence.
func TestPagesRefused(t *testing.T) {
	browserTools(t)
	secret := []byte("web-events-refused-secret")
	// One room at most: "news", published to before the page comes, so every
	// other room is refused with over_capacity.
	bus := fanout.NewMemory(fanout.MemoryConfig{MaxRooms: 1})
	t.Cleanup(func() { bus.Close() })
	if _, err := bus.Publish(context.Background(), "news", fanout.Publication{Data: json.RawMessage(`{"text":"held"}`)}); err != nil {
		t.Fatal(err)
	}
	n, err := startNode(t, "node-refusing", func(c *gateway.Config) {
		c.JWTSecret = secret
		c.Bus = bus
	})
	if err != nil {
		t.Fatal(err)
	}
	var sseRequests atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/sse" {
			sseRequests.Add(1)
		}
		n.srv.Handler().ServeHTTP(rw, r)
	}))
	// The node first: draining ends its streams, which front.Close waits for.
	t.Cleanup(func() {
		n.stop()
		front.Close()
	})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", mintHandler(secret))
	mux.HandleFunc("POST /count", func(rw http.ResponseWriter, r *http.Request) {
		json.NewEncoder(rw).Encode(map[string]int64{"sse": sseRequests.Load()})
	})
	control := httptest.NewServer(mux)
	t.Cleanup(control.Close)

	var res eventsRefusedResult
	runScript(t, []string{"PARLEY_URL=" + front.URL, "PARLEY_CONTROL=" + control.URL}, "refused.mjs", &res)
	for _, e := range res.ConsoleErrors {
		// The browser reports each refused request itself.
		if strings.Contains(e, "status of 401") || strings.Contains(e, "status of 403") || strings.Contains(e, "status of 503") {
			t.Logf("browser console: %s", e)
			continue
		}
		t.Errorf("console error: %s", e)
	}
	for _, e := range res.PageErrors {
		t.Errorf("uncaught exception in a page: %s", e)
	}

	nt := res.NoToken
	if !strings.Contains(nt.Notice, "This node checks tokens, and none was given") || !strings.Contains(nt.Notice, "Token field") {
		t.Errorf("without a token the page says %q, want the sentence about the missing token", nt.Notice)
	}
	if nt.ShownAfterMS > 5000 {
		t.Errorf("the sentence took %d ms, want a few seconds at most", nt.ShownAfterMS)
	}
	if nt.State != "closed" || nt.Status != "Not watching." || !nt.TokenBox {
		t.Errorf("without a token: state %q, status %q, token field open %v; want closed, \"Not watching.\", open", nt.State, nt.Status, nt.TokenBox)
	}
	// The EventSource's request, and the fetch that read the 401: then nothing.
	if nt.GoRequests != 2 || nt.GoRequestsLate != nt.GoRequests {
		t.Errorf("the node got %d /v1/sse requests by the sentence and %d seconds later, want 2 and no more", nt.GoRequests, nt.GoRequestsLate)
	}
	if !slices.Equal(nt.PageRequests, []string{"eventsource", "fetch"}) || len(nt.PageLate) != len(nt.PageRequests) {
		t.Errorf("the page made requests %v, then %v; want [eventsource fetch] and no more", nt.PageRequests, nt.PageLate)
	}

	if !strings.Contains(res.Expired.Notice, "Your token has expired") || res.Expired.State != "closed" {
		t.Errorf("an expired token: notice %q, state %q; want the sentence about the expired token, closed", res.Expired.Notice, res.Expired.State)
	}
	if !strings.Contains(res.Forbidden.Notice, "Your token does not allow the room secret") || res.Forbidden.State != "closed" {
		t.Errorf("a room the token does not allow: notice %q, state %q; want the sentence naming the room, closed", res.Forbidden.Notice, res.Forbidden.State)
	}
	if res.Allowed.State != "open" || res.Allowed.Status != "Watching news" || res.Allowed.Notice != "" {
		t.Errorf("an allowed room: state %q, status %q, notice %q; want open, \"Watching news\", no notice", res.Allowed.State, res.Allowed.Status, res.Allowed.Notice)
	}

	f := res.Full
	if f.State != "reconnecting" || !strings.Contains(f.Status, "holds as many rooms as it may") {
		t.Errorf("a full node: state %q, status %q; want reconnecting, saying the node is full", f.State, f.Status)
	}
	if !f.Retried {
		t.Errorf("a full node was not asked again after its Retry-After")
	}
	if f.AfterStop != f.Requests {
		t.Errorf("after Stop the node got %d more /v1/sse requests, want none", f.AfterStop-f.Requests)
	}

	c := res.Chat
	if !strings.Contains(c.NoToken.Notice, "This node checks tokens, and none was given") || c.NoToken.State != "closed" || !c.NoToken.TokenBox {
		t.Errorf("chat without a token: notice %q, state %q, token field open %v; want the sentence about the missing token, closed, open",
			c.NoToken.Notice, c.NoToken.State, c.NoToken.TokenBox)
	}
	if c.Joined.State != "open" || c.Joined.Notice != "" {
		t.Errorf("chat given a token: state %q, notice %q; want open, no notice", c.Joined.State, c.Joined.Notice)
	}
	if !strings.Contains(c.Forbidden.Notice, "Your token does not allow the room secret") {
		t.Errorf("chat, a room the token does not allow: notice %q, want the sentence naming the room", c.Forbidden.Notice)
	}
}
