package web_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestSDK runs parley.js's unit tests, every testdata/*.test.mjs, with
// Node's test runner: sdk.test.mjs against a scripted fake WebSocket and
// EventSource (replayed duplicates, a lost epoch, a drain, timeouts, backoff,
// presence paging, an expired token on an event stream, a stream the node
// refuses), and call.test.mjs against a fake node and a fake
// RTCPeerConnection (perfect negotiation with crossing offers, a rollback,
// an ICE restart while an offer is in flight, TURN credential refresh, a
// mesh, a rejoin after a dropped connection, explain's sentences). They need
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
	files, err := filepath.Glob(filepath.Join("testdata", "*.test.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("testdata/*.test.mjs: got %v, want sdk.test.mjs and call.test.mjs at least", files)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--test", "--test-reporter=spec"}, files...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
