package loadtest

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WriteHTML writes the report as a self-contained HTML page: the run's
// settings, its key figures, each latency distribution as a percentile table
// and a plot of its percentile spectrum, then the text summary and the
// report as JSON. The page loads nothing from anywhere (styles and plots are
// inline), so it can be mailed or archived and opened offline, and the same
// report always gives the same page.
func (r Report) WriteHTML(w io.Writer) error {
	if err := htmlPage.Execute(w, r.htmlView()); err != nil {
		return fmt.Errorf("loadtest: html report: %w", err)
	}
	return nil
}

// htmlView is what the page template shows: everything formatted, so the
// template only lays it out.
type htmlView struct {
	Scenario, About string
	Settings        []htmlFigure
	Figures         []htmlFigure
	FirstError      string
	Distributions   []htmlDistribution
	// Sections are scenario figures given as text (calls, TURN).
	Sections []htmlSection
	Summary  string
	JSON     string
}

// htmlFigure is one labelled value; State is "good", "bad" or empty.
type htmlFigure struct {
	Label, Value, Note, State string
}

// htmlSection is a titled block of preformatted text.
type htmlSection struct {
	Title, Text string
}

// htmlDistribution is one latency distribution: a table row for each series
// (the distribution, then the nodes' when it is the delivery latency) and
// the plot of those that have samples; neither when none has.
type htmlDistribution struct {
	Name string
	Rows []htmlRow
	Plot *htmlPlot
}

// htmlRow is one series of a distribution: a row of its table, or an entry
// of its plot's legend; Class colours its swatch as its line.
type htmlRow struct {
	Label, P50, P90, P99, P999, Max, Count string
	Class                                  string
}

var scenarioAbout = map[string]string{
	"connect": "Connections opened and held: what each one costs the node.",
	"fanout":  "Subscribers spread over rooms, one publisher per room at a fixed rate.",
	"rooms":   "Many small rooms whose members each publish into their own room.",
	"resume":  "Fanout, with a share of the subscribers dropped at once halfway through, to reconnect and resume.",
	"calls":   "Calls set up between pairs of peers through the node's signaling.",
	"turn":    "TURN allocations made on the node and packets relayed through them.",
}

// htmlView formats the report for the page.
func (r Report) htmlView() htmlView {
	v := htmlView{Scenario: r.Scenario, About: scenarioAbout[r.Scenario], FirstError: r.FirstError, Summary: r.String()}
	if v.Scenario == "" {
		v.Scenario = "load test"
	}
	delivery := r.Scenario == "fanout" || r.Scenario == "rooms" || r.Scenario == "resume" || r.Published > 0 || r.Delivered > 0
	set := func(label, value string) { v.Settings = append(v.Settings, htmlFigure{Label: label, Value: value}) }
	if r.Transport != "" && r.Scenario != "calls" && r.Scenario != "turn" {
		t := r.Transport
		if name, ok := map[string]string{"ws": "WebSocket", "sse": "Server-Sent Events"}[t]; ok {
			t = name + " (" + t + ")"
		}
		set("transport", t)
	}
	if r.Nodes > 0 {
		set("nodes", groupDigits(int64(r.Nodes)))
	}
	if r.Conns > 0 {
		set("connections", groupDigits(int64(r.Conns)))
	}
	if r.Rooms > 0 {
		set("rooms", groupDigits(int64(r.Rooms)))
	}
	if r.Duration > 0 {
		set("duration", round(r.Duration).String())
	}
	if r.Sources > 1 {
		set("source addresses", strconv.Itoa(r.Sources))
	}
	if !r.Started.IsZero() {
		set("started", r.Started.UTC().Format("2006-01-02 15:04 UTC"))
	}

	fig := func(label, value, note, state string) {
		v.Figures = append(v.Figures, htmlFigure{Label: label, Value: value, Note: note, State: state})
	}
	count := func(label string, n int64) {
		state := "good"
		if n > 0 {
			state = "bad"
		}
		fig(label, groupDigits(n), "", state)
	}
	if delivery {
		fig("deliveries a second", groupRound(r.PerSecond), "", "")
		fig("published", groupDigits(r.Published), "", "")
		fig("delivered", groupDigits(r.Delivered), "", "")
		if r.P99 > 0 {
			fig("p99 delivery latency", round(r.P99).String(), "p50 "+round(r.P50).String(), "")
		}
		count("gaps", r.Gaps)
		count("duplicates", r.Duplicates)
		count("lost-recovery events", r.Lost)
	}
	if r.Resume != nil {
		state := "good"
		if r.Resume.Recovered < r.Resume.Dropped {
			state = "bad"
		}
		fig("recovered after a drop", groupDigits(int64(r.Resume.Recovered)), "of "+groupDigits(int64(r.Resume.Dropped))+" dropped at once", state)
		if r.Resume.Recovered > 0 {
			fig("full recovery within", round(r.Resume.Recovery.Max).String(), "", "")
		}
	}
	if r.ConnectIn > 0 {
		note := ""
		if r.Conns > 0 {
			note = groupDigits(int64(r.Conns)) + " connections"
		}
		fig("connect time", round(r.ConnectIn).String(), note, "")
	}
	if r.ConnectRate > 0 {
		fig("connect rate", groupRound(r.ConnectRate)+"/s", "", "")
	}
	if r.ConnectErrors > 0 {
		fig("connect errors", groupDigits(int64(r.ConnectErrors)), "", "bad")
	}
	if r.RSSAfter > 0 {
		fig("memory per connection", fmt.Sprintf("%.1f KiB", float64(r.PerConn)/1024),
			fmt.Sprintf("node memory %.1f → %.1f MiB", float64(r.RSSBefore)/(1<<20), float64(r.RSSAfter)/(1<<20)), "")
	}
	if r.NodeCPU > 0 {
		fig("node CPU", fmt.Sprintf("%.2f s", r.NodeCPU), "while running", "")
	}
	if r.CPUPerMillion > 0 {
		fig("CPU per million deliveries", fmt.Sprintf("%.1f s", r.CPUPerMillion), "", "")
	}

	// The nodes' latencies go with the first distribution of their name,
	// the delivery latency.
	byNode := -1
	if len(r.ByNode) > 0 {
		byNode = max(r.firstNamed(r.ByNode[0].Latency.Name), 0)
	}
	for i, d := range r.Distributions {
		series := []htmlSeries{{label: "all samples", d: d}}
		if i == byNode {
			series[0].label = "all subscribers"
			for _, n := range r.ByNode {
				series = append(series, htmlSeries{label: fmt.Sprintf("%s (%s)", n.URL, groupDigits(int64(n.Conns))), d: n.Latency})
			}
		}
		v.Distributions = append(v.Distributions, newHTMLDistribution(d.Name, series))
	}
	if r.Calls != nil {
		if s := strings.TrimSpace(r.Calls.String()); s != "" {
			v.Sections = append(v.Sections, htmlSection{Title: "Calls", Text: s})
		}
	}
	if r.TURN != nil {
		if s := strings.TrimSpace(r.TURN.String()); s != "" {
			v.Sections = append(v.Sections, htmlSection{Title: "TURN", Text: s})
		}
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		// A NaN or infinite rate cannot be JSON; the rest of the page can
		// still be read.
		js = []byte("the report cannot be written as JSON: " + err.Error())
	}
	v.JSON = string(js)
	return v
}

// firstNamed returns the index of the first distribution called name.
func (r Report) firstNamed(name string) int {
	for i, d := range r.Distributions {
		if d.Name == name {
			return i
		}
	}
	return -1
}

// htmlSeries is one line of a plot and one row of its table.
type htmlSeries struct {
	label string
	d     Distribution
}

// seriesClasses are the CSS classes that colour the series, in turn.
const seriesClasses = 6

// newHTMLDistribution tabulates and plots the series of the distribution
// called name.
func newHTMLDistribution(name string, series []htmlSeries) htmlDistribution {
	hd := htmlDistribution{Name: name}
	for i, s := range series {
		row := htmlRow{Label: s.label, Class: "s" + strconv.Itoa(i%seriesClasses)}
		if s.d.Count == 0 {
			row.P50, row.Count = "no samples", "0"
		} else {
			row.P50, row.P90, row.P99 = round(s.d.P50).String(), round(s.d.P90).String(), round(s.d.P99).String()
			row.P999, row.Max, row.Count = round(s.d.P999).String(), round(s.d.Max).String(), groupDigits(s.d.Count)
		}
		hd.Rows = append(hd.Rows, row)
	}
	hd.Plot = newHTMLPlot(series)
	if hd.Plot == nil {
		// "No samples" says it all.
		hd.Rows = nil
	}
	return hd
}

// groupRound writes f rounded to a whole number with its thousands
// separated; NaN and infinities as such.
func groupRound(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) >= math.MaxInt64 {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	return groupDigits(int64(math.Round(f)))
}

// groupDigits writes n with its thousands separated by commas.
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// The plot's size in SVG units, and its margins: the axis labels go in the
// left and bottom ones.
const (
	plotW, plotH                           = 640, 320
	plotLeft, plotRight, plotTop, plotBott = 64, 44, 28, 44
	// maxDecades bounds the x axis at 99.9999999%.
	maxDecades = 9
)

// htmlPlot is an inline SVG plot of percentile spectra in the HdrHistogram
// style: x is the percentile on a log scale of 1/(1-q), so each nine
// (90%, 99%, 99.9%, ...) takes the same width and the tail is as visible as
// the body; y is the latency, from zero.
type htmlPlot struct {
	W, H                   int
	Left, Right, Top, Bott int
	XTicks, YTicks         []htmlTick
	// YTitle names the latency axis and the unit of its labels.
	YTitle string
	Lines  []htmlLine
	// Legend is shown when there are several lines.
	Legend []htmlRow
}

// htmlTick is a labelled grid line; a narrow screen hides the labels of
// the Minor ones to make room for the others.
type htmlTick struct {
	Pos   string
	Label string
	Minor bool
}

// htmlLine is one series drawn as an SVG path with a marker at each point.
type htmlLine struct {
	Class  string
	Path   string
	Points []htmlPoint
}

// htmlPoint is a marker; Title is shown on hovering it.
type htmlPoint struct {
	X, Y, Title string
}

// spectrum returns d's percentile spectrum: Points, or when it has none the
// usual percentiles.
func spectrum(d Distribution) []Percentile {
	if len(d.Points) > 0 || d.Count == 0 {
		return d.Points
	}
	return []Percentile{{50, d.P50}, {90, d.P90}, {99, d.P99}, {99.9, d.P999}, {100, d.Max}}
}

// newHTMLPlot plots the series that have samples; nil when none has.
func newHTMLPlot(series []htmlSeries) *htmlPlot {
	// The x of a quantile is the number of nines it has: log10(1/(1-q)).
	// Quantile 100 goes at the end of the line, where the last of count
	// samples would be: log10(count), or past the last finite point.
	nines := func(q float64) float64 { return -math.Log10(1 - q/100) }
	end, top := 0.0, time.Duration(0)
	for _, s := range series {
		pts := spectrum(s.d)
		if len(pts) == 0 {
			continue
		}
		end = max(end, math.Log10(float64(max(s.d.Count, 1))))
		for _, p := range pts {
			if p.Quantile < 100 {
				end = max(end, nines(max(p.Quantile, 0)))
			}
			top = max(top, p.Value)
		}
	}
	if !hasPoints(series) {
		return nil
	}
	end = min(end, maxDecades)
	decades := max(1, int(math.Ceil(end-1e-9)))

	p := &htmlPlot{W: plotW, H: plotH, Left: plotLeft, Right: plotW - plotRight, Top: plotTop, Bott: plotH - plotBott}
	xOf := func(n float64) float64 {
		return plotLeft + float64(plotW-plotLeft-plotRight)*min(n, float64(decades))/float64(decades)
	}
	for k := 0; k <= decades; k++ {
		// Past four nines, a phone labels every other one, and not the
		// last, which would run off its edge.
		minor := decades > 4 && (k%2 == 1 || k == decades)
		p.XTicks = append(p.XTicks, htmlTick{Pos: coord(xOf(float64(k))), Label: ninesLabel(k), Minor: minor})
	}
	step, ceil, unit, suffix := yScale(top)
	yOf := func(v time.Duration) float64 {
		return plotH - plotBott - float64(plotH-plotBott-plotTop)*float64(v)/ceil
	}
	p.YTitle = "latency (" + suffix + ")"
	for i := 0; float64(i)*step <= ceil*(1+1e-9); i++ {
		v := float64(i) * step
		label := strconv.FormatFloat(math.Round(v/unit*1000)/1000, 'f', -1, 64)
		p.YTicks = append(p.YTicks, htmlTick{Pos: coord(yOf(time.Duration(v))), Label: label})
	}

	for i, s := range series {
		pts := spectrum(s.d)
		if len(pts) == 0 {
			continue
		}
		color := "s" + strconv.Itoa(i%seriesClasses)
		line := htmlLine{Class: color}
		if i > 0 {
			line.Class += " part"
		}
		var path strings.Builder
		for j, pt := range pts {
			n := end
			if pt.Quantile < 100 {
				n = nines(max(pt.Quantile, 0))
			}
			x, y := coord(xOf(n)), coord(yOf(pt.Value))
			if j == 0 {
				path.WriteString("M" + x + " " + y)
			} else {
				path.WriteString("L" + x + " " + y)
			}
			title := s.label + ", " + quantileLabel(pt.Quantile) + ": " + round(pt.Value).String()
			line.Points = append(line.Points, htmlPoint{X: x, Y: y, Title: title})
		}
		line.Path = path.String()
		p.Lines = append(p.Lines, line)
		p.Legend = append(p.Legend, htmlRow{Label: s.label, Class: color})
	}
	if len(p.Legend) < 2 {
		p.Legend = nil
	}
	// The whole distribution is drawn last, over its parts.
	slices.Reverse(p.Lines)
	return p
}

func hasPoints(series []htmlSeries) bool {
	for _, s := range series {
		if len(spectrum(s.d)) > 0 {
			return true
		}
	}
	return false
}

// coord writes an SVG coordinate to a tenth of a unit.
func coord(f float64) string {
	return strconv.FormatFloat(math.Round(f*10)/10, 'f', -1, 64)
}

// ninesLabel names the quantile with k nines: 0%, 90%, 99%, 99.9%, ...
func ninesLabel(k int) string {
	switch k {
	case 0:
		return "0%"
	case 1:
		return "90%"
	case 2:
		return "99%"
	}
	return "99." + strings.Repeat("9", k-2) + "%"
}

// quantileLabel writes a quantile (0 to 100) with the digits it needs.
func quantileLabel(q float64) string {
	return strconv.FormatFloat(math.Round(q*1e4)/1e4, 'f', -1, 64) + "%"
}

// yScale chooses the latency axis for values up to top: a round step
// (1, 2, 2.5 or 5 times a power of ten) giving four to six ticks, the axis
// ceiling, and the unit its labels are written in. All but the unit's
// suffix are in nanoseconds.
func yScale(top time.Duration) (step, ceil, unit float64, suffix string) {
	t := max(float64(top), float64(5*time.Microsecond))
	raw := t / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if step = m * mag; step >= raw {
			break
		}
	}
	ceil = math.Ceil(t/step-1e-9) * step
	switch {
	case ceil < float64(time.Millisecond):
		return step, ceil, float64(time.Microsecond), "µs"
	case ceil < float64(time.Second):
		return step, ceil, float64(time.Millisecond), "ms"
	}
	return step, ceil, float64(time.Second), "s"
}

var htmlPage = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>parley loadtest: {{.Scenario}}</title>
<style>
:root {
  --bg: #f6f7f9; --fg: #1c2330; --muted: #5d6878; --card: #fff; --line: #dfe3e9; --grid: #e9ecf0;
  --good: #1a7f4b; --bad: #c62828; --bad-bg: #fdecea;
  --s0: #2f6fdb; --s1: #e0731b; --s2: #2a9d6a; --s3: #b0389c; --s4: #7a5af5; --s5: #c8a415;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14171c; --fg: #e4e8ee; --muted: #98a2b1; --card: #1d2128; --line: #2e343e; --grid: #272c35;
    --good: #4cc38a; --bad: #ff6b63; --bad-bg: #3a1f1f;
    --s0: #6ea1ff; --s1: #ff9b4d; --s2: #4cc38a; --s3: #e06ad0; --s4: #a48bff; --s5: #e8c547;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 24px 16px 48px; }
header { margin-bottom: 20px; }
.brand { color: var(--muted); font-size: 13px; letter-spacing: .06em; text-transform: uppercase; }
h1 { font-size: 28px; margin: 2px 0 4px; }
h2 { font-size: 18px; margin: 0 0 12px; }
.about { color: var(--muted); margin: 0 0 12px; }
.settings { display: flex; flex-wrap: wrap; gap: 6px 8px; margin: 0; padding: 0; list-style: none; }
.settings li { background: var(--card); border: 1px solid var(--line); border-radius: 999px; padding: 2px 10px; font-size: 13px; }
.settings span { color: var(--muted); }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; margin: 0 0 24px; }
.figure { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; }
.figure .label { color: var(--muted); font-size: 13px; }
.figure .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.figure .note { color: var(--muted); font-size: 12px; }
.figure.good .value { color: var(--good); }
.figure.bad { border-color: var(--bad); }
.figure.bad .value { color: var(--bad); }
.error { background: var(--bad-bg); border: 1px solid var(--bad); border-radius: 10px; padding: 10px 14px; margin: 0 0 24px; overflow-wrap: anywhere; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 16px; margin: 0 0 20px; }
.table { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 14px; }
th, td { padding: 5px 8px; text-align: right; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--muted); font-weight: 500; font-size: 13px; }
th:first-child, td:first-child { text-align: left; white-space: normal; min-width: 7em; }
.series { display: flex; align-items: baseline; overflow-wrap: anywhere; }
.series .swatch { flex: none; }
tr:last-child td { border-bottom: 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px; background: currentColor; vertical-align: baseline; }
.empty { color: var(--muted); margin: 12px 0 0; }
svg.plot { display: block; width: 100%; height: auto; margin-top: 12px; font-size: 11px; }
svg.plot text { fill: var(--muted); }
svg.plot .grid line { stroke: var(--grid); stroke-width: 1; }
svg.plot .axis { stroke: var(--line); stroke-width: 1.5; }
svg.plot path { fill: none; stroke: currentColor; stroke-width: 2; stroke-linejoin: round; }
svg.plot circle { fill: var(--card); stroke: currentColor; stroke-width: 1.5; }
svg.plot .part path { stroke-width: 1.25; }
svg.plot .part circle { r: 1.5px; stroke-width: 1; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; list-style: none; padding: 0; margin: 8px 0 0; font-size: 13px; }
.legend li { overflow-wrap: anywhere; }
.s0 { color: var(--s0); } .s1 { color: var(--s1); } .s2 { color: var(--s2); }
.s3 { color: var(--s3); } .s4 { color: var(--s4); } .s5 { color: var(--s5); }
.legend .label, td .label { color: var(--fg); }
pre { margin: 0; font: 12.5px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
details summary { cursor: pointer; font-weight: 600; }
details[open] summary { margin-bottom: 12px; }
@media (max-width: 520px) {
  main { padding: 16px 10px 32px; }
  h1 { font-size: 24px; }
  .figures { grid-template-columns: repeat(2, 1fr); gap: 8px; }
  .figure .value { font-size: 19px; }
  section { padding: 12px 10px; }
  svg.plot { font-size: 22px; }
  svg.plot .xtitle { display: none; }
  svg.plot .minor { display: none; }
  .opt { display: none; }
  th, td { padding: 4px 5px; font-size: 13px; }
}
</style>
</head>
<body>
<main>
<header>
<div class="brand">parley loadtest</div>
<h1>{{.Scenario}}</h1>
{{with .About}}<p class="about">{{.}}</p>{{end}}
{{with .Settings}}<ul class="settings">{{range .}}<li><span>{{.Label}}</span> {{.Value}}</li>{{end}}</ul>{{end}}
</header>
{{with .Figures}}<div class="figures">
{{range .}}<div class="figure{{with .State}} {{.}}{{end}}"><div class="label">{{.Label}}</div><div class="value">{{.Value}}</div>{{with .Note}}<div class="note">{{.}}</div>{{end}}</div>
{{end}}</div>{{end}}
{{with .FirstError}}<div class="error"><strong>First connection failure:</strong> {{.}}</div>{{end}}
{{range .Distributions}}<section>
<h2>{{.Name}}</h2>
{{with .Rows}}<div class="table"><table>
<thead><tr><th></th><th>p50</th><th class="opt">p90</th><th>p99</th><th>p99.9</th><th>max</th><th class="opt">samples</th></tr></thead>
<tbody>{{range .}}
<tr><td><div class="series"><span class="swatch {{.Class}}"></span><span class="label">{{.Label}}</span></div></td>{{if .P90}}<td>{{.P50}}</td><td class="opt">{{.P90}}</td><td>{{.P99}}</td><td>{{.P999}}</td><td>{{.Max}}</td>{{else}}<td colspan="5">{{.P50}}</td>{{end}}<td class="opt">{{.Count}}</td></tr>{{end}}
</tbody></table></div>{{end}}
{{with .Plot}}<svg class="plot" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="latency by percentile">
{{$p := .}}<g class="grid">{{range .YTicks}}<line x1="{{$p.Left}}" x2="{{$p.Right}}" y1="{{.Pos}}" y2="{{.Pos}}"/>{{end}}{{range .XTicks}}<line x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$p.Top}}" y2="{{$p.Bott}}"/>{{end}}</g>
<g class="y" text-anchor="end">{{range .YTicks}}<text x="{{$p.Left}}" y="{{.Pos}}" dx="-8" dy=".35em">{{.Label}}</text>{{end}}</g>
<g class="x" text-anchor="middle">{{range .XTicks}}<text{{if .Minor}} class="minor"{{end}} x="{{.Pos}}" y="{{$p.Bott}}" dy="1.4em">{{.Label}}</text>{{end}}</g>
<line class="axis" x1="{{.Left}}" x2="{{.Right}}" y1="{{.Bott}}" y2="{{.Bott}}"/><line class="axis" x1="{{.Left}}" x2="{{.Left}}" y1="{{.Top}}" y2="{{.Bott}}"/>
<text x="0" y="{{.Top}}" dy="-12">{{.YTitle}}</text>
<text class="xtitle" x="{{.Right}}" y="{{.H}}" dy="-4" text-anchor="end">percentile</text>
{{range .Lines}}<g class="{{.Class}}"><path d="{{.Path}}"/>{{range .Points}}<circle cx="{{.X}}" cy="{{.Y}}" r="2"><title>{{.Title}}</title></circle>{{end}}</g>
{{end}}</svg>
{{with .Legend}}<ul class="legend">{{range .}}<li><span class="swatch {{.Class}}"></span><span class="label">{{.Label}}</span></li>{{end}}</ul>{{end}}
{{else}}<p class="empty">No samples.</p>
{{end}}</section>
{{end}}{{range .Sections}}<section>
<h2>{{.Title}}</h2>
<pre>{{.Text}}</pre>
</section>
{{end}}<section>
<h2>Summary</h2>
<pre>{{.Summary}}</pre>
</section>
<section>
<details><summary>Report as JSON</summary>
<pre>{{.JSON}}</pre>
</details>
</section>
</main>
</body>
</html>
`))
