package turn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the Config fields whose zero value means "the default".
const (
	DefaultRealm          = "parley"
	DefaultRelayPortMin   = 49152
	DefaultRelayPortMax   = 65535
	DefaultUserQuota      = 10
	DefaultMaxAllocations = 10000
	DefaultMaxLifetime    = time.Hour
	DefaultSourceRate     = 20
	DefaultSourceBurst    = 40
)

// pionMaxLifetime is the largest LIFETIME pion/turn v4 grants: it answers a
// request for an hour or more with its 10-minute default.
const pionMaxLifetime = time.Hour - time.Second

// Config configures a Server. Sockets are injected: the caller opens them
// (Listen does it for an address, SplitTLS shares a port with HTTPS) and the
// Server owns them from NewServer on, closing them in Close. At least one
// socket is required.
type Config struct {
	// Logger receives the server's logs; nil discards them. No log line
	// carries a secret, a credential or a user name.
	Logger *slog.Logger
	// Registerer gets the server's metrics (parley_turn_*); nil registers
	// none.
	Registerer prometheus.Registerer

	// Realm is the long-term credential realm; zero means "parley".
	Realm string
	// Secret is the TURN REST shared secret that credentials are minted
	// with (see Credentials); required.
	Secret string

	// UDPConns serve TURN and STUN over UDP. Several sockets bound to the
	// same port with SO_REUSEPORT (as Listen opens them) spread the load
	// over cores.
	UDPConns []net.PacketConn
	// TCPListener serves TURN and STUN over TCP; nil disables it.
	TCPListener net.Listener
	// TLSListener is a plain TCP listener that serves TURN over TLS with
	// TLSConfig; nil disables it.
	TLSListener net.Listener
	// TLSConfig holds the certificate for TLSListener; required with it.
	// Versions below TLS 1.2 are always refused.
	TLSConfig *tls.Config
	// TLSStreams yields TURN-over-TLS connections whose TLS is already
	// terminated, such as TLSSplit.TURN of a port shared with HTTPS; they
	// are served as TLSListener's are, without TLSConfig, and count as tls
	// in the metrics. nil disables it.
	TLSStreams net.Listener

	// PublicIP is the address put in relay candidates (XOR-RELAYED-ADDRESS);
	// zero means the listeners' IP. Required when the listeners are bound to
	// an unspecified address such as 0.0.0.0.
	PublicIP netip.Addr
	// RelayPortMin and RelayPortMax bound the relay ports, inclusive; zero
	// means 49152 and 65535.
	RelayPortMin, RelayPortMax int

	// AllowPeers are excepted from the peer-address deny list (see
	// ParseAllowPeers and docs/TURN.md); an allow prefix opens a denied
	// address only if it is at least as specific as the denied range.
	AllowPeers []netip.Prefix
	// UserQuota bounds the live allocations of one user (the part of the
	// REST username after the expiry); zero means 10.
	UserQuota int
	// MaxAllocations bounds the live allocations of all users; zero means
	// 10000.
	MaxAllocations int
	// MaxLifetime caps the LIFETIME an allocation is granted at a time;
	// longer requests are clamped. Zero means an hour, and pion/turn grants
	// at most 59m59s.
	MaxLifetime time.Duration

	// SourceRate and SourceBurst limit, per source address, the requests
	// that carry no valid credential: STUN binding requests, unauthenticated
	// TURN requests and failed authentications, which an attacker could
	// reflect at a victim. Zero means 20 a second with a burst of 40.
	SourceRate  float64
	SourceBurst int
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Realm == "" {
		c.Realm = DefaultRealm
	}
	if c.RelayPortMin == 0 && c.RelayPortMax == 0 {
		c.RelayPortMin, c.RelayPortMax = DefaultRelayPortMin, DefaultRelayPortMax
	}
	if c.UserQuota == 0 {
		c.UserQuota = DefaultUserQuota
	}
	if c.MaxAllocations == 0 {
		c.MaxAllocations = DefaultMaxAllocations
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = DefaultMaxLifetime
	}
	if c.SourceRate == 0 {
		c.SourceRate = DefaultSourceRate
	}
	if c.SourceBurst == 0 {
		c.SourceBurst = DefaultSourceBurst
	}
	return c
}

var errConfig = errors.New("turn: invalid config")

func configErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", errConfig, field, fmt.Sprintf(format, args...))
}

// validate checks a Config that has had its defaults applied.
func (c Config) validate() error {
	switch {
	case c.Secret == "":
		return configErr("Secret", "required")
	case len(c.UDPConns) == 0 && c.TCPListener == nil && c.TLSListener == nil && c.TLSStreams == nil:
		return configErr("UDPConns", "no UDP socket, TCP listener, TLS listener or TLS streams")
	case c.TLSListener != nil && c.TLSConfig == nil:
		return configErr("TLSConfig", "required with TLSListener")
	case c.TLSConfig != nil && c.TLSConfig.MaxVersion != 0 && c.TLSConfig.MaxVersion < tls.VersionTLS12:
		return configErr("TLSConfig", "MaxVersion below TLS 1.2")
	case c.TLSConfig != nil && c.TLSListener != nil && len(c.TLSConfig.Certificates) == 0 &&
		c.TLSConfig.GetCertificate == nil && c.TLSConfig.GetConfigForClient == nil:
		return configErr("TLSConfig", "no certificate")
	case c.RelayPortMin < 1 || c.RelayPortMin > 65535:
		return configErr("RelayPortMin", "%d is not a port", c.RelayPortMin)
	case c.RelayPortMax < 1 || c.RelayPortMax > 65535:
		return configErr("RelayPortMax", "%d is not a port", c.RelayPortMax)
	case c.RelayPortMin > c.RelayPortMax:
		return configErr("RelayPortMin", "%d is above RelayPortMax %d", c.RelayPortMin, c.RelayPortMax)
	case c.PublicIP.IsValid() && (c.PublicIP.IsUnspecified() || c.PublicIP.IsMulticast()):
		return configErr("PublicIP", "%v cannot be a relay address", c.PublicIP)
	case c.UserQuota < 0:
		return configErr("UserQuota", "%d is negative", c.UserQuota)
	case c.MaxAllocations < 0:
		return configErr("MaxAllocations", "%d is negative", c.MaxAllocations)
	case c.MaxLifetime < time.Minute:
		return configErr("MaxLifetime", "%v is below a minute", c.MaxLifetime)
	case c.SourceRate < 0:
		return configErr("SourceRate", "%v is negative", c.SourceRate)
	case c.SourceBurst < 0:
		return configErr("SourceBurst", "%d is negative", c.SourceBurst)
	}
	for i, p := range c.AllowPeers {
		if !p.IsValid() {
			return configErr("AllowPeers", "entry %d is not a valid prefix", i)
		}
	}
	for i, pc := range c.UDPConns {
		if pc == nil {
			return configErr("UDPConns", "entry %d is nil", i)
		}
	}
	return nil
}
