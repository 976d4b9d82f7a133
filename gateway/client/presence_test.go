package client_test

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// members subscribes n sessions to room with presence and returns their
// session ids, sorted.
func members(t *testing.T, url, room string, n int) []string {
	t.Helper()
	sessions := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		c := dialQuiet(t, url, nil)
		wg.Go(func() {
			_, errs[i] = c.Subscribe(ctxT(t), room, client.SubscribeOptions{Presence: true})
			sessions[i] = c.Welcome().Session
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	slices.Sort(sessions)
	return sessions
}

func sessionsOf(ms []client.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Session
	}
	return out
}

func TestPresencePages(t *testing.T) {
	const total = 250
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, nil)
	want := members(t, n.url, "lobby", total)
	// The reader is not subscribed to the room.
	c, _ := dial(t, n.url, nil)
	ctx := ctxT(t)

	var got []string
	var sizes []int
	opts := client.PresenceOptions{Limit: 100}
	for {
		page, err := c.Presence(ctx, "lobby", opts)
		if err != nil {
			t.Fatalf("Presence %+v: %v", opts, err)
		}
		if page.Total != total {
			t.Errorf("Total: got %d, want %d", page.Total, total)
		}
		got = append(got, sessionsOf(page.Members)...)
		sizes = append(sizes, len(page.Members))
		if page.Next == "" || len(sizes) > total {
			break
		}
		opts.Cursor = page.Next
	}
	if want := []int{100, 100, 50}; !slices.Equal(sizes, want) {
		t.Errorf("page sizes: got %v, want %v", sizes, want)
	}
	// Every member once, ordered by session id.
	if !slices.Equal(got, want) {
		t.Errorf("members: got %d sessions %v, want the %d sessions in order", len(got), got, total)
	}

	all, err := c.AllMembers(ctx, "lobby")
	if err != nil {
		t.Fatalf("AllMembers: %v", err)
	}
	if got := sessionsOf(all); !slices.Equal(got, want) {
		t.Errorf("AllMembers: got %d sessions, want the %d in order", len(got), total)
	}
	for _, m := range all {
		if m.User == "" || m.Node != n.srv.NodeID() {
			t.Errorf("member %+v: want a user and node %s", m, n.srv.NodeID())
			break
		}
	}

	// A subscribe with presence lists the first page and goes on with
	// Presence from its cursor.
	ack, err := c.Subscribe(ctx, "lobby", client.SubscribeOptions{Presence: true})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	want = append(want, c.Welcome().Session)
	slices.Sort(want)
	if len(ack.Members) != 100 || ack.MembersTotal != total+1 || ack.MembersNext == "" {
		t.Fatalf("subscribe ack: got %d members, total %d, next %q; want 100, %d and a cursor", len(ack.Members), ack.MembersTotal, ack.MembersNext, total+1)
	}
	got = sessionsOf(ack.Members)
	for cursor := ack.MembersNext; cursor != ""; {
		page, err := c.Presence(ctx, "lobby", client.PresenceOptions{Cursor: cursor, Limit: 1000})
		if err != nil {
			t.Fatalf("Presence: %v", err)
		}
		got = append(got, sessionsOf(page.Members)...)
		cursor = page.Next
	}
	if !slices.Equal(got, want) {
		t.Errorf("members from the ack on: got %d sessions, want the %d in order", len(got), total+1)
	}
}

func TestPresenceErrors(t *testing.T) {
	secret := []byte("presence-secret")
	bus := newBus(t, fanout.MemoryConfig{})
	n := startNode(t, bus, func(cfg *gateway.Config) { cfg.JWTSecret = secret })
	tok, err := gateway.MintToken(secret, "u", time.Hour, &gateway.Permissions{Subscribe: []string{"chat:*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := dial(t, n.url, func(o *client.Options) { o.Token = tok })
	ctx := ctxT(t)
	tests := []struct {
		name     string
		room     string
		opts     client.PresenceOptions
		wantCode string
	}{
		{name: "a room the token may not subscribe to", room: "lobby", wantCode: "forbidden"},
		{name: "a bad room", room: "no spaces", wantCode: "bad_room"},
		{name: "a limit over 1000", room: "chat:a", opts: client.PresenceOptions{Limit: 1001}, wantCode: "bad_request"},
		{name: "a negative limit", room: "chat:a", opts: client.PresenceOptions{Limit: -1}, wantCode: "bad_request"},
		{name: "a cursor the node did not give", room: "chat:a", opts: client.PresenceOptions{Cursor: "*not a cursor*"}, wantCode: "bad_request"},
	}
	for _, tt := range tests {
		_, err := c.Presence(ctx, tt.room, tt.opts)
		var serr *client.ServerError
		if !errors.As(err, &serr) || serr.Code != tt.wantCode {
			t.Errorf("%s: got %v, want code %s", tt.name, err, tt.wantCode)
		}
	}
	if _, err := c.AllMembers(ctx, "lobby"); err == nil {
		t.Errorf("AllMembers of a forbidden room: got no error")
	}
	// An empty room the token allows has no members and no next page.
	page, err := c.Presence(ctx, "chat:a", client.PresenceOptions{})
	if err != nil || page.Total != 0 || len(page.Members) != 0 || page.Next != "" {
		t.Errorf("empty room: got %+v %v, want no members", page, err)
	}
}
