package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/parley-rt/parley/gateway"
)

// tokenCmd prints an HS256 JWT for a user, signed with the server's secret.
func tokenCmd(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newEnvFlags("token", "Mint an HS256 JWT that a node started with the same --jwt-secret accepts.", getenv, stderr)
	secret := fs.String("jwt-secret", "", "the HS256 secret the server verifies tokens with")
	user := fs.String("user", "", "the user id (the token's sub claim); required")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	sub := fs.String("subscribe", "", "rooms the user may subscribe to, comma-separated patterns such as chat:*; empty with no other room flag means every room")
	pub := fs.String("publish", "", "rooms the user may publish to, comma-separated patterns")
	call := fs.String("call", "", "calls the user may join, comma-separated patterns")
	if err := fs.parse(args); err != nil {
		return err
	}
	switch {
	case *secret == "":
		return errors.New("token: no secret: set --jwt-secret or PARLEY_JWT_SECRET to the secret the server uses")
	case *user == "":
		return errors.New("token: --user is required")
	case *ttl <= 0:
		return errors.New("token: --ttl must be positive")
	}
	var perms *gateway.Permissions
	if *sub != "" || *pub != "" || *call != "" {
		perms = &gateway.Permissions{Subscribe: split(*sub), Publish: split(*pub), Call: split(*call)}
	}
	tok, err := gateway.MintToken([]byte(*secret), *user, *ttl, perms, time.Now())
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
