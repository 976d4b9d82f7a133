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
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, stop, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "parley:", err)
		os.Exit(2)
	}
}

const usage = `Parley is a real-time gateway: WebSocket and Server-Sent Events rooms with
history and resume, and built-in STUN and TURN for WebRTC calls.

Usage:
  parley [serve] [flags]          run a node (the default command)
  parley loadtest [flags]         load a node on loopback and report latency and memory
  parley token [flags]            mint a JWT for a user, signed with the JWT secret
  parley turn-credentials [flags] mint TURN REST credentials
  parley version                  print the version

Run 'parley <command> --help' for a command's flags. Every flag of 'serve' can
also be set as PARLEY_<FLAG> in the environment (--jwt-secret is
PARLEY_JWT_SECRET).
`

// run is the whole program: main only adds the process's environment. stop
// ends signal handling, so that a second SIGTERM kills a draining node.
func run(ctx context.Context, stop func(), args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, usage)
		return nil
	}
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serveCmd(ctx, stop, args, getenv, stdout, stderr)
	case "loadtest":
		return loadtestCmd(ctx, args, getenv, stdout, stderr)
	case "token":
		return tokenCmd(args, getenv, stdout, stderr)
	case "turn-credentials":
		return turnCredentialsCmd(args, getenv, stdout)
	case "version":
		fmt.Fprintln(stdout, "parley", version(), runtime.Version())
		return nil
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q (run 'parley help' for the commands)", cmd)
	}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
