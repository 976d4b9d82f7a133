package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// bigOffer is a valid SDP offer of about n bytes: testOffer with a long
// attribute line of the kind some stacks add.
func bigOffer(n int) string {
	return testOffer + "a=x-review-pad:" + strings.Repeat("p", n-len(testOffer)-18) + "\r\n"
}

// A peer's connection drops; the other peer sends it a few renegotiation
// offers while it is away (all within the signal size, the rate limit and
// the held-signal bound, each acknowledged); it reconnects and resumes
// within the grace period. What a user notices: the resumed connection is
// closed at once with 1013 "slow consumer" as the held signals are all
// queued for it in one go against the live-queue bound; they go back to the
// mailbox, and every later resume ends the same way: the peer can never
// rejoin its call.
func TestReviewResumeWithHeldSignalsClosedAsSlowConsumer(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Calls.Grace = 10 * time.Second })
	alice, bob := dialCall(t, ts, ""), dialCall(t, ts, "")
	a := alice.join("c", "")
	b := bob.join("c", "")
	bobID := b["session"].(string)
	alice.must("peer join", peerEvent("join", bobID))

	bob.c.CloseNow()
	waitFor(t, "the node to see bob's connection close", func() bool {
		ts.srv.sessMu.Lock()
		defer ts.srv.sessMu.Unlock()
		return len(ts.srv.sessions) == 1
	})
	offer := bigOffer(30 << 10)
	const held = 48 // 1.4 MiB held for bob
	for i := range held {
		r := alice.command(map[string]any{"type": "signal", "call": "c", "to": bobID,
			"data": map[string]any{"sdp": map[string]any{"type": "offer", "sdp": offer}}})
		if r["type"] != "ack" {
			t.Fatalf("signal %d to the away peer: %v", i, r)
		}
	}
	bob2, ended := dialCallErr(t, ts)
	bob2.send(map[string]any{"type": "join", "id": "rejoin", "call": "c", "resume": b["resume"]})
	ack, ok := bob2.wait(5*time.Second, func(m map[string]any) bool { return m["id"] == "rejoin" })
	got := 0
	for ok && got < held {
		if _, more := bob2.wait(5*time.Second, signalFrom(a["session"].(string))); !more {
			break
		}
		got++
	}
	if !ok || ack["resumed"] != true || got < held {
		var status websocket.StatusCode = -1
		select {
		case err := <-ended:
			status = websocket.CloseStatus(err)
		case <-time.After(time.Second):
		}
		t.Fatalf("resume within the grace period with %d held offers: ack %v (received: %v), %d of %d held signals; the connection's close status: %v", held, ack, ok, got, held, status)
	}
}

// dialCallErr is dialCall that also reports the error that ended the
// connection's reads.
func dialCallErr(t *testing.T, ts *testServer) (*callConn, <-chan error) {
	t.Helper()
	w := dialWS(t, ts.ws, nil)
	w.expect("welcome")
	c := &callConn{wsConn: w, frames: make(chan map[string]any, 1024)}
	ended := make(chan error, 1)
	go func() {
		defer close(c.frames)
		for {
			f, err := w.nextErr(time.Hour)
			if err != nil {
				ended <- err
				return
			}
			c.frames <- f
		}
	}()
	return c, ended
}
