package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/signaling"
)

// Subprotocol is the WebSocket subprotocol of the Parley protocol, version 1.
const Subprotocol = "parley.v1"

// smallBuf is the size of a hijacked connection's read and write buffers: most
// frames are small, and an idle connection should not hold net/http's 4 KiB
// buffers.
const smallBuf = 512

// hijackWriter re-buffers a hijacked connection with small buffers, keeping
// any bytes net/http had already read, and remembers the net.Conn for the
// session. coder/websocket's writes go through wire, which the session's
// writer shares (wire.go). With pollable set, a plain TCP connection is made
// ready for the poller (poll).
type hijackWriter struct {
	http.ResponseWriter
	conn     net.Conn
	pollable bool
	poll     *pollState
	wire     wsWire
}

// newHijackWriter returns the hijackWriter that handleWS gives to
// websocket.Accept for w.
func (srv *Server) newHijackWriter(w http.ResponseWriter) *hijackWriter {
	return &hijackWriter{
		ResponseWriter: w,
		pollable:       srv.poller != nil,
		wire:           wsWire{timeout: srv.cfg.WriteTimeout, now: srv.cfg.now},
	}
}

func (h *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.conn = c
	h.wire.conn = c
	var rc net.Conn = c
	var prefix *prefixConn
	if n := brw.Reader.Buffered(); n > 0 {
		// The bytes travel inside the connection, not in the new reader's
		// buffer: coder/websocket re-seats the reader on the connection
		// after Hijack, keeping only what that reader has buffered.
		b, _ := brw.Reader.Peek(n)
		prefix = &prefixConn{Conn: c, prefix: bytes.Clone(b)}
		rc = prefix
	}
	var ps *pollState
	if tcp, ok := c.(*net.TCPConn); ok && h.pollable {
		pc := &pollConn{Conn: rc}
		rc, h.conn = pc, pc
		ps = &pollState{tcp: tcp, prefix: prefix}
	}
	br := bufio.NewReaderSize(rc, smallBuf)
	if ps != nil {
		ps.br = br
		h.poll = ps
	}
	return rc, bufio.NewReadWriter(br, bufio.NewWriterSize(&h.wire, smallBuf)), nil
}

// clearReadDeadline lifts the frame timeout of a polled connection.
func (h *hijackWriter) clearReadDeadline() {
	if h.poll != nil {
		h.conn.SetReadDeadline(time.Time{})
	}
}

// prefixConn is a connection whose first reads return bytes that were read
// from it before the hijack.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (srv *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	if srv.draining.Load() {
		srv.metrics.rejected.WithLabelValues("draining").Inc()
		srv.writeError(w, errDraining())
		return
	}
	// One origin policy for WebSocket, SSE and the API (originAllowed).
	if origin := r.Header.Get("Origin"); origin != "" && !originAllowed(origin, r.Host, srv.cfg.Origins) {
		srv.metrics.rejected.WithLabelValues("origin").Inc()
		srv.writeError(w, errorf(codeForbidden, "origin not allowed"))
		return
	}
	if status, reason, perr := checkHandshake(w, r); perr != nil {
		srv.metrics.rejected.WithLabelValues(reason).Inc()
		srv.log.Debug("websocket handshake refused", "remote", r.RemoteAddr, "reason", reason,
			"subprotocols", shownProtocols(headerTokens(r.Header, "Sec-WebSocket-Protocol")), "why", perr.Message)
		srv.writeErrorStatus(w, status, perr)
		return
	}
	ip := srv.clientIP(r)
	if !srv.acquireIP(ip) {
		srv.metrics.rejected.WithLabelValues("ip_limit").Inc()
		srv.log.Debug("websocket refused: connection limit of the address", "remote", r.RemoteAddr, "client", ip)
		srv.writeError(w, errorf(codeRateLimited, "too many connections from this address"))
		return
	}
	ident, authErr := srv.auth.authenticate(r, false)
	hw := srv.newHijackWriter(w)
	conn, err := websocket.Accept(hw, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// The origin was checked above, with the same rules as SSE and
		// the API; this skips only coder/websocket's own origin check.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
		// A WebSocket ping or pong of the client's is handled inside the
		// read that waits for a data frame: the wait after it is an idle
		// one, which no frame timeout may cut (see poll.go).
		OnPingReceived: func(context.Context, []byte) bool {
			hw.clearReadDeadline()
			return true
		},
		OnPongReceived: func(context.Context, []byte) { hw.clearReadDeadline() },
	})
	if err != nil {
		srv.releaseIP(ip)
		srv.metrics.rejected.WithLabelValues("handshake").Inc()
		srv.log.Debug("websocket handshake refused", "remote", r.RemoteAddr, "client", ip, "err", err)
		return
	}
	// The ping and pong callbacks above keep hw for the connection's life:
	// it must not keep net/http's response, and through it the request and
	// net/http's 4 KiB buffers, which the hijack left behind.
	hw.ResponseWriter = nil
	conn.SetReadLimit(srv.cfg.MaxFrameSize)
	if authErr != nil {
		// A browser cannot read an HTTP status from a failed handshake, so
		// the reason travels as an error frame and a 1008 close.
		srv.metrics.rejected.WithLabelValues("auth").Inc()
		if !srv.track() {
			conn.CloseNow()
			srv.releaseIP(ip)
			return
		}
		defer srv.goroutines.Done()
		srv.metrics.errorsSent.WithLabelValues(authErr.Code).Inc()
		ctx, cancel := context.WithTimeout(srv.ctx, srv.cfg.WriteTimeout)
		conn.Write(ctx, websocket.MessageText, encodeError("", authErr))
		cancel()
		conn.Close(closePolicy, authErr.Message)
		srv.releaseIP(ip)
		return
	}
	s := newSession(srv, ident, transportWS, ip)
	s.conn, s.netConn, s.wire = conn, hw.conn, &hw.wire
	// The welcome is queued first, so it precedes a drain's reconnect
	// notice; its writer starts once the session is registered, so that no
	// goroutine of the session starts while Shutdown may be waiting.
	s.queue = append(s.queue, &frame{kind: kindControl, b: mustJSON(welcomeFrame{
		Type: "welcome", Session: s.id, Node: srv.cfg.NodeID, User: ident.user,
		PingMS: srv.cfg.PingInterval.Milliseconds(),
	})})
	if !srv.register(s) {
		// Shutdown may be waiting for the server's goroutines already: no
		// new one may start, so the connection is closed here, at once.
		conn.CloseNow()
		srv.releaseIP(ip)
		return
	}
	s.kick()
	s.startReading(hw.poll)
}

// checkHandshake checks what coder/websocket's Accept checks of a handshake
// request, and that the client offers the subprotocol parley.v1 or none at
// all, so that every refusal is a JSON error like the rest of /v1. It
// returns the status, the reason for the rejected-connections metric and the
// error; a nil error lets Accept upgrade the request.
func checkHandshake(w http.ResponseWriter, r *http.Request) (int, string, *protoError) {
	h := w.Header()
	switch {
	case !r.ProtoAtLeast(1, 1) || !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket"):
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", "websocket")
		return http.StatusUpgradeRequired, "handshake", errorf(codeBadRequest,
			"this endpoint is a WebSocket: the request must be an HTTP/1.1 upgrade with Connection: Upgrade and Upgrade: websocket")
	case r.Method != http.MethodGet:
		h.Set("Allow", http.MethodGet)
		return http.StatusMethodNotAllowed, "handshake", errorf(codeBadRequest, "a WebSocket handshake is a GET request")
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		h.Set("Sec-WebSocket-Version", "13")
		return http.StatusBadRequest, "handshake", errorf(codeBadRequest, "this node speaks WebSocket version 13 (Sec-WebSocket-Version: 13)")
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return http.StatusBadRequest, "handshake", errorf(codeBadRequest, "the handshake must carry one Sec-WebSocket-Key")
	}
	if k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(keys[0])); err != nil || len(k) != 16 {
		return http.StatusBadRequest, "handshake", errorf(codeBadRequest, "Sec-WebSocket-Key must be 16 bytes in base64")
	}
	var offered []string
	for _, p := range headerTokens(r.Header, "Sec-WebSocket-Protocol") {
		if strings.EqualFold(p, Subprotocol) {
			return 0, "", nil
		}
		if p != "" {
			offered = append(offered, p)
		}
	}
	if len(offered) > 0 {
		return http.StatusBadRequest, "subprotocol", errorf(codeBadRequest,
			"this node speaks the subprotocol "+Subprotocol+" (or none), and the request offers only "+shownProtocols(offered))
	}
	return 0, "", nil
}

// headerTokens returns the comma-separated tokens of every key header, as
// coder/websocket reads them.
func headerTokens(h http.Header, key string) []string {
	var tokens []string
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			tokens = append(tokens, strings.TrimSpace(t))
		}
	}
	return tokens
}

// headerHasToken reports whether a key header has token, in any case.
func headerHasToken(h http.Header, key, token string) bool {
	for _, t := range headerTokens(h, key) {
		if strings.EqualFold(t, token) {
			return true
		}
	}
	return false
}

// shownProtocols names offered subprotocols for a log line or an error: the
// ones shaped like protocol names. Anything else is only counted: browsers
// cannot set headers on a WebSocket, so some clients put a token here.
func shownProtocols(offered []string) string {
	var names []string
	hidden := 0
	for _, p := range offered {
		if p == "" {
			continue
		}
		if len(p) <= 32 && strings.IndexFunc(p, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-')
		}) < 0 {
			names = append(names, p)
			continue
		}
		hidden++
	}
	s := strconv.Quote(strings.Join(names, ", "))
	if hidden > 0 {
		s += fmt.Sprintf(" and %d value(s) not shown", hidden)
	}
	return s
}

// readLoop is the session's owner: it reads and handles client frames one at
// a time until the connection ends, then releases the session. register
// counted it in srv.goroutines.
func (s *session) readLoop() {
	defer s.srv.goroutines.Done()
	defer s.finish()
	for {
		if !s.awaitDrain() {
			return
		}
		typ, b, err := s.conn.Read(context.Background())
		if err != nil {
			s.readFailed(err)
			return
		}
		if typ == websocket.MessageBinary {
			s.closeNow(closeUnsupported, "binary frames are not supported")
			return
		}
		s.pongDeadline.Store(0) // any frame shows the client is alive
		s.handle(b)
	}
}

func (s *session) readFailed(err error) {
	switch {
	case errors.Is(err, websocket.ErrMessageTooBig):
		s.srv.metrics.errorsSent.WithLabelValues(codeTooLarge).Inc()
	case websocket.CloseStatus(err) != -1, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	default:
		s.srv.log.Debug("websocket read", "session", s.id, "err", err)
	}
	s.closeNow(closeNormal, "")
}

// replyError queues an error frame for the command with id.
func (s *session) replyError(id string, e *protoError) {
	s.srv.metrics.errorsSent.WithLabelValues(e.Code).Inc()
	s.reply(&frame{kind: kindError, b: encodeError(id, e)})
}

// commandTimeout bounds one command's bus calls.
const commandTimeout = 10 * time.Second

// handle runs one client frame.
func (s *session) handle(b []byte) {
	f, perr := decodeClientFrame(b)
	if perr != nil {
		s.replyError(f.ID, perr)
		return
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, commandTimeout)
	defer cancel()
	if (f.Type == "subscribe" || f.Type == "unsubscribe") && s.subOps.Add(1) > int32(2*s.srv.cfg.MaxRoomsPerSession) {
		s.replyError(f.ID, errorf(codeRateLimited, "subscribing and unsubscribing too fast"))
		return
	}
	switch f.Type {
	case "pong":
	case "refresh":
		s.refresh(f.ID, f.Token)
	case "subscribe":
		if !s.ident.may(actSubscribe, f.Room) {
			s.replyError(f.ID, errorf(codeForbidden, "not allowed to subscribe to "+f.Room))
			return
		}
		id := f.ID
		perr = s.srv.hub.subscribe(ctx, s, f.Room, f.Since, f.Presence, func(res subscribeResult) *frame {
			off, rec := res.top.Offset, res.recovered
			a := ackFrame{Type: "ack", ID: id, Epoch: res.top.Epoch, Offset: &off, Recovered: &rec}
			if f.Presence {
				a.Members, a.MembersTotal, a.MembersNext = res.members, &res.total, res.next
			}
			return &frame{kind: kindAck, room: f.Room, epoch: res.cursor.Epoch, offset: res.cursor.Offset, b: mustJSON(a)}
		})
		if perr != nil {
			s.replyError(f.ID, perr)
		}
	case "unsubscribe":
		if !s.srv.hub.unsubscribe(ctx, s, f.Room) {
			s.replyError(f.ID, errorf(codeNotFound, "not subscribed to "+f.Room))
			return
		}
		s.reply(&frame{kind: kindControl, b: mustJSON(ackFrame{Type: "ack", ID: f.ID})})
	case "presence":
		if !s.ident.may(actSubscribe, f.Room) {
			s.replyError(f.ID, errorf(codeForbidden, "not allowed to subscribe to "+f.Room))
			return
		}
		q := fanout.PresenceQuery{Cursor: f.Cursor}
		if f.Limit != nil {
			q.Limit = *f.Limit
		}
		page, perr := s.srv.presencePage(ctx, f.Room, q)
		if perr != nil {
			s.replyError(f.ID, perr)
			return
		}
		s.reply(&frame{kind: kindControl, b: mustJSON(presenceAck{Type: "ack", ID: f.ID, Members: page.Members, MembersTotal: page.Total, Next: page.Next})})
	case "join":
		s.join(ctx, f)
	case "signal":
		// A refresh may have taken the call away from the session's token.
		if !s.ident.may(actCall, f.Call) {
			s.replyError(f.ID, errorf(codeForbidden, "not allowed in call "+f.Call))
			return
		}
		if serr := s.srv.calls.Signal(ctx, s, f.Call, f.To, f.Data); serr != nil {
			s.replyError(f.ID, callError(serr))
			return
		}
		s.reply(&frame{kind: kindControl, b: mustJSON(ackFrame{Type: "ack", ID: f.ID})})
	case "leave":
		if serr := s.srv.calls.Leave(ctx, s, f.Call); serr != nil {
			s.replyError(f.ID, callError(serr))
			return
		}
		s.reply(&frame{kind: kindControl, b: mustJSON(ackFrame{Type: "ack", ID: f.ID})})
	case "publish":
		if !s.ident.may(actPublish, f.Room) {
			s.replyError(f.ID, errorf(codeForbidden, "not allowed to publish to "+f.Room))
			return
		}
		if s.limiter == nil {
			s.limiter = rate.NewLimiter(rate.Limit(s.srv.cfg.PublishRate), s.srv.cfg.PublishBurst)
		}
		if !s.limiter.Allow() {
			s.replyError(f.ID, errorf(codeRateLimited, "publish rate limit exceeded"))
			return
		}
		res, perr := s.srv.publish(ctx, f.Room, fanout.Publication{Data: f.Data, From: s.ident.user, Key: f.Key}, "ws")
		if perr != nil {
			s.replyError(f.ID, perr)
			return
		}
		off := res.Offset
		s.reply(&frame{kind: kindControl, b: mustJSON(ackFrame{Type: "ack", ID: f.ID, Epoch: res.Epoch, Offset: &off, Duplicate: res.Duplicate})})
	}
}

// join joins the session to a call and answers with the call's peers, this
// peer's roles, its resume token and the ICE servers to use.
func (s *session) join(ctx context.Context, f clientFrame) {
	if !s.ident.may(actCall, f.Call) {
		s.replyError(f.ID, errorf(codeForbidden, "not allowed to join call "+f.Call))
		return
	}
	ack := func(res signaling.JoinResult) {
		a := joinAck{Type: "ack", ID: f.ID, Session: res.Session, Peers: res.Peers, Polite: res.Polite,
			Resume: res.Resume, Resumed: res.Resumed, Relay: s.ident.relay}
		if ice := s.srv.cfg.ICE; ice != nil {
			list, ttl := ice.servers(s.ident.user, s.srv.cfg.now())
			a.ICEServers, a.ICETTL = list, int64(ttl.Seconds())
		}
		s.reply(&frame{kind: kindControl, b: mustJSON(a)})
	}
	_, serr := s.srv.calls.Join(ctx, s, signaling.JoinRequest{
		Call: f.Call, User: s.ident.user, Resume: f.Resume, Anonymous: s.srv.auth.dev(), Ack: ack,
	})
	if serr != nil {
		s.replyError(f.ID, callError(serr))
	}
}

// callError is a refused call command as a protocol error.
func callError(e *signaling.Error) *protoError { return errorf(e.Code, e.Message) }

// ID, Deliver and Answer make a session a signaling.Conn: signals and peer
// events are queued like room messages, against the session's queue bound;
// what answers a join (a resumed peer's held signals) is queued like the
// ack it follows, and bounds the reading of the next command instead.
func (s *session) ID() string { return s.id }

func (s *session) Deliver(b []byte) bool {
	return s.enqueue(&frame{kind: kindControl, b: b})
}

func (s *session) Answer(b []byte) bool {
	return s.reply(&frame{kind: kindControl, b: b})
}

// Refresh limits: a session may refresh its token refreshBurst times at once,
// then once every refreshEvery, so refreshes cannot be used to spend the
// node's CPU on signature checks.
const (
	refreshEvery = time.Second
	refreshBurst = 3
)

// refresh replaces the session's token with cred, on the live connection:
// the session's expiry becomes the new token's, and its room permissions the
// new token's for every command from now on. Rooms already subscribed stay
// subscribed even if the new token no longer allows them (a reconnect's
// subscribe would be refused). A refused token changes nothing: the session
// goes on under its old token, and ends when that one expires.
func (s *session) refresh(id, cred string) {
	if s.srv.auth.dev() {
		s.replyError(id, errorf(codeBadRequest, "this node does not check tokens"))
		return
	}
	if s.refreshes == nil {
		s.refreshes = rate.NewLimiter(rate.Every(refreshEvery), refreshBurst)
	}
	if !s.refreshes.Allow() {
		s.replyError(id, errorf(codeRateLimited, "refreshing the token too fast"))
		return
	}
	claims, perr := s.srv.auth.refresh(cred, s.ident.user)
	if perr != nil {
		s.replyError(id, perr)
		return
	}
	expires := claims.ExpiresAt.Add(tokenLeeway).UnixNano()
	for {
		old := s.expires.Load()
		if old == 0 || s.srv.cfg.now().UnixNano() > old {
			// Too late: the heartbeat loop ends the session, if it has
			// not already.
			s.replyError(id, errorf(codeUnauthorized, "token expired"))
			return
		}
		if s.expires.CompareAndSwap(old, expires) {
			break
		}
	}
	s.ident.perms = claims.Rooms
	s.ident.relay = claims.Relay
	s.reply(&frame{kind: kindControl, b: mustJSON(ackFrame{Type: "ack", ID: id, Expires: claims.ExpiresAt.Unix()})})
}

// publish hands a publication to the bus and records its latency.
func (srv *Server) publish(ctx context.Context, room string, p fanout.Publication, source string) (fanout.PublishResult, *protoError) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, p.Data); err != nil {
		return fanout.PublishResult{}, errorf(codeBadRequest, "data is not valid JSON")
	}
	p.Data = buf.Bytes()
	start := time.Now()
	res, err := srv.cfg.Bus.Publish(ctx, room, p)
	if err != nil {
		srv.logBusError("publish failed", err, "room", room)
		return res, busError(err, "publish failed")
	}
	srv.metrics.publishLatency.Observe(time.Since(start).Seconds())
	if !res.Duplicate {
		srv.metrics.messagesIn.WithLabelValues(source).Inc()
	}
	return res, nil
}

// presencePage reads a page of a room's members for the presence command and
// the HTTP API.
func (srv *Server) presencePage(ctx context.Context, room string, q fanout.PresenceQuery) (fanout.PresencePage, *protoError) {
	page, err := srv.cfg.Bus.Presence(ctx, room, q)
	switch {
	case errors.Is(err, fanout.ErrBadCursor):
		return page, errorf(codeBadRequest, "cursor is not one this node gave")
	case err != nil:
		srv.logBusError("presence failed", err, "room", room)
		return page, busError(err, "presence unavailable")
	}
	if page.Members == nil {
		page.Members = []fanout.Member{}
	}
	return page, nil
}
