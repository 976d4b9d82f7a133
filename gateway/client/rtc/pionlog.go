package rtc

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// pionLogger is a logging.LoggerFactory that writes pion's warnings and
// errors to a slog.Logger, and its info lines at slog's Debug level. Its
// debug and trace lines, written per packet, are dropped.
type pionLogger struct {
	log *slog.Logger
}

var _ logging.LoggerFactory = pionLogger{}

// NewLogger returns the logger for one of pion's scopes.
func (f pionLogger) NewLogger(scope string) logging.LeveledLogger {
	return pionScope{f.log.With("pion", scope)}
}

type pionScope struct {
	log *slog.Logger
}

func (l pionScope) logf(level slog.Level, format string, args ...any) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	l.log.Log(ctx, level, fmt.Sprintf(format, args...))
}

func (l pionScope) Trace(string)          {}
func (l pionScope) Tracef(string, ...any) {}
func (l pionScope) Debug(string)          {}
func (l pionScope) Debugf(string, ...any) {}

func (l pionScope) Info(msg string)                   { l.logf(slog.LevelDebug, "%s", msg) }
func (l pionScope) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args...) }
func (l pionScope) Warn(msg string)                   { l.logf(slog.LevelWarn, "%s", msg) }
func (l pionScope) Warnf(format string, args ...any)  { l.logf(slog.LevelWarn, format, args...) }
func (l pionScope) Error(msg string)                  { l.logf(slog.LevelError, "%s", msg) }
func (l pionScope) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args...) }
