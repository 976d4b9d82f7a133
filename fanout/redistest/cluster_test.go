package redistest

import (
	"strings"
	"testing"
	"time"
)

func TestClusterServesEverySlot(t *testing.T) {
	c := StartCluster(t, 3, 0)
	info := c.Nodes[0].Command("CLUSTER", "INFO")
	for _, want := range []string{"cluster_state:ok", "cluster_slots_assigned:16384", "cluster_known_nodes:3"} {
		if !strings.Contains(info, want) {
			t.Errorf("CLUSTER INFO lacks %s:\n%s", want, info)
		}
	}
	// Keys of every slot are served: redis-cli -c follows MOVED.
	for _, key := range []string{"a", "b", "c", "{room}:x"} {
		if out := c.Command("SET", key, "v"); !strings.Contains(out, "OK") {
			t.Errorf("SET %s through the cluster: %q", key, out)
		}
	}
}

func TestClusterFailover(t *testing.T) {
	c := StartCluster(t, 3, 1)
	start := time.Now()
	c.Command("SET", "a", "v")
	c.Nodes[0].Kill()
	// The master's replica takes its slots over once the others have not
	// heard from it for the node timeout.
	c.WaitFailover(0, 30*time.Second)
	t.Logf("the cluster served every slot again %v after its first master was killed", time.Since(start).Round(time.Millisecond))
	for _, key := range []string{"a", "b", "c"} {
		if out := c.Command("SET", key, "w"); !strings.Contains(out, "OK") {
			t.Errorf("SET %s after the failover: %q", key, out)
		}
	}
}
