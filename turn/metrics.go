package turn

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Transports, the value of the transport label.
const (
	transportUDP = "udp"
	transportTCP = "tcp"
	transportTLS = "tls"
)

// metrics are the server's Prometheus collectors. Labels never carry a user
// name, a credential or an address.
type metrics struct {
	allocActive  *prometheus.GaugeVec   // transport
	allocCreated *prometheus.CounterVec // transport
	relayBytes   *prometheus.CounterVec // transport, direction
	relayPackets *prometheus.CounterVec // transport, direction
	authFailures *prometheus.CounterVec // reason
	deniedPeers  *prometheus.CounterVec // method
	quotaRejects *prometheus.CounterVec // scope
	stunRequests *prometheus.CounterVec // result
	rateLimited  prometheus.Counter
	malformed    prometheus.Counter
}

// Label values.
const (
	dirToPeer   = "to_peer"
	dirFromPeer = "from_peer"

	reasonBadIntegrity = "bad_integrity"
	reasonBadUsername  = "bad_username"
	reasonExpired      = "expired"
	reasonUnknownRealm = "unknown_realm"

	scopeUser  = "user"
	scopeTotal = "total"
)

func newMetrics() *metrics {
	return &metrics{
		allocActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "parley_turn_allocations_active",
			Help: "Live TURN allocations, by client transport.",
		}, []string{"transport"}),
		allocCreated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_allocations_created_total",
			Help: "TURN allocations created, by client transport.",
		}, []string{"transport"}),
		relayBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_relayed_bytes_total",
			Help: "Payload bytes relayed between clients and peers, by client transport and direction.",
		}, []string{"transport", "direction"}),
		relayPackets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_relayed_packets_total",
			Help: "Datagrams relayed between clients and peers, by client transport and direction.",
		}, []string{"transport", "direction"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_auth_failures_total",
			Help: "TURN requests refused with 401, by reason.",
		}, []string{"reason"}),
		deniedPeers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_denied_peers_total",
			Help: "CreatePermission and ChannelBind requests refused by the peer-address policy, by method.",
		}, []string{"method"}),
		quotaRejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_quota_rejections_total",
			Help: "Allocations refused with 486, by the quota that was reached (user or total).",
		}, []string{"scope"}),
		stunRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_turn_stun_requests_total",
			Help: "STUN binding requests on the TURN ports, by result (answered or rate_limited).",
		}, []string{"result"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_turn_rate_limited_total",
			Help: "Requests without a valid credential dropped by the per-source rate limit.",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_turn_malformed_total",
			Help: "Inbound frames dropped as malformed STUN or unexpected messages.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.allocActive, m.allocCreated, m.relayBytes, m.relayPackets, m.authFailures,
		m.deniedPeers, m.quotaRejects, m.stunRequests, m.rateLimited, m.malformed,
	}
}

// register registers every collector on r, undoing the registrations done
// so far if one fails.
func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	var done []prometheus.Collector
	for _, c := range m.collectors() {
		if err := r.Register(c); err != nil {
			for _, d := range done {
				r.Unregister(d)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return fmt.Errorf("turn: metrics already registered (one TURN server per registry): %w", err)
			}
			return fmt.Errorf("turn: register metrics: %w", err)
		}
		done = append(done, c)
	}
	return nil
}

func (m *metrics) unregister(r prometheus.Registerer) {
	if r == nil {
		return
	}
	for _, c := range m.collectors() {
		r.Unregister(c)
	}
}

// relayCounters are the per-transport counters a relay socket adds to on
// every datagram, resolved once so the relay path does no label lookups.
type relayCounters struct {
	toPeerBytes, toPeerPackets     prometheus.Counter
	fromPeerBytes, fromPeerPackets prometheus.Counter
	active                         prometheus.Gauge
	created                        prometheus.Counter
}

func (m *metrics) relayCounters(transport string) *relayCounters {
	return &relayCounters{
		toPeerBytes:     m.relayBytes.WithLabelValues(transport, dirToPeer),
		toPeerPackets:   m.relayPackets.WithLabelValues(transport, dirToPeer),
		fromPeerBytes:   m.relayBytes.WithLabelValues(transport, dirFromPeer),
		fromPeerPackets: m.relayPackets.WithLabelValues(transport, dirFromPeer),
		active:          m.allocActive.WithLabelValues(transport),
		created:         m.allocCreated.WithLabelValues(transport),
	}
}
