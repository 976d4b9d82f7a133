package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/coder/websocket"
)

// wsSub is a subscriber that reads one room over WebSocket with as little
// work per message as the protocol allows: one goroutine, one reused
// buffer, and the message's offset and send time picked out of the frame
// without decoding it, so that thousands of them on the generator's cores
// leave the node's share of the CPU as large as possible. It answers the
// node's pings; it does not reconnect (the resume scenario uses the SDK's
// client, which does).
type wsSub struct {
	c      *websocket.Conn
	cancel context.CancelFunc
	ctx    context.Context
	buf    []byte
}

// maxWSFrame bounds what a subscriber reads in one WebSocket message.
const maxWSFrame = 1 << 20

// dialWS connects to endpoint, reads the welcome and subscribes to room,
// returning once the node has acknowledged the subscription.
func dialWS(ctx context.Context, hc *http.Client, endpoint, room, token string) (*wsSub, error) {
	target := endpoint
	if token != "" {
		u, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("loadtest: %q: %w", endpoint, err)
		}
		q := u.Query()
		q.Set("token", token)
		u.RawQuery = q.Encode()
		target = u.String()
	}
	dctx, cancelDial := context.WithTimeout(ctx, welcomeTimeout)
	defer cancelDial()
	c, _, err := websocket.Dial(dctx, target, &websocket.DialOptions{
		Subprotocols:    []string{"parley.v1"},
		HTTPClient:      hc,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, fmt.Errorf("loadtest: dial: %w", err)
	}
	c.SetReadLimit(maxWSFrame)
	sctx, cancel := context.WithCancel(ctx)
	s := &wsSub{c: c, cancel: cancel, ctx: sctx}
	fail := func(err error) (*wsSub, error) {
		s.Close()
		return nil, err
	}
	f, err := s.next(dctx)
	if err != nil {
		return fail(fmt.Errorf("loadtest: reading the welcome: %w", err))
	}
	if t := frameType(f); t != "welcome" {
		return fail(fmt.Errorf("loadtest: got a %q frame, want the welcome: %.200s", t, f))
	}
	sub, _ := json.Marshal(map[string]string{"type": "subscribe", "id": "s", "room": room})
	if err := c.Write(dctx, websocket.MessageText, sub); err != nil {
		return fail(fmt.Errorf("loadtest: subscribe: %w", err))
	}
	for {
		f, err := s.next(dctx)
		if err != nil {
			return fail(fmt.Errorf("loadtest: subscribe: %w", err))
		}
		for line := range bytes.SplitSeq(f, []byte("\n")) {
			var r struct {
				Type    string `json:"type"`
				ID      string `json:"id"`
				Code    string `json:"code"`
				Message string `json:"message"`
			}
			if json.Unmarshal(line, &r) != nil || r.ID != "s" {
				continue
			}
			if r.Type == "ack" {
				return s, nil
			}
			return fail(fmt.Errorf("loadtest: subscribe %s: %s: %s", room, r.Code, r.Message))
		}
	}
}

// next reads one WebSocket message into the subscriber's buffer; the bytes
// are valid until the next call.
func (s *wsSub) next(ctx context.Context) ([]byte, error) {
	typ, r, err := s.c.Reader(ctx)
	if err != nil {
		return nil, err
	}
	if typ != websocket.MessageText {
		return nil, errors.New("loadtest: a binary frame from the node")
	}
	s.buf = s.buf[:0]
	for {
		if len(s.buf) == cap(s.buf) {
			s.buf = append(s.buf, 0)[:len(s.buf)]
		}
		n, err := r.Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+n]
		if err == io.EOF {
			return s.buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// pong is the answer to the node's ping.
var pong = []byte(`{"type":"pong"}`)

// read passes each room message to message until the connection ends or
// Close is called. One goroutine calls it.
func (s *wsSub) read(message func(offset uint64, data []byte)) {
	for {
		// Close ends a read under a context that cannot be cancelled: under
		// one that can, coder/websocket arms and disarms a timer for every
		// message, a tenth of the generator's CPU with 10,000 subscribers.
		b, err := s.next(context.Background())
		if err != nil {
			return
		}
		for len(b) > 0 {
			line := b
			if i := bytes.IndexByte(b, '\n'); i >= 0 {
				line, b = b[:i], b[i+1:]
			} else {
				b = nil
			}
			if offset, data, ok := messageFields(line); ok {
				message(offset, data)
				continue
			}
			if frameType(line) == "ping" {
				wctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
				err := s.c.Write(wctx, websocket.MessageText, pong)
				cancel()
				if err != nil {
					return
				}
			}
		}
	}
}

// Close ends the connection; a read in progress returns.
func (s *wsSub) Close() error {
	s.cancel()
	return s.c.CloseNow()
}

// messagePrefix starts every message frame the node encodes; the fields
// follow in a fixed order: room, offset, epoch, data, from, ts.
var messagePrefix = []byte(`{"type":"message","room":"`)

// messageFields returns the offset of a message frame as the node encodes
// it, and data, which starts at the message's data and runs on to the end
// of the frame, reading no more of the frame than it must; ok is false for
// any other frame.
func messageFields(f []byte) (offset uint64, data []byte, ok bool) {
	rest, found := bytes.CutPrefix(f, messagePrefix)
	if !found {
		return 0, nil, false
	}
	// Room names hold no quote or backslash (the node refuses them).
	i := bytes.IndexByte(rest, '"')
	if i < 0 {
		return 0, nil, false
	}
	rest, found = bytes.CutPrefix(rest[i+1:], []byte(`,"offset":`))
	if !found {
		return 0, nil, false
	}
	offset, n := digits(rest)
	if n == 0 {
		return 0, nil, false
	}
	j := bytes.Index(rest[n:], []byte(`"data":`))
	if j < 0 {
		return 0, nil, false
	}
	return offset, rest[n+j+len(`"data":`):], true
}

// digits reads the decimal number at the start of b, returning it and how
// many bytes it took: 0 when b starts with no digit or the number has more
// than 19 digits.
func digits(b []byte) (v uint64, n int) {
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		if n == 19 {
			return 0, 0
		}
		v = v*10 + uint64(b[n]-'0')
		n++
	}
	return v, n
}

// frameType returns the type of a server frame, "" if it has none.
func frameType(f []byte) string {
	if i := bytes.IndexByte(f, '\n'); i >= 0 {
		f = f[:i]
	}
	var t struct {
		Type string `json:"type"`
	}
	json.Unmarshal(f, &t)
	return t.Type
}

// sentAt returns the send time a publisher put in data (Unix nanoseconds),
// 0 if it has none. It looks for the payload's "sent" field without
// decoding the rest, and decodes data only if that fails.
func sentAt(data []byte) int64 {
	if rest, ok := bytes.CutPrefix(data, []byte(`{"sent":`)); ok {
		if v, n := digits(rest); n > 0 && n < len(rest) && (rest[n] == ',' || rest[n] == '}') && v <= 1<<62 {
			return int64(v)
		}
	}
	var p payload
	if json.Unmarshal(data, &p) == nil {
		return p.Sent
	}
	return 0
}
