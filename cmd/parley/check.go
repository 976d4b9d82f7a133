package main

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"regexp"
	"strings"
	"time"
	"unicode"

	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/turn"
)

// The checks of serve's values that are more than a comparison: each says
// in the words of the help what the gateway or the TURN server would refuse.

// Floors of the flags below which a node could serve no client.
const (
	// minPing is the gateway's floor for its heartbeat interval.
	minPing = 10 * time.Millisecond
	// minQueueLimit holds the largest frame a node sends unprompted, a room
	// message with 64 KiB of data (the most a client may publish) and its
	// envelope, with room to spare for the frames queued behind it.
	minQueueLimit = 128 << 10
)

// originRule says what --origins takes.
const originRule = "want host patterns such as app.example.com or *.example.com, or scheme://host patterns such as https://app.example.com, with * and ? as wildcards"

// checkTURN checks the TURN flags as turn.NewServer would, before its
// sockets are open, and picks the host of the turns: URLs (tlsHost is
// --turn-tls-host as written).
func (c *serveConfig) checkTURN(publicIP, ports, allowPeers, tlsHost string, bad func(error)) {
	fs := c.flags
	if publicIP != "" {
		ip, err := netip.ParseAddr(publicIP)
		switch {
		case err != nil:
			bad(fs.badValue("turn-public-ip", "not an IP address"))
		case ip.IsUnspecified() || ip.IsMulticast():
			bad(fs.badValue("turn-public-ip", "cannot be a relay address: give the address clients reach this host at"))
		default:
			c.turn.publicIP = ip.Unmap()
		}
	}
	if lo, hi, err := turn.ParsePortRange(ports); err != nil {
		bad(fs.badValue("turn-ports", "%s; want a port or a range such as 49152-65535", plain(err, "turn: ", fmt.Sprintf("port range %q: ", ports))))
	} else {
		c.turn.portMin, c.turn.portMax = lo, hi
	}
	// Local calls in dev mode relay to loopback; a node that others can reach
	// never opens its own loopback services to anonymous users by default.
	if allowPeers == "" && c.jwtSecret == "" && c.jwtPublicKey == "" && loopback(c.addr) {
		allowPeers = "127.0.0.0/8,::1/128"
	}
	for field := range strings.SplitSeq(allowPeers, ",") {
		p, err := turn.ParseAllowPeers(field)
		if err != nil {
			bad(fs.badFlag("turn-allow-peers", "%q is not a CIDR such as 10.0.0.0/8 or an IP address", strings.TrimSpace(field)))
		}
		c.turn.allowPeers = append(c.turn.allowPeers, p...)
	}
	if c.turn.tlsAddr != "" {
		if _, _, err := net.SplitHostPort(c.turn.tlsAddr); err != nil {
			bad(fs.badValue("turn-tls-addr", "want host:port"))
		}
		switch {
		case c.turnsOnAddrOtherwise():
			bad(fmt.Errorf("%s has the port of %s: write its host as %s does to share the port with HTTPS", fs.setting("turn-tls-addr"), fs.setting("addr"), fs.label("addr")))
		case c.tlsCert == "" && c.turnsOnAddr():
			bad(fmt.Errorf("%s is also %s: sharing the port with HTTPS needs --tls-cert and --tls-key", fs.setting("turn-tls-addr"), fs.label("addr")))
		case c.tlsCert == "":
			bad(fmt.Errorf("%s needs --tls-cert and --tls-key", fs.label("turn-tls-addr")))
		}
		if c.turn.addr == "off" {
			bad(fmt.Errorf("%s needs TURN on: %s is off", fs.label("turn-tls-addr"), fs.label("turn-addr")))
		}
	} else if tlsHost != "" {
		bad(fmt.Errorf("%s needs %s: it names the host of turns: URLs", fs.label("turn-tls-host"), fs.label("turn-tls-addr")))
	}
	if c.turn.addr == "off" {
		return
	}
	host, _, err := net.SplitHostPort(c.turn.addr)
	if err != nil {
		bad(fs.badValue("turn-addr", "want host:port or off"))
		return
	}
	// The relay's address family is the listener's, except for a listener
	// on every address, whose relays take the public address's family.
	var listen netip.Addr
	switch host {
	case "", "0.0.0.0", "::":
		listen = netip.IPv6Unspecified()
	case "localhost":
		listen = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	default:
		if ip, err := netip.ParseAddr(host); err == nil {
			listen = ip.Unmap()
		}
	}
	pub := c.turn.publicIP
	switch {
	case listen.IsUnspecified() && !pub.IsValid() && publicIP == "":
		bad(fmt.Errorf("%s listens on every address: set --turn-public-ip to the address clients reach the relay at", fs.setting("turn-addr")))
	case listen.IsValid() && !listen.IsUnspecified() && pub.IsValid() && listen.Is4() != pub.Is4():
		bad(fmt.Errorf("%s and %s are not of one address family", fs.setting("turn-addr"), fs.setting("turn-public-ip")))
	}
	if c.turn.tlsAddr != "" {
		c.checkTURNSHost(tlsHost, listen, bad)
	}
}

// checkTURNSHost picks the host of the turns: URLs and checks that the
// certificate of --tls-cert is valid for it: browsers, pion and package rtc
// verify the certificate against the URL's host. The host is tlsHost
// (--turn-tls-host) when set; else the address of the turn: URLs
// (--turn-public-ip, else listen, the IP of --turn-addr) when the
// certificate is valid for it; else the certificate's first DNS name without
// a wildcard. When listen is not known before TURN listens (--turn-addr
// names a host) and the certificate has no such name, the address is checked
// once it is known (checkTURNSHostOf).
func (c *serveConfig) checkTURNSHost(tlsHost string, listen netip.Addr, bad func(error)) {
	fs := c.flags
	leaf := leafOf(c.tlsConf)
	if tlsHost != "" {
		host := tlsHost
		if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")); err == nil {
			host = ip.String()
		} else if host == "" || strings.ContainsAny(host, ":/[]@ ") {
			bad(fs.badValue("turn-tls-host", "want a host name or an IP address, without a port"))
			return
		}
		if leaf == nil {
			return // no certificate: reported with --tls-cert
		}
		if err := leaf.VerifyHostname(host); err != nil {
			bad(fs.badValue("turn-tls-host", "the certificate of %s is not valid for it (it is for %s)", fs.label("tls-cert"), certHosts(leaf)))
			return
		}
		c.turn.tlsHost = host
		return
	}
	if leaf == nil {
		return
	}
	ip, from := c.turn.publicIP, fs.label("turn-public-ip")
	if !ip.IsValid() && listen.IsValid() && !listen.IsUnspecified() {
		ip, from = listen, "the address of "+fs.label("turn-addr")
	}
	if ip.IsValid() && leaf.VerifyHostname(ip.String()) == nil {
		return // the address of the turn: URLs
	}
	if name := certName(leaf); name != "" {
		c.turn.tlsHost = name
		return
	}
	if !ip.IsValid() {
		return // known once TURN listens, or --turn-addr is refused already
	}
	bad(fmt.Errorf("%s: the certificate is not valid for %s (%s), the host that turns: URLs would name, and has no DNS name without a wildcard to name instead (it is for %s): set %s to a name it is valid for",
		fs.label("tls-cert"), ip, from, certHosts(leaf), fs.label("turn-tls-host")))
}

// checkTURNSHostOf checks, once the relay listens, the address that the
// turns: URLs name when parseServe could not: --turn-addr named a host, and
// the certificate has no DNS name to name instead.
func (c *serveConfig) checkTURNSHostOf(relay *turn.Server) error {
	leaf := leafOf(c.tlsConf)
	if leaf == nil || relay.TLSAddr() == nil || c.turn.tlsHost != "" || c.turn.publicIP.IsValid() {
		return nil
	}
	host, _, _ := net.SplitHostPort(relay.UDPAddr().String())
	if leaf.VerifyHostname(host) == nil {
		return nil
	}
	return fmt.Errorf("%s: the certificate is not valid for %s, the address of %s that turns: URLs would name (it is for %s): set %s to a name it is valid for",
		c.flags.label("tls-cert"), host, c.flags.setting("turn-addr"), certHosts(leaf), c.flags.label("turn-tls-host"))
}

// leafOf is the parsed leaf certificate of conf, nil without one.
func leafOf(conf *tls.Config) *x509.Certificate {
	if conf == nil || len(conf.Certificates) == 0 {
		return nil
	}
	cert := conf.Certificates[0]
	if cert.Leaf != nil {
		return cert.Leaf
	}
	if len(cert.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// certName is the first DNS name of a certificate that is no wildcard and
// that the certificate verifies for; empty when there is none.
func certName(leaf *x509.Certificate) string {
	for _, name := range leaf.DNSNames {
		if !strings.Contains(name, "*") && leaf.VerifyHostname(name) == nil {
			return name
		}
	}
	return ""
}

// certHosts lists the names and addresses a certificate is for, the first
// few of them: "gw.example.com, 203.0.113.7 and 3 more".
func certHosts(leaf *x509.Certificate) string {
	var hosts []string
	hosts = append(hosts, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	const shown = 4
	switch {
	case len(hosts) == 0:
		return "no host name or IP address"
	case len(hosts) > shown:
		return strings.Join(hosts[:shown], ", ") + fmt.Sprintf(" and %d more", len(hosts)-shown)
	}
	return strings.Join(hosts, ", ")
}

// turnsOnAddr reports whether --turn-tls-addr names the listener of
// --addr, which then serves HTTPS and TURN over TLS on one socket: the same
// host as written (both empty for every address) and the same port. Port 0
// picks a port for each flag, so it is never shared.
func (c *serveConfig) turnsOnAddr() bool {
	if c.turn.tlsAddr == "" {
		return false
	}
	host, port, err := net.SplitHostPort(c.addr)
	thost, tport, terr := net.SplitHostPort(c.turn.tlsAddr)
	return err == nil && terr == nil && host == thost && port == tport && port != "0"
}

// turnsOnAddrOtherwise reports whether --turn-tls-addr has the port of
// --addr with the host written otherwise, so that the two listeners would
// clash rather than share the port: ":443" next to "0.0.0.0:443", or a name
// next to its address. Two distinct IP addresses, neither of them every
// address, take the same port without a clash.
func (c *serveConfig) turnsOnAddrOtherwise() bool {
	if c.turn.tlsAddr == "" {
		return false
	}
	host, port, err := net.SplitHostPort(c.addr)
	thost, tport, terr := net.SplitHostPort(c.turn.tlsAddr)
	if err != nil || terr != nil || port != tport || port == "0" || host == thost {
		return false
	}
	ip, err := netip.ParseAddr(host)
	tip, terr := netip.ParseAddr(thost)
	distinct := err == nil && terr == nil && !ip.IsUnspecified() && !tip.IsUnspecified() && ip.Unmap() != tip.Unmap()
	return !distinct
}

// readPublicKey reads a --jwt-public-key file as the gateway takes it.
func readPublicKey(file string) (crypto.PublicKey, error) {
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		return nil, errors.New(fileReason(err))
	}
	key, err := gateway.ParsePublicKey(pemBytes)
	if err != nil {
		return nil, errors.New("not a PEM public key (PKIX or PKCS #1) or certificate")
	}
	switch key.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		return key, nil
	}
	return nil, fmt.Errorf("holds %s key: want an RSA, ECDSA or Ed25519 public key", keyKind(key))
}

// keyKind names a key type in words.
func keyKind(key crypto.PublicKey) string {
	if _, ok := key.(*ecdh.PublicKey); ok {
		return "a Diffie-Hellman (X25519 or ECDH)"
	}
	return "an unsupported"
}

// fileReason says why a file could not be read or parsed, without the Go
// operation: "no such file or directory", or the parser's message without
// its package prefix.
func fileReason(err error, prefixes ...string) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return "cannot read " + pe.Path + ": " + pe.Err.Error()
	}
	return plain(err, prefixes...)
}

// plain drops the package and operation prefixes of an error from gateway
// or turn ("gateway: trusted proxies: "): they name code, and the message
// names the flag instead.
func plain(err error, prefixes ...string) string {
	msg := err.Error()
	for _, p := range prefixes {
		msg = strings.TrimPrefix(msg, p)
	}
	return msg
}

// schemeRE matches the scheme of an origin pattern, wildcards allowed.
var schemeRE = regexp.MustCompile(`^[A-Za-z*?][A-Za-z0-9+.\-*?]*$`)

// checkOrigin checks an --origins pattern: a host pattern such as
// *.example.com or localhost:3000, or scheme://host such as
// https://app.example.com, in path.Match syntax. The gateway matches it
// against the Origin header, which never has a space, a path or a user.
func checkOrigin(p string) error {
	if strings.IndexFunc(p, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 {
		return errors.New("has a space or a control character")
	}
	if _, err := path.Match(p, ""); err != nil {
		return errors.New("is not a valid pattern (an unclosed [ or a trailing \\)")
	}
	scheme, host, full := strings.Cut(p, "://")
	if !full {
		scheme, host = "http", p
	}
	switch {
	case !schemeRE.MatchString(scheme):
		return errors.New("has no valid scheme before ://")
	case host == "":
		return errors.New("has no host")
	case strings.ContainsAny(host, "/@#"):
		return errors.New("has a path or a user part: an origin is scheme://host or scheme://host:port")
	case strings.ContainsAny(host, "[\\"):
		return nil // a character class or an escape: path.Match has checked it
	}
	// Each wildcard stands for some characters of a real origin.
	wild := strings.NewReplacer("*", "0", "?", "0")
	sample := "x" + wild.Replace(scheme) + "://" + wild.Replace(host)
	if u, err := url.Parse(sample); err != nil || u.Host == "" {
		return errors.New("is not an origin")
	}
	return nil
}
