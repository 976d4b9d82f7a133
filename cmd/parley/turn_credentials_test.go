package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parley-rt/parley/turn"
)

func TestTurnCredentialsCmd(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		secret  string // the secret the pair must verify with
		wantErr string
	}{
		{name: "flag secret", args: []string{"--user", "alice", "--turn-secret", "s1"}, secret: "s1"},
		{name: "turn secret env", args: []string{"--user", "alice"}, env: map[string]string{"PARLEY_TURN_SECRET": "s2", "PARLEY_JWT_SECRET": "j"}, secret: "s2"},
		{name: "jwt secret env", args: []string{"--user", "alice"}, env: map[string]string{"PARLEY_JWT_SECRET": "j"}, secret: "j"},
		{name: "flag beats env", args: []string{"--user", "alice", "--turn-secret", "f"}, env: map[string]string{"PARLEY_TURN_SECRET": "e"}, secret: "f"},
		{name: "no secret", args: []string{"--user", "alice"}, wantErr: "no secret"},
		{name: "no user", args: []string{"--turn-secret", "s"}, wantErr: "--user is required"},
		{name: "bad ttl", args: []string{"--user", "a", "--turn-secret", "s", "--ttl", "-1h"}, wantErr: "--ttl -1h: must be positive"},
		{name: "stray argument", args: []string{"--user", "a", "--turn-secret", "s", "extra"}, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := turnCredentialsCmd(tt.args, env(tt.env), &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			lines := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				k, v, _ := strings.Cut(l, ": ")
				lines[k] = v
			}
			exp, user, _ := strings.Cut(lines["username"], ":")
			secs, _ := strconv.ParseInt(exp, 10, 64)
			if user != "alice" {
				t.Errorf("got user %q, want alice", user)
			}
			wantUser, wantCred := turn.Credentials(tt.secret, "alice", time.Until(time.Unix(secs, 0)), time.Now())
			if wantUser != lines["username"] || wantCred != lines["credential"] {
				t.Errorf("got %q %q, want %q %q", lines["username"], lines["credential"], wantUser, wantCred)
			}
		})
	}
}

func TestTurnCredentialsJSON(t *testing.T) {
	var out bytes.Buffer
	if err := turnCredentialsCmd([]string{"--user", "bob", "--ttl", "30m", "--json"}, func(k string) string {
		if k == "PARLEY_TURN_SECRET" {
			return "s"
		}
		return ""
	}, &out); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Username, Credential string
		TTL                  int64
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.TTL != 1800 || !strings.HasSuffix(got.Username, ":bob") || got.Credential == "" {
		t.Errorf("got %+v", got)
	}
}

func TestTurnCredentialsHelpHidesSecret(t *testing.T) {
	var out bytes.Buffer
	err := turnCredentialsCmd([]string{"-h"}, func(string) string { return "the-secret" }, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	if strings.Contains(out.String(), "the-secret") {
		t.Errorf("help shows the secret: %s", out.String())
	}
}
