package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// PresenceOptions select a page of a room's members. The zero value asks for
// the first page of the node's default size (100).
type PresenceOptions struct {
	// Cursor is the Next of the previous page (or a SubscribeAck's
	// MembersNext); empty for the first page.
	Cursor string
	// Limit is the page size, 1 to 1000; zero means the node's default, 100.
	Limit int
}

// PresencePage is one page of a room's members, ordered by session id.
type PresencePage struct {
	Members []Member `json:"members"`
	// Total is how many members the room has.
	Total int `json:"members_total"`
	// Next is the cursor of the next page; empty on the last page.
	Next string `json:"next,omitempty"`
}

// Presence returns a page of a room's members, across every node. The
// session need not be subscribed to the room, but its token must allow
// subscribing to it (otherwise a ServerError with code forbidden). A cursor
// or limit the node does not accept is a ServerError with code bad_request.
// A page whose connection drops before the answer is asked for again on the
// next connection.
func (c *Client) Presence(ctx context.Context, room string, opts PresenceOptions) (PresencePage, error) {
	f := map[string]any{"type": "presence", "room": room}
	if opts.Cursor != "" {
		f["cursor"] = opts.Cursor
	}
	if opts.Limit != 0 {
		f["limit"] = opts.Limit
	}
	for {
		conn, err := c.live(ctx)
		if err != nil {
			return PresencePage{}, err
		}
		raw, err := c.command(ctx, conn, f, nil)
		if errors.Is(err, ErrDisconnected) {
			continue
		}
		if err != nil {
			return PresencePage{}, err
		}
		var page PresencePage
		if err := json.Unmarshal(raw, &page); err != nil {
			return PresencePage{}, fmt.Errorf("client: bad ack: %w", err)
		}
		return page, nil
	}
}

// AllMembers returns every member of a room, walking its pages with
// Presence, 1000 members a page. A member that joins or leaves while it walks
// may or may not be in the result; none is in it twice.
func (c *Client) AllMembers(ctx context.Context, room string) ([]Member, error) {
	var all []Member
	seen := make(map[string]bool)
	opts := PresenceOptions{Limit: 1000}
	for {
		page, err := c.Presence(ctx, room, opts)
		if err != nil {
			return nil, err
		}
		for _, m := range page.Members {
			if !seen[m.Session] {
				seen[m.Session] = true
				all = append(all, m)
			}
		}
		if page.Next == "" {
			return all, nil
		}
		if page.Next == opts.Cursor {
			return nil, fmt.Errorf("client: presence of %s: the node returned the same cursor twice", room)
		}
		opts.Cursor = page.Next
	}
}
