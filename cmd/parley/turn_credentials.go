package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/parley-rt/parley/turn"
)

// turnCredentialsCmd implements `parley turn-credentials --user U --ttl 1h`:
// it prints a TURN REST credential pair for tools such as turnutils_uclient
// or a test client. The secret comes from --turn-secret, else
// PARLEY_TURN_SECRET, else PARLEY_JWT_SECRET (the server's own fallback).
func turnCredentialsCmd(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("turn-credentials", flag.ContinueOnError)
	fs.SetOutput(stdout)
	user := fs.String("user", "", "the user the credential is for (required)")
	ttl := fs.Duration("ttl", time.Hour, "how long the credential stays valid for new allocations")
	// The default is resolved after parsing, so that -h never prints a secret.
	secret := fs.String("turn-secret", "", "the TURN REST shared secret (default $PARLEY_TURN_SECRET, else $PARLEY_JWT_SECRET)")
	asJSON := fs.Bool("json", false, "print a JSON object instead of lines")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("turn-credentials: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("turn-credentials: unexpected argument %q", fs.Arg(0))
	}
	if *user == "" {
		return errors.New("turn-credentials: --user is required")
	}
	if *ttl <= 0 {
		return fmt.Errorf("turn-credentials: --ttl must be positive, got %v", *ttl)
	}
	s := *secret
	if s == "" {
		s = getenv("PARLEY_TURN_SECRET")
	}
	if s == "" {
		s = getenv("PARLEY_JWT_SECRET")
	}
	if s == "" {
		return errors.New("turn-credentials: no secret: set --turn-secret, PARLEY_TURN_SECRET or PARLEY_JWT_SECRET to the server's TURN secret")
	}

	now := time.Now()
	username, credential := turn.Credentials(s, *user, *ttl, now)
	expires := now.Add(*ttl).UTC().Truncate(time.Second)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		err := enc.Encode(struct {
			Username   string    `json:"username"`
			Credential string    `json:"credential"`
			TTL        int64     `json:"ttl"`
			Expires    time.Time `json:"expires"`
		}{username, credential, int64(ttl.Seconds()), expires})
		if err != nil {
			return fmt.Errorf("turn-credentials: %w", err)
		}
		return nil
	}
	if _, err := fmt.Fprintf(stdout, "username: %s\ncredential: %s\nexpires: %s\n",
		username, credential, expires.Format(time.RFC3339)); err != nil {
		return fmt.Errorf("turn-credentials: %w", err)
	}
	return nil
}
