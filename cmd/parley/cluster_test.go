package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout/redistest"
	"github.com/parley-rt/parley/gateway/client"
)

// The tests in this file run nodes as separate `parley serve` processes on
// one real redis-server, as a cluster runs: they publish through some nodes,
// subscribe through others, and kill nodes and Redis with SIGKILL.

// clusterAPIKey is the backends' key of every test node.
const clusterAPIKey = "cluster-test-key"

// clusterBinary is the parley binary the cluster tests run, built once in
// dir, which TestMain removes.
var clusterBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func parleyBinary(t *testing.T) string {
	t.Helper()
	clusterBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "parley-cluster-test")
		if err != nil {
			clusterBinary.err = err
			return
		}
		clusterBinary.dir, clusterBinary.path = dir, filepath.Join(dir, "parley")
		out, err := exec.Command("go", "build", "-o", clusterBinary.path, ".").CombinedOutput()
		if err != nil {
			clusterBinary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if clusterBinary.err != nil {
		t.Fatal(clusterBinary.err)
	}
	return clusterBinary.path
}

// clusterNode is one `parley serve --redis` process.
type clusterNode struct {
	id     string
	base   string // http://127.0.0.1:port
	ws     string // ws://127.0.0.1:port/v1/ws
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *syncBuffer
}

// startClusterNode starts a node on Redis at url; extra flags follow the
// test defaults. It waits until the node is ready (connected to Redis).
func startClusterNode(t *testing.T, url, id string, extra ...string) *clusterNode {
	t.Helper()
	args := append([]string{"serve",
		"--addr", "127.0.0.1:0", "--admin-addr", "off", "--turn-addr", "off",
		"--node-id", id, "--redis", url, "--api-key", clusterAPIKey,
		"--presence-ttl", "2s", "--drain", "500ms", "--publish-rate", "100000",
	}, extra...)
	var out syncBuffer
	n := &clusterNode{id: id, logs: &syncBuffer{}, exited: make(chan struct{})}
	n.cmd = exec.Command(parleyBinary(t), args...)
	n.cmd.Stdout, n.cmd.Stderr = &out, n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(func() {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			n.cmd.Process.Kill()
			<-n.exited
		}
		if t.Failed() {
			t.Logf("node %s logs:\n%s", id, n.logs.String())
		}
	})
	n.base = waitListening(t, &out)
	n.ws = "ws" + strings.TrimPrefix(n.base, "http") + "/v1/ws"
	waitUntil(t, 20*time.Second, "node "+id+" ready", func() bool { return n.ready() })
	return n
}

// kill ends the node with SIGKILL, as a crash would.
func (n *clusterNode) kill() {
	n.cmd.Process.Kill()
	<-n.exited
}

// ready reports whether /readyz says 200.
func (n *clusterNode) ready() bool {
	resp, err := http.Get(n.base + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// publishResult is the HTTP API's answer to a publish.
type publishResult struct {
	Epoch     string `json:"epoch"`
	Offset    uint64 `json:"offset"`
	Duplicate bool   `json:"duplicate"`
}

// publish publishes data to room through the node's HTTP API.
func (n *clusterNode) publish(room, data, key string) (publishResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", n.base+"/v1/rooms/"+room+"/messages", strings.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+clusterAPIKey)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return publishResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return publishResult{}, fmt.Errorf("publish: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var r publishResult
	return r, json.Unmarshal(b, &r)
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subscriber is a Go client that records one room's messages and the
// connection events it sees.
type subscriber struct {
	c *client.Client

	mu       sync.Mutex
	msgs     []client.Message
	lost     []client.Position
	presence []client.Presence
	drops    int // EventDisconnected
	done     chan struct{}
}

func subscribe(t *testing.T, room string, presence bool, urls ...string) *subscriber {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{
		URL: urls[0], URLs: urls[1:], MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		EventBuffer: 8192,
	})
	if err != nil {
		t.Fatalf("Dial %s: %v", urls[0], err)
	}
	s := &subscriber{c: c, done: make(chan struct{})}
	go s.read()
	t.Cleanup(func() {
		c.Close()
		<-s.done
	})
	if _, err := c.Subscribe(ctx, room, client.SubscribeOptions{Presence: presence}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return s
}

func (s *subscriber) read() {
	defer close(s.done)
	for ev := range s.c.Events() {
		s.mu.Lock()
		switch ev.Kind {
		case client.EventMessage:
			s.msgs = append(s.msgs, ev.Message)
		case client.EventLost:
			s.lost = append(s.lost, ev.Position)
		case client.EventPresence:
			s.presence = append(s.presence, ev.Presence)
		case client.EventDisconnected:
			s.drops++
		}
		s.mu.Unlock()
	}
}

func (s *subscriber) messages() []client.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

func (s *subscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// checkSequence reports how msgs differ from offsets 1..n of one epoch: a
// missing, repeated or reordered offset is a failure.
func checkSequence(msgs []client.Message, n int) error {
	if len(msgs) != n {
		return fmt.Errorf("got %d messages, want %d", len(msgs), n)
	}
	for i, m := range msgs {
		if m.Offset != uint64(i+1) || m.Epoch != msgs[0].Epoch {
			return fmt.Errorf("message #%d is offset %d of epoch %s, want offset %d of epoch %s", i, m.Offset, m.Epoch, i+1, msgs[0].Epoch)
		}
	}
	return nil
}

// TestClusterOrder: three nodes on one Redis, subscribers on all three, and
// 1,000 messages published through all three at once: every subscriber gets
// all of them, in one identical order, each once.
func TestClusterOrder(t *testing.T) {
	testClusterOrder(t, redistest.Start(t).URL())
}

// testClusterOrder is TestClusterOrder's body on the Redis at url.
func testClusterOrder(t *testing.T, url string) {
	nodes := []*clusterNode{
		startClusterNode(t, url, "n1"),
		startClusterNode(t, url, "n2"),
		startClusterNode(t, url, "n3"),
	}
	const room, total, perNode = "order", 1000, 3
	var subs []*subscriber
	for _, n := range nodes {
		for range perNode {
			subs = append(subs, subscribe(t, room, false, n.ws))
		}
	}
	// Three publishers, one per node, interleave: the order is the one
	// Redis gives, the same on every node.
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i, n := range nodes {
		wg.Go(func() {
			for j := i; j < total; j += len(nodes) {
				if _, err := n.publish(room, fmt.Sprintf(`{"n":%d}`, j), ""); err != nil {
					t.Errorf("publish through %s: %v", n.id, err)
					failed.Add(1)
					return
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		return
	}
	for _, s := range subs {
		waitUntil(t, 30*time.Second, "every message on every subscriber", func() bool { return s.count() >= total })
	}
	first := subs[0].messages()
	if err := checkSequence(first, total); err != nil {
		t.Fatalf("subscriber 0: %v", err)
	}
	for i, s := range subs[1:] {
		got := s.messages()
		if err := checkSequence(got, total); err != nil {
			t.Errorf("subscriber %d: %v", i+1, err)
			continue
		}
		for j := range got {
			if !bytes.Equal(got[j].Data, first[j].Data) {
				t.Errorf("subscriber %d: message %d is %s, subscriber 0 has %s", i+1, j+1, got[j].Data, first[j].Data)
				break
			}
		}
	}
}

// TestClusterKillNode: the node that holds 100 subscribers is killed with
// SIGKILL while messages flow. Every subscriber reconnects to a surviving
// node and ends with the complete sequence.
func TestClusterKillNode(t *testing.T) {
	testClusterKillNode(t, redistest.Start(t).URL())
}

// testClusterKillNode is TestClusterKillNode's body on the Redis at url.
func testClusterKillNode(t *testing.T, url string) {
	victim := startClusterNode(t, url, "victim")
	a := startClusterNode(t, url, "a")
	b := startClusterNode(t, url, "b")
	const room, clients, total = "kill", 100, 600
	subs := make([]*subscriber, clients)
	for i := range subs {
		subs[i] = subscribe(t, room, false, victim.ws, a.ws, b.ws)
	}
	var published atomic.Int64
	pubDone := make(chan error, 1)
	go func() {
		for i := range total {
			if _, err := a.publish(room, fmt.Sprintf(`{"n":%d}`, i), ""); err != nil {
				pubDone <- err
				return
			}
			published.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
		pubDone <- nil
	}()
	waitUntil(t, 20*time.Second, "a third of the messages", func() bool { return published.Load() >= total/3 })
	victim.kill()
	if err := <-pubDone; err != nil {
		t.Fatalf("publishing through a surviving node: %v", err)
	}
	for i, s := range subs {
		waitUntil(t, 30*time.Second, fmt.Sprintf("subscriber %d to catch up", i), func() bool { return s.count() >= total })
		if err := checkSequence(s.messages(), total); err != nil {
			t.Errorf("subscriber %d: %v", i, err)
		}
		if node := s.c.Welcome().Node; node == "victim" {
			t.Errorf("subscriber %d still on the killed node", i)
		}
	}
}

// TestClusterIdempotency: one key published through two nodes is one message.
func TestClusterIdempotency(t *testing.T) {
	redis := redistest.Start(t)
	a := startClusterNode(t, redis.URL(), "a")
	b := startClusterNode(t, redis.URL(), "b")
	const room = "idem"
	s := subscribe(t, room, false, b.ws)
	first, err := a.publish(room, `{"n":1}`, "order-42")
	if err != nil {
		t.Fatal(err)
	}
	second, err := b.publish(room, `{"n":1}`, "order-42")
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate || second.Offset != first.Offset || second.Epoch != first.Epoch {
		t.Errorf("got %+v then %+v, want the second a duplicate at the first's position", first, second)
	}
	if _, err := a.publish(room, `{"n":2}`, ""); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "two messages", func() bool { return s.count() >= 2 })
	time.Sleep(100 * time.Millisecond)
	if err := checkSequence(s.messages(), 2); err != nil {
		t.Error(err)
	}
}

// TestClusterPresence: members on two nodes see each other, and the members
// of a node killed with SIGKILL leave everywhere within the presence TTL.
func TestClusterPresence(t *testing.T) {
	redis := redistest.Start(t)
	victim := startClusterNode(t, redis.URL(), "victim")
	survivor := startClusterNode(t, redis.URL(), "survivor")
	const room = "presence"
	gone := subscribe(t, room, true, victim.ws)
	stays := subscribe(t, room, true, survivor.ws)
	goneSession := gone.c.Welcome().Session

	members := func() []string {
		page, err := stays.c.Presence(context.Background(), room, client.PresenceOptions{})
		if err != nil {
			t.Fatalf("Presence: %v", err)
		}
		var sessions []string
		for _, m := range page.Members {
			sessions = append(sessions, m.Session)
		}
		slices.Sort(sessions)
		return sessions
	}
	want := []string{goneSession, stays.c.Welcome().Session}
	slices.Sort(want)
	if got := members(); !slices.Equal(got, want) {
		t.Fatalf("members seen on the survivor: got %v, want %v", got, want)
	}
	waitUntil(t, 10*time.Second, "the victim's member to see the survivor's join", func() bool {
		gone.mu.Lock()
		defer gone.mu.Unlock()
		return len(gone.presence) > 0 && gone.presence[0].Event == "join"
	})

	killed := time.Now()
	victim.kill()
	const ttl = 2 * time.Second // --presence-ttl of the test nodes
	waitUntil(t, 3*ttl, "the killed node's member to leave", func() bool {
		stays.mu.Lock()
		defer stays.mu.Unlock()
		return slices.ContainsFunc(stays.presence, func(p client.Presence) bool {
			return p.Event == "leave" && p.Session == goneSession
		})
	})
	took := time.Since(killed)
	t.Logf("the killed node's member left %s after the kill (TTL %s)", took.Round(time.Millisecond), ttl)
	if took > ttl+time.Second {
		t.Errorf("the leave came %s after the kill, want within the TTL (%s) and a renewal's slack", took, ttl)
	}
	if got := members(); !slices.Equal(got, []string{stays.c.Welcome().Session}) {
		t.Errorf("members after the kill: got %v, want only the survivor's", got)
	}
}

// TestClusterRedisRestartedEmpty: Redis comes back without its data. Every
// room starts a new epoch, and subscribers, told to resume, learn that the
// room could not be recovered (recovered: false, the new epoch), then get the
// messages that follow.
func TestClusterRedisRestartedEmpty(t *testing.T) {
	redis := redistest.Start(t)
	a := startClusterNode(t, redis.URL(), "a")
	b := startClusterNode(t, redis.URL(), "b")
	const room = "restart"
	s := subscribe(t, room, false, b.ws, a.ws)
	var before publishResult
	for i := range 10 {
		var err error
		if before, err = a.publish(room, fmt.Sprintf(`{"n":%d}`, i), ""); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 10*time.Second, "ten messages", func() bool { return s.count() >= 10 })

	redis.Restart()
	waitUntil(t, 20*time.Second, "both nodes ready again", func() bool { return a.ready() && b.ready() })
	var after publishResult
	waitUntil(t, 10*time.Second, "a publish in the new epoch", func() bool {
		var err error
		after, err = a.publish(room, `{"n":"new"}`, "")
		return err == nil
	})
	if after.Epoch == before.Epoch || after.Offset != 1 {
		t.Fatalf("after the restart: got %+v, want offset 1 of a new epoch (was %s)", after, before.Epoch)
	}
	waitUntil(t, 20*time.Second, "the subscriber to learn of the loss", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.lost) > 0
	})
	s.mu.Lock()
	lost := s.lost[0]
	s.mu.Unlock()
	if lost.Epoch == before.Epoch {
		t.Errorf("EventLost at %+v, want the new epoch", lost)
	}
	// From the position the loss gave, the subscriber is live again.
	next, err := a.publish(room, `{"n":"next"}`, "")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the new epoch's next message", func() bool {
		msgs := s.messages()
		last := msgs[len(msgs)-1]
		return last.Epoch == next.Epoch && last.Offset == next.Offset
	})
}

// TestClusterRedisDown: Redis is killed for 5 s while a backend keeps
// publishing through one node, retrying with its idempotency keys. No node
// hangs a publish or drops a client; /readyz goes to 503 and back; and once
// Redis is back, subscribers on both nodes have every message, in order,
// each once (the other node fills its gap from history).
func TestClusterRedisDown(t *testing.T) {
	redis := redistest.StartPersistent(t)
	a := startClusterNode(t, redis.URL(), "a")
	b := startClusterNode(t, redis.URL(), "b")
	const room, total = "outage", 300
	local := subscribe(t, room, false, a.ws)
	remote := subscribe(t, room, false, b.ws)

	var published atomic.Int64
	var slowest atomic.Int64 // nanoseconds of the longest publish call
	var failures atomic.Int64
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := range total {
			for {
				start := time.Now()
				_, err := a.publish(room, fmt.Sprintf(`{"n":%d}`, i), fmt.Sprintf("k%d", i))
				if d := int64(time.Since(start)); d > slowest.Load() {
					slowest.Store(d)
				}
				if err == nil {
					break
				}
				failures.Add(1)
				time.Sleep(50 * time.Millisecond)
			}
			published.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()

	waitUntil(t, 20*time.Second, "50 messages", func() bool { return published.Load() >= 50 })
	redis.Kill()
	down := time.Now()
	waitUntil(t, 5*time.Second, "both nodes to say not ready", func() bool { return !a.ready() && !b.ready() })
	time.Sleep(5*time.Second - time.Since(down))
	redis.RestartKeepingData()
	waitUntil(t, 20*time.Second, "both nodes ready again", func() bool { return a.ready() && b.ready() })
	<-pubDone

	for name, s := range map[string]*subscriber{"local": local, "remote": remote} {
		waitUntil(t, 20*time.Second, name+" subscriber to have every message", func() bool { return s.count() >= total })
		if err := checkSequence(s.messages(), total); err != nil {
			t.Errorf("%s subscriber: %v", name, err)
		}
		s.mu.Lock()
		drops := s.drops
		s.mu.Unlock()
		if drops != 0 {
			t.Errorf("%s subscriber was disconnected %d times, want 0: a Redis outage must not drop clients", name, drops)
		}
	}
	if failures.Load() == 0 {
		t.Errorf("no publish failed while Redis was down")
	}
	if d := time.Duration(slowest.Load()); d > 4*time.Second {
		t.Errorf("the slowest publish took %s: a publish must fail fast, not hang, while Redis is away", d)
	}
	t.Logf("%d publishes failed during the outage; the slowest call took %s", failures.Load(), time.Duration(slowest.Load()).Round(time.Millisecond))
}
