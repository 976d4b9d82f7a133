package loadtest

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
)

// The lean subscribers answer the node's pings: with a ping every 100 ms and
// 200 ms to answer, they are all still there, and still receive, after a
// second of silence.
func TestLeanSubscribersAnswerPings(t *testing.T) {
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	t.Cleanup(func() { bus.Close() })
	endpoint := serveGateway(t, gateway.Config{Bus: bus, PingInterval: 100 * time.Millisecond, PongTimeout: 200 * time.Millisecond}, nil)
	ctx := context.Background()
	var subs []*wsSub
	got := make(chan uint64, 10)
	for range 5 {
		s, err := dialWS(ctx, http.DefaultClient, endpoint, "pinged", "")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		subs = append(subs, s)
		go s.read(func(offset uint64, data []byte) { got <- offset })
	}
	time.Sleep(time.Second)
	if _, err := bus.Publish(ctx, "pinged", fanout.Publication{Data: json.RawMessage(`{"sent":1}`)}); err != nil {
		t.Fatal(err)
	}
	for range subs {
		select {
		case off := <-got:
			if off != 1 {
				t.Errorf("offset %d, want 1", off)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a subscriber got nothing after a second of pings: it did not answer them")
		}
	}
}

// A subscribe the node refuses is an error that says why.
func TestLeanSubscriberRefused(t *testing.T) {
	url := startNode(t)
	_, err := dialWS(context.Background(), http.DefaultClient, url, "bad room!", "")
	if err == nil || !strings.Contains(err.Error(), "bad_room") {
		t.Fatalf("got %v, want the node's bad_room", err)
	}
}

// messageFields reads the offset and the data of frames as the node encodes
// them, and sentAt the publishers' send time; other frames are not taken
// for messages.
func TestMessageFields(t *testing.T) {
	for _, tt := range []struct {
		frame  string
		ok     bool
		offset uint64
		sent   int64
	}{
		{`{"type":"message","room":"load-0","offset":42,"epoch":"e1","data":{"sent":1733000000123456789,"pad":"xx"},"ts":1733000000123}`, true, 42, 1733000000123456789},
		{`{"type":"message","room":"a:b","offset":18446744073709551615,"epoch":"e","data":{"pad":"x","sent":7},"from":"u"}`, false, 0, 0},
		{`{"type":"message","room":"r","offset":1,"epoch":"e","data":"text"}`, true, 1, 0},
		{`{"type":"ping"}`, false, 0, 0},
		{`{"type":"message","room":"r","epoch":"e","offset":1,"data":{}}`, false, 0, 0},
		{`{"type":"message","room":"r`, false, 0, 0},
	} {
		offset, data, ok := messageFields([]byte(tt.frame))
		if ok != tt.ok || offset != tt.offset {
			t.Errorf("%s: got %d, %v; want %d, %v", tt.frame, offset, ok, tt.offset, tt.ok)
			continue
		}
		if ok && sentAt(data) != tt.sent {
			t.Errorf("%s: sent %d, want %d", tt.frame, sentAt(data), tt.sent)
		}
	}
	// A payload with its fields in another order is decoded.
	if got := sentAt([]byte(`{"pad":"x","sent":5}`)); got != 5 {
		t.Errorf("sentAt of reordered fields: %d, want 5", got)
	}
}

// FuzzMessageFields: whatever the node or a broken connection sends, reading
// a frame never panics, and a frame the reader takes for a message has the
// offset that decoding it gives.
func FuzzMessageFields(f *testing.F) {
	f.Add([]byte(`{"type":"message","room":"load-0","offset":42,"epoch":"e1","data":{"sent":17,"pad":"xx"},"ts":1}`))
	f.Add([]byte(`{"type":"message","room":"","offset":,"data":`))
	f.Add([]byte(`{"type":"message","room":"x","offset":99999999999999999999,"data":{"sent":1}}`))
	f.Add([]byte(`{"type":"ping"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		offset, data, ok := messageFields(b)
		sentAt(data)
		frameType(b)
		if !ok {
			return
		}
		var m struct {
			Type   string `json:"type"`
			Offset uint64 `json:"offset"`
		}
		if json.Unmarshal(b, &m) == nil && (m.Type != "message" || m.Offset != offset) {
			t.Fatalf("%q: read offset %d, decoding gives %+v", b, offset, m)
		}
	})
}
