package turn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	pionturn "github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-rt/parley/stun/srclimit"
	"github.com/parley-rt/parley/turn/internal/pionlog"
)

// maxSources bounds the per-source rate limit table.
const maxSources = 65536

// closeTimeout bounds how long Close waits for pion's goroutines.
const closeTimeout = 5 * time.Second

var errCloseTimeout = errors.New("turn: close timed out waiting for connections to finish")

// Server is a TURN server with STUN binding on the same sockets. It serves
// from NewServer until Close.
type Server struct {
	log    *slog.Logger
	pion   *pionturn.Server
	fast   *fastPath
	reg    prometheus.Registerer
	m      *metrics
	relays *relays
	quotas *quotas
	track  *tracker

	udp      []*packetConn
	tcp, tls *streamListener
	// tlsStreams serves Config.TLSStreams, TLS terminated by its owner.
	tlsStreams *streamListener

	closeOnce sync.Once
	closeErr  error
}

// NewServer validates cfg and starts serving on its sockets, which the
// Server owns from then on and closes in Close. If NewServer fails, the
// sockets are left to the caller.
func NewServer(cfg Config) (*Server, error) {
	return newServer(cfg, time.Now)
}

func newServer(cfg Config, now func() time.Time) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	listenIP := listenerIP(cfg)
	bindIP := listenIP
	if !bindIP.IsValid() {
		bindIP = netip.IPv4Unspecified()
	}
	relayIP := cfg.PublicIP.Unmap()
	if !relayIP.IsValid() {
		relayIP = listenIP
	}
	if !relayIP.IsValid() || relayIP.IsUnspecified() {
		return nil, configErr("PublicIP", "required when the listeners are bound to an unspecified address")
	}
	switch {
	case listenIP == netip.IPv6Unspecified():
		// A dual-stack listener on every address (Go makes one for ":3478"
		// and "0.0.0.0:3478" where the host has IPv6) takes clients of both
		// families; relay sockets are bound in the public address's family.
		// A listener reported as 0.0.0.0 is IPv4 only and keeps the check.
		bindIP = netip.IPv4Unspecified()
		if relayIP.Is6() {
			bindIP = netip.IPv6Unspecified()
		}
	case relayIP.Is4() != bindIP.Is4():
		return nil, configErr("PublicIP", "%v is not of the listeners' address family", relayIP)
	}

	self := []netip.Addr{relayIP}
	policy := &peerPolicy{allow: cfg.AllowPeers, self: self}
	var restricted []netip.Addr
	for _, a := range self {
		if !policy.allowedByRanges(a) {
			restricted = append(restricted, a)
		}
	}

	log := cfg.Logger.With("component", "turn")
	s := &Server{
		log:    log,
		reg:    cfg.Registerer,
		m:      newMetrics(),
		quotas: newQuotas(cfg.UserQuota, cfg.MaxAllocations),
		track:  newTracker(),
		fast:   newFastPath(),
	}
	s.relays = &relays{
		fast:       s.fast,
		ports:      newPortSet(cfg.RelayPortMin, cfg.RelayPortMax),
		bindIP:     bindIP,
		relayIP:    relayIP,
		restricted: restricted,
		track:      s.track,
		byPort:     make(map[int]*relayConn),
	}
	g := &gate{
		realm:       cfg.Realm,
		secret:      cfg.Secret,
		lifetimeMax: uint32(min(cfg.MaxLifetime, pionMaxLifetime) / time.Second),
		policy:      policy,
		limiter:     srclimit.New(cfg.SourceRate, cfg.SourceBurst, maxSources),
		m:           s.m,
		now:         now,
	}
	if err := s.m.register(cfg.Registerer); err != nil {
		return nil, err
	}

	permission := func(_ net.Addr, peer net.IP) bool {
		ip, ok := netip.AddrFromSlice(peer)
		return ok && policy.allowed(ip)
	}
	var pcs []pionturn.PacketConnConfig
	udpCounters := s.m.relayCounters(transportUDP)
	for _, c := range cfg.UDPConns {
		pc := &packetConn{conn: c, g: g, fast: s.fast}
		if pc.udp, _ = c.(*net.UDPConn); pc.udp != nil {
			pc.sock = newUDPSock(pc.udp)
			pc.in = newBatchReader(pc.sock, 0, listenerBatch)
			pc.out = newBatchWriter(listenerBatch)
		}
		pc.init(s.track)
		s.udp = append(s.udp, pc)
		pcs = append(pcs, pionturn.PacketConnConfig{
			PacketConn:            pc,
			RelayAddressGenerator: s.relays.generator(udpCounters),
			PermissionHandler:     permission,
		})
	}
	idleAuthd := cfg.MaxLifetime + time.Minute
	maxConns := cfg.MaxAllocations + 1024
	var lcs []pionturn.ListenerConfig
	if cfg.TCPListener != nil {
		s.tcp = s.newStreamListener(cfg.TCPListener, g, idleAuthd, maxConns)
		lcs = append(lcs, pionturn.ListenerConfig{
			Listener:              s.tcp,
			RelayAddressGenerator: s.relays.generator(s.m.relayCounters(transportTCP)),
			PermissionHandler:     permission,
		})
	}
	if cfg.TLSListener != nil {
		tc := cfg.TLSConfig.Clone()
		tc.MinVersion = max(tc.MinVersion, tls.VersionTLS12)
		s.tls = s.newStreamListener(tls.NewListener(cfg.TLSListener, tc), g, idleAuthd, maxConns)
		lcs = append(lcs, pionturn.ListenerConfig{
			Listener:              s.tls,
			RelayAddressGenerator: s.relays.generator(s.m.relayCounters(transportTLS)),
			PermissionHandler:     permission,
		})
	}
	if cfg.TLSStreams != nil {
		s.tlsStreams = s.newStreamListener(cfg.TLSStreams, g, idleAuthd, maxConns)
		lcs = append(lcs, pionturn.ListenerConfig{
			Listener:              s.tlsStreams,
			RelayAddressGenerator: s.relays.generator(s.m.relayCounters(transportTLS)),
			PermissionHandler:     permission,
		})
	}

	p, err := pionturn.NewServer(pionturn.ServerConfig{
		PacketConnConfigs: pcs,
		ListenerConfigs:   lcs,
		LoggerFactory:     pionlog.Factory{Logger: log},
		Realm:             cfg.Realm,
		AuthHandler:       s.authHandler(cfg.Secret, cfg.Realm),
		QuotaHandler:      s.quotaHandler,
		EventHandler: pionturn.EventHandler{
			OnAllocationCreated: s.onAllocationCreated,
			OnAllocationDeleted: s.onAllocationDeleted,
			OnAllocationError:   s.onAllocationError,
			OnChannelCreated:    s.onChannelCreated,
			OnChannelDeleted:    s.onChannelDeleted,
		},
	})
	if err != nil {
		s.m.unregister(cfg.Registerer)
		return nil, fmt.Errorf("turn: start pion server: %w", err)
	}
	s.pion = p
	log.Info("turn server started",
		"udp", s.UDPAddr(), "tcp", s.TCPAddr(), "tls", addrOrNil(s.tls), "tls_streams", addrOrNil(s.tlsStreams), "udp_sockets", len(s.udp),
		"relay_ip", relayIP, "relay_ports", fmt.Sprintf("%d-%d", cfg.RelayPortMin, cfg.RelayPortMax))
	return s, nil
}

func (s *Server) newStreamListener(ln net.Listener, g *gate, idleAuthd time.Duration, maxConns int) *streamListener {
	l := &streamListener{
		ln:        ln,
		g:         g,
		idleAuthd: idleAuthd,
		max:       maxConns,
		track:     s.track,
		conns:     make(map[*streamConn]struct{}),
		log: func(msg string, err error) {
			s.log.Warn(msg, "err", err)
		},
	}
	l.init(s.track)
	return l
}

// listenerIP is the IP the first socket of cfg is bound to.
func listenerIP(cfg Config) netip.Addr {
	var a net.Addr
	switch {
	case len(cfg.UDPConns) > 0:
		a = cfg.UDPConns[0].LocalAddr()
	case cfg.TCPListener != nil:
		a = cfg.TCPListener.Addr()
	case cfg.TLSListener != nil:
		a = cfg.TLSListener.Addr()
	default:
		a = cfg.TLSStreams.Addr()
	}
	return addrIP(a)
}

// authHandler returns pion's AuthHandler: the key of a well-formed REST
// username in our realm. The gate has already verified the request, with
// the expiry checked on Allocate only; pion's stock REST handler would
// refuse an expired username on every request.
func (s *Server) authHandler(secret, realm string) pionturn.AuthHandler {
	return func(username, r string, _ net.Addr) ([]byte, bool) {
		if r != realm {
			return nil, false
		}
		if _, _, err := parseUsername(username); err != nil {
			return nil, false
		}
		return longTermKey(secret, username, realm), true
	}
}

func (s *Server) quotaHandler(username, _ string, src net.Addr) bool {
	ok, scope := s.quotas.reserve(username, src)
	if !ok {
		s.m.quotaRejects.WithLabelValues(scope).Inc()
	}
	return ok
}

func (s *Server) onAllocationCreated(src, _ net.Addr, _, _, _ string, relayAddr net.Addr, _ int) {
	s.quotas.confirm(src)
	if ua, ok := relayAddr.(*net.UDPAddr); ok {
		if rc := s.relays.lookup(ua.Port); rc != nil {
			rc.markAllocated()
		}
	}
}

func (s *Server) onAllocationDeleted(_, _ net.Addr, _, username, _ string) {
	s.quotas.release(username)
}

func (s *Server) onAllocationError(src, _ net.Addr, _, _ string) {
	s.quotas.cancel(src)
}

// onChannelCreated hands a channel of a UDP client to the fast path.
func (s *Server) onChannelCreated(src, dst net.Addr, _, _, _ string, relayAddr, peer net.Addr, channel uint16) {
	client, ok := udpAddrPort(src)
	if !ok {
		return // TCP or TLS client: pion relays
	}
	peerAP, ok := udpAddrPort(peer)
	relayAP, ok2 := udpAddrPort(relayAddr)
	if !ok || !ok2 || s.relays.refused(peerAP) {
		return
	}
	rc := s.relays.lookup(int(relayAP.Port()))
	out := s.udpConnFor(dst)
	if rc == nil || out == nil {
		return
	}
	s.fast.add(client, channel, rc, peerAP, out)
}

func (s *Server) onChannelDeleted(src, _ net.Addr, _, _, _ string, relayAddr, peer net.Addr, channel uint16) {
	client, ok := udpAddrPort(src)
	if !ok {
		return
	}
	peerAP, _ := udpAddrPort(peer)
	var rc *relayConn
	if relayAP, ok := udpAddrPort(relayAddr); ok {
		rc = s.relays.lookup(int(relayAP.Port()))
	}
	s.fast.remove(client, channel, rc, peerAP)
}

// udpConnFor returns a UDP listener socket bound to local, to answer a
// client on its 5-tuple; SO_REUSEPORT siblings are interchangeable.
func (s *Server) udpConnFor(local net.Addr) *udpSock {
	for _, pc := range s.udp {
		if pc.udp != nil && pc.LocalAddr().String() == local.String() {
			return pc.sock
		}
	}
	return nil
}

// UDPAddr returns the address of the UDP sockets, or nil.
func (s *Server) UDPAddr() net.Addr {
	if len(s.udp) == 0 {
		return nil
	}
	return s.udp[0].LocalAddr()
}

// TCPAddr returns the address of the TCP listener, or nil.
func (s *Server) TCPAddr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
}

// TLSAddr returns the address of the TLS listener, else that of
// Config.TLSStreams (for a TLSSplit, the port shared with HTTPS), or nil.
func (s *Server) TLSAddr() net.Addr {
	switch {
	case s.tls != nil:
		return s.tls.Addr()
	case s.tlsStreams != nil:
		return s.tlsStreams.Addr()
	}
	return nil
}

// addrOrNil is the address of l, or nil, for logging.
func addrOrNil(l *streamListener) net.Addr {
	if l == nil {
		return nil
	}
	return l.Addr()
}

// AllocationCount returns the number of live allocations.
func (s *Server) AllocationCount() int {
	return s.pion.AllocationCount()
}

// Close stops the server: it closes the sockets, every client connection
// and every allocation, and returns once the goroutines serving them are
// done (or after a timeout, with an error).
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		err := s.pion.Close()
		for _, l := range []*streamListener{s.tcp, s.tls, s.tlsStreams} {
			if l != nil {
				l.closeConns()
			}
		}
		if !s.track.wait(closeTimeout) {
			err = errors.Join(err, errCloseTimeout)
		}
		s.m.unregister(s.reg)
		if err != nil {
			s.closeErr = fmt.Errorf("turn: close: %w", err)
		}
		s.log.Info("turn server stopped")
	})
	return s.closeErr
}
