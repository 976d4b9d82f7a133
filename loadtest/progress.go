package loadtest

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progress shows how a run goes while it goes: on a terminal, one line
// redrawn ten times a second with a bar; elsewhere (a log, a pipe), a plain
// line a second. A run goes through phases (connecting, running, ...), one
// at a time.
type progress struct {
	w   io.Writer
	bar bool

	mu     sync.Mutex
	phase  string
	total  int64
	done   func() int64
	detail func() string
	start  time.Time
	stop   chan struct{}
	ended  chan struct{}
}

// newProgress returns a progress that writes to w (nil discards), drawing a
// bar when bar is set.
func newProgress(w io.Writer, bar bool) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, bar: bar}
}

// begin starts a phase named name, ending the one before. done, when not
// nil, tells how far the phase is out of total (a bar when total > 0);
// detail, when not nil, adds a few words (counts, rates) to each line.
func (p *progress) begin(name string, total int64, done func() int64, detail func() string) {
	p.end()
	p.mu.Lock()
	p.phase, p.total, p.done, p.detail, p.start = name, total, done, detail, time.Now()
	p.stop, p.ended = make(chan struct{}), make(chan struct{})
	stop, ended := p.stop, p.ended
	p.mu.Unlock()
	every := time.Second
	if p.bar {
		every = 100 * time.Millisecond
	}
	go func() {
		defer close(ended)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				p.show(false)
			}
		}
	}()
}

// end finishes the current phase, if any, with a last line that stays.
func (p *progress) end() {
	p.mu.Lock()
	stop, ended := p.stop, p.ended
	p.stop, p.ended = nil, nil
	p.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-ended
	p.show(true)
}

// show writes the phase's state: on a terminal it redraws the line, and the
// last one ends with a newline.
func (p *progress) show(last bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	if p.bar {
		b.WriteString("\r\x1b[K")
	}
	elapsed := time.Since(p.start).Truncate(100 * time.Millisecond)
	if !p.bar || last {
		elapsed = elapsed.Truncate(time.Second)
	}
	fmt.Fprintf(&b, "%-10s %6s", p.phase, elapsed)
	if p.done != nil {
		n := p.done()
		if p.total > 0 {
			if p.bar {
				const width = 30
				filled := int(min(width, max(0, n*width/p.total)))
				b.WriteString("  [" + strings.Repeat("=", filled) + strings.Repeat(" ", width-filled) + "]")
			}
			fmt.Fprintf(&b, " %d/%d", n, p.total)
		} else {
			fmt.Fprintf(&b, " %d", n)
		}
	}
	if p.detail != nil {
		if d := p.detail(); d != "" {
			b.WriteString("  " + d)
		}
	}
	if !p.bar || last {
		b.WriteByte('\n')
	}
	io.WriteString(p.w, b.String())
}
