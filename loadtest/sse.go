package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxSSEEvent bounds a line and an event's data on a subscriber's stream.
const maxSSEEvent = 1 << 20

// welcomeTimeout bounds the wait for a stream's welcome event.
const welcomeTimeout = 10 * time.Second

// sseEndpoint returns the SSE endpoint of the node whose WebSocket endpoint
// is wsURL: ws://host/v1/ws becomes http://host/v1/sse (wss: https), and a
// path that does not end in /v1/ws has its last element, which must be ws,
// replaced by sse.
func sseEndpoint(wsURL string) (string, error) {
	u, err := siblingEndpoint(wsURL, "sse", "SSE endpoint")
	if err != nil {
		return "", err
	}
	return u.String(), nil
}

// siblingEndpoint returns the HTTP endpoint named name beside the node's
// WebSocket endpoint wsURL (http for ws, https for wss): the last element of
// its path, which must be ws, replaced by name. what names the endpoint in
// errors.
func siblingEndpoint(wsURL, name, what string) (*url.URL, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %q: %w", wsURL, err)
	}
	switch u.Scheme {
	case "ws", "http":
		u.Scheme = "http"
	case "wss", "https":
		u.Scheme = "https"
	default:
		return nil, fmt.Errorf("loadtest: %s: scheme %q: want ws or wss", wsURL, u.Scheme)
	}
	dir, last, _ := cutLast(u.Path, "/")
	if last != "ws" {
		return nil, fmt.Errorf("loadtest: %s: cannot derive the %s: the path %q does not end in /v1/ws (or another /ws)", wsURL, what, u.Path)
	}
	u.Path, u.RawPath, u.Fragment = dir+"/"+name, "", ""
	return u, nil
}

// cutLast slices s around the last instance of sep.
func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return "", s, false
}

// sseSub is a subscriber that reads one room over SSE: a GET the node
// answers with a stream that stays open.
type sseSub struct {
	body   io.ReadCloser
	events *sseParser
	cancel context.CancelFunc
}

// dialSSE opens endpoint's stream of room and reads it up to its welcome
// event, so the subscription exists when it returns. The stream lives until
// Close or ctx is done.
func dialSSE(ctx context.Context, hc *http.Client, endpoint, room, token string) (*sseSub, error) {
	sep := "?"
	if strings.Contains(endpoint, "?") {
		sep = "&"
	}
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+sep+"rooms="+url.QueryEscape(room), nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("loadtest: sse: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	timer := time.AfterFunc(welcomeTimeout, cancel)
	s, err := openSSE(hc, req, room)
	if !timer.Stop() {
		if s != nil {
			s.body.Close()
		}
		cancel()
		return nil, fmt.Errorf("loadtest: sse: no welcome event within %s", welcomeTimeout)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	s.cancel = cancel
	return s, nil
}

// openSSE sends req and reads its answer up to the welcome event.
func openSSE(hc *http.Client, req *http.Request, room string) (*sseSub, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("loadtest: sse: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("loadtest: sse: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		return nil, fmt.Errorf("loadtest: sse: got content type %q, want text/event-stream", resp.Header.Get("Content-Type"))
	}
	s := &sseSub{body: resp.Body, events: newSSEParser(resp.Body)}
	e, err := s.events.next()
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("loadtest: sse: before the welcome event: %w", err)
	}
	if e.Type != "welcome" {
		resp.Body.Close()
		return nil, fmt.Errorf("loadtest: sse: got a %q event, want the welcome: %.200s", e.Type, e.Data)
	}
	var welcome struct {
		Rooms map[string]json.RawMessage `json:"rooms"`
	}
	if err := json.Unmarshal(e.Data, &welcome); err != nil || welcome.Rooms[room] == nil {
		resp.Body.Close()
		return nil, fmt.Errorf("loadtest: sse: the welcome does not name room %s: %.200s", room, e.Data)
	}
	return s, nil
}

// read passes each room message of the stream to message until the stream
// ends or Close is called. One goroutine calls it.
func (s *sseSub) read(message func(offset uint64, data []byte)) {
	for {
		e, err := s.events.next()
		if err != nil {
			return
		}
		if e.Type != "" && e.Type != "message" {
			continue // welcome, error, reconnect
		}
		var m struct {
			Offset uint64          `json:"offset"`
			Data   json.RawMessage `json:"data"`
		}
		if json.Unmarshal(e.Data, &m) == nil {
			message(m.Offset, m.Data)
		}
	}
}

// Close ends the stream; a read in progress returns.
func (s *sseSub) Close() error {
	s.cancel()
	return s.body.Close()
}

// sseEvent is one event of a text/event-stream.
type sseEvent struct {
	// Type is the event field; empty means "message".
	Type string
	// Data is the data lines, joined by \n.
	Data []byte
	// ID is the stream's last event ID when the event was dispatched.
	ID string
}

var errSSETooLong = errors.New("loadtest: sse: a line or event over 1 MiB")

// sseParser reads events from a text/event-stream as the WHATWG HTML
// standard's EventSource parsing rules say, except that it does not
// replace invalid UTF-8.
type sseParser struct {
	r       *bufio.Reader
	line    []byte
	started bool // a line has been read: a byte order mark is behind
	afterCR bool // the last line ended in CR: a LF now belongs to it

	typ  string
	data []byte
	id   string
}

func newSSEParser(r io.Reader) *sseParser {
	return &sseParser{r: bufio.NewReaderSize(r, 4096)}
}

// next returns the next event. At the end of the stream it returns io.EOF
// (or the read's error) and drops an event that no blank line completed.
// The event's Data is valid until the next call.
func (p *sseParser) next() (sseEvent, error) {
	for {
		line, err := p.readLine()
		if err != nil {
			return sseEvent{}, err
		}
		if len(line) == 0 {
			if len(p.data) == 0 {
				p.typ = ""
				continue
			}
			e := sseEvent{Type: p.typ, Data: p.data[:len(p.data)-1], ID: p.id}
			p.typ, p.data = "", p.data[:0]
			return e, nil
		}
		if line[0] == ':' {
			continue // a comment
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "event":
			p.typ = string(value)
		case "data":
			if len(p.data)+len(value)+1 > maxSSEEvent {
				return sseEvent{}, errSSETooLong
			}
			p.data = append(append(p.data, value...), '\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				p.id = string(value)
			}
		}
		// retry and unknown fields: a subscriber here never reconnects.
	}
}

// readLine returns the next line without its end: CRLF, LF or CR. The line
// is valid until the next call.
func (p *sseParser) readLine() ([]byte, error) {
	p.line = p.line[:0]
	for {
		b, err := p.r.Peek(1)
		if err != nil {
			return nil, err
		}
		if p.afterCR {
			p.afterCR = false
			if b[0] == '\n' {
				p.r.Discard(1)
				continue
			}
		}
		b, _ = p.r.Peek(p.r.Buffered())
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			if len(p.line)+len(b) > maxSSEEvent {
				return nil, errSSETooLong
			}
			p.line = append(p.line, b...)
			p.r.Discard(len(b))
			continue
		}
		if len(p.line)+i > maxSSEEvent {
			return nil, errSSETooLong
		}
		p.line = append(p.line, b[:i]...)
		p.afterCR = b[i] == '\r'
		p.r.Discard(i + 1)
		if !p.started {
			p.started = true
			p.line = bytes.TrimPrefix(p.line, []byte("\xef\xbb\xbf"))
		}
		return p.line, nil
	}
}
