package main

import (
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// envFlags is a FlagSet whose flags can also be set as PARLEY_* variables and,
// when the command has a --config flag, in a settings file. A flag on the
// command line wins over a variable, which wins over the file, which wins
// over the default. Defaults shown by --help are the built-in ones, never a
// value from the environment or the file, so --help and usage errors print
// no secret.
type envFlags struct {
	*flag.FlagSet
	name, summary string
	getenv        func(string) string
	out           io.Writer
	// example is the flag the usage shows with its variable; empty means
	// the first flag in alphabetical order.
	example string
	// fromEnv holds the flags whose value came from the environment and
	// not from the command line.
	fromEnv map[string]bool
	// file is the settings file as --config or PARLEY_CONFIG named it, and
	// fromFile the flags whose value came from it.
	file     string
	fromFile map[string]fileValue
	// raw holds each set flag's value as the user wrote it.
	raw map[string]string
	// parsed holds every flag's value once parse has set them all, before
	// the command fills in what an empty value stands for.
	parsed map[string]string
}

// rawValue records what a flag was set to, as written.
type rawValue struct {
	flag.Value
	raw  map[string]string
	name string
}

func (r rawValue) Set(s string) error {
	r.raw[r.name] = s
	return r.Value.Set(s)
}

// IsBoolFlag keeps --flag without a value working for boolean flags.
func (r rawValue) IsBoolFlag() bool {
	b, ok := r.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// envSetter is a flag.Value that is told when the environment has been
// applied, before the command line is: a list flag then replaces the
// environment's values with the command line's rather than adding to them.
type envSetter interface{ envApplied() }

// newEnvFlags makes the flags of `parley <name>`; --help prints summary and
// the flags to out.
func newEnvFlags(name, summary string, getenv func(string) string, out io.Writer) *envFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Errors are returned, not printed with the whole usage: the caller
	// prints one line per bad value, naming the flag.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &envFlags{FlagSet: fs, name: name, summary: summary, getenv: getenv, out: out, fromEnv: map[string]bool{}, fromFile: map[string]fileValue{}, raw: map[string]string{}, parsed: map[string]string{}}
}

// envName is the variable that sets a flag: --jwt-secret is PARLEY_JWT_SECRET.
func envName(flagName string) string {
	return "PARLEY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *envFlags) usage() {
	ex := f.example
	if ex == "" {
		f.VisitAll(func(fl *flag.Flag) {
			if ex == "" {
				ex = fl.Name
			}
		})
	}
	fmt.Fprintf(f.out, "%s\n\nUsage: parley %s [flags]\n\nFlags (each also PARLEY_<NAME> in the environment, --%s as %s):\n", f.summary, f.name, ex, envName(ex))
	f.SetOutput(f.out)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}

// parse applies the environment, then args, then the settings file of
// --config to the flags that neither set. It prints the usage and returns
// flag.ErrHelp for -h or --help, and reports every bad value at once.
func (f *envFlags) parse(args []string) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if isHelp(a) {
			f.usage()
			return flag.ErrHelp
		}
	}
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		name := envName(fl.Name)
		if v := f.getenv(name); v != "" {
			f.fromEnv[fl.Name] = true
			f.raw[fl.Name] = v
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%s (--%s): not %s", name, quoteValue(v), fl.Name, want(fl)))
			}
		}
		if e, ok := fl.Value.(envSetter); ok {
			e.envApplied()
		}
	})
	// Record what the command line says, then put the values back as they
	// were: the usage and want read their types.
	values := map[*flag.Flag]flag.Value{}
	f.VisitAll(func(fl *flag.Flag) {
		values[fl] = fl.Value
		fl.Value = rawValue{fl.Value, f.raw, fl.Name}
	})
	err := f.FlagSet.Parse(args)
	for fl, v := range values {
		fl.Value = v
	}
	if err != nil {
		errs = append(errs, f.explain(err))
	} else if f.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q", f.Arg(0)))
	}
	f.Visit(func(fl *flag.Flag) { delete(f.fromEnv, fl.Name) })
	if fl := f.Lookup("config"); err == nil && fl != nil && fl.Value.String() != "" {
		errs = append(errs, f.applyFile(fl.Value.String())...)
	}
	f.VisitAll(func(fl *flag.Flag) { f.parsed[fl.Name] = fl.Value.String() })
	return f.errors(errs)
}

// errors gathers the bad settings of the command into one error, nil when
// there are none.
func (f *envFlags) errors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return &configError{cmd: f.name, errs: errs}
}

// label is how a message names a flag: --ping, PARLEY_PING (--ping) when
// its value came from the environment, parley.toml:4: ping when it came from
// line 4 of the settings file.
func (f *envFlags) label(name string) string {
	if v, ok := f.fromFile[name]; ok {
		return fmt.Sprintf("%s:%d: %s", f.file, v.line, name)
	}
	if f.fromEnv[name] {
		return envName(name) + " (--" + name + ")"
	}
	return "--" + name
}

// setting shows a flag with its value as the user wrote it: `--ping 1ms`,
// `PARLEY_PING=1ms (--ping)`, or `parley.toml:4: ping = "1ms"`. Never call it
// for a secret.
func (f *envFlags) setting(name string) string {
	if v, ok := f.fromFile[name]; ok {
		return f.fileSetting(v)
	}
	v, ok := f.raw[name]
	if !ok {
		v = f.Lookup(name).Value.String()
	}
	v = quoteValue(v)
	if f.fromEnv[name] {
		return envName(name) + "=" + v + " (--" + name + ")"
	}
	return "--" + name + " " + v
}

// badValue reports a flag's value that breaks a rule: `--ping 1ms: must be at
// least 10ms`. Never call it for a secret.
func (f *envFlags) badValue(name, rule string, a ...any) error {
	return fmt.Errorf("%s: %s", f.setting(name), fmt.Sprintf(rule, a...))
}

// badFlag reports a problem with a flag without showing its value.
func (f *envFlags) badFlag(name, rule string, a ...any) error {
	return fmt.Errorf("%s: %s", f.label(name), fmt.Sprintf(rule, a...))
}

// quoteValue quotes a value when it would not read as one word.
func quoteValue(v string) string {
	if v == "" || strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) || r == '"' || r == '\'' }) >= 0 {
		return strconv.Quote(v)
	}
	return v
}

var (
	badValueRE  = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-+([^:]+): `)
	undefinedRE = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
	noValueRE   = regexp.MustCompile(`^flag needs an argument: -+(.*)$`)
)

// explain rewrites the flag package's errors in the words of the docs:
// `--ping soon: not a duration such as 25s or 1h`.
func (f *envFlags) explain(err error) error {
	msg := err.Error()
	if m := badValueRE.FindStringSubmatch(msg); m != nil {
		if fl := f.Lookup(m[2]); fl != nil {
			return fmt.Errorf("--%s %s: not %s", m[2], quoteValue(m[1]), want(fl))
		}
	}
	if m := undefinedRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("unknown flag --%s", m[1])
	}
	if m := noValueRE.FindStringSubmatch(msg); m != nil {
		if fl := f.Lookup(m[1]); fl != nil {
			return fmt.Errorf("--%s needs a value: %s", m[1], want(fl))
		}
	}
	return err
}

// want describes the values a flag takes.
func want(fl *flag.Flag) string {
	switch fmt.Sprintf("%T", fl.Value) {
	case "*flag.durationValue":
		return "a duration such as 25s or 1h"
	case "*flag.intValue", "*flag.int64Value":
		return "a whole number"
	case "*flag.float64Value":
		return "a number"
	case "*flag.boolValue":
		return "true or false"
	default:
		return "a value"
	}
}

// configError is every bad setting of one command, reported together.
type configError struct {
	cmd  string
	errs []error
}

func (e *configError) Error() string {
	var b strings.Builder
	for _, err := range e.errs {
		b.WriteString(err.Error())
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "(run 'parley %s --help' for the flags)", e.cmd)
	return b.String()
}

func (e *configError) Unwrap() []error { return e.errs }

// envWarning is a PARLEY_* variable that no flag of a command reads, with
// the closest one when it looks like a typo.
type envWarning struct{ cmd, name, closest string }

func (w envWarning) String() string {
	if w.closest != "" {
		return fmt.Sprintf("%s is set but is not a setting of parley %s, and is ignored: did you mean %s?", w.name, w.cmd, w.closest)
	}
	return fmt.Sprintf("%s is set but is not a setting of parley %s, and is ignored (run 'parley %s --help' for the settings)", w.name, w.cmd, w.cmd)
}

// unknownEnv returns the variables of environ that look like settings
// (PARLEY_*) but set no flag of f, each with the closest flag's variable
// when one is close enough to be a typo. Values are not read.
func (f *envFlags) unknownEnv(environ []string) []envWarning {
	var known []string
	f.VisitAll(func(fl *flag.Flag) { known = append(known, envName(fl.Name)) })
	var out []envWarning
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if len(name) < len("PARLEY_") || !strings.EqualFold(name[:len("PARLEY_")], "PARLEY_") || slices.Contains(known, name) ||
			slices.ContainsFunc(out, func(w envWarning) bool { return w.name == name }) {
			continue
		}
		best, bestDist := "", -1
		for _, k := range known {
			if d := editDistance(strings.ToUpper(name), k); bestDist < 0 || d < bestDist {
				best, bestDist = k, d
			}
		}
		// A typo is a slip or two, more only in a long name.
		if bestDist > max(2, (len(name)-len("PARLEY_"))/4) {
			best = ""
		}
		out = append(out, envWarning{f.name, name, best})
	}
	return out
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
