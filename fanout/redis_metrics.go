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
	shards     prometheus.Collector
}

func newRedisMetrics(shards func(connected bool) float64) *redisMetrics {
	return &redisMetrics{
		shards: shardGauges{
			desc:   prometheus.NewDesc("parley_redis_shards", "The bus's pub/sub connections: one on a single Redis, one per master that serves its channels in a Redis Cluster; by state, connected (up and subscribed) or down.", []string{"state"}, nil),
			shards: shards,
		},
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "parley_redis_connected",
			Help: "1 while every pub/sub connection of the bus to Redis is up and subscribed, else 0. On a single Redis the node is ready then; in a Redis Cluster readiness follows only the connection to the master of the node's own channel.",
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
	return []prometheus.Collector{m.connected, m.reconnects, m.lag, m.dropped, m.errors, m.shards}
}

// shardGauges is parley_redis_shards, counted on scrape.
type shardGauges struct {
	desc   *prometheus.Desc
	shards func(connected bool) float64
}

func (g shardGauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g shardGauges) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, g.shards(true), "connected")
	ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, g.shards(false), "down")
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
