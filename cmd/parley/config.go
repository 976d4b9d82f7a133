package main

// The settings file of `parley serve --config` and the `parley config`
// command that prints the settings in effect.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// secretFlags hold values that no output shows: `parley config` masks them
// and messages name them without their value. A Redis URL may carry a
// password, so --redis is one.
var secretFlags = map[string]bool{"jwt-secret": true, "api-key": true, "turn-secret": true, "redis": true}

// listFlags take comma-separated lists; the settings file may also give
// them as arrays of strings.
var listFlags = map[string]bool{"origins": true, "presence-rooms": true, "trusted-proxies": true, "turn-allow-peers": true}

// fileValue is one setting of the settings file.
type fileValue struct {
	key  string
	line int
	kind unstable.Kind
	// value is what the flag is set to: "25s", "100", "a,b" for an array.
	value string
	// shown is the value as the file wrote it, in TOML: "25s" in quotes,
	// 100, ["a", "b"].
	shown string
	// mixed marks an array with an element that is not a string.
	mixed bool
	// table marks a table header, [key]: no setting is in a table.
	table bool
}

// readSettingsFile reads the TOML settings file at path: its top-level keys
// and table headers in order, each with its line. Each error starts with
// path and, when there is one, the line it is about.
func readSettingsFile(path string) ([]fileValue, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{err}
	}
	// The decoder checks the whole document against the TOML
	// specification (syntax, keys defined twice), with positions.
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			line, _ := de.Position()
			return nil, []error{fmt.Errorf("%s:%d: %s", path, line, plain(de, "toml: "))}
		}
		return nil, []error{fmt.Errorf("%s: %s", path, plain(err, "toml: "))}
	}
	// The parser walks the document, now known to be valid, for the line
	// of each key.
	var (
		vals    []fileValue
		errs    []error
		inTable bool
	)
	p := unstable.Parser{}
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			// Every key after a table header is in a table.
			inTable = true
			v := fileValue{table: true}
			v.key, v.line = keyOf(&p, e)
			vals = append(vals, v)
		case unstable.KeyValue:
			if inTable {
				continue
			}
			v := fileValue{}
			v.key, v.line = keyOf(&p, e)
			readValue(e.Value(), &v)
			vals = append(vals, v)
		}
	}
	if err := p.Error(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %s", path, plain(err, "toml: ")))
	}
	return vals, errs
}

// keyOf returns the key of a key-value or table expression, dotted parts
// joined with dots, and the line it starts on.
func keyOf(p *unstable.Parser, e *unstable.Node) (string, int) {
	var parts []string
	line := 0
	it := e.Key()
	for it.Next() {
		n := it.Node()
		if line == 0 {
			line = p.Shape(n.Raw).Start.Line
		}
		parts = append(parts, string(n.Data))
	}
	return strings.Join(parts, "."), line
}

// readValue fills v's kind, value and shown from a value node.
func readValue(n *unstable.Node, v *fileValue) {
	v.kind = n.Kind
	switch n.Kind {
	case unstable.String:
		v.value, v.shown = string(n.Data), tomlString(string(n.Data))
	case unstable.Integer, unstable.Float:
		// TOML puts an underscore only between digits: without them the
		// number reads as Go reads it.
		v.value, v.shown = strings.ReplaceAll(string(n.Data), "_", ""), string(n.Data)
	case unstable.Array:
		var values, shown []string
		it := n.Children()
		for it.Next() {
			el := fileValue{}
			readValue(it.Node(), &el)
			if el.kind != unstable.String {
				v.mixed = true
			}
			values, shown = append(values, el.value), append(shown, el.shown)
		}
		v.value, v.shown = strings.Join(values, ","), "["+strings.Join(shown, ", ")+"]"
	case unstable.InlineTable:
		v.shown = "{...}"
	default: // booleans, dates and times
		v.value, v.shown = string(n.Data), string(n.Data)
	}
}

// applyFile reads the settings file at path and sets each flag that neither
// the command line nor a PARLEY_* variable has set. Every key must be a
// setting and every value of the type its flag takes, even where a flag or
// a variable overrides it; a value is checked further only when it is used.
func (f *envFlags) applyFile(path string) []error {
	f.file = path
	vals, errs := readSettingsFile(path)
	var pe *os.PathError
	if len(errs) == 1 && errors.As(errs[0], &pe) {
		return []error{f.badValue("config", "%v", pe.Err)}
	}
	fromArgs := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { fromArgs[fl.Name] = true })
	for _, v := range vals {
		if v.table {
			errs = append(errs, fmt.Errorf("%s:%d: unknown table [%s]: settings are top-level keys such as turn-addr = \":3478\"", path, v.line, v.key))
			continue
		}
		fl := f.Lookup(v.key)
		if fl == nil || v.key == "config" {
			errs = append(errs, f.unknownKey(v))
			continue
		}
		if err := f.checkFileType(fl, v); err != nil {
			errs = append(errs, err)
			continue
		}
		if fromArgs[v.key] || f.fromEnv[v.key] {
			continue
		}
		f.fromFile[v.key] = v
		if err := fl.Value.Set(v.value); err != nil {
			errs = append(errs, fmt.Errorf("%s: not %s", f.fileSetting(v), want(fl)))
		}
	}
	return errs
}

// unknownKey reports a key of the file that is no setting, with the
// closest setting when it looks like a typo.
func (f *envFlags) unknownKey(v fileValue) error {
	if v.key == "config" {
		return fmt.Errorf("%s:%d: config: a settings file cannot name another one", f.file, v.line)
	}
	best, bestDist := "", -1
	f.VisitAll(func(fl *flag.Flag) {
		if d := editDistance(v.key, fl.Name); fl.Name != "config" && (bestDist < 0 || d < bestDist) {
			best, bestDist = fl.Name, d
		}
	})
	if bestDist >= 0 && bestDist <= max(2, len(v.key)/4) {
		return fmt.Errorf("%s:%d: unknown key %q (did you mean %s?)", f.file, v.line, v.key, best)
	}
	return fmt.Errorf("%s:%d: unknown key %q", f.file, v.line, v.key)
}

// fileSetting shows a setting of the file with its place and value:
// `parley.toml:4: ping = "soon"`, without the value for a secret.
func (f *envFlags) fileSetting(v fileValue) string {
	if secretFlags[v.key] {
		return fmt.Sprintf("%s:%d: %s", f.file, v.line, v.key)
	}
	return fmt.Sprintf("%s:%d: %s = %s", f.file, v.line, v.key, v.shown)
}

// kind names the sort of value a flag takes.
func kind(fl *flag.Flag) string {
	switch fmt.Sprintf("%T", fl.Value) {
	case "*flag.durationValue":
		return "duration"
	case "*flag.intValue", "*flag.int64Value":
		return "int"
	case "*flag.float64Value":
		return "float"
	case "*flag.boolValue":
		return "bool"
	}
	if listFlags[fl.Name] {
		return "list"
	}
	return "string"
}

// checkFileType checks that a value of the file has the TOML type its flag
// takes: numbers and booleans bare, durations and other text in quotes,
// lists as a string or an array of strings.
func (f *envFlags) checkFileType(fl *flag.Flag, v fileValue) error {
	k := kind(fl)
	switch {
	case k == "bool" && v.kind == unstable.Bool,
		k == "int" && v.kind == unstable.Integer,
		k == "float" && (v.kind == unstable.Integer || v.kind == unstable.Float),
		(k == "duration" || k == "string" || k == "list") && v.kind == unstable.String,
		k == "list" && v.kind == unstable.Array && !v.mixed:
		return nil
	}
	wanted := want(fl)
	switch k {
	case "string":
		wanted = "a string"
	case "list":
		wanted = "a string or an array of strings"
	}
	hint := ""
	switch {
	case v.kind == unstable.String:
		hint = " (write it without quotes)"
	case (k == "duration" || k == "string" || k == "list") && v.kind != unstable.Array && v.kind != unstable.InlineTable:
		hint = " (write it in quotes)"
	}
	return fmt.Errorf("%s: not %s%s", f.fileSetting(v), wanted, hint)
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// source says where a flag's value came from: default, file FILE:LINE,
// env PARLEY_X or flag --x.
func (f *envFlags) source(name string) string {
	if v, ok := f.fromFile[name]; ok {
		return fmt.Sprintf("file %s:%d", f.file, v.line)
	}
	if f.fromEnv[name] {
		return "env " + envName(name)
	}
	src := "default"
	f.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			src = "flag --" + name
		}
	})
	return src
}

const configSummary = `Print the settings that 'parley serve' would run with, in the TOML of
--config: every flag of serve with its value and, in a comment, where the
value came from (default, file, env or flag). Secrets that are set are masked
and commented out. The settings are read and checked as serve reads them,
and no socket opens: a configuration that serve would refuse is refused here
with the same messages. Saved to a file, the output is a starting --config
file.`

// configCmd is `parley config`.
func configCmd(args []string, getenv func(string) string, environ func() []string, stdout, stderr io.Writer) error {
	fs := newEnvFlags("config", configSummary, getenv, stdout)
	c, err := parseSettings(fs, args, environ())
	if !errors.Is(err, flag.ErrHelp) {
		for _, w := range c.warnings {
			fmt.Fprintln(stderr, "parley: warning:", w)
		}
	}
	if err != nil {
		return err
	}
	return writeSettings(stdout, fs)
}

// writeSettings prints every setting of fs as a line of a settings file,
// with where its value came from.
func writeSettings(w io.Writer, fs *envFlags) error {
	fmt.Fprint(w, `# Settings of parley serve in effect, each with where it came from: default,
# file, env (a PARLEY_* variable) or flag. Secrets that are set are masked and
# commented out: keep them in the environment, or write them in.
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fs.VisitAll(func(fl *flag.Flag) {
		if fl.Name == "config" {
			return
		}
		src := fs.source(fl.Name)
		v := fs.parsed[fl.Name]
		if secretFlags[fl.Name] && v != "" {
			fmt.Fprintf(tw, "# %s = \"(set)\"\t# %s, masked\n", fl.Name, src)
			return
		}
		switch kind(fl) {
		case "bool", "int", "float":
		case "duration":
			v = tomlString(shortDuration(v))
		default:
			v = tomlString(v)
		}
		fmt.Fprintf(tw, "%s = %s\t# %s\n", fl.Name, v, src)
	})
	return tw.Flush()
}

// shortDuration drops the zero minutes and seconds of a duration as Go
// prints it: 24h0m0s is 24h, 1m0s is 1m.
func shortDuration(s string) string {
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
