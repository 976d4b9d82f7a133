package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// envFlags is a FlagSet whose defaults come from PARLEY_* variables, so every
// flag can be set either way; a flag on the command line wins.
type envFlags struct {
	*flag.FlagSet
	getenv func(string) string
	errs   []error
}

func newEnvFlags(name, summary string, getenv func(string) string, out io.Writer) *envFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "%s\n\nUsage: parley %s [flags]\n\nFlags (each also PARLEY_<NAME> in the environment):\n", summary, name)
		fs.PrintDefaults()
	}
	return &envFlags{FlagSet: fs, getenv: getenv}
}

// envName is the variable that sets a flag: --jwt-secret is PARLEY_JWT_SECRET.
func envName(flagName string) string {
	return "PARLEY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *envFlags) env(name string) (string, bool) {
	v := f.getenv(envName(name))
	return v, v != ""
}

func (f *envFlags) String(name, def, usage string) *string {
	if v, ok := f.env(name); ok {
		def = v
	}
	return f.FlagSet.String(name, def, usage)
}

func (f *envFlags) Bool(name string, def bool, usage string) *bool {
	if v, ok := f.env(name); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: want true or false", envName(name), v))
		}
		def = b
	}
	return f.FlagSet.Bool(name, def, usage)
}

func (f *envFlags) Int(name string, def int, usage string) *int {
	if v, ok := f.env(name); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: want a whole number", envName(name), v))
		}
		def = n
	}
	return f.FlagSet.Int(name, def, usage)
}

func (f *envFlags) Float(name string, def float64, usage string) *float64 {
	if v, ok := f.env(name); ok {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: want a number", envName(name), v))
		}
		def = n
	}
	return f.FlagSet.Float64(name, def, usage)
}

func (f *envFlags) Duration(name string, def time.Duration, usage string) *time.Duration {
	if v, ok := f.env(name); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: want a duration such as 25s", envName(name), v))
		}
		def = d
	}
	return f.FlagSet.Duration(name, def, usage)
}

// parse parses args and reports the first bad environment value too.
func (f *envFlags) parse(args []string) error {
	if err := f.FlagSet.Parse(args); err != nil {
		return err
	}
	if len(f.errs) > 0 {
		return f.errs[0]
	}
	if f.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", f.Arg(0))
	}
	return nil
}
