package signaling

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// chromeOffer is an offer as Chrome's localDescription holds it once
// gathering has begun: audio and video bundled, an mDNS host candidate and a
// server-reflexive one.
const chromeOffer = "v=0\r\n" +
	"o=- 4215775240449105457 2 IN IP4 127.0.0.1\r\n" +
	"s=-\r\n" +
	"t=0 0\r\n" +
	"a=group:BUNDLE 0 1\r\n" +
	"a=extmap-allow-mixed\r\n" +
	"a=msid-semantic: WMS 3a6e2d1c-8f4b-4c1e-9d2a-7b5e0f6c1a23\r\n" +
	"m=audio 54400 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n" +
	"c=IN IP4 198.51.100.23\r\n" +
	"a=rtcp:9 IN IP4 0.0.0.0\r\n" +
	chromeHostLine + "\r\n" +
	chromeSrflxLine + "\r\n" +
	"a=ice-ufrag:EsAw\r\n" +
	"a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n" +
	"a=ice-options:trickle\r\n" +
	"a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:0\r\n" +
	"a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n" +
	"a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n" +
	"a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n" +
	"a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n" +
	"a=sendrecv\r\n" +
	"a=msid:3a6e2d1c-8f4b-4c1e-9d2a-7b5e0f6c1a23 0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtpmap:111 opus/48000/2\r\n" +
	"a=rtcp-fb:111 transport-cc\r\n" +
	"a=fmtp:111 minptime=10;useinbandfec=1\r\n" +
	"a=rtpmap:63 red/48000/2\r\n" +
	"a=fmtp:63 111/111\r\n" +
	"a=rtpmap:9 G722/8000\r\n" +
	"a=rtpmap:0 PCMU/8000\r\n" +
	"a=rtpmap:8 PCMA/8000\r\n" +
	"a=rtpmap:13 CN/8000\r\n" +
	"a=rtpmap:110 telephone-event/48000\r\n" +
	"a=rtpmap:126 telephone-event/8000\r\n" +
	"a=ssrc:1001 cname:k3Hq9w2ZxY1vB7nM\r\n" +
	"a=ssrc:1001 msid:3a6e2d1c-8f4b-4c1e-9d2a-7b5e0f6c1a23 0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0\r\n" +
	"m=video 54400 UDP/TLS/RTP/SAVPF 96 97 102 103 45 46\r\n" +
	"c=IN IP4 198.51.100.23\r\n" +
	"a=rtcp:9 IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:EsAw\r\n" +
	"a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n" +
	"a=ice-options:trickle\r\n" +
	"a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:1\r\n" +
	"a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n" +
	"a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n" +
	"a=extmap:13 urn:3gpp:video-orientation\r\n" +
	"a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n" +
	"a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n" +
	"a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type\r\n" +
	"a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing\r\n" +
	"a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space\r\n" +
	"a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n" +
	"a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n" +
	"a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n" +
	"a=sendrecv\r\n" +
	"a=msid:3a6e2d1c-8f4b-4c1e-9d2a-7b5e0f6c1a23 7c6b5a49-3827-4615-a4b3-c2d1e0f9a8b7\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtcp-rsize\r\n" +
	"a=rtpmap:96 VP8/90000\r\n" +
	"a=rtcp-fb:96 goog-remb\r\n" +
	"a=rtcp-fb:96 transport-cc\r\n" +
	"a=rtcp-fb:96 ccm fir\r\n" +
	"a=rtcp-fb:96 nack\r\n" +
	"a=rtcp-fb:96 nack pli\r\n" +
	"a=rtpmap:97 rtx/90000\r\n" +
	"a=fmtp:97 apt=96\r\n" +
	"a=rtpmap:102 H264/90000\r\n" +
	"a=rtcp-fb:102 goog-remb\r\n" +
	"a=rtcp-fb:102 transport-cc\r\n" +
	"a=rtcp-fb:102 ccm fir\r\n" +
	"a=rtcp-fb:102 nack\r\n" +
	"a=rtcp-fb:102 nack pli\r\n" +
	"a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n" +
	"a=rtpmap:103 rtx/90000\r\n" +
	"a=fmtp:103 apt=102\r\n" +
	"a=rtpmap:45 AV1/90000\r\n" +
	"a=rtcp-fb:45 goog-remb\r\n" +
	"a=rtcp-fb:45 transport-cc\r\n" +
	"a=rtcp-fb:45 ccm fir\r\n" +
	"a=rtcp-fb:45 nack\r\n" +
	"a=rtcp-fb:45 nack pli\r\n" +
	"a=fmtp:45 level-idx=5;profile=0;tier=0\r\n" +
	"a=rtpmap:46 rtx/90000\r\n" +
	"a=fmtp:46 apt=45\r\n" +
	"a=ssrc-group:FID 2002 2003\r\n" +
	"a=ssrc:2002 cname:k3Hq9w2ZxY1vB7nM\r\n" +
	"a=ssrc:2002 msid:3a6e2d1c-8f4b-4c1e-9d2a-7b5e0f6c1a23 7c6b5a49-3827-4615-a4b3-c2d1e0f9a8b7\r\n" +
	"a=ssrc:2003 cname:k3Hq9w2ZxY1vB7nM\r\n" +
	"a=ssrc:2003 msid:3a6e2d1c-8f4b-4c1e-9d2a-7b5e0f6c1a23 7c6b5a49-3827-4615-a4b3-c2d1e0f9a8b7\r\n"

// Candidate lines and strings as browsers send them.
const (
	chromeHostLine  = "a=" + mdnsHostCandidate
	chromeSrflxLine = "a=" + srflxCandidate

	mdnsHostCandidate = "candidate:3053491563 1 udp 2113937151 6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d.local 54400 typ host generation 0 ufrag EsAw network-cost 999"
	srflxCandidate    = "candidate:842163049 1 udp 1677729535 198.51.100.23 54400 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag EsAw network-cost 999"
	relayCandidate    = "candidate:1797049966 1 udp 41885439 203.0.113.7 50123 typ relay raddr 198.51.100.23 rport 54400 generation 0 ufrag EsAw network-id 1 network-cost 10"
	hostCandidate     = "candidate:2878742611 1 udp 2130706431 192.168.1.20 47729 typ host generation 0 ufrag EsAw network-id 1"
	tcpHostCandidate  = "candidate:1510613869 1 tcp 1518280447 192.168.1.20 9 typ host tcptype active generation 0 ufrag EsAw network-id 1"
	ipv6Candidate     = "candidate:3396227683 1 udp 1686052607 2001:db8::7 60769 typ srflx raddr :: rport 0 generation 0 ufrag EsAw"
)

// testMaxSize is the maxSize the tests pass: the frame limit.
const testMaxSize = 64 << 10

// pionSDP holds descriptions made by pion for a data-channel-only call.
type pionSDP struct {
	offer         string // as CreateOffer returns it, without candidates
	gatheredOffer string // the local offer once gathering is complete
	answer        string // the answer, with its candidates
}

// newPionSDP negotiates a data channel between two pion peer connections
// and returns their descriptions. Loopback candidates are included so that
// host candidates are present wherever the test runs.
func newPionSDP(t *testing.T) pionSDP {
	t.Helper()
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se))
	newPC := func() *webrtc.PeerConnection {
		pc, err := api.NewPeerConnection(webrtc.Configuration{})
		if err != nil {
			t.Fatalf("NewPeerConnection: %v", err)
		}
		t.Cleanup(func() {
			if err := pc.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return pc
	}
	gather := func(pc *webrtc.PeerConnection, desc webrtc.SessionDescription) string {
		done := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(desc); err != nil {
			t.Fatalf("SetLocalDescription: %v", err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ICE gathering did not complete within 10s")
		}
		return pc.LocalDescription().SDP
	}

	offerer, answerer := newPC(), newPC()
	if _, err := offerer.CreateDataChannel("chat", nil); err != nil {
		t.Fatalf("CreateDataChannel: %v", err)
	}
	offer, err := offerer.CreateOffer(nil)
	if err != nil {
		t.Fatalf("CreateOffer: %v", err)
	}
	var p pionSDP
	p.offer = offer.SDP
	p.gatheredOffer = gather(offerer, offer)
	if err := answerer.SetRemoteDescription(*offerer.LocalDescription()); err != nil {
		t.Fatalf("SetRemoteDescription: %v", err)
	}
	answer, err := answerer.CreateAnswer(nil)
	if err != nil {
		t.Fatalf("CreateAnswer: %v", err)
	}
	p.answer = gather(answerer, answer)
	return p
}

// sdpSignal encodes signal data that carries a session description.
func sdpSignal(typ, body string) string {
	return mustJSON(map[string]any{"sdp": sessionDescription{Type: typ, SDP: body}})
}

// mustJSON encodes v without HTML escaping, as checkSignal does.
func mustJSON(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// checkAccepted checks that checkSignal accepts data with the wanted kind,
// that it gives want (unless want is empty), and that its output is a fixed
// point.
func checkAccepted(t *testing.T, data string, hideHost bool, wantKind signalKind, want string) []byte {
	t.Helper()
	out, kind, err := checkSignal([]byte(data), testMaxSize, hideHost)
	if err != nil {
		t.Fatalf("got error %v, want kind %d", err, wantKind)
	}
	if kind != wantKind {
		t.Errorf("got kind %d, want %d", kind, wantKind)
	}
	if want != "" && string(out) != want {
		t.Errorf("got out %s, want %s", excerpt(string(out), want), excerpt(want, string(out)))
	}
	again, kind2, err := checkSignal(out, testMaxSize, hideHost)
	if err != nil || kind2 != kind || !bytes.Equal(again, out) {
		t.Errorf("checking the output again: got %s, %d, %v; want the same output and kind %d", again, kind2, err, kind)
	}
	return out
}

// excerpt returns the part of s around the first byte where it differs
// from other, so that a failure shows the difference in a long SDP.
func excerpt(s, other string) string {
	i := 0
	for i < len(s) && i < len(other) && s[i] == other[i] {
		i++
	}
	start, end := max(i-40, 0), min(i+40, len(s))
	return fmt.Sprintf("%q (at byte %d of %d)", s[start:end], i, len(s))
}

func TestCheckSignalAccepts(t *testing.T) {
	tests := []struct {
		name     string
		data     string
		hideHost bool
		kind     signalKind
		want     string // the exact output; empty means the input's SDP unchanged
	}{
		{
			name: "chrome offer with audio and video",
			data: sdpSignal("offer", chromeOffer),
			kind: kindOffer,
			want: sdpSignal("offer", chromeOffer),
		},
		{
			name: "chrome offer as answer",
			data: sdpSignal("answer", chromeOffer),
			kind: kindAnswer,
			want: sdpSignal("answer", chromeOffer),
		},
		{
			name: "pranswer",
			data: sdpSignal("pranswer", chromeOffer),
			kind: kindPranswer,
			want: sdpSignal("pranswer", chromeOffer),
		},
		{
			name: "rollback without sdp",
			data: `{"sdp":{"type":"rollback"}}`,
			kind: kindRollback,
			want: `{"sdp":{"type":"rollback","sdp":""}}`,
		},
		{
			name: "rollback with empty sdp",
			data: `{"sdp":{"type":"rollback","sdp":""}}`,
			kind: kindRollback,
			want: `{"sdp":{"type":"rollback","sdp":""}}`,
		},
		{
			name: "rollback with null sdp",
			data: `{"sdp":{"type":"rollback","sdp":null}}`,
			kind: kindRollback,
			want: `{"sdp":{"type":"rollback","sdp":""}}`,
		},
		{
			name: "rollback drops a description",
			data: sdpSignal("rollback", chromeOffer),
			kind: kindRollback,
			want: `{"sdp":{"type":"rollback","sdp":""}}`,
		},
		{
			name: "sdp with LF line endings",
			data: sdpSignal("offer", strings.ReplaceAll(chromeOffer, "\r\n", "\n")),
			kind: kindOffer,
			want: sdpSignal("offer", strings.ReplaceAll(chromeOffer, "\r\n", "\n")),
		},
		{
			name: "sdp with HTML characters is not escaped",
			data: sdpSignal("offer", chromeOffer+"a=x-note:<b>&amp;</b>\r\n"),
			kind: kindOffer,
			want: sdpSignal("offer", chromeOffer+"a=x-note:<b>&amp;</b>\r\n"),
		},
		{
			name: "extra members are dropped",
			data: `{"sdp":{"type":"rollback","sdp":"","x":1},"extra":{"a":[1,2]},"Candidate":null}`,
			kind: kindRollback,
			want: `{"sdp":{"type":"rollback","sdp":""}}`,
		},
		{
			name: "extra sdp member is dropped from an offer",
			data: mustJSON(map[string]any{"sdp": map[string]any{"type": "offer", "sdp": chromeOffer, "private": "secret"}}),
			kind: kindOffer,
			want: sdpSignal("offer", chromeOffer),
		},
		{
			name: "srflx candidate with every member",
			data: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"EsAw"}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"EsAw"}}`,
		},
		{
			name: "members in another order and white space",
			data: " {\n \"candidate\" : { \"sdpMLineIndex\" : 1 , \"candidate\" : \"" + relayCandidate + "\" , \"sdpMid\" : \"1\" } }\n",
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + relayCandidate + `","sdpMid":"1","sdpMLineIndex":1}}`,
		},
		{
			name: "relay candidate",
			data: `{"candidate":{"candidate":"` + relayCandidate + `","sdpMid":"0","sdpMLineIndex":0}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + relayCandidate + `","sdpMid":"0","sdpMLineIndex":0}}`,
		},
		{
			name: "candidate without the candidate: prefix",
			data: `{"candidate":{"candidate":"` + strings.TrimPrefix(srflxCandidate, "candidate:") + `","sdpMid":"0"}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + strings.TrimPrefix(srflxCandidate, "candidate:") + `","sdpMid":"0"}}`,
		},
		{
			name: "mDNS host candidate",
			data: `{"candidate":{"candidate":"` + mdnsHostCandidate + `","sdpMid":"0","sdpMLineIndex":0}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + mdnsHostCandidate + `","sdpMid":"0","sdpMLineIndex":0}}`,
		},
		{
			name: "host candidate",
			data: `{"candidate":{"candidate":"` + hostCandidate + `","sdpMLineIndex":0}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + hostCandidate + `","sdpMLineIndex":0}}`,
		},
		{
			name: "tcp host candidate",
			data: `{"candidate":{"candidate":"` + tcpHostCandidate + `","sdpMid":"0"}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + tcpHostCandidate + `","sdpMid":"0"}}`,
		},
		{
			name: "IPv6 candidate",
			data: `{"candidate":{"candidate":"` + ipv6Candidate + `","sdpMid":"0"}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + ipv6Candidate + `","sdpMid":"0"}}`,
		},
		{
			name: "null members are left out",
			data: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":null,"sdpMLineIndex":null,"usernameFragment":null}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + srflxCandidate + `"}}`,
		},
		{
			name: "sdpMLineIndex written as 1.0",
			data: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":1.0}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":1}}`,
		},
		{
			name: "sdpMLineIndex 65535 in exponent form",
			data: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":6.5535e4}}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":65535}}`,
		},
		{
			name: "extra candidate members are dropped",
			data: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":"0","address":"10.0.0.1","foundation":"1","note":"<script>"},"extra":true}`,
			kind: kindCandidate,
			want: `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":"0"}}`,
		},
		{
			name: "end-of-candidates as null",
			data: `{"candidate":null}`,
			kind: kindEndOfCandidates,
			want: `{"candidate":null}`,
		},
		{
			name: "end-of-candidates as an empty object",
			data: `{"candidate":{}}`,
			kind: kindEndOfCandidates,
			want: `{"candidate":{"candidate":""}}`,
		},
		{
			name: "end-of-candidates as an empty string",
			data: `{"candidate":{"candidate":""}}`,
			kind: kindEndOfCandidates,
			want: `{"candidate":{"candidate":""}}`,
		},
		{
			name: "end-of-candidates with sdpMid and sdpMLineIndex",
			data: `{"candidate":{"candidate":"","sdpMid":"0","sdpMLineIndex":0,"x":1}}`,
			kind: kindEndOfCandidates,
			want: `{"candidate":{"candidate":"","sdpMid":"0","sdpMLineIndex":0}}`,
		},
		{
			name: "end-of-candidates with a null candidate and usernameFragment",
			data: `{"candidate":{"candidate":null,"sdpMid":null,"usernameFragment":"EsAw"}}`,
			kind: kindEndOfCandidates,
			want: `{"candidate":{"candidate":"","usernameFragment":"EsAw"}}`,
		},
		{
			name:     "end-of-candidates with hideHost",
			data:     `{"candidate":{"candidate":"","sdpMid":"0"}}`,
			hideHost: true,
			kind:     kindEndOfCandidates,
			want:     `{"candidate":{"candidate":"","sdpMid":"0"}}`,
		},
		{
			name:     "srflx candidate with hideHost",
			data:     `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":"0"}}`,
			hideHost: true,
			kind:     kindCandidate,
			want:     `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":"0"}}`,
		},
		{
			name:     "relay candidate with hideHost",
			data:     `{"candidate":{"candidate":"` + relayCandidate + `","sdpMid":"0"}}`,
			hideHost: true,
			kind:     kindCandidate,
			want:     `{"candidate":{"candidate":"` + relayCandidate + `","sdpMid":"0"}}`,
		},
		{
			name:     "chrome offer with hideHost loses its host candidate",
			data:     sdpSignal("offer", chromeOffer),
			hideHost: true,
			kind:     kindOffer,
			want:     sdpSignal("offer", unspecified(strings.Replace(chromeOffer, chromeHostLine+"\r\n", "", 1))),
		},
		{
			name:     "LF-only sdp with hideHost keeps its line endings",
			data:     sdpSignal("offer", strings.ReplaceAll(chromeOffer, "\r\n", "\n")),
			hideHost: true,
			kind:     kindOffer,
			want:     sdpSignal("offer", unspecified(strings.ReplaceAll(strings.Replace(chromeOffer, chromeHostLine+"\r\n", "", 1), "\r\n", "\n"))),
		},
		{
			name:     "hideHost removes a candidate line that does not parse",
			data:     sdpSignal("offer", chromeOffer+"a=candidate:1 1 udp 1 1.2.3.4 9 typ nonsense\r\n"),
			hideHost: true,
			kind:     kindOffer,
			want:     sdpSignal("offer", unspecified(strings.Replace(chromeOffer, chromeHostLine+"\r\n", "", 1))),
		},
		{
			name:     "hideHost sees a candidate line behind a stray carriage return",
			data:     sdpSignal("offer", chromeOffer+"\r"+chromeHostLine+"\r\n"),
			hideHost: true,
			kind:     kindOffer,
			want:     sdpSignal("offer", unspecified(strings.Replace(chromeOffer, chromeHostLine+"\r\n", "", 1))),
		},
		{
			name: "without hideHost a candidate line that does not parse is kept",
			data: sdpSignal("offer", chromeOffer+"a=candidate:1 1 udp 1 1.2.3.4 9 typ nonsense\r\n"),
			kind: kindOffer,
			want: sdpSignal("offer", chromeOffer+"a=candidate:1 1 udp 1 1.2.3.4 9 typ nonsense\r\n"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkAccepted(t, tt.data, tt.hideHost, tt.kind, tt.want)
		})
	}
}

func TestCheckSignalPionDescriptions(t *testing.T) {
	p := newPionSDP(t)
	if strings.Contains(p.offer, "a=candidate:") {
		t.Fatalf("the offer from CreateOffer has candidates:\n%s", p.offer)
	}
	if strings.Count(p.offer, "\nm=") != 1 || !strings.Contains(p.offer, "m=application ") {
		t.Fatalf("the offer is not data-channel only:\n%s", p.offer)
	}
	if !strings.Contains(p.gatheredOffer, " typ host") || !strings.Contains(p.answer, " typ host") {
		t.Fatalf("pion gathered no host candidate:\n%s\n%s", p.gatheredOffer, p.answer)
	}

	tests := []struct {
		name     string
		typ      string
		sdp      string
		hideHost bool
		kind     signalKind
	}{
		{"data channel offer", "offer", p.offer, false, kindOffer},
		{"data channel offer with hideHost", "offer", p.offer, true, kindOffer},
		{"gathered offer", "offer", p.gatheredOffer, false, kindOffer},
		{"gathered offer with hideHost", "offer", p.gatheredOffer, true, kindOffer},
		{"answer", "answer", p.answer, false, kindAnswer},
		{"answer with hideHost", "answer", p.answer, true, kindAnswer},
		{"answer as pranswer", "pranswer", p.answer, false, kindPranswer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := checkAccepted(t, sdpSignal(tt.typ, tt.sdp), tt.hideHost, tt.kind, "")
			var got struct {
				SDP sessionDescription `json:"sdp"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("output %s: %v", out, err)
			}
			want := tt.sdp
			if tt.hideHost {
				want = unspecified(withoutLines(tt.sdp, " typ host"))
			}
			if got.SDP.Type != tt.typ || got.SDP.SDP != want {
				t.Errorf("got %q %q, want %q %q", got.SDP.Type, got.SDP.SDP, tt.typ, want)
			}
			if tt.hideHost && !strings.Contains(got.SDP.SDP, "a=end-of-candidates\r\n") && strings.Contains(tt.sdp, "a=end-of-candidates\r\n") {
				t.Errorf("hideHost removed a=end-of-candidates:\n%s", got.SDP.SDP)
			}
		})
	}
}

// unspecified is what hideHost makes of the o=, c= and a=rtcp: lines of an
// SDP body: their addresses become 0.0.0.0 (or ::).
func unspecified(body string) string {
	re := regexp.MustCompile(`(?m)^((?:o=|c=|a=rtcp:)(?:.* )?IN IP)([46]) [^\s]+(\r?)$`)
	return re.ReplaceAllStringFunc(body, func(line string) string {
		m := re.FindStringSubmatch(line)
		zero := "0.0.0.0"
		if m[2] == "6" {
			zero = "::"
		}
		return m[1] + m[2] + " " + zero + m[3]
	})
}

// With hideHost no address of the device is left in an SDP body: a host
// candidate's address appears in neither a candidate nor a c=, o= or
// a=rtcp: line.
func TestCheckSignalHideHostLeavesNoAddress(t *testing.T) {
	body := "v=0\r\no=- 1 2 IN IP4 192.168.1.20\r\ns=-\r\nt=0 0\r\n" +
		"m=application 50000 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 192.168.1.20\r\na=rtcp:50001 IN IP4 192.168.1.20\r\n" +
		"a=candidate:1 1 udp 2122260223 192.168.1.20 50000 typ host\r\n" +
		"a=candidate:2 1 udp 1686052607 203.0.113.7 50000 typ srflx raddr 192.168.1.20 rport 50000\r\n" +
		"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=mid:0\r\na=sctp-port:5000\r\n"
	out, _, err := checkSignal([]byte(sdpSignal("offer", body)), testMaxSize, true)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		SDP sessionDescription `json:"sdp"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(got.SDP.SDP, "\r\n") {
		if strings.Contains(line, "192.168.1.20") && !strings.Contains(line, "typ srflx") {
			t.Errorf("the device's address is left in %q", line)
		}
	}
	if !strings.Contains(got.SDP.SDP, "c=IN IP4 0.0.0.0\r\n") || !strings.Contains(got.SDP.SDP, "typ srflx") {
		t.Errorf("want c=IN IP4 0.0.0.0 and the srflx candidate kept, got:\n%s", got.SDP.SDP)
	}
}

// withoutLines returns an SDP body without the CRLF-terminated lines that
// contain substr.
func withoutLines(body, substr string) string {
	lines := strings.SplitAfter(body, "\r\n")
	kept := lines[:0]
	for _, l := range lines {
		if !strings.Contains(l, substr) {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "")
}

func TestCheckSignalHidesHostCandidates(t *testing.T) {
	for _, cand := range []string{hostCandidate, mdnsHostCandidate, tcpHostCandidate, strings.TrimPrefix(hostCandidate, "candidate:")} {
		data := `{"candidate":{"candidate":"` + cand + `","sdpMid":"0","sdpMLineIndex":0}}`
		out, kind, err := checkSignal([]byte(data), testMaxSize, true)
		if err != nil || kind != kindCandidate || out != nil {
			t.Errorf("%s: got %q, %d, %v; want nil, %d, nil", cand, out, kind, err, kindCandidate)
		}
	}
}

func TestCheckSignalRefuses(t *testing.T) {
	sdpNoMedia := "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE\r\n"
	tests := []struct {
		name    string
		data    string
		maxSize int    // zero means testMaxSize
		want    string // a prefix of the message
	}{
		{"empty", ``, 0, dataShape + ", and it is not valid JSON"},
		{"not JSON", `{"sdp":`, 0, dataShape + ", and it is not valid JSON"},
		{"trailing garbage", `{"candidate":null} x`, 0, dataShape + ", and it is not valid JSON"},
		{"array", `[{"candidate":null}]`, 0, dataShape + ", not an array"},
		{"number", `42`, 0, dataShape + ", not a number"},
		{"string", `"{\"candidate\":null}"`, 0, dataShape + ", not a string"},
		{"null", `null`, 0, dataShape + ", not null"},
		{"boolean", `true`, 0, dataShape + ", not a boolean"},
		{"both members", `{"sdp":{"type":"rollback"},"candidate":null}`, 0, dataShape + ", not both"},
		{"neither member", `{}`, 0, dataShape + ", and it has neither"},
		{"member names are case-sensitive", `{"SDP":{"type":"rollback"},"Candidate":null}`, 0, dataShape + ", and it has neither"},
		{"oversized", `{"candidate":null}`, len(`{"candidate":null}`) - 1, "signal data is over 17 bytes"},
		{"oversized sdp", sdpSignal("offer", chromeOffer), 1024, "signal data is over 1024 bytes"},

		{"sdp null", `{"sdp":null}`, 0, `sdp must be an object`},
		{"sdp a string", `{"sdp":"v=0"}`, 0, `sdp must be an object`},
		{"sdp an array", `{"sdp":[]}`, 0, `sdp must be an object`},
		{"sdp.type missing", `{"sdp":{"sdp":"v=0"}}`, 0, "sdp.type must be offer, answer, pranswer or rollback"},
		{"sdp.type unknown", sdpSignal("offer2", chromeOffer), 0, "sdp.type must be offer, answer, pranswer or rollback"},
		{"sdp.type capitalised", sdpSignal("Offer", chromeOffer), 0, "sdp.type must be offer, answer, pranswer or rollback"},
		{"sdp.type a number", `{"sdp":{"type":1,"sdp":"v=0"}}`, 0, "sdp.type must be offer, answer, pranswer or rollback"},
		{"sdp.type null", `{"sdp":{"type":null}}`, 0, "sdp.type must be offer, answer, pranswer or rollback"},
		{"sdp.sdp missing", `{"sdp":{"type":"offer"}}`, 0, "sdp.sdp must be a non-empty string for offer"},
		{"sdp.sdp empty", `{"sdp":{"type":"answer","sdp":""}}`, 0, "sdp.sdp must be a non-empty string for answer"},
		{"sdp.sdp null", `{"sdp":{"type":"pranswer","sdp":null}}`, 0, "sdp.sdp must be a non-empty string for pranswer"},
		{"sdp.sdp a number", `{"sdp":{"type":"offer","sdp":0}}`, 0, "sdp.sdp must be a string"},
		{"sdp.sdp an object for rollback", `{"sdp":{"type":"rollback","sdp":{}}}`, 0, "sdp.sdp must be a string"},
		{"sdp.sdp garbage", sdpSignal("offer", "hello world"), 0, "sdp.sdp does not parse as SDP: "},
		{"sdp.sdp without v=", sdpSignal("offer", strings.TrimPrefix(chromeOffer, "v=0\r\n")), 0, "sdp.sdp does not parse as SDP: "},
		{"sdp.sdp with a bad m= line", sdpSignal("offer", chromeOffer+"m=audio x RTP/AVP 0\r\n"), 0, "sdp.sdp does not parse as SDP: "},
		{"sdp.sdp without its last line break", sdpSignal("offer", strings.TrimSuffix(chromeOffer, "\r\n")), 0, "sdp.sdp does not parse as SDP: unexpected end"},
		{"sdp.sdp white space only", sdpSignal("offer", "\r\n"), 0, "sdp.sdp has no media section (no m= line)"},
		{"sdp.sdp without media", sdpSignal("offer", sdpNoMedia), 0, "sdp.sdp has no media section (no m= line)"},

		{"candidate a string", `{"candidate":"` + srflxCandidate + `"}`, 0, "candidate must be an object (an RTCIceCandidateInit) or null"},
		{"candidate a number", `{"candidate":0}`, 0, "candidate must be an object (an RTCIceCandidateInit) or null"},
		{"candidate an array", `{"candidate":[]}`, 0, "candidate must be an object (an RTCIceCandidateInit) or null"},
		{"candidate false", `{"candidate":false}`, 0, "candidate must be an object (an RTCIceCandidateInit) or null"},
		{"candidate.candidate a number", `{"candidate":{"candidate":1}}`, 0, "candidate.candidate must be a string"},
		{"candidate.candidate an object", `{"candidate":{"candidate":{}}}`, 0, "candidate.candidate must be a string"},
		{"candidate.candidate garbage", `{"candidate":{"candidate":"hello"}}`, 0, "candidate.candidate does not parse as an ICE candidate: "},
		{"candidate.candidate with an a= prefix", `{"candidate":{"candidate":"a=` + srflxCandidate + `"}}`, 0, "candidate.candidate does not parse as an ICE candidate: "},
		{"candidate.candidate unknown type", `{"candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 9 typ nonsense"}}`, 0, "candidate.candidate does not parse as an ICE candidate: "},
		{"candidate.candidate bad address", `{"candidate":{"candidate":"candidate:1 1 udp 1 example.com 9 typ srflx"}}`, 0, "candidate.candidate does not parse as an ICE candidate: "},
		{"candidate.candidate bad port", `{"candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 99999 typ host"}}`, 0, "candidate.candidate does not parse as an ICE candidate: "},
		{"candidate.candidate too long", `{"candidate":{"candidate":"` + srflxCandidate + strings.Repeat(" x y", 250) + `"}}`, 0, "candidate.candidate is over 1024 bytes"},
		{"candidate.candidate with a line break in an mDNS name", `{"candidate":{"candidate":"candidate:1 1 udp 1 x\r\na=x.local 9 typ host"}}`, 0, "candidate.candidate must be printable ASCII"},
		{"candidate.candidate not ASCII", `{"candidate":{"candidate":"candidate:1 1 udp 1 é.local 9 typ host"}}`, 0, "candidate.candidate must be printable ASCII"},
		{"sdpMid a number", `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":0}}`, 0, "candidate.sdpMid must be a string or null"},
		{"sdpMid too long", `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMid":"` + strings.Repeat("m", 65) + `"}}`, 0, "candidate.sdpMid is over 64 bytes"},
		{"sdpMid with a control character", `{"candidate":{"candidate":"","sdpMid":"0\n"}}`, 0, "candidate.sdpMid must be printable ASCII"},
		{"sdpMLineIndex negative", `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":-1}}`, 0, "candidate.sdpMLineIndex must be an integer from 0 to 65535, or null"},
		{"sdpMLineIndex too big", `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":65536}}`, 0, "candidate.sdpMLineIndex must be an integer from 0 to 65535, or null"},
		{"sdpMLineIndex huge", `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":1e400}}`, 0, "candidate.sdpMLineIndex must be an integer from 0 to 65535, or null"},
		{"sdpMLineIndex a fraction", `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":0.5}}`, 0, "candidate.sdpMLineIndex must be an integer from 0 to 65535, or null"},
		{"sdpMLineIndex a string", `{"candidate":{"candidate":"` + srflxCandidate + `","sdpMLineIndex":"0"}}`, 0, "candidate.sdpMLineIndex must be an integer from 0 to 65535, or null"},
		{"sdpMLineIndex a boolean", `{"candidate":{"candidate":"","sdpMLineIndex":true}}`, 0, "candidate.sdpMLineIndex must be an integer from 0 to 65535, or null"},
		{"usernameFragment a number", `{"candidate":{"candidate":"` + srflxCandidate + `","usernameFragment":1}}`, 0, "candidate.usernameFragment must be a string or null"},
		{"usernameFragment too long", `{"candidate":{"candidate":"` + srflxCandidate + `","usernameFragment":"` + strings.Repeat("u", 257) + `"}}`, 0, "candidate.usernameFragment is over 256 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			maxSize := tt.maxSize
			if maxSize == 0 {
				maxSize = testMaxSize
			}
			for _, hideHost := range []bool{false, true} {
				out, kind, err := checkSignal([]byte(tt.data), maxSize, hideHost)
				if err == nil {
					t.Fatalf("hideHost %v: got %s, kind %d; want error %q", hideHost, out, kind, tt.want)
				}
				if out != nil || kind != 0 {
					t.Errorf("hideHost %v: got out %q and kind %d with an error, want nil and 0", hideHost, out, kind)
				}
				if err.Code != CodeBadRequest {
					t.Errorf("hideHost %v: got code %q, want %q", hideHost, err.Code, CodeBadRequest)
				}
				if !strings.HasPrefix(err.Message, tt.want) {
					t.Errorf("hideHost %v: got message %q, want it to start with %q", hideHost, err.Message, tt.want)
				}
			}
		})
	}
}

func TestCheckSignalSizeBoundary(t *testing.T) {
	data := []byte(`{"candidate":null}`)
	if _, _, err := checkSignal(data, len(data), false); err != nil {
		t.Errorf("data of exactly maxSize bytes: got %v, want nil", err)
	}
	// U+2028 is three bytes in the input and a six-byte escape once
	// re-encoded, so the output can outgrow an input that fitted.
	grown := strings.Replace(sdpSignal("offer", chromeOffer+"a=x-note:LSEP\r\n"), "LSEP", strings.Repeat("\u2028", 10), 1)
	if _, _, err := checkSignal([]byte(grown), len(grown), false); err == nil {
		t.Error("an output over maxSize was accepted")
	}
}

func TestCheckSignalParseReasonIsShort(t *testing.T) {
	long := `{"candidate":{"candidate":"candidate:1 1 udp 1 ` + strings.Repeat("x", 900) + ` 9 typ srflx"}}`
	_, _, err := checkSignal([]byte(long), testMaxSize, false)
	if err == nil {
		t.Fatal("got nil error, want one")
	}
	if len(err.Message) > 250 {
		t.Errorf("got a %d-byte message, want at most 250: %s", len(err.Message), err.Message)
	}
}
