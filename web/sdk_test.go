package web_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestSDK runs parley.js's unit tests (testdata/sdk.test.mjs) with Node's
// test runner against a scripted fake WebSocket and EventSource: replayed
// duplicates, a lost epoch, a drain, timeouts, backoff, presence paging, an
// expired token on an event stream, a stream the node refuses. They need
// Node, not a browser.
func TestSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		msg := "node (Node.js 20 or later) is missing; install the browser test dependencies with `bash .ci/web-deps`"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", filepath.Join("testdata", "sdk.test.mjs"))
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
