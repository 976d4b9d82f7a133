package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/gateway/client"
	"github.com/parley-rt/parley/gateway/client/rtc"
)

// The NAT lab's peers are this test binary run again inside a client's
// network namespace (see natlab_test.go), with PARLEY_LAB_PEER set: TestMain
// runs labPeerMain instead of the tests. A peer joins a call through the
// lab's gateway with the Go client and package rtc, the offering one
// connects to the other, both exchange labMessages data-channel messages,
// and each prints one JSON labResult on stdout.

// labMessages is how many data-channel messages each peer sends the other.
const labMessages = 20

// labResult is what a lab peer reports.
type labResult struct {
	Session string `json:"session"`
	// SetupMS is the time from the start of the join to the data channel's
	// open, in milliseconds.
	SetupMS       float64 `json:"setup_ms"`
	Local         string  `json:"local"`
	Remote        string  `json:"remote"`
	LocalAddress  string  `json:"local_address"`
	RemoteAddress string  `json:"remote_address"`
	RelayProtocol string  `json:"relay_protocol"`
	RTTMS         float64 `json:"rtt_ms"`
	Received      int     `json:"received"`
	// StopMS is how long the peer took to stop once the call was over.
	StopMS float64 `json:"stop_ms"`
	Error  string  `json:"error,omitempty"`
	// Candidates are the local candidates the peer gathered, as type/protocol
	// (relay ones with their relay protocol), for a failure's report.
	Candidates []string `json:"candidates"`
}

// labPeerMain is a lab peer's whole life; it returns the process's exit code.
// Its settings come from the environment: PARLEY_LAB_URL (the gateway's
// WebSocket endpoint), PARLEY_LAB_TOKEN, PARLEY_LAB_CALL, PARLEY_LAB_ROLE
// (offer or answer), PARLEY_LAB_TIMEOUT (how long the data channel may
// take to open) and PARLEY_LAB_STUN (a STUN URL to use alone, instead of
// the ICE servers of the join ack). The gateway's certificate authority comes from
// SSL_CERT_FILE.
func labPeerMain() int {
	timeout, err := time.ParseDuration(os.Getenv("PARLEY_LAB_TIMEOUT"))
	if err != nil {
		timeout = 15 * time.Second
	}
	res := runLabPeer(os.Getenv("PARLEY_LAB_URL"), os.Getenv("PARLEY_LAB_TOKEN"), os.Getenv("PARLEY_LAB_CALL"),
		os.Getenv("PARLEY_LAB_STUN"), os.Getenv("PARLEY_LAB_ROLE") == "offer", timeout)
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	if res.Error != "" {
		return 1
	}
	return 0
}

// runLabPeer joins callName at url and makes the call. stunURL, when set,
// is the only ICE server, in place of the join ack's.
func runLabPeer(url, token, callName, stunURL string, offer bool, timeout time.Duration) (res labResult) {
	fail := func(format string, a ...any) labResult {
		res.Error = fmt.Sprintf(format, a...)
		return res
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	start := time.Now()
	// Progress goes to stderr, which the test prints when a call fails.
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "%7.1f ms  %s\n", float64(time.Since(start).Microseconds())/1000, fmt.Sprintf(format, a...))
	}
	c, err := client.Dial(ctx, client.Options{URL: url, Token: token, NoReconnect: true})
	if err != nil {
		return fail("dial %s: %v", url, err)
	}
	defer c.Close()
	go func() {
		for range c.Events() {
		}
	}()
	call, err := c.Join(ctx, callName)
	if err != nil {
		return fail("join %s: %v", callName, err)
	}
	res.Session = call.ID()
	logf("joined %s as %s; ICE servers %v", callName, call.ID(), call.Ack().ICEServers)
	// The answering peer says it is in the call, so that the test starts
	// the offering one.
	if !offer {
		fmt.Println(`{"joined":true}`)
	}

	var se webrtc.SettingEngine
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	var mu sync.Mutex
	var got []string
	var candidates []string
	remote := make(chan string, 1)
	var p *rtc.Peer
	var plog *slog.Logger
	if os.Getenv("PARLEY_LAB_DEBUG") != "" {
		plog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var iceServers []webrtc.ICEServer
	if stunURL != "" {
		iceServers = []webrtc.ICEServer{{URLs: []string{stunURL}}}
	}
	p = rtc.New(call, rtc.Options{
		ICEServers:    iceServers,
		SettingEngine: &se,
		Logger:        plog,
		OnChannel: func(_ string, dc *webrtc.DataChannel) {
			dc.OnMessage(func(m webrtc.DataChannelMessage) {
				mu.Lock()
				got = append(got, string(m.Data))
				mu.Unlock()
			})
		},
		OnEvent: func(ev client.CallEvent) {
			if ev.Kind == client.CallPeerJoined {
				select {
				case remote <- ev.Peer.Session:
				default:
				}
			}
		},
	})
	if offer {
		for _, peer := range call.Peers() {
			select {
			case remote <- peer.Session:
			default:
			}
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- p.Run(runCtx) }()
	defer func() {
		stopping := time.Now()
		stop()
		// A dial to a TURN port that the firewall drops must not hold the
		// peer up (package rtc bounds it); the process ends anyway after a
		// while, and the test reads StopMS.
		select {
		case <-ran:
		case <-time.After(10 * time.Second):
			logf("the peer had not stopped 10 s after the call")
		}
		res.StopMS = float64(time.Since(stopping).Microseconds()) / 1000
	}()

	var other string
	select {
	case other = <-remote:
	case <-time.After(timeout):
		return fail("no other peer in the call after %v", timeout)
	}
	logf("other peer %s", other)
	if offer {
		if err := p.Connect(other); err != nil {
			return fail("connect to %s: %v", other, err)
		}
	}
	openCtx, openCancel := context.WithTimeout(ctx, timeout)
	err = p.WaitOpen(openCtx, other)
	openCancel()
	if report, ok := p.Stats(other); ok {
		for _, s := range report {
			if cs, ok := s.(webrtc.ICECandidateStats); ok && cs.Type == webrtc.StatsTypeLocalCandidate {
				d := cs.CandidateType.String() + "/" + cs.Protocol
				if cs.RelayProtocol != "" {
					d += "/" + cs.RelayProtocol
				}
				candidates = append(candidates, d)
			}
		}
	}
	res.Candidates = candidates
	logf("data channel: %v; candidates %v", err, candidates)
	if err != nil {
		return fail("data channel to %s not open after %v: %v", other, timeout, err)
	}
	res.SetupMS = float64(time.Since(start).Microseconds()) / 1000

	dc := p.Channel(other)
	for i := range labMessages {
		if err := dc.SendText("m" + strconv.Itoa(i)); err != nil {
			return fail("send message %d: %v", i, err)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= labMessages || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	res.Received = len(got)
	msgs := slicesJoin(got)
	mu.Unlock()
	if pair, ok := p.SelectedPair(other); ok {
		res.Local, res.Remote = pair.Local.String(), pair.Remote.String()
		res.LocalAddress, res.RemoteAddress = pair.LocalAddress, pair.RemoteAddress
		res.RelayProtocol = pair.RelayProtocol
		res.RTTMS = float64(pair.RTT.Microseconds()) / 1000
	} else {
		return fail("no selected candidate pair toward %s", other)
	}
	if res.Received < labMessages {
		return fail("got %d of %d messages: %s", res.Received, labMessages, msgs)
	}
	// Each peer stays until it has the other's "bye" (or a while), so that
	// neither leaves while the other still counts messages.
	if err := dc.SendText("bye"); err != nil && !errors.Is(err, context.Canceled) {
		return fail("send bye: %v", err)
	}
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		bye := len(got) > labMessages
		mu.Unlock()
		if bye {
			break
		}
	}
	leaveCtx, leaveCancel := context.WithTimeout(context.Background(), 2*time.Second)
	call.Leave(leaveCtx)
	leaveCancel()
	return res
}

func slicesJoin(s []string) string { return strings.Join(s, " ") }
