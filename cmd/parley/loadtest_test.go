package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// loadtest's default flags fit a node with serve's defaults: 1,000
// subscribers and a publisher for each of 10 rooms from one machine, where
// the node allows 1,000 connections per client address. On Linux they come
// from 254 source addresses; elsewhere from one, and the node's limit must
// be raised above them, as loadtest's help says.
func TestLoadtestDefaultsFitServeDefaults(t *testing.T) {
	serveArgs := []string{"--addr", "127.0.0.1:0", "--admin-addr", "off", "--turn-addr", "off", "--drain", "100ms"}
	wantSources := 254
	if runtime.GOOS != "linux" {
		serveArgs = append(serveArgs, "--max-conns-per-ip", "2000")
		wantSources = 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func() {}, serveArgs, env(), nil, &out, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not return after cancel")
		}
	})
	wsURL := "ws" + strings.TrimPrefix(waitListening(t, &out), "http") + "/v1/ws"

	var report, progress bytes.Buffer
	if err := run(context.Background(), func() {}, []string{"loadtest", "--url", wsURL, "--duration", "1s", "--json"}, env(), nil, &report, &progress); err != nil {
		t.Fatalf("loadtest: %v\n%s", err, progress.String())
	}
	var rep struct {
		Conns         int   `json:"conns"`
		ConnectErrors int   `json:"connect_errors"`
		Sources       int   `json:"source_addresses"`
		Published     int64 `json:"published"`
		Delivered     int64 `json:"delivered"`
	}
	if err := json.Unmarshal(report.Bytes(), &rep); err != nil {
		t.Fatalf("report %q: %v", report.String(), err)
	}
	if rep.Conns != 1000 || rep.ConnectErrors != 0 {
		t.Errorf("got %d connections with %d refused, want 1000 and none refused", rep.Conns, rep.ConnectErrors)
	}
	if rep.Sources != wantSources {
		t.Errorf("got %d source addresses, want %d", rep.Sources, wantSources)
	}
	if rep.Published == 0 || rep.Delivered != rep.Published*100 {
		t.Errorf("published %d, delivered %d: want every message to each of a room's 100 subscribers", rep.Published, rep.Delivered)
	}
}

// loadtest names a bad --transport, --scenario or count before it dials
// anything; an --html file it cannot write is an error too.
func TestLoadtestRefusesBadChoices(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"transport", []string{"--transport", "quic"}, "--transport quic: want ws or sse"},
		{"transport from the environment", []string{}, "PARLEY_TRANSPORT=carrier-pigeon (--transport): want ws or sse"},
		{"scenario", []string{"--scenario", "storm"}, "--scenario storm: want one of connect, fanout, rooms, resume, calls, turn"},
		{"drop", []string{"--scenario", "resume", "--drop", "1.5"}, "--drop 1.5: must be above 0 and at most 1"},
		{"url without its path", []string{"--url", "ws://127.0.0.1:1"}, "want the node's WebSocket endpoint, with its path"},
		{"metrics for fewer nodes", []string{"--url", "ws://127.0.0.1:1/v1/ws", "--url", "ws://127.0.0.1:2/v1/ws", "--metrics", "http://127.0.0.1:3/metrics"}, "--metrics: given for 1 of 3 nodes"},
		{"size", []string{"--size", "-1"}, "--size -1: must be positive"},
		{"calls", []string{"--scenario", "calls", "--calls", "0"}, "--calls 0: must be positive"},
		{"html file", []string{"--scenario", "connect", "--conns", "1", "--duration", "1ms", "--html", "/nonexistent/dir/r.html"}, "--html /nonexistent/dir/r.html: "},
		{"html directory", []string{"--html", os.TempDir()}, "is a directory"},
		{"url without a scheme", []string{"--url", "localhost:8080"}, "--url localhost:8080: want a WebSocket URL such as ws://127.0.0.1:8080/v1/ws"},
		{"url before another", []string{"--url", "localhost:8080", "--url", "ws://127.0.0.1:2/v1/ws"}, "--url: localhost:8080: want a WebSocket URL"},
		{"url in a list", []string{"--url", "localhost:8080,ws://127.0.0.1:2/v1/ws"}, "--url: localhost:8080: want a WebSocket URL"},
		{"url host", []string{"--url", "ws:///v1/ws"}, "--url ws:///v1/ws: want a WebSocket URL"},
		{"publish url", []string{"--publish-url", "http://127.0.0.1:1/v1/ws"}, "--publish-url http://127.0.0.1:1/v1/ws: want a WebSocket URL"},
		{"metrics", []string{"--metrics", "127.0.0.1:9090"}, "--metrics 127.0.0.1:9090: want an HTTP URL such as http://127.0.0.1:9090/metrics"},
		{"one of the metrics", []string{"--metrics", "http://127.0.0.1:1/metrics,ws://127.0.0.1:2/metrics"}, "--metrics: ws://127.0.0.1:2/metrics: want an HTTP URL"},
		{"conns", []string{"--conns", "1000001"}, "--conns 1000001: must be positive and at most 1000000"},
		{"rooms", []string{"--rooms", "100001"}, "--rooms 100001: must be positive and at most 100000"},
		{"calls bound", []string{"--calls", "10001"}, "--calls 10001: must be positive and at most 10000"},
		{"allocations", []string{"--allocations", "100001"}, "--allocations 100001: must be positive and at most 100000"},
		{"ramp", []string{"--ramp", "1000001"}, "--ramp 1000001: must be positive and at most 1000000"},
		{"packet rate", []string{"--packet-rate", "1000001"}, "--packet-rate 1000001: must be positive and at most 1000000"},
		{"rate too low", []string{"--rate", "1e-10"}, "--rate 1e-10: must be at least 0.001"},
		{"rate negative", []string{"--rate", "-1"}, "--rate -1: must be at least 0.001"},
		{"rate too high", []string{"--rate", "1000001"}, "--rate 1000001: must be at least 0.001 and at most 1000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := env()
			if len(tt.args) == 0 {
				getenv = env("PARLEY_TRANSPORT", "carrier-pigeon")
			}
			var out bytes.Buffer
			err := run(context.Background(), func() {}, append([]string{"loadtest", "--url", "ws://127.0.0.1:1/v1/ws"}, tt.args...), getenv, nil, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v (output %q), want an error mentioning %q", err, out.String(), tt.want)
			}
		})
	}
}

// A list flag takes the environment's values when the command line gives
// none, and the command line's alone when it does, however often repeated.
func TestLoadtestListFlagPrecedence(t *testing.T) {
	tests := []struct {
		name string
		env  string
		args []string
		want []string
	}{
		{"default", "", nil, []string{"d"}},
		{"environment", "a, b", nil, []string{"a", "b"}},
		{"command line", "", []string{"--list", "c", "--list", "d,e"}, []string{"c", "d", "e"}},
		{"command line over environment", "a,b", []string{"--list", "c", "--list", "d"}, []string{"c", "d"}},
		{"empty command line over environment", "a", []string{"--list", ""}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newEnvFlags("test", "", env("PARLEY_LIST", tt.env), &bytes.Buffer{})
			l := &listFlag{vals: []string{"d"}}
			fs.Var(l, "list", "a list")
			if err := fs.parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(l.vals, tt.want) {
				t.Errorf("got %q, want %q", l.vals, tt.want)
			}
		})
	}
}

// PARLEY_URL is the target when --url is not given.
func TestLoadtestURLFromEnv(t *testing.T) {
	_, err := runLoadtest(env("PARLEY_URL", "ws://192.0.2.1:1/v1/ws"), "--scenario", "connect", "--conns", "1", "--duration", "1ms")
	if err == nil || !strings.Contains(err.Error(), "192.0.2.1") {
		t.Errorf("got %v, want the run refused for PARLEY_URL's remote node", err)
	}
	_, err = runLoadtest(env("PARLEY_URL", "127.0.0.1:1"), "--scenario", "connect")
	if want := "PARLEY_URL=127.0.0.1:1 (--url): want a WebSocket URL"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want an error mentioning %q", err, want)
	}
}

// --html gets the page of a run that succeeds, replacing what the file
// held, and no temporary file is left beside it whether the run succeeds
// or fails.
func TestLoadtestHTML(t *testing.T) {
	url := startReviewNode(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	if err := os.WriteFile(page, []byte("last week's"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runLoadtest(env(), "--url", url, "--scenario", "connect", "--conns", "2", "--duration", "50ms", "--html", page); err != nil {
		t.Fatalf("loadtest: %v\n%s", err, out)
	}
	got, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.ToLower(string(got)), "<html") {
		t.Errorf("--html file holds %.100q, want an HTML page", got)
	}
	fi, err := os.Stat(page)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o044 != 0o044 {
		t.Errorf("--html file's mode: got %v, want it readable by all, as os.Create makes it", fi.Mode())
	}
	if _, err := runLoadtest(env(), "--url", "ws://192.0.2.1:1/v1/ws", "--html", page); err == nil {
		t.Fatal("a remote URL without --allow-remote ran")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 1 || names[0] != "report.html" {
		t.Errorf("got %q in the directory, want report.html alone", names)
	}
}

// Progress is drawn as a bar on a terminal unless the injected TERM is
// dumb.
func TestLoadtestIsTerminal(t *testing.T) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("%s is not a character device here", os.DevNull)
	}
	if !isTerminal(f, env()) {
		t.Errorf("a character device: got false, want true")
	}
	if isTerminal(f, env("TERM", "dumb")) {
		t.Errorf("TERM=dumb: got true, want false")
	}
	if isTerminal(&bytes.Buffer{}, env()) {
		t.Errorf("a buffer: got true, want false")
	}
}
