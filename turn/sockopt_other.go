//go:build !linux

package turn

import "syscall"

const reusePortSupported = false

func reusePortControl(string, string, syscall.RawConn) error { return nil }
