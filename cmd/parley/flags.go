package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// envFlags is a FlagSet whose flags can also be set as PARLEY_* variables: a
// variable is applied before the command line, so a flag given there wins.
// Defaults shown by --help are the built-in ones, never a value from the
// environment, so --help and usage errors print no secret.
type envFlags struct {
	*flag.FlagSet
	name, summary string
	getenv        func(string) string
	out           io.Writer
}

func newEnvFlags(name, summary string, getenv func(string) string, out io.Writer) *envFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Errors are returned, not printed with the whole usage: the caller
	// prints one line that names the flag.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &envFlags{FlagSet: fs, name: name, summary: summary, getenv: getenv, out: out}
}

// envName is the variable that sets a flag: --jwt-secret is PARLEY_JWT_SECRET.
func envName(flagName string) string {
	return "PARLEY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *envFlags) usage() {
	fmt.Fprintf(f.out, "%s\n\nUsage: parley %s [flags]\n\nFlags (each also PARLEY_<NAME> in the environment, --jwt-secret as PARLEY_JWT_SECRET):\n", f.summary, f.name)
	f.SetOutput(f.out)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}

// parse applies the environment, then args. It prints the usage and returns
// flag.ErrHelp for -h or --help, and reports every bad value at once.
func (f *envFlags) parse(args []string) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" || a == "--h" {
			f.usage()
			return flag.ErrHelp
		}
	}
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		name := envName(fl.Name)
		if v := f.getenv(name); v != "" {
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: want %s for --%s", name, v, want(fl), fl.Name))
			}
		}
	})
	if err := f.FlagSet.Parse(args); err != nil {
		errs = append(errs, f.explain(err))
	} else if f.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q", f.Arg(0)))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w\n(run 'parley %s --help' for the flags)", errors.Join(errs...), f.name)
	}
	return nil
}

var (
	badValueRE  = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for flag -([^:]+): `)
	undefinedRE = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
)

// explain rewrites the flag package's errors in the words of the docs:
// `--ping: "abc" is not a duration such as 25s`.
func (f *envFlags) explain(err error) error {
	msg := err.Error()
	if m := badValueRE.FindStringSubmatch(msg); m != nil {
		if fl := f.Lookup(m[2]); fl != nil {
			return fmt.Errorf("--%s: %q is not %s", m[2], m[1], want(fl))
		}
	}
	if m := undefinedRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("unknown flag --%s", m[1])
	}
	return err
}

// want describes the values a flag takes.
func want(fl *flag.Flag) string {
	switch fmt.Sprintf("%T", fl.Value) {
	case "*flag.durationValue":
		return "a duration such as 25s or 1h"
	case "*flag.intValue":
		return "a whole number"
	case "*flag.float64Value":
		return "a number"
	case "*flag.boolValue":
		return "true or false"
	default:
		return "a valid value"
	}
}
