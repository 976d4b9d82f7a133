package fanout

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind, such as a
// sweeper of a bus that was never closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
