package redistest

import (
	"math/rand/v2"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a Redis Cluster of redis-server processes owned by a test.
// Cluster nodes talk to each other over TCP, so each listens on a port of
// 127.0.0.1 (and that port plus 10000 for the cluster bus) besides its Unix
// socket.
type Cluster struct {
	t testing.TB
	// Nodes are the cluster's servers: the masters first, then their
	// replicas, as `redis-cli --cluster create` assigns them.
	Nodes []*Server
	ports []int
}

// clusterNodeTimeout is the nodes' cluster-node-timeout: how long a master
// may be silent before its replica takes over. Short, so that failover tests
// are quick.
const clusterNodeTimeout = 1000 * time.Millisecond

// StartCluster starts a cluster of masters, each with replicas replicas, and
// waits until it serves every slot. It stops when the test ends.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		missing(t, "redis-cli is missing; `make test` installs it (Debian's redis-tools, with redis-server)")
	}
	c := &Cluster{t: t}
	for range masters * (1 + replicas) {
		port := freeClusterPort(t)
		c.ports = append(c.ports, port)
		c.Nodes = append(c.Nodes, Start(t,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout.Milliseconds())),
			"--repl-diskless-sync-delay", "0"))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy(20 * time.Second)
	c.waitReplicasSynced(20 * time.Second)
	return c
}

// waitReplicasSynced waits until every replica has its master's data: a
// replica that has not synchronized yet cannot take over from its master.
func (c *Cluster) waitReplicasSynced(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for _, n := range c.Nodes {
		for {
			info := n.Command("INFO", "replication")
			if strings.Contains(info, "role:master") || strings.Contains(info, "master_link_status:up") {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("a replica has not synchronized after %v: %s", d, info)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Addrs are the nodes' host:port addresses, in the order of Nodes.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.ports))
	for i, p := range c.ports {
		addrs[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	return addrs
}

// WaitHealthy waits until every running node says the cluster is ok (every
// slot served by a live master), failing the test after d.
func (c *Cluster) WaitHealthy(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok := true
		for _, n := range c.Nodes {
			if n.cmd != nil && !strings.Contains(n.Command("CLUSTER", "INFO"), "cluster_state:ok") {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the cluster is not ok after %v: %s", d, c.Command("CLUSTER", "NODES"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Command runs a command on the cluster with redis-cli, through its first
// running node, following redirections to the node that holds the key.
func (c *Cluster) Command(args ...string) string {
	c.t.Helper()
	for i, n := range c.Nodes {
		if n.cmd != nil {
			out, _ := exec.Command("redis-cli", append([]string{"-c", "-p", strconv.Itoa(c.ports[i])}, args...)...).CombinedOutput()
			return string(out)
		}
	}
	c.t.Fatal("no node of the cluster runs")
	return ""
}

// WaitFailover waits until the running nodes have marked node i, killed, as
// failed and the cluster is ok again (its replica took its slots over),
// failing the test after d.
func (c *Cluster) WaitFailover(i int, d time.Duration) {
	c.t.Helper()
	addr := c.Addrs()[i] + "@"
	deadline := time.Now().Add(d)
	for {
		failed := true
		for j, n := range c.Nodes {
			if j == i || n.cmd == nil {
				continue
			}
			for _, line := range strings.Split(n.Command("CLUSTER", "NODES"), "\n") {
				f := strings.Fields(line)
				if len(f) > 2 && strings.HasPrefix(f[1], addr) && !strings.Contains(","+f[2]+",", ",fail,") {
					failed = false
				}
			}
		}
		if failed {
			c.WaitHealthy(time.Until(deadline))
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("node %s not marked failed after %v", c.Addrs()[i], d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Command runs a command on the server with redis-cli and returns what it
// printed (an error's text included), for tests that look at a node.
func (s *Server) Command(args ...string) string {
	s.t.Helper()
	out, _ := exec.Command("redis-cli", append([]string{"-s", s.sock}, args...)...).CombinedOutput()
	return string(out)
}

// freeClusterPort returns a TCP port of 127.0.0.1 that is free, and whose
// cluster bus port (plus 10000) is free too, as far as can be told before
// redis-server binds them. Both are below Linux's ephemeral range (32768
// and up), so no outgoing connection takes them meanwhile.
func freeClusterPort(t testing.TB) int {
	t.Helper()
	for range 1000 {
		port := 20000 + rand.IntN(2700)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		ln.Close()
		if err != nil {
			continue
		}
		bus.Close()
		return port
	}
	t.Fatal("no free pair of ports for a cluster node")
	return 0
}

// running returns the first node of the cluster that runs, failing the test
// if none does.
func (c *Cluster) running() *Server {
	c.t.Helper()
	for _, n := range c.Nodes {
		if n.cmd != nil {
			return n
		}
	}
	c.t.Fatal("no node of the cluster runs")
	return nil
}

// KeySlot returns the slot of key (CLUSTER KEYSLOT): that of its hash tag,
// "{...}", if it has one.
func (c *Cluster) KeySlot(key string) int {
	c.t.Helper()
	out := c.running().Command("CLUSTER", "KEYSLOT", key)
	slot, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		c.t.Fatalf("CLUSTER KEYSLOT %s: %q", key, out)
	}
	return slot
}

// MasterOf returns the index in Nodes of the master that serves key's slot
// now, as a running node's CLUSTER NODES tells (a master marked failed does
// not count), failing the test if no master serves it.
func (c *Cluster) MasterOf(key string) int {
	c.t.Helper()
	slot := c.KeySlot(key)
	if i := c.slotMaster(slot); i >= 0 {
		return i
	}
	c.t.Fatalf("no live master serves slot %d (key %s): %s", slot, key, c.running().Command("CLUSTER", "NODES"))
	return -1
}

// slotMaster returns the index in Nodes of the live master that a running
// node says serves slot, or -1.
func (c *Cluster) slotMaster(slot int) int {
	c.t.Helper()
	addrs := c.Addrs()
	for _, line := range strings.Split(c.running().Command("CLUSTER", "NODES"), "\n") {
		// <id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
		// <pong-recv> <config-epoch> <link-state> <slot> <slot> ...
		f := strings.Fields(line)
		if len(f) < 9 {
			continue
		}
		flags := "," + f[2] + ","
		if !strings.Contains(flags, ",master,") || strings.Contains(flags, ",fail,") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		i := slices.Index(addrs, addr)
		if i < 0 {
			continue
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") { // a slot being migrated
				continue
			}
			lo, hi, isRange := strings.Cut(r, "-")
			if !isRange {
				hi = lo
			}
			from, err1 := strconv.Atoi(lo)
			to, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && from <= slot && slot <= to {
				return i
			}
		}
	}
	return -1
}

// ConfigSet sets a configuration parameter (CONFIG SET) on every running
// node, failing the test if one refuses it.
func (c *Cluster) ConfigSet(param, value string) {
	c.t.Helper()
	for _, n := range c.Nodes {
		if n.cmd == nil {
			continue
		}
		if out := n.Command("CONFIG", "SET", param, value); !strings.Contains(out, "OK") {
			c.t.Fatalf("CONFIG SET %s %s: %q", param, value, out)
		}
	}
}

// WaitMasterOf waits until a live master serves key's slot, as a running
// node's CLUSTER NODES tells, and returns its index in Nodes, failing the
// test after d. After a master is killed, it returns once its replica has
// been promoted: with cluster-require-full-coverage no, the cluster says
// it is ok (WaitHealthy, WaitFailover) while the killed master's slots have
// no master yet.
func (c *Cluster) WaitMasterOf(key string, d time.Duration) int {
	c.t.Helper()
	slot := c.KeySlot(key)
	deadline := time.Now().Add(d)
	for {
		if i := c.slotMaster(slot); i >= 0 {
			return i
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no live master serves slot %d (key %s) after %v: %s", slot, key, d, c.running().Command("CLUSTER", "NODES"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// manualFailoverRetry is how long ManualFailover waits for a CLUSTER
// FAILOVER before it asks again: Redis drops a manual failover that has
// not completed within twice the cluster-node-timeout (2 s here), which a
// busy machine can make it miss.
const manualFailoverRetry = 3 * time.Second

// ManualFailover makes the replica at index i of Nodes take its master's
// place with CLUSTER FAILOVER, asking again when Redis dropped the
// failover, and waits until the replica says it is a master, failing the
// test after d.
func (c *Cluster) ManualFailover(i int, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		if out := c.Nodes[i].Command("CLUSTER", "FAILOVER"); !strings.HasPrefix(out, "OK") {
			c.t.Fatalf("CLUSTER FAILOVER on node %d: %q", i, out)
		}
		asked := time.Now()
		for time.Since(asked) < manualFailoverRetry {
			if strings.Contains(c.Nodes[i].Command("INFO", "replication"), "role:master") {
				return
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("node %d is not a master %v after CLUSTER FAILOVER", i, d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
