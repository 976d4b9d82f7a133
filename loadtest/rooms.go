package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parley-rt/parley/gateway/client"
)

// publisher publishes into room number room over c.
type publisher struct {
	c    *client.Client
	room int
}

// payload is what publishers send: the send time, for latency.
type payload struct {
	Sent int64  `json:"sent"`
	Pad  string `json:"pad,omitempty"`
}

// maxDialing bounds the connections being opened at once; subscribeTimeout
// bounds an SDK client's subscribe.
const (
	maxDialing       = 256
	subscribeTimeout = 10 * time.Second
)

// maxInFlight bounds the publishes of one publisher waiting for their
// acks; publishTimeout bounds the wait for one.
const (
	maxInFlight    = 32
	publishTimeout = 10 * time.Second
)

// subscriber is one subscriber connection of the room scenarios.
type subscriber struct {
	conn io.Closer // a *client.Client or an *sseSub
	node int       // index into run.urls
	// raw is the WebSocket's TCP connection (resume), closed to drop it.
	raw atomic.Pointer[net.Conn]
	// dropped is when the resume scenario dropped the connection (Unix
	// nanoseconds; 0 before), reconnected when the client was connected
	// again after it.
	dropped, reconnected atomic.Int64
	recovered            atomic.Bool
	// lostAfterDrop is set when the client reported messages it could not
	// recover after the drop (EventLost).
	lostAfterDrop atomic.Bool
}

// roomsRun is the state the room scenarios (connect, fanout, rooms, resume)
// share between the goroutines reading their subscribers.
type roomsRun struct {
	delivered, gaps, dups, lost atomic.Int64
	latency                     *latencies
	byNode                      []*latencies
	recovery                    *latencies // resume: drop to recovery
	reconnect                   *latencies // resume: drop to reconnected
	recoveredN                  atomic.Int64
	recoveredLossy              atomic.Int64 // back live, but after an EventLost
}

// message counts a room message at offset with data, for subscriber s whose
// previous one was at last (0 for none); it returns offset.
func (rr *roomsRun) message(s *subscriber, last, offset uint64, data []byte) uint64 {
	if last != 0 && offset > last+1 {
		rr.gaps.Add(int64(offset - last - 1))
	}
	if offset <= last {
		rr.dups.Add(1)
		offset = last
	}
	rr.delivered.Add(1)
	if sent := sentAt(data); sent > 0 {
		d := time.Duration(time.Now().UnixNano() - sent)
		rr.latency.record(d)
		if len(rr.byNode) > 1 {
			rr.byNode[s.node].record(d)
		}
		// A dropped subscriber has recovered once it gets a message
		// published after it was connected again: everything before came
		// first, in order.
		if rc := s.reconnected.Load(); rc != 0 && sent >= rc && !s.recovered.Load() {
			s.recovered.Store(true)
			if s.lostAfterDrop.Load() {
				rr.recoveredLossy.Add(1)
			} else {
				rr.recovery.record(time.Duration(time.Now().UnixNano() - s.dropped.Load()))
				rr.recoveredN.Add(1)
			}
		}
	}
	return offset
}

// runRooms runs the scenarios of subscribers in rooms: connect, fanout,
// rooms and resume.
func runRooms(ctx context.Context, r *run) error {
	cfg, rep := r.cfg, r.rep
	rep.Conns, rep.Rooms = cfg.Conns, cfg.Rooms
	urls := r.urls()
	var endpoints []string // of SSE, by node
	if cfg.Transport == "sse" {
		for _, u := range urls {
			e, err := sseEndpoint(u)
			if err != nil {
				return err
			}
			endpoints = append(endpoints, e)
		}
	}
	// An SSE stream is one response that lasts the whole run.
	sseClient := *r.hc
	sseClient.Timeout = 0
	if len(cfg.Metrics) > 0 {
		rss, err := r.readMetric(ctx, "process_resident_memory_bytes")
		if err != nil {
			return err
		}
		rep.RSSBefore = int64(rss)
	}
	rr := &roomsRun{latency: newLatencies(), recovery: newLatencies(), reconnect: newLatencies()}
	for range urls {
		rr.byNode = append(rr.byNode, newLatencies())
	}
	perNode := make([]int, len(urls))

	// mu guards subs, members, pubs and perNode while connections open
	// from several goroutines.
	var mu sync.Mutex
	subs := make([]*subscriber, 0, cfg.Conns)
	// members counts the subscribers of each room; in rooms, each
	// subscriber publishes too.
	members := make([]int64, cfg.Rooms)
	var pubs []publisher
	defer func() {
		for _, s := range subs {
			s.conn.Close()
		}
	}()
	var readers sync.WaitGroup
	// A connection that could not be set up is counted; when none has
	// been and min(10, Conns) have failed, the run stops, saying why,
	// instead of measuring nothing for its whole duration.
	var (
		opened, connErrors atomic.Int64
		firstErr           error
		abort              error
	)
	connCtx, stopConnecting := context.WithCancel(ctx)
	defer stopConnecting()
	failed := func(err error) {
		n := connErrors.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
		if len(subs) == 0 && n >= int64(min(10, cfg.Conns)) && abort == nil {
			abort = fmt.Errorf("loadtest: no connection to %s succeeded (%d tried): %w", cfg.URL, n, firstErr)
			stopConnecting()
		}
	}
	// add records a subscriber whose subscription is acknowledged and starts
	// its reader.
	add := func(s *subscriber, ri int, c *client.Client, read func()) {
		mu.Lock()
		subs = append(subs, s)
		perNode[s.node]++
		members[ri]++
		if c != nil && cfg.Scenario == "rooms" {
			pubs = append(pubs, publisher{c, ri})
		}
		readers.Add(1)
		mu.Unlock()
		opened.Add(1)
		go func() {
			defer readers.Done()
			read()
		}()
	}
	// connect opens subscriber i's connection and subscribes its room.
	connect := func(i int) {
		ri := i % cfg.Rooms
		room := "load-" + strconv.Itoa(ri)
		s := &subscriber{node: i % len(urls)}
		switch {
		case cfg.Transport == "sse":
			st, err := dialSSE(ctx, &sseClient, endpoints[s.node], room, cfg.Token)
			if err != nil {
				failed(err)
				return
			}
			s.conn = st
			add(s, ri, nil, func() {
				var last uint64
				st.read(func(offset uint64, data []byte) { last = rr.message(s, last, offset, data) })
			})
		case cfg.Scenario == "connect" || cfg.Scenario == "fanout":
			// Subscribers that only read: the lean client, so that the
			// generator's share of the cores is as small as it can be.
			ws, err := dialWS(connCtx, r.hc, urls[s.node], room, cfg.Token)
			if err != nil {
				failed(err)
				return
			}
			s.conn = ws
			add(s, ri, nil, func() {
				var last uint64
				ws.read(func(offset uint64, data []byte) { last = rr.message(s, last, offset, data) })
			})
		default:
			opts := client.Options{URL: urls[s.node], Token: cfg.Token, EventBuffer: 16, HTTPClient: r.hc}
			if cfg.Scenario == "resume" {
				// The other nodes too, in turn, as an application would.
				for k := 1; k < len(urls); k++ {
					opts.URLs = append(opts.URLs, urls[(s.node+k)%len(urls)])
				}
				opts.HTTPClient = r.trackingClient(&s.raw)
			}
			c, err := client.Dial(connCtx, opts)
			if err != nil {
				failed(err)
				return
			}
			sctx, cancel := context.WithTimeout(connCtx, subscribeTimeout)
			_, err = c.Subscribe(sctx, room, client.SubscribeOptions{})
			cancel()
			if err != nil {
				c.Close()
				failed(err)
				return
			}
			s.conn = c
			add(s, ri, c, func() {
				var last uint64
				for e := range c.Events() {
					switch e.Kind {
					case client.EventMessage:
						last = rr.message(s, last, e.Message.Offset, e.Message.Data)
					case client.EventLost:
						rr.lost.Add(1)
						if s.dropped.Load() != 0 {
							s.lostAfterDrop.Store(true)
						}
					case client.EventConnected:
						if d := s.dropped.Load(); d != 0 && s.reconnected.Load() == 0 {
							now := time.Now().UnixNano()
							s.reconnected.Store(now)
							rr.reconnect.record(time.Duration(now - d))
						}
					}
				}
			})
		}
	}
	r.prog.begin("connecting", int64(cfg.Conns), opened.Load, func() string {
		if n := connErrors.Load(); n > 0 {
			return strconv.FormatInt(n, 10) + " failed"
		}
		return ""
	})
	start := time.Now()
	// Connections open at the ramp rate whatever one takes: each in a
	// goroutine of its own, at most maxDialing at once.
	dialing := make(chan struct{}, maxDialing)
	var connecting sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(max(1, cfg.Ramp)))
dial:
	for i := 0; i < cfg.Conns; i++ {
		select {
		case <-connCtx.Done():
			break dial
		case <-tick.C:
		}
		select {
		case <-connCtx.Done():
			break dial
		case dialing <- struct{}{}:
		}
		connecting.Add(1)
		go func() {
			defer connecting.Done()
			defer func() { <-dialing }()
			connect(i)
		}()
	}
	connecting.Wait()
	mu.Lock()
	rep.ConnectErrors = int(connErrors.Load())
	if firstErr != nil {
		rep.FirstError = firstErr.Error()
	}
	err := abort
	mu.Unlock()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		tick.Stop()
		return err
	}
	tick.Stop()
	rep.ConnectIn = time.Since(start)
	rep.Opened = len(subs)
	if rep.ConnectIn > 0 {
		rep.ConnectRate = float64(len(subs)) / rep.ConnectIn.Seconds()
	}
	r.prog.end()

	// published counts publishes the node acknowledged; pubErrors those it
	// refused or did not answer in time, skipped the ticks that found a
	// publisher's maxInFlight publishes all waiting.
	var published, pubErrors, skipped atomic.Int64
	var firstPubErr atomic.Value               // string
	perRoom := make([]atomic.Int64, cfg.Rooms) // publishes accepted, by room
	r.measureStart(ctx)
	runStart := time.Now()
	var runEnd time.Time // when the publishing stopped, before the last deliveries are awaited
	if cfg.Scenario != "connect" && len(subs) > 0 {
		if cfg.Scenario != "rooms" {
			// One publisher connection per room, so the node's
			// per-session publish rate limit (--publish-rate) is not what
			// the run measures.
			pubURL := cfg.URL
			if cfg.PublishURL != "" {
				pubURL = cfg.PublishURL
			}
			for ri := range cfg.Rooms {
				pub, err := client.Dial(ctx, client.Options{URL: pubURL, Token: cfg.Token, HTTPClient: r.hc})
				if err != nil {
					return fmt.Errorf("loadtest: publisher: %w", err)
				}
				defer pub.Close()
				pubs = append(pubs, publisher{pub, ri})
			}
		}
		pad := strings.Repeat("x", max(0, cfg.Size-24))
		var publishers sync.WaitGroup
		runCtx, stop := context.WithTimeout(ctx, cfg.Duration)
		defer stop()
		for _, pub := range pubs {
			publishers.Add(1)
			go func() {
				defer publishers.Done()
				room := "load-" + strconv.Itoa(pub.room)
				period := time.Duration(float64(time.Second) / cfg.Rate)
				// Publishers start spread over one period, not all at
				// once: thousands of them (rooms) would otherwise publish
				// in bursts.
				first := time.NewTimer(rand.N(period))
				select {
				case <-runCtx.Done():
					first.Stop()
					return
				case <-first.C:
				}
				t := time.NewTicker(period)
				defer t.Stop()
				// Publishes go out on the clock, not one after the other's
				// ack: a node that answers slowly gets the load it was
				// asked for, and its slowness shows in the latencies, not
				// as a lower rate. At most maxInFlight wait for their acks;
				// a tick that finds them all waiting is counted, not sent.
				inFlight := make(chan struct{}, maxInFlight)
				for {
					select {
					case inFlight <- struct{}{}:
						publishers.Add(1)
						go func() {
							defer publishers.Done()
							defer func() { <-inFlight }()
							data, _ := json.Marshal(payload{Sent: time.Now().UnixNano(), Pad: pad})
							pctx, cancel := context.WithTimeout(ctx, publishTimeout)
							defer cancel()
							if _, err := pub.c.Publish(pctx, room, json.RawMessage(data), ""); err == nil {
								published.Add(1)
								perRoom[pub.room].Add(1)
							} else if pubErrors.Add(1) == 1 {
								firstPubErr.Store(err.Error())
							}
						}()
					default:
						skipped.Add(1)
					}
					select {
					case <-runCtx.Done():
						return
					case <-t.C:
					}
				}
			}()
		}
		var dropped []*subscriber
		if cfg.Scenario == "resume" {
			dropped = pick(subs, cfg.Drop)
			rep.Resume = &ResumeReport{}
		}
		r.prog.begin("running", 0, nil, func() string {
			d := fmt.Sprintf("published %d delivered %d", published.Load(), rr.delivered.Load())
			if rep.Resume != nil {
				d += fmt.Sprintf(" recovered %d/%d", rr.recoveredN.Load(), len(dropped))
			}
			return d
		})
		if dropped != nil {
			// Halfway through, drop them all at once: the TCP connection
			// closes under the client, which reconnects and resumes.
			half := time.NewTimer(cfg.Duration / 2)
			select {
			case <-runCtx.Done():
			case <-half.C:
				now := time.Now().UnixNano()
				rep.Resume.Dropped = len(dropped)
				for _, s := range dropped {
					s.dropped.Store(now)
					if c := s.raw.Load(); c != nil {
						(*c).Close()
					}
				}
			}
			half.Stop()
		}
		<-runCtx.Done()
		runEnd = time.Now()
		stop()
		publishers.Wait()
		// Let the last messages arrive: every member of a room gets each
		// of its messages.
		var want int64
		for ri := range perRoom {
			want += perRoom[ri].Load() * members[ri]
		}
		deadline := time.Now().Add(5 * time.Second)
		for rr.delivered.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
	} else {
		r.prog.begin("holding", 0, nil, nil)
		t := time.NewTimer(cfg.Duration)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	r.prog.end()
	if runEnd.IsZero() {
		runEnd = time.Now()
	}
	rep.Duration = runEnd.Sub(runStart)
	r.measureEnd(ctx, rr.delivered.Load())
	if len(cfg.Metrics) > 0 {
		if rss, err := r.readMetric(ctx, "process_resident_memory_bytes"); err == nil {
			rep.RSSAfter = int64(rss)
			if n := int64(len(subs)); n > 0 {
				rep.PerConn = (rep.RSSAfter - rep.RSSBefore) / n
			}
		}
	}
	for _, s := range subs {
		s.conn.Close()
	}
	subs = nil
	readers.Wait()

	rep.Published, rep.Delivered = published.Load(), rr.delivered.Load()
	rep.PublishErrors, rep.PublishesSkipped = pubErrors.Load(), skipped.Load()
	if e, ok := firstPubErr.Load().(string); ok {
		rep.FirstPublishError = e
	}
	rep.Gaps, rep.Duplicates, rep.Lost = rr.gaps.Load(), rr.dups.Load(), rr.lost.Load()
	if rep.Duration > 0 {
		rep.PerSecond = float64(rep.Delivered) / rep.Duration.Seconds()
	}
	if cfg.Scenario == "connect" {
		return nil
	}
	d := rr.latency.distribution("delivery latency")
	rep.P50, rep.P90, rep.P99, rep.P999, rep.Max = d.P50, d.P90, d.P99, d.P999, d.Max
	rep.Distributions = append(rep.Distributions, d)
	if len(urls) > 1 {
		for i, u := range urls {
			rep.ByNode = append(rep.ByNode, NodeLatency{URL: u, Conns: perNode[i], Latency: rr.byNode[i].distribution("delivery latency")})
		}
	}
	if rep.Resume != nil {
		rec := rr.recovery.distribution("recovery after a drop")
		rep.Resume.Recovered = int(rec.Count)
		rep.Resume.RecoveredWithLoss = int(rr.recoveredLossy.Load())
		rep.Resume.Recovery = rec
		rep.Resume.Reconnect = rr.reconnect.distribution("reconnect after a drop")
		if rep.Resume.Reconnect.Count > 0 {
			rep.Distributions = append(rep.Distributions, rep.Resume.Reconnect)
		}
		rep.Distributions = append(rep.Distributions, rec)
	}
	return nil
}

// pick returns share of subs (at least one), chosen at random.
func pick(subs []*subscriber, share float64) []*subscriber {
	n := max(1, min(len(subs), int(float64(len(subs))*share+0.5)))
	out := make([]*subscriber, 0, n)
	for _, i := range rand.Perm(len(subs))[:n] {
		out = append(out, subs[i])
	}
	return out
}

// trackingClient returns an HTTP client that dials as r.hc does and keeps
// the last connection it dialed in conn, so the resume scenario can close
// it under the WebSocket client.
func (r *run) trackingClient(conn *atomic.Pointer[net.Conn]) *http.Client {
	dial := (&net.Dialer{}).DialContext
	if t, ok := r.hc.Transport.(*http.Transport); ok && t.DialContext != nil {
		dial = t.DialContext
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err == nil {
				conn.Store(&c)
			}
			return c, err
		},
	}}
}

// ResumeReport is what the resume scenario saw: Dropped connections closed
// at once halfway through the run, of which Recovered got, in order after
// everything they missed, a message published after they had reconnected.
type ResumeReport struct {
	Dropped   int `json:"dropped"`
	Recovered int `json:"recovered"`
	// RecoveredWithLoss are the dropped subscribers that came back live but
	// were told messages they missed could not be recovered (the room's
	// history no longer held them).
	RecoveredWithLoss int `json:"recovered_with_loss"`
	// Reconnect is the time from the drop until the client was connected
	// again with its rooms subscribed, before the missed messages came.
	Reconnect Distribution `json:"reconnect"`
	// Recovery is the time from the drop to that message, for each
	// subscriber that recovered; its Max is the time to full recovery.
	Recovery Distribution `json:"recovery"`
}

// String renders the resume figures for people.
func (r *ResumeReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "resume: dropped %d connections at once, %d recovered with nothing lost", r.Dropped, r.Recovered)
	if r.RecoveredWithLoss > 0 {
		fmt.Fprintf(&b, ", %d came back having lost messages history no longer held", r.RecoveredWithLoss)
	}
	if r.Recovered > 0 {
		fmt.Fprintf(&b, ", all of them within %s", round(r.Recovery.Max))
	}
	b.WriteByte('\n')
	if r.Recovered > 0 {
		fmt.Fprintf(&b, "time to reconnect: p50 %s  p90 %s  p99 %s  max %s\n", round(r.Reconnect.P50), round(r.Reconnect.P90), round(r.Reconnect.P99), round(r.Reconnect.Max))
		fmt.Fprintf(&b, "time to recover: p50 %s  p90 %s  p99 %s  max %s\n", round(r.Recovery.P50), round(r.Recovery.P90), round(r.Recovery.P99), round(r.Recovery.Max))
	}
	return b.String()
}
