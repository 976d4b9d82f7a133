package signaling

import (
	"encoding/json"
	"strconv"
)

// peerFrame encodes a `peer` server frame.
func peerFrame(call, event, session, user string, polite bool) []byte {
	b, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Call    string `json:"call"`
		Event   string `json:"event"`
		Session string `json:"session"`
		User    string `json:"user"`
		Polite  bool   `json:"polite"`
	}{"peer", call, event, session, user, polite})
	return b
}

// appendSignalFrame appends a `signal` server frame carrying data, which
// checkSignal encoded, to b. Call names and peer identities need no JSON
// escaping beyond what strconv.Quote does for ASCII, and they are ASCII.
func appendSignalFrame(b []byte, call, from string, data []byte) []byte {
	b = append(b, `{"type":"signal","call":`...)
	b = strconv.AppendQuote(b, call)
	b = append(b, `,"from":`...)
	b = strconv.AppendQuote(b, from)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, '}')
}
