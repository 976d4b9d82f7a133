package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
)

// startReviewNode serves a gateway on 127.0.0.1:0 for the test and returns
// its WebSocket endpoint.
func startReviewNode(t *testing.T) string {
	t.Helper()
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	gw, err := gateway.New(gateway.Config{Bus: bus, DrainTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gw.Shutdown(ctx)
		hs.Close()
		bus.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
}

// runLoadtest calls run for loadtest with args, turning a panic into an
// error.
func runLoadtest(getenv func(string) string, args ...string) (out string, err error) {
	var b bytes.Buffer
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
		out = b.String()
	}()
	err = run(context.Background(), func() {}, append([]string{"loadtest"}, args...), getenv, nil, &b, &b)
	return
}

// A --url (or --metrics) on the command line wins over PARLEY_URL
// (PARLEY_METRICS), as it does for every other flag; listFlag appends the
// command line's values to the environment's instead, so the run loads the
// environment's node too.
func TestReviewLoadtestFlagListReplacesEnv(t *testing.T) {
	tests := []struct {
		name, env, val, flag string
	}{
		{"url", "PARLEY_URL", "ws://192.0.2.1:1/v1/ws", "--url"},
		{"metrics", "PARLEY_METRICS", "http://192.0.2.1:1/metrics", "--metrics"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--url", "ws://127.0.0.1:1/v1/ws", "--scenario", "connect", "--conns", "1", "--duration", "1ms"}
			if tt.flag == "--metrics" {
				args = append(args, "--metrics", "http://127.0.0.1:1/metrics")
			}
			_, err := runLoadtest(env(tt.env, tt.val), args...)
			if err != nil && strings.Contains(err.Error(), "192.0.2.1") {
				t.Errorf("%s=%s with %s on the command line: got %v, want the command line's value alone", tt.env, tt.val, tt.flag, err)
			}
		})
	}
}

// An empty --url (or one of commas only) is a bad value, named as such,
// not a crash.
func TestReviewLoadtestEmptyURL(t *testing.T) {
	for _, v := range []string{"", ","} {
		_, err := runLoadtest(env(), "--url", v)
		if err == nil || strings.HasPrefix(err.Error(), "panic") || !strings.Contains(err.Error(), "--url") {
			t.Errorf("--url %q: got %v, want an error naming --url", v, err)
		}
	}
}

// A --url without a scheme gets an error that says what is wrong with it.
// localhost:8080 parses as scheme "localhost", no host: the message is
// "loadtest:  is not a loopback address; pass AllowRemote (--allow-remote)",
// which names no URL and suggests a flag that does not help.
func TestReviewLoadtestURLWithoutScheme(t *testing.T) {
	_, err := runLoadtest(env(), "--url", "localhost:8080", "--scenario", "connect", "--conns", "1", "--duration", "1ms")
	if err == nil || !strings.Contains(err.Error(), "localhost:8080") || strings.Contains(err.Error(), "allow-remote") {
		t.Errorf("got %v, want an error naming localhost:8080 and what it lacks (ws://)", err)
	}
}

// A run that fails, here before dialing anything, leaves the --html file as
// it was; the command creates (truncates) it first and leaves it empty.
func TestReviewLoadtestHTMLKeptOnFailedRun(t *testing.T) {
	page := filepath.Join(t.TempDir(), "report.html")
	const before = "<!doctype html><p>last week's report</p>"
	if err := os.WriteFile(page, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := runLoadtest(env(), "--url", "ws://192.0.2.1:1/v1/ws", "--html", page)
	if err == nil {
		t.Fatal("a remote URL without --allow-remote ran")
	}
	got, _ := os.ReadFile(page)
	if string(got) != before {
		t.Errorf("after a failed run (%v) the --html file holds %q, want it as it was (%q)", err, got, before)
	}
}

// The --json report's keys are snake_case like the rest of it; the
// latency percentiles and memory figures come out under their Go names
// (P50, RSSBefore, PerConn, ...).
func TestReviewLoadtestJSONKeys(t *testing.T) {
	url := startReviewNode(t)
	out, err := runLoadtest(env(), "--url", url, "--scenario", "fanout", "--conns", "4", "--rooms", "1", "--rate", "20", "--duration", "300ms", "--json")
	if err != nil {
		t.Fatalf("loadtest: %v\n%s", err, out)
	}
	// The progress went to the same buffer: the JSON starts at the first {.
	var rep map[string]any
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rep); err != nil {
		t.Fatalf("report %q: %v", out, err)
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	var bad []string
	for k := range rep {
		if !snake.MatchString(k) {
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		t.Errorf("JSON keys %q are not snake_case like the others", bad)
	}
}

// --conns has no upper bound (nor --rooms, --calls, --allocations): the run
// allocates its slices for them before dialing, and a count past what the
// heap can address crashes the command instead of naming the flag. (2^46
// here, which panics; --conns 1000000000 would ask for 8 GB at once.)
func TestReviewLoadtestHugeConns(t *testing.T) {
	_, err := runLoadtest(env(), "--url", "ws://127.0.0.1:1/v1/ws", "--duration", "1ms", "--scenario", "connect", "--conns", "70368744177664")
	if err == nil || strings.HasPrefix(err.Error(), "panic") || !strings.Contains(err.Error(), "--conns") {
		t.Errorf("got %v, want an error naming --conns", err)
	}
}
