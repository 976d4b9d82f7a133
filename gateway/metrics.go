package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus collectors. Labels never carry user
// names, rooms or secrets.
type metrics struct {
	connections     *prometheus.GaugeVec
	connsTotal      *prometheus.CounterVec
	rejected        *prometheus.CounterVec
	messagesIn      *prometheus.CounterVec
	messagesOut     *prometheus.CounterVec
	deliveryLatency prometheus.Histogram
	publishLatency  prometheus.Histogram
	slowConsumers   prometheus.Counter
	replayRefused   prometheus.Counter
	errorsSent      *prometheus.CounterVec
	heartbeatClose  prometheus.Counter
	draining        prometheus.Gauge
	// The hub's repairs of what the bus delivers (see hub).
	gapFills         prometheus.Counter
	gapMessages      prometheus.Counter
	continuityBreaks prometheus.Counter
	duplicates       prometheus.Counter
	// The poller's (poll.go): polledVec resolved per transport, readers.
	polledVec *prometheus.GaugeVec
	polled    [2]prometheus.Gauge
	readers   prometheus.Gauge

	// out is messagesOut resolved per transport, for the write path.
	out [2]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "parley_connections", Help: "Open client sessions by transport.",
		}, []string{"transport"}),
		connsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_connections_total", Help: "Client sessions opened, by transport.",
		}, []string{"transport"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_connections_rejected_total", Help: "Connection attempts refused, by reason.",
		}, []string{"reason"}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_messages_published_total", Help: "Messages published through this node, by source (ws, http).",
		}, []string{"source"}),
		messagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_messages_delivered_total", Help: "Room messages written to clients, by transport.",
		}, []string{"transport"}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "parley_delivery_latency_seconds",
			Help:    "Time from the bus accepting a message to its write to a client (oldest message of each write).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		publishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "parley_bus_publish_seconds",
			Help:    "Latency of bus publishes, including local fan-out.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_slow_consumer_closes_total", Help: "Sessions closed because their outgoing queue passed its bound (queued frames dropped).",
		}),
		replayRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_replay_refused_total", Help: "Resumes answered recovered: false because their replay passed the replay limit.",
		}),
		errorsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_errors_total", Help: "Error frames and API errors sent, by code.",
		}, []string{"code"}),
		heartbeatClose: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_heartbeat_timeouts_total", Help: "WebSocket sessions closed for not answering a ping.",
		}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "parley_draining", Help: "1 while the node drains its clients.",
		}),
		gapFills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_gap_fills_total", Help: "Gap fills started: a room read its history because the bus skipped a message, delivered another epoch, or resubscribed.",
		}),
		gapMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_gap_messages_total", Help: "Room messages that gap fills read from history and delivered to the room's sessions on this node.",
		}),
		continuityBreaks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_continuity_breaks_total", Help: "Rooms whose history no longer reached their position on this node (a new epoch, or a gap that aged out): their sessions were told to reconnect.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_duplicates_dropped_total", Help: "Room messages the bus delivered at or below the room's position on this node, dropped.",
		}),
		polledVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "parley_polled_sessions", Help: "Sessions served by the poller (no goroutine of their own while idle), by transport.",
		}, []string{"transport"}),
		readers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "parley_poll_readers", Help: "The poller's readers running: sessions reading or handling frames right now.",
		}),
	}
	// Every transport's series exists from the start, at zero.
	for _, t := range []transportKind{transportWS, transportSSE} {
		m.connections.WithLabelValues(t.String())
		m.connsTotal.WithLabelValues(t.String())
	}
	for _, reason := range []string{"auth", "origin", "ip_limit", "handshake", "subprotocol", "draining"} {
		m.rejected.WithLabelValues(reason)
	}
	for _, src := range []string{"ws", "http"} {
		m.messagesIn.WithLabelValues(src)
	}
	m.out[transportWS] = m.messagesOut.WithLabelValues(transportWS.String())
	m.out[transportSSE] = m.messagesOut.WithLabelValues(transportSSE.String())
	m.polled[transportWS] = m.polledVec.WithLabelValues(transportWS.String())
	m.polled[transportSSE] = m.polledVec.WithLabelValues(transportSSE.String())
	if reg != nil {
		reg.MustRegister(m.connections, m.connsTotal, m.rejected, m.messagesIn, m.messagesOut,
			m.deliveryLatency, m.publishLatency, m.slowConsumers, m.replayRefused, m.errorsSent, m.heartbeatClose, m.draining,
			m.gapFills, m.gapMessages, m.continuityBreaks, m.duplicates, m.polledVec, m.readers)
	}
	return m
}
