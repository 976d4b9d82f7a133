package turn

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 5389 long-term credentials are defined with MD5.
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Credentials mints a TURN REST credential pair for user, valid for ttl from
// now: username is "<unix expiry>:<user>" and credential is
// base64(HMAC-SHA1(secret, username)). This is the scheme of coturn's
// use-auth-secret, so a coturn server given the same secret accepts the pair,
// and this package accepts pairs minted by coturn tools.
func Credentials(secret, user string, ttl time.Duration, now time.Time) (username, credential string) {
	username = strconv.FormatInt(now.Add(ttl).Unix(), 10) + ":" + user
	return username, password(secret, username)
}

// password derives the REST credential of a username.
func password(secret, username string) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// longTermKey is the RFC 5389 long-term credential key,
// MD5(username ":" realm ":" password), that MESSAGE-INTEGRITY is keyed with.
func longTermKey(secret, username, realm string) []byte {
	h := md5.New() //nolint:gosec // see the import
	h.Write([]byte(username))
	h.Write([]byte{':'})
	h.Write([]byte(realm))
	h.Write([]byte{':'})
	h.Write([]byte(password(secret, username)))
	return h.Sum(nil)
}

var errBadUsername = errors.New("turn: username is not <unix expiry>:<user>")

// parseUsername splits a REST username into its expiry and user parts.
func parseUsername(username string) (expiry time.Time, user string, err error) {
	ts, user, ok := strings.Cut(username, ":")
	if !ok || user == "" || ts == "" || len(ts) > 19 {
		return time.Time{}, "", errBadUsername
	}
	for _, c := range ts {
		if c < '0' || c > '9' {
			return time.Time{}, "", errBadUsername
		}
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, "", errBadUsername
	}
	return time.Unix(secs, 0), user, nil
}
