package stun

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Results, the value of the result label.
const (
	resultAnswered    = "answered"
	resultRateLimited = "rate_limited"
	resultDropped     = "dropped"
)

type metrics struct {
	requests                       *prometheus.CounterVec
	answered, rateLimited, dropped prometheus.Counter
}

func newMetrics() *metrics {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "parley_stun_requests_total",
		Help: "Datagrams received by the STUN server, by result: answered, rate_limited (per-source limit), dropped (malformed or not a binding request).",
	}, []string{"result"})
	return &metrics{
		requests:    requests,
		answered:    requests.WithLabelValues(resultAnswered),
		rateLimited: requests.WithLabelValues(resultRateLimited),
		dropped:     requests.WithLabelValues(resultDropped),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	if err := r.Register(m.requests); err != nil {
		return fmt.Errorf("stun: register metrics: %w", err)
	}
	return nil
}

func (m *metrics) unregister(r prometheus.Registerer) {
	if r != nil {
		r.Unregister(m.requests)
	}
}
