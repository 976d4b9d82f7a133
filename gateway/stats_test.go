package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestStatsEndpoint checks that Config.Stats is served on the public
// listener to the API key alone, and not at all without one.
func TestStatsEndpoint(t *testing.T) {
	stats := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"node":"test-node"}`))
	})
	withStats := startServer(t, func(c *Config) { c.Stats = stats })
	noKey := startServer(t, func(c *Config) { c.Stats = stats; c.APIKey = "" })
	noStats := startServer(t, nil)
	tests := []struct {
		name   string
		srv    *testServer
		query  string
		auth   string
		status int
		msg    string // in the error's message
	}{
		{"the key", withStats, "", "Bearer " + testAPIKey, 200, ""},
		{"no credential", withStats, "", "", 401, "need the API key"},
		{"a wrong key", withStats, "", "Bearer wrong", 401, "the API key is not valid"},
		{"a token", withStats, "", "Bearer a.b.c", 401, "a user's token is not accepted here"},
		{"not bearer", withStats, "", "Token " + testAPIKey, 401, "Bearer"},
		{"the key in the URL", withStats, "?token=" + testAPIKey, "", 401, "not in the URL"},
		{"no API key configured", noKey, "", "Bearer " + testAPIKey, 404, ""},
		{"no Stats configured", noStats, "", "Bearer " + testAPIKey, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, tt.srv.url+"/v1/stats"+tt.query, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status == 200 {
				if string(body) != `{"node":"test-node"}` {
					t.Errorf("got %s, want the Stats handler's answer", body)
				}
				return
			}
			var e struct{ Error protoError }
			if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error.Message, tt.msg) {
				t.Errorf("got %s, want a JSON error saying %q", body, tt.msg)
			}
			if strings.Contains(string(body), testAPIKey) {
				t.Errorf("the refusal %s repeats the key", body)
			}
		})
	}
}

// TestRooms checks that Rooms counts the rooms with a session of this node
// in them, and forgets a room its last session left.
func TestRooms(t *testing.T) {
	ts := startServer(t, nil)
	if n := ts.srv.Rooms(); n != 0 {
		t.Fatalf("an idle node: %d rooms, want 0", n)
	}
	a := dialWS(t, ts.ws, nil)
	a.expect("welcome")
	b := dialWS(t, ts.ws, nil)
	b.expect("welcome")
	for i, c := range []*wsConn{a, b} {
		c.send(map[string]any{"type": "subscribe", "id": "1", "room": "shared"})
		c.expect("ack")
		if i == 0 {
			c.send(map[string]any{"type": "subscribe", "id": "2", "room": "own"})
			c.expect("ack")
		}
	}
	if n := ts.srv.Rooms(); n != 2 {
		t.Errorf("two rooms subscribed: Rooms() = %d, want 2", n)
	}
	a.c.CloseNow()
	waitFor(t, "the rooms of the closed session to go", func() bool { return ts.srv.Rooms() == 1 })
}
