package loadtest

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func TestSSEEndpoint(t *testing.T) {
	tests := []struct {
		name, url, want, err string
	}{
		{"ws", "ws://127.0.0.1:8080/v1/ws", "http://127.0.0.1:8080/v1/sse", ""},
		{"wss", "wss://example.com/v1/ws", "https://example.com/v1/sse", ""},
		{"behind a prefix", "ws://127.0.0.1/parley/v1/ws", "http://127.0.0.1/parley/v1/sse", ""},
		{"another ws path", "ws://127.0.0.1/rt/ws", "http://127.0.0.1/rt/sse", ""},
		{"query kept", "ws://127.0.0.1/v1/ws?x=1", "http://127.0.0.1/v1/sse?x=1", ""},
		{"wrong path", "ws://127.0.0.1/v1/socket", "", `cannot derive the SSE endpoint: the path "/v1/socket" does not end in /v1/ws`},
		{"trailing slash", "ws://127.0.0.1/v1/ws/", "", "does not end in /v1/ws"},
		{"no path", "ws://127.0.0.1:8080", "", "does not end in /v1/ws"},
		{"scheme", "ftp://127.0.0.1/v1/ws", "", `scheme "ftp": want ws or wss`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sseEndpoint(tt.url)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %q, %v, want an error mentioning %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

// event is an sseEvent that compares as a value.
type event struct{ Type, Data, ID string }

// parseAll reads every event of r.
func parseAll(r io.Reader) ([]event, error) {
	p := newSSEParser(r)
	var out []event
	for {
		e, err := p.next()
		if err != nil {
			return out, err
		}
		out = append(out, event{e.Type, string(e.Data), e.ID})
	}
}

func TestSSEParse(t *testing.T) {
	tests := []struct {
		name, in string
		want     []event
	}{
		{"node's welcome", "retry: 3000\n\nevent: welcome\ndata: {\"rooms\":{}}\nid: c1\n\n", []event{{"welcome", `{"rooms":{}}`, "c1"}}},
		{"multi-line data", "data: a\ndata:\ndata: b\n\n", []event{{"", "a\n\nb", ""}}},
		{"comments", ": ping\n\n: x\ndata: y\n: z\n\n", []event{{"", "y", ""}}},
		{"no space after the colon", "event:message\ndata:x\n\n", []event{{"message", "x", ""}}},
		{"only one space removed", "data:  x \n\n", []event{{"", " x ", ""}}},
		{"CRLF", "event: welcome\r\ndata: {}\r\nid: 1\r\n\r\ndata: a\r\n\r\n", []event{{"welcome", "{}", "1"}, {"", "a", "1"}}},
		{"CR", "data: a\rdata: b\r\rdata: c\r\r", []event{{"", "a\nb", ""}, {"", "c", ""}}},
		{"mixed line ends", "data: a\r\n\ndata: b\n\r", []event{{"", "a", ""}, {"", "b", ""}}},
		{"field without a colon", "data\n\n", []event{{"", "", ""}}},
		{"id kept, type not", "event: x\nid: 7\ndata: a\n\ndata: b\n\n", []event{{"x", "a", "7"}, {"", "b", "7"}}},
		{"id with NUL ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", []event{{"", "a", "1"}, {"", "b", "1"}}},
		{"no data, no event", "event: x\n\ndata: b\n\n", []event{{"", "b", ""}}},
		{"unknown fields", "retry: x\nfoo: bar\ndata: a\n\n", []event{{"", "a", ""}}},
		{"unfinished event dropped", "data: a\n\ndata: b\n", []event{{"", "a", ""}}},
		{"byte order mark", "\xef\xbb\xbfdata: a\n\n", []event{{"", "a", ""}}},
		{"colon in the value", "data: {\"a\":1}\n\n", []event{{"", `{"a":1}`, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []struct {
				name string
				r    io.Reader
			}{{"whole", strings.NewReader(tt.in)}, {"byte by byte", iotest.OneByteReader(strings.NewReader(tt.in))}} {
				got, err := parseAll(r.r)
				if !errors.Is(err, io.EOF) {
					t.Errorf("%s: got error %v, want io.EOF", r.name, err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("%s: got %q, want %q", r.name, got, tt.want)
				}
			}
		})
	}
}

func TestSSEParseBounds(t *testing.T) {
	for _, in := range []string{
		"data: " + strings.Repeat("x", maxSSEEvent) + "\n\n",
		strings.Repeat("data: "+strings.Repeat("x", 1000)+"\n", maxSSEEvent/1000+1) + "\n",
	} {
		if _, err := parseAll(strings.NewReader(in)); !errors.Is(err, errSSETooLong) {
			t.Errorf("got %v, want %v", err, errSSETooLong)
		}
	}
}

// FuzzSSEParse checks that the parser never panics, never returns an event
// larger than its input, and reads the same events however the input is cut.
func FuzzSSEParse(f *testing.F) {
	for _, seed := range []string{
		"retry: 3000\n\nevent: welcome\ndata: {\"rooms\":{\"load-0\":{\"epoch\":\"e\",\"offset\":0}}}\nid: YWJj\n\n",
		"event: message\ndata: {\"type\":\"message\",\"room\":\"load-0\",\"offset\":1,\"data\":{\"sent\":1}}\nid: x\n\n: ping\n\n",
		"data: a\r\ndata:b\r\n\r\n",
		"data: a\rdata: b\r\r",
		"\xef\xbb\xbfdata\n\nid: 1\x00\n:\n\n",
		"event: error\ndata: {}\n\nevent: reconnect\ndata: {}\n\n",
		"data: unfinished",
		"\r\n\r\r\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		whole, errWhole := parseAll(strings.NewReader(string(in)))
		for _, e := range whole {
			if n := len(e.Type) + len(e.Data) + len(e.ID); n > len(in) {
				t.Fatalf("got an event of %d bytes from %d: %q", n, len(in), e)
			}
		}
		bytewise, errBytewise := parseAll(iotest.OneByteReader(strings.NewReader(string(in))))
		if !reflect.DeepEqual(whole, bytewise) || errWhole != errBytewise {
			t.Fatalf("whole: %q (%v); byte by byte: %q (%v)", whole, errWhole, bytewise, errBytewise)
		}
	})
}
