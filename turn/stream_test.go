package turn

import (
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
)

func TestStreamFraming(t *testing.T) {
	ts := startServer(t, Config{})
	req := func() *pionstun.Message {
		return pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest, pionstun.Fingerprint)
	}
	t.Run("a message split into single bytes", func(t *testing.T) {
		c := dialRaw(t, "tcp", ts.TCPAddr())
		m := req()
		for _, b := range m.Raw {
			c.send([]byte{b})
		}
		resp := c.read(5 * time.Second)
		if resp == nil || resp.TransactionID != m.TransactionID {
			t.Fatalf("got %v, want the answer to the split request", resp)
		}
	})
	t.Run("two messages in one write", func(t *testing.T) {
		c := dialRaw(t, "tcp", ts.TCPAddr())
		a, b := req(), req()
		c.send(append(append([]byte{}, a.Raw...), b.Raw...))
		for _, m := range []*pionstun.Message{a, b} {
			resp := c.read(5 * time.Second)
			if resp == nil || resp.TransactionID != m.TransactionID {
				t.Fatalf("got %v, want the answer to %x", resp, m.TransactionID)
			}
		}
	})
	t.Run("oversized frame closes", func(t *testing.T) {
		c := dialRaw(t, "tcp", ts.TCPAddr())
		hdr := req().Raw[:20]
		hdr[2], hdr[3] = 0xff, 0xfc // 65532 bytes announced
		c.send(hdr)
		if _, err := c.readRaw(5 * time.Second); err == nil {
			t.Fatal("got an answer, want the connection closed")
		}
	})
}
