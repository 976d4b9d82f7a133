// The fakes under call.test.mjs, parley.js's Call tested in Node without a
// browser: a scripted fake WebSocket (as in sdk.test.mjs), a small fake node
// that relays the call frames of docs/CALLS.md between several clients, and
// a fake RTCPeerConnection that follows the W3C signaling state machine
// (stable, have-local-offer, have-remote-offer; an implicit rollback when an
// offer is set in have-local-offer; InvalidStateError where a browser throws
// one; negotiationneeded, icecandidate and connectionstatechange events).
// They keep to what the specs and the gateway do, so that a test passes
// only where a browser and a node would let the Call pass:
//
//   - the node can keep a reconnecting client away (gate, admit), as a
//     network blip does, hold relayed signals (hold, release) so that offers
//     cross, and deliver held signals selectively (deliverHeld), as a
//     network slower than the browsers does;
//   - the PeerConnection gathers candidates by its iceTransportPolicy: relay
//     only gathers nothing without a turn:/turns: server, so ICE has no pair
//     to check and the connection stays 'connecting' (browsers do not fail it);
//   - setRemoteDescription refuses an answer that keeps the previous remote
//     ICE credentials when the local offer restarts ICE (JSEP, RFC 8829 5.10).
//
// This file is not named *.test.mjs: web/sdk_test.go runs every such file
// as a test file, and this one holds no tests.
import { Parley } from '../static/parley.js';

// ---- a fake WebSocket, and a fake node behind it ----

export class FakeWS {
  static all = [];
  static node = null; // a FakeNode answering every socket, or null: the test scripts the socket
  static refuse = false; // new sockets fail at once, as when a node is down

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeWS.all.push(this);
    const node = FakeWS.node;
    queueMicrotask(() => {
      if (this.readyState !== 0) return;
      if (FakeWS.refuse) return this.drop(1006);
      this.readyState = 1;
      this.onopen?.({});
      node?.open(this);
    });
  }

  send(s) {
    const f = JSON.parse(s);
    this.sent.push(f);
    const node = FakeWS.node;
    if (node) queueMicrotask(() => node.frame(this, f));
  }

  close(code) {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.closedWith = code;
    this.#gone();
    queueMicrotask(() => this.onclose?.({ code: code ?? 1005, reason: '', wasClean: true }));
  }

  // push delivers frames as one text frame, newline-separated, as the node batches them.
  push(...frames) {
    if (this.readyState !== 1) return;
    this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join('\n') });
  }

  drop(code = 1006, reason = '') {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.#gone();
    this.onclose?.({ code, reason, wasClean: false });
  }

  // gone tells the node, after the frames sent before the close.
  #gone() {
    const node = FakeWS.node;
    if (node) queueMicrotask(() => node.gone(this));
  }

  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

const hex = (n) => n.toString(16).padStart(4, '0');

// FakeNode plays a Parley node for calls: welcome, join (with resume
// tokens and the role rule of docs/CALLS.md: of two peers, the one with the
// greater session is polite), signal, leave, and peers that are away
// between a dropped connection and their rejoin. With hold set, relayed
// signals wait in `held` until release(), so that offers can cross.
export class FakeNode {
  constructor(options = {}) {
    this.seq = 0;
    this.calls = new Map(); // call -> Map session -> peer {session, user, ws, resume, away: []}
    this.hold = false;
    this.held = []; // [ws, frame]
    this.ack = options.ack ?? {}; // extra fields of every join ack
    this.pingMs = options.pingMs ?? 25000;
    this.refuse = null; // {code, message}: the next join is refused
    this.gate = false; // new sockets wait in `gated` for admit(): a client that stays away
    this.gated = [];
  }

  // admit welcomes the sockets the gate held.
  admit() {
    this.gate = false;
    for (const ws of this.gated.splice(0)) if (ws.readyState === 1) this.open(ws);
  }

  open(ws) {
    if (this.gate) {
      this.gated.push(ws);
      return;
    }
    ws.session = hex(++this.seq);
    ws.user = `u${ws.session}`;
    this.push(ws, { type: 'welcome', session: ws.session, node: 'n1', user: ws.user, ping_ms: this.pingMs });
  }

  push(ws, f) {
    queueMicrotask(() => ws.push(f));
  }

  others(call, me) {
    return [...call.values()].filter((p) => p.session !== me.session);
  }

  frame(ws, f) {
    const call = this.calls.get(f.call) ?? new Map();
    this.calls.set(f.call, call);
    const me = [...call.values()].find((p) => p.ws === ws);
    const reply = (fields) => this.push(ws, { type: 'ack', id: f.id, ...fields });
    const refuse = (code, message) => this.push(ws, { type: 'error', id: f.id, code, message });
    switch (f.type) {
      case 'join': {
        if (this.refuse) {
          const { code, message } = this.refuse;
          this.refuse = null;
          return refuse(code, message);
        }
        if (me) return refuse('bad_request', `already in call ${f.call}`);
        let peer = f.resume ? [...call.values()].find((p) => p.resume === f.resume) : undefined;
        const resumed = !!peer;
        if (peer) {
          peer.ws = ws;
        } else {
          peer = { session: ws.session, user: ws.user, ws, resume: `${ws.session}.token`, away: [] };
          call.set(peer.session, peer);
        }
        const others = this.others(call, peer);
        reply({
          session: peer.session,
          peers: others.map((p) => ({ session: p.session, user: p.user, polite: peer.session > p.session })),
          polite: others.length > 0 && others.every((p) => peer.session > p.session),
          resume: peer.resume,
          resumed,
          ...this.ack,
        });
        for (const s of peer.away.splice(0)) this.push(ws, s);
        for (const p of others) this.event(f.call, p, resumed ? 'resume' : 'join', peer);
        return;
      }
      case 'signal': {
        if (!me) return refuse('not_found', `not in call ${f.call}: join it first`);
        const to = call.get(f.to);
        if (!to) return refuse('not_found', `no peer ${f.to} in call ${f.call}`);
        reply({});
        this.deliver(to, { type: 'signal', call: f.call, from: me.session, data: f.data });
        return;
      }
      case 'leave': {
        if (!me) return refuse('not_found', `not in call ${f.call}`);
        call.delete(me.session);
        reply({});
        for (const p of call.values()) this.event(f.call, p, 'leave', me);
        return;
      }
      default:
    }
  }

  event(name, to, event, peer) {
    this.deliver(to, { type: 'peer', call: name, event, session: peer.session, user: peer.user, polite: to.session > peer.session }, true);
  }

  deliver(to, f, now = false) {
    if (!to.ws) to.away.push(f);
    else if (this.hold && !now) this.held.push([to, f]);
    else this.push(to.ws, f);
  }

  // release delivers the held signals, those for `first` (a session) first.
  release(first) {
    const held = this.held.splice(0);
    held.sort((a, b) => (b[0].session === first) - (a[0].session === first));
    this.hold = false;
    for (const [to, f] of held) this.deliver(to, f);
  }

  // deliverHeld delivers the held signals for which pick(to, frame) holds,
  // in order, and keeps holding the others.
  deliverHeld(pick) {
    const keep = [];
    for (const [to, f] of this.held.splice(0)) {
      if (pick(to, f)) this.push(to.ws, f);
      else keep.push([to, f]);
    }
    this.held.push(...keep);
  }

  gone(ws) {
    for (const call of this.calls.values()) for (const p of call.values()) if (p.ws === ws) p.ws = null;
  }

  // expire ends an away peer's grace period: the others see it leave.
  expire(name, session) {
    const call = this.calls.get(name);
    const peer = call.get(session);
    call.delete(session);
    for (const p of call.values()) this.event(name, p, 'leave', peer);
  }
}

// ---- a fake RTCPeerConnection ----

export function domError(name, message) {
  const err = new Error(message);
  err.name = name;
  return err;
}

export const ufragOf = (sdp) => /a=ice-ufrag:(\S+)/.exec(sdp ?? '')?.[1] ?? null;

class FakeDataChannel {
  constructor(label, init) {
    this.label = label;
    this.negotiated = !!init?.negotiated;
    this.id = init?.id ?? null;
    this.readyState = 'connecting';
    this.sent = [];
  }

  send(data) {
    if (this.readyState !== 'open') throw domError('InvalidStateError', 'the data channel is not open');
    this.sent.push(data);
  }

  close() {
    this.readyState = 'closed';
  }
}

class FakeSender {
  constructor(track) {
    this.track = track;
  }

  async replaceTrack(track) {
    this.track = track;
  }
}

let pcSeq = 0;

// task runs fn as a browser fires a PeerConnection's events: in a task of
// its own, after the promise of the operation that caused it has settled.
// (setImmediate is not among the timers the tests mock.)
const task = (fn) => setImmediate(fn);

// FakePC follows the RTCPeerConnection signaling state machine: operations
// (setLocalDescription, setRemoteDescription, addIceCandidate) run one after
// the other on an operations chain, as in a browser; negotiationneeded
// fires when the state is stable, the chain is empty and the local media
// or an ICE restart needs a negotiation, once until that negotiation
// completes. It connects once an offer and its answer are applied; a test
// sets other connection states with setState.
export class FakePC {
  static all = [];

  constructor(config) {
    this.id = ++pcSeq;
    this.config = { ...config };
    this.configs = [this.config];
    this.signalingState = 'stable';
    this.connectionState = 'new';
    this.pendingLocalDescription = null;
    this.currentLocalDescription = null;
    this.pendingRemoteDescription = null;
    this.currentRemoteDescription = null;
    this.channels = [];
    this.senders = [];
    this.remoteCandidates = [];
    this.endOfCandidates = 0;
    this.rollbacks = 0; // offers of its own rolled back by a remote offer
    this.refused = []; // errors thrown at the caller
    this.closed = false;
    this.stats = null; // a Map for getStats, or null for a relay pair over UDP
    this.failNext = null; // 'offer' or 'answer': the next setLocalDescription of that type fails
    this.#ufrag = `p${this.id}g0`;
    FakePC.all.push(this);
  }

  #ufrag;
  #stableUfrag = null; // the ufrag before the pending local offer: a rollback returns to it
  #generation = 0;
  #gathered = new Set(); // the ufrags candidates were gathered for
  #chain = Promise.resolve();
  #ops = 0;
  #media = 0; // changes to the local media
  #offered = 0; // the #media of the local offer
  #negotiated = 0; // the #media an offer/answer exchange has covered
  #restart = false; // restartIce() was called: the next local description gets new credentials
  #needed = false; // the negotiation-needed flag
  #version = 0;

  get localDescription() {
    return this.pendingLocalDescription ?? this.currentLocalDescription;
  }

  get remoteDescription() {
    return this.pendingRemoteDescription ?? this.currentRemoteDescription;
  }

  get ufrag() {
    return this.#ufrag;
  }

  getConfiguration() {
    return { ...this.config };
  }

  setConfiguration(config) {
    if (this.closed) throw domError('InvalidStateError', 'the PeerConnection is closed');
    this.config = { ...config };
    this.configs.push(this.config);
  }

  createDataChannel(label, init) {
    const dc = new FakeDataChannel(label, init);
    this.channels.push(dc);
    if (this.channels.length === 1) this.#changed();
    return dc;
  }

  addTrack(track) {
    const sender = new FakeSender(track);
    this.senders.push(sender);
    this.#changed();
    return sender;
  }

  getSenders() {
    return [...this.senders];
  }

  restartIce() {
    this.#restart = true;
    this.#update();
  }

  setLocalDescription(desc) {
    return this.#op(() => {
      const type = desc?.type ?? (this.signalingState === 'have-remote-offer' ? 'answer' : 'offer');
      if (this.failNext === type) {
        this.failNext = null;
        throw domError('OperationError', `setLocalDescription(${type}) failed`);
      }
      switch (type) {
        case 'offer': {
          if (this.signalingState !== 'stable' && this.signalingState !== 'have-local-offer') {
            throw domError('InvalidStateError', `setLocalDescription(offer) in ${this.signalingState}`);
          }
          if (this.signalingState === 'stable') this.#stableUfrag = this.#ufrag;
          // As in a browser, the restart flag is spent by the offer that
          // restarts, even if that offer is rolled back later.
          if (this.#restart || !this.currentLocalDescription) this.#newCredentials();
          this.pendingLocalDescription = { type, sdp: this.#sdp() };
          this.#offered = this.#media;
          this.#setSignaling('have-local-offer');
          break;
        }
        case 'answer': {
          if (this.signalingState !== 'have-remote-offer') throw domError('InvalidStateError', `setLocalDescription(answer) in ${this.signalingState}`);
          // Answering an offer that restarts ICE restarts it here too.
          const before = ufragOf(this.currentRemoteDescription?.sdp);
          if (this.#restart || !this.currentLocalDescription || ufragOf(this.pendingRemoteDescription.sdp) !== before) this.#newCredentials();
          this.currentLocalDescription = { type, sdp: this.#sdp() };
          this.currentRemoteDescription = this.pendingRemoteDescription;
          this.pendingLocalDescription = this.pendingRemoteDescription = null;
          this.#negotiated = this.#media;
          this.#setSignaling('stable');
          break;
        }
        case 'rollback':
          if (this.signalingState !== 'have-local-offer') throw domError('InvalidStateError', `rollback in ${this.signalingState}`);
          this.#rollbackLocal();
          return;
        default:
          throw new TypeError(`bad description type ${type}`);
      }
      this.#gather();
      if (this.signalingState === 'stable') this.#completed();
    });
  }

  setRemoteDescription(desc) {
    return this.#op(() => {
      switch (desc?.type) {
        case 'offer':
          if (this.signalingState === 'have-local-offer') {
            // The implicit rollback of a browser.
            this.#rollbackLocal();
            this.rollbacks++;
          }
          if (this.signalingState !== 'stable' && this.signalingState !== 'have-remote-offer') {
            throw domError('InvalidStateError', `setRemoteDescription(offer) in ${this.signalingState}`);
          }
          if (!/\nm=/.test(desc.sdp)) throw domError('OperationError', 'an offer without media');
          this.pendingRemoteDescription = { type: 'offer', sdp: desc.sdp };
          this.#setSignaling('have-remote-offer');
          return;
        case 'answer': {
          if (this.signalingState !== 'have-local-offer') throw domError('InvalidStateError', `setRemoteDescription(answer) in ${this.signalingState}`);
          // JSEP (RFC 8829, 5.10): when the local offer restarts ICE, an
          // answer whose ICE credentials are those of the previous remote
          // description is an error.
          const restarting = this.currentLocalDescription && ufragOf(this.pendingLocalDescription.sdp) !== ufragOf(this.currentLocalDescription.sdp);
          if (restarting && this.currentRemoteDescription && ufragOf(desc.sdp) === ufragOf(this.currentRemoteDescription.sdp)) {
            throw domError('InvalidAccessError', 'the answer to an ICE restart keeps the previous ICE credentials');
          }
          this.currentRemoteDescription = { type: 'answer', sdp: desc.sdp };
          this.currentLocalDescription = this.pendingLocalDescription;
          this.pendingLocalDescription = null;
          this.#negotiated = this.#offered;
          this.#setSignaling('stable');
          this.#completed();
          return;
        }
        case 'rollback':
          if (this.signalingState !== 'have-remote-offer') throw domError('InvalidStateError', `setRemoteDescription(rollback) in ${this.signalingState}`);
          this.pendingRemoteDescription = null;
          this.#setSignaling('stable');
          return;
        default:
          throw new TypeError(`bad description type ${desc?.type}`);
      }
    });
  }

  addIceCandidate(c) {
    return this.#op(() => {
      if (!this.remoteDescription) throw domError('InvalidStateError', 'addIceCandidate without a remote description');
      if (c === undefined || c === null || !c.candidate) {
        this.endOfCandidates++;
        return;
      }
      if (c.usernameFragment && c.usernameFragment !== ufragOf(this.remoteDescription.sdp)) {
        throw domError('OperationError', `unknown ufrag ${c.usernameFragment}`);
      }
      this.remoteCandidates.push(c);
    });
  }

  async getStats() {
    if (this.stats) return this.stats;
    return new Map([
      ['T1', { type: 'transport', selectedCandidatePairId: 'CP1' }],
      ['CP1', { type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', currentRoundTripTime: 0.0123 }],
      ['L1', { type: 'local-candidate', candidateType: 'relay', protocol: 'udp', relayProtocol: 'tcp' }],
      ['R1', { type: 'remote-candidate', candidateType: 'srflx', protocol: 'udp' }],
    ]);
  }

  close() {
    this.closed = true;
    this.signalingState = 'closed';
    this.connectionState = 'closed';
    for (const dc of this.channels) dc.close();
  }

  // setState sets the connection state, as ICE would, and fires its event.
  setState(state) {
    if (this.closed || this.connectionState === state) return;
    this.connectionState = state;
    this.onconnectionstatechange?.({});
    if (state === 'connected') {
      for (const dc of this.channels) {
        if (dc.readyState === 'open') continue;
        dc.readyState = 'open';
        dc.onopen?.({});
      }
    }
  }

  #op(fn) {
    this.#ops++;
    const run = this.#chain.then(() => {
      if (this.closed) throw domError('InvalidStateError', 'the PeerConnection is closed');
      return fn();
    });
    this.#chain = run
      .catch(() => {})
      .then(() => {
        this.#ops--;
        this.#update();
      });
    return run.catch((err) => {
      this.refused.push(err);
      throw err;
    });
  }

  // refusedDescriptions are the errors of setLocalDescription and
  // setRemoteDescription: what perfect negotiation must never cause.
  get refusedDescriptions() {
    return this.refused.filter((err) => !/ufrag|addIceCandidate/.test(err.message));
  }

  #changed() {
    this.#media++;
    this.#update();
  }

  // rollbackLocal takes back the pending local offer, and the ICE
  // credentials it made.
  #rollbackLocal() {
    this.pendingLocalDescription = null;
    if (this.#stableUfrag !== null) this.#ufrag = this.#stableUfrag;
    this.#setSignaling('stable');
  }

  #newCredentials() {
    this.#restart = false;
    this.#ufrag = `p${this.id}g${++this.#generation}`;
  }

  #sdp() {
    const media = this.channels.length ? 'm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n' : '';
    const tracks = this.senders.map((s) => `m=${s.track?.kind ?? 'audio'} 9 UDP/TLS/RTP/SAVPF 111\r\n`).join('');
    return `v=0\r\no=- ${this.id} ${++this.#version} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:${this.#ufrag}\r\n${media}${tracks}`;
  }

  #setSignaling(state) {
    if (state === 'stable') this.#needed = false; // cleared on the way back to stable, then checked again
    this.signalingState = state;
  }

  // update fires negotiationneeded when a negotiation is needed, and the
  // flag was not set already.
  #update() {
    if (this.closed || this.#ops > 0 || this.signalingState !== 'stable') return;
    if (!this.#restart && this.#media === this.#negotiated) {
      this.#needed = false;
      return;
    }
    if (this.#needed) return;
    this.#needed = true;
    task(() => {
      if (this.#needed && !this.closed && this.signalingState === 'stable') this.onnegotiationneeded?.({});
    });
  }

  // gather trickles one candidate of the current ICE credentials, then the end.
  #gather() {
    const ufrag = this.#ufrag;
    if (this.#gathered.has(ufrag)) return;
    this.#gathered.add(ufrag);
    task(() => {
      if (this.closed) return;
      const found = [];
      if (this.config.iceTransportPolicy !== 'relay') found.push(`candidate:1 1 udp 2122260223 10.0.0.${this.id} 5000 typ host`);
      if (this.hasTURN) found.push(`candidate:3 1 udp 41885439 198.51.100.${this.id} 6000 typ relay raddr 0.0.0.0 rport 0`);
      for (const line of found) {
        const candidate = { candidate: line, sdpMid: '0', sdpMLineIndex: 0, usernameFragment: ufrag };
        this.onicecandidate?.({ candidate: { ...candidate, toJSON: () => candidate } });
      }
      this.onicecandidate?.({ candidate: null });
    });
  }

  // hasTURN reports whether the configuration names a TURN server.
  get hasTURN() {
    return (this.config.iceServers ?? []).some((s) => [s.urls].flat().some((u) => /^turns?:/.test(String(u))));
  }

  // completed connects once an offer/answer exchange is complete, unless
  // this side can gather no candidate (relay only, and no TURN server):
  // then ICE has no pair to check, and stays 'connecting'.
  #completed() {
    task(() => this.setState(this.config.iceTransportPolicy === 'relay' && !this.hasTURN ? 'connecting' : 'connected'));
  }
}

// ---- helpers ----

export async function until(what, cond, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

// settle lets every microtask chain and PeerConnection event run (under
// mock timers too, where until cannot poll).
export async function settle(rounds = 20) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

// clients are the clients newClient made, for resetFakes to close.
const clients = [];

// resetFakes closes every client newClient made and takes the fake node
// away, for an afterEach hook: no test's sockets or timers outlive it.
export function resetFakes() {
  for (const c of clients.splice(0)) c.close();
  FakeWS.node = null;
}

export function newClient(options = {}) {
  const client = new Parley({ url: 'ws://node.test/v1/ws', WebSocket: FakeWS, minDelay: 5, maxDelay: 40, ...options });
  clients.push(client);
  return client;
}

// welcomedClient is a client on a socket the test scripts, welcomed as
// session s1, with the 'close' events the client reports.
export async function welcomedClient() {
  FakeWS.all = [];
  const client = newClient();
  const closes = [];
  client.on('close', (e) => closes.push(e));
  await until('socket', () => FakeWS.all[0]?.readyState === 1);
  const ws = FakeWS.all[0];
  ws.push({ type: 'welcome', session: 's1', node: 'n1', user: 'u1', ping_ms: 25000 });
  return { client, ws, closes };
}

export function startNode(options) {
  FakeWS.all = [];
  FakePC.all = [];
  FakeWS.node = new FakeNode(options);
  return FakeWS.node;
}

// record keeps every event of a call, in order; an error event keeps the
// error's code, session and message, and the error itself.
export function record(call) {
  const events = [];
  for (const type of ['peer', 'leave', 'track', 'open', 'data', 'state', 'stats', 'restart', 'rejoined', 'ended', 'error']) {
    call.on(type, (v) => events.push({ type, ...(v instanceof Error ? { code: v.code, session: v.session, message: v.message, error: v } : v) }));
  }
  events.of = (type) => events.filter((e) => e.type === type);
  return events;
}

// joinAll makes a client per name that joins call, one after the other.
export async function joinAll(names, call = 'standup', options = {}) {
  const out = {};
  for (const name of names) {
    const client = newClient();
    const c = await client.join(call, { RTCPeerConnection: FakePC, statsInterval: 0, ...options });
    out[name] = { client, call: c, events: record(c) };
  }
  return out;
}

export const pcOf = (side, session) => side.call.peers.get(session).pc;
// sdpSignals are the signal frames a socket sent that carry a description of type.
export const sdpSignals = (ws, type) => ws.sentOf('signal').filter((f) => f.data.sdp?.type === type);
export const socketOf = (side) => FakeWS.all.find((ws) => ws.session === side.client.session);

export function connectedPair(a, b) {
  const ab = a.call.peers.get(b.call.session);
  const ba = b.call.peers.get(a.call.session);
  return ab?.state === 'connected' && ba?.state === 'connected';
}
