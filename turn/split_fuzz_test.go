package turn

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// FuzzSniffSTUN checks the first-bytes test that sends a TLS connection with
// no ALPN to TURN or to HTTP: whatever a client sends, sniffSTUN says STUN
// exactly when the bytes begin with a STUN header's first eight bytes, and
// what it read is what the connection replays, in full, before the rest.
func FuzzSniffSTUN(f *testing.F) {
	allocate := []byte{0x00, 0x03, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	f.Add(allocate)
	f.Add([]byte("GET /v1/ws HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	f.Add([]byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4}) // ChannelData
	f.Add([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4})
	f.Add([]byte{0x00})
	f.Add([]byte{0x16, 0x03, 0x01, 0x02, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		head, stun, err := sniffSTUN(r)
		want := len(in) >= 8 && in[0]&0xC0 == 0 && binary.BigEndian.Uint32(in[4:8]) == stunMagicCookie
		if stun != want {
			t.Fatalf("sniffSTUN(%x) = stun %v, want %v", in, stun, want)
		}
		switch {
		case len(in) == 0:
			if err == nil {
				t.Fatalf("sniffSTUN of nothing: no error")
			}
			return
		case in[0]&0xC0 == 0 && len(in) < 8:
			if err == nil {
				t.Fatalf("sniffSTUN(%x): a short STUN-like start gave no error", in)
			}
			return
		case err != nil:
			t.Fatalf("sniffSTUN(%x): %v", in, err)
		}
		rest, _ := io.ReadAll(r)
		if got := append(append([]byte(nil), head...), rest...); !bytes.Equal(got, in) {
			t.Fatalf("replayed %x, want %x", got, in)
		}
	})
}
