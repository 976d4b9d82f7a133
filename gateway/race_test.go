//go:build race

package gateway

// raceEnabled: the race detector's bookkeeping skews heap figures, so tests
// that assert on the heap check it in the run without it (make test runs
// the Heap tests both ways).
const raceEnabled = true
