package loadtest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	pionturn "github.com/pion/turn/v4"
)

// The turn scenario's bounds.
const (
	// minTURNSize holds a relayed packet's sequence number and send time.
	minTURNSize = 16
	// maxTURNSize keeps a relayed packet, with its TURN framing, within one
	// Ethernet MTU: parley's relay, like pion's, reads datagrams of at most
	// 1600 bytes.
	maxTURNSize = 1500
	// allocTimeout bounds one allocation, retransmissions included.
	allocTimeout = 10 * time.Second
	// turnDrain is how long the receivers get, once the senders stop, for
	// the packets still on their way.
	turnDrain = 2 * time.Second
	// maxReasons bounds the distinct failure reasons kept; the rest are
	// counted under "other".
	maxReasons = 10
)

// TURNReport is what the turn scenario saw: how fast the node's TURN server
// made allocations, and what pairs of them relayed to each other.
type TURNReport struct {
	// Server is the turn: URL the allocations were made on, from the node's
	// /v1/ice-servers.
	Server string `json:"server"`
	// RelayIPs are the addresses the node relayed from (XOR-RELAYED-ADDRESS).
	RelayIPs []string `json:"relay_ips,omitempty"`

	Asked  int `json:"allocations_asked"`
	Made   int `json:"allocations_made"`
	Failed int `json:"allocations_failed"`
	// Failures counts what went wrong by reason: allocations, and the
	// permissions of pairs (reasons starting "CreatePermission").
	Failures map[string]int `json:"failures,omitempty"`
	// AllocateIn is the time from the first allocation asked to the last
	// one answered; PerSecond is the allocations made in that time.
	AllocateIn time.Duration `json:"allocate_time"`
	PerSecond  float64       `json:"allocations_per_second"`
	// Allocation is the time of each Allocate that succeeded: both round
	// trips, the one the server answers with its 401 challenge and the
	// authenticated one.
	Allocation Distribution `json:"allocation"`

	// Pairs relayed to each other, each side at PacketRate; PairsFailed
	// could not (a CreatePermission failed).
	Pairs       int   `json:"pairs"`
	PairsFailed int   `json:"pairs_failed,omitempty"`
	PacketSize  int   `json:"packet_size"`
	PacketRate  int   `json:"packet_rate"`
	Sent        int64 `json:"packets_sent"`
	Received    int64 `json:"packets_received"`
	// Lost is Sent less Received, counted once the receivers have had
	// their time to drain; Reordered arrived after a packet sent later.
	Lost      int64 `json:"packets_lost"`
	Reordered int64 `json:"packets_reordered,omitempty"`
	// RelayIn is how long the pairs sent for.
	RelayIn time.Duration `json:"relay_time"`
	// BytesPerSecond is the payload received a second over RelayIn, all
	// pairs and both directions; Mbps is the same in Mbit/s.
	BytesPerSecond float64 `json:"relayed_bytes_per_second"`
	Mbps           float64 `json:"relayed_mbit_per_second"`
	// Latency is one-way, from sending a packet to its relay to receiving
	// it from the other's: two trips through the node.
	Latency Distribution `json:"relay_latency"`

	// NodeCPUAllocating is the nodes' CPU time while the allocations were
	// made (Report.NodeCPU is the time while relaying); CPUPerPacket is
	// Report.NodeCPU in microseconds per packet received. Both need
	// Config.Metrics.
	NodeCPUAllocating float64 `json:"node_cpu_seconds_allocating,omitempty"`
	CPUPerPacket      float64 `json:"node_cpu_us_per_packet,omitempty"`
}

// String renders the TURN figures for people.
func (t *TURNReport) String() string {
	var b strings.Builder
	via := ""
	if len(t.RelayIPs) > 0 {
		via = ", relayed from " + strings.Join(t.RelayIPs, ", ")
	}
	fmt.Fprintf(&b, "allocations on %s: %d asked, %d made, %d failed in %s: %.0f a second%s\n",
		t.Server, t.Asked, t.Made, t.Failed, t.AllocateIn.Round(time.Millisecond), t.PerSecond, via)
	for _, r := range topReasons(t.Failures, 3) {
		fmt.Fprintf(&b, "  %d× %s\n", t.Failures[r], r)
	}
	b.WriteString(t.Allocation.String() + "\n")
	if t.Pairs == 0 {
		return b.String()
	}
	lossPct := 0.0
	if t.Sent > 0 {
		lossPct = 100 * float64(t.Lost) / float64(t.Sent)
	}
	failed := ""
	if t.PairsFailed > 0 {
		failed = fmt.Sprintf(" (%d more could not: permission refused)", t.PairsFailed)
	}
	fmt.Fprintf(&b, "relayed: %d pairs%s, %d-byte packets at %d a second each way, for %s: sent %d, received %d, lost %d (%.2f%%), reordered %d\n",
		t.Pairs, failed, t.PacketSize, t.PacketRate, t.RelayIn.Round(time.Millisecond), t.Sent, t.Received, t.Lost, lossPct, t.Reordered)
	fmt.Fprintf(&b, "relayed throughput: %.2f MB/s, %.1f Mbit/s of payload\n", t.BytesPerSecond/1e6, t.Mbps)
	b.WriteString(t.Latency.String() + "\n")
	if t.CPUPerPacket > 0 || t.NodeCPUAllocating > 0 {
		fmt.Fprintf(&b, "node CPU: %.2f s while allocating, %.1f µs per relayed packet while relaying\n", t.NodeCPUAllocating, t.CPUPerPacket)
	}
	return b.String()
}

// turnCred is a TURN server and a credential for it, from /v1/ice-servers.
type turnCred struct {
	url      string // as the node wrote it, such as turn:127.0.0.1:3478?transport=udp
	addr     string // host:port
	tcp      bool
	username string
	password string
}

// allocation is one TURN client with its allocation.
type allocation struct {
	conn  net.PacketConn // to the TURN server: a UDP socket, or a TCP stream framed
	c     *pionturn.Client
	relay net.PacketConn // the relayed transport address, through c
	addr  *net.UDPAddr   // its address
	done  bool
}

// close releases the allocation (a Refresh with lifetime 0, sent without
// waiting for the answer) and stops its client: its refresh timers, its
// transactions and the goroutine reading conn.
func (a *allocation) close() {
	if a.done {
		return
	}
	a.done = true
	if a.relay != nil {
		a.relay.Close()
	}
	a.c.Close()
	a.conn.Close()
}

// turnRun is the state of a turn scenario that its goroutines share.
type turnRun struct {
	r        *run
	endpoint string // of /v1/ice-servers
	base     time.Time
	logs     logging.LoggerFactory

	made, failed atomic.Int64
	mu           sync.Mutex
	failures     map[string]int
	allocTimes   *latencies

	sent, received, bytes, reordered atomic.Int64
	latency                          *latencies
}

// fail counts a failure by reason.
func (t *turnRun) fail(reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	countReason(t.failures, reason, maxReasons)
}

// reasons returns up to n of the failure reasons counted so far, the most
// frequent first.
func (t *turnRun) reasons(n int) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return topReasons(t.failures, n)
}

// runTURN runs the turn scenario. It asks the node for TURN credentials at
// GET /v1/ice-servers (URL with /ws replaced by /ice-servers), once for each
// allocation: in dev mode every answer is for a new anonymous user, so the
// node's per-user quota (--turn-user-quota) does not bound the run; with a
// token every allocation is the token's user and it does. It allocates at
// Rate a second, each allocation with a pion/turn client of its own whose
// socket is bound, on Linux against a loopback node, to the next of
// 127.0.0.1 to 127.0.0.254 in turn: the relay rate-limits the
// unauthenticated first Allocate per source address (20 a second by
// default), which a single address would hit at once. The allocations are
// then paired, each pair permits each other's relayed address, and both
// sides send PacketRate packets a second of Size bytes to the other's
// relayed address for Duration: relay to relay through the node, which its
// peer policy allows for its own relay addresses (TURN-SECURITY row 12).
// Everything it opened is closed before it returns.
func runTURN(ctx context.Context, r *run) error {
	cfg, rep := r.cfg, r.rep
	if cfg.Size < minTURNSize || cfg.Size > maxTURNSize {
		return fmt.Errorf("loadtest: size %d: the turn scenario relays packets of %d to %d bytes", cfg.Size, minTURNSize, maxTURNSize)
	}
	endpoint, err := iceEndpoint(cfg.URL)
	if err != nil {
		return err
	}
	t := &turnRun{
		r:          r,
		endpoint:   endpoint,
		base:       time.Now(),
		logs:       &logging.DefaultLoggerFactory{Writer: io.Discard, DefaultLogLevel: logging.LogLevelDisabled},
		failures:   make(map[string]int),
		allocTimes: newLatencies(),
		latency:    newLatencies(),
	}
	first, err := t.credential(ctx)
	if err != nil {
		return err
	}
	tr := &TURNReport{Server: first.url, Asked: cfg.Allocations, PacketSize: cfg.Size, PacketRate: cfg.PacketRate}
	rep.TURN = tr
	defer func() {
		tr.Made, tr.Failed = int(t.made.Load()), int(t.failed.Load())
		t.mu.Lock()
		if len(t.failures) > 0 {
			tr.Failures = t.failures
		}
		t.mu.Unlock()
		tr.Allocation = t.allocTimes.distribution("allocation")
		tr.Latency = t.latency.distribution("relay latency")
		rep.Distributions = append(rep.Distributions, tr.Allocation, tr.Latency)
	}()

	cpu0, cpuErr := r.readMetric(ctx, "process_cpu_seconds_total")
	allocs, err := t.allocateAll(ctx, first)
	defer func() {
		for _, a := range allocs {
			a.close()
		}
	}()
	tr.AllocateIn = time.Since(t.base)
	if made := len(allocs); made > 0 && tr.AllocateIn > 0 {
		tr.PerSecond = float64(made) / tr.AllocateIn.Seconds()
	}
	if err != nil {
		return err
	}
	for _, a := range allocs {
		if ip := a.addr.IP.String(); !slices.Contains(tr.RelayIPs, ip) && len(tr.RelayIPs) < 8 {
			tr.RelayIPs = append(tr.RelayIPs, ip)
		}
	}
	if len(cfg.Metrics) > 0 && cpuErr == nil {
		if cpu1, err := r.readMetric(ctx, "process_cpu_seconds_total"); err == nil {
			tr.NodeCPUAllocating = cpu1 - cpu0
		}
	}
	if len(allocs) < 2 {
		return nil
	}
	return t.relayAll(ctx, allocs, tr)
}

// allocateAll makes cfg.Allocations allocations at cfg.Rate a second and
// returns those made, in the order they were asked for. When none has been
// made after ten failures, it stops and says why.
func (t *turnRun) allocateAll(ctx context.Context, first turnCred) ([]*allocation, error) {
	cfg := t.r.cfg
	n := cfg.Allocations
	giveUp := int64(min(10, n))
	slots := make([]*allocation, n)
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var firstErr atomic.Pointer[string]
	t.r.prog.begin("allocating", int64(n), func() int64 { return t.made.Load() + t.failed.Load() }, func() string {
		if f := t.failed.Load(); f > 0 {
			return strconv.FormatInt(f, 10) + " failed"
		}
		return ""
	})
	defer t.r.prog.end()
	period := max(time.Microsecond, time.Duration(float64(time.Second)/cfg.Rate))
	tick := time.NewTicker(period)
	defer tick.Stop()
	var wg sync.WaitGroup
	for i := range n {
		if i > 0 {
			select {
			case <-actx.Done():
			case <-tick.C:
			}
		}
		if actx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cred := first
			var err error
			if i > 0 {
				cred, err = t.credential(actx)
			}
			var a *allocation
			if err == nil {
				a, err = t.allocate(actx, i, cred)
			}
			if actx.Err() != nil && err != nil {
				return // stopped, not failed
			}
			if err != nil {
				reason := t.reason("", err)
				t.fail(reason)
				firstErr.CompareAndSwap(nil, &reason)
				if t.failed.Add(1) >= giveUp && t.made.Load() == 0 {
					cancel()
				}
				return
			}
			slots[i] = a
			t.made.Add(1)
		}()
	}
	wg.Wait()
	var made []*allocation
	for _, a := range slots {
		if a != nil {
			made = append(made, a)
		}
	}
	if err := ctx.Err(); err != nil {
		return made, err
	}
	if len(made) == 0 {
		reason := "none answered"
		if p := firstErr.Load(); p != nil {
			reason = *p
		}
		return nil, fmt.Errorf("loadtest: no TURN allocation on %s succeeded (%d tried): %s", first.url, t.failed.Load(), reason)
	}
	return made, nil
}

// allocate makes allocation number i with cred, from the i-th source
// address.
func (t *turnRun) allocate(ctx context.Context, i int, cred turnCred) (*allocation, error) {
	var src net.IP
	if srcs := t.r.srcs; len(srcs) > 0 {
		src = srcs[i%len(srcs)].AsSlice()
	}
	conn, err := dialTURN(ctx, cred, src)
	if err != nil {
		return nil, err
	}
	c, err := pionturn.NewClient(&pionturn.ClientConfig{
		TURNServerAddr: cred.addr,
		Username:       cred.username,
		Password:       cred.password,
		Conn:           conn,
		LoggerFactory:  t.logs,
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("turn client: %w", err)
	}
	a := &allocation{conn: conn, c: c}
	if err := c.Listen(); err != nil {
		a.close()
		return nil, fmt.Errorf("turn client: %w", err)
	}
	// pion's Allocate takes no context: closing the client and its socket
	// ends it when ctx is done or the allocation takes too long.
	actx, cancel := context.WithTimeoutCause(ctx, allocTimeout, errAllocTimeout)
	defer cancel()
	stop := context.AfterFunc(actx, func() {
		c.Close()
		conn.Close()
	})
	start := time.Now()
	relay, err := c.Allocate()
	took := time.Since(start)
	if !stop() {
		if relay != nil {
			relay.Close()
		}
		return nil, context.Cause(actx)
	}
	if err != nil {
		a.close()
		return nil, err
	}
	a.relay = relay
	a.addr, _ = relay.LocalAddr().(*net.UDPAddr)
	if a.addr == nil {
		a.close()
		return nil, fmt.Errorf("relayed address %v is not UDP", relay.LocalAddr())
	}
	t.allocTimes.record(took)
	return a, nil
}

var errAllocTimeout = fmt.Errorf("no answer within %s", allocTimeout)

// dialTURN opens the client side of a connection to the TURN server of
// cred: a UDP socket, or a TCP connection framed as STUN packets, from src
// when it is not nil (and the system has it).
func dialTURN(ctx context.Context, cred turnCred, src net.IP) (net.PacketConn, error) {
	if cred.tcp {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: allocTimeout}
		c, err := d.DialContext(ctx, "tcp", cred.addr)
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			d.LocalAddr = nil
			c, err = d.DialContext(ctx, "tcp", cred.addr)
		}
		if err != nil {
			return nil, err
		}
		return pionturn.NewSTUNConn(c), nil
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: src})
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		c, err = net.ListenUDP("udp4", nil)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// relayAll pairs the allocations (first and second, third and fourth, ...),
// has each side of a pair permit the other's relayed address, and then has
// both send to each other for Duration, at PacketRate. It fills in the relay
// figures of tr.
func (t *turnRun) relayAll(ctx context.Context, allocs []*allocation, tr *TURNReport) error {
	cfg, r := t.r.cfg, t.r
	type pair struct{ a, b *allocation }
	var pairs []pair
	for i := 0; i+1 < len(allocs); i += 2 {
		pairs = append(pairs, pair{allocs[i], allocs[i+1]})
	}
	// Permissions first, for every pair, so that no side's first packets
	// reach a relay that does not let them through yet.
	ok := make([]bool, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.a.c.CreatePermission(p.b.addr)
			if err == nil {
				err = p.b.c.CreatePermission(p.a.addr)
			}
			if err != nil {
				t.fail(t.reason("CreatePermission", err))
				return
			}
			ok[i] = true
		}()
	}
	wg.Wait()
	var live []pair
	for i, p := range pairs {
		if ok[i] {
			live = append(live, p)
		}
	}
	tr.Pairs, tr.PairsFailed = len(live), len(pairs)-len(live)
	if len(live) == 0 {
		return fmt.Errorf("loadtest: no pair of allocations could permit each other (%d pairs): %s", len(pairs), strings.Join(t.reasons(3), "; "))
	}

	// One reader per allocation that relays, reading until it is closed.
	var readers sync.WaitGroup
	for _, p := range live {
		for _, a := range []*allocation{p.a, p.b} {
			readers.Add(1)
			go func() {
				defer readers.Done()
				t.receive(a)
			}()
		}
	}
	start := time.Now()
	r.prog.begin("relaying", 0, nil, func() string {
		secs := time.Since(start).Seconds()
		mbps := 0.0
		if secs > 0 {
			mbps = float64(t.bytes.Load()) * 8 / 1e6 / secs
		}
		return fmt.Sprintf("sent %d received %d  %.1f Mbit/s", t.sent.Load(), t.received.Load(), mbps)
	})
	r.measureStart(ctx)
	rctx, stop := context.WithTimeout(ctx, cfg.Duration)
	var senders sync.WaitGroup
	for _, p := range live {
		for _, s := range [][2]*allocation{{p.a, p.b}, {p.b, p.a}} {
			senders.Add(1)
			go func() {
				defer senders.Done()
				t.send(rctx, s[0], s[1].addr)
			}()
		}
	}
	<-rctx.Done()
	stop()
	senders.Wait()
	tr.RelayIn = time.Since(start)
	r.measureEnd(ctx, 0)
	// The last packets are still on their way.
	deadline := time.Now().Add(turnDrain)
	for t.received.Load() < t.sent.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	r.prog.end()
	for _, p := range live {
		p.a.close()
		p.b.close()
	}
	readers.Wait()

	tr.Sent, tr.Received, tr.Reordered = t.sent.Load(), t.received.Load(), t.reordered.Load()
	tr.Lost = max(0, tr.Sent-tr.Received)
	r.rep.Duration = tr.RelayIn
	if secs := tr.RelayIn.Seconds(); secs > 0 {
		tr.BytesPerSecond = float64(t.bytes.Load()) / secs
		tr.Mbps = tr.BytesPerSecond * 8 / 1e6
	}
	if r.rep.NodeCPU > 0 && tr.Received > 0 {
		tr.CPUPerPacket = r.rep.NodeCPU / float64(tr.Received) * 1e6
	}
	return nil
}

// send sends packets from a's relay to the relayed address to, rate a
// second, until ctx is done. Each carries its sequence number and send
// time; a sender that falls behind catches up by at most a tenth of a
// second's worth of packets at once, and lets the rest go.
func (t *turnRun) send(ctx context.Context, a *allocation, to *net.UDPAddr) {
	rate := float64(t.r.cfg.PacketRate)
	burst := int64(rate/10) + 1
	period := max(time.Millisecond, time.Duration(float64(time.Second)/rate))
	buf := make([]byte, t.r.cfg.Size)
	tick := time.NewTicker(period)
	defer tick.Stop()
	start := time.Now()
	var seq, planned int64
	for {
		due := int64(time.Since(start).Seconds()*rate) + 1
		if due-planned > burst {
			planned = due - burst
		}
		for ; planned < due; planned++ {
			binary.BigEndian.PutUint64(buf[0:8], uint64(seq))
			binary.BigEndian.PutUint64(buf[8:16], uint64(time.Since(t.base)))
			if _, err := a.relay.WriteTo(buf, to); err != nil {
				t.fail(t.reason("send", err))
				continue
			}
			seq++
			t.sent.Add(1)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// receive reads the packets relayed to a until a's relay is closed.
func (t *turnRun) receive(a *allocation) {
	buf := make([]byte, 2048)
	next := int64(0) // the sequence number expected next
	for {
		n, _, err := a.relay.ReadFrom(buf)
		if errors.Is(err, io.ErrShortBuffer) {
			continue
		}
		if err != nil {
			return
		}
		if n < minTURNSize {
			continue
		}
		now := time.Since(t.base)
		seq := int64(binary.BigEndian.Uint64(buf[0:8]))
		sent := time.Duration(binary.BigEndian.Uint64(buf[8:16]))
		if seq < next {
			t.reordered.Add(1)
		} else {
			next = seq + 1
		}
		t.received.Add(1)
		t.bytes.Add(int64(n))
		t.latency.record(now - sent)
	}
}

// reason says in a few words why a TURN request failed, for the report:
// the STUN error code with what it means for this run, or the error.
func (t *turnRun) reason(op string, err error) string {
	prefix := ""
	if op != "" {
		prefix = op + ": "
	}
	var te *stun.TurnError
	if !errors.As(err, &te) {
		var v stun.TurnError
		if errors.As(err, &v) {
			te = &v
		}
	}
	if te == nil {
		return prefix + err.Error()
	}
	// A server may leave out the reason phrase (parley's relay does, to
	// keep its answers small), so the known codes are named here.
	code := te.ErrorCodeAttr.Code
	var what string
	switch code {
	case stun.CodeUnauthorized:
		what = "Unauthorized: the TURN server refused the credential from /v1/ice-servers (expired, or minted with another secret than the relay's --turn-secret)"
	case stun.CodeAllocQuotaReached:
		what = "Allocation Quota Reached: the user's or all users' allocations are at the node's quota (--turn-user-quota, --turn-max-allocations; with a token every allocation is the token's user)"
	case stun.CodeInsufficientCapacity:
		what = "Insufficient Capacity: no relay port is free (--turn-ports)"
	case stun.CodeForbidden:
		what = "Forbidden: the relay refused the peer address (its peer-address policy)"
	default:
		what = string(te.ErrorCodeAttr.Reason)
	}
	return prefix + strings.TrimSpace(fmt.Sprintf("%d %s", int(code), what))
}

// iceEndpoint returns the node's ICE servers endpoint for its WebSocket
// endpoint: ws://host:port/v1/ws gives http://host:port/v1/ice-servers.
func iceEndpoint(wsURL string) (string, error) {
	u, err := siblingEndpoint(wsURL, "ice-servers", "ICE servers endpoint")
	if err != nil {
		return "", err
	}
	u.RawQuery = ""
	return u.String(), nil
}

// iceServersAnswer is the body of GET /v1/ice-servers.
type iceServersAnswer struct {
	ICEServers []struct {
		URLs       []string `json:"urls"`
		Username   string   `json:"username"`
		Credential string   `json:"credential"`
	} `json:"iceServers"`
}

// credential asks the node for a TURN credential and picks the TURN server
// to use: the first turn: URL over UDP, else the first over TCP (turns: is
// not spoken here).
func (t *turnRun) credential(ctx context.Context) (turnCred, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.endpoint, nil)
	if err != nil {
		return turnCred{}, fmt.Errorf("loadtest: %w", err)
	}
	if tok := t.r.cfg.Token; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := t.r.hc.Do(req)
	if err != nil {
		return turnCred{}, fmt.Errorf("loadtest: TURN credentials: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return turnCred{}, fmt.Errorf("loadtest: TURN credentials: GET %s: %w", t.endpoint, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
			msg = e.Error.Message
		}
		hint := ""
		switch resp.StatusCode {
		case http.StatusNotFound:
			hint = " (the node tells of no TURN relay: is its --turn-addr off?)"
		case http.StatusUnauthorized:
			hint = " (check --token)"
		}
		return turnCred{}, fmt.Errorf("loadtest: TURN credentials: GET %s answered %s: %s%s", t.endpoint, resp.Status, msg, hint)
	}
	var ans iceServersAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return turnCred{}, fmt.Errorf("loadtest: TURN credentials: GET %s: %w", t.endpoint, err)
	}
	var udp, tcp *turnCred
	var seen []string
	for _, s := range ans.ICEServers {
		for _, raw := range s.URLs {
			seen = append(seen, raw)
			c, ok := parseTURNURL(raw)
			if !ok {
				continue
			}
			c.username, c.password = s.Username, s.Credential
			switch {
			case !c.tcp && udp == nil:
				udp = &c
			case c.tcp && tcp == nil:
				tcp = &c
			}
		}
	}
	c := udp
	if c == nil {
		c = tcp
	}
	if c == nil {
		return turnCred{}, fmt.Errorf("loadtest: the node's ICE servers have no turn: URL (it lists %q): its TURN relay is off", seen)
	}
	if !t.r.cfg.AllowRemote {
		host, _, _ := net.SplitHostPort(c.addr)
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return turnCred{}, fmt.Errorf("loadtest: the node's TURN server %s is not on a loopback address; pass AllowRemote (--allow-remote) to load a remote relay", c.url)
		}
	}
	return *c, nil
}

// parseTURNURL reads a turn: URL (RFC 7065): turn:host[:port][?transport=udp|tcp].
// turns: URLs, and anything else, are not ok.
func parseTURNURL(raw string) (turnCred, bool) {
	rest, ok := strings.CutPrefix(raw, "turn:")
	if !ok {
		return turnCred{}, false
	}
	hostport, query, _ := strings.Cut(rest, "?")
	c := turnCred{url: raw}
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return turnCred{}, false
		}
		switch q.Get("transport") {
		case "", "udp":
		case "tcp":
			c.tcp = true
		default:
			return turnCred{}, false
		}
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		hostport = net.JoinHostPort(strings.Trim(hostport, "[]"), "3478")
	}
	host, _, _ := net.SplitHostPort(hostport)
	if host == "" {
		return turnCred{}, false
	}
	c.addr = hostport
	return c, true
}
