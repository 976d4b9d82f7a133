package gateway

import (
	"bytes"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// The seed corpora also live in testdata/fuzz/<target>/, so plain go test
// runs them; crashers the fuzzer finds are kept there.

func FuzzDecodeClientFrame(f *testing.F) {
	for _, seed := range []string{
		`{"type":"subscribe","id":"1","room":"chat:lobby"}`,
		`{"type":"subscribe","id":"2","room":"chat:lobby","since":{"epoch":"AbC-_9","offset":42},"presence":true}`,
		`{"type":"unsubscribe","id":"3","room":"a"}`,
		`{"type":"publish","id":"4","room":"a","data":{"text":"hi"},"key":"k1"}`,
		`{"type":"publish","room":"a","data":null}`,
		`{"type":"pong"}`,
		`{"type":"presence","id":"5","room":"chat:lobby","cursor":"c2Vzcy0x","limit":1000}`,
		`{"type":"presence","room":"a","limit":1001}`,
		`{"type":"presence","room":"a","limit":-1,"cursor":7}`,
		`{"type":"join","call":"c1"}`,
		`{"type":"refresh","id":"9","token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIiwiZXhwIjoxfQ.c2ln"}`,
		`{"type":"refresh","id":"10"}`,
		`{"type":"refresh","token":""}`,
		`{"type":"refresh","token":5}`,
		`{"type":"refresh","token":"a.b.c","room":"x","data":1}`,
		`{"type":"subscribe","room":""}`,
		`{"type":"subscribe","room":null}`,
		`{"type":"subscribe","id":"` + strings.Repeat("i", 65) + `","room":5}`,
		`{"type":"subscribe","room":"` + strings.Repeat("r", 129) + `"}`,
		`{"type":"publish","room":"a","data":1,"key":"` + strings.Repeat("k", 65) + `"}`,
		`{"TYPE":"pong","Room":"x"}`,
		`{"type":"subscribe","room":"a","room":""}`,
		`{"type":"subscribe","room":"caf\u00e9"}`,
		`{"id":"\ud800","type":"pong"}`,
		`{"type":"subscribe","room":"a","since":{"offset":-1}}`,
		`[1,2,3]`,
		`null`,
		`{"type":`,
		``,
		`{"type":"subscribe","id":12}`,
		`{"type":"subscribe","id":1e400,"room":"a"}`,
		`{"type":"subscribe","id":` + strings.Repeat("1", 65) + `,"room":"a"}`,
		`{"type":"subscribe","id":"m1",`,
		`{"type":"subscribe","id":"g1","room":"a"} x`,
		`{"type":"pong"}` + "\n" + `{"type":"pong"}`,
		`{"type":"subscribe","id":"s","room":"a","since":5}`,
		`{"type":"subscribe","room":"a","since":{"epoch":5,"offset":1}}`,
		`{"type":"subscribe","room":"a","presence":"yes"}`,
		`{"type":"presence","room":"a","limit":"10"}`,
		`{"type":"publish","room":"a","data":1,"key":5}`,
		`{"ID":12,"type":7}`,
		`{"id":"a","id":"b",`,
		`"json: Go struct"`,
		" \t ",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, perr := decodeClientFrame(b)
		// The reply to a frame carries its id, so an id is never over the
		// bound, whether the frame was accepted or not.
		if len(fr.ID) > maxIDLen {
			t.Fatalf("id of %d bytes: got %q, want at most %d bytes", len(fr.ID), fr.ID, maxIDLen)
		}
		if perr != nil {
			if perr.Code != codeBadRequest && perr.Code != codeBadRoom {
				t.Fatalf("error code: got %q, want %q or %q", perr.Code, codeBadRequest, codeBadRoom)
			}
			if perr.Message == "" {
				t.Fatal("error without a message")
			}
			// The message is in the protocol's words; only an unknown type
			// is quoted back as the client wrote it.
			if !strings.HasPrefix(perr.Message, "unknown type") {
				errTestNoGoWords(t, perr.Message)
			}
			if e := encodeError(fr.ID, perr); !json.Valid(e) {
				t.Fatalf("error frame %q is not JSON", e)
			}
			return
		}
		switch fr.Type {
		case "subscribe", "unsubscribe":
			if !validRoom(fr.Room) {
				t.Fatalf("accepted %s with room %q", fr.Type, fr.Room)
			}
		case "publish":
			if !validRoom(fr.Room) {
				t.Fatalf("accepted publish with room %q", fr.Room)
			}
			if len(fr.Data) == 0 || !json.Valid(fr.Data) {
				t.Fatalf("accepted publish with data %q", fr.Data)
			}
			if len(fr.Key) > maxIDLen {
				t.Fatalf("accepted publish with a key of %d bytes", len(fr.Key))
			}
		case "presence":
			if !validRoom(fr.Room) || fr.Limit != nil && (*fr.Limit < 1 || *fr.Limit > 1000) || len(fr.Cursor) > maxCursor {
				t.Fatalf("accepted presence with room %q, limit %v, cursor of %d bytes", fr.Room, fr.Limit, len(fr.Cursor))
			}
		case "refresh":
			if fr.Token == "" {
				t.Fatal("accepted refresh without a token")
			}
		case "join", "leave":
			if !validRoom(fr.Call) || len(fr.Resume) > 256 {
				t.Fatalf("accepted %s with call %q, resume of %d bytes", fr.Type, fr.Call, len(fr.Resume))
			}
		case "signal":
			if !validRoom(fr.Call) || fr.To == "" || len(fr.To) > maxIDLen || len(fr.Data) == 0 || !json.Valid(fr.Data) {
				t.Fatalf("accepted signal with call %q, to %q, data %q", fr.Call, fr.To, fr.Data)
			}
		case "pong":
		default:
			t.Fatalf("accepted type %q", fr.Type)
		}
		// An accepted frame, encoded again, decodes to itself.
		enc, err := json.Marshal(fr)
		if err != nil {
			t.Fatalf("encoding accepted frame %+v: %v", fr, err)
		}
		again, perr := decodeClientFrame(enc)
		if perr != nil {
			t.Fatalf("re-decoding %s: %v", enc, perr)
		}
		var d1, d2 bytes.Buffer
		json.Compact(&d1, fr.Data)
		json.Compact(&d2, again.Data)
		fr.Data, again.Data = d1.Bytes(), d2.Bytes()
		if !reflect.DeepEqual(again, fr) {
			t.Fatalf("re-decoding %s: got %+v, want %+v", enc, again, fr)
		}
	})
}

func FuzzDecodeCursor(f *testing.F) {
	for _, c := range []cursor{
		{},
		{"chat:lobby": {Epoch: "AbC-_9xyz012", Offset: 42}},
		{"a": {Epoch: "e", Offset: 0}, "b": {Epoch: "e", Offset: 18446744073709551615}, "c.d@x-y_z:1": {Epoch: strings.Repeat("E", 64), Offset: 7}},
		{strings.Repeat("r", 128): {Epoch: "e", Offset: 1}},
	} {
		f.Add(c.encode())
	}
	for _, seed := range []string{
		"not base64!",
		"YSBlIDE=",                         // "a e 1" with padding
		"YSBlIDF",                          // "a e 1" with non-zero trailing bits
		"YSBlIDAwMQ",                       // "a e 001": leading zeros
		"YSBlIDEsYSBlIDI",                  // "a e 1,a e 2": a room twice
		"YSBlIC0x",                         // "a e -1"
		"YSBlIDE4NDQ2NzQ0MDczNzA5NTUxNjE2", // offset 2^64
		"YSBlIDEs",                         // "a e 1,": an empty part
		"YSBl",                             // "a e": two fields
		"YSAgZSAx",                         // "a  e 1": an empty field
		"YWIg\nZSAx",                       // "ab e 1" with a newline, which base64 skips
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		if err != nil {
			if c != nil {
				t.Fatalf("got cursor %v with error %v, want none", c, err)
			}
			return
		}
		for room, p := range c {
			if !validRoom(room) || !validEpoch(p.Epoch) {
				t.Fatalf("accepted room %q at %v", room, p)
			}
		}
		enc := c.encode()
		again, err := decodeCursor(enc)
		if err != nil {
			t.Fatalf("decodeCursor(%q), the encoding of %v: %v", enc, c, err)
		}
		if !maps.Equal(again, c) {
			t.Fatalf("decodeCursor(encode(%v)): got %v", c, again)
		}
		// The encoding is canonical: one string per cursor.
		if again.encode() != enc {
			t.Fatalf("encode is not stable: got %q, then %q", enc, again.encode())
		}
	})
}

// FuzzForwardedClient: whatever the headers say, the client address is the
// TCP peer unless the peer is a trusted proxy, and is always an address that
// the peer or the headers named.
func FuzzForwardedClient(f *testing.F) {
	for _, seed := range []struct{ peer, xff, fwd string }{
		{"10.0.0.1:443", "203.0.113.7", ""},
		{"10.0.0.1:443", "203.0.113.7, 10.0.0.2", ""},
		{"10.0.0.1:443", "", `for="[2001:db8::1]:4711";proto=https, for=10.0.0.2`},
		{"10.0.0.1:443", "unknown, _hidden", `for=unknown`},
		{"192.0.2.1:80", "203.0.113.7", `for=198.51.100.1`},
		{"[::ffff:10.0.0.1]:1", "::ffff:203.0.113.9", ""},
		{"not an address", "1.2.3.4", ""},
		{"10.0.0.1:443", `"1.2.3.4"`, `for="\"quoted\";x", by=1`},
	} {
		f.Add(seed.peer, seed.xff, seed.fwd)
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	f.Fuzz(func(t *testing.T, peer, xff, fwd string) {
		h := http.Header{}
		if xff != "" {
			h.Set("X-Forwarded-For", xff)
		}
		if fwd != "" {
			h.Set("Forwarded", fwd)
		}
		got := forwardedClient(peer, h, trusted)
		host, _, err := net.SplitHostPort(peer)
		if err != nil {
			host = peer
		}
		pa, perr := netip.ParseAddr(host)
		if perr != nil || !isTrusted(normalize(pa), trusted) {
			if got != host && !(perr == nil && got == normalize(pa).String()) {
				t.Fatalf("untrusted peer %q: got client %q, want the peer", peer, got)
			}
			return
		}
		if got == host || got == normalize(pa).String() {
			return
		}
		a, err := netip.ParseAddr(got)
		if err != nil {
			t.Fatalf("peer %q, headers %q %q: got client %q, not an address", peer, xff, fwd, got)
		}
		if !strings.Contains(xff+fwd, strings.TrimPrefix(a.String(), "::ffff:")) && !strings.Contains(strings.ToLower(xff+fwd), a.String()) {
			t.Logf("client %q is not spelled as such in the headers %q %q", got, xff, fwd)
		}
	})
}
