package turn

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
)

// The tests in this file follow the rows of TURN-SECURITY.md.

func TestRow01AllocateWithoutCredentials(t *testing.T) {
	ts := startServer(t, Config{})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			addr := ts.UDPAddr()
			if network == "tcp" {
				addr = ts.TCPAddr()
			}
			c := dialRaw(t, network, addr)
			resp := c.request(pionstun.MethodAllocate, false, transportUDPAttr)
			if code := errorCode(resp); code != pionstun.CodeUnauthorized {
				t.Fatalf("got %v, want 401", code)
			}
			for _, a := range []pionstun.AttrType{pionstun.AttrRealm, pionstun.AttrNonce} {
				if !resp.Contains(a) {
					t.Errorf("401 lacks %v", a)
				}
			}
			if resp.Contains(pionstun.AttrXORRelayedAddress) {
				t.Error("401 carries a relayed address")
			}
			if ts.AllocationCount() != 0 {
				t.Errorf("got %d allocations, want 0", ts.AllocationCount())
			}
		})
	}
}

func TestRow02BadCredentials(t *testing.T) {
	ts := startServer(t, Config{})
	good, goodPass := ts.creds("alice", time.Hour)
	expired, expiredPass := ts.creds("alice", -time.Minute)
	tests := []struct {
		name               string
		username, password string
		realm              string
		reason             string
	}{
		{name: "expired", username: expired, password: expiredPass, reason: reasonExpired},
		{name: "wrong hmac", username: good, password: password("another-secret", good), reason: reasonBadIntegrity},
		{name: "wrong password", username: good, password: goodPass + "x", reason: reasonBadIntegrity},
		{name: "malformed username", username: "alice", password: password(testSecret, "alice"), reason: reasonBadUsername},
		{name: "expiry not a number", username: "soon:alice", password: password(testSecret, "soon:alice"), reason: reasonBadUsername},
		{name: "unknown realm", username: good, password: goodPass, realm: "elsewhere", reason: reasonUnknownRealm},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ts.metric(t, "parley_turn_auth_failures_total", map[string]string{"reason": tt.reason})
			c := dialRaw(t, "udp", ts.UDPAddr())
			c.username, c.password, c.realm = tt.username, tt.password, tt.realm
			resp, code := c.allocate()
			if code != pionstun.CodeUnauthorized {
				t.Fatalf("got %v, want 401", code)
			}
			if resp.Contains(pionstun.AttrSoftware) {
				t.Error("401 carries SOFTWARE")
			}
			if got := ts.metric(t, "parley_turn_auth_failures_total", map[string]string{"reason": tt.reason}); got != before+1 {
				t.Errorf("got %v auth failures for %s, want %v", got, tt.reason, before+1)
			}
		})
	}
	if ts.AllocationCount() != 0 {
		t.Errorf("got %d allocations, want 0", ts.AllocationCount())
	}
}

func TestRow03RefreshAfterExpiry(t *testing.T) {
	ts := startServer(t, Config{})
	user, pass := ts.creds("alice", time.Minute)
	c := ts.dialAs(t, user, pass)
	if _, code := c.allocate(); code != 0 {
		t.Fatalf("got %v, want a new allocation", code)
	}

	ts.clock.advance(2 * time.Minute) // the credential has expired

	if code := errorCode(c.request(pionstun.MethodRefresh, true, lifetimeAttr(600))); code != 0 {
		t.Errorf("refresh of a live allocation: got %v, want success", code)
	}
	if code := errorCode(c.request(pionstun.MethodCreatePermission, true, peerAttr(net.ParseIP("8.8.8.8"), 4000))); code != 0 {
		t.Errorf("permission on a live allocation: got %v, want success", code)
	}
	if code := errorCode(c.request(pionstun.MethodChannelBind, true, channelAttr(0x4000), peerAttr(net.ParseIP("8.8.8.8"), 4000))); code != 0 {
		t.Errorf("channel bind on a live allocation: got %v, want success", code)
	}

	other := dialRaw(t, "udp", ts.UDPAddr())
	other.username, other.password = user, pass
	if _, code := other.allocate(); code != pionstun.CodeUnauthorized {
		t.Errorf("new allocation with an expired credential: got %v, want 401", code)
	}
	if got := ts.AllocationCount(); got != 1 {
		t.Errorf("got %d allocations, want 1", got)
	}
}

// deniedTargets are the peer addresses the issue names, each with the
// AllowPeers entry that opens it.
var deniedTargets = []struct {
	name  string
	ip    string
	allow string
}{
	{name: "loopback", ip: "127.0.0.1", allow: "127.0.0.0/8"},
	{name: "private", ip: "10.0.0.1", allow: "10.0.0.0/8"},
	{name: "metadata", ip: "169.254.169.254", allow: "169.254.169.254/32"},
	{name: "ipv6 loopback", ip: "::1", allow: "::1/128"},
	{name: "ipv4-mapped loopback", ip: "::ffff:127.0.0.1", allow: "127.0.0.0/8"},
}

// elsewhere is a relay address other than the loopback the test server
// listens on: the relay's own address is always open to relay ports (row
// 12), so rows 4 to 11 are tested with the relay advertised elsewhere.
var elsewhere = netip.MustParseAddr("203.0.113.10")

func TestRows04To10PeersDeniedByDefault(t *testing.T) {
	ts := startServer(t, Config{PublicIP: elsewhere})
	user, pass := ts.creds("alice", time.Hour)
	c := ts.dialAs(t, user, pass)
	if _, code := c.allocate(); code != 0 {
		t.Fatalf("allocate: got %v", code)
	}
	ch := uint16(0x4000)
	for _, tt := range deniedTargets {
		t.Run(tt.name, func(t *testing.T) {
			ip := net.ParseIP(tt.ip)
			if code := errorCode(c.request(pionstun.MethodCreatePermission, true, peerAttr(ip, 5000))); code != pionstun.CodeForbidden {
				t.Errorf("CreatePermission to %s: got %v, want 403", tt.ip, code)
			}
			ch++
			if code := errorCode(c.request(pionstun.MethodChannelBind, true, channelAttr(ch), peerAttr(ip, 5000))); code != pionstun.CodeForbidden {
				t.Errorf("ChannelBind to %s: got %v, want 403", tt.ip, code)
			}
		})
	}
	if got := ts.metric(t, "parley_turn_denied_peers_total", map[string]string{"method": "create_permission"}); got != float64(len(deniedTargets)) {
		t.Errorf("got %v denied permissions, want %d", got, len(deniedTargets))
	}
}

func TestRow11PeersAllowedByConfig(t *testing.T) {
	for _, tt := range deniedTargets {
		t.Run(tt.name, func(t *testing.T) {
			allow, err := ParseAllowPeers(tt.allow)
			if err != nil {
				t.Fatal(err)
			}
			ts := startServer(t, Config{AllowPeers: allow, PublicIP: elsewhere})
			user, pass := ts.creds("alice", time.Hour)
			c := ts.dialAs(t, user, pass)
			if _, code := c.allocate(); code != 0 {
				t.Fatalf("allocate: got %v", code)
			}
			ip := net.ParseIP(tt.ip)
			if code := errorCode(c.request(pionstun.MethodCreatePermission, true, peerAttr(ip, 5000))); code != 0 {
				t.Errorf("CreatePermission to %s with %s allowed: got %v, want success", tt.ip, tt.allow, code)
			}
			if code := errorCode(c.request(pionstun.MethodChannelBind, true, channelAttr(0x4001), peerAttr(ip, 5000))); code != 0 {
				t.Errorf("ChannelBind to %s with %s allowed: got %v, want success", tt.ip, tt.allow, code)
			}
		})
	}
}

func TestRow11MalformedAllowPeersStopsStartUp(t *testing.T) {
	for _, in := range []string{"10.0.0.0/33", "10.0.0.0/8,nonsense", "300.1.1.1", "fe80::/129"} {
		if _, err := ParseAllowPeers(in); err == nil || !strings.HasPrefix(err.Error(), "turn: allow peers:") {
			t.Errorf("ParseAllowPeers(%q): got %v, want a turn: allow peers: error", in, err)
		}
	}
}

func TestRow12RelayToRelay(t *testing.T) {
	ts := startServer(t, Config{RelayPortMin: 42000, RelayPortMax: 42999})
	ua, pa := ts.creds("alice", time.Hour)
	ub, pb := ts.creds("bob", time.Hour)
	_, _ = pionClient(t, ts.UDPAddr(), ua, pa)
	ca, _ := pionClient(t, ts.UDPAddr(), ua, pa)
	cb, _ := pionClient(t, ts.UDPAddr(), ub, pb)
	ra, err := ca.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	rb, err := cb.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()

	// Both relays are on 127.0.0.1, which the deny list covers; relay to
	// relay still works.
	if err := cb.CreatePermission(ra.LocalAddr()); err != nil {
		t.Fatalf("permission to the other relay: %v", err)
	}
	if _, err := ra.WriteTo([]byte("hello"), rb.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	_ = rb.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := rb.ReadFrom(buf)
	if err != nil {
		t.Fatalf("relay to relay: %v", err)
	}
	if string(buf[:n]) != "hello" || from.String() != ra.LocalAddr().String() {
		t.Errorf("got %q from %v, want hello from %v", buf[:n], from, ra.LocalAddr())
	}

	// The relay's own address is open on relay ports only: a service on
	// 127.0.0.1 outside the range gets nothing.
	svc := listenOutside(t, 42000, 42999)
	if _, err := ra.WriteTo([]byte("probe"), svc.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	// A datagram through the same relay to the other relay arrives after
	// the probe would have; the probe must not.
	if _, err := ra.WriteTo([]byte("after"), rb.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	_ = rb.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := rb.ReadFrom(buf); err != nil || string(buf[:n]) != "after" {
		t.Fatalf("got %q %v, want after", buf[:n], err)
	}
	_ = svc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _, err := svc.ReadFrom(buf); err == nil {
		t.Errorf("service outside the relay range got %q", buf[:n])
	}
}

func TestRow13Quota(t *testing.T) {
	t.Run("per user across fresh credentials", func(t *testing.T) {
		ts := startServer(t, Config{UserQuota: 2})
		for i := range 3 {
			// A fresh credential each time: the quota is the user's.
			user, pass := ts.creds("mallory", time.Hour+time.Duration(i)*time.Second)
			c := ts.dialAs(t, user, pass)
			_, code := c.allocate()
			want := pionstun.ErrorCode(0)
			if i == 2 {
				want = pionstun.CodeAllocQuotaReached
			}
			if code != want {
				t.Fatalf("allocation %d: got %v, want %v", i+1, code, want)
			}
		}
		user, pass := ts.creds("alice", time.Hour)
		c := ts.dialAs(t, user, pass)
		if _, code := c.allocate(); code != 0 {
			t.Errorf("another user: got %v, want success", code)
		}
		if got := ts.metric(t, "parley_turn_quota_rejections_total", map[string]string{"scope": "user"}); got != 1 {
			t.Errorf("got %v user quota rejections, want 1", got)
		}
	})
	t.Run("total cap and release", func(t *testing.T) {
		ts := startServer(t, Config{MaxAllocations: 2})
		var first *rawClient
		for i, name := range []string{"a", "b", "c"} {
			user, pass := ts.creds(name, time.Hour)
			c := ts.dialAs(t, user, pass)
			_, code := c.allocate()
			want := pionstun.ErrorCode(0)
			if i == 2 {
				want = pionstun.CodeAllocQuotaReached
			}
			if code != want {
				t.Fatalf("allocation %d: got %v, want %v", i+1, code, want)
			}
			if i == 0 {
				first = c
			}
		}
		// Deleting an allocation gives its slot back.
		if code := errorCode(first.request(pionstun.MethodRefresh, true, lifetimeAttr(0))); code != 0 {
			t.Fatalf("delete: got %v", code)
		}
		user, pass := ts.creds("c", time.Hour)
		c := ts.dialAs(t, user, pass)
		if _, code := c.allocate(); code != 0 {
			t.Errorf("after a deletion: got %v, want success", code)
		}
	})
}

func TestRow14PortRangeExhausted(t *testing.T) {
	ts := startServer(t, Config{RelayPortMin: 43100, RelayPortMax: 43102})
	got508 := false
	ok := 0
	for i := range 5 {
		user, pass := ts.creds("user"+string(rune('a'+i)), time.Hour)
		c := ts.dialAs(t, user, pass)
		_, code := c.allocate()
		switch code {
		case 0:
			ok++
		case pionstun.CodeInsufficientCapacity:
			got508 = true
		default:
			t.Fatalf("allocation %d: got %v, want success or 508", i+1, code)
		}
	}
	if ok > 3 || !got508 {
		t.Errorf("got %d allocations and 508=%v from a range of 3 ports, want at most 3 and a 508", ok, got508)
	}
	// Still serving.
	c := dialRaw(t, "udp", ts.UDPAddr())
	if resp := c.request(pionstun.MethodBinding, false); errorCode(resp) != 0 {
		t.Errorf("binding after exhaustion: got %v", errorCode(resp))
	}
}

func TestRow15LifetimeClamped(t *testing.T) {
	tests := []struct {
		name      string
		max       time.Duration
		requested []pionstun.Setter
		want      uint32
	}{
		{name: "far above the default cap", requested: []pionstun.Setter{lifetimeAttr(86400)}, want: 3599},
		{name: "far above a 5m cap", max: 5 * time.Minute, requested: []pionstun.Setter{lifetimeAttr(86400)}, want: 300},
		{name: "no lifetime under a 5m cap", max: 5 * time.Minute, want: 300},
		{name: "within the cap", max: 5 * time.Minute, requested: []pionstun.Setter{lifetimeAttr(120)}, want: 120},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, Config{MaxLifetime: tt.max})
			user, pass := ts.creds("alice", time.Hour)
			c := ts.dialAs(t, user, pass)
			resp, code := c.allocate(tt.requested...)
			if code != 0 {
				t.Fatalf("allocate: got %v", code)
			}
			if got := lifetimeOf(t, resp); got != tt.want {
				t.Errorf("allocate: got LIFETIME %d, want %d", got, tt.want)
			}
			resp = c.request(pionstun.MethodRefresh, true, tt.requested...)
			if code := errorCode(resp); code != 0 {
				t.Fatalf("refresh: got %v", code)
			}
			if got := lifetimeOf(t, resp); got != tt.want {
				t.Errorf("refresh: got LIFETIME %d, want %d", got, tt.want)
			}
		})
	}
}

func TestRow16MalformedDropped(t *testing.T) {
	ts := startServer(t, Config{})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			addr := ts.UDPAddr()
			if network == "tcp" {
				addr = ts.TCPAddr()
			}
			for _, seed := range malformedSeeds() {
				if network == "tcp" && !wellFramed(seed.b) {
					continue // a broken stream frame closes the connection; covered below
				}
				c := dialRaw(t, network, addr)
				c.send(seed.b)
				// A binding request after it must get the first answer.
				resp := c.request(pionstun.MethodBinding, false)
				if errorCode(resp) != 0 || resp.Type != pionstun.BindingSuccess {
					t.Errorf("%s: got %v, want the binding response first", seed.name, resp.Type)
				}
			}
		})
	}
	t.Run("tcp garbage closes", func(t *testing.T) {
		c := dialRaw(t, "tcp", ts.TCPAddr())
		c.send([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
		if _, err := c.readRaw(5 * time.Second); err == nil {
			t.Error("got an answer to garbage, want the connection closed")
		}
	})
}

// wellFramed reports whether b is a STUN header whose length covers the
// rest of b exactly, so a stream stays in step after it.
func wellFramed(b []byte) bool {
	return len(b) >= 20 && b[0]&0xC0 == 0 && int(b[2])<<8|int(b[3]) == len(b)-20
}

func TestRow17Amplification(t *testing.T) {
	t.Run("small 401", func(t *testing.T) {
		ts := startServer(t, Config{})
		c := dialRaw(t, "udp", ts.UDPAddr())
		resp := c.request(pionstun.MethodAllocate, false, transportUDPAttr)
		if code := errorCode(resp); code != pionstun.CodeUnauthorized {
			t.Fatalf("got %v, want 401", code)
		}
		if resp.Contains(pionstun.AttrSoftware) {
			t.Error("401 carries SOFTWARE")
		}
		if len(resp.Raw) > 100 {
			t.Errorf("got a %d-byte 401, want at most 100", len(resp.Raw))
		}
	})
	t.Run("binding flood rate-limited per source", func(t *testing.T) {
		ts := startServer(t, Config{SourceRate: 1, SourceBurst: 5})
		c := dialRaw(t, "udp", ts.UDPAddr())
		for range 50 {
			req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest)
			c.send(req.Raw)
		}
		waitFor(t, "the flood to be counted", 5*time.Second, func() bool {
			return ts.metric(t, "parley_turn_stun_requests_total", map[string]string{"result": "rate_limited"})+
				ts.metric(t, "parley_turn_stun_requests_total", map[string]string{"result": "answered"}) == 50
		})
		answers := 0
		for c.read(200*time.Millisecond) != nil {
			answers++
		}
		if answers > 6 {
			t.Errorf("got %d answers to a flood of 50, want at most the burst of 5 (+1 refill)", answers)
		}
		// Unauthenticated Allocates share the limit.
		req := pionstun.MustBuild(pionstun.TransactionID, pionstun.NewType(pionstun.MethodAllocate, pionstun.ClassRequest), transportUDPAttr)
		c.send(req.Raw)
		if m := c.read(200 * time.Millisecond); m != nil {
			t.Errorf("got %v to an allocate past the limit, want nothing", m.Type)
		}
		// Another source is not affected.
		other := dialRawFrom(t, "127.0.0.2", ts.UDPAddr())
		if resp := other.request(pionstun.MethodBinding, false); errorCode(resp) != 0 {
			t.Errorf("other source: got %v", errorCode(resp))
		}
	})
}

func TestRow18OldTLSRefused(t *testing.T) {
	ts := startServer(t, Config{})
	tests := []struct {
		name    string
		version uint16
		wantErr bool
	}{
		{name: "tls 1.0", version: tls.VersionTLS10, wantErr: true},
		{name: "tls 1.1", version: tls.VersionTLS11, wantErr: true},
		{name: "tls 1.2", version: tls.VersionTLS12},
		{name: "tls 1.3", version: tls.VersionTLS13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", ts.TLSAddr().String(), &tls.Config{
				MinVersion: tt.version, MaxVersion: tt.version, ServerName: "127.0.0.1",
			})
			if err == nil {
				defer conn.Close()
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("got %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestRow19NoSecretsInLogsOrLabels(t *testing.T) {
	ts := startServer(t, Config{})
	user, pass := ts.creds("very-private-user", time.Hour)
	c := ts.dialAs(t, user, pass)
	if _, code := c.allocate(); code != 0 {
		t.Fatalf("allocate: %v", code)
	}
	bad := dialRaw(t, "udp", ts.UDPAddr())
	bad.username, bad.password = user, "wrong"
	if _, code := bad.allocate(); code != pionstun.CodeUnauthorized {
		t.Fatalf("got %v, want 401", code)
	}
	c.request(pionstun.MethodCreatePermission, true, peerAttr(net.ParseIP("10.1.2.3"), 1))

	secrets := []string{testSecret, user, "very-private-user", pass}
	logs := ts.logs.String()
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var labels strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels.WriteString(lp.GetValue() + "\n")
			}
		}
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("log contains %q", s)
		}
		if strings.Contains(labels.String(), s) {
			t.Errorf("metric labels contain %q", s)
		}
	}
	if logs == "" {
		t.Error("got no logs at all; the test proves nothing")
	}
}

// listenOutside opens a UDP socket on 127.0.0.1 whose ephemeral port is not
// in [lo, hi] (the kernel's ephemeral range overlaps relay ranges).
func listenOutside(t *testing.T, lo, hi int) net.PacketConn {
	t.Helper()
	var held []net.PacketConn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 100 {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if p := c.LocalAddr().(*net.UDPAddr).Port; p < lo || p > hi {
			t.Cleanup(func() { c.Close() })
			return c
		}
		held = append(held, c)
	}
	t.Fatalf("no ephemeral port outside %d-%d in 100 tries", lo, hi)
	return nil
}
