package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parley-rt/parley/signaling"
	"github.com/parley-rt/parley/web"
)

// Server is one gateway node: the public HTTP handler and every session on it.
type Server struct {
	cfg     Config
	log     *slog.Logger
	auth    *authenticator
	hub     *hub
	calls   *signaling.Service
	metrics *metrics
	mux     *http.ServeMux
	http    *http.Server

	// ctx lives as long as the server; Shutdown cancels it last.
	ctx    context.Context
	cancel context.CancelFunc
	// goroutines counts every goroutine the server started, so Shutdown can
	// wait for all of them.
	goroutines sync.WaitGroup

	draining atomic.Bool

	// apiLimits rate-limits publishes by token holders on the HTTP API.
	apiLimits *limiterSet

	sessMu   sync.Mutex
	sessions map[*session]struct{}
	perIP    map[string]int
	idle     chan struct{} // closed when draining and the last session left

	// poller holds idle WebSocket connections (poll.go); nil without one.
	poller poller

	hbStop chan struct{}
	// ticks counts the heartbeat loop's ticks: the shared clock by which
	// idle writers stop lingering (linger).
	ticks atomic.Uint64
}

// New builds a Server from cfg and starts its heartbeat loop; Shutdown stops it.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	auth, err := newAuthenticator(&cfg)
	if err != nil {
		return nil, err
	}
	srv := &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "gateway"),
		auth:     auth,
		metrics:  newMetrics(cfg.Registerer),
		mux:      http.NewServeMux(),
		sessions: make(map[*session]struct{}),
		perIP:    make(map[string]int),
		idle:     make(chan struct{}),
		hbStop:   make(chan struct{}),
	}
	srv.ctx, srv.cancel = context.WithCancel(context.Background())
	srv.hub = newHub(srv, cfg.Bus)
	srv.apiLimits = newLimiterSet(cfg.PublishRate, cfg.PublishBurst)
	srv.calls, err = signaling.New(signaling.Config{
		Bus: cfg.Bus, NodeID: cfg.NodeID, MaxPeers: cfg.Calls.MaxPeers, Grace: cfg.Calls.Grace,
		SignalRate: cfg.Calls.SignalRate, SignalBurst: signalBurst(cfg.Calls.SignalRate), HideHostCandidates: cfg.Calls.HideHostCandidates,
		ResyncDelay: cfg.Calls.ResyncDelay, HoldFor: cfg.Calls.HoldFor,
		Logger: cfg.Logger.With("component", "signaling"), Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: Config.Calls: %w", err)
	}
	srv.routes()
	srv.http = &http.Server{
		Handler:           srv.mux,
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(srv.log.Handler(), slog.LevelDebug),
		Protocols:         serverProtocols(),
	}
	if !cfg.NoPoller {
		if p, err := newPoller(srv); err != nil {
			srv.log.Info("every WebSocket session keeps a reader goroutine", "reason", err.Error())
		} else {
			srv.poller = p
		}
	}
	srv.goroutines.Add(1)
	go srv.heartbeatLoop()
	return srv, nil
}

// signalBurst is the burst of a signal rate: four seconds' worth, at least
// one; zero (signaling's default) for the default rate.
func signalBurst(rate float64) int {
	if rate <= 0 {
		return 0
	}
	return max(1, int(4*rate))
}

// serverProtocols are the protocols of the public listener: HTTP/1.1, HTTP/2
// over TLS (ServeTLS offers h2 by ALPN), and h2c on a plain listener. Go
// serves h2c only to a client that opens with the HTTP/2 connection preface
// (prior knowledge, as proxies do), never by an Upgrade: h2c request, so an
// HTTP/1.1 client is read as before.
func serverProtocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return p
}

func (srv *Server) routes() {
	srv.mux.HandleFunc("GET /v1/ws", srv.wsOverHTTP1(srv.handleWS))
	srv.mux.HandleFunc("GET /v1/sse", srv.handleSSE)
	srv.mux.HandleFunc("OPTIONS /v1/", srv.handlePreflight)
	srv.mux.HandleFunc("POST /v1/rooms/{room}/messages", srv.handlePublish)
	srv.mux.HandleFunc("GET /v1/rooms/{room}/history", srv.handleHistory)
	srv.mux.HandleFunc("GET /v1/rooms/{room}/presence", srv.handlePresence)
	srv.mux.HandleFunc("GET /v1/ice-servers", srv.handleICEServers)
	if srv.cfg.Stats != nil && srv.cfg.APIKey != "" {
		srv.mux.HandleFunc("GET /v1/stats", srv.handleStats)
	}
	// Every other request under /v1 gets a JSON error: 404, or 405 on a
	// known path.
	srv.mux.HandleFunc("/v1/", srv.handleNoRoute)
	srv.mux.HandleFunc("/v1", srv.handleNoRoute)
	srv.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	srv.mux.HandleFunc("GET /readyz", srv.handleReady)
	// The web app: index, demos, parley.js. It answers other methods with
	// 405 itself; registered for every method, it leaves /v1 to the routes
	// above.
	srv.mux.Handle("/", web.Handler())
}

// noRoutePatterns are the patterns of handleNoRoute.
var noRoutePatterns = map[string]bool{"/v1/": true, "/v1": true}

// handleNoRoute answers a request under /v1 that no endpoint takes: 405 with
// the Allow header when the path is an endpoint's, else 404.
func (srv *Server) handleNoRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.WithContext(r.Context())
		probe.Method = m
		if _, pattern := srv.mux.Handler(probe); !noRoutePatterns[pattern] {
			allow = append(allow, m)
		}
	}
	if len(allow) == 0 {
		srv.writeError(w, errorf(codeNotFound, "no endpoint at this path: the endpoints are /v1/ws, /v1/sse, /v1/rooms/{room}/messages, /v1/rooms/{room}/history, /v1/rooms/{room}/presence and /v1/ice-servers"))
		return
	}
	// Preflights are answered on every /v1 path.
	allow = append(allow, http.MethodOptions)
	w.Header().Set("Allow", strings.Join(allow, ", "))
	srv.writeErrorStatus(w, http.StatusMethodNotAllowed, errorf(codeBadRequest, "method not allowed: this endpoint takes "+strings.Join(allow, ", ")))
}

// Handler returns the public HTTP handler.
func (srv *Server) Handler() http.Handler { return srv.mux }

// Serve accepts connections on ln until Shutdown; it returns
// http.ErrServerClosed after a Shutdown. A plain listener serves HTTP/1.1 and
// h2c. A listener whose connections are *tls.Conn with TLS already set up
// (turn.TLSSplit's HTTP listener) serves HTTPS as ServeTLS does: HTTP/2 or
// HTTP/1.1 by the ALPN their handshake negotiated, with Request.TLS set.
func (srv *Server) Serve(ln net.Listener) error {
	return srv.http.Serve(ln)
}

// ServeTLS is Serve over TLS with the certificates of conf: ALPN offers h2,
// which SSE, the API and the pages use, and http/1.1, which WebSocket needs.
// conf itself is left as it is.
func (srv *Server) ServeTLS(ln net.Listener, conf *tls.Config) error {
	conf = conf.Clone()
	conf.NextProtos = []string{"h2", "http/1.1"}
	return srv.http.Serve(tls.NewListener(ln, conf))
}

// wsOverHTTP1 refuses a WebSocket request that did not come over HTTP/1.1.
// The node does not serve WebSocket over HTTP/2 (RFC 8441), and an HTTP/2
// stream cannot be taken over as a WebSocket connection; browsers open an
// HTTP/1.1 connection for WebSocket.
func (srv *Server) wsOverHTTP1(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 {
			srv.metrics.rejected.WithLabelValues("handshake").Inc()
			srv.writeErrorStatus(w, http.StatusHTTPVersionNotSupported, errorf(codeBadRequest,
				"WebSocket needs HTTP/1.1: this node does not serve WebSocket over "+r.Proto+"; connect with HTTP/1.1"))
			return
		}
		next(w, r)
	}
}

// NodeID returns this node's name.
func (srv *Server) NodeID() string { return srv.cfg.NodeID }

// Ready reports whether the node takes new clients: not draining, and the bus
// reachable.
func (srv *Server) Ready() bool {
	return !srv.draining.Load() && srv.cfg.Bus.Ready()
}

func (srv *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch {
	case srv.draining.Load():
		http.Error(w, "draining", http.StatusServiceUnavailable)
	case !srv.cfg.Bus.Ready():
		http.Error(w, "bus unavailable", http.StatusServiceUnavailable)
	default:
		w.Write([]byte("ready\n"))
	}
}

// track counts a goroutine in srv.goroutines unless the node drains, under
// the lock that register and Shutdown's count of sessions take, so that no
// Add comes while Shutdown waits; the goroutine calls Done.
func (srv *Server) track() bool {
	srv.sessMu.Lock()
	defer srv.sessMu.Unlock()
	if srv.draining.Load() {
		return false
	}
	srv.goroutines.Add(1)
	return true
}

// register adds a session; it fails while draining. It counts the session's
// owner (its reader, or the SSE handler) in srv.goroutines, under the same
// lock as the draining check, so Shutdown waits for every owner to finish;
// the owner calls Done after finish.
func (srv *Server) register(s *session) bool {
	srv.sessMu.Lock()
	defer srv.sessMu.Unlock()
	if srv.draining.Load() {
		return false
	}
	srv.goroutines.Add(1)
	srv.sessions[s] = struct{}{}
	srv.metrics.connections.WithLabelValues(s.transport.String()).Inc()
	srv.metrics.connsTotal.WithLabelValues(s.transport.String()).Inc()
	return true
}

func (srv *Server) unregister(s *session) {
	srv.sessMu.Lock()
	defer srv.sessMu.Unlock()
	if _, ok := srv.sessions[s]; !ok {
		return
	}
	delete(srv.sessions, s)
	srv.metrics.connections.WithLabelValues(s.transport.String()).Dec()
	if srv.draining.Load() && len(srv.sessions) == 0 {
		select {
		case <-srv.idle:
		default:
			close(srv.idle)
		}
	}
}

// acquireIP counts a connection from ip against the per-IP limit.
func (srv *Server) acquireIP(ip string) bool {
	srv.sessMu.Lock()
	defer srv.sessMu.Unlock()
	if srv.perIP[ip] >= srv.cfg.MaxConnsPerIP {
		return false
	}
	srv.perIP[ip]++
	return true
}

func (srv *Server) releaseIP(ip string) {
	srv.sessMu.Lock()
	defer srv.sessMu.Unlock()
	if srv.perIP[ip] <= 1 {
		delete(srv.perIP, ip)
		return
	}
	srv.perIP[ip]--
}

// presenceRoom reports whether every subscriber of room is in its presence
// (Config.PresenceRooms).
func (srv *Server) presenceRoom(room string) bool {
	for _, p := range srv.cfg.PresenceRooms {
		if matchRoom(p, room) {
			return true
		}
	}
	return false
}

// cleanupTimeout bounds what a finishing session undoes on the bus (leaving
// its rooms and their presence). It has its own context: a session that
// Shutdown closes finishes after the server's context is cancelled, and its
// presence must still be cleaned up, or other nodes would keep a ghost.
const cleanupTimeout = 5 * time.Second

// finish releases what a session holds once its owner goroutine is done, and
// logs why the node closed it, if it did. (The close itself may happen with a
// room locked, where no logging belongs.)
func (s *session) finish() {
	// Every owner has closed its session by now, and this close does
	// nothing then. It keeps that true whatever the path: a writer
	// lingering on a session that is no longer registered, which the
	// heartbeat loop no longer wakes, ends only with a close.
	s.closeNow(closeNormal, "")
	s.mu.Lock()
	code, reason := s.closeCode, s.closeReason
	s.mu.Unlock()
	if code == closeSlowConsumer {
		s.srv.log.Info("slow consumer closed", "session", s.id, "user", s.ident.user, "ip", s.ip, "transport", s.transport.String())
	} else if reason != "" {
		s.srv.log.Debug("session closed", "session", s.id, "code", int(code), "reason", reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for room := range s.rooms {
		s.srv.hub.unsubscribe(ctx, s, room)
	}
	if s.transport == transportWS {
		s.srv.calls.Disconnect(ctx, s)
	}
	s.srv.unregister(s)
	s.srv.releaseIP(s.ip)
}

// Shutdown drains the node: it refuses new sessions, tells every client to
// reconnect with delays spread over the drain window, closes each with 1012
// (SSE streams end with a reconnect event), then stops the HTTP server and
// every goroutine. If ctx ends first, what is left is closed at once.
func (srv *Server) Shutdown(ctx context.Context) error {
	if srv.draining.Swap(true) {
		return errors.New("gateway: Shutdown called twice")
	}
	srv.metrics.draining.Set(1)

	srv.sessMu.Lock()
	sessions := make([]*session, 0, len(srv.sessions))
	for s := range srv.sessions {
		sessions = append(sessions, s)
	}
	if len(sessions) == 0 {
		// The last session may have left between draining.Swap and here, and
		// unregister then closed idle already.
		select {
		case <-srv.idle:
		default:
			close(srv.idle)
		}
	}
	srv.sessMu.Unlock()
	srv.log.Info("draining", "sessions", len(sessions), "window", srv.cfg.DrainTimeout)

	// Every client hears at once when to come back; the closes follow the same
	// schedule, so reconnects arrive at the next node spread over the window.
	window := srv.cfg.DrainTimeout
	if dl, ok := ctx.Deadline(); ok {
		window = max(0, min(window, time.Until(dl)*9/10))
	}
	after := make([]time.Duration, len(sessions))
	for i, s := range sessions {
		after[i] = time.Duration(rand.Int64N(int64(window) + 1))
		// Not a live frame: a session near its queue bound is still told to
		// reconnect, not closed as a slow consumer.
		s.push(&frame{b: mustJSON(reconnectFrame{Type: "reconnect", AfterMS: after[i].Milliseconds(), Reason: "draining"}), kind: kindReconnect}, classReply)
	}
	order := make([]int, len(sessions))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return after[order[a]] < after[order[b]] })

	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	var err error
	for n, i := range order {
		if d := after[i] - time.Since(start); d > 0 && err == nil {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		sessions[i].closeAfterFlush(closeDraining, "draining")
		if n%1000 == 999 {
			srv.log.Info("drain progress", "closed", n+1, "of", len(sessions))
		}
	}
	select {
	case <-srv.idle:
	case <-ctx.Done():
		err = ctx.Err()
	}

	if herr := srv.http.Shutdown(ctx); herr != nil && err == nil {
		err = herr
	}
	// Whatever is still open now is closed without ceremony.
	srv.sessMu.Lock()
	for s := range srv.sessions {
		if s.conn != nil {
			s.conn.CloseNow()
		}
		s.closeNow(closeDraining, "draining")
	}
	srv.sessMu.Unlock()
	close(srv.hbStop)
	srv.cancel()
	srv.hub.stop()
	if srv.poller != nil {
		srv.poller.close()
	}
	srv.goroutines.Wait()
	srv.calls.Close()
	srv.log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
	return err
}

// writeJSON answers an API request.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // "Bearer <token>" reads as written
	enc.Encode(v)
}

// writeError answers a request under /v1 with an error, as
// {"error":{"code","message"}}, and the HTTP status of its code.
func (srv *Server) writeError(w http.ResponseWriter, e *protoError) {
	srv.writeErrorStatus(w, httpStatus(e.Code), e)
}

// writeErrorStatus is writeError with a status of the caller's: 405 and 426
// are bad_request, with a status that says more.
func (srv *Server) writeErrorStatus(w http.ResponseWriter, status int, e *protoError) {
	srv.metrics.errorsSent.WithLabelValues(e.Code).Inc()
	if e.Code == codeOverCapacity {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, status, map[string]*protoError{"error": e})
}
