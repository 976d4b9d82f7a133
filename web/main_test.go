package web_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: a node, the
// proxy of the browser tests, or a pipe of it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
