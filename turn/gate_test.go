package turn

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"

	"github.com/parley-rt/parley/stun/srclimit"
)

type malformedSeed struct {
	name string
	b    []byte
}

// malformedSeeds are frames the gate must drop without a word.
func malformedSeeds() []malformedSeed {
	binding := pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{1, 2, 3}), pionstun.BindingRequest).Raw
	withAttr := pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{4}), pionstun.BindingRequest,
		pionstun.NewSoftware("x")).Raw

	badCookie := append([]byte(nil), binding...)
	badCookie[4] ^= 0xff

	tlvPastPayload := append([]byte(nil), withAttr...)
	binary.BigEndian.PutUint16(tlvPastPayload[22:24], 200) // attribute length past the end

	lengthTooLong := append([]byte(nil), binding...)
	binary.BigEndian.PutUint16(lengthTooLong[2:4], 8) // header says 8 bytes follow; none do

	lengthNotMultiple := append(append([]byte(nil), withAttr...), 0)
	binary.BigEndian.PutUint16(lengthNotMultiple[2:4], uint16(len(lengthNotMultiple)-20))

	response := pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{5}), pionstun.BindingSuccess).Raw
	unknownMethod := pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{6}),
		pionstun.NewType(pionstun.Method(0x0ff), pionstun.ClassRequest)).Raw
	dataIndication := pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{7}),
		pionstun.NewType(pionstun.MethodData, pionstun.ClassIndication)).Raw

	return []malformedSeed{
		{name: "empty", b: []byte{}},
		{name: "one byte", b: []byte{0}},
		{name: "short header", b: binding[:12]},
		{name: "bad cookie", b: badCookie},
		{name: "tlv past payload", b: tlvPastPayload},
		{name: "length past datagram", b: lengthTooLong},
		{name: "length not a multiple of 4", b: lengthNotMultiple},
		{name: "response from a client", b: response},
		{name: "unknown method", b: unknownMethod},
		{name: "data indication from a client", b: dataIndication},
		{name: "top bits set", b: []byte{0xC0, 0, 0, 0, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	}
}

func fuzzGate() *gate {
	return &gate{
		realm:       DefaultRealm,
		secret:      testSecret,
		lifetimeMax: 3599,
		policy:      &peerPolicy{self: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		limiter:     srclimit.New(1e9, 1e9, 16),
		m:           newMetrics(),
		now:         time.Now,
	}
}

func TestGateDropsMalformed(t *testing.T) {
	g := fuzzGate()
	var m pionstun.Message
	for _, seed := range malformedSeeds() {
		t.Run(seed.name, func(t *testing.T) {
			buf := make([]byte, 1600)
			n := copy(buf, seed.b)
			replied := false
			v, _ := g.inspect(&m, buf, n, netip.MustParseAddr("198.51.100.1"), func([]byte) { replied = true })
			if v != drop || replied {
				t.Errorf("got verdict %v replied %v, want a silent drop", v, replied)
			}
		})
	}
}

// FuzzGate feeds arbitrary frames to the gate: it must not panic, must
// answer only well-formed requests, and must never answer with more than a
// small response.
func FuzzGate(f *testing.F) {
	for _, seed := range malformedSeeds() {
		f.Add(seed.b)
	}
	f.Add(pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest).Raw)
	f.Add(pionstun.MustBuild(pionstun.TransactionID, pionstun.NewType(pionstun.MethodAllocate, pionstun.ClassRequest),
		pionstun.NewUsername("1:a"), pionstun.NewRealm("parley"), pionstun.NewNonce("n"),
		pionstun.NewLongTermIntegrity("1:a", "parley", "p")).Raw)
	f.Add([]byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4})
	g := fuzzGate()
	var m pionstun.Message
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1500 {
			return
		}
		buf := make([]byte, 1600)
		n := copy(buf, b)
		var reply []byte
		v, out := g.inspect(&m, buf, n, netip.MustParseAddr("198.51.100.1"), func(r []byte) { reply = r })
		if out > len(buf) {
			t.Fatalf("gate returned %d bytes from a %d-byte buffer", out, len(buf))
		}
		if reply != nil {
			if !wellFormed(b) {
				t.Fatalf("answered a malformed frame %x", b)
			}
			if len(reply) > 200 {
				t.Fatalf("answered with %d bytes", len(reply))
			}
		}
		if v != drop && !(n >= 4 && b[0]&0xC0 == 0x40) && !wellFormed(b) {
			t.Fatalf("passed a malformed frame %x", b)
		}
	})
}
