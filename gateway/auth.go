package gateway

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Permissions are the rooms a token may use, from its `rooms` claim. A pattern
// is a room name or a prefix followed by `*`; a nil *Permissions allows every
// room. Call is carried for WebRTC calls, which this version does not serve.
type Permissions struct {
	Subscribe []string `json:"subscribe,omitempty"`
	Publish   []string `json:"publish,omitempty"`
	Call      []string `json:"call,omitempty"`
}

// Claims are the JWT claims Parley reads: `sub` and `exp` are required.
type Claims struct {
	jwt.RegisteredClaims
	Rooms *Permissions `json:"rooms,omitempty"`
}

type action int

const (
	actSubscribe action = iota
	actPublish
)

// identity is who made a request.
type identity struct {
	user    string
	perms   *Permissions // nil: every room
	backend bool         // authenticated with the API key
	// expires is when the token stops being accepted, leeway included
	// (Unix ns); zero when there is no token.
	expires int64
}

func (id identity) may(a action, room string) bool {
	if id.backend || id.perms == nil {
		return true
	}
	var patterns []string
	switch a {
	case actSubscribe:
		patterns = id.perms.Subscribe
	case actPublish:
		patterns = id.perms.Publish
	}
	for _, p := range patterns {
		if matchRoom(p, room) {
			return true
		}
	}
	return false
}

// matchRoom matches a room against a pattern whose only wildcard is a
// trailing `*`.
func matchRoom(pattern, room string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(room, prefix)
	}
	return pattern == room
}

// tokenLeeway is the clock skew allowed on a token's exp.
const tokenLeeway = 5 * time.Second

// authenticator checks JWTs and the API key.
type authenticator struct {
	key     any // []byte for HS256, or a public key
	methods []string
	apiKey  []byte
	now     func() time.Time
}

func newAuthenticator(cfg *Config) (*authenticator, error) {
	a := &authenticator{now: cfg.now}
	if cfg.APIKey != "" {
		a.apiKey = []byte(cfg.APIKey)
	}
	switch {
	case len(cfg.JWTSecret) > 0 && cfg.JWTPublicKey != nil:
		return nil, errors.New("gateway: JWTSecret and JWTPublicKey are exclusive")
	case len(cfg.JWTSecret) > 0:
		a.key, a.methods = cfg.JWTSecret, []string{"HS256"}
	case cfg.JWTPublicKey != nil:
		switch cfg.JWTPublicKey.(type) {
		case *rsa.PublicKey:
			a.methods = []string{"RS256"}
		case *ecdsa.PublicKey:
			a.methods = []string{"ES256"}
		case ed25519.PublicKey:
			a.methods = []string{"EdDSA"}
		default:
			return nil, fmt.Errorf("gateway: JWTPublicKey: unsupported key type %T", cfg.JWTPublicKey)
		}
		a.key = cfg.JWTPublicKey
	}
	return a, nil
}

// dev reports whether no JWT key is configured: anonymous users are let in.
func (a *authenticator) dev() bool { return a.key == nil }

// bearer returns the request's Authorization bearer credential.
func bearer(r *http.Request) string {
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(tok)
	}
	return ""
}

// credential returns a user's token: the Authorization header, else the
// `token` query parameter (for browsers' WebSocket and EventSource).
func credential(r *http.Request) string {
	if r.Header.Get("Authorization") != "" {
		return bearer(r)
	}
	return r.URL.Query().Get("token")
}

// authenticate identifies the request's user. allowKey lets the API key in
// (the HTTP API); sessions are always users.
func (a *authenticator) authenticate(r *http.Request, allowKey bool) (identity, *protoError) {
	// The API key is read from the header only: a key in a URL ends up in
	// proxy and access logs.
	if key := bearer(r); allowKey && a.apiKey != nil && key != "" &&
		subtle.ConstantTimeCompare([]byte(key), a.apiKey) == 1 {
		return identity{user: "", backend: true}, nil
	}
	cred := credential(r)
	if a.dev() {
		return identity{user: "anon-" + randomID(6)}, nil
	}
	if cred == "" {
		return identity{}, errorf(codeUnauthorized, "missing token")
	}
	claims, err := a.parse(cred)
	if err != nil {
		return identity{}, errorf(codeUnauthorized, err.Error())
	}
	return identity{user: claims.Subject, perms: claims.Rooms, expires: claims.ExpiresAt.Add(tokenLeeway).UnixNano()}, nil
}

func (a *authenticator) parse(tok string) (*Claims, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return a.key, nil },
		jwt.WithValidMethods(a.methods),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(a.now),
		jwt.WithLeeway(tokenLeeway),
	)
	if err != nil {
		switch {
		case errors.Is(err, jwt.ErrTokenExpired):
			return nil, errors.New("token expired")
		case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
			return nil, errors.New("token signature or algorithm not accepted")
		case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
			return nil, errors.New("token has no exp claim")
		default:
			return nil, errors.New("invalid token")
		}
	}
	if c.Subject == "" {
		return nil, errors.New("token has no sub claim")
	}
	return &c, nil
}

// ParsePublicKey reads a PEM-encoded public key (PKIX or a certificate) for
// verifying RS256, ES256 or EdDSA tokens.
func ParsePublicKey(pemBytes []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("gateway: no PEM block in public key file")
	}
	switch block.Type {
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("gateway: public key certificate: %w", err)
		}
		return cert.PublicKey, nil
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("gateway: RSA public key: %w", err)
		}
		return k, nil
	default:
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("gateway: public key: %w", err)
		}
		return k, nil
	}
}

// MintToken signs an HS256 token for user, valid for ttl, with optional room
// permissions. It is what `parley token` prints.
func MintToken(secret []byte, user string, ttl time.Duration, perms *Permissions, now time.Time) (string, error) {
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   user,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Rooms: perms,
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}

// randomID returns 2n random hex characters.
func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
