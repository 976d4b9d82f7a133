package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/parley-rt/parley/turn"
)

const turnCredentialsSummary = `Print a TURN REST credential pair (coturn's use-auth-secret scheme) for a
user, for tools such as turnutils_uclient. The secret is --turn-secret, else
--jwt-secret, as on the server.`

// turnCredentialsCmd implements `parley turn-credentials --user U --ttl 1h`.
func turnCredentialsCmd(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := newEnvFlags("turn-credentials", turnCredentialsSummary, getenv, stdout)
	fs.example = "turn-secret"
	user := fs.String("user", "", "the user the credential is for (required)")
	ttl := fs.Duration("ttl", time.Hour, "how long the credential stays valid for new allocations")
	turnSecret := fs.String("turn-secret", "", "the TURN REST shared secret")
	jwtSecret := fs.String("jwt-secret", "", "the JWT secret, the server's TURN secret when --turn-secret is unset")
	asJSON := fs.Bool("json", false, "print a JSON object instead of lines")
	if err := fs.parse(args); err != nil {
		return err
	}
	s := *turnSecret
	if s == "" {
		s = *jwtSecret
	}
	var errs []error
	if *user == "" {
		errs = append(errs, errors.New("--user is required"))
	}
	if *ttl <= 0 {
		errs = append(errs, fs.badValue("ttl", "must be positive"))
	}
	if s == "" {
		errs = append(errs, errors.New("no secret: set --turn-secret (PARLEY_TURN_SECRET) or --jwt-secret (PARLEY_JWT_SECRET) to what the server uses"))
	}
	if err := fs.errors(errs); err != nil {
		return err
	}

	now := time.Now()
	username, credential := turn.Credentials(s, *user, *ttl, now)
	expires := now.Add(*ttl).UTC().Truncate(time.Second)
	if *asJSON {
		return json.NewEncoder(stdout).Encode(struct {
			Username   string    `json:"username"`
			Credential string    `json:"credential"`
			TTL        int64     `json:"ttl"`
			Expires    time.Time `json:"expires"`
		}{username, credential, int64(ttl.Seconds()), expires})
	}
	_, err := fmt.Fprintf(stdout, "username: %s\ncredential: %s\nexpires: %s\n", username, credential, expires.Format(time.RFC3339))
	return err
}
