package signaling

// Error codes, as PROTOCOL.md names them.
const (
	CodeBadRequest  = "bad_request"
	CodeBadRoom     = "bad_room"
	CodeForbidden   = "forbidden"
	CodeNotFound    = "not_found"
	CodeRateLimited = "rate_limited"
	// CodeOverCapacity: a node-wide bound (the rooms and calls a node
	// holds) is reached.
	CodeOverCapacity = "over_capacity"
	CodeInternal     = "internal"
)

// Error is a refused call command: a protocol error code and a sentence that
// says what was wrong. Nothing of a refused command is relayed.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(code, msg string) *Error { return &Error{Code: code, Message: msg} }
