package fanout

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind, such as a
// sweeper of a bus that was never closed.
// go-redis's own log of each failed dial is silenced: the tests kill
// servers on purpose.
func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	// A go-redis pool whose server died probes it once a second in a
	// goroutine that notices its pool's Close only after its sleep.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
