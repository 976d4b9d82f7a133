package web_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
	"github.com/parley-rt/parley/gateway"
)

// callTile is what a call page shows of one peer (testdata/call-lib.mjs).
type callTile struct {
	Session   string `json:"session"`
	User      string `json:"user"`
	Local     bool   `json:"local"`
	State     string `json:"state"`
	Pair      string `json:"pair"`
	RTT       *int   `json:"rtt"`
	Frames    *int   `json:"frames"`
	Pill      string `json:"pill"`
	StateText string `json:"stateText"`
	Stats     string `json:"stats"`
	Width     int    `json:"videoWidth"`
}

// framesGrowth is a count of decoded frames at the start and the end of a
// wait.
type framesGrowth struct {
	From int `json:"from"`
	To   int `json:"to"`
	MS   int `json:"ms"`
}

// tilesAB is what pages A and B show of each other's tile.
type tilesAB struct {
	A callTile `json:"a"`
	B callTile `json:"b"`
}

// framesAB is how many frames pages A and B decoded of each other's video.
type framesAB struct {
	A framesGrowth `json:"a"`
	B framesGrowth `json:"b"`
}

type chatLine struct {
	Kind string `json:"kind"`
	Who  string `json:"who"`
	Text string `json:"text"`
}

// logScreenshots logs where each screenshot a script took is.
func logScreenshots(t *testing.T, paths []string) {
	t.Helper()
	if len(paths) == 0 {
		t.Error("the script took no screenshot")
	}
	for _, p := range paths {
		t.Logf("screenshot: %s", p)
	}
}

// checkRelayPair checks that tile, the page's tile of peer, is connected
// over a relay pair and shows it with a round-trip time.
func checkRelayPair(t *testing.T, page string, tile callTile, peer string) {
	t.Helper()
	if tile.Session != peer || tile.State != "connected" || tile.Pair != "relay" || tile.RTT == nil {
		t.Errorf("page %s shows peer %s as session %q, %q over %q, rtt %v; want it connected over relay with a round-trip time",
			page, peer, tile.Session, tile.State, tile.Pair, tile.RTT)
	}
	if !strings.HasPrefix(tile.Pill, "relay") || !strings.HasSuffix(tile.Pill, " ms") {
		t.Errorf("page %s: the pill of %s reads %q, want the pair type and the round-trip time (relay · … ms)", page, peer, tile.Pill)
	}
}

// checkFrames checks that a page went on decoding its peer's video.
func checkFrames(t *testing.T, what string, f framesGrowth, least int) {
	t.Helper()
	if f.To-f.From < least {
		t.Errorf("%s: %d frames decoded, then %d: want at least %d more", what, f.From, f.To, least)
	}
	t.Logf("%s: frames decoded %d -> %d in %d ms", what, f.From, f.To, f.MS)
}

// shows reports whether lines hold text said by who (any sender when who is
// empty).
func shows(lines []chatLine, who, text string) bool {
	return slices.ContainsFunc(lines, func(l chatLine) bool { return l.Text == text && (who == "" || l.Who == who) })
}

type callRelayResult struct {
	pageLog
	Call string `json:"call"`
	Form struct {
		Call  string `json:"call"`
		Relay bool   `json:"relay"`
		Media string `json:"media"`
	} `json:"form"`
	Sessions         struct{ A, B, C string } `json:"sessions"`
	Pairs            tilesAB                  `json:"pairs"`
	Frames           framesAB                 `json:"frames"`
	RemoteVideoWidth struct{ A, B int }       `json:"remoteVideoWidth"`
	PhoneFits        bool                     `json:"phoneFits"`
	Denied           struct {
		Notice string `json:"notice"`
		Action string `json:"action"`
		Status string `json:"status"`
	} `json:"denied"`
	DataOnly struct {
		Media       string     `json:"media"`
		NoticeAfter string     `json:"noticeAfter"`
		Sees        []callTile `json:"sees"`
		SeenByA     callTile   `json:"seenByA"`
	} `json:"dataOnly"`
	Tiles struct {
		A, B, C []callTile
	} `json:"tiles"`
	Chat struct {
		A, B, C []chatLine
	} `json:"chat"`
	Screenshots []string `json:"screenshots"`
}

// TestCallPageRelay runs call.html in two browser contexts with Chromium's
// fake camera, against a real `parley serve` with its TURN server on
// loopback, with "Relay only" on from the link (?relay=1). Each page shows
// the other connected through the relay with a round-trip time; text typed
// in one page's chat appears in the other's; each decodes more and more of
// the other's video. A third context that may not use the camera is told so
// in a sentence, is offered to join with data only, and does: it is in the
// call, over the relay, and chats. The call also fits a phone's screen.
func TestCallPageRelay(t *testing.T) {
	browserTools(t)
	p := startParley(t, "call-relay")
	var res callRelayResult
	runScript(t, []string{"PARLEY_URL=" + p.base}, "call-relay.mjs", &res)
	res.check(t)
	logScreenshots(t, res.Screenshots)

	if res.Form.Call != res.Call || !res.Form.Relay || res.Form.Media != "camera" {
		t.Errorf("the link ?call=%s&relay=1 filled the form with %+v, want that call, relay only on, camera and microphone", res.Call, res.Form)
	}
	s := res.Sessions
	if s.A == "" || s.B == "" || s.A == s.B {
		t.Fatalf("sessions %q and %q, want two", s.A, s.B)
	}
	checkRelayPair(t, "A", res.Pairs.A, s.B)
	checkRelayPair(t, "B", res.Pairs.B, s.A)
	checkFrames(t, "A decoding B's camera", res.Frames.A, 30)
	checkFrames(t, "B decoding A's camera", res.Frames.B, 30)
	if res.RemoteVideoWidth.A == 0 || res.RemoteVideoWidth.B == 0 {
		t.Errorf("the remote videos are %d and %d pixels wide, want a picture on both pages", res.RemoteVideoWidth.A, res.RemoteVideoWidth.B)
	}
	if !shows(res.Chat.B, res.Pairs.B.User, "Hello from A") || !shows(res.Chat.A, res.Pairs.A.User, "Hi A, B here") {
		t.Errorf("chat: A shows %+v, B shows %+v; want each to show the other's line under the other's name", res.Chat.A, res.Chat.B)
	}
	if !shows(res.Chat.A, "you", "Hello from A") {
		t.Errorf("A's chat shows %+v, want its own line as from you", res.Chat.A)
	}
	if !res.PhoneFits {
		t.Error("at 390x844 the call page scrolls sideways")
	}

	d := res.Denied
	if !strings.Contains(strings.ToLower(d.Notice), "camera") || d.Action != "Join with data only" || d.Status != "idle" {
		t.Errorf("without camera permission: notice %q, action %q, status %q; want a sentence about the camera, the offer to join with data only, not in the call",
			d.Notice, d.Action, d.Status)
	}
	o := res.DataOnly
	if o.Media != "data" || o.NoticeAfter != "" {
		t.Errorf("after Join with data only: media %q, notice %q; want data, no notice", o.Media, o.NoticeAfter)
	}
	if len(o.Sees) != 2 {
		t.Fatalf("the data-only page shows %d peers, want 2", len(o.Sees))
	}
	checkRelayPair(t, "C", o.Sees[0], s.A)
	checkRelayPair(t, "C", o.Sees[1], s.B)
	checkRelayPair(t, "A", o.SeenByA, s.C)
	if !shows(res.Chat.C, "", "Welcome, C") || !shows(res.Chat.A, "", "Thanks, data only here") || !shows(res.Chat.B, "", "Thanks, data only here") {
		t.Errorf("chat with the data-only page: C shows %+v; A %+v; B %+v", res.Chat.C, res.Chat.A, res.Chat.B)
	}
	for name, ts := range map[string][]callTile{"A": res.Tiles.A, "B": res.Tiles.B, "C": res.Tiles.C} {
		if len(ts) != 3 {
			t.Errorf("page %s shows %d tiles, want 3 (itself and two peers): %+v", name, len(ts), ts)
		}
	}
}

// callMove is what a call page showed when its node went away (call-restart.mjs).
type callMove struct {
	StatusAway  string                `json:"statusAway"`
	StatusAfter string                `json:"statusAfter"`
	Pairs       tilesAB               `json:"pairs"`
	Frames      framesAB              `json:"frames"`
	Sessions    struct{ A, B string } `json:"sessions"`
	TileAtA     callTile              `json:"tileAtA"`
}

type callRestartResult struct {
	pageLog
	Call     string                `json:"call"`
	Sessions struct{ A, B string } `json:"sessions"`
	Before   struct {
		StatusB string   `json:"statusB"`
		Pairs   tilesAB  `json:"pairs"`
		Frames  framesAB `json:"frames"`
	} `json:"before"`
	Drain callMove `json:"drain"`
	Kill  callMove `json:"kill"`
	Seen  struct {
		A, B struct {
			Removed []string    `json:"removed"`
			States  [][2]string `json:"states"`
		}
	} `json:"seen"`
	Chat struct {
		A, B []chatLine
	} `json:"chat"`
	Screenshots []string `json:"screenshots"`
}

// TestCallSurvivesNodeRestart runs a call between page A on node 1 and page
// B, which reaches node 3 through a proxy; the three nodes share a real
// Redis. Once the call is up (relay only, video and chat), node 3 drains
// (SIGTERM) while the proxy moves to node 2, and then node 2 is killed with
// SIGKILL while the proxy moves to node 1, as a load balancer would. Each
// time B's page says why it is reconnecting, comes back on the next node
// and resumes its place: neither page loses a tile or sees anyone leave,
// each shows a relay pair again, video frames go on being decoded on both
// sides though the TURN server of the node that went away went with it (so
// B's relayed media moved to the next node's), and chat crosses both ways.
func TestCallSurvivesNodeRestart(t *testing.T) {
	browserTools(t)
	redis := redistest.Start(t)
	n1 := startParley(t, "call-1", "--redis", redis.URL())
	n2 := startParley(t, "call-2", "--redis", redis.URL())
	n3 := startParley(t, "call-3", "--redis", redis.URL())
	hostport := func(base string) string { return strings.TrimPrefix(base, "http://") }
	px := startProxy(t, hostport(n3.base))
	mux := http.NewServeMux()
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		px.setBackend(hostport(n2.base))
		n3.stop()
		w.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /kill", func(w http.ResponseWriter, r *http.Request) {
		n2.kill()
		px.setBackend(hostport(n1.base))
		w.Write([]byte("{}"))
	})
	ctl := httptest.NewServer(mux)
	t.Cleanup(ctl.Close)

	var res callRestartResult
	runScript(t, []string{"PARLEY_URL_A=" + n1.base, "PARLEY_URL_B=" + px.url(), "PARLEY_CONTROL=" + ctl.URL}, "call-restart.mjs", &res)
	res.check(t)
	logScreenshots(t, res.Screenshots)

	s := res.Sessions
	user := res.Before.Pairs.A.User
	if !strings.Contains(res.Before.StatusB, " as "+user+" on node call-3 ") {
		t.Errorf("before: B's page says %q, want it in the call as %s on node call-3", res.Before.StatusB, user)
	}
	checkRelayPair(t, "A before", res.Before.Pairs.A, s.B)
	checkRelayPair(t, "B before", res.Before.Pairs.B, s.A)
	checkFrames(t, "before: A decoding B", res.Before.Frames.A, 20)
	checkFrames(t, "before: B decoding A", res.Before.Frames.B, 20)

	for _, m := range []struct {
		name, node, away string
		got              callMove
	}{
		{"drain", "call-2", "The node is shutting down: reconnecting, to another node if there is one. The call goes on meanwhile.", res.Drain},
		{"kill", "call-1", "Lost the connection to the node: reconnecting. The call goes on meanwhile.", res.Kill},
	} {
		if m.got.StatusAway != m.away {
			t.Errorf("%s: while its node went away B's page said %q, want %q", m.name, m.got.StatusAway, m.away)
		}
		// The peer keeps its user, though in dev mode its new connection is
		// another anonymous user.
		if want := "In " + res.Call + " as " + user + " on node " + m.node + " "; !strings.HasPrefix(m.got.StatusAfter, want) {
			t.Errorf("%s: then B's page said %q, want %q…", m.name, m.got.StatusAfter, want)
		}
		if m.got.TileAtA.User != user {
			t.Errorf("%s: A shows B as %q, want %q as before", m.name, m.got.TileAtA.User, user)
		}
		if m.got.Sessions.A != s.A || m.got.Sessions.B != s.B {
			t.Errorf("%s: B's page shows sessions %+v, want %+v: the same peers", m.name, m.got.Sessions, s)
		}
		checkRelayPair(t, "A after the "+m.name, m.got.Pairs.A, s.B)
		checkRelayPair(t, "B after the "+m.name, m.got.Pairs.B, s.A)
		checkFrames(t, "after the "+m.name+": A decoding B", m.got.Frames.A, 30)
		checkFrames(t, "after the "+m.name+": B decoding A", m.got.Frames.B, 30)
		if !shows(res.Chat.A, "", "After the "+m.name+", from B") || !shows(res.Chat.B, "", "After the "+m.name+", from A") {
			t.Errorf("chat after the %s: A shows %+v, B shows %+v; want each other's line", m.name, res.Chat.A, res.Chat.B)
		}
	}
	for name, seen := range map[string][]string{"A": res.Seen.A.Removed, "B": res.Seen.B.Removed} {
		if len(seen) > 0 {
			t.Errorf("page %s removed the tiles of %v, want none: the peer stays", name, seen)
		}
	}
	for name, lines := range map[string][]chatLine{"A": res.Chat.A, "B": res.Chat.B} {
		for _, l := range lines {
			if l.Kind == "system" && strings.HasSuffix(l.Text, " left.") {
				t.Errorf("page %s says %q: want no one to leave", name, l.Text)
			}
		}
	}
	t.Logf("B's status line went %q", res.Seen.B.States)
}

type refusedAttempt struct {
	Notice    string `json:"notice"`
	Status    string `json:"status"`
	TokenOpen bool   `json:"tokenOpen"`
}

// TestCallPageRefused runs call.html, with data only, against a node that
// checks JWTs. Without a token, with an expired one, and with one whose
// `rooms.call` does not allow the call, the page stays out of the call and
// says why in a sentence that names what to do; given a token that allows
// the call, in its Token field, it joins.
func TestCallPageRefused(t *testing.T) {
	browserTools(t)
	secret := []byte("web-call-refused-secret")
	n, err := startNode(t, "call-jwt", func(c *gateway.Config) { c.JWTSecret = secret })
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	team, err := gateway.MintToken(secret, "alice", time.Hour, &gateway.Permissions{Call: []string{"team:*"}}, now)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := gateway.MintToken(secret, "alice", time.Minute, nil, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		pageLog
		NoToken   refusedAttempt `json:"noToken"`
		Expired   refusedAttempt `json:"expired"`
		Forbidden refusedAttempt `json:"forbidden"`
		Allowed   struct {
			Session string `json:"session"`
			Notice  string `json:"notice"`
			Status  string `json:"status"`
			Invite  string `json:"invite"`
		} `json:"allowed"`
		Screenshots []string `json:"screenshots"`
	}
	runScript(t, []string{"PARLEY_URL=" + n.url, "PARLEY_TOKEN_TEAM=" + team, "PARLEY_TOKEN_EXPIRED=" + expired}, "call-refused.mjs", &res)
	res.check(t)
	logScreenshots(t, res.Screenshots)

	for _, c := range []struct {
		name string
		got  refusedAttempt
		want string
	}{
		{"no token", res.NoToken, "This node checks tokens, and none was given: paste a JWT into the Token field above and press Join."},
		{"an expired token", res.Expired, "Your token has expired: paste a JWT into the Token field above and press Join."},
		{"a token for team:* only", res.Forbidden, "Your token does not allow joining the call secret-call"},
	} {
		if !strings.HasPrefix(c.got.Notice, c.want) || c.got.Status != "idle" || !c.got.TokenOpen {
			t.Errorf("%s: notice %q, status %q, token field open %v; want %q…, idle (not in the call), the field open", c.name, c.got.Notice, c.got.Status, c.got.TokenOpen, c.want)
		}
	}
	if a := res.Allowed; a.Session == "" || a.Notice != "" || !strings.HasPrefix(a.Status, "In team:standup as alice ") {
		t.Errorf("with a token that allows the call: session %q, notice %q, status %q; want in team:standup as alice, no notice", a.Session, a.Notice, a.Status)
	}
	// The link to send carries the call, and never the token.
	if want := n.url + "/call.html?call=team%3Astandup"; res.Allowed.Invite != want {
		t.Errorf("alone in the call the page offers the link %q, want %q", res.Allowed.Invite, want)
	}
}

// TestCallPageRejoinsLate cuts page B off from the node (through a proxy)
// for longer than the node keeps an away peer (--call-grace 1s), so page A
// sees B leave. When B is back, its resume comes too late: the page says
// so, joins the call again as a new peer, and the two are connected and
// chatting again, each showing one tile for the other.
func TestCallPageRejoinsLate(t *testing.T) {
	browserTools(t)
	p := startParley(t, "call-late", "--call-grace", "1s")
	px := startProxy(t, strings.TrimPrefix(p.base, "http://"))
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cut", func(w http.ResponseWriter, r *http.Request) {
		px.cutAll()
		w.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /restore", func(w http.ResponseWriter, r *http.Request) {
		px.restore()
		w.Write([]byte("{}"))
	})
	ctl := httptest.NewServer(mux)
	t.Cleanup(ctl.Close)

	var res struct {
		pageLog
		Sessions       struct{ A, B, NewB string } `json:"sessions"`
		TilesWhileAway []callTile                  `json:"tilesWhileAway"`
		Pairs          tilesAB                     `json:"pairs"`
		Tiles          struct {
			A, B []callTile
		} `json:"tiles"`
		Chat struct {
			A, B []chatLine
		} `json:"chat"`
		Status      string   `json:"status"`
		Screenshots []string `json:"screenshots"`
	}
	runScript(t, []string{"PARLEY_URL=" + p.base, "PARLEY_URL_B=" + px.url(), "PARLEY_CONTROL=" + ctl.URL}, "call-late.mjs", &res)
	res.check(t)
	logScreenshots(t, res.Screenshots)

	s := res.Sessions
	if s.NewB == "" || s.NewB == s.B {
		t.Errorf("B was %s and is %s after the late rejoin, want a new session", s.B, s.NewB)
	}
	if len(res.TilesWhileAway) != 1 {
		t.Errorf("while B was gone A showed %d tiles, want only its own: %+v", len(res.TilesWhileAway), res.TilesWhileAway)
	}
	for name, ts := range map[string][]callTile{"A": res.Tiles.A, "B": res.Tiles.B} {
		var sessions []string
		for _, tl := range ts {
			sessions = append(sessions, tl.Session)
		}
		slices.Sort(sessions)
		want := []string{s.A, s.NewB}
		slices.Sort(want)
		if !slices.Equal(sessions, want) {
			t.Errorf("page %s shows tiles %v at the end, want %v: itself and the other, once", name, sessions, want)
		}
	}
	if res.Pairs.A.State != "connected" || res.Pairs.B.State != "connected" {
		t.Errorf("after the rejoin: A shows B %q, B shows A %q; want connected", res.Pairs.A.State, res.Pairs.B.State)
	}
	if !shows(res.Chat.A, "", "Back from B") || !shows(res.Chat.B, "", "Welcome back") {
		t.Errorf("chat after the rejoin: A shows %+v, B shows %+v", res.Chat.A, res.Chat.B)
	}
	var left, joined int
	for _, l := range res.Chat.A {
		if l.Kind == "system" && strings.HasSuffix(l.Text, " left.") {
			left++
		}
		if l.Kind == "system" && strings.HasSuffix(l.Text, " joined.") {
			joined++
		}
	}
	if left != 1 || joined != 2 {
		t.Errorf("A's chat says %d left and %d joined, want 1 and 2 (B joined, left, joined again): %+v", left, joined, res.Chat.A)
	}
	if !strings.Contains(res.Status, "on node call-late") {
		t.Errorf("B's status is %q at the end, want it in the call", res.Status)
	}
}

type unreachableSide struct {
	Notice  string     `json:"notice"`
	Action  string     `json:"action"`
	Tiles   []callTile `json:"tiles"`
	AfterMS int        `json:"afterMs"`
}

// TestCallPageUnreachable makes a call that cannot connect: the node serves
// no TURN, and page B has "Relay only" on, so B has no address to offer and
// A none that B may use. The browsers then report no failure at all: they
// have no pair to try. B says at once that Relay only cannot work on this
// node and offers to join again without it; A says, once connecting has
// taken 20 s, that the call could not connect and what to try. B takes its
// offer: the two connect, and A's sentence goes.
func TestCallPageUnreachable(t *testing.T) {
	browserTools(t)
	n, err := startNode(t, "call-no-turn")
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		pageLog
		RelayB  unreachableSide `json:"relayB"`
		FailedA unreachableSide `json:"failedA"`
		Again   struct {
			Relay   bool                  `json:"relay"`
			Pairs   tilesAB               `json:"pairs"`
			Notices struct{ A, B string } `json:"notices"`
		} `json:"again"`
		Screenshots []string `json:"screenshots"`
	}
	runScript(t, []string{"PARLEY_URL=" + n.url}, "call-unreachable.mjs", &res)
	res.check(t)
	logScreenshots(t, res.Screenshots)

	for _, c := range []struct {
		name, notice, action string
		got                  unreachableSide
	}{
		{"B", "Relay only is on, but this node offers no TURN relay: turn Relay only off, or ask the node's operator to enable TURN.", "Join again without Relay only", res.RelayB},
		{"A", "The call could not connect directly, and this node has no TURN relay to fall back on: try another network, or ask the node's operator to enable TURN.", "Join again", res.FailedA},
	} {
		if c.got.Notice != c.notice || c.got.Action != c.action {
			t.Errorf("page %s says %q and offers %q, want %q and %q", c.name, c.got.Notice, c.got.Action, c.notice, c.action)
		}
		if len(c.got.Tiles) != 2 || c.got.Tiles[1].State == "connected" {
			t.Errorf("page %s shows %+v, want itself and the other, not connected", c.name, c.got.Tiles)
		}
	}
	if got := res.FailedA.Tiles[len(res.FailedA.Tiles)-1].StateText; got != "Could not connect" {
		t.Errorf("A's tile of B reads %q once the call could not connect, want %q", got, "Could not connect")
	}
	if ms := res.FailedA.AfterMS; ms < 15000 || ms > 60000 {
		t.Errorf("A said the call could not connect %d ms after joining, want about 20 s", ms)
	}
	g := res.Again
	if g.Relay || g.Pairs.A.State != "connected" || g.Pairs.B.State != "connected" || g.Notices.A != "" || g.Notices.B != "" {
		t.Errorf("after B joined again without Relay only: relay %v, A shows B %q, B shows A %q, notices %+v; want relay off, both connected, no notice",
			g.Relay, g.Pairs.A.State, g.Pairs.B.State, g.Notices)
	}
}
