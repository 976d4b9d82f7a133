package turn

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestServerConfigErrors(t *testing.T) {
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	unspecified, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer unspecified.Close()
	conns := []net.PacketConn{udp}
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{name: "no secret", cfg: Config{UDPConns: conns}, field: "Secret"},
		{name: "no sockets", cfg: Config{Secret: "s"}, field: "UDPConns"},
		{name: "tls without config", cfg: Config{Secret: "s", UDPConns: conns, TLSListener: &net.TCPListener{}}, field: "TLSConfig"},
		{name: "reversed ports", cfg: Config{Secret: "s", UDPConns: conns, RelayPortMin: 50000, RelayPortMax: 40000}, field: "RelayPortMin"},
		{name: "port too big", cfg: Config{Secret: "s", UDPConns: conns, RelayPortMin: 50000, RelayPortMax: 70000}, field: "RelayPortMax"},
		{name: "negative quota", cfg: Config{Secret: "s", UDPConns: conns, UserQuota: -1}, field: "UserQuota"},
		{name: "short lifetime", cfg: Config{Secret: "s", UDPConns: conns, MaxLifetime: time.Second}, field: "MaxLifetime"},
		{name: "unspecified public ip", cfg: Config{Secret: "s", UDPConns: conns, PublicIP: netip.IPv4Unspecified()}, field: "PublicIP"},
		{name: "listener on 0.0.0.0 without public ip", cfg: Config{Secret: "s", UDPConns: []net.PacketConn{unspecified}}, field: "PublicIP"},
		{name: "old tls max", cfg: Config{Secret: "s", UDPConns: conns, TLSConfig: &tls.Config{MaxVersion: tls.VersionTLS11}}, field: "TLSConfig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewServer(tt.cfg)
			if err == nil {
				t.Fatal("got no error")
			}
			if !strings.HasPrefix(err.Error(), "turn: ") || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("got %q, want a turn: error naming %s", err, tt.field)
			}
		})
	}
}
