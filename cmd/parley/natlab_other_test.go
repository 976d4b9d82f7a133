//go:build !linux

package main

import "syscall"

// labProcAttr: the lab runs on Linux only.
func labProcAttr() *syscall.SysProcAttr { return nil }
