package web_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: a node, the
// proxy of the browser tests, or a pipe of it. It removes the parley binary
// that parleyBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range binDirs {
		os.RemoveAll(dir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: errors on successful test run: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
