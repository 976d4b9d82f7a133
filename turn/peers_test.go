package turn

import (
	"net/netip"
	"testing"
)

func TestPeerPolicy(t *testing.T) {
	tests := []struct {
		row   string
		name  string
		addr  string
		allow string // AllowPeers
		want  bool
	}{
		{row: "4", name: "loopback", addr: "127.0.0.1", want: false},
		{row: "4", name: "loopback high", addr: "127.255.255.254", want: false},
		{row: "4", name: "ipv6 loopback", addr: "::1", want: false},
		{row: "5", name: "zero", addr: "0.0.0.0", want: false},
		{row: "5", name: "zero net", addr: "0.1.2.3", want: false},
		{row: "5", name: "ipv6 unspecified", addr: "::", want: false},
		{row: "6", name: "link-local", addr: "169.254.1.1", want: false},
		{row: "6", name: "metadata", addr: "169.254.169.254", want: false},
		{row: "6", name: "ipv6 link-local", addr: "fe80::1", want: false},
		{row: "6", name: "ipv6 link-local with zone", addr: "fe80::1%eth0", want: false},
		{row: "7", name: "10/8", addr: "10.0.0.1", want: false},
		{row: "7", name: "172.16/12", addr: "172.31.255.1", want: false},
		{row: "7", name: "192.168/16", addr: "192.168.1.1", want: false},
		{row: "7", name: "cgnat", addr: "100.64.0.1", want: false},
		{row: "7", name: "ula", addr: "fd12:3456::1", want: false},
		{row: "7", name: "aws ipv6 metadata", addr: "fd00:ec2::254", want: false},
		{row: "7", name: "site-local", addr: "fec0::1", want: false},
		{row: "8", name: "192.0.0/24", addr: "192.0.0.8", want: false},
		{row: "8", name: "test-net-1", addr: "192.0.2.1", want: false},
		{row: "8", name: "benchmarking", addr: "198.19.0.1", want: false},
		{row: "8", name: "test-net-2", addr: "198.51.100.1", want: false},
		{row: "8", name: "test-net-3", addr: "203.0.113.1", want: false},
		{row: "8", name: "reserved", addr: "240.0.0.1", want: false},
		{row: "8", name: "broadcast", addr: "255.255.255.255", want: false},
		{row: "9", name: "multicast", addr: "224.0.0.1", want: false},
		{row: "9", name: "multicast high", addr: "239.255.255.250", want: false},
		{row: "9", name: "ipv6 multicast", addr: "ff02::1", want: false},
		{row: "10", name: "mapped loopback", addr: "::ffff:127.0.0.1", want: false},
		{row: "10", name: "mapped metadata", addr: "::ffff:169.254.169.254", want: false},
		{row: "10", name: "nat64 metadata", addr: "64:ff9b::a9fe:a9fe", want: false},
		{row: "10", name: "nat64 loopback", addr: "64:ff9b::7f00:1", want: false},
		{row: "10", name: "local nat64", addr: "64:ff9b:1::808:808", want: false},
		{row: "10", name: "6to4 metadata", addr: "2002:a9fe:a9fe::", want: false},
		{row: "10", name: "6to4 private", addr: "2002:a00:1::1", want: false},
		{row: "10", name: "teredo private server", addr: "2001:0:a00:1::1", want: false},
		{row: "10", name: "ipv4-compatible", addr: "::808:808", want: false},
		{row: "-", name: "public ipv4", addr: "8.8.8.8", want: true},
		{row: "-", name: "public ipv6", addr: "2606:4700::1111", want: true},
		{row: "-", name: "mapped public", addr: "::ffff:8.8.8.8", want: true},
		{row: "-", name: "nat64 public", addr: "64:ff9b::808:808", want: true},
		{row: "-", name: "6to4 public", addr: "2002:808:808::1", want: true},
		{row: "11", name: "allowed loopback", addr: "127.0.0.1", allow: "127.0.0.0/8", want: true},
		{row: "11", name: "allowed mapped loopback", addr: "::ffff:127.0.0.1", allow: "127.0.0.0/8", want: true},
		{row: "11", name: "allowed ipv6 loopback", addr: "::1", allow: "::1/128", want: true},
		{row: "11", name: "allowed private", addr: "10.0.0.1", allow: "10.0.0.0/8", want: true},
		{row: "11", name: "allowed single host", addr: "10.1.2.3", allow: "10.1.2.3", want: true},
		{row: "11", name: "allowed other host", addr: "10.1.2.4", allow: "10.1.2.3", want: false},
		{row: "11", name: "allowed metadata by itself", addr: "169.254.169.254", allow: "169.254.169.254/32", want: true},
		{row: "11", name: "deny wins: link-local allowed, metadata not", addr: "169.254.169.254", allow: "169.254.0.0/16", want: false},
		{row: "11", name: "link-local allowed", addr: "169.254.1.1", allow: "169.254.0.0/16", want: true},
		{row: "11", name: "deny wins: allow everything", addr: "10.0.0.1", allow: "0.0.0.0/0", want: false},
		{row: "11", name: "deny wins: allow every ipv6", addr: "::1", allow: "::/0", want: false},
		{row: "11", name: "deny wins: broader allow", addr: "10.0.0.1", allow: "8.0.0.0/6", want: false},
		{row: "11", name: "nat64 loopback with loopback allowed", addr: "64:ff9b::7f00:1", allow: "127.0.0.0/8", want: true},
		{row: "12", name: "own address", addr: "192.0.2.77", want: true},
		{row: "12", name: "own address mapped", addr: "::ffff:192.0.2.77", want: true},
	}
	for _, tt := range tests {
		t.Run("row "+tt.row+"/"+tt.name, func(t *testing.T) {
			allow, err := ParseAllowPeers(tt.allow)
			if err != nil {
				t.Fatal(err)
			}
			p := &peerPolicy{allow: allow, self: []netip.Addr{netip.MustParseAddr("192.0.2.77")}}
			if got := p.allowed(netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("allowed(%s) with allow %q: got %v, want %v", tt.addr, tt.allow, got, tt.want)
			}
		})
	}
}

func TestParseAllowPeers(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr bool
	}{
		{name: "empty", in: ""},
		{name: "dev default", in: "127.0.0.0/8,::1/128", want: []string{"127.0.0.0/8", "::1/128"}},
		{name: "spaces and empties", in: " 10.0.0.0/8 , ,192.168.0.0/16", want: []string{"10.0.0.0/8", "192.168.0.0/16"}},
		{name: "host bits masked", in: "10.1.2.3/8", want: []string{"10.0.0.0/8"}},
		{name: "bare address", in: "10.1.2.3", want: []string{"10.1.2.3/32"}},
		{name: "mapped prefix", in: "::ffff:10.0.0.0/104", want: []string{"10.0.0.0/8"}},
		{name: "bad length", in: "10.0.0.0/33", wantErr: true},
		{name: "garbage", in: "10.0.0.0/8,nope", wantErr: true},
		{name: "bad address", in: "300.0.0.1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAllowPeers(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i].String() != tt.want[i] {
					t.Errorf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}
