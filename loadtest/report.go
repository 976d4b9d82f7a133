package loadtest

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in an HDR histogram of microseconds from 1 µs to
// maxLatency, to 3 significant digits (0.1%): a fixed amount of memory,
// whatever the number of samples. A latency past maxLatency counts as
// maxLatency.
const (
	maxLatency    = time.Minute
	latencyDigits = 3
)

// latencies is an HDR histogram that several goroutines record into.
type latencies struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

// newLatencies returns an empty latency histogram.
func newLatencies() *latencies {
	return &latencies{h: hdrhistogram.New(1, maxLatency.Microseconds(), latencyDigits)}
}

// record adds d, clamped to the histogram's range.
func (l *latencies) record(d time.Duration) {
	l.mu.Lock()
	l.h.RecordValue(min(max(d.Microseconds(), 1), maxLatency.Microseconds()))
	l.mu.Unlock()
}

// count returns how many latencies were recorded.
func (l *latencies) count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h.TotalCount()
}

// at returns the latency at quantile q (0 to 100).
func (l *latencies) at(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.h.ValueAtQuantile(q)) * time.Microsecond
}

// Percentile is one point of a latency distribution: Quantile (0 to 100) of
// the samples took at most Value.
type Percentile struct {
	Quantile float64       `json:"percentile"`
	Value    time.Duration `json:"value_ns"`
}

// Distribution summarizes one latency of a run (delivery, call setup, TURN
// allocation, ...) from its HDR histogram: the usual percentiles, and Points,
// the whole percentile spectrum (more points toward the tail), which the
// HTML report plots.
type Distribution struct {
	Name  string        `json:"name"`
	Count int64         `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
	// Points run from quantile 0 to 100, five per halving of the distance
	// to 100 (50, 75, 87.5, ... each split in five).
	Points []Percentile `json:"points"`
}

// distribution summarizes l under name; the zero Distribution (with the
// name) when nothing was recorded.
func (l *latencies) distribution(name string) Distribution {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := Distribution{Name: name, Count: l.h.TotalCount()}
	if d.Count == 0 {
		return d
	}
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	d.P50, d.P90 = us(l.h.ValueAtQuantile(50)), us(l.h.ValueAtQuantile(90))
	d.P99, d.P999 = us(l.h.ValueAtQuantile(99)), us(l.h.ValueAtQuantile(99.9))
	d.Max = us(l.h.Max())
	for _, b := range l.h.CumulativeDistributionWithTicks(5) {
		d.Points = append(d.Points, Percentile{Quantile: b.Quantile, Value: us(b.ValueAt)})
	}
	return d
}

// String renders the distribution's percentiles on one line.
func (d Distribution) String() string {
	if d.Count == 0 {
		return d.Name + ": no samples"
	}
	return fmt.Sprintf("%s: p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (%d samples)",
		d.Name, round(d.P50), round(d.P90), round(d.P99), round(d.P999), round(d.Max), d.Count)
}

// round shortens a latency for people: three significant digits.
func round(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Second:
		return d.Round(time.Second)
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// countReason counts one failure of reason in failures; once max distinct
// reasons are counted, a new one counts as "other".
func countReason(failures map[string]int, reason string, max int) {
	if _, ok := failures[reason]; !ok && len(failures) >= max {
		reason = "other"
	}
	failures[reason]++
}

// topReasons returns up to n of the reasons counted in failures, the most
// frequent first.
func topReasons(failures map[string]int, n int) []string {
	rs := slices.Collect(maps.Keys(failures))
	slices.SortFunc(rs, func(a, b string) int {
		if c := cmp.Compare(failures[b], failures[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return rs[:min(n, len(rs))]
}

// section adds a titled block of lines to a report being rendered.
func section(b *strings.Builder, lines ...string) {
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
}
