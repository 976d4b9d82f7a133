package stun

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	pionstun "github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// startServer serves a Server on a socket of 127.0.0.1 until the test ends.
func startServer(t *testing.T, cfg Config) (*Server, *net.UDPAddr, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(conn) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("serve: got %v, want %v", err, ErrServerClosed)
		}
	})
	return s, conn.LocalAddr().(*net.UDPAddr), reg
}

func dial(t *testing.T, local string, addr *net.UDPAddr) *net.UDPConn {
	t.Helper()
	var laddr *net.UDPAddr
	if local != "" {
		laddr = &net.UDPAddr{IP: net.ParseIP(local)}
	}
	c, err := net.DialUDP("udp4", laddr, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// read returns the next message, or nil after timeout.
func read(t *testing.T, c *net.UDPConn, timeout time.Duration) *pionstun.Message {
	t.Helper()
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	m := &pionstun.Message{Raw: buf[:n]}
	if err := m.Decode(); err != nil {
		t.Fatalf("server sent malformed STUN: %v", err)
	}
	return m
}

func TestBinding(t *testing.T) {
	_, addr, reg := startServer(t, Config{})
	c := dial(t, "", addr)
	req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest, pionstun.Fingerprint)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	resp := read(t, c, 5*time.Second)
	if resp == nil {
		t.Fatal("no response")
	}
	if resp.Type != pionstun.BindingSuccess || resp.TransactionID != req.TransactionID {
		t.Fatalf("got %v %x, want a binding success for %x", resp.Type, resp.TransactionID, req.TransactionID)
	}
	var xor pionstun.XORMappedAddress
	if err := xor.GetFrom(resp); err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.UDPAddr)
	if !xor.IP.Equal(local.IP) || xor.Port != local.Port {
		t.Errorf("got mapped address %v, want %v", xor, local)
	}
	if err := pionstun.Fingerprint.Check(resp); err != nil {
		t.Errorf("fingerprint: %v", err)
	}
	if resp.Contains(pionstun.AttrSoftware) {
		t.Error("response carries SOFTWARE")
	}
	if len(resp.Raw) > 2*len(req.Raw)+8 {
		t.Errorf("got a %d-byte response to a %d-byte request", len(resp.Raw), len(req.Raw))
	}
	// The server counts the answer after it has sent it: the client may
	// read it first.
	deadline := time.Now().Add(2 * time.Second)
	for requests(t, reg, resultAnswered) != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := requests(t, reg, resultAnswered); got != 1 {
		t.Errorf("got %v answered, want 1", got)
	}
}

// requests returns parley_stun_requests_total for a result.
func requests(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestFloodRateLimitedPerSource(t *testing.T) {
	_, addr, reg := startServer(t, Config{Rate: 1, Burst: 5})
	c := dial(t, "127.0.0.1", addr)
	for range 100 {
		req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest)
		if _, err := c.Write(req.Raw); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for requests(t, reg, resultAnswered)+requests(t, reg, resultRateLimited) < 100 {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the flood to be counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	answers := 0
	for read(t, c, 200*time.Millisecond) != nil {
		answers++
	}
	if answers > 6 {
		t.Errorf("got %d answers to a flood of 100, want at most the burst of 5 (+1 refill)", answers)
	}
	// Another source still gets answers.
	other := dial(t, "127.0.0.2", addr)
	req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest)
	if _, err := other.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	if read(t, other, 5*time.Second) == nil {
		t.Error("another source got no answer")
	}
}

func TestMalformedDropped(t *testing.T) {
	_, addr, _ := startServer(t, Config{})
	for _, seed := range malformedSeeds() {
		t.Run(seed.name, func(t *testing.T) {
			c := dial(t, "", addr)
			if _, err := c.Write(seed.b); err != nil {
				t.Fatal(err)
			}
			req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest)
			if _, err := c.Write(req.Raw); err != nil {
				t.Fatal(err)
			}
			resp := read(t, c, 5*time.Second)
			if resp == nil || resp.TransactionID != req.TransactionID {
				t.Errorf("got %v, want the answer to the valid request first", resp)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{name: "negative rate", cfg: Config{Rate: -1}, field: "Rate"},
		{name: "negative burst", cfg: Config{Burst: -1}, field: "Burst"},
		{name: "negative sources", cfg: Config{MaxSources: -1}, field: "MaxSources"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewServer(tt.cfg)
			if err == nil || !errors.Is(err, errConfig) {
				t.Fatalf("got %v, want a config error", err)
			}
			if want := "stun: invalid config: " + tt.field; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
				t.Errorf("got %q, want it to start with %q", err, want)
			}
		})
	}
}

func TestServeAfterClose(t *testing.T) {
	s, err := NewServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := s.Serve(conn); !errors.Is(err, ErrServerClosed) {
		t.Errorf("got %v, want %v", err, ErrServerClosed)
	}
}

func TestRespondAllocatesNothing(t *testing.T) {
	var bd binder
	req := pionstun.MustBuild(pionstun.TransactionID, pionstun.BindingRequest).Raw
	src := netAddrPort("198.51.100.7:4242")
	bd.parse(req)
	bd.respond(src)
	allocs := testing.AllocsPerRun(100, func() {
		if !bd.parse(req) || bd.respond(src) == nil {
			t.Fatal("no answer")
		}
	})
	if allocs > 1 {
		t.Errorf("got %v allocations per request, want at most 1", allocs)
	}
}

type malformedSeed struct {
	name string
	b    []byte
}

func malformedSeeds() []malformedSeed {
	binding := pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{1}), pionstun.BindingRequest).Raw
	withAttr := pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{2}), pionstun.BindingRequest, pionstun.NewSoftware("x")).Raw
	badCookie := append([]byte(nil), binding...)
	badCookie[4] ^= 0xff
	tlv := append([]byte(nil), withAttr...)
	binary.BigEndian.PutUint16(tlv[22:24], 300)
	long := append([]byte(nil), binding...)
	binary.BigEndian.PutUint16(long[2:4], 8)
	return []malformedSeed{
		{name: "empty", b: []byte{}},
		{name: "short", b: binding[:10]},
		{name: "bad cookie", b: badCookie},
		{name: "tlv past payload", b: tlv},
		{name: "length past datagram", b: long},
		{name: "success response", b: pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{3}), pionstun.BindingSuccess).Raw},
		{name: "indication", b: pionstun.MustBuild(pionstun.NewTransactionIDSetter([12]byte{4}), pionstun.NewType(pionstun.MethodBinding, pionstun.ClassIndication)).Raw},
		{name: "channel data", b: []byte{0x40, 0, 0, 4, 1, 2, 3, 4}},
	}
}
