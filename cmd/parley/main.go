// Command parley is the Parley real-time gateway: WebSocket and SSE rooms with
// history and resume, and built-in STUN and TURN, in one binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, stop, os.Args[1:], os.Getenv, os.Environ, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err to w, one `parley:` line per error, and returns the
// process's exit status: 0 for success and for --help, 2 otherwise.
func exitCode(err error, w io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ce *configError
	if errors.As(err, &ce) {
		for _, e := range ce.errs {
			printError(w, e)
		}
		fmt.Fprintf(w, "(run 'parley %s --help' for the flags)\n", ce.cmd)
		return 2
	}
	printError(w, err)
	return 2
}

// printError prints each error of a joined one on its own `parley:` line.
func printError(w io.Writer, err error) {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			printError(w, e)
		}
		return
	}
	fmt.Fprintln(w, "parley:", strings.ReplaceAll(err.Error(), "\n", "\n  "))
}

const usage = `Parley is a real-time gateway: WebSocket and Server-Sent Events rooms with
history and resume, and built-in STUN and TURN for WebRTC calls.

Usage:
  parley [serve] [flags]          run a node (the default command)
  parley config [flags]           print the settings serve would run with, as TOML
  parley loadtest [flags]         load a node on loopback and report latency and memory
  parley token [flags]            mint a JWT for a user, signed with the JWT secret
  parley turn-credentials [flags] mint TURN REST credentials
  parley version                  print the version (also parley --version)
  parley help [command]           print this, or a command's flags

Run 'parley <command> --help' for a command's flags. Every flag of 'serve' can
also be set as PARLEY_<FLAG> in the environment (--jwt-secret is
PARLEY_JWT_SECRET) and in a TOML settings file named by --config
(jwt-secret = "..."). A flag wins over a variable, which wins over the file.
`

// run is the whole program: main only adds the process's environment. stop
// ends signal handling, so that a second SIGTERM kills a draining node.
// getenv reads one variable; environ lists them all, for the warning about
// PARLEY_* variables that no flag reads (nil lists none).
func run(ctx context.Context, stop func(), args []string, getenv func(string) string, environ func() []string, stdout, stderr io.Writer) error {
	if environ == nil {
		environ = func() []string { return nil }
	}
	cmd := "serve"
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			fmt.Fprint(stdout, usage)
			return nil
		case "-version", "--version":
			args = append([]string{"version"}, args[1:]...)
		}
	}
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serveCmd(ctx, stop, args, getenv, environ, stdout, stderr)
	case "config":
		return configCmd(args, getenv, environ, stdout, stderr)
	case "loadtest":
		return loadtestCmd(ctx, args, getenv, stdout, stderr)
	case "token":
		return tokenCmd(args, getenv, stdout)
	case "turn-credentials":
		return turnCredentialsCmd(args, getenv, stdout)
	case "version":
		if len(args) > 0 && isHelp(args[0]) {
			fmt.Fprint(stdout, "Print the version of parley and of the Go it was built with.\n\nUsage: parley version\n")
			return flag.ErrHelp
		}
		if len(args) > 0 {
			return fmt.Errorf("version: unexpected argument %q", args[0])
		}
		fmt.Fprintln(stdout, "parley", version(), runtime.Version())
		return nil
	case "help":
		if len(args) > 0 && !isHelp(args[0]) {
			switch args[0] {
			case "serve", "config", "loadtest", "token", "turn-credentials", "version":
				return run(ctx, stop, []string{args[0], "--help"}, getenv, environ, stdout, stderr)
			}
			return fmt.Errorf("help: unknown command %q (run 'parley help' for the commands)", args[0])
		}
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q (run 'parley help' for the commands)", cmd)
	}
}

func isHelp(a string) bool {
	return a == "-h" || a == "-help" || a == "--help" || a == "--h"
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
