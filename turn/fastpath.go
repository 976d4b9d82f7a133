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
// fast path allocates nothing per datagram.
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
	out     *net.UDPConn // a listener socket on the client's 5-tuple
}

func newFastPath() *fastPath {
	return &fastPath{routes: make(map[fastKey]fastRoute)}
}

// fromClient relays ChannelData datagram b from client if its channel is
// bound, and reports whether it did.
func (f *fastPath) fromClient(client netip.AddrPort, b []byte) bool {
	length := int(binary.BigEndian.Uint16(b[2:4]))
	if 4+length > len(b) {
		return false // pion drops it
	}
	k := fastKey{client: client, channel: binary.BigEndian.Uint16(b[0:2])}
	f.mu.RLock()
	r, ok := f.routes[k]
	f.mu.RUnlock()
	if !ok {
		return false
	}
	r.relay.sendToPeer(b[4:4+length], r.peer)
	return true
}

func (f *fastPath) add(client netip.AddrPort, channel uint16, rc *relayConn, peer netip.AddrPort, out *net.UDPConn) {
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
