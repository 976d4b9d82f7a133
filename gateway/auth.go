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
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Permissions are the rooms a token may use, from its `rooms` claim. A pattern
// is a room name or a prefix followed by `*`; a nil *Permissions allows every
// room. Call names the WebRTC calls the token may join.
type Permissions struct {
	Subscribe []string `json:"subscribe,omitempty"`
	Publish   []string `json:"publish,omitempty"`
	Call      []string `json:"call,omitempty"`
}

// Claims are the JWT claims Parley reads: `sub` and `exp` are required.
type Claims struct {
	jwt.RegisteredClaims
	Rooms *Permissions `json:"rooms,omitempty"`
	// Relay makes the user's calls use TURN only: their join acks say
	// `relay: true`.
	Relay bool `json:"relay,omitempty"`
}

type action int

const (
	actSubscribe action = iota
	actPublish
	actCall
)

// identity is who made a request.
type identity struct {
	user    string
	perms   *Permissions // nil: every room
	backend bool         // authenticated with the API key
	relay   bool         // the token's relay claim
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
	case actCall:
		patterns = id.perms.Call
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

// authHeaderFormat is the error for an Authorization header that is not a
// bearer credential.
const authHeaderFormat = "Authorization must be 'Bearer <token>'"

// credential returns the request's credential: the Authorization header's
// bearer token, else the `token` query parameter (for browsers' WebSocket and
// EventSource). fromHeader says where it came from; badHeader, that an
// Authorization header is there without a bearer token.
func credential(r *http.Request) (cred string, fromHeader, badHeader bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		tok = strings.TrimSpace(tok)
		return tok, true, !ok || tok == ""
	}
	return r.URL.Query().Get("token"), false, false
}

// authenticate identifies the request's user. allowKey lets the API key in
// (the HTTP API); sessions are always users. Each refusal says what is wrong
// with the credential, and never repeats the credential.
func (a *authenticator) authenticate(r *http.Request, allowKey bool) (identity, *protoError) {
	cred, fromHeader, badHeader := credential(r)
	isKey := a.apiKey != nil && cred != "" && subtle.ConstantTimeCompare([]byte(cred), a.apiKey) == 1
	// The API key is read from the header only: a key in a URL ends up in
	// proxy and access logs.
	if isKey && allowKey && fromHeader && !badHeader {
		return identity{user: "", backend: true}, nil
	}
	if a.dev() {
		return identity{user: "anon-" + randomID(6)}, nil
	}
	switch {
	case badHeader:
		return identity{}, errorf(codeUnauthorized, authHeaderFormat)
	case isKey && allowKey:
		return identity{}, errorf(codeUnauthorized, "the API key goes in the Authorization header, not in the URL")
	case isKey:
		return identity{}, errorf(codeUnauthorized, "the API key is not accepted here: use a user's token")
	case cred == "" && allowKey && a.apiKey != nil:
		return identity{}, errorf(codeUnauthorized, "missing credential: send Authorization: Bearer <token or API key>")
	case cred == "" && allowKey:
		return identity{}, errorf(codeUnauthorized, "missing token: send Authorization: Bearer <token>")
	case cred == "":
		return identity{}, errorf(codeUnauthorized, "missing token: send Authorization: Bearer <token>, or ?token=<token> where a browser cannot set headers")
	case strings.Count(cred, ".") != 2 && allowKey && a.apiKey != nil && fromHeader:
		// Not shaped like a JWT: the caller meant the API key.
		return identity{}, errorf(codeUnauthorized, "the API key is not valid")
	}
	claims, perr := a.parse(cred)
	if perr != nil {
		return identity{}, perr
	}
	return identity{user: claims.Subject, perms: claims.Rooms, relay: claims.Relay, expires: claims.ExpiresAt.Add(tokenLeeway).UnixNano()}, nil
}

// refresh checks a token a live session sends to replace its own: verified
// exactly as at connect, and for the session's user. A token for anyone else
// is forbidden: a session's user never changes.
func (a *authenticator) refresh(cred, user string) (*Claims, *protoError) {
	if a.apiKey != nil && subtle.ConstantTimeCompare([]byte(cred), a.apiKey) == 1 {
		return nil, errorf(codeUnauthorized, "the API key is not accepted here: use a user's token")
	}
	c, perr := a.parse(cred)
	if perr != nil {
		return nil, perr
	}
	if c.Subject != user {
		return nil, errorf(codeForbidden, "a refresh token must be for the same user")
	}
	return c, nil
}

// parse verifies a JWT and says, in the error, what is wrong with it.
func (a *authenticator) parse(cred string) (*Claims, *protoError) {
	var c Claims
	tok, err := jwt.ParseWithClaims(cred, &c, func(*jwt.Token) (any, error) { return a.key, nil },
		jwt.WithValidMethods(a.methods),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(a.now),
		jwt.WithLeeway(tokenLeeway),
	)
	if err == nil {
		if c.Subject == "" {
			return nil, errorf(codeUnauthorized, "token has no sub claim")
		}
		return &c, nil
	}
	if strings.Count(cred, ".") != 2 {
		return nil, errorf(codeUnauthorized, "token is not a JWT: a JWT is three base64url parts separated by dots")
	}
	if errors.Is(err, jwt.ErrTokenMalformed) {
		return nil, errorf(codeUnauthorized, "token is malformed: its three parts must be base64url, its header and claims JSON objects, with sub a string and exp a number")
	}
	if tok != nil {
		alg, _ := tok.Header["alg"].(string)
		if alg == "" {
			return nil, errorf(codeUnauthorized, "token header has no alg")
		}
		if !slices.Contains(a.methods, alg) {
			return nil, errorf(codeUnauthorized, "token algorithm "+algName(alg)+" is not accepted: this node takes "+strings.Join(a.methods, ", "))
		}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return nil, errorf(codeUnauthorized, "token signature is not valid")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return nil, errorf(codeUnauthorized, "token has no exp claim")
	case errors.Is(err, jwt.ErrTokenExpired) && c.ExpiresAt != nil:
		return nil, errorf(codeUnauthorized, "token expired at "+c.ExpiresAt.UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrTokenNotValidYet) && c.NotBefore != nil:
		return nil, errorf(codeUnauthorized, "token is not valid before "+c.NotBefore.UTC().Format(time.RFC3339))
	default:
		return nil, errorf(codeUnauthorized, "token claims are not valid")
	}
}

// algName names a token's algorithm in an error: quoted when it looks like
// one, and not repeated when it does not (it is the client's text).
func algName(alg string) string {
	if len(alg) > 16 {
		return "(unnamed)"
	}
	for i := 0; i < len(alg); i++ {
		c := alg[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return "(unnamed)"
		}
	}
	return strconv.Quote(alg)
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
	return Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   user,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Rooms: perms,
	}.Sign(secret)
}

// Sign returns the claims as an HS256 JWT signed with secret.
func (c Claims) Sign(secret []byte) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}

// randomID returns 2n random hex characters.
func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
