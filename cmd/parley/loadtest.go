package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/parley-rt/parley/loadtest"
)

const loadtestSummary = `Load nodes with protocol clients for a bounded time and report what they saw.

Scenarios:
  connect  open --conns connections at --ramp a second and hold them: the
           connect rate, failures and, with --metrics, the node's memory per
           connection ("idle" is another name for it)
  fanout   --conns subscribers over --rooms rooms, one publisher per room at
           --rate: delivery latency p50 to p99.9 and max, deliveries a second,
           gaps, duplicates and lost-recovery events (a room the client could
           not recover from history after falling behind or reconnecting),
           and with --metrics the node's CPU per million deliveries
  rooms    as fanout, but every subscriber publishes into its room at --rate
           over its own connection: many small chatty rooms (WebSocket only)
  resume   as fanout, and halfway through --drop of the connections are cut
           at once: the time until each has caught up, with no loss
           (WebSocket only)
  calls    --calls calls between pion peers, set up through signaling at
           --rate a second (with --relay, through the node's TURN relay only):
           setup time percentiles and failures
  turn     --allocations TURN allocations at --rate a second, then pairs of
           them relay --size-byte packets to each other at --packet-rate: the
           allocation rate and time, and the relayed throughput and loss

Subscribers connect over WebSocket or, with --transport sse, to the node's SSE
endpoint (--url with /ws replaced by /sse); publishers always use WebSocket.
--url may be repeated, one per node of a cluster: subscribers are spread over
the nodes, publishers use the first, and the report gives the latency of each
node's subscribers. Targets must be loopback addresses unless --allow-remote.
On Linux, connections to an IPv4 loopback --url (or localhost) come from
127.0.0.1 to 127.0.0.254 in turn, so a node's limit on connections per client
address (1000 by default) applies to each source address; elsewhere they
share one address, and the node's limit must be above --conns plus --rooms.
Every run stops by itself: --duration is at most 10m.`

// listFlag is a flag that may be repeated, or given a comma-separated
// list; the first value given replaces the default, and the first on the
// command line replaces the environment's.
type listFlag struct {
	vals []string
	set  bool
}

// envApplied makes the next Set, from the command line, replace the values
// the environment gave.
func (l *listFlag) envApplied() { l.set = false }

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }

func (l *listFlag) Set(s string) error {
	if !l.set {
		l.vals, l.set = nil, true
	}
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			l.vals = append(l.vals, v)
		}
	}
	return nil
}

func loadtestCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newEnvFlags("loadtest", loadtestSummary, getenv, stdout)
	fs.example = "url"
	var cfg loadtest.Config
	urls := &listFlag{vals: []string{exampleURL}}
	metrics := &listFlag{}
	fs.Var(urls, "url", "the node's WebSocket endpoint; repeat it (or separate with commas) for the nodes of a cluster")
	fs.StringVar(&cfg.PublishURL, "publish-url", "", "fanout and resume: the WebSocket endpoint the publishers use (default the first --url)")
	fs.Var(metrics, "metrics", "the nodes' metrics endpoints, such as http://127.0.0.1:9090/metrics, for memory per connection and CPU per delivery; repeatable")
	fs.StringVar(&cfg.Token, "token", "", "JWT for every client (a node in dev mode needs none)")
	fs.StringVar(&cfg.Scenario, "scenario", "fanout", strings.Join(loadtest.Scenarios, ", ")+` ("idle" is connect)`)
	fs.StringVar(&cfg.Transport, "transport", "ws", "ws or sse: how the subscribers connect")
	fs.IntVar(&cfg.Conns, "conns", 1000, "subscriber connections")
	fs.IntVar(&cfg.Rooms, "rooms", 10, "rooms the subscribers are spread over (fanout and resume add a publisher connection per room)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "publishes a second into each room (fanout, resume; default 10), or by each subscriber (rooms; default 10; a node allows 50 a session), call setups a second (calls; default 5), allocations a second (turn; default 100)")
	fs.IntVar(&cfg.Size, "size", 0, "bytes per published message (default 64), or per relayed packet (turn; default 1000)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long the scenario runs once connected (at most 10m)")
	fs.IntVar(&cfg.Ramp, "ramp", 2000, "connections opened a second")
	fs.Float64Var(&cfg.Drop, "drop", 0.1, "resume: the share of the connections cut at once halfway through")
	fs.IntVar(&cfg.Calls, "calls", 20, "calls: how many calls to set up, two peers each")
	fs.BoolVar(&cfg.Relay, "relay", false, "calls: relay only, through the node's TURN server")
	fs.IntVar(&cfg.Allocations, "allocations", 100, "turn: how many allocations to make")
	fs.IntVar(&cfg.PacketRate, "packet-rate", 100, "turn: packets a second each pair of allocations relays each way")
	fs.BoolVar(&cfg.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	htmlFile := fs.String("html", "", "also write the report to this file as a self-contained HTML page, latency distributions plotted")
	if err := fs.parse(args); err != nil {
		return err
	}
	var errs []error
	if len(urls.vals) == 0 {
		errs = append(errs, fs.badValue("url", "want a WebSocket URL such as %s", exampleURL))
	} else {
		cfg.URL, cfg.URLs = urls.vals[0], urls.vals[1:]
	}
	cfg.Metrics = metrics.vals
	for _, v := range urls.vals {
		switch {
		case !hasScheme(v, "ws", "wss"):
			errs = append(errs, badListValue(fs, "url", v, "want a WebSocket URL such as %s", exampleURL))
		case !hasPath(v):
			errs = append(errs, badListValue(fs, "url", v, "want the node's WebSocket endpoint, with its path, such as %s", exampleURL))
		}
	}
	if n := len(metrics.vals); n > 0 && n != len(urls.vals) {
		errs = append(errs, fs.badFlag("metrics", "given for %d of %d nodes: memory per connection and CPU per delivery need every node's, one --metrics per --url", n, len(urls.vals)))
	}
	if v := cfg.PublishURL; v != "" && !hasScheme(v, "ws", "wss") {
		errs = append(errs, fs.badValue("publish-url", "want a WebSocket URL such as %s", exampleURL))
	}
	for _, v := range metrics.vals {
		if !hasScheme(v, "http", "https") {
			errs = append(errs, badListValue(fs, "metrics", v, "want an HTTP URL such as http://127.0.0.1:9090/metrics"))
		}
	}
	if cfg.Scenario == "idle" {
		cfg.Scenario = "connect"
	}
	if !slices.Contains(loadtest.Scenarios, cfg.Scenario) {
		errs = append(errs, fs.badValue("scenario", "want one of %s", strings.Join(loadtest.Scenarios, ", ")))
	}
	if cfg.Transport != "ws" && cfg.Transport != "sse" {
		errs = append(errs, fs.badValue("transport", "want ws or sse"))
	}
	// The bounds are loadtest.Config's: the run makes room for the
	// counts before it dials anything.
	for _, c := range []struct {
		name   string
		v, max int
	}{
		{"conns", cfg.Conns, loadtest.MaxConns},
		{"rooms", cfg.Rooms, loadtest.MaxRooms},
		{"ramp", cfg.Ramp, loadtest.MaxRate},
		{"calls", cfg.Calls, loadtest.MaxCalls},
		{"allocations", cfg.Allocations, loadtest.MaxAllocations},
		{"packet-rate", cfg.PacketRate, loadtest.MaxRate},
	} {
		if c.v <= 0 || c.v > c.max {
			errs = append(errs, fs.badValue(c.name, "must be positive and at most %d", c.max))
		}
	}
	if cfg.Size < 0 || cfg.Size > loadtest.MaxSize {
		errs = append(errs, fs.badValue("size", "must be positive and at most %d", loadtest.MaxSize))
	}
	if cfg.Rate != 0 && !(cfg.Rate >= loadtest.MinRate && cfg.Rate <= loadtest.MaxRate) {
		errs = append(errs, fs.badValue("rate", "must be at least %g and at most %d (0 means the scenario's default)", loadtest.MinRate, loadtest.MaxRate))
	}
	if !(cfg.Drop > 0 && cfg.Drop <= 1) {
		errs = append(errs, fs.badValue("drop", "must be above 0 and at most 1"))
	}
	if cfg.Duration <= 0 || cfg.Duration > loadtest.MaxDuration {
		errs = append(errs, fs.badValue("duration", "must be above 0 and at most %vm", loadtest.MaxDuration.Minutes()))
	}
	if err := fs.errors(errs); err != nil {
		return err
	}
	// The HTML page is written to a temporary file beside --html, made
	// before the run: a run of minutes should not end in a path that
	// cannot be written, and a run that fails leaves --html as it was.
	var page *os.File
	if *htmlFile != "" {
		f, err := createPage(*htmlFile)
		if err != nil {
			return err
		}
		defer func() {
			if page != nil {
				page.Close()
				os.Remove(page.Name())
			}
		}()
		page = f
	}
	cfg.Progress = stderr
	cfg.Bar = isTerminal(stderr, getenv)
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil {
		return err
	}
	// The report is printed first, so a page that cannot be written does
	// not lose the run.
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprint(stdout, rep)
	}
	if page != nil {
		if err := rep.WriteHTML(page); err != nil {
			return fmt.Errorf("--html %s: %w", *htmlFile, err)
		}
		if err := page.Close(); err != nil {
			return fmt.Errorf("--html %s: %w", *htmlFile, err)
		}
		if err := os.Rename(page.Name(), *htmlFile); err != nil {
			return fmt.Errorf("--html %s: %w", *htmlFile, err)
		}
		page = nil
	}
	return nil
}

// exampleURL is --url's default, and the example its errors give.
const exampleURL = "ws://127.0.0.1:8080/v1/ws"

// hasScheme reports whether v is a URL with one of schemes and a host.
// hasPath reports whether URL v names a path: a node's WebSocket endpoint is
// /v1/ws, and its root answers 200 to a handshake, which would read as a
// refusal.
func hasPath(v string) bool {
	u, err := url.Parse(v)
	return err == nil && u.Path != "" && u.Path != "/"
}

func hasScheme(v string, schemes ...string) bool {
	u, err := url.Parse(v)
	return err == nil && slices.Contains(schemes, u.Scheme) && u.Hostname() != ""
}

// badListValue reports v, one value of a list flag, that breaks a rule: in
// badValue's words when v is all the flag was set to, else naming v after
// the flag, since the setting as written may hold other values.
func badListValue(fs *envFlags, name, v, rule string, a ...any) error {
	if raw, ok := fs.raw[name]; ok && strings.TrimSpace(raw) == v {
		return fs.badValue(name, rule, a...)
	}
	return fs.badFlag(name, "%s: %s", quoteValue(v), fmt.Sprintf(rule, a...))
}

// createPage makes the temporary file the HTML page of --html path is
// written to, in path's directory so that it can be renamed over path.
func createPage(path string) (*os.File, error) {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("--html %s: is a directory", path)
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		// The temporary file's name would only puzzle: say what is wrong
		// with the directory.
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("--html %s: %w", path, err)
	}
	// CreateTemp makes the file readable by its owner only; the page is a
	// report to share, as os.Create would have made it.
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("--html %s: %w", path, err)
	}
	return f, nil
}

// isTerminal reports whether w is a terminal, where progress is drawn as a
// bar on one line.
func isTerminal(w io.Writer, getenv func(string) string) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && getenv("TERM") != "dumb"
}
