package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nodeMetric reads one unlabelled metric (or the first series of it) from a
// node's /metrics.
func nodeMetric(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		return v
	}
	t.Fatalf("no metric %s at %s", name, url)
	return 0
}

var adminRE = regexp.MustCompile(`metrics +http://(127\.0\.0\.1:\d+)/metrics`)

// TestPollerGoroutinesWithTenThousandIdle starts a node and holds 10,000
// idle, subscribed WebSocket connections and 5,000 SSE streams on it from
// `parley loadtest`, past a heartbeat cycle, and reads from the node's own
// metrics that its goroutines stay at the idle floor, not one or more per
// connection.
func TestPollerGoroutinesWithTenThousandIdle(t *testing.T) {
	if runtime.GOOS != "linux" {
		// CI runs on Linux: there the test must run, never skip.
		if os.Getenv("CI") == "true" {
			t.Fatal("the poller is Linux's epoll")
		}
		t.Skip("the poller is Linux's epoll")
	}
	const conns, streams = 10000, 5000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < conns+streams+1000 {
		lim.Cur = min(lim.Max, conns+streams+1000)
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		if lim.Cur < conns+streams+1000 {
			t.Fatalf("open files limited to %d: %d connections need more", lim.Cur, conns+streams)
		}
	}
	bin := parleyBinary(t)
	logs := &syncBuffer{}
	node := exec.Command(bin, "serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--turn-addr", "off",
		"--max-conns-per-ip", "20000", "--ping", "2s", "--log-level", "warn")
	node.Env = []string{"PATH=" + os.Getenv("PATH")}
	node.Stdout, node.Stderr = logs, logs
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		node.Process.Kill()
		node.Wait()
	})
	addr := strings.TrimPrefix(waitListening(t, logs), "http://")
	var admin string
	for deadline := time.Now().Add(10 * time.Second); admin == ""; time.Sleep(20 * time.Millisecond) {
		if m := adminRE.FindStringSubmatch(logs.String()); m != nil {
			admin = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no admin address in the node's log:\n%s", logs.String())
		}
	}
	metrics := "http://" + admin + "/metrics"
	floor := nodeMetric(t, metrics, "go_goroutines")
	heapFloor := liveHeap(t, admin)

	const (
		polledWS  = `parley_polled_sessions{transport="ws"}`
		polledSSE = `parley_polled_sessions{transport="sse"}`
	)
	loadOut := &syncBuffer{}
	for _, l := range []struct {
		transport string
		n         int
	}{{"ws", conns}, {"sse", streams}} {
		load := exec.Command(bin, "loadtest", "--url", "ws://"+addr+"/v1/ws", "--scenario", "idle", "--transport", l.transport,
			"--conns", strconv.Itoa(l.n), "--rooms", "100", "--duration", "30s", "--ramp", "5000")
		load.Env = []string{"PATH=" + os.Getenv("PATH")}
		load.Stdout, load.Stderr = loadOut, loadOut
		if err := load.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			load.Process.Kill()
			load.Wait()
		})
	}
	deadline := time.Now().Add(60 * time.Second)
	for nodeMetric(t, metrics, polledWS) < conns || nodeMetric(t, metrics, polledSSE) < streams {
		if time.Now().After(deadline) {
			t.Fatalf("not all %d connections and %d streams are in the poller after 60 s: %v and %v polled; loadtest said:\n%s",
				conns, streams, nodeMetric(t, metrics, polledWS), nodeMetric(t, metrics, polledSSE), loadOut.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// One heartbeat cycle (--ping 2s: a ping to every session, which each
	// WebSocket client answers with a frame that wakes a reader), and the
	// writers' linger after it.
	time.Sleep(5 * time.Second)
	goroutines := nodeMetric(t, metrics, "go_goroutines")
	perConn := (liveHeap(t, admin) - heapFloor) / (conns + streams)
	polled, polledStreams := nodeMetric(t, metrics, polledWS), nodeMetric(t, metrics, polledSSE)
	readers := nodeMetric(t, metrics, "parley_poll_readers")
	timeouts := nodeMetric(t, metrics, "parley_heartbeat_timeouts_total")
	t.Logf("%v connections and %v SSE streams in the poller: %v goroutines (%v with none), %v readers running, %v heartbeat timeouts; live heap %.1f KiB a connection",
		polled, polledStreams, goroutines, floor, readers, timeouts, perConn/1024)
	if polled != conns || polledStreams != streams || timeouts != 0 {
		t.Errorf("%v of %d connections and %v of %d streams polled, %v heartbeat timeouts; want all and none",
			polled, conns, polledStreams, streams, timeouts)
	}
	// O(the poller's readers), not O(connections): the floor, a few
	// readers and writers busy with a heartbeat at that moment.
	if goroutines > floor+200 {
		t.Errorf("%v goroutines with %d idle connections (%v with none), want no more than %v: a goroutine per connection?",
			goroutines, conns+streams, floor, floor+200)
	}
	// What an idle connection keeps alive: about 4.8 KiB on WebSocket and
	// 2.3 KiB on SSE (docs/BENCHMARKS.md). A session that kept net/http's
	// request and its 4 KiB buffers after the hijack would pass 8.
	if perConn > 8<<10 {
		t.Errorf("live heap %.1f KiB a connection, want at most 8: does a session keep net/http's buffers?", perConn/1024)
	}
}

// liveHeap collects garbage on the node (its heap profile with gc=1) and
// returns the bytes of its live heap.
func liveHeap(t *testing.T, admin string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/debug/pprof/heap?gc=1")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nodeMetric(t, "http://"+admin+"/metrics", "go_memstats_heap_alloc_bytes")
}
