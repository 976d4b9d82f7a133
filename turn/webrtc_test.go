package turn

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/turn/internal/pionlog"
)

// TestWebRTCCallThroughRelay makes a real call between two pion/webrtc
// peers that may use relay candidates only, through our TURN over each
// transport, and checks both selected pairs are relay to relay.
func TestWebRTCCallThroughRelay(t *testing.T) {
	ts := startServer(t, Config{})
	tests := []struct {
		name      string
		transport string
		url       string
	}{
		{name: "udp", transport: transportUDP, url: fmt.Sprintf("turn:%s?transport=udp", ts.UDPAddr())},
		{name: "tcp", transport: transportTCP, url: fmt.Sprintf("turn:%s?transport=tcp", ts.TCPAddr())},
		{name: "tls", transport: transportTLS, url: fmt.Sprintf("turns:%s?transport=tcp", ts.TLSAddr())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user, pass := ts.creds("caller-"+tt.name, time.Hour)
			ice := []webrtc.ICEServer{{URLs: []string{tt.url}, Username: user, Credential: pass}}
			call(t, ice)
			for _, dir := range []string{dirToPeer, dirFromPeer} {
				if got := ts.metric(t, "parley_turn_relayed_bytes_total", map[string]string{"transport": tt.transport, "direction": dir}); got == 0 {
					t.Errorf("got no relayed bytes %s over %s", dir, tt.transport)
				}
			}
			if got := ts.metric(t, "parley_turn_allocations_created_total", map[string]string{"transport": tt.transport}); got < 2 {
				t.Errorf("got %v allocations over %s, want at least 2", got, tt.transport)
			}
		})
	}
	waitFor(t, "allocations to go", 10*time.Second, func() bool { return ts.AllocationCount() == 0 })
	for _, tr := range []string{transportUDP, transportTCP, transportTLS} {
		if got := ts.metric(t, "parley_turn_allocations_active", map[string]string{"transport": tr}); got != 0 {
			t.Errorf("got %v active allocations over %s after the calls, want 0", got, tr)
		}
	}
}

// call connects two relay-only peers with ice, exchanges a message each way
// on a data channel, and checks the selected candidate pairs.
func call(t *testing.T, ice []webrtc.ICEServer) {
	t.Helper()
	var se webrtc.SettingEngine
	se.LoggerFactory = pionlog.Factory{Logger: slog.New(slog.DiscardHandler)}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se))
	cfg := webrtc.Configuration{ICEServers: ice, ICETransportPolicy: webrtc.ICETransportPolicyRelay}

	offerer, err := api.NewPeerConnection(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer offerer.Close()
	answerer, err := api.NewPeerConnection(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer answerer.Close()

	gotAnswer := make(chan string, 1)
	gotOffer := make(chan string, 1)
	dc, err := offerer.CreateDataChannel("chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	dc.OnOpen(func() { _ = dc.SendText("ping") })
	dc.OnMessage(func(m webrtc.DataChannelMessage) { gotAnswer <- string(m.Data) })
	answerer.OnDataChannel(func(d *webrtc.DataChannel) {
		d.OnMessage(func(m webrtc.DataChannelMessage) {
			gotOffer <- string(m.Data)
			_ = d.SendText("pong")
		})
	})

	offer, err := offerer.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(offerer)
	if err := offerer.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	if err := answerer.SetRemoteDescription(*offerer.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	answer, err := answerer.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered = webrtc.GatheringCompletePromise(answerer)
	if err := answerer.SetLocalDescription(answer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	if err := offerer.SetRemoteDescription(*answerer.LocalDescription()); err != nil {
		t.Fatal(err)
	}

	timeout := time.After(20 * time.Second)
	for _, ch := range []chan string{gotOffer, gotAnswer} {
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("no data over the call (offerer ICE %v, answerer ICE %v)",
				offerer.ICEConnectionState(), answerer.ICEConnectionState())
		}
	}
	for name, pc := range map[string]*webrtc.PeerConnection{"offerer": offerer, "answerer": answerer} {
		pair, err := pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
		if err != nil || pair == nil {
			t.Fatalf("%s: no selected pair: %v", name, err)
		}
		if pair.Local.Typ != webrtc.ICECandidateTypeRelay || pair.Remote.Typ != webrtc.ICECandidateTypeRelay {
			t.Errorf("%s: got pair %v -> %v, want relay -> relay", name, pair.Local.Typ, pair.Remote.Typ)
		}
	}
}
