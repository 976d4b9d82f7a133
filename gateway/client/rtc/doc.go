// Package rtc connects the peers of a Parley call with WebRTC, using
// pion/webrtc: a mesh of one PeerConnection per remote peer, each with a
// data channel, negotiated over the call's signals (package client's Call).
//
// A Peer is made with New over a joined call and driven by Run, which reads
// the call's events. Connect starts a PeerConnection toward a peer of the
// call; a peer that does not call Connect answers the other's offer. Both
// peers of a pair may call Connect at once: the W3C's perfect negotiation
// pattern resolves the crossing offers with the roles the node gives (of
// two peers exactly one is polite: it rolls its own offer back, while the
// impolite one ignores the other's). Candidates are trickled as they are
// gathered, end-of-candidates included, and ICE servers come from the join
// ack (a relay ack makes every PeerConnection use TURN relays only) unless
// Options say otherwise.
//
// Each pair shares one data channel, labelled "parley", negotiated out of
// band (Negotiated, ID 0), so both peers have it from the start: the
// application gets it from Options.OnChannel as it is made, or from
// Channel, and WaitOpen tells when it is open. SelectedPair reports the
// candidate pair in use and its round-trip time.
//
// # Recovery
//
// ICE is restarted with an offer with new credentials, which either peer
// may make. The impolite peer of a pair restarts when the PeerConnection's
// ICE fails or stays disconnected for two seconds, and the polite one two
// seconds later if it is still so. When signals may have been lost, because
// this client rejoined the call as the same peer after a reconnect
// (client.CallRejoined with Resumed) or the remote peer did
// (client.CallPeerResumed), an offer under way is sent again and the
// impolite peer restarts. RestartICE restarts at once. A remote peer that
// leaves has its PeerConnection closed; a rejoin as a new peer closes them
// all, and the application connects again.
//
// pion cannot roll an offer back (pion/webrtc#2133). A polite Peer whose
// first offer crosses the other's replaces its PeerConnection instead (and
// calls OnChannel again with the new data channel), and one whose ICE
// restart offer crosses the other's takes that offer as the answer to its
// own before answering it.
//
// # Goroutines
//
// Run's goroutine does all the negotiation: pion's callbacks and the
// methods called from other goroutines hand it their work and never wait.
// Signals go out from a second goroutine in order, so that Run always reads
// the call's events, as package client asks. Both end when Run returns:
// when its context ends, when Close is called, or when the call ends.
package rtc
