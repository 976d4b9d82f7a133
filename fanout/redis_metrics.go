package fanout

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// redisMetrics are a Redis bus's Prometheus collectors. They exist whether or
// not a Registerer was given, so the bus updates them unconditionally.
type redisMetrics struct {
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	lag        prometheus.Histogram
	dropped    prometheus.Counter
	errors     prometheus.Counter
}

func newRedisMetrics() *redisMetrics {
	return &redisMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "parley_redis_connected",
			Help: "1 while the bus's pub/sub connection to Redis is up and subscribed, else 0.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_redis_reconnects_total",
			Help: "Pub/sub connections to Redis made again after one was lost.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "parley_redis_pubsub_lag_seconds",
			Help:    "Time from Redis accepting a message to its handler call on this node.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_redis_dropped_total",
			Help: "Pub/sub payloads dropped: undecodable, or sent to a session no longer on this node.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_redis_errors_total",
			Help: "Redis commands that failed: the bus's calls and its lease renewals.",
		}),
	}
}

func (m *redisMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.connected, m.reconnects, m.lag, m.dropped, m.errors}
}

// register registers the collectors with reg, if set: all or none.
func (m *redisMetrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for i, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors()[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("fanout: register redis metrics: %w", err)
		}
	}
	return nil
}

func (m *redisMetrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
