package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// dashboardFigures is what dashboard-load.mjs reads off a dashboard page.
type dashboardFigures struct {
	State          string   `json:"state"`
	Notice         string   `json:"notice"`
	Connections    *float64 `json:"connections"`
	WebSocket      *float64 `json:"websocket"`
	OutRate        *float64 `json:"outRate"`
	InRate         *float64 `json:"inRate"`
	OutTotal       *float64 `json:"outTotal"`
	P50            *float64 `json:"p50"`
	P99            *float64 `json:"p99"`
	Rooms          *float64 `json:"rooms"`
	Allocations    *float64 `json:"allocations"`
	RelayTotal     *float64 `json:"relayTotal"`
	ChartPoints    int      `json:"chartPoints"`
	CanvasWidth    int      `json:"canvasWidth"`
	CanvasCSSWidth int      `json:"canvasCSSWidth"`
	PixelRatio     float64  `json:"pixelRatio"`
	Overflow       bool     `json:"overflow"`
	NodeLine       string   `json:"nodeLine"`
}

type dashboardResult struct {
	pageLog
	Idle        dashboardFigures `json:"idle"`
	KeyPrompt   string           `json:"keyPrompt"`
	LockedState string           `json:"lockedState"`
	WrongKey    string           `json:"wrongKey"`
	KeyStored   bool             `json:"keyStored"`
	NoKey       struct {
		dashboardFigures
		KeyFormShown bool `json:"keyFormShown"`
	} `json:"noKey"`
	Desktop     dashboardFigures `json:"desktop"`
	Phone       dashboardFigures `json:"phone"`
	PausedState string           `json:"pausedState"`
	WhileHidden int              `json:"whileHidden"`
	Draining    dashboardFigures `json:"draining"`
	Gone        dashboardFigures `json:"gone"`
	Shots       []string         `json:"shots"`
}

// loadRun is one `parley loadtest` process that a control request started.
type loadRun struct {
	name string
	cmd  *exec.Cmd
	out  bytes.Buffer
	errs bytes.Buffer
	done chan error
}

// TestDashboardBrowser opens the node dashboard of a real `parley serve`
// twice: on the admin listener at desktop size, which needs no key, and on
// the public listener at phone size, which asks for the API key, refuses a
// wrong one and takes the right one. While `parley loadtest` runs a small
// fanout (and a TURN relay) against the node, both pages show non-zero live
// figures: connections, messages out a second, delivery latency
// percentiles, relayed bytes. A hidden tab stops asking. Then the node
// drains with clients on it and stops, and the page says each in a sentence.
func TestDashboardBrowser(t *testing.T) {
	browserTools(t)
	const apiKey = "dashboard-test-key"
	// A drain window long enough for the page to show it: the node closes
	// its clients at random times within it, and stops after the last.
	p := startParley(t, "dash-node", "--api-key", apiKey, "--drain", "4s")
	noKey := startParley(t, "dash-no-key", "--admin-addr", "off", "--turn-addr", "off")
	bin := parleyBinary(t)

	ctx, cancel := context.WithCancel(context.Background())
	var streams sync.WaitGroup
	tr := &http.Transport{}
	client := &http.Client{Transport: tr}
	t.Cleanup(func() {
		cancel()
		streams.Wait()
		tr.CloseIdleConnections()
	})

	var mu sync.Mutex
	var runs []*loadRun
	mux := http.NewServeMux()
	// loadtest starts a bounded fanout (40 subscribers in 4 rooms, 20
	// messages a second into each) and a TURN relay between two pairs of
	// allocations, both for 10 s against the node's loopback URL.
	mux.HandleFunc("POST /loadtest", func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		for _, args := range [][]string{
			{"--scenario", "fanout", "--conns", "40", "--rooms", "4", "--rate", "20"},
			{"--scenario", "turn", "--allocations", "4", "--rate", "20", "--packet-rate", "50", "--size", "500"},
		} {
			lr := &loadRun{name: args[1], done: make(chan error, 1)}
			all := append([]string{"loadtest", "--url", p.ws(), "--duration", "10s", "--json"}, args...)
			lr.cmd = exec.CommandContext(ctx, bin, all...)
			lr.cmd.Stdout, lr.cmd.Stderr = &lr.out, &lr.errs
			if err := lr.cmd.Start(); err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			go func() { lr.done <- lr.cmd.Wait() }()
			runs = append(runs, lr)
		}
		rw.Write([]byte("{}"))
	})
	// loadtest-wait waits for the runs to end and answers what each saw.
	mux.HandleFunc("POST /loadtest-wait", func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		seen := map[string]any{}
		for _, lr := range runs {
			select {
			case err := <-lr.done:
				if err != nil {
					http.Error(rw, fmt.Sprintf("loadtest %s: %v\n%s", lr.name, err, lr.errs.String()), http.StatusInternalServerError)
					return
				}
			case <-time.After(60 * time.Second):
				http.Error(rw, "loadtest "+lr.name+" did not end within 60 s", http.StatusInternalServerError)
				return
			}
			var rep map[string]any
			if err := json.Unmarshal(lr.out.Bytes(), &rep); err != nil {
				http.Error(rw, fmt.Sprintf("loadtest %s printed %q: %v", lr.name, lr.out.String(), err), http.StatusInternalServerError)
				return
			}
			if turn, ok := rep["turn"].(map[string]any); ok {
				seen[lr.name] = map[string]any{"allocations_made": turn["allocations_made"], "packets_received": turn["packets_received"]}
			} else {
				seen[lr.name] = map[string]any{"opened": rep["opened"], "delivered": rep["delivered"]}
			}
		}
		json.NewEncoder(rw).Encode(seen)
	})
	// drain opens ten SSE streams, so that the node has clients to drain
	// (the last of them closed after 1.5 s of the window but for a chance
	// of 0.375^10), and sends it SIGTERM.
	mux.HandleFunc("POST /drain", func(rw http.ResponseWriter, r *http.Request) {
		for i := range 10 {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/sse?rooms=drain-%d", p.base, i), nil)
			resp, err := client.Do(req)
			if err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
			streams.Add(1)
			go func() {
				defer streams.Done()
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}()
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		rw.Write([]byte("{}"))
	})
	control := httptest.NewServer(mux)
	t.Cleanup(control.Close)

	var res dashboardResult
	runScript(t, []string{
		"PARLEY_URL=" + p.base,
		"PARLEY_ADMIN=" + p.admin,
		"PARLEY_API_KEY=" + apiKey,
		"PARLEY_CONTROL=" + control.URL,
		"PARLEY_NOKEY_URL=" + noKey.base,
	}, "dashboard-load.mjs", &res)
	for _, e := range res.ConsoleErrors {
		// The browser reports the refused requests, and those to the
		// stopped node, itself.
		if strings.Contains(e, "status of 401") || strings.Contains(e, "status of 404") || strings.Contains(e, "net::ERR_") {
			t.Logf("browser console: %s", e)
			continue
		}
		t.Errorf("console error: %s", e)
	}
	for _, e := range res.PageErrors {
		t.Errorf("uncaught exception in a page: %s", e)
	}

	if got := shownValue(res.Idle.Connections); got != 0 || !strings.Contains(res.Idle.NodeLine, "dash-node") {
		t.Errorf("before the load the admin page shows %v connections and %q; want 0, naming dash-node", got, res.Idle.NodeLine)
	}
	if res.LockedState != "locked" || !strings.Contains(res.KeyPrompt, "API key") {
		t.Errorf("without a key the public page is %q and says %q; want locked, asking for the API key", res.LockedState, res.KeyPrompt)
	}
	if !strings.Contains(res.WrongKey, "refused that key") {
		t.Errorf("after a wrong key the page says %q, want that the node refused it", res.WrongKey)
	}
	if !res.KeyStored {
		t.Errorf("the right key is not in sessionStorage")
	}
	if nk := res.NoKey; nk.State != "locked" || !strings.Contains(nk.Notice, "Open the dashboard on its admin listener") || nk.KeyFormShown {
		t.Errorf("a node without an API key: state %q, notice %q, key form shown %v; want locked, pointing to the admin listener, no key form", nk.State, nk.Notice, nk.KeyFormShown)
	}
	for _, pg := range []struct {
		name string
		f    dashboardFigures
	}{{"admin, desktop", res.Desktop}, {"public, phone", res.Phone}} {
		f := pg.f
		for _, fig := range []struct {
			what string
			v    *float64
		}{
			{"connections", f.Connections}, {"messages out a second", f.OutRate}, {"messages in a second", f.InRate},
			{"delivery latency p50", f.P50}, {"delivery latency p99", f.P99}, {"rooms", f.Rooms}, {"relayed bytes", f.RelayTotal},
		} {
			if shownValue(fig.v) <= 0 {
				t.Errorf("%s page under load: %s %v, want above zero", pg.name, fig.what, fig.v)
			}
		}
		if f.State != "live" || f.Notice != "" {
			t.Errorf("%s page under load: state %q, notice %q; want live and no notice", pg.name, f.State, f.Notice)
		}
		if f.Overflow {
			t.Errorf("%s page is wider than its viewport", pg.name)
		}
		// The charts are drawn at the screen's resolution, not stretched.
		if want := int(float64(f.CanvasCSSWidth)*f.PixelRatio + 0.5); f.CanvasWidth != want {
			t.Errorf("%s page: a chart %d CSS pixels wide is %d pixels at device pixel ratio %v, want %d", pg.name, f.CanvasCSSWidth, f.CanvasWidth, f.PixelRatio, want)
		}
	}
	if res.Phone.PixelRatio != 3 {
		t.Errorf("phone page device pixel ratio %v, want 3", res.Phone.PixelRatio)
	}
	if res.PausedState != "paused" || res.WhileHidden != 0 {
		t.Errorf("hidden tab: state %q and %d requests in 2.5 s; want paused and none", res.PausedState, res.WhileHidden)
	}
	if !strings.Contains(res.Draining.Notice, "This node is draining") {
		t.Errorf("during the drain the page says %q, want that the node is draining", res.Draining.Notice)
	}
	if res.Gone.State != "down" || !strings.Contains(res.Gone.Notice, "Cannot reach the node") {
		t.Errorf("after the node stopped: state %q, notice %q; want down, saying the node cannot be reached", res.Gone.State, res.Gone.Notice)
	}
	dir := os.Getenv("PARLEY_SCREENSHOT_DIR")
	if dir == "" {
		dir = screenshotDir(t)
	}
	for _, s := range res.Shots {
		t.Logf("screenshot: %s", filepath.Join(dir, s))
	}
}

// shownValue is a figure a page showed, or -1 for none.
func shownValue(v *float64) float64 {
	if v == nil {
		return -1
	}
	return *v
}
