package stun

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the Config fields whose zero value means "the default".
const (
	DefaultRate       = 20
	DefaultBurst      = 40
	DefaultMaxSources = 65536
)

// Config configures a Server.
type Config struct {
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Registerer gets the server's metrics (parley_stun_*); nil registers
	// none.
	Registerer prometheus.Registerer
	// Rate and Burst limit the requests answered per source address (IPv4
	// address or IPv6 /64) a second; zero means 20 with a burst of 40.
	Rate  float64
	Burst int
	// MaxSources bounds the table of per-source limits; zero means 65536.
	MaxSources int
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	if c.MaxSources == 0 {
		c.MaxSources = DefaultMaxSources
	}
	return c
}

var errConfig = errors.New("stun: invalid config")

func (c Config) validate() error {
	switch {
	case c.Rate < 0:
		return fmt.Errorf("%w: Rate: %v is negative", errConfig, c.Rate)
	case c.Burst < 0:
		return fmt.Errorf("%w: Burst: %d is negative", errConfig, c.Burst)
	case c.MaxSources < 0:
		return fmt.Errorf("%w: MaxSources: %d is negative", errConfig, c.MaxSources)
	}
	return nil
}
