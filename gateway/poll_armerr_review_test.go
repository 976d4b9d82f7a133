package gateway

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// failingArm is the server's poller whose epoll_ctl fails as the kernel's
// does past fs.epoll.max_user_watches (ENOSPC) or out of memory (ENOMEM).
type failingArm struct{ poller }

func (failingArm) arm(*session) error { return unix.ENOSPC }

// When arm fails for a reason other than a closed connection, the session
// is finished (unregistered, its rooms and presence left) but its
// connection is never closed: the client stays connected to a session the
// node no longer knows, which no heartbeat pings and nothing closes, and
// the descriptor stays open. (A risk: only epoll_ctl's ENOSPC or ENOMEM get
// there; the error is injected.)
func TestPollerReviewArmErrorLeavesConnectionOpen(t *testing.T) {
	requirePoller(t)
	srv, err := New(Config{Bus: newReviewBus(t), NodeID: "review", DrainTimeout: 100 * time.Millisecond, PingInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv.poller = failingArm{srv.poller}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config = srv.http
	hs.Start()
	defer hs.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	c := dialWS(t, "ws"+strings.TrimPrefix(hs.URL, "http")+"/v1/ws", nil)
	waitFor(t, "the session to be finished", func() bool {
		return valueOf(srv.metrics.connections.WithLabelValues("ws")) == 0
	})
	// The welcome may or may not have gone out before the close.
	for {
		m, err := c.nextErr(time.Second)
		if err == nil && m["type"] == "welcome" {
			continue
		}
		if err == nil || strings.Contains(err.Error(), "deadline exceeded") {
			t.Errorf("the node finished the session but its connection is still open a second later (read: %v, %v); want it closed", m, err)
		}
		break
	}
}
