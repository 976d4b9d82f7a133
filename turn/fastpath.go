package turn

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
)

// fastPath relays ChannelData over UDP without going through pion/turn,
// whose relay path formats a log line and allocates for every datagram.
//
// pion remains the authority: it reports each channel it binds and each one
// that expires through its event handler, and only then does the fast path
// carry that channel's datagrams, in both directions: a client's ChannelData
// read from a listener socket goes straight to the peer from the relay
// socket, and a datagram from the bound peer read from the relay socket goes
// straight back to the client as ChannelData. Everything else (STUN, Send and
// Data indications, channels of TCP and TLS clients) takes pion's path. The
// fast path allocates nothing per datagram. Sockets are read in batches
// (recvmmsg on Linux) and what the fast path relays from one batch is sent
// in one system call per socket (sendmmsg); a batch is gone through in
// order, and a datagram pion has to see is handed to it, and handled, before
// the fast path looks at the next one, so pion's state (channels bound or
// deleted) is the same for each datagram as with one read per datagram.
type fastPath struct {
	// disabled leaves every datagram to pion; only TestCompareCoturn sets
	// it, before serving, to measure pion's own relay path.
	disabled bool

	mu     sync.RWMutex
	routes map[fastKey]fastRoute
}

type fastKey struct {
	client  netip.AddrPort
	channel uint16
}

type fastRoute struct {
	relay *relayConn
	peer  netip.AddrPort
}

// relayChannel is what a relay socket knows of one of its channels.
type relayChannel struct {
	channel uint16
	client  netip.AddrPort
	out     *udpSock // a listener socket on the client's 5-tuple
}

func newFastPath() *fastPath {
	return &fastPath{routes: make(map[fastKey]fastRoute)}
}

// route returns where ChannelData datagram b from client goes if its
// channel is bound, with the payload, or false.
func (f *fastPath) route(client netip.AddrPort, b []byte) (fastRoute, []byte, bool) {
	length := int(binary.BigEndian.Uint16(b[2:4]))
	if 4+length > len(b) {
		return fastRoute{}, nil, false // pion drops it
	}
	k := fastKey{client: client, channel: binary.BigEndian.Uint16(b[0:2])}
	f.mu.RLock()
	r, ok := f.routes[k]
	f.mu.RUnlock()
	if !ok {
		return fastRoute{}, nil, false
	}
	return r, b[4 : 4+length], true
}

func (f *fastPath) add(client netip.AddrPort, channel uint16, rc *relayConn, peer netip.AddrPort, out *udpSock) {
	if f.disabled {
		return
	}
	f.mu.Lock()
	f.routes[fastKey{client, channel}] = fastRoute{relay: rc, peer: peer}
	f.mu.Unlock()
	rc.addChannel(peer, relayChannel{channel: channel, client: client, out: out})
}

func (f *fastPath) remove(client netip.AddrPort, channel uint16, rc *relayConn, peer netip.AddrPort) {
	f.mu.Lock()
	if r, ok := f.routes[fastKey{client, channel}]; ok && r.relay == rc {
		delete(f.routes, fastKey{client, channel})
	}
	f.mu.Unlock()
	if rc != nil {
		rc.removeChannel(peer)
	}
}

// forget drops the routes of a closed relay socket.
func (f *fastPath) forget(rc *relayConn, chans map[netip.AddrPort]relayChannel) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range chans {
		k := fastKey{c.client, c.channel}
		if r, ok := f.routes[k]; ok && r.relay == rc {
			delete(f.routes, k)
		}
	}
}

// udpAddrPort returns the unmapped address of a UDP address, or false.
func udpAddrPort(a net.Addr) (netip.AddrPort, bool) {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}
