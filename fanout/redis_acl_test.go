package fanout

import (
	"strings"
	"testing"

	"github.com/parley-rt/parley/fanout/redistest"
)

// redisACL is the Redis ACL rule set that docs/OPERATIONS.md gives for
// Parley's user: its keys and channels only, and the commands the bus and
// its scripts run.
const redisACL = "~parley:* &parley:* -@all +@read +@write +@scripting +@pubsub +@connection +time +info +cluster|slots -@dangerous"

// TestRedisACL runs the bus suite as a Redis user limited to redisACL, on a
// single Redis and on a cluster.
func TestRedisACL(t *testing.T) {
	setUser := func(t *testing.T, command func(...string) string) {
		t.Helper()
		args := append([]string{"ACL", "SETUSER", "parley", "on", ">s3cret"}, strings.Fields(redisACL)...)
		if out := command(args...); !strings.Contains(out, "OK") {
			t.Fatalf("ACL SETUSER: %s", out)
		}
	}
	t.Run("single", func(t *testing.T) {
		srv := redistest.Start(t)
		setUser(t, srv.Command)
		url := strings.Replace(srv.URL(), "unix://", "unix://parley:s3cret@", 1)
		newTestRedis(t, RedisConfig{URL: url})
		if list := srv.Command("CLIENT", "LIST"); !strings.Contains(list, "user=parley") {
			t.Fatalf("no connection of the bus as user parley: %s", list)
		}
		newBus := func(t *testing.T) Bus { return newTestRedis(t, RedisConfig{URL: url, HistorySize: suiteHistory}) }
		testBus(t, newBus, func(t *testing.T, _ Bus) Bus { return newBus(t) })
	})
	t.Run("cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3, 0)
		for _, n := range c.Nodes {
			setUser(t, n.Command)
		}
		url := "redis+cluster://parley:s3cret@" + strings.Join(c.Addrs(), ",")
		newBus := func(t *testing.T) Bus { return newTestRedis(t, RedisConfig{URL: url, HistorySize: suiteHistory}) }
		testBus(t, newBus, func(t *testing.T, _ Bus) Bus { return newBus(t) })
	})
}
