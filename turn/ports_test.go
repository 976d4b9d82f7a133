package turn

import (
	"errors"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		lo, hi  int
		wantErr bool
	}{
		{name: "default", in: "49152-65535", lo: 49152, hi: 65535},
		{name: "spaces", in: " 40000 - 40010 ", lo: 40000, hi: 40010},
		{name: "single", in: "50000", lo: 50000, hi: 50000},
		{name: "reversed", in: "50010-50000", wantErr: true},
		{name: "zero", in: "0-10", wantErr: true},
		{name: "too big", in: "1-70000", wantErr: true},
		{name: "words", in: "low-high", wantErr: true},
		{name: "empty", in: "", wantErr: true},
		{name: "open", in: "5000-", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo, hi, err := ParsePortRange(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (lo != tt.lo || hi != tt.hi) {
				t.Errorf("got %d-%d, want %d-%d", lo, hi, tt.lo, tt.hi)
			}
		})
	}
}

func TestPortSetExhausts(t *testing.T) {
	p := newPortSet(100, 102)
	got := map[int]bool{}
	for range 3 {
		port, err := p.bind(func(int) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		got[port] = true
	}
	if len(got) != 3 {
		t.Fatalf("got ports %v, want 3 distinct", got)
	}
	if _, err := p.bind(func(int) error { return nil }); !errors.Is(err, errPortsExhausted) {
		t.Fatalf("got %v, want %v", err, errPortsExhausted)
	}
	p.release(101)
	if port, err := p.bind(func(int) error { return nil }); err != nil || port != 101 {
		t.Fatalf("got %d %v, want 101 after release", port, err)
	}
}

func TestPortSetSkipsBusyPorts(t *testing.T) {
	p := newPortSet(100, 199)
	busy := errors.New("address in use")
	port, err := p.bind(func(port int) error {
		if port != 150 {
			return busy
		}
		return nil
	})
	if err == nil && port != 150 {
		t.Fatalf("got %d, want 150", port)
	}
	// Ports that failed to bind are not held.
	if p.inUse > 1 {
		t.Errorf("got %d ports held, want at most 1", p.inUse)
	}
}
