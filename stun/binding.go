package stun

import (
	"encoding/binary"
	"net/netip"

	pionstun "github.com/pion/stun/v3"
)

// binder builds binding responses. It is owned by one goroutine and reuses
// its messages, so answering allocates nothing.
type binder struct {
	req  pionstun.Message
	resp pionstun.Message
}

// isBindingRequest checks the header of b: a well-formed STUN binding
// request whose length matches the datagram exactly.
func isBindingRequest(b []byte) bool {
	if len(b) < 20 || !pionstun.IsMessage(b) {
		return false
	}
	l := int(binary.BigEndian.Uint16(b[2:4]))
	if l%4 != 0 || 20+l != len(b) {
		return false
	}
	return binary.BigEndian.Uint16(b[0:2]) == pionstun.BindingRequest.Value()
}

// parse reports whether datagram b is a well-formed binding request, and
// keeps it for respond.
func (bd *binder) parse(b []byte) bool {
	if !isBindingRequest(b) {
		return false
	}
	bd.req.Reset()
	bd.req.Raw = append(bd.req.Raw[:0], b...)
	return bd.req.Decode() == nil // attribute lengths past the payload fail
}

// respond returns the response to the request parse accepted, as seen from
// src. It is valid until the next call.
func (bd *binder) respond(src netip.AddrPort) []byte {
	bd.resp.Reset()
	bd.resp.Type = pionstun.BindingSuccess
	bd.resp.TransactionID = bd.req.TransactionID
	bd.resp.WriteHeader()
	ip := src.Addr().Unmap()
	xor := pionstun.XORMappedAddress{IP: ip.AsSlice(), Port: int(src.Port())}
	if err := xor.AddTo(&bd.resp); err != nil {
		return nil
	}
	if err := pionstun.Fingerprint.AddTo(&bd.resp); err != nil {
		return nil
	}
	return bd.resp.Raw
}
