package main

import (
	"io"
	"strings"
	"testing"
)

// An operator sets --call-signal-rate to NaN or inf, on the command line,
// as PARLEY_CALL_SIGNAL_RATE, or in the settings file (TOML has nan and inf
// literals). What a user notices: the node starts, `parley config` shows
// call-signal-rate = NaN, and no connection's signals are limited at all:
// one client may flood every peer of its calls (a gateway with SignalRate
// NaN or +Inf accepted 2000 signals at once from one connection, none
// refused). --publish-rate refuses both ("NaN and infinity parse as
// numbers; neither is a rate", serve.go); --call-signal-rate is checked
// only with `<= 0` (serve.go:191), which NaN and +Inf pass, and neither
// gateway.New nor signaling.New refuses them (signalBurst turns them into a
// burst of 1; golang.org/x/time/rate lets every event through at a NaN or
// infinite limit).
func TestReview3CallSignalRateNaNAndInfRefused(t *testing.T) {
	file := func(v string) []string {
		return []string{"--config", writeSettingsFile(t, "call-signal-rate = "+v+"\n")}
	}
	tests := []struct {
		name string
		args []string
		env  func(string) string
	}{
		{"flag NaN", []string{"--call-signal-rate", "NaN"}, env()},
		{"flag inf", []string{"--call-signal-rate", "inf"}, env()},
		{"environment NaN", nil, env("PARLEY_CALL_SIGNAL_RATE", "NaN")},
		{"environment +Inf", nil, env("PARLEY_CALL_SIGNAL_RATE", "+Inf")},
		{"settings file nan", file("nan"), env()},
		{"settings file inf", file("inf"), env()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseServe(tt.args, tt.env, nil, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "call-signal-rate") {
				rate := "?"
				if c != nil {
					rate = c.flags.Lookup("call-signal-rate").Value.String()
				}
				t.Errorf("parseServe accepted call-signal-rate %s (err %v), want it refused as --publish-rate NaN is", rate, err)
			}
		})
	}
}
