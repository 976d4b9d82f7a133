package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReviewNATLabInterruptedLeavesNothing runs TestNATLabNoTURN in a
// child test process that go test's own -timeout ends mid-call (as a CI
// timeout or a cancelled job does: no t.Cleanup runs), and checks that
// the lab's namespaces and the processes in them do not outlive it. It
// removes whatever it finds itself.
func TestReviewNATLabInterruptedLeavesNothing(t *testing.T) {
	requireNATLab(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run", "^TestNATLabNoTURN$", "-test.timeout", "6s", "-test.count", "1")
	cmd.Env = append(os.Environ(), "CI=")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "test timed out") {
		t.Fatalf("the child run was not interrupted:\n%s", out)
	}
	prefix := fmt.Sprintf("plab%d-", cmd.Process.Pid)
	// Give what the child started a moment to end on its own: the peers
	// give up after their call's timeout.
	time.Sleep(2 * time.Second)

	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var leftNS []string
	var leftPIDs []int
	for line := range strings.Lines(string(list)) {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		leftNS = append(leftNS, name)
		pids, _ := exec.Command("ip", "netns", "pids", name).Output()
		for f := range strings.FieldsSeq(string(pids)) {
			if pid, err := strconv.Atoi(f); err == nil {
				leftPIDs = append(leftPIDs, pid)
			}
		}
	}
	var procs []string
	dirs := map[string]bool{}
	for _, pid := range leftPIDs {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		procs = append(procs, fmt.Sprintf("%d %s", pid, strings.Join(args, " ")))
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.HasPrefix(filepath.Base(filepath.Dir(exe)), "parley-cluster-test") {
			dirs[filepath.Dir(exe)] = true
		}
		for i, a := range args {
			if a == "--tls-cert" && i+1 < len(args) {
				dirs[filepath.Dir(filepath.Dir(args[i+1]))] = true
			}
		}
	}
	t.Cleanup(func() {
		for _, pid := range leftPIDs {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(500 * time.Millisecond)
		for _, ns := range leftNS {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
		for d := range dirs {
			if strings.HasPrefix(d, os.TempDir()) && d != os.TempDir() {
				os.RemoveAll(d)
			}
		}
	})
	if len(leftPIDs) > 0 {
		t.Errorf("after an interrupted lab run: %d processes still running in its namespaces (%s):\n%s",
			len(leftPIDs), strings.Join(leftNS, " "), strings.Join(procs, "\n"))
	}
	// The namespaces outlive the run (no cleanup ran); the next lab sweeps
	// them.
	sweepNATLabs(t)
	list, err = exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(list), prefix) {
		t.Errorf("the interrupted run's namespaces are still there after a sweep:\n%s", list)
	}
}
