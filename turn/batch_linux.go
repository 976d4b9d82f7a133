package turn

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batched reads and writes with recvmmsg and sendmmsg, called through the
// socket's RawConn so that Go's poller still waits for readiness and
// deadlines and Close still wake a blocked reader. golang.org/x/net/ipv4's
// ReadBatch would allocate a net.UDPAddr and its IP for every datagram; this
// allocates nothing once the buffers are there.
//
// Both calls are made with RawSyscall6, without telling the scheduler: they
// never block (MSG_DONTWAIT; the poller does the waiting) and take a few
// microseconds. Through Syscall6 every call went through entersyscall and
// exitsyscall, and a sendmmsg on loopback (which delivers the datagrams in
// the same call) often outlasted sysmon's 20 µs, so sysmon kept waking at
// its shortest interval to take the P back and hand it to another thread:
// 13 % of our CPU under light flows (docs/TURN.md, "Light flows").

// mmsghdr is struct mmsghdr; Go pads it as C does.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

func initUDPSock(s *udpSock) {
	raw, err := s.conn.SyscallConn()
	if err != nil {
		return
	}
	domain := -1
	if err := raw.Control(func(fd uintptr) {
		domain, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return
	}
	switch domain {
	case unix.AF_INET:
		s.raw = raw
	case unix.AF_INET6:
		s.raw, s.v6 = raw, true
	}
}

type sysReader struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	got   int
	errno syscall.Errno
	// waited is set when the last read found the socket empty and had to
	// wait: its datagram was not queued behind others.
	waited bool
	fn     func(uintptr) bool // s.recv, bound once

	zoneIndex uint32 // the last scope ID seen and its name
	zone      string
}

func (s *sysReader) reset() { s.hdrs = nil }

func (b *batchReader) read() (int, error) {
	if b.sock.raw == nil || len(b.bufs[0]) <= b.head {
		return b.readOne()
	}
	s := &b.sys
	if len(s.hdrs) != len(b.bufs) {
		n := len(b.bufs)
		s.hdrs = make([]mmsghdr, n)
		s.iovs = make([]unix.Iovec, n)
		s.names = make([]unix.RawSockaddrInet6, n)
		for i := range n {
			buf := b.bufs[i][b.head:]
			s.iovs[i].Base = &buf[0]
			s.iovs[i].SetLen(len(buf))
			h := &s.hdrs[i].hdr
			h.Name = (*byte)(unsafe.Pointer(&s.names[i]))
			h.Iov = &s.iovs[i]
			h.SetIovlen(1)
		}
		if s.fn == nil {
			s.fn = s.recv
		}
	}
	for i := range s.hdrs {
		s.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		s.hdrs[i].hdr.Flags = 0
		s.hdrs[i].len = 0
	}
	s.got, s.errno, s.waited = 0, 0, false
	if err := b.sock.raw.Read(s.fn); err != nil {
		return 0, err
	}
	if s.errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "udp", Source: b.sock.conn.LocalAddr(), Err: os.NewSyscallError("recvmmsg", s.errno)}
	}
	for i := range s.got {
		b.lens[i] = int(s.hdrs[i].len)
		b.from[i] = s.addrPort(i)
	}
	return s.got, nil
}

func (s *sysReader) recv(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.hdrs[0])), uintptr(len(s.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			s.got = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			s.waited = true
			return false // wait until readable
		default:
			s.errno = e
			return true
		}
	}
}

// addrPort is the source of datagram i, as ReadFromUDPAddrPort gives it.
func (s *sysReader) addrPort(i int) netip.AddrPort {
	sa := &s.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port))
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			a = a.WithZone(s.zoneName(sa.Scope_id))
		}
		return netip.AddrPortFrom(a, ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// zoneName names an interface as the net package does, remembering the
// last one so that a link-local source costs no allocation per datagram.
func (s *sysReader) zoneName(index uint32) string {
	if index != s.zoneIndex || s.zone == "" {
		s.zoneIndex, s.zone = index, strconv.FormatUint(uint64(index), 10)
		if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
			s.zone = ifi.Name
		}
	}
	return s.zone
}

type sysWriter struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	off   int // first message of this call
	cnt   int // messages in this call
	got   int
	errno syscall.Errno
	fn    func(uintptr) bool // y.send, bound once
}

// send sends the datagrams of w.group, all to be written on s.
func (w *batchWriter) send(s *udpSock) {
	// One datagram goes by sendmmsg too, so that it also skips the
	// scheduler's system call bookkeeping (see the top of this file).
	if s.raw == nil {
		for _, i := range w.group {
			w.sendOne(i)
		}
		return
	}
	y := &w.sys
	if len(y.hdrs) < len(w.group) {
		n := max(len(w.group), cap(w.items))
		y.hdrs = make([]mmsghdr, n)
		y.iovs = make([]unix.Iovec, n)
		y.names = make([]unix.RawSockaddrInet6, n)
		y.fn = y.send
	}
	k := 0
	for _, i := range w.group {
		it := &w.items[i]
		namelen, ok := putSockaddr(&y.names[k], it.to, s.v6)
		if !ok || len(it.b) == 0 {
			w.sendOne(i) // rare: leave it to the net package
			continue
		}
		y.iovs[k].Base = &it.b[0]
		y.iovs[k].SetLen(len(it.b))
		h := &y.hdrs[k].hdr
		h.Name = (*byte)(unsafe.Pointer(&y.names[k]))
		h.Namelen = namelen
		h.Iov = &y.iovs[k]
		h.SetIovlen(1)
		w.group[k] = i
		k++
	}
	var packets, bytes int
	for off := 0; off < k; {
		y.off, y.cnt, y.got, y.errno = off, k-off, 0, 0
		if err := s.raw.Write(y.fn); err != nil {
			break // closed
		}
		if y.errno != 0 {
			off++ // that datagram is lost, as its own sendto would have lost it
			continue
		}
		for j := off; j < off+y.got; j++ {
			packets++
			bytes += len(w.items[w.group[j]].b)
		}
		off += y.got
	}
	// A socket is one relay's or none's: every datagram of the group counts
	// for the same relay, if any.
	if rc := w.items[w.group[0]].relay; rc != nil && packets > 0 {
		rc.c.toPeerBytes.Add(float64(bytes))
		rc.c.toPeerPackets.Add(float64(packets))
	}
}

func (y *sysWriter) send(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&y.hdrs[y.off])), uintptr(y.cnt), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			y.got = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait until writable
		default:
			y.errno = e
			return true
		}
	}
}

// putSockaddr writes ap into sa in the form of the socket's family and
// returns its length, or false for what the net package should handle
// (an IPv6 destination on an IPv4 socket, a scoped address).
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) (uint32, bool) {
	a := ap.Addr()
	if !v6 {
		if !a.Is4() {
			return 0, false
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: htons(ap.Port()), Addr: a.As4()}
		return unix.SizeofSockaddrInet4, true
	}
	if a.Zone() != "" {
		return 0, false
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: htons(ap.Port()), Addr: a.As16()}
	return unix.SizeofSockaddrInet6, true
}

// htons returns port in network byte order, as sockaddr stores it.
func htons(port uint16) uint16 {
	var b [2]byte
	b[0], b[1] = byte(port>>8), byte(port)
	return *(*uint16)(unsafe.Pointer(&b))
}

func ntohs(port uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&port))
	return uint16(b[0])<<8 | uint16(b[1])
}
