package turn

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
)

// ParsePortRange parses a relay port range such as "49152-65535" (the
// --turn-ports flag). A single port "50000" is a range of one.
func ParsePortRange(s string) (lo, hi int, err error) {
	a, b, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		b = a
	}
	lo, err = parsePort(a)
	if err != nil {
		return 0, 0, fmt.Errorf("turn: port range %q: %w", s, err)
	}
	hi, err = parsePort(b)
	if err != nil {
		return 0, 0, fmt.Errorf("turn: port range %q: %w", s, err)
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("turn: port range %q: %d is above %d", s, lo, hi)
	}
	return lo, hi, nil
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("%d is not between 1 and 65535", p)
	}
	return p, nil
}

var errPortsExhausted = errors.New("turn: relay port range exhausted")

// maxBindTries bounds how many free-looking ports one allocation tries to
// bind before giving up (another process may hold ports of the range).
const maxBindTries = 64

// portSet tracks which relay ports this server holds.
type portSet struct {
	lo, hi int
	mu     sync.Mutex
	used   []bool // index port-lo
	inUse  int
}

func newPortSet(lo, hi int) *portSet {
	return &portSet{lo: lo, hi: hi, used: make([]bool, hi-lo+1)}
}

func (p *portSet) contains(port int) bool { return port >= p.lo && port <= p.hi }

// bind finds a free port, starting at a random one, and calls try with it
// until try succeeds, the range is exhausted or maxBindTries have failed.
// A port that try bound stays taken until release.
func (p *portSet) bind(try func(port int) error) (int, error) {
	n := len(p.used)
	start := rand.IntN(n) //nolint:gosec // port choice needs no cryptographic randomness
	tries := 0
	var lastErr error
	for i := 0; i < n && tries < maxBindTries; i++ {
		idx := (start + i) % n
		if !p.take(idx) {
			continue
		}
		tries++
		if err := try(p.lo + idx); err != nil {
			lastErr = err
			p.put(idx)
			continue
		}
		return p.lo + idx, nil
	}
	if lastErr != nil {
		return 0, fmt.Errorf("%w: %w", errPortsExhausted, lastErr)
	}
	return 0, errPortsExhausted
}

// bindPort takes one given port of the range.
func (p *portSet) bindPort(port int, try func(port int) error) error {
	if !p.contains(port) {
		return fmt.Errorf("%w: port %d is outside the range", errPortsExhausted, port)
	}
	if !p.take(port - p.lo) {
		return fmt.Errorf("%w: port %d is taken", errPortsExhausted, port)
	}
	if err := try(port); err != nil {
		p.put(port - p.lo)
		return err
	}
	return nil
}

func (p *portSet) take(idx int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used[idx] {
		return false
	}
	p.used[idx] = true
	p.inUse++
	return true
}

func (p *portSet) put(idx int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used[idx] {
		p.used[idx] = false
		p.inUse--
	}
}

func (p *portSet) release(port int) {
	if p.contains(port) {
		p.put(port - p.lo)
	}
}
