package gateway

import (
	"errors"
	"net/http"

	"github.com/coder/websocket"

	"github.com/parley-rt/parley/fanout"
)

// Error codes of the protocol's error frames.
const (
	codeBadRequest   = "bad_request"
	codeBadRoom      = "bad_room"
	codeUnauthorized = "unauthorized"
	codeForbidden    = "forbidden"
	codeNotFound     = "not_found"
	codeRateLimited  = "rate_limited"
	codeTooLarge     = "too_large"
	codeInternal     = "internal"
	// codeOverCapacity: a node-wide bound (the rooms a node holds) is
	// reached; the client may try again later or on another node.
	codeOverCapacity = "over_capacity"
	// codeDraining: the node is shutting down and takes no new connection;
	// the client connects to another node (HTTP answers only: a session
	// already open gets a reconnect frame instead).
	codeDraining = "draining"
)

// Close codes of the protocol, beyond the ones coder/websocket names.
const (
	closeNormal       = websocket.StatusNormalClosure   // 1000
	closeGoingAway    = websocket.StatusGoingAway       // 1001: heartbeat timeout
	closeUnsupported  = websocket.StatusUnsupportedData // 1003: binary frame
	closePolicy       = websocket.StatusPolicyViolation // 1008: auth, origin, limits
	closeInternal     = websocket.StatusInternalError   // 1011
	closeDraining     = websocket.StatusServiceRestart  // 1012
	closeSlowConsumer = websocket.StatusTryAgainLater   // 1013
)

// protoError is a protocol outcome: it becomes an error frame on a session and
// a JSON error with an HTTP status on the API.
type protoError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *protoError) Error() string { return e.Code + ": " + e.Message }

func errorf(code, msg string) *protoError { return &protoError{Code: code, Message: msg} }

// errDraining refuses a new WebSocket or SSE connection while the node
// drains.
func errDraining() *protoError {
	return errorf(codeDraining, "this node is draining: reconnect to another node")
}

// httpStatus maps an error code to the API's HTTP status.
func httpStatus(code string) int {
	switch code {
	case codeBadRequest, codeBadRoom:
		return http.StatusBadRequest
	case codeUnauthorized:
		return http.StatusUnauthorized
	case codeForbidden:
		return http.StatusForbidden
	case codeNotFound:
		return http.StatusNotFound
	case codeRateLimited:
		return http.StatusTooManyRequests
	case codeTooLarge:
		return http.StatusRequestEntityTooLarge
	case codeOverCapacity, codeDraining:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// busError turns a bus failure into what the client sees: a node-wide bound
// is over_capacity, with the reason; anything else is internal, with what.
func busError(err error, what string) *protoError {
	if errors.Is(err, fanout.ErrRoomLimit) {
		return errorf(codeOverCapacity, "this node holds as many rooms as it may; try again later")
	}
	if errors.Is(err, fanout.ErrRedisUnavailable) {
		return errorf(codeInternal, what+": the message bus (Redis) is unavailable; try again shortly")
	}
	return errorf(codeInternal, what)
}

// logBusError logs a failed bus call: at debug for a node-wide bound, which
// its metric counts, and for an unreachable Redis, which the bus logs once;
// either would otherwise flood the log under load. At warn for anything else.
func (srv *Server) logBusError(msg string, err error, args ...any) {
	args = append(args, "err", err)
	if errors.Is(err, fanout.ErrRoomLimit) || errors.Is(err, fanout.ErrRedisUnavailable) {
		// The bus logs its connection's state once per change.
		srv.log.Debug(msg, args...)
		return
	}
	srv.log.Warn(msg, args...)
}
