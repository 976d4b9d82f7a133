package gateway

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/parley-rt/parley/fanout"
)

// originAllowed reports whether a browser origin may connect: its host is
// the request's own, or matches one of the patterns (path.Match syntax).
func originAllowed(origin, host string, patterns []string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = origin
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// apiIdentity authenticates an API request (the API key, or a user's token)
// and checks that it may do act in the path's room.
func (srv *Server) apiIdentity(w http.ResponseWriter, r *http.Request, act action) (identity, string, bool) {
	if !srv.corsOrigin(w, r) {
		srv.writeError(w, errorf(codeForbidden, "origin not allowed"))
		return identity{}, "", false
	}
	// A client that stops reading cannot pin the handler and its response.
	http.NewResponseController(w).SetWriteDeadline(srv.cfg.now().Add(srv.cfg.WriteTimeout))
	ident, perr := srv.auth.authenticate(r, true)
	if perr != nil {
		srv.writeError(w, perr)
		return identity{}, "", false
	}
	room := r.PathValue("room")
	if !validRoom(room) {
		srv.writeError(w, errorf(codeBadRoom, msgRoomName))
		return identity{}, "", false
	}
	if !ident.may(act, room) {
		verb := "read"
		if act == actPublish {
			verb = "publish to"
		}
		srv.writeError(w, errorf(codeForbidden, "not allowed to "+verb+" "+room))
		return identity{}, "", false
	}
	return ident, room, true
}

type publishResponse struct {
	Room      string `json:"room"`
	Epoch     string `json:"epoch"`
	Offset    uint64 `json:"offset"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

func (srv *Server) handlePublish(w http.ResponseWriter, r *http.Request) {
	ident, room, ok := srv.apiIdentity(w, r, actPublish)
	if !ok {
		return
	}
	if !ident.backend && !srv.apiLimits.allow(srv.apiLimitKey(ident, r)) {
		srv.writeError(w, errorf(codeRateLimited, "publish rate limit exceeded"))
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if len(key) > maxIDLen {
		srv.writeError(w, errorf(codeBadRequest, "Idempotency-Key longer than 64 bytes"))
		return
	}
	http.NewResponseController(w).SetReadDeadline(srv.cfg.now().Add(srv.cfg.HandshakeTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, srv.cfg.MaxFrameSize))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			srv.writeError(w, errorf(codeTooLarge, "body larger than "+strconv.FormatInt(srv.cfg.MaxFrameSize, 10)+" bytes"))
			return
		}
		msg := "the body could not be read"
		if errors.Is(err, os.ErrDeadlineExceeded) {
			msg = "the body did not arrive in time"
		}
		srv.writeError(w, errorf(codeBadRequest, msg))
		return
	}
	if len(body) == 0 {
		srv.writeError(w, errorf(codeBadRequest, "the body is the message data and must be JSON"))
		return
	}
	res, perr := srv.publish(r.Context(), room, fanout.Publication{Data: body, From: ident.user, Key: key}, "http")
	if perr != nil {
		srv.writeError(w, perr)
		return
	}
	writeJSON(w, http.StatusOK, publishResponse{Room: room, Epoch: res.Epoch, Offset: res.Offset, Duplicate: res.Duplicate})
}

type historyResponse struct {
	Room      string         `json:"room"`
	Epoch     string         `json:"epoch"`
	Offset    uint64         `json:"offset"`
	Recovered *bool          `json:"recovered,omitempty"`
	Messages  []messageFrame `json:"messages"`
	// Truncated says the page stopped at maxHistoryBytes: with since, ask
	// again from the last offset; without, older messages were left out.
	Truncated bool `json:"truncated,omitempty"`
}

// maxHistoryLimit bounds one history page's messages, maxHistoryBytes its
// message data.
const (
	maxHistoryLimit = 1000
	maxHistoryBytes = 4 << 20
)

func (srv *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	_, room, ok := srv.apiIdentity(w, r, actSubscribe)
	if !ok {
		return
	}
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxHistoryLimit {
			srv.writeError(w, errorf(codeBadRequest, msgLimit))
			return
		}
		limit = n
	}
	hq := fanout.HistoryQuery{Limit: limit}
	if v := q.Get("since"); v != "" {
		off, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			srv.writeError(w, errorf(codeBadRequest, "since must be an offset: a whole number"))
			return
		}
		hq.Since = &fanout.Position{Epoch: q.Get("epoch"), Offset: off}
	}
	if hq.Since != nil && hq.Since.Epoch == "" {
		// An offset without an epoch is read against the current epoch.
		top, err := srv.cfg.Bus.History(r.Context(), room, fanout.HistoryQuery{})
		if err != nil {
			srv.writeError(w, busError(err, "history unavailable"))
			return
		}
		hq.Since.Epoch = top.Top.Epoch
	}
	h, err := srv.cfg.Bus.History(r.Context(), room, hq)
	if err != nil {
		srv.logBusError("history failed", err, "room", room)
		srv.writeError(w, busError(err, "history unavailable"))
		return
	}
	resp := historyResponse{Room: room, Epoch: h.Top.Epoch, Offset: h.Top.Offset, Messages: make([]messageFrame, 0, len(h.Messages))}
	if hq.Since != nil {
		resp.Recovered = &h.Recovered
	}
	msgs := h.Messages
	size, from, to := 0, 0, len(msgs)
	if hq.Since != nil {
		// Oldest first: keep the head that fits.
		for to = 0; to < len(msgs) && (to == 0 || size+len(msgs[to].Data) <= maxHistoryBytes); to++ {
			size += len(msgs[to].Data)
		}
	} else {
		// Newest: keep the tail that fits.
		for from = len(msgs); from > 0 && (from == len(msgs) || size+len(msgs[from-1].Data) <= maxHistoryBytes); from-- {
			size += len(msgs[from-1].Data)
		}
	}
	resp.Truncated = to-from < len(msgs)
	for _, m := range msgs[from:to] {
		resp.Messages = append(resp.Messages, messageFrame{Type: "message", Room: m.Room, Offset: m.Offset, Epoch: m.Epoch, Data: m.Data, From: m.From, TS: m.Time / int64(time.Millisecond)})
	}
	writeJSON(w, http.StatusOK, resp)
}

type presenceResponse struct {
	Room         string          `json:"room"`
	Members      []fanout.Member `json:"members"`
	MembersTotal int             `json:"members_total"`
	Next         string          `json:"next,omitempty"`
}

func (srv *Server) handlePresence(w http.ResponseWriter, r *http.Request) {
	_, room, ok := srv.apiIdentity(w, r, actSubscribe)
	if !ok {
		return
	}
	q := r.URL.Query()
	pq := fanout.PresenceQuery{Cursor: q.Get("cursor")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > fanout.MaxPresenceLimit {
			srv.writeError(w, errorf(codeBadRequest, msgLimit))
			return
		}
		pq.Limit = n
	}
	if len(pq.Cursor) > maxCursor {
		srv.writeError(w, errorf(codeBadRequest, "cursor is not one this node gave"))
		return
	}
	page, perr := srv.presencePage(r.Context(), room, pq)
	if perr != nil {
		srv.writeError(w, perr)
		return
	}
	writeJSON(w, http.StatusOK, presenceResponse{Room: room, Members: page.Members, MembersTotal: page.Total, Next: page.Next})
}

func (srv *Server) handleICEServers(w http.ResponseWriter, r *http.Request) {
	if !srv.corsOrigin(w, r) {
		srv.writeError(w, errorf(codeForbidden, "origin not allowed"))
		return
	}
	if srv.cfg.ICE == nil {
		srv.writeError(w, errorf(codeNotFound, "this node serves no ICE servers"))
		return
	}
	ident, perr := srv.auth.authenticate(r, false)
	if perr != nil {
		srv.writeError(w, perr)
		return
	}
	list, ttl := srv.cfg.ICE.servers(ident.user, srv.cfg.now())
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, iceAnswer{ICEServers: list, TTL: int64(ttl.Seconds())})
}
