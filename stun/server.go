package stun

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/stun/srclimit"
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("stun: server closed")

// Server answers STUN binding requests on the sockets passed to Serve.
type Server struct {
	log     *slog.Logger
	reg     prometheus.Registerer
	m       *metrics
	limiter *srclimit.Limiter
	now     func() time.Time

	mu     sync.Mutex
	conns  map[net.PacketConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewServer validates cfg and returns a Server that serves nothing until
// Serve.
func NewServer(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		log:     cfg.Logger.With("component", "stun"),
		reg:     cfg.Registerer,
		m:       newMetrics(),
		limiter: srclimit.New(cfg.Rate, cfg.Burst, cfg.MaxSources),
		now:     time.Now,
		conns:   make(map[net.PacketConn]struct{}),
	}
	if err := s.m.register(cfg.Registerer); err != nil {
		return nil, err
	}
	return s, nil
}

// Serve answers binding requests on conn until conn fails or Close is
// called, and then returns ErrServerClosed (after Close) or the read error.
// It may be called for several sockets at once, such as SO_REUSEPORT
// sockets sharing a port. Close closes conn.
func (s *Server) Serve(conn net.PacketConn) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()

	s.log.Info("stun server serving", "addr", conn.LocalAddr())
	err := s.serve(conn)
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrServerClosed
	}
	return fmt.Errorf("stun: serve %v: %w", conn.LocalAddr(), err)
}

func (s *Server) serve(conn net.PacketConn) error {
	var bd binder
	buf := make([]byte, 1500)
	udp, isUDP := conn.(*net.UDPConn)
	for {
		var n int
		var src netip.AddrPort
		var err error
		if isUDP {
			n, src, err = udp.ReadFromUDPAddrPort(buf)
		} else {
			var a net.Addr
			n, a, err = conn.ReadFrom(buf)
			if ua, ok := a.(*net.UDPAddr); ok {
				src = ua.AddrPort()
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if !bd.parse(buf[:n]) {
			s.m.dropped.Inc()
			continue
		}
		if !s.limiter.Allow(src.Addr(), s.now()) {
			s.m.rateLimited.Inc()
			continue
		}
		resp := bd.respond(src)
		if resp == nil {
			s.m.dropped.Inc()
			continue
		}
		if isUDP {
			_, err = udp.WriteToUDPAddrPort(resp, src)
		} else {
			_, err = conn.WriteTo(resp, net.UDPAddrFromAddrPort(src))
		}
		if err == nil {
			s.m.answered.Inc()
		}
	}
}

// Close closes every socket being served and waits for Serve to return.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var errs []error
	for c := range s.conns {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.m.unregister(s.reg)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stun: close: %w", err)
	}
	return nil
}
