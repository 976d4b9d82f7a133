package gateway

import (
	"crypto/subtle"
	"net/http"
	"strings"
)

// Rooms returns how many rooms have at least one session of this node
// subscribed (or subscribing): the rooms this node fans out.
func (srv *Server) Rooms() int {
	srv.hub.mu.Lock()
	defer srv.hub.mu.Unlock()
	return len(srv.hub.rooms)
}

// handleStats serves Config.Stats to the API key alone. The key is read from
// the Authorization header only, as on the HTTP API: a key in a URL ends up
// in proxy and access logs. No CORS header is set, so a page of another
// origin cannot read the figures, even with the key.
func (srv *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	// A client that stops reading cannot pin the handler and its response.
	http.NewResponseController(w).SetWriteDeadline(srv.cfg.now().Add(srv.cfg.WriteTimeout))
	cred, fromHeader, badHeader := credential(r)
	isKey := cred != "" && subtle.ConstantTimeCompare([]byte(cred), srv.auth.apiKey) == 1
	var msg string
	switch {
	case badHeader:
		msg = authHeaderFormat
	case isKey && !fromHeader:
		msg = "the API key goes in the Authorization header, not in the URL"
	case isKey:
		srv.cfg.Stats.ServeHTTP(w, r)
		return
	case !fromHeader:
		msg = "missing credential: the node's statistics need the API key: send Authorization: Bearer <api key>"
	case strings.Count(cred, ".") == 2:
		msg = "a user's token is not accepted here: the node's statistics need the API key"
	default:
		msg = "the API key is not valid"
	}
	srv.writeError(w, errorf(codeUnauthorized, msg))
}
