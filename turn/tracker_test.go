package turn

import (
	"testing"
	"time"
)

func TestTracked(t *testing.T) {
	tests := []struct {
		name string
		run  func(x *tracked)
	}{
		{name: "closed while idle", run: func(x *tracked) { x.markClosed() }},
		{name: "closed while reading", run: func(x *tracked) {
			x.enter()
			x.markClosed()
			x.exit()
		}},
		{name: "read after close", run: func(x *tracked) {
			x.markClosed()
			x.enter()
			x.exit()
			x.markClosed()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker()
			var x tracked
			x.init(tr)
			if tr.wait(time.Millisecond) {
				t.Fatal("got idle before close, want busy")
			}
			tt.run(&x)
			if !tr.wait(time.Second) {
				t.Fatal("got busy after close, want idle")
			}
			if tr.n != 0 {
				t.Errorf("got count %d, want 0", tr.n)
			}
		})
	}
}
