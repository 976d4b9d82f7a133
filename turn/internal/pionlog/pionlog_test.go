package pionlog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestLevelsAndLimit(t *testing.T) {
	var buf bytes.Buffer
	l := Factory{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}.NewLogger("turn")

	l.Tracef("trace %s", "user-secret")
	l.Debugf("debug %s", "user-secret")
	if strings.Contains(buf.String(), "user-secret") {
		t.Fatalf("debug and trace lines reached the log: %q", buf.String())
	}

	l.Infof("info %d", 1)
	l.Warn("warn")
	l.Errorf("error %d", 2)
	for _, want := range []string{"level=DEBUG msg=\"info 1\"", "level=WARN msg=warn", "level=ERROR msg=\"error 2\"", "pion=turn"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("got %q, want it to contain %q", buf.String(), want)
		}
	}

	buf.Reset()
	for range 1000 {
		l.Error("flood")
	}
	if got := strings.Count(buf.String(), "flood"); got > burst {
		t.Errorf("got %d lines from a flood, want at most %d", got, burst)
	}
}
