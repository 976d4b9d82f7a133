package signaling

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pion/ice/v4"
)

// FuzzCheckSignal checks that checkSignal never panics, refuses only with
// bad_request and a message, and that what it accepts is valid JSON that it
// accepts again unchanged, with the same kind and, with hideHost, without a
// host candidate. The seed corpus is in testdata/fuzz/FuzzCheckSignal.
func FuzzCheckSignal(f *testing.F) {
	f.Add([]byte(sdpSignal("offer", chromeOffer)), false)
	f.Add([]byte(sdpSignal("answer", chromeOffer)), true)
	f.Add([]byte(`{"candidate":{"candidate":"`+hostCandidate+`","sdpMid":"0","sdpMLineIndex":0}}`), true)
	f.Add([]byte(`{"candidate":{"candidate":"`+tcpHostCandidate+`","sdpMid":"0","sdpMLineIndex":0}}`), false)
	f.Add([]byte(`{"candidate":{"candidate":"`+ipv6Candidate+`","sdpMLineIndex":1e0}}`), false)

	f.Fuzz(func(t *testing.T, data []byte, hideHost bool) {
		out, kind, err := checkSignal(data, testMaxSize, hideHost)
		if err != nil {
			if out != nil || kind != 0 {
				t.Fatalf("got out %q and kind %d with error %v", out, kind, err)
			}
			if err.Code != CodeBadRequest || err.Message == "" {
				t.Fatalf("got error %#v, want bad_request with a message", err)
			}
			return
		}
		if kind < kindOffer || kind > kindEndOfCandidates {
			t.Fatalf("got kind %d", kind)
		}
		if out == nil {
			if !hideHost || kind != kindCandidate {
				t.Fatalf("got no output for kind %d with hideHost %v", kind, hideHost)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("output is not valid JSON: %q", out)
		}
		if len(out) > testMaxSize {
			t.Fatalf("output is %d bytes, over maxSize %d", len(out), testMaxSize)
		}
		again, kind2, err := checkSignal(out, testMaxSize, hideHost)
		if err != nil {
			t.Fatalf("output %q is refused: %v", out, err)
		}
		if kind2 != kind || !bytes.Equal(again, out) {
			t.Fatalf("checking the output again: got %q kind %d, want %q kind %d", again, kind2, out, kind)
		}
		if hideHost {
			checkNoHost(t, out)
		}
	})
}

// checkNoHost fails the test if accepted signal data carries a host
// candidate, on its own or in an SDP body.
func checkNoHost(t *testing.T, out []byte) {
	t.Helper()
	var signal struct {
		SDP       *sessionDescription `json:"sdp"`
		Candidate *iceCandidate       `json:"candidate"`
	}
	if err := json.Unmarshal(out, &signal); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	var candidates []string
	if signal.Candidate != nil && signal.Candidate.Candidate != "" {
		candidates = append(candidates, signal.Candidate.Candidate)
	}
	if signal.SDP != nil {
		for line := range strings.Lines(signal.SDP.SDP) {
			line = strings.Trim(line, "\r\n")
			if value, ok := strings.CutPrefix(line, "a="); ok && strings.HasPrefix(value, "candidate:") {
				candidates = append(candidates, value)
			}
		}
	}
	for _, c := range candidates {
		parsed, err := ice.UnmarshalCandidate(c)
		if err == nil && parsed.Type() == ice.CandidateTypeHost {
			t.Fatalf("hideHost let a host candidate through: %q", c)
		}
	}
}
