package turn

import (
	"net/netip"
	"testing"
)

func TestRelaysRefuseOwnAddressOutsideRange(t *testing.T) {
	r := &relays{ports: newPortSet(50000, 50010), restricted: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	tests := []struct {
		name string
		ap   string
		want bool
	}{
		{name: "relay port", ap: "127.0.0.1:50005", want: false},
		{name: "other port", ap: "127.0.0.1:22", want: true},
		{name: "mapped other port", ap: "[::ffff:127.0.0.1]:22", want: true},
		{name: "other address", ap: "8.8.8.8:22", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.refused(netip.MustParseAddrPort(tt.ap)); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
