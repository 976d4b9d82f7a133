package turn

import (
	"encoding/binary"
	"net/netip"
	"time"

	pionstun "github.com/pion/stun/v3"

	"github.com/parley-rt/parley/stun/srclimit"
)

// gate inspects every frame a client sends before pion/turn sees it, and
// closes the edges pion leaves open:
//
//   - it authenticates requests that carry MESSAGE-INTEGRITY itself and
//     answers failures with 401 (pion answers 400), checking a credential's
//     expiry only on Allocate so that a live allocation keeps refreshing
//     after its credential expired (TURN-SECURITY rows 2 and 3);
//   - it refuses CreatePermission and ChannelBind towards denied peers with
//     403 (pion answers 401 or an error without a code; rows 4 to 12);
//   - it clamps LIFETIME on Allocate and Refresh (row 15);
//   - it drops malformed STUN and unexpected messages without a word
//     (row 16);
//   - it rate-limits, per source, everything answered without a valid
//     credential: binding requests, unauthenticated requests and failed
//     authentications (row 17).
//
// ChannelData passes untouched and unparsed.
type gate struct {
	realm       string
	secret      string
	lifetimeMax uint32 // seconds
	policy      *peerPolicy
	limiter     *srclimit.Limiter
	m           *metrics
	now         func() time.Time
}

// verdict is what the gate decided about a frame.
type verdict int

const (
	drop   verdict = iota // discard it
	pass                  // hand it to pion
	passed                // hand it to pion; it carried a valid credential
)

// pionDefaultLifetime is what pion grants an Allocate without LIFETIME.
const pionDefaultLifetime = 600

// inspect examines frame buf[:n] from src. It returns the verdict and the
// length of the frame to hand on, which differs from n when LIFETIME was
// rewritten (buf must then have room for 8 more bytes). m is scratch space
// owned by the caller's goroutine. reply sends a response to src.
func (g *gate) inspect(m *pionstun.Message, buf []byte, n int, src netip.Addr, reply func([]byte)) (verdict, int) {
	b := buf[:n]
	if n >= 4 && b[0]&0xC0 == 0x40 {
		return pass, n // ChannelData
	}
	if !wellFormed(b) {
		g.m.malformed.Inc()
		return drop, 0
	}
	m.Reset()
	m.Raw = append(m.Raw[:0], b...)
	if err := m.Decode(); err != nil {
		g.m.malformed.Inc()
		return drop, 0
	}

	switch m.Type.Class {
	case pionstun.ClassIndication:
		if m.Type.Method == pionstun.MethodSend {
			return pass, n
		}
	case pionstun.ClassRequest:
		switch m.Type.Method {
		case pionstun.MethodBinding:
			if !g.allow(src) {
				g.m.stunRequests.WithLabelValues("rate_limited").Inc()
				return drop, 0
			}
			g.m.stunRequests.WithLabelValues("answered").Inc()
			return pass, n
		case pionstun.MethodAllocate, pionstun.MethodRefresh,
			pionstun.MethodCreatePermission, pionstun.MethodChannelBind:
			return g.request(m, buf, n, src, reply)
		}
	}
	g.m.malformed.Inc()
	return drop, 0
}

// wellFormed checks the STUN header: type bits, magic cookie, and a length
// that is a multiple of four and matches the frame exactly.
func wellFormed(b []byte) bool {
	if len(b) < 20 || b[0]&0xC0 != 0 || !pionstun.IsMessage(b) {
		return false
	}
	l := int(binary.BigEndian.Uint16(b[2:4]))
	return l%4 == 0 && 20+l == len(b)
}

func (g *gate) allow(src netip.Addr) bool {
	if g.limiter.Allow(src, g.now()) {
		return true
	}
	g.m.rateLimited.Inc()
	return false
}

// request handles the four authenticated TURN requests.
func (g *gate) request(m *pionstun.Message, buf []byte, n int, src netip.Addr, reply func([]byte)) (verdict, int) {
	if !m.Contains(pionstun.AttrMessageIntegrity) ||
		!m.Contains(pionstun.AttrUsername) || !m.Contains(pionstun.AttrRealm) || !m.Contains(pionstun.AttrNonce) {
		// pion answers: 401 with a fresh NONCE and REALM, or 400.
		if !g.allow(src) {
			return drop, 0
		}
		return pass, n
	}
	key, reason := g.authenticate(m)
	if reason != "" {
		g.m.authFailures.WithLabelValues(reason).Inc()
		if g.allow(src) {
			g.unauthorized(m, reply)
		}
		return drop, 0
	}

	switch m.Type.Method {
	case pionstun.MethodCreatePermission, pionstun.MethodChannelBind:
		if g.deniesPeer(m) {
			g.m.deniedPeers.WithLabelValues(methodLabel(m.Type.Method)).Inc()
			g.forbidden(m, key, reply)
			return drop, 0
		}
	case pionstun.MethodAllocate, pionstun.MethodRefresh:
		if n2, ok := g.clampLifetime(m, key, buf); ok {
			return passed, n2
		}
		return drop, 0
	}
	return passed, n
}

// authenticate checks a request's long-term credential and returns its
// key, or the reason it failed. HMACs are compared in constant time.
func (g *gate) authenticate(m *pionstun.Message) (key []byte, reason string) {
	var realm pionstun.Realm
	var username pionstun.Username
	if realm.GetFrom(m) != nil || username.GetFrom(m) != nil {
		return nil, reasonBadUsername
	}
	if string(realm) != g.realm {
		return nil, reasonUnknownRealm
	}
	expiry, _, err := parseUsername(string(username))
	if err != nil {
		return nil, reasonBadUsername
	}
	key = longTermKey(g.secret, string(username), g.realm)
	if pionstun.MessageIntegrity(key).Check(m) != nil {
		return nil, reasonBadIntegrity
	}
	// Expiry is checked only when an allocation is created: refreshes,
	// permissions and channel binds of a live allocation go on.
	if m.Type.Method == pionstun.MethodAllocate && expiry.Before(g.now()) {
		return nil, reasonExpired
	}
	return key, ""
}

// deniesPeer reports whether any XOR-PEER-ADDRESS of m is refused.
func (g *gate) deniesPeer(m *pionstun.Message) bool {
	denied := false
	for _, a := range m.Attributes {
		if a.Type != pionstun.AttrXORPeerAddress {
			continue
		}
		var addr pionstun.XORMappedAddress
		view := &pionstun.Message{TransactionID: m.TransactionID, Attributes: pionstun.Attributes{a}}
		if addr.GetFromAs(view, pionstun.AttrXORPeerAddress) != nil {
			continue // pion answers 400
		}
		ip, ok := netip.AddrFromSlice(addr.IP)
		if !ok || !g.policy.allowed(ip) {
			denied = true
		}
	}
	return denied
}

// clampLifetime rewrites an Allocate's or Refresh's LIFETIME (or its
// absence, which pion reads as 10 minutes) down to the cap and signs the
// request again with the key it was verified with, so pion grants the cap.
// It reports false if the rewritten request does not fit buf.
func (g *gate) clampLifetime(m *pionstun.Message, key, buf []byte) (int, bool) {
	want, has := uint32(pionDefaultLifetime), false
	if v, err := m.Get(pionstun.AttrLifetime); err == nil && len(v) == 4 {
		want, has = binary.BigEndian.Uint32(v), true
	}
	if (has && want == 0) || want <= g.lifetimeMax {
		// A deletion, or within the cap (which is below pion's own bound).
		return len(m.Raw), true
	}

	out := pionstun.New()
	out.Type = m.Type
	out.TransactionID = m.TransactionID
	out.WriteHeader()
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], g.lifetimeMax)
	for _, a := range m.Attributes {
		if a.Type == pionstun.AttrMessageIntegrity {
			break
		}
		if a.Type == pionstun.AttrLifetime {
			continue
		}
		out.Add(a.Type, a.Value)
	}
	out.Add(pionstun.AttrLifetime, v[:])
	if err := pionstun.MessageIntegrity(key).AddTo(out); err != nil {
		return 0, false
	}
	if m.Contains(pionstun.AttrFingerprint) {
		if err := pionstun.Fingerprint.AddTo(out); err != nil {
			return 0, false
		}
	}
	if len(out.Raw) > len(buf) {
		return 0, false
	}
	return copy(buf, out.Raw), true
}

// unauthorized answers a failed authentication with a small 401: error
// code, REALM and the client's NONCE, no SOFTWARE.
func (g *gate) unauthorized(m *pionstun.Message, reply func([]byte)) {
	var nonce pionstun.Nonce
	_ = nonce.GetFrom(m)
	resp, err := pionstun.Build(
		&pionstun.Message{TransactionID: m.TransactionID},
		pionstun.NewType(m.Type.Method, pionstun.ClassErrorResponse),
		pionstun.CodeUnauthorized,
		pionstun.NewRealm(g.realm),
		nonce,
	)
	if err == nil {
		reply(resp.Raw)
	}
}

// forbidden answers a request towards a denied peer with an authenticated
// 403.
func (g *gate) forbidden(m *pionstun.Message, key []byte, reply func([]byte)) {
	resp, err := pionstun.Build(
		&pionstun.Message{TransactionID: m.TransactionID},
		pionstun.NewType(m.Type.Method, pionstun.ClassErrorResponse),
		pionstun.CodeForbidden,
		pionstun.MessageIntegrity(key),
		pionstun.Fingerprint,
	)
	if err == nil {
		reply(resp.Raw)
	}
}

func methodLabel(method pionstun.Method) string {
	switch method {
	case pionstun.MethodCreatePermission:
		return "create_permission"
	case pionstun.MethodChannelBind:
		return "channel_bind"
	}
	return "other"
}
