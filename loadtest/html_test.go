package loadtest

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

// renderHTML renders r and parses the page.
func renderHTML(t *testing.T, r Report) (string, *html.Node) {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatalf("WriteHTML: %v", err)
	}
	doc, err := html.Parse(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return b.String(), doc
}

// elements returns the elements of n called tag, in document order.
func elements(n *html.Node, tag string) []*html.Node {
	var found []*html.Node
	for d := range n.Descendants() {
		if d.Type == html.ElementNode && d.Data == tag {
			found = append(found, d)
		}
	}
	return found
}

// text returns the text under n.
func text(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// recorded returns the distribution of samples drawn by next.
func recorded(name string, samples int, next func() time.Duration) Distribution {
	l := newLatencies()
	for range samples {
		l.record(next())
	}
	return l.distribution(name)
}

// handmadeReport is a fanout run over two nodes with a hostile name in
// every field a user could have chosen.
func handmadeReport() Report {
	rng := rand.New(rand.NewPCG(1, 2))
	lat := func(base time.Duration) func() time.Duration {
		return func() time.Duration {
			return base + time.Duration(rng.ExpFloat64()*float64(base/4))
		}
	}
	delivery := recorded("delivery latency", 5000, lat(time.Millisecond))
	return Report{
		Scenario: "fanout", Transport: "ws", Nodes: 2, Conns: 200, Rooms: 4, Sources: 254,
		ConnectIn: 120 * time.Millisecond, ConnectRate: 1666, Duration: 2 * time.Second,
		Published: 25, Delivered: 5000, PerSecond: 2500, Gaps: 1,
		P50: delivery.P50, P90: delivery.P90, P99: delivery.P99, P999: delivery.P999, Max: delivery.Max,
		RSSBefore: 20 << 20, RSSAfter: 30 << 20, PerConn: 50 << 10,
		NodeCPU: 0.5, CPUPerMillion: 100,
		FirstError: `dial ws://127.0.0.1:1/v1/ws: <b>refused</b>`,
		Distributions: []Distribution{
			delivery,
			recorded(`<script>alert("x")</script>`, 100, lat(10*time.Millisecond)),
		},
		ByNode: []NodeLatency{
			{URL: "ws://127.0.0.1:8080/v1/ws", Conns: 100, Latency: recorded("delivery latency", 2500, lat(time.Millisecond))},
			{URL: `ws://<img src=x onerror=alert(1)>/v1/ws`, Conns: 100, Latency: recorded("delivery latency", 2500, lat(2*time.Millisecond))},
		},
	}
}

func TestHTMLReport(t *testing.T) {
	r := handmadeReport()
	page, doc := renderHTML(t, r)

	if got, want := len(elements(doc, "svg")), 2; got != want {
		t.Errorf("got %d plots, want %d", got, want)
	}
	if s := elements(doc, "script"); len(s) != 0 {
		t.Errorf("got %d script elements, want none", len(s))
	}
	if got := len(elements(doc, "img")); got != 0 {
		t.Errorf("got %d img elements from a node's URL, want none", got)
	}
	for _, bad := range []string{"<script", "http://", "https://", "<b>"} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	if !strings.Contains(text(doc), `<script>alert("x")</script>`) {
		t.Error("the distribution named <script> is not in the page's text")
	}

	var ticks []string
	for _, tx := range elements(elements(doc, "svg")[0], "text") {
		ticks = append(ticks, text(tx))
	}
	for _, want := range []string{"0%", "90%", "99%", "99.9%", "percentile", "latency (ms)", "0", "2", "8"} {
		if !contains(ticks, want) {
			t.Errorf("delivery plot labels %q lack %q", ticks, want)
		}
	}
	// The delivery plot has a line for all subscribers and one per node;
	// the other plot one.
	for i, want := range []int{3, 1} {
		if got := len(elements(elements(doc, "svg")[i], "path")); got != want {
			t.Errorf("plot %d: got %d lines, want %d", i, got, want)
		}
	}
	var headers []string
	for _, th := range elements(doc, "th") {
		headers = append(headers, text(th))
	}
	for _, want := range []string{"p50", "p90", "p99", "p99.9", "max", "samples"} {
		if !contains(headers, want) {
			t.Errorf("table headers %q lack %q", headers, want)
		}
	}
	legend := ""
	for _, ul := range elements(doc, "ul") {
		if attr(ul, "class") == "legend" {
			legend += text(ul)
		}
	}
	for _, n := range r.ByNode {
		if !strings.Contains(legend, n.URL) {
			t.Errorf("legend %q lacks node %q", legend, n.URL)
		}
	}

	pres := elements(doc, "pre")
	if len(pres) < 2 {
		t.Fatalf("got %d pre elements, want the summary and the JSON", len(pres))
	}
	if got, want := text(pres[len(pres)-2]), r.String(); got != want {
		t.Errorf("summary:\ngot  %q\nwant %q", got, want)
	}
	if len(elements(doc, "details")) != 1 {
		t.Error("the JSON is not in a details element")
	}
	var back Report
	if err := json.Unmarshal([]byte(text(pres[len(pres)-1])), &back); err != nil {
		t.Fatalf("the page's JSON: %v", err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Error("the page's JSON is not the report")
	}

	again, _ := renderHTML(t, r)
	if again != page {
		t.Error("the same report gave two different pages")
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func TestHTMLOddReports(t *testing.T) {
	one := Distribution{Name: "one", Count: 1, P50: time.Millisecond, P90: time.Millisecond, P99: time.Millisecond, P999: time.Millisecond, Max: time.Millisecond,
		Points: []Percentile{{100, time.Millisecond}}}
	tests := []struct {
		name  string
		r     Report
		plots int
		// want is text the page shows.
		want string
	}{
		{"empty", Report{}, 0, "load test"},
		{"no samples", Report{Scenario: "fanout", Distributions: []Distribution{{Name: "delivery latency"}}}, 0, "No samples."},
		{"one sample", Report{Distributions: []Distribution{one}}, 1, "100%: 1ms"},
		{"zero latencies", Report{Distributions: []Distribution{{Name: "zero", Count: 3, Points: []Percentile{{0, 0}, {50, 0}, {100, 0}}}}}, 1, "latency (µs)"},
		{"huge latencies", Report{Distributions: []Distribution{recorded("huge", 1000, func() time.Duration { return time.Hour })}}, 1, "latency (s)"},
		{"percentiles without points", Report{Distributions: []Distribution{{Name: "bare", Count: 1e6, P50: 1, P90: 2, P99: 3, P999: 4, Max: time.Second}}}, 1, "99.9999%"},
		{"nodes without samples", Report{Distributions: []Distribution{one}, ByNode: []NodeLatency{{URL: "ws://a", Latency: Distribution{Name: "elsewhere"}}}}, 1, "no samples"},
		{"not a number", Report{Scenario: "fanout", PerSecond: math.NaN(), CPUPerMillion: math.Inf(1)}, 0, "NaN"},
		{"calls and turn", Report{Scenario: "calls", Calls: &CallsReport{}, TURN: &TURNReport{}}, 0, "Summary"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page, doc := renderHTML(t, tt.r)
			svgs := elements(doc, "svg")
			if len(svgs) != tt.plots {
				t.Errorf("got %d plots, want %d", len(svgs), tt.plots)
			}
			for _, svg := range svgs {
				if strings.Contains(text(svg), "NaN") || strings.Contains(text(svg), "Inf") {
					t.Errorf("plot labels: %q", text(svg))
				}
				for _, c := range elements(svg, "circle") {
					x, errx := strconv.ParseFloat(attr(c, "cx"), 64)
					y, erry := strconv.ParseFloat(attr(c, "cy"), 64)
					if errx != nil || erry != nil || x < plotLeft || x > plotW-plotRight || y < plotTop || y > plotH-plotBott {
						t.Errorf("point (%s, %s) is off the plot", attr(c, "cx"), attr(c, "cy"))
					}
				}
			}
			if !strings.Contains(text(doc), tt.want) {
				t.Errorf("page lacks %q", tt.want)
			}
			if strings.Contains(page, "9,223,372") {
				t.Error("page shows a number that overflowed")
			}
		})
	}
}

func TestNinesLabel(t *testing.T) {
	for k, want := range []string{"0%", "90%", "99%", "99.9%", "99.99%", "99.999%"} {
		if got := ninesLabel(k); got != want {
			t.Errorf("ninesLabel(%d): got %q, want %q", k, got, want)
		}
	}
}

func TestYScale(t *testing.T) {
	tests := []struct {
		name   string
		top    time.Duration
		ceil   time.Duration
		suffix string
	}{
		{"zero", 0, 5 * time.Microsecond, "µs"},
		{"microseconds", 730 * time.Microsecond, 800 * time.Microsecond, "µs"},
		{"milliseconds", 4200 * time.Microsecond, 5 * time.Millisecond, "ms"},
		{"a second", 999 * time.Millisecond, time.Second, "s"},
		{"an hour", time.Hour, 4000 * time.Second, "s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			step, ceil, _, suffix := yScale(tt.top)
			if time.Duration(ceil) != tt.ceil || suffix != tt.suffix {
				t.Errorf("got ceiling %s in %s, want %s in %s", time.Duration(ceil), suffix, tt.ceil, tt.suffix)
			}
			if n := ceil / step; n < 4 || n > 10 {
				t.Errorf("got %.0f ticks, want 4 to 10", n)
			}
		})
	}
}

// TestHTMLRealistic renders a resume run over three nodes; with
// PARLEY_HTML_REPORT set, it writes the page there to be looked at.
func TestHTMLRealistic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	// A body around base with a long tail: most deliveries are quick, a
	// few wait behind a garbage collection or a slow socket.
	lat := func(base time.Duration) func() time.Duration {
		return func() time.Duration {
			d := float64(base) * math.Exp(rng.NormFloat64()*0.35)
			if rng.IntN(1000) == 0 {
				d += rng.Float64() * float64(40*base)
			}
			return time.Duration(d)
		}
	}
	nodes := []string{"ws://127.0.0.1:8080/v1/ws", "ws://127.0.0.1:8081/v1/ws", "ws://127.0.0.1:8082/v1/ws"}
	var byNode []NodeLatency
	for i, u := range nodes {
		byNode = append(byNode, NodeLatency{URL: u, Conns: 3334 - i, Latency: recorded("delivery latency", 100_000, lat(time.Duration(900+350*i)*time.Microsecond))})
	}
	delivery := recorded("delivery latency", 300_000, lat(1200*time.Microsecond))
	recovery := recorded("recovery after a drop", 1000, func() time.Duration {
		return 150*time.Millisecond + time.Duration(rng.Float64()*float64(600*time.Millisecond))
	})
	r := Report{
		Scenario: "resume", Transport: "ws", Nodes: 3, Conns: 10_000, Rooms: 100, Sources: 254,
		ConnectIn: 1830 * time.Millisecond, ConnectRate: 5464, Duration: 30 * time.Second,
		Published: 30_000, Delivered: 2_999_412, PerSecond: 99_980,
		P50: delivery.P50, P90: delivery.P90, P99: delivery.P99, P999: delivery.P999, Max: delivery.Max,
		RSSBefore: 41 << 20, RSSAfter: 162 << 20, PerConn: 12390,
		NodeCPU: 21.4, CPUPerMillion: 7.1,
		Distributions: []Distribution{delivery, recovery},
		ByNode:        byNode,
		Resume:        &ResumeReport{Dropped: 1000, Recovered: 1000, Recovery: recovery},
	}
	page, doc := renderHTML(t, r)
	if got := len(elements(doc, "svg")); got != 2 {
		t.Errorf("got %d plots, want 2", got)
	}
	if got := len(page); got > 200<<10 {
		t.Errorf("page is %d bytes, want at most 200 KiB", got)
	}
	if name := os.Getenv("PARLEY_HTML_REPORT"); name != "" {
		if err := os.WriteFile(name, []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", name, len(page))
	}
}
