package main

import (
	"bytes"
	"context"
	"encoding/json"
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
		{"size", []string{"--size", "-1"}, "--size -1: must be positive"},
		{"calls", []string{"--scenario", "calls", "--calls", "0"}, "--calls 0: must be positive"},
		{"html file", []string{"--scenario", "connect", "--conns", "1", "--duration", "1ms", "--html", "/nonexistent/dir/r.html"}, "--html"},
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
