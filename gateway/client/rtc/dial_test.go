package rtc

import "testing"

func TestTURNSServer(t *testing.T) {
	tests := []struct {
		url  string
		host string
		port int
		ok   bool
	}{
		{"turns:turn.example.com:443?transport=tcp", "turn.example.com", 443, true},
		{"turns:203.0.113.1:443", "203.0.113.1", 443, true},
		{"turns:turn.example.com", "turn.example.com", 5349, true},
		{"turns:[2001:db8::1]:443?transport=tcp", "2001:db8::1", 443, true},
		{"turn:turn.example.com:443?transport=tcp", "", 0, false},
		{"stun:turn.example.com:3478", "", 0, false},
		{"turns::443", "", 0, false},
		{"turns:host:port", "", 0, false},
	}
	for _, tt := range tests {
		host, port, ok := turnsServer(tt.url)
		if host != tt.host || port != tt.port || ok != tt.ok {
			t.Errorf("turnsServer(%q) = %q, %d, %v; want %q, %d, %v", tt.url, host, port, ok, tt.host, tt.port, tt.ok)
		}
	}
}

func TestSameAddr(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"203.0.113.1:443", "203.0.113.1:443", true},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", true},
		{"[2001:db8::1]:443", "[2001:db8:0::1]:443", true},
		{"[::ffff:203.0.113.1]:443", "203.0.113.1:443", true},
		{"203.0.113.1:443", "203.0.113.1:5349", false},
		{"turn.example.com:443", "turn.example.com:443", true},
		{"turn.example.com:443", "203.0.113.1:443", false},
	}
	for _, tt := range tests {
		if got := sameAddr(tt.a, tt.b); got != tt.want {
			t.Errorf("sameAddr(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
