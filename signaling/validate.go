package signaling

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pion/ice/v4"
	"github.com/pion/sdp/v3"
)

// signalKind says what a valid signal carries.
type signalKind uint8

const (
	kindOffer signalKind = iota + 1
	kindAnswer
	kindPranswer
	kindRollback
	kindCandidate
	kindEndOfCandidates
)

// Limits on the strings of an RTCIceCandidateInit. A candidate attribute is
// well under 200 bytes in practice; an ICE ufrag is at most 256 characters
// (RFC 8839); a media id is a short token.
const (
	maxCandidateLen = 1024
	maxMidLen       = 64
	maxUfragLen     = 256
)

// maxReasonLen bounds the part of a parser's error quoted back to the client,
// since pion's parsers quote the offending input.
const maxReasonLen = 120

// dataShape is the start of every message that refuses the shape of data.
const dataShape = `data must be {"sdp": {...}} or {"candidate": {...}}`

// sdpTypes maps each description type to its kind.
var sdpTypes = map[string]signalKind{
	"offer":    kindOffer,
	"answer":   kindAnswer,
	"pranswer": kindPranswer,
	"rollback": kindRollback,
}

// sessionDescription is a re-encoded RTCSessionDescriptionInit.
type sessionDescription struct {
	Type string `json:"type"`
	SDP  string `json:"sdp"`
}

// iceCandidate is a re-encoded RTCIceCandidateInit. Absent and null members
// are both left out, which means the same to a browser.
type iceCandidate struct {
	Candidate        string  `json:"candidate"`
	SDPMid           *string `json:"sdpMid,omitempty"`
	SDPMLineIndex    *uint16 `json:"sdpMLineIndex,omitempty"`
	UsernameFragment *string `json:"usernameFragment,omitempty"`
}

// checkSignal validates a signal's data, as PROTOCOL.md defines it, and
// returns it re-encoded with only the fields the protocol names, so that
// nothing a client adds is relayed. With hideHost, host candidates are
// removed: a host candidate signal returns kind kindCandidate and out nil
// (the caller acks and relays nothing), and `a=candidate` lines of type host
// are removed from an SDP body. maxSize bounds len(data).
//
// The output is never longer than maxSize, and checking it again gives it
// back unchanged with the same kind.
func checkSignal(data []byte, maxSize int, hideHost bool) (out []byte, kind signalKind, err *Error) {
	if len(data) > maxSize {
		return nil, 0, errorf(CodeBadRequest, fmt.Sprintf("signal data is over %d bytes", maxSize))
	}
	if !json.Valid(data) {
		return nil, 0, errorf(CodeBadRequest, dataShape+", and it is not valid JSON")
	}
	switch firstByte(data) {
	case '{':
	case '[':
		return nil, 0, errorf(CodeBadRequest, dataShape+", not an array")
	default:
		return nil, 0, errorf(CodeBadRequest, dataShape+", not "+jsonKindName(data))
	}
	var members map[string]json.RawMessage
	if e := json.Unmarshal(data, &members); e != nil {
		return nil, 0, errorf(CodeBadRequest, dataShape+", and it is not valid JSON")
	}
	sdpRaw, hasSDP := members["sdp"]
	candRaw, hasCand := members["candidate"]
	switch {
	case hasSDP && hasCand:
		return nil, 0, errorf(CodeBadRequest, dataShape+", not both")
	case hasSDP:
		out, kind, err = checkDescription(sdpRaw, hideHost)
	case hasCand:
		out, kind, err = checkCandidate(candRaw, hideHost)
	default:
		return nil, 0, errorf(CodeBadRequest, dataShape+", and it has neither")
	}
	if err != nil {
		return nil, 0, err
	}
	// Re-encoding can lengthen a string (U+2028 becomes an escape), so the
	// bound is checked again on what would be relayed.
	if len(out) > maxSize {
		return nil, 0, errorf(CodeBadRequest, fmt.Sprintf("signal data is over %d bytes", maxSize))
	}
	return out, kind, nil
}

// checkDescription validates the "sdp" member of a signal: an
// RTCSessionDescriptionInit.
func checkDescription(raw json.RawMessage, hideHost bool) ([]byte, signalKind, *Error) {
	if firstByte(raw) != '{' {
		return nil, 0, errorf(CodeBadRequest, `sdp must be an object {"type": ..., "sdp": ...}`)
	}
	var members map[string]json.RawMessage
	if e := json.Unmarshal(raw, &members); e != nil {
		return nil, 0, errorf(CodeBadRequest, `sdp must be an object {"type": ..., "sdp": ...}`)
	}
	typ, ok := jsonString(members["type"])
	kind := sdpTypes[typ]
	if !ok || kind == 0 {
		return nil, 0, errorf(CodeBadRequest, "sdp.type must be offer, answer, pranswer or rollback")
	}

	body, present := members["sdp"]
	var text string
	if present && !isNull(body) {
		if text, ok = jsonString(body); !ok {
			return nil, 0, errorf(CodeBadRequest, "sdp.sdp must be a string")
		}
	}
	if kind == kindRollback {
		// A rollback carries no description; whatever came with it is not
		// relayed.
		return encodeSignal("sdp", sessionDescription{Type: typ}), kind, nil
	}
	if text == "" {
		return nil, 0, errorf(CodeBadRequest, "sdp.sdp must be a non-empty string for "+typ)
	}
	var desc sdp.SessionDescription
	if e := desc.UnmarshalString(text); e != nil {
		return nil, 0, errorf(CodeBadRequest, "sdp.sdp does not parse as SDP: "+sdpReason(e))
	}
	if len(desc.MediaDescriptions) == 0 {
		return nil, 0, errorf(CodeBadRequest, "sdp.sdp has no media section (no m= line)")
	}
	if hideHost {
		text = hideHostAddresses(text)
	}
	return encodeSignal("sdp", sessionDescription{Type: typ, SDP: text}), kind, nil
}

// checkCandidate validates the "candidate" member of a signal: null, or an
// RTCIceCandidateInit whose empty candidate means end-of-candidates.
func checkCandidate(raw json.RawMessage, hideHost bool) ([]byte, signalKind, *Error) {
	if isNull(raw) {
		return encodeSignal("candidate", nil), kindEndOfCandidates, nil
	}
	if firstByte(raw) != '{' {
		return nil, 0, errorf(CodeBadRequest, "candidate must be an object (an RTCIceCandidateInit) or null")
	}
	var members map[string]json.RawMessage
	if e := json.Unmarshal(raw, &members); e != nil {
		return nil, 0, errorf(CodeBadRequest, "candidate must be an object (an RTCIceCandidateInit) or null")
	}

	var c iceCandidate
	if v, present := members["candidate"]; present && !isNull(v) {
		s, ok := jsonString(v)
		if !ok {
			return nil, 0, errorf(CodeBadRequest, "candidate.candidate must be a string")
		}
		if err := checkToken("candidate.candidate", s, maxCandidateLen); err != nil {
			return nil, 0, err
		}
		c.Candidate = s
	}
	if v, present := members["sdpMid"]; present && !isNull(v) {
		s, ok := jsonString(v)
		if !ok {
			return nil, 0, errorf(CodeBadRequest, "candidate.sdpMid must be a string or null")
		}
		if err := checkToken("candidate.sdpMid", s, maxMidLen); err != nil {
			return nil, 0, err
		}
		c.SDPMid = &s
	}
	if v, present := members["sdpMLineIndex"]; present && !isNull(v) {
		n, ok := jsonUint16(v)
		if !ok {
			return nil, 0, errorf(CodeBadRequest, "candidate.sdpMLineIndex must be an integer from 0 to 65535, or null")
		}
		c.SDPMLineIndex = &n
	}
	if v, present := members["usernameFragment"]; present && !isNull(v) {
		s, ok := jsonString(v)
		if !ok {
			return nil, 0, errorf(CodeBadRequest, "candidate.usernameFragment must be a string or null")
		}
		if err := checkToken("candidate.usernameFragment", s, maxUfragLen); err != nil {
			return nil, 0, err
		}
		c.UsernameFragment = &s
	}

	if c.Candidate == "" {
		return encodeSignal("candidate", &c), kindEndOfCandidates, nil
	}
	parsed, e := ice.UnmarshalCandidate(c.Candidate)
	if e != nil {
		return nil, 0, errorf(CodeBadRequest, "candidate.candidate does not parse as an ICE candidate: "+shortReason(e.Error()))
	}
	if hideHost && parsed.Type() == ice.CandidateTypeHost {
		return nil, kindCandidate, nil
	}
	return encodeSignal("candidate", &c), kindCandidate, nil
}

// checkToken refuses a string that is longer than limit or holds anything
// but printable ASCII. Every field it guards is ASCII by its grammar, and
// pion's candidate parser would otherwise accept a line break inside an mDNS
// host name.
func checkToken(field, s string, limit int) *Error {
	if len(s) > limit {
		return errorf(CodeBadRequest, fmt.Sprintf("%s is over %d bytes", field, limit))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return errorf(CodeBadRequest, field+" must be printable ASCII")
		}
	}
	return nil
}

// hideHostAddresses removes the `a=candidate:` lines of type host from an
// SDP body, and puts the unspecified address (0.0.0.0 or ::) in the place of
// the addresses of its `o=`, `c=` and `a=rtcp:` lines, which can carry a
// device's own address and which ICE does not use. It keeps every other
// byte. A candidate line that does not parse is removed too, since nothing
// says it is not a host candidate. Lines end at '\n' and carriage returns
// around them are ignored, as pion's parser does.
func hideHostAddresses(text string) string {
	var b strings.Builder
	b.Grow(len(text))
	for rest := text; rest != ""; {
		line := rest
		if i := strings.IndexByte(rest, '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		body := strings.TrimRight(line, "\r\n")
		switch {
		case isHostCandidateLine(strings.Trim(line, "\r\n")):
		case strings.HasPrefix(body, "o=") || strings.HasPrefix(body, "c=") || strings.HasPrefix(body, "a=rtcp:"):
			b.WriteString(unspecifiedAddress(body))
			b.WriteString(line[len(body):])
		default:
			b.WriteString(line)
		}
	}
	return b.String()
}

// unspecifiedAddress replaces the address that ends an SDP line of the form
// "... IN IP4 <address>" (or IP6) with the unspecified one; other lines are
// returned as they are.
func unspecifiedAddress(line string) string {
	fields := strings.Fields(line)
	n := len(fields)
	if n < 3 || fields[n-3] != "IN" && !strings.HasSuffix(fields[n-3], "=IN") {
		return line
	}
	var zero string
	switch fields[n-2] {
	case "IP4":
		zero = "0.0.0.0"
	case "IP6":
		zero = "::"
	default:
		return line
	}
	i := strings.LastIndex(line, fields[n-1])
	return line[:i] + zero
}

// isHostCandidateLine reports whether an SDP line is an `a=candidate:`
// attribute that is, or may be, a host candidate.
func isHostCandidateLine(line string) bool {
	value, ok := strings.CutPrefix(line, "a=")
	if !ok || !strings.HasPrefix(value, "candidate:") {
		return false
	}
	c, err := ice.UnmarshalCandidate(value)
	return err != nil || c.Type() == ice.CandidateTypeHost
}

// encodeSignal encodes {member: value} compactly, without HTML escaping.
func encodeSignal(member string, value any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	// The values are strings, numbers and structs of them, which always
	// encode.
	_ = enc.Encode(map[string]any{member: value})
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// firstByte returns the first byte of a JSON value that is not white space,
// or 0 when there is none.
func firstByte(raw []byte) byte {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return 0
	}
	return raw[0]
}

// jsonKindName names the kind of a JSON value for an error message.
func jsonKindName(raw []byte) string {
	switch b := firstByte(raw); {
	case b == '"':
		return "a string"
	case b == 'n':
		return "null"
	case b == 't' || b == 'f':
		return "a boolean"
	default:
		return "a number"
	}
}

// isNull reports whether a JSON value is null.
func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}

// jsonString returns the value of a JSON string, and false when raw is absent
// or not a string.
func jsonString(raw json.RawMessage) (string, bool) {
	if firstByte(raw) != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// jsonUint16 returns the value of a JSON number that is an integer from 0 to
// 65535. A JavaScript number has no separate integer type, so 1.0 and 1e1
// are integers and 1.5 is not.
func jsonUint16(raw json.RawMessage) (uint16, bool) {
	b := firstByte(raw)
	if b != '-' && (b < '0' || b > '9') {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(bytes.TrimSpace(raw)), 64)
	if err != nil || f != math.Trunc(f) || f < 0 || f > math.MaxUint16 {
		return 0, false
	}
	return uint16(f), true
}

// sdpReason turns an error of pion's SDP parser into a short reason.
func sdpReason(err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end (the last line must end with \\r\\n)"
	}
	return shortReason(strings.TrimPrefix(err.Error(), "sdp: "))
}

// shortReason cuts a parser's message to maxReasonLen bytes and makes it
// valid UTF-8.
func shortReason(msg string) string {
	if len(msg) > maxReasonLen {
		cut := maxReasonLen
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "..."
	}
	return strings.ToValidUTF8(msg, "\uFFFD")
}
