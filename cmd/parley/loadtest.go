package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/parley-rt/parley/loadtest"
)

const loadtestSummary = `Load a node with protocol clients for a bounded time and report what they saw.
Scenarios: idle (hold connections; with --metrics, the node's memory per
connection) and fanout (one publisher per room at --rate; delivery latency
percentiles and throughput). Targets must be loopback addresses unless
--allow-remote. Raise the node's --max-conns-per-ip above --conns.`

func loadtestCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newEnvFlags("loadtest", loadtestSummary, getenv, stderr)
	var cfg loadtest.Config
	fs.StringVar(&cfg.URL, "url", "ws://127.0.0.1:8080/v1/ws", "the node's WebSocket endpoint")
	fs.StringVar(&cfg.MetricsURL, "metrics", "", "the node's metrics endpoint, such as http://127.0.0.1:9090/metrics, for memory per connection")
	fs.StringVar(&cfg.Token, "token", "", "JWT for every client (dev mode needs none)")
	fs.StringVar(&cfg.Scenario, "scenario", "fanout", "idle or fanout")
	fs.IntVar(&cfg.Conns, "conns", 1000, "subscriber connections")
	fs.IntVar(&cfg.Rooms, "rooms", 10, "rooms the subscribers are spread over")
	fs.Float64Var(&cfg.Rate, "rate", 10, "publishes per second into each room (fanout)")
	fs.IntVar(&cfg.Size, "size", 64, "bytes per published message")
	fs.DurationVar(&cfg.Duration, "duration", 10e9, "how long the scenario runs once connected (at most 10m)")
	fs.IntVar(&cfg.Ramp, "ramp", 2000, "connections opened per second")
	fs.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.parse(args); err != nil {
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
