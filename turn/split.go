package turn

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the SplitConfig fields whose zero value means "the default".
const (
	DefaultSplitHandshakeTimeout = 10 * time.Second
	DefaultSplitMaxHandshakes    = 1024
)

// The ALPN protocols of a split port: HTTP/2 and HTTP/1.1 for HTTPS, and
// "stun.turn" for TURN over TLS (RFC 7443).
const (
	alpnH2       = "h2"
	alpnHTTP1    = "http/1.1"
	alpnSTUNTURN = "stun.turn"
)

// splitQueue bounds the connections each child listener holds for Accept.
const splitQueue = 64

// stunMagicCookie is bytes 4 to 7 of every STUN message (RFC 5389).
const stunMagicCookie = 0x2112A442

// Results of a connection accepted on a split port, the value of the result
// label of parley_turn_split_connections_total.
const (
	splitHTTP       = "http"       // handed to the HTTP listener
	splitTURN       = "turn"       // handed to the TURN listener
	splitFailed     = "failed"     // the handshake or the first read failed
	splitTimeout    = "timeout"    // the handshake or the first read timed out
	splitOverloaded = "overloaded" // MaxHandshakes were in progress
	splitDropped    = "dropped"    // its listener was closed or did not take it in time
)

// SplitConfig configures SplitTLS.
type SplitConfig struct {
	// TLSConfig holds the certificate; required. The split uses a clone
	// that offers h2, http/1.1 and stun.turn by ALPN and refuses versions
	// below TLS 1.2 (configs from its GetConfigForClient are adjusted the
	// same way); TLSConfig itself is left as it is.
	TLSConfig *tls.Config
	// Logger receives a debug line for each connection refused; nil
	// discards them.
	Logger *slog.Logger
	// Registerer gets parley_turn_split_connections_total; nil registers
	// none.
	Registerer prometheus.Registerer
	// HandshakeTimeout bounds, from accept on, the TLS handshake, the read
	// of the first bytes of a connection that negotiated no protocol, and
	// the wait for its listener to take it; the connection is closed when
	// it passes. Zero means 10s.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the connections being classified (within
	// HandshakeTimeout of their accept) at once; past it, new connections
	// are closed as soon as they are accepted. Zero means 1024.
	MaxHandshakes int
}

// TLSSplit serves HTTPS and TURN over TLS on one TCP listener, so that TURN
// reaches clients whose firewall lets only TCP to port 443 out. It
// terminates TLS for every connection and hands the *tls.Conn to one of its
// two listeners:
//   - HTTP, when ALPN negotiated h2 or http/1.1: serve it with
//     http.Server.Serve (not ServeTLS), which then serves HTTP/2 and sets
//     Request.TLS as it does behind tls.NewListener, provided the server's
//     own TLSConfig is nil or lists h2 (else it leaves HTTP/2 unconfigured
//     and drops the h2 connections);
//   - TURN, when ALPN negotiated stun.turn (RFC 7443): pass it as
//     Config.TLSStreams;
//   - with no ALPN (browsers and pion send none for turns: URLs, nor do Go
//     HTTP clients with a TLSClientConfig of their own), by the first bytes
//     of plaintext: TURN for a STUN message, HTTP for anything else. The
//     bytes read are replayed, from a wrapper of the *tls.Conn that is not
//     a *tls.Conn itself: http.Server serves it as HTTP/1.1 (HTTP/2 over
//     TLS needs ALPN, RFC 9113), and takes Request.TLS from the wrapper's
//     ConnectionState method, so handlers see it set as usual.
//     Code that asks for a *tls.Conn (a type assertion on the conn of
//     http.Server.ConnContext, say) does not find one.
//
// Each connection is classified in a goroutine of its own within
// SplitConfig.HandshakeTimeout, so a client that stalls holds no one else
// up. The split owns the base listener: it is closed once both child
// listeners are (http.Server.Shutdown closes its listener while TURN may go
// on serving), or by Close. Every goroutine of the split has ended when
// that Close returns.
type TLSSplit struct {
	ln      net.Listener
	conf    *tls.Config
	log     *slog.Logger
	reg     prometheus.Registerer
	conns   *prometheus.CounterVec // result
	results map[string]prometheus.Counter
	timeout time.Duration
	slots   chan struct{} // one per connection being classified

	http, turn *splitListener

	done chan struct{} // closed by shutdown
	// wg counts the accept loop and the classifying goroutines.
	wg sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	pending map[net.Conn]struct{} // connections being classified

	closeOnce sync.Once
	closeErr  error
}

// SplitTLS starts serving ln, which the split owns from then on. If it
// fails, ln is left to the caller.
func SplitTLS(ln net.Listener, cfg SplitConfig) (*TLSSplit, error) {
	switch {
	case cfg.TLSConfig == nil:
		return nil, configErr("TLSConfig", "required")
	case cfg.TLSConfig.MaxVersion != 0 && cfg.TLSConfig.MaxVersion < tls.VersionTLS12:
		return nil, configErr("TLSConfig", "MaxVersion below TLS 1.2")
	case len(cfg.TLSConfig.Certificates) == 0 && cfg.TLSConfig.GetCertificate == nil && cfg.TLSConfig.GetConfigForClient == nil:
		return nil, configErr("TLSConfig", "no certificate")
	case cfg.HandshakeTimeout < 0:
		return nil, configErr("HandshakeTimeout", "%v is negative", cfg.HandshakeTimeout)
	case cfg.MaxHandshakes < 0:
		return nil, configErr("MaxHandshakes", "%d is negative", cfg.MaxHandshakes)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultSplitHandshakeTimeout
	}
	if cfg.MaxHandshakes == 0 {
		cfg.MaxHandshakes = DefaultSplitMaxHandshakes
	}
	s := &TLSSplit{
		ln:      ln,
		conf:    splitTLSConfig(cfg.TLSConfig),
		log:     cfg.Logger.With("component", "turn", "addr", ln.Addr().String()),
		reg:     cfg.Registerer,
		timeout: cfg.HandshakeTimeout,
		slots:   make(chan struct{}, cfg.MaxHandshakes),
		done:    make(chan struct{}),
		pending: make(map[net.Conn]struct{}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_split_connections_total",
			Help: "Connections accepted on the port that TURN over TLS shares with HTTPS, by result: http, turn, failed or timeout (the TLS handshake or the first read), overloaded (too many handshakes at once) or dropped (its listener was closed or full).",
		}, []string{"result"}),
		results: make(map[string]prometheus.Counter),
	}
	for _, r := range []string{splitHTTP, splitTURN, splitFailed, splitTimeout, splitOverloaded, splitDropped} {
		s.results[r] = s.conns.WithLabelValues(r)
	}
	if s.reg != nil {
		if err := s.reg.Register(s.conns); err != nil {
			return nil, fmt.Errorf("turn: register tls split metrics: %w", err)
		}
	}
	s.http = newSplitListener(s)
	s.turn = newSplitListener(s)
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// splitTLSConfig is conf for a split port: ALPN for HTTPS and TURN, and
// TLS 1.2 at least.
func splitTLSConfig(conf *tls.Config) *tls.Config {
	adjust := func(c *tls.Config) *tls.Config {
		c = c.Clone()
		c.NextProtos = []string{alpnH2, alpnHTTP1, alpnSTUNTURN}
		c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
		return c
	}
	c := adjust(conf)
	if get := conf.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(hello)
			if cc == nil || err != nil {
				return cc, err
			}
			return adjust(cc), nil
		}
	}
	return c
}

// HTTP returns the listener of the HTTPS connections, for http.Server.Serve.
func (s *TLSSplit) HTTP() net.Listener { return s.http }

// TURN returns the listener of the TURN connections, for Config.TLSStreams.
func (s *TLSSplit) TURN() net.Listener { return s.turn }

// Addr returns the address of the base listener.
func (s *TLSSplit) Addr() net.Addr { return s.ln.Addr() }

// Close closes both child listeners, the base listener and the connections
// still being classified, and returns once the split's goroutines are done.
// Connections already handed to a child listener are its user's.
func (s *TLSSplit) Close() error {
	s.http.close()
	s.turn.close()
	return s.shutdown()
}

func (s *TLSSplit) shutdown() error {
	s.closeOnce.Do(func() {
		close(s.done)
		err := s.ln.Close()
		s.mu.Lock()
		s.closed = true
		pending := make([]net.Conn, 0, len(s.pending))
		for c := range s.pending {
			pending = append(pending, c)
		}
		s.mu.Unlock()
		for _, c := range pending {
			_ = c.Close()
		}
		s.wg.Wait()
		if s.reg != nil {
			s.reg.Unregister(s.conns)
		}
		if err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = fmt.Errorf("turn: close tls split: %w", err)
		}
	})
	return s.closeErr
}

func (s *TLSSplit) isDone() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// acceptLoop accepts until the base listener is closed, and starts a
// goroutine to classify each connection. It survives temporary accept
// errors, as http.Server does.
func (s *TLSSplit) acceptLoop() {
	defer s.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.isDone() {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				// Closed by someone else: the children can serve no more.
				s.http.close()
				s.turn.close()
				return
			}
			s.log.Warn("turn: tls split: accept", "err", err)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		select {
		case s.slots <- struct{}{}:
		default:
			s.results[splitOverloaded].Inc()
			s.log.Debug("tls split: too many handshakes, connection closed", "remote", c.RemoteAddr().String(), "max", cap(s.slots))
			_ = c.Close()
			continue
		}
		if !s.hold(c) {
			<-s.slots
			_ = c.Close()
			return
		}
		s.wg.Add(1)
		go s.classify(c)
	}
}

// hold records c as being classified, unless the split is closed.
func (s *TLSSplit) hold(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.pending[c] = struct{}{}
	return true
}

func (s *TLSSplit) release(c net.Conn) {
	s.mu.Lock()
	delete(s.pending, c)
	s.mu.Unlock()
}

// classify terminates TLS on raw and hands the connection to its listener,
// or closes it. It returns by the deadline, or when shutdown closes raw.
func (s *TLSSplit) classify(raw net.Conn) {
	defer s.wg.Done()
	defer func() { <-s.slots }()
	deadline := time.Now().Add(s.timeout)
	conn, dst, err := s.handshake(raw, deadline)
	s.release(raw)
	if err != nil {
		_ = raw.Close()
		if s.isDone() {
			return
		}
		result := splitFailed
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			result = splitTimeout
		}
		s.results[result].Inc()
		s.log.Debug("tls split: connection closed", "remote", raw.RemoteAddr().String(), "result", result, "err", err)
		return
	}
	result := splitHTTP
	if dst == s.turn {
		result = splitTURN
	}
	if !dst.deliver(conn, deadline) {
		_ = conn.Close()
		s.results[splitDropped].Inc()
		s.log.Debug("tls split: listener closed or full, connection closed", "remote", raw.RemoteAddr().String(), "for", result)
		return
	}
	s.results[result].Inc()
}

// handshake terminates TLS on raw within deadline and finds the listener
// of the connection.
func (s *TLSSplit) handshake(raw net.Conn, deadline time.Time) (net.Conn, *splitListener, error) {
	if err := raw.SetDeadline(deadline); err != nil {
		return nil, nil, err
	}
	tc := tls.Server(raw, s.conf)
	if err := tc.Handshake(); err != nil {
		// Plain HTTP on the HTTPS port gets the answer http.Server gives it.
		var rhe tls.RecordHeaderError
		if errors.As(err, &rhe) && rhe.Conn != nil && looksLikeHTTP(rhe.RecordHeader) {
			_, _ = io.WriteString(rhe.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		}
		return nil, nil, fmt.Errorf("tls handshake: %w", err)
	}
	var conn net.Conn = tc
	var dst *splitListener
	switch tc.ConnectionState().NegotiatedProtocol {
	case alpnH2, alpnHTTP1:
		dst = s.http
	case alpnSTUNTURN:
		dst = s.turn
	default:
		head, stun, err := sniffSTUN(tc)
		if err != nil {
			return nil, nil, fmt.Errorf("first read: %w", err)
		}
		conn = &sniffedConn{Conn: tc, head: head}
		dst = s.http
		if stun {
			dst = s.turn
		}
	}
	if err := tc.SetDeadline(time.Time{}); err != nil {
		return nil, nil, err
	}
	return conn, dst, nil
}

// sniffSTUN reads the first bytes of r and reports whether they begin a
// STUN message: the top two bits zero and the magic cookie at bytes 4 to 7.
// One byte decides against it when its top bits are not zero, as the first
// byte of every HTTP request's method is.
func sniffSTUN(r io.Reader) (head []byte, stun bool, err error) {
	head = make([]byte, 8)
	n, err := io.ReadAtLeast(r, head, 1)
	if err != nil {
		return nil, false, err
	}
	if head[0]&0xC0 != 0 {
		return head[:n], false, nil
	}
	if _, err := io.ReadFull(r, head[n:]); err != nil {
		return nil, false, err
	}
	return head, binary.BigEndian.Uint32(head[4:8]) == stunMagicCookie, nil
}

// looksLikeHTTP reports whether the first five bytes of a connection begin
// a plaintext HTTP request (as net/http tells it).
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// sniffedConn is a TLS connection whose first bytes were read to classify
// it; Read returns them first.
type sniffedConn struct {
	*tls.Conn
	mu   sync.Mutex
	head []byte
}

func (c *sniffedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// splitListener is a child listener of a TLSSplit.
type splitListener struct {
	s    *TLSSplit
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

var _ net.Listener = (*splitListener)(nil)

func newSplitListener(s *TLSSplit) *splitListener {
	return &splitListener{s: s, ch: make(chan net.Conn, splitQueue), done: make(chan struct{})}
}

// Accept returns the next connection for this listener, or net.ErrClosed
// once it is closed.
func (l *splitListener) Accept() (net.Conn, error) {
	if l.isClosed() {
		return nil, l.errClosed()
	}
	select {
	case c := <-l.ch:
		if l.isClosed() {
			_ = c.Close()
			return nil, l.errClosed()
		}
		return c, nil
	case <-l.done:
		return nil, l.errClosed()
	}
}

// Close closes the listener and the connections waiting in it; closing the
// second child listener closes the base listener too.
func (l *splitListener) Close() error {
	if !l.close() {
		return nil
	}
	if l.s.http.isClosed() && l.s.turn.isClosed() {
		return l.s.shutdown()
	}
	return nil
}

func (l *splitListener) Addr() net.Addr { return l.s.ln.Addr() }

// close marks the listener closed and closes what waits in it; it reports
// whether this was the first close.
func (l *splitListener) close() bool {
	first := false
	l.once.Do(func() {
		close(l.done)
		first = true
	})
	l.drain()
	return first
}

func (l *splitListener) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *splitListener) errClosed() error {
	return &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
}

// deliver queues c for Accept, waiting for room until deadline; it reports
// false, leaving c to the caller, if the listener is closed or stays full.
func (l *splitListener) deliver(c net.Conn, deadline time.Time) bool {
	if l.isClosed() {
		return false
	}
	select {
	case l.ch <- c:
		if l.isClosed() {
			l.drain() // close may have drained the queue before c was in it
		}
		return true
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case l.ch <- c:
		if l.isClosed() {
			l.drain()
		}
		return true
	case <-l.done:
		return false
	case <-t.C:
		return false
	}
}

// drain closes the connections waiting in the queue.
func (l *splitListener) drain() {
	for {
		select {
		case c := <-l.ch:
			_ = c.Close()
		default:
			return
		}
	}
}
