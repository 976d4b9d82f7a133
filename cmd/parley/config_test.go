package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSettingsFile writes a settings file into a fresh directory and returns
// its path.
func writeSettingsFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "parley.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// parleyConfig runs `parley config` with args and the environment of kv,
// and returns what it printed and its error.
func parleyConfig(t *testing.T, args []string, kv ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), func() {}, append([]string{"config"}, args...), env(kv...), environ(kv...), &out, &errOut)
	return out.String() + errOut.String(), err
}

// settingLines maps each setting printed by `parley config` to its line
// without the comment that says where the value came from; a masked secret
// maps to its commented-out line.
func settingLines(out string) map[string]string {
	m := map[string]string{}
	for line := range strings.SplitSeq(out, "\n") {
		code, _, _ := strings.Cut(line, "  #")
		key, _, ok := strings.Cut(strings.TrimPrefix(code, "# "), " = ")
		if !ok || strings.HasPrefix(line, "# ") && !strings.Contains(line, "masked") {
			continue
		}
		m[key] = strings.TrimSpace(code)
	}
	return m
}

// sourceOf is the comment that says where a printed setting came from.
func sourceOf(out, key string) string {
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(strings.TrimPrefix(line, "# "), key+" = ") {
			_, src, _ := strings.Cut(line, "  #")
			return strings.TrimSpace(strings.TrimLeft(src, " #"))
		}
	}
	return ""
}

func TestSettingsFileSetsValues(t *testing.T) {
	path := writeSettingsFile(t, `# a node behind a load balancer
max-rooms = 50
ping = "30s"
publish-rate = 12.5
allow-anonymous = true
origins = ["https://app.example.com", "*.example.com"]
trusted-proxies = "10.0.0.0/8, 192.168.0.1"
turn-allow-peers = "10.1.0.0/16"
log-level = 'debug'
`)
	c, err := parseServe([]string{"--config", path}, env(), nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.maxRooms != 50 || c.ping != 30*time.Second || c.publishRate != 12.5 || !c.allowAnonymous {
		t.Errorf("got max-rooms %d, ping %s, publish-rate %v, allow-anonymous %v, want 50, 30s, 12.5, true", c.maxRooms, c.ping, c.publishRate, c.allowAnonymous)
	}
	if got := strings.Join(c.origins, " "); got != "https://app.example.com *.example.com" {
		t.Errorf("got origins %q, want the array's two patterns", got)
	}
	if len(c.trustedProxies) != 2 || len(c.turn.allowPeers) != 1 || c.logLevel.String() != "DEBUG" {
		t.Errorf("got trusted proxies %v, allow peers %v, log level %v", c.trustedProxies, c.turn.allowPeers, c.logLevel)
	}

	out, err := parleyConfig(t, []string{"--config", path})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"max-rooms": "file " + path + ":2",
		"ping":      "file " + path + ":3",
		"origins":   "file " + path + ":6",
		"addr":      "default",
	} {
		if got := sourceOf(out, key); got != want {
			t.Errorf("%s: got source %q, want %q\n%s", key, got, want, out)
		}
	}
}

// One flag set at each level in turn: a flag wins over a variable, which
// wins over the file, which wins over the default.
func TestSettingsPrecedence(t *testing.T) {
	path := writeSettingsFile(t, "ping = \"30s\"\n")
	tests := []struct {
		name       string
		args       []string
		env        []string
		want, from string
	}{
		{"default", nil, nil, `ping = "25s"`, "default"},
		{"file over default", []string{"--config", path}, nil, `ping = "30s"`, "file " + path + ":1"},
		{"env over file", []string{"--config", path}, []string{"PARLEY_PING", "40s"}, `ping = "40s"`, "env PARLEY_PING"},
		{"flag over env", []string{"--config", path, "--ping", "50s"}, []string{"PARLEY_PING", "40s"}, `ping = "50s"`, "flag --ping"},
		{"file named by PARLEY_CONFIG", nil, []string{"PARLEY_CONFIG", path}, `ping = "30s"`, "file " + path + ":1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := parleyConfig(t, tt.args, tt.env...)
			if err != nil {
				t.Fatal(err)
			}
			if got := settingLines(out)["ping"]; got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if got := sourceOf(out, "ping"); got != tt.from {
				t.Errorf("got source %q, want %q", got, tt.from)
			}
		})
	}
}

// Each problem of the file is named by its line and key, in the words of
// the flag errors, and serve and config report the same ones.
func TestSettingsFileErrors(t *testing.T) {
	tests := []struct {
		name, file string
		want       string // after "FILE:"
	}{
		{"unknown key with a suggestion", "max-rooms = 5\n\n# the secret\njwt-secrt = \"x\"\n", `4: unknown key "jwt-secrt" (did you mean jwt-secret?)`},
		{"unknown key", "colour = \"blue\"\n", `1: unknown key "colour"`},
		{"dotted key", "ping = \"30s\"\nturn.addr = \":3478\"\n", `2: unknown key "turn.addr" (did you mean turn-addr?)`},
		{"table", "ping = \"30s\"\n[turn]\naddr = \":3478\"\n", `2: unknown table [turn]`},
		{"config in the file", "config = \"other.toml\"\n", `1: config: a settings file cannot name another one`},
		{"bad duration", "max-rooms = 5\nping = \"soon\"\n", `2: ping = "soon": not a duration such as 25s or 1h`},
		{"duration as a number", "ping = 25\n", `1: ping = 25: not a duration such as 25s or 1h (write it in quotes)`},
		{"number in quotes", "\nmax-rooms = \"100\"\n", `2: max-rooms = "100": not a whole number (write it without quotes)`},
		{"bool as a number", "allow-anonymous = 1\n", `1: allow-anonymous = 1: not true or false`},
		{"string as a number", "addr = 8080\n", `1: addr = 8080: not a string (write it in quotes)`},
		{"array of numbers", "origins = [1, 2]\n", `1: origins = [1, 2]: not a string or an array of strings`},
		{"rule broken", "history-size = 5\nping = \"1ms\"\n", `2: ping = "1ms": must be at least 10ms`},
		{"zero", "max-node-rooms = 0\n", `1: max-node-rooms = 0: must be positive`},
		{"list item", "turn-allow-peers = [\"10.0.0.0/33\"]\n", `1: turn-allow-peers: "10.0.0.0/33" is not a CIDR`},
		{"key defined twice", "ping = \"1s\"\nping = \"2s\"\n", `2: key ping is already defined`},
		{"syntax", "ping = \"1s\"\nmax-rooms = \n", `2: unexpected character`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeSettingsFile(t, tt.file)
			out, err := parleyConfig(t, []string{"--config", path})
			var ce *configError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), path+":"+tt.want) {
				t.Fatalf("got %v, want an error with %q", err, path+":"+tt.want)
			}
			if strings.Contains(out, "# Settings") {
				t.Errorf("config printed settings despite the error:\n%s", out)
			}
			_, serveErr := parseServe([]string{"--config", path}, env(), nil, &bytes.Buffer{})
			var se *configError
			if !errors.As(serveErr, &se) || errors.Join(se.errs...).Error() != errors.Join(ce.errs...).Error() {
				t.Errorf("serve says %v, config says %v: want the same errors", serveErr, err)
			}
		})
	}
}

// A value the file gives to a flag that a flag or variable sets is not used,
// but the file must still be well-formed.
func TestSettingsFileOverriddenValues(t *testing.T) {
	path := writeSettingsFile(t, "ping = \"1ms\"\nmax-rooms = \"x\"\n")
	_, err := parleyConfig(t, []string{"--config", path, "--ping", "30s", "--max-rooms", "5"})
	if err == nil || strings.Contains(err.Error(), "ping") || !strings.Contains(err.Error(), path+`:2: max-rooms = "x": not a whole number`) {
		t.Errorf("got %v, want only the type error of line 2", err)
	}
}

// Secrets from the file and the environment never show, and the output,
// saved as a file, reads back to the same settings.
func TestConfigMasksSecretsAndReadsBack(t *testing.T) {
	path := writeSettingsFile(t, `api-key = "file-api-key-s3cr3t"
redis = "redis://:pa55word@127.0.0.1:6379/0"
max-rooms = 7
origins = ["https://app.example.com", "*.example.com"]
history-ttl = "90m"
`)
	kv := []string{"PARLEY_JWT_SECRET", "env-jwt-s3cr3t", "PARLEY_TURN_SECRET", "env-turn-s3cr3t", "PARLEY_PUBLISH_RATE", "2.5"}
	first, err := parleyConfig(t, []string{"--config", path}, kv...)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"file-api-key-s3cr3t", "pa55word", "env-jwt-s3cr3t", "env-turn-s3cr3t"} {
		if strings.Contains(first, secret) {
			t.Errorf("config shows a secret:\n%s", first)
		}
	}
	lines := settingLines(first)
	for _, key := range []string{"jwt-secret", "turn-secret", "api-key", "redis"} {
		if got, want := lines[key], "# "+key+` = "(set)"`; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	if got := sourceOf(first, "jwt-secret"); got != "env PARLEY_JWT_SECRET, masked" {
		t.Errorf("got jwt-secret from %q, want env PARLEY_JWT_SECRET, masked", got)
	}

	// Masked secrets are comments: the environment still gives them.
	saved := writeSettingsFile(t, first)
	second, err := parleyConfig(t, []string{"--config", saved}, kv...)
	if err != nil {
		t.Fatalf("the output does not read back: %v\n%s", err, first)
	}
	again := settingLines(second)
	if len(again) != len(lines) || len(lines) < 30 {
		t.Errorf("got %d settings, then %d, want every flag of serve both times", len(lines), len(again))
	}
	for key, want := range lines {
		if key == "api-key" || key == "redis" {
			// Masked from the file, so no longer set: the operator writes it in.
			want = key + ` = ""`
		}
		if again[key] != want {
			t.Errorf("%s: read back as %q, want %q", key, again[key], want)
		}
	}
	if got := sourceOf(second, "max-rooms"); !strings.HasPrefix(got, "file "+saved+":") {
		t.Errorf("got max-rooms from %q, want the saved file", got)
	}
}

func TestConfigFileMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "parley.toml")
	for _, tt := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"flag", []string{"--config", missing}, nil, "--config " + missing + ": no such file or directory"},
		{"variable", nil, []string{"PARLEY_CONFIG", missing}, "PARLEY_CONFIG=" + missing + " (--config): no such file or directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, cmd := range []string{"config", "serve"} {
				var out bytes.Buffer
				err := run(context.Background(), func() {}, append([]string{cmd}, tt.args...), env(tt.env...), nil, &out, &out)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("parley %s: got %v, want %q", cmd, err, tt.want)
				}
			}
		})
	}
}

// A secret of the wrong type is named without its value.
func TestSettingsFileErrorsHideSecrets(t *testing.T) {
	path := writeSettingsFile(t, "jwt-secret = 123456789\n")
	_, err := parleyConfig(t, []string{"--config", path})
	if err == nil || strings.Contains(err.Error(), "123456789") || !strings.Contains(err.Error(), path+":1: jwt-secret: not a string") {
		t.Errorf("got %v, want the key and line without the value", err)
	}
}

func TestConfigHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), func() {}, []string{"help"}, env(), nil, &out, &out); err != nil || !strings.Contains(out.String(), "parley config") {
		t.Errorf("parley help: got %v, and a command list without config:\n%s", err, out.String())
	}
	out.Reset()
	err := run(context.Background(), func() {}, []string{"help", "config"}, env(), nil, &out, &out)
	if !strings.Contains(out.String(), "Usage: parley config [flags]") || !strings.Contains(out.String(), "-config file") {
		t.Errorf("parley help config: got %v and\n%s", err, out.String())
	}
}
