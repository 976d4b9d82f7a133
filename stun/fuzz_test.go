package stun

import (
	"net/netip"
	"testing"

	pionstun "github.com/pion/stun/v3"
)

func netAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// FuzzBinding feeds arbitrary datagrams to the binding handler: it must not
// panic, must answer only well-formed binding requests, and only with the
// same transaction ID and a small response.
func FuzzBinding(f *testing.F) {
	for _, seed := range malformedSeeds() {
		f.Add(seed.b)
	}
	f.Add(pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest).Raw)
	f.Add(pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest, pionstun.Fingerprint).Raw)
	var bd binder
	src := netAddrPort("[2001:db8::1]:3478")
	f.Fuzz(func(t *testing.T, b []byte) {
		if !bd.parse(b) {
			return
		}
		if !isBindingRequest(b) {
			t.Fatalf("accepted %x", b)
		}
		resp := bd.respond(src)
		if len(resp) > 64 {
			t.Fatalf("answered with %d bytes", len(resp))
		}
		var m pionstun.Message
		m.Raw = resp
		if err := m.Decode(); err != nil {
			t.Fatalf("answered with malformed STUN: %v", err)
		}
		if string(m.TransactionID[:]) != string(b[8:20]) {
			t.Fatal("answered with another transaction ID")
		}
	})
}
