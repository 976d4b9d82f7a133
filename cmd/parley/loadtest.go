package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/parley-rt/parley/loadtest"
)

const loadtestSummary = `Load a node with protocol clients for a bounded time and report what they saw.
Scenarios: idle (hold connections; with --metrics, the node's memory per
connection), fanout (one publisher per room at --rate; delivery latency
percentiles and throughput) and rooms (every subscriber publishes into its
room at --rate over its own connection: many small chatty rooms; WebSocket
only). Subscribers connect over WebSocket or, with
--transport sse, to the node's SSE endpoint (--url with /ws replaced by /sse);
publishers always use WebSocket. Targets must be loopback addresses unless
--allow-remote. On Linux, connections to an IPv4 loopback --url (or
localhost) come from 127.0.0.1 to 127.0.0.254 in turn, so a node's limit on
connections per client address (1000 by default) applies to each source
address; elsewhere they share one address, and the node's limit must be above
--conns plus --rooms.`

func loadtestCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newEnvFlags("loadtest", loadtestSummary, getenv, stdout)
	fs.example = "url"
	var cfg loadtest.Config
	fs.StringVar(&cfg.URL, "url", "ws://127.0.0.1:8080/v1/ws", "the node's WebSocket endpoint")
	fs.StringVar(&cfg.PublishURL, "publish-url", "", "fanout: the WebSocket endpoint the publishers use, another node of the same cluster, to measure delivery between nodes (default --url)")
	fs.StringVar(&cfg.MetricsURL, "metrics", "", "the node's metrics endpoint, such as http://127.0.0.1:9090/metrics, for memory per connection")
	fs.StringVar(&cfg.Token, "token", "", "JWT for every client (a node in dev mode needs none)")
	fs.StringVar(&cfg.Scenario, "scenario", "fanout", "idle, fanout or rooms")
	fs.StringVar(&cfg.Transport, "transport", "ws", "ws or sse: how the subscribers connect")
	fs.IntVar(&cfg.Conns, "conns", 1000, "subscriber connections")
	fs.IntVar(&cfg.Rooms, "rooms", 10, "rooms the subscribers are spread over (fanout adds a publisher connection per room)")
	fs.Float64Var(&cfg.Rate, "rate", 10, "publishes per second into each room (fanout), or by each subscriber (rooms; a node allows 50 a session by default)")
	fs.IntVar(&cfg.Size, "size", 64, "bytes per published message")
	fs.DurationVar(&cfg.Duration, "duration", 10e9, "how long the scenario runs once connected (at most 10m)")
	fs.IntVar(&cfg.Ramp, "ramp", 2000, "connections opened per second")
	fs.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.parse(args); err != nil {
		return err
	}
	var errs []error
	if cfg.Scenario != "idle" && cfg.Scenario != "fanout" && cfg.Scenario != "rooms" {
		errs = append(errs, fs.badValue("scenario", "want idle, fanout or rooms"))
	}
	if cfg.Transport != "ws" && cfg.Transport != "sse" {
		errs = append(errs, fs.badValue("transport", "want ws or sse"))
	}
	for name, v := range map[string]int{"conns": cfg.Conns, "rooms": cfg.Rooms, "size": cfg.Size, "ramp": cfg.Ramp} {
		if v <= 0 {
			errs = append(errs, fs.badValue(name, "must be positive"))
		}
	}
	if cfg.Ramp > 1_000_000 {
		errs = append(errs, fs.badValue("ramp", "must be at most 1000000"))
	}
	if !(cfg.Rate > 0 && cfg.Rate <= 1_000_000) {
		errs = append(errs, fs.badValue("rate", "must be a number above 0 and at most 1000000"))
	}
	if cfg.Duration <= 0 || cfg.Duration > 10*time.Minute {
		errs = append(errs, fs.badValue("duration", "must be above 0 and at most 10m"))
	}
	if err := fs.errors(errs); err != nil {
		return err
	}
	cfg.Progress = stderr
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprint(stdout, rep)
	return nil
}
