package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/signaling"
)

// maxIDLen bounds a client frame's id.
const maxIDLen = 64

// maxRoomLen bounds a room name.
const maxRoomLen = 128

// clientFrame is any frame a client sends; which fields matter depends on Type.
type clientFrame struct {
	Type     string           `json:"type"`
	ID       string           `json:"id,omitempty"`
	Room     string           `json:"room,omitempty"`
	Since    *fanout.Position `json:"since,omitempty"`
	Presence bool             `json:"presence,omitempty"`
	Data     json.RawMessage  `json:"data,omitempty"`
	Key      string           `json:"key,omitempty"`
	// presence command: a page of the room's members.
	Cursor string `json:"cursor,omitempty"`
	Limit  *int   `json:"limit,omitempty"`
	// refresh command: the session's next JWT.
	Token string `json:"token,omitempty"`
	// call commands: the call, a join's resume token, a signal's peer.
	Call   string `json:"call,omitempty"`
	Resume string `json:"resume,omitempty"`
	To     string `json:"to,omitempty"`
}

// maxCursor bounds a presence cursor.
const maxCursor = 512

// Messages of the errors that name a field, shared by frames and the HTTP API.
const (
	msgID       = "id must be a string of at most 64 bytes"
	msgKey      = "key must be a string of at most 64 bytes"
	msgSince    = `since must be {"epoch": string, "offset": number}`
	msgPresence = "presence must be true or false"
	msgLimit    = "limit must be a number from 1 to 1000"
	msgRoomType = "room must be a string"
	msgRoomName = "room names are 1 to 128 bytes of A-Z a-z 0-9 _ . : @ -"
)

// decodeClientFrame parses and validates one client frame. On error the
// returned frame still carries whatever id could be read, so the error frame
// can name it, and the error says in the protocol's terms what is wrong.
func decodeClientFrame(b []byte) (clientFrame, *protoError) {
	var f clientFrame
	if err := json.Unmarshal(b, &f); err != nil {
		// Unmarshal may have set an over-long id before failing on another
		// field; only frameID may put an id in the error frame.
		f.ID = frameID(b)
		return f, frameJSONError(b, err)
	}
	if !isObject(b) {
		return clientFrame{}, errorf(codeBadRequest, "a frame must be a JSON object")
	}
	if len(f.ID) > maxIDLen {
		f.ID = ""
		return f, errorf(codeBadRequest, msgID)
	}
	switch f.Type {
	case "":
		return f, errorf(codeBadRequest, "missing type")
	case "subscribe", "unsubscribe":
		if perr := checkRoom(b, f.Room); perr != nil {
			return f, perr
		}
	case "publish":
		if perr := checkRoom(b, f.Room); perr != nil {
			return f, perr
		}
		if len(f.Data) == 0 {
			return f, errorf(codeBadRequest, "missing data")
		}
		if len(f.Key) > maxIDLen {
			return f, errorf(codeBadRequest, msgKey)
		}
	case "presence":
		if perr := checkRoom(b, f.Room); perr != nil {
			return f, perr
		}
		if f.Limit != nil && (*f.Limit < 1 || *f.Limit > fanout.MaxPresenceLimit) {
			return f, errorf(codeBadRequest, msgLimit)
		}
		if len(f.Cursor) > maxCursor {
			return f, errorf(codeBadRequest, "cursor is not one this node gave")
		}
	case "refresh":
		if f.Token == "" {
			return f, errorf(codeBadRequest, "missing token")
		}
	case "pong":
	case "join", "signal", "leave":
		if perr := checkCall(b, f.Call); perr != nil {
			return f, perr
		}
		switch {
		case f.Type == "join" && len(f.Resume) > 256:
			return f, errorf(codeBadRequest, "resume is not a token from a join ack")
		case f.Type == "signal" && f.To == "":
			return f, errorf(codeBadRequest, "missing to: the peer session to signal")
		case f.Type == "signal" && len(f.To) > maxIDLen:
			return f, errorf(codeBadRequest, "to must be a peer session of the call")
		case f.Type == "signal" && (len(f.Data) == 0 || bytes.Equal(f.Data, []byte("null"))):
			return f, errorf(codeBadRequest, `missing data: {"sdp": {...}} or {"candidate": {...}}`)
		}
	default:
		if len(f.Type) > maxIDLen {
			return f, errorf(codeBadRequest, "unknown type")
		}
		return f, errorf(codeBadRequest, "unknown type "+strconv.Quote(f.Type))
	}
	return f, nil
}

// isObject reports whether the JSON value b is an object.
func isObject(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
}

// frameJSONError says why a frame that json.Unmarshal refused is not one:
// where its JSON breaks, or which field has the wrong type, in the protocol's
// words rather than Go's.
func frameJSONError(b []byte, err error) *protoError {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		if len(bytes.TrimSpace(b)) == 0 {
			return errorf(codeBadRequest, "empty frame: a frame is one JSON object")
		}
		// Offset counts the bytes read, the faulty one included: it is the
		// 1-based position of that byte.
		at := "malformed JSON at byte " + strconv.FormatInt(syn.Offset, 10)
		var first json.RawMessage
		switch derr := json.NewDecoder(bytes.NewReader(b)).Decode(&first); {
		case errors.Is(derr, io.ErrUnexpectedEOF):
			return errorf(codeBadRequest, "malformed JSON: the frame ends at byte "+strconv.Itoa(len(b))+" before its JSON value does")
		case derr == nil:
			return errorf(codeBadRequest, at+": a frame is one JSON object with nothing after it")
		default:
			return errorf(codeBadRequest, at)
		}
	}
	var typ *json.UnmarshalTypeError
	if !errors.As(err, &typ) || typ.Field == "" {
		return errorf(codeBadRequest, "a frame must be a JSON object")
	}
	field, _, _ := strings.Cut(typ.Field, ".")
	switch field {
	case "type":
		return errorf(codeBadRequest, "type must be a string")
	case "id":
		return errorf(codeBadRequest, msgID)
	case "room":
		return errorf(codeBadRequest, msgRoomType)
	case "since":
		return errorf(codeBadRequest, msgSince)
	case "presence":
		return errorf(codeBadRequest, msgPresence)
	case "limit":
		return errorf(codeBadRequest, msgLimit)
	case "key":
		return errorf(codeBadRequest, msgKey)
	case "cursor":
		return errorf(codeBadRequest, "cursor must be a string")
	case "token":
		return errorf(codeBadRequest, "token must be a string")
	case "call":
		return errorf(codeBadRequest, "call must be a string")
	case "resume":
		return errorf(codeBadRequest, "resume must be a string")
	case "to":
		return errorf(codeBadRequest, "to must be a string")
	default:
		return errorf(codeBadRequest, "a field has the wrong type")
	}
}

// frameID recovers the id of a frame that could not be decoded, so that the
// error frame can name the command: a string id as it is, a numeric one as
// the text of the number (the reply's id is always a string), anything else
// or anything over 64 bytes not at all. In malformed JSON only an id read
// before the fault counts.
func frameID(b []byte) string {
	var raw json.RawMessage
	if json.Valid(b) {
		// The same key matching as the decoder's (case-insensitive).
		var probe struct {
			ID json.RawMessage `json:"id"`
		}
		if json.Unmarshal(b, &probe) != nil {
			return ""
		}
		raw = probe.ID
	} else {
		raw = scanID(b)
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if len(raw) == 0 || dec.Decode(&v) != nil {
		return ""
	}
	var id string
	switch v := v.(type) {
	case string:
		id = v
	case json.Number:
		id = v.String()
	}
	if len(id) > maxIDLen {
		return ""
	}
	return id
}

// scanID reads the members of the object that malformed JSON starts with
// until the fault, and returns the last complete value of a key "id".
func scanID(b []byte) json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var id json.RawMessage
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return id
		}
		key, _ := t.(string)
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return id
		}
		if strings.EqualFold(key, "id") {
			id = v
		}
	}
	return id
}

// checkRoom validates the room of a frame that needs one: a frame without a
// room field lacks it (bad_request); any other value that is not a room name,
// the empty one included, is bad_room, as PROTOCOL.md says.
func checkRoom(b []byte, room string) *protoError {
	if room == "" {
		var probe struct {
			Room *string `json:"room"`
		}
		if json.Unmarshal(b, &probe) != nil || probe.Room == nil {
			return errorf(codeBadRequest, "missing room")
		}
	}
	if !validRoom(room) {
		return errorf(codeBadRoom, msgRoomName)
	}
	return nil
}

// checkCall validates the call of a call command, as checkRoom does a room:
// call names follow the rules of room names.
func checkCall(b []byte, call string) *protoError {
	if call == "" {
		var probe struct {
			Call *string `json:"call"`
		}
		if json.Unmarshal(b, &probe) != nil || probe.Call == nil {
			return errorf(codeBadRequest, "missing call")
		}
	}
	if !validRoom(call) {
		return errorf(codeBadRoom, "call names are 1 to 128 bytes of A-Z a-z 0-9 _ . : @ -")
	}
	return nil
}

// validRoom reports whether name is 1 to 128 bytes of [A-Za-z0-9_.:@-].
func validRoom(name string) bool {
	if len(name) == 0 || len(name) > maxRoomLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '_', c == '.', c == ':', c == '@', c == '-':
		default:
			return false
		}
	}
	return true
}

// Server frames. Each is encoded once and its bytes shared by every session
// that gets it.

type messageFrame struct {
	Type   string          `json:"type"`
	Room   string          `json:"room"`
	Offset uint64          `json:"offset"`
	Epoch  string          `json:"epoch"`
	Data   json.RawMessage `json:"data"`
	From   string          `json:"from,omitempty"`
	TS     int64           `json:"ts"`
}

// encodeMessage encodes a message frame, once per message on the node, and
// returns it as one final, unmasked WebSocket text frame (wire) whose tail is
// the frame's JSON (b), what SSE renders. It does not HTML-escape: the data
// goes out as it was published, and the JSON is no larger than the message
// (fanout.MessageCost counts on that).
func encodeMessage(m *fanout.Message) (wire, b []byte, err error) {
	var buf bytes.Buffer
	buf.Grow(maxWSHeader + len(m.Data) + len(m.Room) + len(m.From) + len(m.Epoch) + 96)
	buf.Write(make([]byte, maxWSHeader))
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err = enc.Encode(messageFrame{
		Type: "message", Room: m.Room, Offset: m.Offset, Epoch: m.Epoch,
		Data: m.Data, From: m.From, TS: m.Time / 1e6,
	})
	if err != nil {
		return nil, nil, err
	}
	// The JSON was written after room for the longest header; the header
	// goes right before it, so the frame and its JSON share one array.
	out := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	b = out[maxWSHeader:]
	var h [maxWSHeader]byte
	hdr := appendWSHeader(h[:0], len(b))
	start := maxWSHeader - len(hdr)
	copy(out[start:], hdr)
	return out[start:], b, nil
}

type presenceFrame struct {
	Type    string `json:"type"`
	Room    string `json:"room"`
	Event   string `json:"event"`
	User    string `json:"user"`
	Session string `json:"session"`
}

func encodePresence(e fanout.PresenceEvent) []byte {
	ev := "leave"
	if e.Join {
		ev = "join"
	}
	b, _ := json.Marshal(presenceFrame{Type: "presence", Room: e.Room, Event: ev, User: e.Member.User, Session: e.Member.Session})
	return b
}

type welcomeFrame struct {
	Type    string `json:"type"`
	Session string `json:"session"`
	Node    string `json:"node"`
	User    string `json:"user"`
	PingMS  int64  `json:"ping_ms"`
}

// ackFrame answers a command; which optional fields are set depends on it.
type ackFrame struct {
	Type      string          `json:"type"`
	ID        string          `json:"id,omitempty"`
	Epoch     string          `json:"epoch,omitempty"`
	Offset    *uint64         `json:"offset,omitempty"`
	Recovered *bool           `json:"recovered,omitempty"`
	Members   []fanout.Member `json:"members,omitempty"`
	// MembersTotal and MembersNext come with Members in a subscribe ack.
	MembersTotal *int   `json:"members_total,omitempty"`
	MembersNext  string `json:"members_next,omitempty"`
	Duplicate    bool   `json:"duplicate,omitempty"`
	// Expires answers a refresh: the new token's exp (Unix seconds).
	Expires int64 `json:"expires,omitempty"`
}

// joinAck answers a join.
type joinAck struct {
	Type       string           `json:"type"`
	ID         string           `json:"id,omitempty"`
	Session    string           `json:"session"`
	Peers      []signaling.Peer `json:"peers"`
	Polite     bool             `json:"polite"`
	Resume     string           `json:"resume"`
	Resumed    bool             `json:"resumed"`
	Relay      bool             `json:"relay,omitempty"`
	ICEServers []ICEServer      `json:"iceServers,omitempty"`
	ICETTL     int64            `json:"ice_ttl,omitempty"`
}

// presenceAck answers the presence command: a page of members.
type presenceAck struct {
	Type         string          `json:"type"`
	ID           string          `json:"id,omitempty"`
	Members      []fanout.Member `json:"members"`
	MembersTotal int             `json:"members_total"`
	Next         string          `json:"next,omitempty"`
}

type errorFrame struct {
	Type    string `json:"type"`
	ID      string `json:"id,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func encodeError(id string, e *protoError) []byte {
	b, _ := json.Marshal(errorFrame{Type: "error", ID: id, Code: e.Code, Message: e.Message})
	return b
}

type reconnectFrame struct {
	Type    string `json:"type"`
	AfterMS int64  `json:"after_ms"`
	Reason  string `json:"reason"`
}

var pingFrameBytes = []byte(`{"type":"ping"}`)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("gateway: encoding a server frame: " + err.Error())
	}
	return b
}
