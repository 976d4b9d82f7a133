package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/fanout/fanouttest"
	"github.com/parley-rt/parley/gateway"
)

type resubscribeResult struct {
	pageLog
	Room       string         `json:"room"`
	Failures   int            `json:"failures"`
	Shown      []shownMessage `json:"shown"`
	Notice     string         `json:"notice"`
	RoomsAfter []string       `json:"roomsAfter"`
	Delivered  []delivered    `json:"delivered"`
	Lost       []string       `json:"lost"`
	Errors     [][2]*string   `json:"errors"`
	Rooms      [][]string     `json:"rooms"`
	Closes     []int          `json:"closes"`
	States     []string       `json:"states"`
}

// TestChatResubscribeRefused runs chat.html against a node that, after a
// network cut, refuses the page's resubscribe twice with internal, as a node
// whose Redis is coming back does. parley.js keeps the room at its position,
// reports each refusal, reconnects with backoff, and the page shows every
// message once, in order: those published before the cut, while it was away,
// while it was refused, and after.
func TestChatResubscribeRefused(t *testing.T) {
	browserTools(t)
	mem := fanout.NewMemory(fanout.MemoryConfig{})
	bus := &fanouttest.FlakyHistory{Bus: mem}
	t.Cleanup(func() { bus.Close() }) // after the node, started below
	n, err := startNode(t, "node-flaky", func(c *gateway.Config) { c.Bus = bus })
	if err != nil {
		t.Fatal(err)
	}
	px := startProxy(t, n.addr)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cut", func(rw http.ResponseWriter, r *http.Request) {
		px.cutAll()
		rw.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /restore", func(rw http.ResponseWriter, r *http.Request) {
		px.restore()
		rw.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /fail", func(rw http.ResponseWriter, r *http.Request) {
		times, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil {
			http.Error(rw, "n: "+err.Error(), http.StatusBadRequest)
			return
		}
		// Before each refusal a message comes, so that messages arrive
		// while the client is refused.
		room := r.URL.Query().Get("room")
		bus.FailHistory(room, times, func(n int) {
			data := json.RawMessage(fmt.Sprintf(`{"text":"During refusal %d"}`, n))
			if _, err := mem.Publish(context.Background(), room, fanout.Publication{Data: data}); err != nil {
				t.Errorf("publishing during refusal %d: %v", n, err)
			}
		})
		rw.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /failures", func(rw http.ResponseWriter, r *http.Request) {
		json.NewEncoder(rw).Encode(map[string]int{"failures": bus.Failures()})
	})
	control := httptest.NewServer(mux)
	t.Cleanup(control.Close)

	var res resubscribeResult
	runScript(t, []string{"PARLEY_URL=" + px.url(), "PARLEY_DIRECT=" + n.url, "PARLEY_CONTROL=" + control.URL}, "resubscribe.mjs", &res)
	res.check(t)

	if res.Failures != 2 {
		t.Errorf("the node refused %d subscribes of the room, want 2", res.Failures)
	}
	want := []string{"Before", "While away 1", "While away 2", "During refusal 1", "During refusal 2", "After"}
	var texts []string
	for i, m := range res.Shown {
		texts = append(texts, m.Text)
		if m.Offset != uint64(i+1) {
			t.Errorf("message %d has offset %d, want %d", i, m.Offset, i+1)
		}
	}
	if !slices.Equal(texts, want) {
		t.Errorf("the page shows %q, want %q", texts, want)
	}
	var got []uint64
	for _, d := range res.Delivered {
		got = append(got, d.Offset)
	}
	if !slices.Equal(got, []uint64{1, 2, 3, 4, 5, 6}) {
		t.Errorf("the SDK delivered offsets %v, want 1 to 6 once each, in order", got)
	}
	if len(res.Lost) > 0 {
		t.Errorf("onLost for %v, want none: the history had every message", res.Lost)
	}
	if len(res.Errors) != 2 {
		t.Fatalf("the page got %d error events, want 2 (one per refusal)", len(res.Errors))
	}
	for i, e := range res.Errors {
		if e[0] == nil || *e[0] != "internal" || e[1] == nil || *e[1] != res.Room {
			t.Errorf("error event %d: got code and room %v, want internal, %s", i, strPair(e), res.Room)
		}
		if !slices.Equal(res.Rooms[i], []string{res.Room}) {
			t.Errorf("rooms at error event %d: got %v, want the room kept", i, res.Rooms[i])
		}
	}
	if !slices.Equal(res.RoomsAfter, []string{res.Room}) {
		t.Errorf("rooms after: got %v, want [%s]", res.RoomsAfter, res.Room)
	}
	refusals := 0
	for _, c := range res.Closes {
		if c == 4002 {
			refusals++
		}
	}
	if refusals != 2 {
		t.Errorf("close codes %v, want 4002 twice (the client left each refusing connection)", res.Closes)
	}
	if len(res.States) == 0 || res.States[len(res.States)-1] != "open" {
		t.Errorf("states %v, want back to open", res.States)
	}
	if !strings.Contains(res.Notice, "trying again") {
		t.Errorf("notice: got %q, want it to say the page tries again", res.Notice)
	}
}

func strPair(p [2]*string) []string {
	var out []string
	for _, s := range p {
		if s == nil {
			out = append(out, "<nil>")
		} else {
			out = append(out, *s)
		}
	}
	return out
}
