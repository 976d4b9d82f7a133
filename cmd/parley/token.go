package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/parley-rt/parley/gateway"
)

// roomPatternRule says what --subscribe, --publish, --call and
// --presence-rooms take.
const roomPatternRule = "want a room name, a room name's prefix followed by *, or * alone; a room name is 1 to 128 characters of A-Z a-z 0-9 _ . : @ -"

// tokenCmd prints an HS256 JWT for a user, signed with the server's secret.
func tokenCmd(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := newEnvFlags("token", "Mint an HS256 JWT that a node started with the same --jwt-secret accepts.", getenv, stdout)
	fs.example = "jwt-secret"
	secret := fs.String("jwt-secret", "", "the HS256 secret the server verifies tokens with")
	user := fs.String("user", "", "the user id (the token's sub claim); required")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	sub := fs.String("subscribe", "", "rooms the user may subscribe to, comma-separated patterns: a room name, a prefix ending in * such as chat:*, or * for every room; empty with no other room flag means every room")
	pub := fs.String("publish", "", "rooms the user may publish to, comma-separated patterns")
	call := fs.String("call", "", "calls the user may join, comma-separated patterns (call names follow the rules of room names); once any of --subscribe, --publish and --call is set, what is left out allows nothing: a token with only --subscribe joins no call")
	relay := fs.Bool("relay", false, "make the user's calls use TURN only (the relay claim: join acks say relay: true)")
	if err := fs.parse(args); err != nil {
		return err
	}
	var errs []error
	switch {
	case *secret == "":
		errs = append(errs, errors.New("no secret: set --jwt-secret or PARLEY_JWT_SECRET to the secret the server uses"))
	case *user == "":
		errs = append(errs, errors.New("--user is required"))
	case *ttl <= 0:
		errs = append(errs, fs.badValue("ttl", "must be positive"))
	}
	for _, f := range []struct {
		name     string
		patterns []string
	}{{"subscribe", split(*sub)}, {"publish", split(*pub)}, {"call", split(*call)}} {
		for _, p := range f.patterns {
			if gateway.CheckRoomPattern(p) != nil {
				errs = append(errs, fs.badFlag(f.name, "%q is not a %s pattern: %s", p, patternKind(f.name), roomPatternRule))
			}
		}
	}
	if err := fs.errors(errs); err != nil {
		return err
	}
	var perms *gateway.Permissions
	if *sub != "" || *pub != "" || *call != "" {
		perms = &gateway.Permissions{Subscribe: split(*sub), Publish: split(*pub), Call: split(*call)}
	}
	now := time.Now()
	tok, err := gateway.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject: *user, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(*ttl)),
		},
		Rooms: perms,
		Relay: *relay,
	}.Sign([]byte(*secret))
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// patternKind names what a token flag's patterns match.
func patternKind(flagName string) string {
	if flagName == "call" {
		return "call"
	}
	return "room"
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
