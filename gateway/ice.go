package gateway

import (
	"time"

	"github.com/parley-rt/parley/turn"
)

// ICE says which STUN and TURN servers clients use. One value answers both
// GET /v1/ice-servers and the iceServers of a join ack.
type ICE struct {
	// STUN are stun: URLs.
	STUN []string
	// TURN are turn: and turns: URLs; each user gets credentials for them
	// minted with the TURN REST scheme (turn.Credentials).
	TURN []string
	// Secret is the TURN REST secret shared with the TURN servers.
	Secret string
	// TTL is how long minted credentials are valid; zero means an hour.
	TTL time.Duration
}

// ICEServer is one entry of an RTCConfiguration's iceServers.
type ICEServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

// iceAnswer is the body of GET /v1/ice-servers.
type iceAnswer struct {
	ICEServers []ICEServer `json:"iceServers"`
	TTL        int64       `json:"ttl"`
}

// servers lists the ICE servers for user, with credentials minted at now,
// and how long they are valid.
func (ice *ICE) servers(user string, now time.Time) ([]ICEServer, time.Duration) {
	ttl := ice.TTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	var list []ICEServer
	if len(ice.STUN) > 0 {
		list = append(list, ICEServer{URLs: ice.STUN})
	}
	if len(ice.TURN) > 0 {
		username, credential := turn.Credentials(ice.Secret, user, ttl, now)
		list = append(list, ICEServer{URLs: ice.TURN, Username: username, Credential: credential})
	}
	if list == nil {
		list = []ICEServer{}
	}
	return list, ttl
}
