// Package pionlog adapts pion's logging.LoggerFactory to log/slog.
//
// pion's Debug and Trace lines are dropped: they are written per packet and
// some carry a credential's user name, which must never reach a log. Info
// lines go out at slog's Debug level, Warn and Error at their own, and all of
// them through a per-scope rate limit so that a flood of bad packets cannot
// turn into a flood of log lines.
package pionlog

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
	"golang.org/x/time/rate"
)

// linesPerSecond and burst bound what one scope may log.
const (
	linesPerSecond = 10
	burst          = 20
)

// Factory is a logging.LoggerFactory that writes to Logger.
type Factory struct {
	Logger *slog.Logger
}

var _ logging.LoggerFactory = Factory{}

// NewLogger returns the logger for one of pion's scopes.
func (f Factory) NewLogger(scope string) logging.LeveledLogger {
	return &logger{
		l:     f.Logger.With("pion", scope),
		limit: rate.NewLimiter(linesPerSecond, burst),
	}
}

type logger struct {
	l     *slog.Logger
	limit *rate.Limiter
}

func (l *logger) log(level slog.Level, msg string) {
	ctx := context.Background()
	if !l.l.Enabled(ctx, level) || !l.limit.Allow() {
		return
	}
	l.l.Log(ctx, level, msg)
}

func (l *logger) logf(level slog.Level, format string, args ...any) {
	ctx := context.Background()
	if !l.l.Enabled(ctx, level) || !l.limit.Allow() {
		return
	}
	l.l.Log(ctx, level, fmt.Sprintf(format, args...))
}

func (l *logger) Trace(string)          {}
func (l *logger) Tracef(string, ...any) {}
func (l *logger) Debug(string)          {}
func (l *logger) Debugf(string, ...any) {}

func (l *logger) Info(msg string)                   { l.log(slog.LevelDebug, msg) }
func (l *logger) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args...) }
func (l *logger) Warn(msg string)                   { l.log(slog.LevelWarn, msg) }
func (l *logger) Warnf(format string, args ...any)  { l.logf(slog.LevelWarn, format, args...) }
func (l *logger) Error(msg string)                  { l.log(slog.LevelError, msg) }
func (l *logger) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args...) }
