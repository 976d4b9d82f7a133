package loadtest

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
)

// closedURL returns a loopback WebSocket URL nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + ln.Addr().String() + "/v1/ws"
	ln.Close()
	return url
}

// The progress line of the connecting phase reads Report.ConnectErrors from
// its own goroutine while the connecting loop counts failures into it: a
// data race (go test -race fails this test) whenever a connection fails
// while the progress is shown.
func TestReviewConnectErrorsProgressRace(t *testing.T) {
	_, err := Run(context.Background(), Config{
		URL: closedURL(t), Scenario: "fanout", Conns: 50, Rooms: 2, Ramp: 20,
		Duration: time.Second, Progress: io.Discard, Bar: true,
	})
	if err == nil || !strings.Contains(err.Error(), "no connection") {
		t.Fatalf("got %v, want the run to give up", err)
	}
}

// A run whose every connection fails, but with fewer than ten connections
// asked for, does not stop and say why: it holds nothing for its whole
// duration and reports success.
func TestReviewFewConnectionsAllFailedIsNoError(t *testing.T) {
	start := time.Now()
	rep, err := Run(context.Background(), Config{URL: closedURL(t), Scenario: "fanout", Conns: 3, Rooms: 1, Duration: 3 * time.Second})
	took := time.Since(start)
	if err == nil {
		t.Errorf("got no error after %v with %d of 3 connections failed (%q), want the run to stop and say why", took.Round(time.Millisecond), rep.ConnectErrors, rep.FirstError)
	}
	if took > 2*time.Second {
		t.Errorf("took %v with no connection open, want it to give up at once", took.Round(time.Millisecond))
	}
}

// A duplicate that arrives late (offset below the last one seen) moves the
// subscriber's position back, so the next in-order message counts as a gap
// of messages that were all delivered.
func TestReviewLateDuplicateCountsPhantomGap(t *testing.T) {
	rr := &roomsRun{latency: newLatencies(), byNode: []*latencies{newLatencies()}, recovery: newLatencies(), reconnect: newLatencies()}
	s := &subscriber{}
	var last uint64
	for _, off := range []uint64{1, 2, 3, 2, 4, 5} {
		last = rr.message(s, last, off, []byte(`{"sent":1}`))
	}
	if g, d := rr.gaps.Load(), rr.dups.Load(); g != 0 || d != 1 {
		t.Errorf("offsets 1 2 3 2 4 5: got %d gaps and %d duplicates, want 0 gaps and 1 duplicate", g, d)
	}
}

// startReviewNode serves a gateway on 127.0.0.1:0 whose bus keeps history
// messages per room (0: the default), and which drains in 100ms when the
// test ends.
func startReviewNode(t *testing.T, history int) string {
	t.Helper()
	bus := fanout.NewMemory(fanout.MemoryConfig{HistorySize: history})
	t.Cleanup(func() { bus.Close() })
	return serveGateway(t, gateway.Config{Bus: bus, DrainTimeout: 100 * time.Millisecond}, nil)
}

// When deliveries are lost, the run waits the whole 5s drain bound for
// them and counts that wait in Report.Duration, so a 2s run reports its
// deliveries "in 7s" and a deliveries/s a third of the true one. And a
// dropped subscriber that lost messages (EventLost) still counts as
// Recovered, which the report defines as having got everything it missed.
func TestReviewResumeWithLossFigures(t *testing.T) {
	// One message of history: a subscriber away for more than one message
	// cannot recover what it missed (EventLost, then a gap).
	url := startReviewNode(t, 1)
	const dur = 2 * time.Second
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "resume", Conns: 10, Rooms: 1, Rate: 40, Drop: 0.5, Duration: dur})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Lost == 0 {
		t.Fatalf("no subscriber lost messages with one message of history at 40 a second:\n%s", rep)
	}
	if rep.Duration > dur+time.Second {
		t.Errorf("got Duration %v for a %v run (deliveries/s %.0f over it, %.0f over the run): the drain wait is counted as running time",
			rep.Duration.Round(time.Millisecond), dur, rep.PerSecond, float64(rep.Delivered)/dur.Seconds())
	}
	if most := rep.Resume.Dropped - int(rep.Lost); rep.Resume.Recovered > most {
		t.Errorf("got %d of %d dropped subscribers recovered with %d lost-recovery events: at most %d got everything they missed",
			rep.Resume.Recovered, rep.Resume.Dropped, rep.Lost, most)
	}
}

// A publish rate so small that its period overflows time.Duration (1e-10 a
// second: Config and --rate accept any rate from 0 to 1e6) turns into a
// negative period, and rand.N panics in a publisher goroutine, taking the
// whole process down. The run happens in a child process.
func TestReviewTinyRatePanics(t *testing.T) {
	if os.Getenv("LOADTEST_REVIEW_CHILD") == "tiny-rate" {
		url := startNode(t)
		Run(context.Background(), Config{URL: url, Scenario: "fanout", Conns: 2, Rooms: 1, Rate: 1e-10, Duration: 300 * time.Millisecond})
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReviewTinyRatePanics$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LOADTEST_REVIEW_CHILD=tiny-rate")
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "panic") {
		i := strings.Index(string(out), "panic")
		t.Errorf("a run at --rate 1e-10 crashed (%v):\n%.600s", err, out[i:])
	}
}

// startNodes (scenarios_test.go) is no cluster: its gateways share one
// fanout.Memory, which holds one handler per room ("subscribing a subscribed
// room again replaces its handler"), so when both nodes carry a room, the
// node that subscribed it last takes its messages from the other. TestTwoNodes
// passes only because with 2 rooms and 2 nodes subscriber i lands in room
// i%2 on node i%2: no room is on both nodes. With one room, half the
// subscribers get nothing.
func TestReviewStartNodesIsNoCluster(t *testing.T) {
	urls := startNodes(t, 2)
	rep, err := Run(context.Background(), Config{URL: urls[0], URLs: urls[1:], Scenario: "fanout", Conns: 10, Rooms: 1, Rate: 20, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if want := rep.Published * 10; rep.Delivered != want {
		t.Errorf("published %d into one room of 10 subscribers over 2 nodes: delivered %d, want %d\n%s", rep.Published, rep.Delivered, want, rep)
	}
}

// A run whose every publish fails ends without an error, and its report
// blames the rate ("the node did not keep up with --rate") without the
// reason. Here the reason is the size: Size may be up to 1 MiB, a node reads
// frames of at most 64 KiB by default and closes a connection that sends a
// bigger one, so each publish ends "disconnected before the reply".
func TestReviewRefusedPublishesSayWhy(t *testing.T) {
	url := startReviewNode(t, 0)
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "fanout", Conns: 4, Rooms: 1, Rate: 5, Size: 100_000, Duration: time.Second})
	if rep.Published != 0 {
		t.Fatalf("the node took %d publishes of 100 kB, over its 64 KiB frame limit", rep.Published)
	}
	s := rep.String()
	if err == nil && (strings.Contains(s, "did not keep up") || !strings.Contains(s, "disconnected")) {
		t.Errorf("every publish failed: got no error and a report that does not say why:\n%s", s)
	}
}

// CallsReport.SetupRate is documented as "at most about Rate", but it is
// SetUp divided by the time from the first call's start to the last setup
// completed: n calls started 1/Rate apart span n-1 periods, so a few calls
// report a rate far above the one asked (one call: one over its setup time).
func TestReviewCallsSetupRateAboveRate(t *testing.T) {
	url := startCallNode(t, callNode{})
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "calls", Calls: 2, Rate: 1, Duration: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Calls
	if c.SetUp != 2 {
		t.Fatalf("got %d calls set up, want 2:\n%s", c.SetUp, rep)
	}
	if c.SetupRate > 1.25*c.Rate {
		t.Errorf("2 calls asked at %.0f a second: got a setup rate of %.1f a second, want at most about %.0f", c.Rate, c.SetupRate, c.Rate)
	}
}

// The connect scenario opens connections at the ramp rate whatever one
// connection takes: against a node that takes 100 ms to answer each
// handshake, 200 connections at 10,000 a second open in well under the 20 s
// that one after the other would take.
func TestReviewConnectRampNotReached(t *testing.T) {
	url := serveGateway(t, gateway.Config{DrainTimeout: 100 * time.Millisecond}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(100 * time.Millisecond)
			h.ServeHTTP(w, r)
		})
	})
	const conns = 200
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "connect", Conns: conns, Rooms: 4, Ramp: 10_000, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ConnectErrors != 0 || rep.ConnectIn > 5*time.Second {
		t.Errorf("%d connections at --ramp 10000 to a node that answers in 100 ms: opened in %v (%.0f a second, %d failed); one after the other takes 20 s",
			conns, rep.ConnectIn.Round(time.Millisecond), rep.ConnectRate, rep.ConnectErrors)
	}
}
