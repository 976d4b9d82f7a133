package gateway

import (
	"bufio"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// maxCursorLen bounds an SSE cursor (Last-Event-ID) before it is decoded.
const maxCursorLen = 16 << 10

// maxSSERoomsLen bounds the bytes of an SSE stream's rooms list, so that its
// cursor, which names every room, stays well inside maxCursorLen and the
// request header limit when the browser sends it back.
const maxSSERoomsLen = 2048

// cursor is an SSE stream's position in each of its rooms. On the wire it is
// opaque: base64url of "room epoch offset" lines joined by ",".
type cursor map[string]fanout.Position

func (c cursor) encode() string {
	rooms := make([]string, 0, len(c))
	for r := range c {
		rooms = append(rooms, r)
	}
	sort.Strings(rooms)
	var b []byte
	for i, r := range rooms {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, r...)
		b = append(b, ' ')
		b = append(b, c[r].Epoch...)
		b = append(b, ' ')
		b = strconv.AppendUint(b, c[r].Offset, 10)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

var errBadCursor = errors.New("malformed cursor")

// decodeCursor parses what encode produced; anything else is an error.
func decodeCursor(s string) (cursor, error) {
	if len(s) > maxCursorLen {
		return nil, errBadCursor
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, errBadCursor
	}
	c := cursor{}
	if len(raw) == 0 {
		return c, nil
	}
	for part := range strings.SplitSeq(string(raw), ",") {
		fields := strings.Split(part, " ")
		if len(fields) != 3 || !validRoom(fields[0]) || !validEpoch(fields[1]) {
			return nil, errBadCursor
		}
		off, err := strconv.ParseUint(fields[2], 10, 64)
		if err != nil {
			return nil, errBadCursor
		}
		if _, dup := c[fields[0]]; dup {
			return nil, errBadCursor
		}
		c[fields[0]] = fanout.Position{Epoch: fields[1], Offset: off}
	}
	return c, nil
}

// validEpoch accepts what epochs are made of: 1 to 64 URL-safe characters.
func validEpoch(e string) bool {
	if len(e) == 0 || len(e) > 64 {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// corsOrigin sets CORS headers when the request's Origin is allowed.
func (srv *Server) corsOrigin(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if !originAllowed(origin, r.Host, srv.cfg.Origins) {
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Add("Vary", "Origin")
	return true
}

func (srv *Server) handlePreflight(w http.ResponseWriter, r *http.Request) {
	if !srv.corsOrigin(w, r) {
		srv.writeError(w, errorf(codeForbidden, "origin not allowed"))
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, Last-Event-ID")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

type sseWelcome struct {
	Session string                 `json:"session"`
	Node    string                 `json:"node"`
	User    string                 `json:"user"`
	PingMS  int64                  `json:"ping_ms"`
	Rooms   map[string]sseRoomInfo `json:"rooms"`
}

type sseRoomInfo struct {
	Epoch     string `json:"epoch"`
	Offset    uint64 `json:"offset"`
	Recovered bool   `json:"recovered"`
}

func (srv *Server) handleSSE(w http.ResponseWriter, r *http.Request) {
	if !srv.corsOrigin(w, r) {
		srv.metrics.rejected.WithLabelValues("origin").Inc()
		srv.writeError(w, errorf(codeForbidden, "origin not allowed"))
		return
	}
	if srv.draining.Load() {
		srv.metrics.rejected.WithLabelValues("draining").Inc()
		srv.writeError(w, errDraining())
		return
	}
	ident, perr := srv.auth.authenticate(r, false)
	if perr != nil {
		srv.metrics.rejected.WithLabelValues("auth").Inc()
		srv.writeError(w, perr)
		return
	}
	var rooms []string
	if q := r.URL.Query().Get("rooms"); q != "" {
		rooms = strings.Split(q, ",")
	}
	if len(rooms) == 0 {
		srv.writeError(w, errorf(codeBadRequest, "rooms is required: /v1/sse?rooms=a,b"))
		return
	}
	if q := r.URL.Query().Get("rooms"); len(q) > maxSSERoomsLen {
		srv.writeError(w, errorf(codeBadRequest, "rooms list longer than 2048 bytes: a stream's cursor names every room; use WebSocket for more"))
		return
	}
	if len(rooms) > srv.cfg.MaxRoomsPerSession {
		srv.writeError(w, errorf(codeForbidden, "room limit reached"))
		return
	}
	seen := make(map[string]bool, len(rooms))
	for _, room := range rooms {
		switch {
		case !validRoom(room):
			srv.writeError(w, errorf(codeBadRoom, "room names are 1 to 128 bytes of A-Z a-z 0-9 _ . : @ -"))
			return
		case seen[room]:
			srv.writeError(w, errorf(codeBadRequest, "room listed twice: "+room))
			return
		case !ident.may(actSubscribe, room):
			srv.writeError(w, errorf(codeForbidden, "not allowed to subscribe to "+room))
			return
		}
		seen[room] = true
	}
	since := cursor{}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("last_event_id")
	}
	if last != "" {
		c, err := decodeCursor(last)
		if err != nil {
			srv.writeError(w, errorf(codeBadRequest, "Last-Event-ID is not a cursor this server issued"))
			return
		}
		since = c
	}
	if r.Method == http.MethodHead {
		// The head a GET would get, and no body (RFC 9110, 9.3.2): no
		// stream to serve.
		setStreamHeaders(w.Header())
		w.WriteHeader(http.StatusOK)
		return
	}
	ip := srv.clientIP(r)
	if !srv.acquireIP(ip) {
		srv.metrics.rejected.WithLabelValues("ip_limit").Inc()
		srv.log.Debug("sse refused: connection limit of the address", "remote", r.RemoteAddr, "client", ip)
		srv.writeError(w, errorf(codeRateLimited, "too many connections from this address"))
		return
	}
	s := newSession(srv, ident, transportSSE, ip)
	rc := http.NewResponseController(w)
	// Closing the session (Shutdown, a slow consumer) ends a write that a
	// client which stopped reading holds up: net/http's, while the handler
	// runs (not after: the connection may serve another request by then),
	// or the connection itself once the node took the stream over.
	var (
		abortMu  sync.Mutex
		handling = true
		taken    net.Conn
	)
	s.abort = func() {
		abortMu.Lock()
		defer abortMu.Unlock()
		switch {
		case taken != nil:
			closeStreamConn(taken, true)
		case handling:
			rc.SetWriteDeadline(time.Unix(1, 0))
		}
	}
	if !srv.register(s) {
		srv.releaseIP(ip)
		srv.writeError(w, errDraining())
		return
	}
	// register counted the handler as the session's owner; the poller owns
	// a stream handed to it (polled).
	polled := false
	defer func() {
		// The handler's own close leaves its answer alone.
		abortMu.Lock()
		handling = false
		abortMu.Unlock()
		if polled {
			return
		}
		s.closeNow(closeNormal, "")
		s.finish()
		srv.goroutines.Done()
	}()

	// Every room is subscribed before the answer starts, so that a refusal
	// (over_capacity, a bus failure) is an HTTP error the client can read.
	welcome := sseWelcome{Session: s.id, Node: srv.cfg.NodeID, User: ident.user, PingMS: srv.cfg.PingInterval.Milliseconds(), Rooms: map[string]sseRoomInfo{}}
	for _, room := range rooms {
		var from *fanout.Position
		if p, ok := since[room]; ok {
			from = &p
		}
		perr := srv.hub.subscribe(r.Context(), s, room, from, false, func(res subscribeResult) *frame {
			welcome.Rooms[room] = sseRoomInfo{Epoch: res.top.Epoch, Offset: res.top.Offset, Recovered: res.recovered}
			return &frame{kind: kindAck, room: room, epoch: res.cursor.Epoch, offset: res.cursor.Offset}
		})
		if perr != nil {
			srv.log.Debug("sse subscribe refused", "room", room, "err", perr)
			srv.writeError(w, perr)
			return
		}
	}
	// The welcome event carries the stream's starting cursor, so a client that
	// drops before any message still resumes from here.
	welcomeFrame := &frame{kind: kindControl, b: mustJSON(welcome)}

	if r.ProtoMajor == 1 {
		if c, brw, err := rc.Hijack(); err == nil {
			// Taken over (sse_stream.go).
			if brw.Reader.Buffered() > 0 {
				// Bytes after the request (net/http read them already)
				// end the stream, as later ones do.
				c.Close()
				return
			}
			var pc *pollConn
			tcp, pollable := c.(*net.TCPConn)
			pollable = pollable && srv.poller != nil
			if pollable {
				pc = &pollConn{Conn: c}
				c = pc
			}
			// The abort no longer holds net/http's response (and through
			// it the connection's buffers): the stream's only reference to
			// them.
			abortMu.Lock()
			taken, rc = c, nil
			abortMu.Unlock()
			if s.isClosed() {
				// Closed meanwhile, when the abort could not reach it.
				c.Close()
				return
			}
			if err := srv.writeStreamHead(c, w.Header()); err != nil {
				return
			}
			s.enqueue(welcomeFrame)
			s.mu.Lock()
			s.netConn = c
			s.sse = &sseStream{pos: cursor{}}
			s.mu.Unlock()
			if pollable {
				polled = true
				s.pollStream(tcp, pc)
				s.kick()
				return
			}
			s.kick()
			awaitStreamEnd(c)
			return
		}
	}

	setStreamHeaders(w.Header())
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, smallBuf)
	bw.WriteString(sseRetry)
	pos := cursor{}
	s.enqueue(welcomeFrame)

	for first := true; ; first = false {
		batch := s.take()
		if first {
			welcomeFirst(batch)
		}
		if batch != nil {
			rc.SetWriteDeadline(srv.cfg.now().Add(srv.cfg.WriteTimeout))
			closing := s.writeSSE(bw, pos, batch)
			s.release(batch)
			if err := bw.Flush(); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			if closing {
				return
			}
			continue
		}
		select {
		case <-s.wake:
		case <-s.done:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// welcomeFirst reorders the stream's first batch so that the welcome event
// (with the cursor the subscriptions start from) precedes replayed history:
// the acks, which write nothing, then the welcome, then the rest in order.
func welcomeFirst(batch []*frame) {
	w := slices.IndexFunc(batch, func(f *frame) bool { return f.kind == kindControl })
	if w < 0 {
		return
	}
	welcome := batch[w]
	rest := slices.Delete(slices.Clone(batch), w, w+1)
	i := 0
	for _, f := range rest {
		if f.kind == kindAck {
			batch[i] = f
			i++
		}
	}
	batch[i] = welcome
	i++
	for _, f := range rest {
		if f.kind != kindAck {
			batch[i] = f
			i++
		}
	}
}

// writeSSE renders a batch as events; it reports whether the stream ends.
func (s *session) writeSSE(bw *bufio.Writer, pos cursor, batch []*frame) bool {
	now := s.srv.cfg.now()
	var (
		messages int
		oldest   int64
	)
	defer func() { s.wrote(now, messages, oldest) }()
	for _, f := range batch {
		switch f.kind {
		case kindAck:
			pos[f.room] = fanout.Position{Epoch: f.epoch, Offset: f.offset}
		case kindMessage:
			if p, ok := pos[f.room]; ok && p.Epoch == f.epoch && f.offset <= p.Offset {
				continue
			}
			pos[f.room] = fanout.Position{Epoch: f.epoch, Offset: f.offset}
			bw.WriteString("event: message\ndata: ")
			bw.Write(f.b)
			bw.WriteString("\nid: ")
			bw.WriteString(pos.encode())
			bw.WriteString("\n\n")
			messages++
			if oldest == 0 || f.time < oldest {
				oldest = f.time
			}
		case kindControl:
			// The welcome is the only control frame an SSE session gets:
			// acks move the cursor, and presence events are WebSocket only.
			bw.WriteString("event: welcome\ndata: ")
			bw.Write(f.b)
			bw.WriteString("\nid: ")
			bw.WriteString(pos.encode())
			bw.WriteString("\n\n")
		case kindError:
			// No id line: an error moves no position.
			bw.WriteString("event: error\ndata: ")
			bw.Write(f.b)
			bw.WriteString("\n\n")
		case kindPing:
			bw.WriteString(": ping\n\n")
		case kindReconnect:
			bw.WriteString("event: reconnect\ndata: ")
			bw.Write(f.b)
			bw.WriteString("\n\n")
		case kindClose:
			return true
		}
	}
	return false
}
