//go:build linux

package main

import "syscall"

// labProcAttr makes a lab process die with the test process, even when the
// test is killed or times out and no cleanup runs.
func labProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
