package signaling

import "github.com/prometheus/client_golang/prometheus"

// metrics are signaling's Prometheus collectors. Labels never carry call
// names, users or sessions.
type metrics struct {
	// calls and the two peers gauges count on scrape what the Service
	// holds, so that joins and leaves keep no counters.
	calls       prometheus.Collector
	peers       [2]prometheus.Collector
	relayed     prometheus.Counter
	rejected    *prometheus.CounterVec
	firstAnswer prometheus.Histogram
	resumes     *prometheus.CounterVec
	lost        prometheus.Counter
	dropped     prometheus.Counter
}

// Reasons a signal is refused, for parley_signals_rejected_total.
const (
	rejectInvalid   = "invalid"    // the data is not a valid SDP or candidate
	rejectNoPeer    = "no_peer"    // the recipient is not in the call
	rejectNotJoined = "not_joined" // the sender is not in the call
	rejectRate      = "rate"       // the sender's rate limit
	rejectHeldFull  = "held_full"  // the recipient is away and its held signals are at their bound
	rejectBus       = "bus"        // the bus failed
)

// newMetrics makes signaling's collectors: calls() counts the calls with
// peers on the node, peers(away) its peers, connected or away.
func newMetrics(reg prometheus.Registerer, calls func() float64, peers func(away bool) float64) *metrics {
	peerGauge := func(state string, away bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "parley_call_peers", Help: "Call peers held by this node: connected, or away within the grace period.",
			ConstLabels: prometheus.Labels{"state": state},
		}, func() float64 { return peers(away) })
	}
	m := &metrics{
		calls: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "parley_calls_active", Help: "Calls with at least one peer on this node.",
		}, calls),
		peers: [2]prometheus.Collector{peerGauge("connected", false), peerGauge("away", true)},
		relayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_signals_relayed_total", Help: "Signals (SDP and ICE candidates) accepted from this node's clients and relayed.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_signals_rejected_total", Help: "Signals refused and not relayed, by reason.",
		}, []string{"reason"}),
		firstAnswer: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "parley_call_first_answer_seconds",
			Help:    "Time from a peer's join to the first SDP answer it sent or received.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_call_resumes_total", Help: "Joins with a resume token: resumed (the same peer), or lost (the peer was no longer in the call, or the token was another user's: a fresh peer joined).",
		}, []string{"result"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_call_peers_lost_total", Help: "Peers whose connection stayed gone past the grace period and who left their call.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_signals_dropped_total", Help: "Signals that reached this node for a peer that had left, or that could not be posted again for a peer that went away.",
		}),
	}
	for _, r := range []string{rejectInvalid, rejectNoPeer, rejectNotJoined, rejectRate, rejectHeldFull, rejectBus} {
		m.rejected.WithLabelValues(r)
	}
	for _, r := range []string{"resumed", "lost"} {
		m.resumes.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.calls, m.peers[0], m.peers[1], m.relayed, m.rejected, m.firstAnswer, m.resumes, m.lost, m.dropped)
	}
	return m
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{m.calls, m.peers[0], m.peers[1], m.relayed, m.rejected, m.firstAnswer, m.resumes, m.lost, m.dropped} {
		reg.Unregister(c)
	}
}
