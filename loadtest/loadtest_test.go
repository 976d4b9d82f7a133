package loadtest

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startNode serves a gateway on 127.0.0.1:0 for the test.
func startNode(t *testing.T) string {
	t.Helper()
	return serveGateway(t, gateway.Config{}, nil)
}

// serveGateway serves a gateway made with cfg on 127.0.0.1:0 for the test,
// on a fresh in-memory bus when cfg.Bus is nil (closed with the test; a
// bus given is the caller's), its handler wrapped by wrap when not nil, and
// returns its WebSocket endpoint. The gateway is shut down when the test
// ends.
func serveGateway(t *testing.T, cfg gateway.Config, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	if cfg.Bus == nil {
		bus := fanout.NewMemory(fanout.MemoryConfig{})
		t.Cleanup(func() { bus.Close() })
		cfg.Bus = bus
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := gw.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gw.Shutdown(ctx)
		hs.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
}

func TestFanout(t *testing.T) {
	url := startNode(t)
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "fanout", Conns: 20, Rooms: 2, Rate: 20, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ConnectErrors != 0 {
		t.Errorf("got %d connect errors, want 0", rep.ConnectErrors)
	}
	if rep.Published == 0 {
		t.Fatal("nothing was published")
	}
	// Every subscriber of a room gets every message of that room.
	if want := rep.Published * 10; rep.Delivered != want {
		t.Errorf("got %d deliveries, want %d (published %d to 2 rooms of 10)", rep.Delivered, want, rep.Published)
	}
	if rep.Gaps != 0 || rep.Duplicates != 0 {
		t.Errorf("got %d gaps and %d duplicates, want none", rep.Gaps, rep.Duplicates)
	}
	if rep.P50 <= 0 || rep.P99 < rep.P50 || rep.P999 < rep.P99 || rep.Max < rep.P999 {
		t.Errorf("latency percentiles out of order: %+v", rep)
	}
	if !strings.Contains(rep.String(), "delivery latency") {
		t.Errorf("report lacks latency: %s", rep)
	}
}

func TestIdle(t *testing.T) {
	url := startNode(t)
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "idle", Conns: 30, Rooms: 3, Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ConnectErrors != 0 || rep.Conns != 30 {
		t.Errorf("got %+v, want 30 connections and no errors", rep)
	}
}

func TestConfigRefusals(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"remote target", Config{URL: "ws://192.0.2.1:8080/v1/ws"}, "not a loopback address"},
		{"remote metrics", Config{URL: "ws://127.0.0.1:1/v1/ws", Metrics: []string{"http://198.51.100.7/metrics"}}, "not a loopback address"},
		{"remote publish URL", Config{URL: "ws://127.0.0.1:1/v1/ws", PublishURL: "ws://203.0.113.9:8080/v1/ws"}, "not a loopback address"},
		{"unknown scenario", Config{URL: "ws://127.0.0.1:1/v1/ws", Scenario: "storm"}, "scenario"},
		{"too long", Config{URL: "ws://127.0.0.1:1/v1/ws", Duration: time.Hour}, "bound"},
		{"too long with few conns", Config{URL: "ws://127.0.0.1:1/v1/ws", Conns: 5, Duration: time.Hour}, "bound"},
		{"no url", Config{}, "URL is required"},
		{"unknown transport", Config{URL: "ws://127.0.0.1:1/v1/ws", Transport: "quic"}, "transport"},
		{"sse from another path", Config{URL: "ws://127.0.0.1:1/v1/socket", Transport: "sse"}, `cannot derive the SSE endpoint: the path "/v1/socket" does not end in /v1/ws`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Run(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestSourceAddrs(t *testing.T) {
	tests := []struct {
		url  string
		want int
	}{
		{"ws://127.0.0.1:8080/v1/ws", 254},
		{"ws://127.0.0.9:8080/v1/ws", 254},
		{"ws://localhost:8080/v1/ws", 254},
		{"ws://[::1]:8080/v1/ws", 0},
		{"ws://192.0.2.1:8080/v1/ws", 0},
	}
	for _, tt := range tests {
		want := tt.want
		if runtime.GOOS != "linux" {
			want = 0
		}
		got := sourceAddrs(tt.url)
		if len(got) != want {
			t.Errorf("%s: got %d source addresses, want %d", tt.url, len(got), want)
		}
		if len(got) > 0 && (got[0].String() != "127.0.0.1" || got[len(got)-1].String() != "127.0.0.254") {
			t.Errorf("%s: got %v to %v, want 127.0.0.1 to 127.0.0.254", tt.url, got[0], got[len(got)-1])
		}
	}
}

// A run where no connection can be made stops early and says why, instead
// of measuring nothing for its whole duration.
func TestNoConnectionSaysWhy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + ln.Addr().String() + "/v1/ws"
	ln.Close() // nothing listens there now
	start := time.Now()
	_, err = Run(context.Background(), Config{URL: url, Scenario: "fanout", Conns: 50, Rooms: 2, Rate: 10, Duration: 30 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "no connection to "+url+" succeeded") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("got %v, want an error naming the URL and the connection refused", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v to give up, want a few tries", took)
	}
}

// Subscribers over SSE get what WebSocket subscribers get: every message of
// their room, in order, once, with its latency.
func TestSSE(t *testing.T) {
	url := startNode(t)
	t.Run("connect", func(t *testing.T) {
		rep, err := Run(context.Background(), Config{URL: url, Transport: "sse", Scenario: "connect", Conns: 20, Rooms: 2, Duration: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if rep.ConnectErrors != 0 || rep.Conns != 20 || rep.Transport != "sse" {
			t.Errorf("got %+v, want 20 SSE connections and no errors", rep)
		}
		if !strings.Contains(rep.String(), "scenario connect over sse: 20 connections") {
			t.Errorf("report does not name the transport: %s", rep)
		}
	})
	t.Run("fanout", func(t *testing.T) {
		rep, err := Run(context.Background(), Config{URL: url, Transport: "sse", Scenario: "fanout", Conns: 20, Rooms: 2, Rate: 20, Duration: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if rep.ConnectErrors != 0 {
			t.Errorf("got %d connect errors, want 0", rep.ConnectErrors)
		}
		if rep.Published == 0 {
			t.Fatal("nothing was published")
		}
		if want := rep.Published * 20 / 2; rep.Delivered != want {
			t.Errorf("got %d deliveries, want %d (published %d to 2 rooms of 10)", rep.Delivered, want, rep.Published)
		}
		if rep.Gaps != 0 || rep.Duplicates != 0 || rep.Lost != 0 {
			t.Errorf("got %d gaps, %d duplicates and %d lost, want none", rep.Gaps, rep.Duplicates, rep.Lost)
		}
		if rep.P50 <= 0 || rep.P90 < rep.P50 || rep.P99 < rep.P90 || rep.P999 < rep.P99 || rep.Max < rep.P999 {
			t.Errorf("latency percentiles out of order or zero: %+v", rep)
		}
	})
}

// An SSE answer other than 200 is a failed connection; the error gives the
// status and the start of the body. Subscribers send the token.
func TestSSERefused(t *testing.T) {
	auth := make(chan string, 100)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case auth <- r.URL.Path + "?" + r.URL.RawQuery + " " + r.Header.Get("Authorization"):
		default:
		}
		http.Error(w, `{"code":"unauthorized","message":"bad token"}`, http.StatusUnauthorized)
	}))
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
	rep, err := Run(context.Background(), Config{URL: url, Token: "t0k", Transport: "sse", Scenario: "connect", Conns: 20, Rooms: 2, Duration: time.Second})
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") || !strings.Contains(err.Error(), "bad token") {
		t.Fatalf("got %v, want an error with the status and the body", err)
	}
	// Connections open concurrently: those already under way when the
	// tenth failed fail too.
	if rep.ConnectErrors < 10 {
		t.Errorf("got %d connect errors, want at least the 10 tries before giving up", rep.ConnectErrors)
	}
	want := "/v1/sse?rooms=load-0 Bearer t0k"
	var got []string
	for len(auth) > 0 {
		got = append(got, <-auth)
	}
	if !slices.Contains(got, want) {
		t.Errorf("got requests %q, want one %q", got, want)
	}
}

// In the rooms scenario every member publishes into its small room over its
// own connection, and every member of a room gets each of its messages, in
// order, with their latencies.
func TestRooms(t *testing.T) {
	url := startNode(t)
	rep, err := Run(context.Background(), Config{URL: url, Scenario: "rooms", Conns: 40, Rooms: 10, Rate: 5, Duration: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ConnectErrors != 0 {
		t.Errorf("got %d connect errors, want 0", rep.ConnectErrors)
	}
	// 40 members publishing 5 a second for 2 seconds.
	if rep.Published < 40*5 {
		t.Fatalf("published %d, want about %d", rep.Published, 40*5*2)
	}
	if want := rep.Published * 4; rep.Delivered != want {
		t.Errorf("delivered %d, want %d (each of %d messages to the 4 members of its room)", rep.Delivered, want, rep.Published)
	}
	if rep.Gaps != 0 || rep.Duplicates != 0 || rep.Lost != 0 {
		t.Errorf("got %d gaps, %d duplicates and %d lost-recovery events, want none", rep.Gaps, rep.Duplicates, rep.Lost)
	}
	if rep.P50 <= 0 || rep.P99 < rep.P50 || rep.Max < rep.P99 {
		t.Errorf("latency percentiles out of order: %+v", rep)
	}
	if !strings.Contains(rep.String(), "scenario rooms over ws") || !strings.Contains(rep.String(), "delivery latency") {
		t.Errorf("report %q lacks the scenario or the latencies", rep.String())
	}
	if _, err := Run(context.Background(), Config{URL: url, Scenario: "rooms", Transport: "sse"}); err == nil || !strings.Contains(err.Error(), "WebSocket only") {
		t.Errorf("rooms over SSE: got %v, want a refusal", err)
	}
}

// The latency histogram gives each percentile within its 0.1% precision,
// whatever the number of samples, and clamps what lies outside its range.
func TestLatencyHistogram(t *testing.T) {
	h := newLatencies()
	for ms := 1; ms <= 10000; ms++ {
		h.record(time.Duration(ms) * time.Millisecond / 10) // 0.1 ms to 1 s
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{50, 500 * time.Millisecond}, {90, 900 * time.Millisecond}, {99, 990 * time.Millisecond}, {99.9, 999 * time.Millisecond}, {100, time.Second}} {
		got := h.at(tt.q)
		if diff := got - tt.want; diff < -tt.want/1000 || diff > tt.want/1000 {
			t.Errorf("p%v: got %v, want %v within 0.1%%", tt.q, got, tt.want)
		}
	}
	h = newLatencies()
	h.record(0)
	h.record(time.Hour)
	if got := h.at(0); got != time.Microsecond {
		t.Errorf("a zero latency counts as %v, want 1µs", got)
	}
	if got, want := h.distribution("x").Max, maxLatency; got < want || got > want+want/1000 {
		t.Errorf("an hour counts as %v, want %v", got, want)
	}
	if h.count() != 2 {
		t.Errorf("recorded %d, want 2: a value out of range was lost", h.count())
	}
}
