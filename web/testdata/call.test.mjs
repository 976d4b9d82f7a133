// Unit tests of parley.js's Call in Node, without a browser, on the fakes of
// callfakes.mjs: a scripted fake WebSocket, a fake node relaying the call
// frames of docs/CALLS.md between several clients, and a fake
// RTCPeerConnection on the W3C signaling state machine. They cover what a
// real call rarely does on cue: crossing offers from either side, a
// rollback, an ICE restart asked for while an offer is in flight,
// candidates before a description, the refresh of TURN credentials (and a
// refresh that never answers), a mesh of four, a client whose WebSocket
// drops mid-call, and explain's sentences. The last section holds the bugs
// a review found, each kept as a test that failed before its fix. Run with
// `node --test web/testdata/`; the browser tests make real calls.
import assert from 'node:assert/strict';
import { afterEach, mock, test } from 'node:test';
import { Call, ParleyError, explain } from '../static/parley.js';
import {
  FakePC,
  FakeWS,
  connectedPair,
  domError,
  joinAll,
  newClient,
  pcOf,
  record,
  resetFakes,
  sdpSignals,
  settle,
  socketOf,
  startNode,
  ufragOf,
  until,
  welcomedClient,
} from './callfakes.mjs';

afterEach(() => {
  resetFakes();
  mock.timers.reset();
});

// ---- tests ----

test('join resolves with the Call after the ack; a refused join rejects with the node\'s error', async () => {
  FakeWS.all = [];
  const client = newClient({ token: 'jwt' });
  const joined = client.join('standup', { RTCPeerConnection: FakePC, statsInterval: 0 });
  await until('socket', () => FakeWS.all[0]?.readyState === 1);
  const ws = FakeWS.all[0];
  assert.equal(ws.sentOf('join').length, 0, 'nothing is sent before the welcome');
  ws.push({ type: 'welcome', session: 's1', node: 'n1', user: 'u1', ping_ms: 25000 });
  const [join] = ws.sentOf('join');
  assert.deepEqual({ ...join, id: undefined }, { type: 'join', id: undefined, call: 'standup' });
  ws.push({
    type: 'ack',
    id: join.id,
    session: 's1',
    peers: [{ session: 's0', user: 'u0', polite: true }],
    polite: true,
    resume: 's1.r',
    resumed: false,
    relay: true,
    iceServers: [{ urls: ['turn:127.0.0.1:3478'], username: 'u', credential: 'c' }],
    ice_ttl: 3600,
  });
  const call = await joined;
  assert.ok(call instanceof Call);
  assert.equal(call.name, 'standup');
  assert.equal(call.session, 's1');
  assert.equal(call.relayOnly, true, 'the ack\'s relay makes the call relay only');
  // Events of what the ack started reach a listener added after the await.
  const events = record(call);
  await until('the peer event', () => events.of('peer').length === 1);
  assert.deepEqual(events.of('peer')[0], { type: 'peer', session: 's0', user: 'u0' });
  const peer = call.peers.get('s0');
  assert.equal(peer.polite, true);
  assert.equal(peer.pc.config.iceTransportPolicy, 'relay');
  assert.deepEqual(peer.pc.config.iceServers, [{ urls: ['turn:127.0.0.1:3478'], username: 'u', credential: 'c' }]);
  assert.deepEqual(client.calls(), ['standup']);
  await assert.rejects(client.join('standup'), (err) => err instanceof ParleyError && err.code === 'already_joined');

  // Refusals: a full call, a bad name.
  const full = client.join('full', { RTCPeerConnection: FakePC });
  const refused = ws.sentOf('join').at(-1);
  ws.push({ type: 'error', id: refused.id, code: 'forbidden', message: 'call full is full: at most 8 peers' });
  await assert.rejects(full, (err) => err.code === 'forbidden' && err.call === 'full');
  assert.equal(explain(await full.catch((e) => e)), 'The call is full (at most 8 people): wait for someone to leave, or start another call.');
  const bad = client.join('bad name', { RTCPeerConnection: FakePC });
  ws.push({ type: 'error', id: ws.sentOf('join').at(-1).id, code: 'bad_room', message: 'call names are 1 to 128 bytes of …' });
  await assert.rejects(bad, (err) => err.code === 'bad_room');
  assert.deepEqual(client.calls(), ['standup']);
});

test('two peers: the one that finds the other in its ack offers, the other answers; candidates trickle, ending with null', async () => {
  startNode();
  const { a, b } = await joinAll(['a', 'b']);
  assert.equal(a.call.session < b.call.session, true);
  await until('connected', () => connectedPair(a, b));
  // Roles: the greater session is polite.
  assert.equal(a.call.peers.get(b.call.session).polite, false);
  assert.equal(b.call.peers.get(a.call.session).polite, true);
  const wsA = socketOf(a);
  const wsB = socketOf(b);
  assert.equal(sdpSignals(wsB, 'offer').length, 1, 'b, which found a in its ack, offers');
  assert.equal(sdpSignals(wsA, 'offer').length, 0, 'a, which got b\'s join event, waits');
  assert.equal(sdpSignals(wsA, 'answer').length, 1);
  for (const ws of [wsA, wsB]) {
    const candidates = ws.sentOf('signal').filter((f) => 'candidate' in f.data);
    assert.equal(candidates.length, 2);
    assert.match(candidates[0].data.candidate.candidate, /typ host/);
    assert.deepEqual(candidates[1].data, { candidate: null }, 'the end of candidates');
  }
  for (const side of [a, b]) {
    const pc = pcOf(side, side === a ? b.call.session : a.call.session);
    assert.equal(pc.signalingState, 'stable');
    assert.equal(pc.refused.length, 0, `no operation refused: ${pc.refused.join(', ')}`);
    assert.equal(pc.remoteCandidates.length, 1);
    assert.equal(pc.endOfCandidates, 1);
    const [dc] = pc.channels;
    assert.deepEqual({ label: dc.label, negotiated: dc.negotiated, id: dc.id }, { label: 'parley', negotiated: true, id: 0 });
    assert.equal(pc.config.iceTransportPolicy, 'all');
  }
  await until('open', () => a.events.of('open').length === 1 && b.events.of('open').length === 1);
  assert.equal(a.call.send('hello'), 1);
  assert.equal(b.call.send('to nobody', 'ffff'), 0);
  assert.deepEqual(pcOf(a, b.call.session).channels[0].sent, ['hello']);
  // A message that arrives is a data event.
  pcOf(b, a.call.session).channels[0].onmessage({ data: 'hi back' });
  await until('data', () => b.events.of('data').length === 1);
  assert.deepEqual(b.events.of('data')[0], { type: 'data', session: a.call.session, data: 'hi back' });
  assert.deepEqual(a.events.of('state').map((e) => e.state), ['connected']);
  assert.equal(a.events.of('error').length + b.events.of('error').length, 0);
});

test('relayOnly makes every PeerConnection relay only; iceServers replace the ack\'s', async () => {
  startNode({ ack: { iceServers: [{ urls: ['stun:x'] }], ice_ttl: 3600 } });
  const { a, b } = await joinAll(['a', 'b'], 'standup', { relayOnly: true, iceServers: [{ urls: ['turn:mine'] }] });
  await until('connected', () => connectedPair(a, b));
  const pc = pcOf(b, a.call.session);
  assert.equal(pc.config.iceTransportPolicy, 'relay');
  assert.deepEqual(pc.config.iceServers, [{ urls: ['turn:mine'] }]);
});

// glare makes both peers of a connected pair offer at once (each restarts
// ICE), with the node holding the offers until both are made, then
// delivers the offer for `first` first.
async function glare(first) {
  startNode();
  const { a, b } = await joinAll(['a', 'b']);
  await until('connected', () => connectedPair(a, b));
  const [impolite, polite] = [a, b]; // a's session is the smaller: a is impolite toward b
  const wsI = socketOf(impolite);
  const wsP = socketOf(polite);
  const before = { offersI: sdpSignals(wsI, 'offer').length, offersP: sdpSignals(wsP, 'offer').length, answersI: sdpSignals(wsI, 'answer').length, answersP: sdpSignals(wsP, 'answer').length };
  const pcI = pcOf(impolite, polite.call.session);
  const pcP = pcOf(polite, impolite.call.session);
  const ufrags = [pcI.ufrag, pcP.ufrag];
  FakeWS.node.hold = true;
  impolite.call.restartIce();
  polite.call.restartIce();
  await until('both offers made', () => pcI.signalingState === 'have-local-offer' && pcP.signalingState === 'have-local-offer' && FakeWS.node.held.length >= 2);
  const offerI = pcI.localDescription.sdp;
  const offerP = pcP.localDescription.sdp;
  FakeWS.node.release(first === 'polite' ? impolite.call.session : polite.call.session);
  await until('stable', () => pcI.signalingState === 'stable' && pcP.signalingState === 'stable' && pcP.currentRemoteDescription?.sdp === offerI);
  await settle();
  // The impolite peer's offer is the exchange kept, answered once; the
  // polite peer's was rolled back, and the impolite peer answered nothing.
  assert.equal(pcI.currentLocalDescription.sdp, offerI);
  assert.equal(pcP.currentRemoteDescription.sdp, offerI);
  assert.equal(pcI.currentRemoteDescription.sdp, pcP.currentLocalDescription.sdp);
  assert.equal(pcP.currentLocalDescription.type, 'answer');
  assert.equal(sdpSignals(wsI, 'offer').length - before.offersI, 1);
  assert.equal(sdpSignals(wsP, 'offer').length - before.offersP, 1);
  assert.equal(sdpSignals(wsP, 'answer').length - before.answersP, 1);
  assert.equal(sdpSignals(wsI, 'answer').length - before.answersI, 0);
  assert.equal(pcP.rollbacks, 1, 'the polite peer rolled its offer back');
  assert.equal(pcI.rollbacks, 0);
  // ICE restarted: new credentials on both sides.
  assert.notEqual(ufragOf(pcI.currentLocalDescription.sdp), ufrags[0]);
  assert.notEqual(ufragOf(pcP.currentLocalDescription.sdp), ufrags[1]);
  assert.deepEqual([...pcI.refusedDescriptions, ...pcP.refusedDescriptions], []);
  // The only candidate refused is the one of the offer the impolite peer ignored.
  assert.deepEqual(pcI.refused.map((e) => e.message), [`unknown ufrag ${ufragOf(offerP)}`]);
  assert.deepEqual(pcP.refused, []);
  assert.deepEqual(
    [...impolite.events.of('restart'), ...polite.events.of('restart')].map((e) => e.reason),
    ['manual', 'manual'],
  );
  assert.equal(impolite.events.of('error').length + polite.events.of('error').length, 0);
}

// scriptedJoin starts a join of the call 'c' on a scripted socket and
// welcomes the client as session; the test answers the join itself.
async function scriptedJoin(session) {
  FakeWS.all = [];
  FakePC.all = [];
  const client = newClient();
  const joined = client.join('c', { RTCPeerConnection: FakePC, statsInterval: 0 });
  await until('socket', () => FakeWS.all[0]?.readyState === 1);
  const ws = FakeWS.all[0];
  ws.push({ type: 'welcome', session, node: 'n1', user: `u${session}`, ping_ms: 25000 });
  return { client, ws, joined };
}

test('glare, the polite peer\'s offer first: the impolite peer ignores it, the polite one rolls back and answers', () => glare('polite'));
test('glare, the impolite peer\'s offer first: the polite one rolls back and answers, the other ignores the late offer', () => glare('impolite'));

test('an explicit rollback frame takes back an offer left unanswered, and is ignored once it was answered', async () => {
  const { client, ws, joined } = await scriptedJoin('b');
  // The peer 'a' is in the ack: this client is polite toward it, and offers.
  ws.push({ type: 'ack', id: ws.sentOf('join')[0].id, session: 'b', peers: [{ session: 'a', user: 'ua', polite: true }], polite: true, resume: 'r', resumed: false });
  const call = await joined;
  const events = record(call);
  const pc = call.peers.get('a').pc;
  await until('the offer', () => sdpSignals(ws, 'offer').length === 1);
  const remote = new FakePC({});
  remote.createDataChannel('parley', { negotiated: true, id: 0 });
  const from = (data) => ({ type: 'signal', call: 'c', from: 'a', data });
  const rollback = from({ sdp: { type: 'rollback', sdp: '' } });
  // A rollback of an offer this side never applied (it is in have-local-offer) changes nothing.
  ws.push(rollback);
  await settle();
  assert.equal(pc.signalingState, 'have-local-offer');
  await remote.setRemoteDescription(sdpSignals(ws, 'offer')[0].data.sdp);
  await remote.setLocalDescription();
  ws.push(from({ sdp: remote.localDescription }));
  await until('stable', () => pc.signalingState === 'stable');

  // The remote offers, and this side's answer fails: the offer stays
  // unanswered (have-remote-offer) until the remote takes it back.
  pc.failNext = 'answer';
  await remote.setLocalDescription({ type: 'offer' });
  ws.push(from({ sdp: remote.localDescription }));
  await until('the failed answer', () => events.of('error').length === 1);
  assert.equal(events.of('error')[0].code, 'negotiation_failed');
  assert.equal(pc.signalingState, 'have-remote-offer');
  await remote.setLocalDescription({ type: 'rollback' });
  ws.push(rollback);
  await until('rolled back', () => pc.signalingState === 'stable');
  assert.equal(pc.remoteDescription.type, 'answer', 'back to the last exchange');

  // An offer and its rollback in one message: signals are applied in
  // order, so the offer is answered first and the rollback is ignored.
  const answers = sdpSignals(ws, 'answer').length;
  await remote.setLocalDescription({ type: 'offer' });
  ws.push(from({ sdp: remote.localDescription }), rollback);
  await until('the answer', () => sdpSignals(ws, 'answer').length === answers + 1);
  await settle();
  assert.equal(pc.signalingState, 'stable');
  assert.deepEqual(pc.refused.map((e) => e.message), ['setLocalDescription(answer) failed'], 'no rollback was refused');
  assert.equal(events.of('error').length, 1);
  // The fake refuses a rollback where a browser does.
  const lone = new FakePC({});
  await assert.rejects(lone.setRemoteDescription({ type: 'rollback' }), (err) => err.name === 'InvalidStateError');
});

test('an ICE restart asked for while an offer is in flight happens after that exchange, not lost', async () => {
  startNode();
  const { a, b } = await joinAll(['a', 'b']);
  await until('connected', () => connectedPair(a, b));
  const wsA = socketOf(a);
  const pcA = pcOf(a, b.call.session);
  const pcB = pcOf(b, a.call.session);
  const offers = sdpSignals(wsA, 'offer').length;
  const ufrag = pcA.ufrag;
  FakeWS.node.hold = true;
  // New media makes an offer with the same ICE credentials...
  a.call.setStream({ getTracks: () => [{ kind: 'audio', id: 'mic' }] });
  await until('the media offer', () => pcA.signalingState === 'have-local-offer');
  assert.equal(ufragOf(pcA.localDescription.sdp), ufrag);
  // ...and while it waits for its answer, ICE is to restart.
  a.call.restartIce(b.call.session);
  await settle();
  assert.equal(sdpSignals(wsA, 'offer').length, offers + 1, 'no second offer while the first is in flight');
  FakeWS.node.release();
  await until('the restart offer', () => sdpSignals(wsA, 'offer').length === offers + 2);
  await until('stable', () => pcA.signalingState === 'stable' && pcB.signalingState === 'stable');
  const restartOffer = sdpSignals(wsA, 'offer').at(-1).data.sdp.sdp;
  assert.notEqual(ufragOf(restartOffer), ufrag, 'the second offer restarts ICE');
  assert.equal(ufragOf(pcB.currentRemoteDescription.sdp), ufragOf(restartOffer));
  assert.notEqual(ufragOf(pcB.currentLocalDescription.sdp), ufragOf(sdpSignals(socketOf(b), 'answer')[0].data.sdp.sdp), 'b answered with new credentials too');
  assert.equal(pcA.refused.length + pcB.refused.length, 0);
  assert.deepEqual(a.events.of('restart'), [{ type: 'restart', session: b.call.session, reason: 'manual' }]);
});

test('a restart whose offer a polite peer rolls back for a crossing offer is made after that exchange', async () => {
  startNode();
  const { a, b } = await joinAll(['a', 'b']);
  await until('connected', () => connectedPair(a, b));
  const wsB = socketOf(b);
  const pcA = pcOf(a, b.call.session); // impolite
  const pcB = pcOf(b, a.call.session); // polite
  const ufragB = pcB.ufrag;
  const offersB = sdpSignals(wsB, 'offer').length;
  FakeWS.node.hold = true;
  // a offers new media (no restart) while b's restart offer is made.
  a.call.setStream({ getTracks: () => [{ kind: 'video', id: 'cam' }] });
  b.call.restartIce();
  await until('both offers', () => pcA.signalingState === 'have-local-offer' && pcB.signalingState === 'have-local-offer' && FakeWS.node.held.length >= 2);
  FakeWS.node.release(b.call.session);
  // b rolls its restart back to answer a's offer, which restarts nothing:
  // the restart is still due, and b offers it once that exchange is done.
  await until('the restart offer', () => sdpSignals(wsB, 'offer').length === offersB + 2);
  await until('stable', () => pcA.signalingState === 'stable' && pcB.signalingState === 'stable' && pcA.currentRemoteDescription.type === 'offer');
  await settle();
  assert.equal(pcB.rollbacks, 1);
  assert.notEqual(ufragOf(pcB.currentLocalDescription.sdp), ufragB, 'b restarted ICE');
  assert.equal(ufragOf(pcA.currentRemoteDescription.sdp), ufragOf(pcB.currentLocalDescription.sdp));
  assert.equal(sdpSignals(wsB, 'offer').length, offersB + 2, 'one restart, not more');
  assert.deepEqual([...pcA.refusedDescriptions, ...pcB.refusedDescriptions], []);
});

test('candidates before the remote description wait for it; signals of a peer not announced yet wait for its join', async () => {
  const { client, ws, joined } = await scriptedJoin('a');
  ws.push({ type: 'ack', id: ws.sentOf('join')[0].id, session: 'a', peers: [], polite: false, resume: 'r', resumed: false });
  const call = await joined;
  const events = record(call);
  const remote = new FakePC({});
  remote.createDataChannel('parley', { negotiated: true, id: 0 });
  await remote.setLocalDescription();
  const u = ufragOf(remote.localDescription.sdp);
  const cand = (n) => ({ candidate: `candidate:${n} 1 udp 1 10.1.1.${n} 500${n} typ host`, sdpMid: '0', sdpMLineIndex: 0, usernameFragment: u });
  // 'b' trickles before its join event is read, and before its offer.
  ws.push({ type: 'signal', call: 'c', from: 'b', data: { candidate: cand(1) } });
  await settle();
  assert.equal(call.peers.size, 0);
  ws.push({ type: 'peer', call: 'c', event: 'join', session: 'b', user: 'ub', polite: false });
  await until('the peer', () => call.peers.size === 1);
  const pc = call.peers.get('b').pc;
  ws.push({ type: 'signal', call: 'c', from: 'b', data: { candidate: cand(2) } }, { type: 'signal', call: 'c', from: 'b', data: { candidate: null } });
  await settle();
  assert.equal(pc.remoteDescription, null);
  assert.deepEqual(pc.refused, [], 'nothing was added before the remote description');
  assert.equal(sdpSignals(ws, 'offer').length, 0, 'the peer of a join event waits for its offer');
  ws.push({ type: 'signal', call: 'c', from: 'b', data: { sdp: remote.localDescription } });
  await until('the answer', () => sdpSignals(ws, 'answer').length === 1);
  await until('the candidates', () => pc.remoteCandidates.length === 2 && pc.endOfCandidates === 1);
  assert.deepEqual(pc.remoteCandidates.map((c) => c.candidate), [cand(1).candidate, cand(2).candidate]);
  assert.deepEqual(pc.refused, []);
  assert.equal(events.of('error').length, 0);
});

test('a peer of a join event whose offer never comes is offered to after 5 s', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  FakeWS.all = [];
  FakePC.all = [];
  const client = newClient();
  const joined = client.join('c', { RTCPeerConnection: FakePC, statsInterval: 0 });
  await settle();
  const ws = FakeWS.all[0];
  ws.push({ type: 'welcome', session: 'a', node: 'n1', user: 'ua', ping_ms: 1e9 });
  ws.push({ type: 'ack', id: ws.sentOf('join')[0].id, session: 'a', peers: [], polite: false, resume: 'r', resumed: false });
  await joined;
  ws.push({ type: 'peer', call: 'c', event: 'join', session: 'b', user: 'ub', polite: false });
  await settle();
  mock.timers.tick(4999);
  await settle();
  assert.equal(sdpSignals(ws, 'offer').length, 0);
  mock.timers.tick(1);
  await settle();
  assert.equal(sdpSignals(ws, 'offer').length, 1);
});

// scriptedCall joins call 'c' on a scripted socket with an ack listing
// peers, under mock timers; the welcome's ping_ms is long so that moving
// the clock does not end the connection.
async function scriptedCall(ack, options = {}) {
  FakeWS.all = [];
  FakePC.all = [];
  const fetches = [];
  const answers = []; // what the next fetches answer: {status, body}
  const fetch = async (url, init) => {
    fetches.push({ url, init, at: Date.now() });
    const a = answers.shift() ?? { status: 500, body: '{"error":{"code":"internal","message":"down"}}' };
    return { ok: a.status === 200, status: a.status, text: async () => a.body, json: async () => JSON.parse(a.body) };
  };
  const client = newClient({ token: 'jwt' });
  const joined = client.join('c', { RTCPeerConnection: FakePC, statsInterval: 0, fetch, ...options });
  await settle();
  const ws = FakeWS.all[0];
  ws.push({ type: 'welcome', session: 'm', node: 'n1', user: 'um', ping_ms: 1e9 });
  ws.push({ type: 'ack', id: ws.sentOf('join')[0].id, session: 'm', polite: false, resume: 'm.r', resumed: false, ...ack });
  const call = await joined;
  const events = record(call);
  mock.timers.tick(0);
  await settle();
  return { client, call, ws, events, fetches, answers };
}

test('TURN credentials are fetched again at 80% of ice_ttl and set on every PeerConnection; a failed fetch is retried', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const peers = [
    { session: 'a', user: 'ua', polite: true },
    { session: 'b', user: 'ub', polite: true },
    { session: 'c', user: 'uc', polite: true },
  ];
  const { call, fetches, answers } = await scriptedCall({ peers, relay: true, iceServers: [{ urls: ['turn:old'], username: '1:u', credential: 'x' }], ice_ttl: 3600 });
  const pcs = [...call.peers.values()].map((p) => p.pc);
  assert.equal(pcs.length, 3);
  mock.timers.tick(2880 * 1000 - 1);
  await settle();
  assert.equal(fetches.length, 0, 'not before 80% of the ttl');
  const fresh = [{ urls: ['turn:new'], username: '2:u', credential: 'y' }];
  answers.push({ status: 200, body: JSON.stringify({ iceServers: fresh, ttl: 100 }) });
  mock.timers.tick(1);
  await settle();
  assert.equal(fetches.length, 1);
  assert.equal(fetches[0].url, 'http://node.test/v1/ice-servers');
  assert.equal(fetches[0].init.headers.Authorization, 'Bearer jwt');
  for (const pc of pcs) {
    assert.equal(pc.configs.length, 2, 'setConfiguration once');
    assert.deepEqual(pc.config.iceServers, fresh);
    assert.equal(pc.config.iceTransportPolicy, 'relay', 'the relay policy stays');
  }
  // ttl 100: 80 s would leave less than 30 s, so at 70 s. It fails, and is
  // tried again after 5 s, then 10 s.
  mock.timers.tick(70 * 1000 - 1);
  await settle();
  assert.equal(fetches.length, 1);
  mock.timers.tick(1);
  await settle();
  assert.equal(fetches.length, 2);
  mock.timers.tick(5000);
  await settle();
  assert.equal(fetches.length, 3);
  answers.push({ status: 200, body: JSON.stringify({ iceServers: [{ urls: ['turn:newer'] }], ttl: 3600 }) });
  mock.timers.tick(9999);
  await settle();
  assert.equal(fetches.length, 3);
  mock.timers.tick(1);
  await settle();
  assert.equal(fetches.length, 4);
  for (const pc of pcs) assert.deepEqual(pc.config.iceServers, [{ urls: ['turn:newer'] }]);
  assert.deepEqual(fetches.map((f) => f.at - fetches[0].at), [0, 70000, 75000, 85000]);
});

test('a refresh of TURN credentials that never answers is aborted and tried again: the fetch is given an AbortSignal', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  // AbortSignal.timeout runs on Node's own timers, which mock timers do not
  // move; this one runs on the mocked setTimeout, so the test's clock moves
  // it as it moves the SDK's other timers.
  const timeout = AbortSignal.timeout;
  AbortSignal.timeout = (ms) => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new DOMException('The operation timed out.', 'TimeoutError')), ms);
    return controller.signal;
  };
  try {
    const fresh = [{ urls: ['turn:new'], username: '2:u', credential: 'y' }];
    const fetches = [];
    // The first request hangs, as one to a node that took the connection
    // and never answers does: it ends only when its signal aborts it.
    const fetch = (url, init) => {
      fetches.push({ url, init, at: Date.now() });
      if (fetches.length > 1) {
        const body = JSON.stringify({ iceServers: fresh, ttl: 3600 });
        return Promise.resolve({ ok: true, status: 200, text: async () => body, json: async () => JSON.parse(body) });
      }
      return new Promise((resolve, reject) => {
        init?.signal?.addEventListener('abort', () => reject(init.signal.reason), { once: true });
      });
    };
    const { call } = await scriptedCall(
      { peers: [{ session: 'a', user: 'ua', polite: true }], iceServers: [{ urls: ['turn:old'], username: '1:u', credential: 'x' }], ice_ttl: 100 },
      { fetch },
    );
    const pc = call.peers.get('a').pc;
    // ttl 100: the refresh is due at 70 s.
    mock.timers.tick(70 * 1000);
    await settle();
    assert.equal(fetches.length, 1);
    const { signal } = fetches[0].init;
    assert.ok(signal instanceof AbortSignal, `the refresh fetch is given no AbortSignal (signal: ${signal}): a request that never answers would stop the refreshing`);
    assert.equal(signal.aborted, false);
    // Within a minute the hung request is aborted and the refresh tried again.
    for (let s = 0; s < 60 && fetches.length < 2; s++) {
      mock.timers.tick(1000);
      await settle(4);
    }
    assert.equal(signal.aborted, true, 'the hung request was not aborted within a minute');
    assert.equal(fetches.length, 2, 'the refresh was not tried again after the hung request');
    await settle();
    assert.deepEqual(pc.config.iceServers, fresh, 'the retry\'s ICE servers are set');
    assert.ok(fetches[1].init.signal instanceof AbortSignal, 'the retry is bounded too');
  } finally {
    AbortSignal.timeout = timeout;
  }
});

test('ICE restarts: at once on failed by the impolite peer, 3 s later by the polite; after 3 s disconnected', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const { call, ws, events } = await scriptedCall({ peers: [{ session: 'a', user: 'ua', polite: false }, { session: 'z', user: 'uz', polite: true }] });
  const answer = async (session) => {
    const pc = call.peers.get(session).pc;
    const offer = sdpSignals(ws, 'offer').filter((f) => f.to === session).at(-1);
    const remote = new FakePC({});
    remote.createDataChannel('parley', { negotiated: true, id: 0 });
    await remote.setRemoteDescription(offer.data.sdp);
    await remote.setLocalDescription();
    ws.push({ type: 'signal', call: 'c', from: session, data: { sdp: remote.localDescription } });
    await settle();
    return pc;
  };
  const impolite = await answer('a');
  const polite = await answer('z');
  assert.equal(impolite.connectionState, 'connected');
  const restarts = () => events.of('restart').map((e) => `${e.session}:${e.reason}`);
  impolite.setState('failed');
  polite.setState('failed');
  await settle();
  assert.deepEqual(restarts(), ['a:failed']);
  assert.deepEqual(events.of('error').map((e) => `${e.code}:${e.session}`), ['ice_failed:a', 'ice_failed:z']);
  assert.equal(explain(new ParleyError('ice_failed')), "The call could not connect: try 'relay only' or another network.");
  mock.timers.tick(2999);
  await settle();
  assert.deepEqual(restarts(), ['a:failed']);
  mock.timers.tick(1);
  await settle();
  assert.deepEqual(restarts(), ['a:failed', 'z:failed']);
  // Each restart is an offer with new credentials.
  const offers = sdpSignals(ws, 'offer');
  assert.equal(offers.length, 4);
  assert.notEqual(ufragOf(offers[2].data.sdp.sdp), ufragOf(offers[0].data.sdp.sdp));

  // Disconnected: the impolite peer restarts after 3 s, unless it recovers.
  await answer('a');
  await answer('z');
  impolite.setState('disconnected');
  mock.timers.tick(2000);
  impolite.setState('connected');
  mock.timers.tick(5000);
  await settle();
  assert.equal(restarts().length, 2, 'a recovered connection is not restarted');
  impolite.setState('disconnected');
  mock.timers.tick(3000);
  await settle();
  assert.deepEqual(restarts().slice(2), ['a:disconnected']);
});

test('stats: the selected pair\'s type (relay when either side is), rtt in ms and protocol, every statsInterval', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const { call, ws, events } = await scriptedCall({ peers: [{ session: 'a', user: 'ua', polite: false }] }, { statsInterval: 1000 });
  const pc = call.peers.get('a').pc;
  const remote = new FakePC({});
  remote.createDataChannel('parley', { negotiated: true, id: 0 });
  await remote.setRemoteDescription(sdpSignals(ws, 'offer')[0].data.sdp);
  await remote.setLocalDescription();
  ws.push({ type: 'signal', call: 'c', from: 'a', data: { sdp: remote.localDescription } });
  await settle();
  assert.equal(pc.connectionState, 'connected');
  assert.deepEqual(events.of('stats'), [{ type: 'stats', session: 'a', pair: 'relay', rtt: 12.3, protocol: 'tcp' }]);
  // A browser without selectedCandidatePairId: the nominated pair that succeeded.
  pc.stats = new Map([
    ['CPx', { type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', nominated: false, state: 'failed' }],
    ['CP', { type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', nominated: true, state: 'succeeded', currentRoundTripTime: 0.001 }],
    ['L', { type: 'local-candidate', candidateType: 'srflx', protocol: 'udp' }],
    ['R', { type: 'remote-candidate', candidateType: 'host', protocol: 'udp' }],
  ]);
  mock.timers.tick(1000);
  await settle();
  assert.deepEqual(events.of('stats').at(-1), { type: 'stats', session: 'a', pair: 'srflx', rtt: 1, protocol: 'udp' });
  const peer = call.peers.get('a');
  assert.deepEqual({ pair: peer.pair, rtt: peer.rtt, protocol: peer.protocol }, { pair: 'srflx', rtt: 1, protocol: 'udp' });
  mock.timers.tick(1000);
  await settle();
  assert.equal(events.of('stats').length, 3);
});

test('mesh: four peers, one PeerConnection per pair with opposite roles; a leave closes one; a resume restarts from the impolite side', async () => {
  startNode();
  const sides = await joinAll(['a', 'b', 'c', 'd']);
  const all = Object.values(sides);
  const pairs = [];
  for (let i = 0; i < all.length; i++) for (let j = i + 1; j < all.length; j++) pairs.push([all[i], all[j]]);
  await until('every pair connected', () => pairs.every(([x, y]) => connectedPair(x, y)));
  for (const side of all) {
    assert.equal(side.call.peers.size, 3);
    for (const [session, peer] of side.call.peers) assert.equal(peer.polite, side.call.session > session, `${side.call.session} toward ${session}`);
    // Each pair negotiated once: the later peer offered, the earlier answered.
    const ws = socketOf(side);
    const later = all.filter((o) => o.call.session < side.call.session).length;
    assert.equal(sdpSignals(ws, 'offer').length, later, `${side.call.session} offers to the peers in its ack`);
    assert.equal(sdpSignals(ws, 'answer').length, 3 - later);
  }
  assert.equal(FakePC.all.length, 12);

  // c leaves: its three PeerConnections close, and one on each other side.
  const { a, b, c, d } = sides;
  await c.call.leave();
  assert.deepEqual(c.events.of('ended'), [{ type: 'ended', reason: 'left' }]);
  assert.ok([...c.call.peers.values()].length === 0);
  for (const side of [a, b, d]) {
    await until('the leave', () => side.events.of('leave').length === 1);
    assert.deepEqual(side.events.of('leave')[0], { type: 'leave', session: c.call.session, user: c.client.user });
    assert.equal(side.call.peers.size, 2);
  }
  assert.equal(FakePC.all.filter((pc) => pc.closed).length, 6);

  // b's connection drops; it rejoins as itself. In each of its pairs the
  // impolite side restarts ICE: a toward b (a's session is the smaller; it
  // hears b resume), and b toward d (after its own rejoin).
  socketOf(b).drop();
  await until('the rejoin', () => b.events.of('rejoined').length === 1);
  assert.deepEqual(b.events.of('rejoined')[0], { type: 'rejoined', resumed: true });
  await until('restarts', () => a.events.of('restart').length === 1 && b.events.of('restart').length === 1);
  await settle();
  assert.deepEqual(a.events.of('restart'), [{ type: 'restart', session: b.call.session, reason: 'resume' }]);
  assert.deepEqual(b.events.of('restart'), [{ type: 'restart', session: d.call.session, reason: 'reconnect' }]);
  assert.equal(d.events.of('restart').length, 0);
  await until('connected again', () => connectedPair(a, b) && connectedPair(b, d) && connectedPair(a, d));
  assert.equal(b.call.peers.size, 2);
});

test('resume: after a drop the call is joined again with its token after the welcome; signals made meanwhile follow the ack', async () => {
  let { client, ws, joined } = await scriptedJoin('m');
  ws.push({
    type: 'ack',
    id: ws.sentOf('join')[0].id,
    session: 'm',
    peers: [
      { session: 'a', user: 'ua', polite: true },
      { session: 'z', user: 'uz', polite: false },
    ],
    polite: false,
    resume: 'm.token',
    resumed: false,
    iceServers: [{ urls: ['stun:old'] }],
  });
  const call = await joined;
  const events = record(call);
  await until('offers', () => sdpSignals(ws, 'offer').length === 2);
  for (const f of ws.sentOf('signal')) ws.push({ type: 'ack', id: f.id });
  const pcA = call.peers.get('a').pc;
  const pcZ = call.peers.get('z').pc;
  // Both answer.
  for (const [session, pc] of [['a', pcA], ['z', pcZ]]) {
    const remote = new FakePC({});
    remote.createDataChannel('parley', { negotiated: true, id: 0 });
    await remote.setRemoteDescription(sdpSignals(ws, 'offer').find((f) => f.to === session).data.sdp);
    await remote.setLocalDescription();
    ws.push({ type: 'signal', call: 'c', from: session, data: { sdp: remote.localDescription } });
    await until('connected', () => pc.connectionState === 'connected');
  }

  ws.drop();
  // While away, a restart toward z makes an offer that waits for the rejoin.
  call.restartIce('z');
  await until('the restart offer', () => pcZ.signalingState === 'have-local-offer');
  await until('the new socket', () => FakeWS.all[1]?.readyState === 1);
  ws = FakeWS.all[1];
  assert.equal(ws.sent.length, 0);
  ws.push({ type: 'welcome', session: 'n', node: 'n2', user: 'um', ping_ms: 25000 });
  const [rejoin] = ws.sentOf('join');
  assert.deepEqual({ ...rejoin, id: undefined }, { type: 'join', id: undefined, call: 'c', resume: 'm.token' });
  assert.equal(ws.sent[0], rejoin, 'the rejoin is the first frame after the welcome');
  assert.equal(ws.sentOf('signal').length, 0, 'no signal before the rejoin\'s ack');
  // z left while this peer was away; y joined.
  ws.push(
    { type: 'ack', id: rejoin.id, session: 'm', peers: [{ session: 'a', user: 'ua', polite: true }, { session: 'y', user: 'uy', polite: true }], polite: true, resume: 'm.token', resumed: true, iceServers: [{ urls: ['stun:new'] }], ice_ttl: 60 },
    { type: 'signal', call: 'c', from: 'a', data: { candidate: null } },
  );
  await until('the rejoin', () => events.of('rejoined').length === 1);
  await settle();
  assert.equal(call.session, 'm', 'a resumed peer keeps its session');
  assert.deepEqual(events.of('leave'), [{ type: 'leave', session: 'z', user: 'uz' }]);
  assert.ok(pcZ.closed);
  assert.deepEqual(events.of('peer').map((e) => e.session), ['a', 'z', 'y']);
  assert.deepEqual(pcA.config.iceServers, [{ urls: ['stun:new'] }], 'the new ack\'s ICE servers');
  assert.equal(pcA.endOfCandidates, 1, 'the signal held for the rejoin was applied after its ack');
  // This peer is polite toward a: it leaves the restart to a.
  assert.equal(events.of('restart').filter((e) => e.reason === 'reconnect').length, 0);
  assert.equal(sdpSignals(ws, 'offer').length, 0, 'the offer to z, which left, is not sent');

  // Dropped again, and back too late: a new peer, with new PeerConnections.
  ws.drop();
  await until('the third socket', () => FakeWS.all[2]?.readyState === 1);
  ws = FakeWS.all[2];
  ws.push({ type: 'welcome', session: 'q', node: 'n1', user: 'um', ping_ms: 25000 });
  const [late] = ws.sentOf('join');
  assert.equal(late.resume, 'm.token');
  ws.push({ type: 'ack', id: late.id, session: 'q', peers: [{ session: 'a', user: 'ua', polite: true }], polite: true, resume: 'q.token', resumed: false });
  await until('the second rejoin', () => events.of('rejoined').length === 2);
  assert.deepEqual(events.of('rejoined')[1], { type: 'rejoined', resumed: false });
  assert.equal(call.session, 'q');
  assert.ok(pcA.closed);
  const pcA2 = call.peers.get('a').pc;
  assert.notEqual(pcA2, pcA);
  assert.deepEqual(call.peers.get('a').polite, true);
  await until('a new offer', () => sdpSignals(ws, 'offer').length === 1);
  assert.equal(sdpSignals(ws, 'offer')[0].to, 'a');
  // The next rejoin uses the new token.
  ws.drop();
  await until('the fourth socket', () => FakeWS.all[3]?.readyState === 1);
  ws = FakeWS.all[3];
  ws.push({ type: 'welcome', session: 'r', node: 'n1', user: 'um', ping_ms: 25000 });
  assert.equal(ws.sentOf('join')[0].resume, 'q.token');
});

test('a rejoin refused for now reconnects to try again; refused for good, the call ends', async () => {
  startNode();
  const { a, b } = await joinAll(['a', 'b']);
  await until('connected', () => connectedPair(a, b));
  const node = FakeWS.node;
  node.refuse = { code: 'internal', message: 'join failed: the message bus is unavailable; try again shortly' };
  const closes = [];
  b.client.on('close', (e) => closes.push(e.code));
  socketOf(b).drop();
  await until('the retry', () => b.events.of('rejoined').length === 1);
  assert.deepEqual(closes, [1006, 4002]);
  assert.deepEqual(b.events.of('error').map((e) => e.code), ['internal']);
  assert.equal(b.events.of('ended').length, 0);
  node.refuse = { code: 'forbidden', message: 'not allowed to join call standup' };
  socketOf(b).drop();
  await until('the end', () => b.events.of('ended').length === 1);
  assert.equal(b.events.of('ended')[0].reason, 'refused');
  assert.equal(b.events.of('ended')[0].error.code, 'forbidden');
  assert.ok(b.call.ended);
  assert.equal(b.call.peers.size, 0);
  assert.deepEqual(b.client.calls(), []);
});

test('close() leaves every call: the node hears a leave, the call ends with closed', async () => {
  startNode();
  const { a, b } = await joinAll(['a', 'b']);
  await until('connected', () => connectedPair(a, b));
  const ws = socketOf(a);
  a.client.close();
  assert.equal(ws.sentOf('leave').length, 1);
  assert.deepEqual(a.events.of('ended'), [{ type: 'ended', reason: 'closed' }]);
  await until('b hears it', () => b.events.of('leave').length === 1);
  await assert.rejects(a.client.join('other'), (err) => err.code === 'closed');
});

test('explain says what to do for errors, closes and camera failures', () => {
  const err = (code, message, extra = {}) => Object.assign(new ParleyError(code, message), extra);
  const cases = [
    [err('unauthorized', 'token expired at 2026-01-01T00:00:00Z'), 'Your token has expired: sign in again to get a fresh token.'],
    [err('unauthorized', 'missing token: send Authorization: Bearer <token>'), 'This node checks tokens, and none was given: sign in again to get a fresh token.'],
    [err('forbidden', 'not allowed to subscribe to secret', { room: 'secret' }), 'Your token does not allow the room secret: pick another room, or use a token that allows it.'],
    [err('forbidden', 'not allowed to join call team:9', { call: 'team:9' }), 'Your token does not allow joining the call team:9: pick another call, or use a token that allows it.'],
    [err('forbidden', 'call standup is full: at most 8 peers'), 'The call is full (at most 8 people): wait for someone to leave, or start another call.'],
    [err('bad_room', 'room names are 1 to 128 bytes'), 'That name cannot be used: room and call names are 1 to 128 letters, digits or _ . : @ - characters.'],
    [err('rate_limited', 'publish rate exceeded'), 'That was faster than the node allows: wait a moment and try again.'],
    [err('internal', 'the message bus is unavailable', { room: 'lobby', retrying: true }), 'Rejoining lobby failed for a moment (the message bus is unavailable): trying again.'],
    [err('over_capacity', 'this node holds as many rooms and calls as it may; try again later'), 'The node holds as many rooms and calls as it may: try again in a few seconds, or on another node.'],
    [err('draining', 'this node is draining'), 'The node is shutting down: reconnecting, to another node if there is one.'],
    [err('not_found', 'no such room'), 'Not found: no such room.'],
    [err('too_large', 'frame too large'), 'That is larger than the node takes: send something smaller.'],
    [err('timeout', 'publish: no answer within 10000 ms'), 'The node did not answer in time: check your connection, and try again.'],
    [err('closed', 'the client is closed'), 'Not connected to the node: connect again to carry on.'],
    ['ice_failed', "The call could not connect: try 'relay only' or another network."],
    [err('ice_failed', 'relay only, and no TURN server to reach peer 0002 through'), "Relay only is on, but this node offers no TURN relay: turn Relay only off, or ask the node's operator to enable TURN."],
    [{ code: 1013, reason: 'slow consumer', wasClean: true }, 'This page read its messages too slowly (a slow network, or a busy tab), so the node closed the connection: reconnecting, and catching up on what was missed.'],
    [{ code: 1008, reason: 'token expired', wasClean: true }, 'Your token has expired: paste a new one.'],
    [{ code: 1012, reason: 'draining' }, 'The node is shutting down: reconnecting, to another node if there is one.'],
    [{ code: 1000, reason: 'draining', wasClean: true }, 'The node is shutting down: reconnecting, to another node if there is one.'],
    [{ code: 1000, reason: 'closed by client', wasClean: true }, 'The connection was closed.'],
    [{ code: 1012, reason: 'history lost' }, 'The node lost the recent history of a room (its message store restarted): reconnecting; messages sent meanwhile may be missing.'],
    [{ code: 1001, reason: 'heartbeat timeout' }, 'The node stopped hearing from this page (a sleeping tab, or a lost network), so it closed the connection: reconnecting.'],
    [{ code: 4001, reason: 'heartbeat timeout' }, 'Nothing was heard from the node for too long, so the network may be down: reconnecting.'],
    [domError('NotAllowedError', 'Permission denied'), 'The camera and microphone are blocked for this page: allow them in the browser\u2019s site settings (the icon beside the address), or join without them.'],
    [domError('NotFoundError', 'Requested device not found'), 'No camera or microphone was found: plug one in, or join without them.'],
    [domError('NotReadableError', 'Could not start video source'), 'The camera or microphone is in use by another application, or did not start: close that application and try again.'],
    [domError('OverconstrainedError', ''), 'The camera cannot give the picture asked for: try another camera, or the default settings.'],
  ];
  for (const [x, want] of cases) {
    const opts = x.code === 1008 ? { token: 'paste a new one' } : {};
    assert.equal(explain(x, opts), want);
  }
  // The same code first time (not retried) does not promise a retry.
  assert.equal(explain(err('internal', 'bus down', { room: 'lobby' })), 'The node had a problem (bus down): try again shortly.');
});

test('a drain the node does not end itself: the client leaves with 1000 draining, and explain says the node is shutting down', async () => {
  const { ws, closes } = await welcomedClient();
  // The node asks the client to move and does not close the connection
  // itself (its 1012 is late, or a proxy holds it): after after_ms the
  // client leaves with 1000 'draining', and says why.
  ws.push({ type: 'reconnect', after_ms: 20, reason: 'draining' });
  await until('the client leaves', () => closes.length === 1, 10000);
  assert.deepEqual(closes[0], { code: 1000, reason: 'draining', wasClean: true });
  assert.equal(ws.closedWith, 1000);
  assert.equal(explain(closes[0]), 'The node is shutting down: reconnecting, to another node if there is one.');
  await until('the client dials again', () => FakeWS.all.length === 2, 10000);
});

// ---- bugs found in review ----
//
// Each test below shows a bug a person would notice, and failed on parley.js
// until that bug was fixed. They lean on what callfakes.mjs does as a
// browser and a node do: a reconnecting client kept away for a moment,
// signals slower than the browsers, relay only gathering nothing without a
// TURN server, and JSEP's refusal of an answer that keeps the old ICE
// credentials of a restart.
test('after a peer resumes, the answer to the offer sent again is not applied to the ICE restart that follows (no "leave and join again" error)', async () => {
  const node = startNode();
  const { a, b } = await joinAll(['a', 'b']);
  await until('connected', () => connectedPair(a, b));
  const pcA = pcOf(a, b.call.session); // a's session is the smaller: a is impolite toward b
  const pcB = pcOf(b, a.call.session);
  assert.equal(a.call.peers.get(b.call.session).polite, false);

  // b's network blips: its WebSocket drops, and its new one is held away
  // for a moment; a sees the connection to b go disconnected and, being the
  // impolite side, restarts ICE after 3 s. That offer waits for b at the node.
  node.gate = true;
  socketOf(b).drop();
  pcA.setState('disconnected');
  await until('a\'s restart offer held for b', () => {
    const away = [...node.calls.get('standup').values()].find((p) => p.session === b.call.session)?.away ?? [];
    return away.some((f) => f.data?.sdp?.type === 'offer');
  }, 10000);
  const offer1 = pcA.localDescription.sdp;

  // b comes back within the grace period: its ack, then a's offer; a hears
  // `resume`, sends its offer again (b might not have it) and, impolite,
  // restarts ICE once that exchange is done. The network is slower than the
  // browsers: signals take a while.
  node.hold = true;
  node.admit();
  await until('b rejoined', () => b.events.of('rejoined').length === 1);
  await until('b answered the held offer', () => node.held.some(([to, f]) => to.session === a.call.session && f.data?.sdp?.type === 'answer'));
  await until('a sent its offer again', () => node.held.some(([to, f]) => to.session === b.call.session && f.data?.sdp?.sdp === offer1));
  // b's answer reaches a first; a makes its next offer (the restart).
  node.deliverHeld((to) => to.session === a.call.session);
  await until('a\'s next offer', () => pcA.signalingState === 'have-local-offer' && pcA.localDescription.sdp !== offer1);
  // Then everything else: b answers the copy of the first offer, then the new one.
  node.release();
  await until('both stable', () => pcA.signalingState === 'stable' && pcB.signalingState === 'stable' && pcB.currentRemoteDescription.sdp === pcA.currentLocalDescription.sdp);
  await settle();
  await new Promise((r) => setTimeout(r, 100));
  await settle();

  // Each side's view of the other's ICE credentials is what the other uses
  // (a browser that took the stale answer would check b with credentials b
  // no longer has, and refuse b's new candidates)...
  assert.equal(ufragOf(pcA.currentRemoteDescription.sdp), ufragOf(pcB.currentLocalDescription.sdp));
  assert.equal(ufragOf(pcB.currentRemoteDescription.sdp), ufragOf(pcA.currentLocalDescription.sdp));
  // ...and nothing told the person to leave a call that works.
  assert.deepEqual(
    a.events.of('error').map((e) => `${e.code}: ${e.message}`),
    [],
    'the answer to the copy of a\'s first offer was applied to its restart offer',
  );
  assert.deepEqual(pcA.refusedDescriptions.map((e) => e.message), []);
});

test('relay only on a node that gives no TURN server: the Call reports that it cannot connect, instead of waiting forever', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  // A node with STUN only (no TURN URL in its iceServers).
  startNode({ pingMs: 1e9, ack: { iceServers: [{ urls: ['stun:127.0.0.1:3478'] }], ice_ttl: 3600 } });
  const { a, b } = await joinAll(['a', 'b'], 'standup', { relayOnly: true });
  mock.timers.tick(0);
  await settle();
  const pcA = pcOf(a, b.call.session);
  const pcB = pcOf(b, a.call.session);
  assert.equal(pcA.config.iceTransportPolicy, 'relay');
  assert.equal(pcA.signalingState, 'stable', 'the descriptions were exchanged');
  assert.equal(pcB.signalingState, 'stable');
  // Relay only gathers nothing without a TURN server: no pair, no 'failed'.
  assert.equal(pcA.remoteCandidates.length + pcB.remoteCandidates.length, 0);
  // A minute later the person still has no word of it.
  for (let s = 0; s < 60; s++) {
    mock.timers.tick(1000);
    await settle(2);
  }
  assert.equal(a.call.peers.get(b.call.session).state, 'connecting');
  for (const side of [a, b]) {
    const errors = side.events.of('error');
    assert.ok(errors.length > 0, `no error on ${side.call.session}: the call shows 'connecting' for ever (states: ${side.events.of('state').map((e) => e.state).join(', ')})`);
    // What the page shows says why, and what to change.
    assert.equal(explain(errors[0].error), "Relay only is on, but this node offers no TURN relay: turn Relay only off, or ask the node's operator to enable TURN.");
  }
});

test('close() while a join is in flight leaves the call: the other peers do not see a ghost for the grace period', async () => {
  const node = startNode();
  const { a } = await joinAll(['a']);
  const client = newClient();
  await until('welcome', () => client.state === 'open');
  const ws = FakeWS.all.at(-1);
  // The person presses Join, then Leave (or the page closes its client)
  // before the ack: the join frame is on its way to the node.
  const joining = client.join('standup', { RTCPeerConnection: FakePC, statsInterval: 0 });
  client.close();
  await assert.rejects(joining, (err) => err.code === 'closed');
  await settle();
  // The node took the join, then saw the connection go: the peer is away,
  // and stays in the call for the grace period (10 s by default).
  assert.equal(a.events.of('peer').length, 1, 'a saw the peer join');
  assert.deepEqual(ws.sentOf('leave').map((f) => f.call), ['standup'], 'no leave was sent with the join in flight');
  await until('a sees it leave', () => a.events.of('leave').length === 1, 1000);
  assert.equal(node.calls.get('standup').size, 1);
});

test('TURN credentials valid for a year (--ice-ttl 8760h) are not fetched again in a loop', async () => {
  // setTimeout holds a delay in 32 bits: a browser (and Node) runs a timer
  // of more than 2^31-1 ms (24.8 days) at once.
  const year = 365 * 24 * 3600;
  const turn = [{ urls: ['turn:127.0.0.1:3478?transport=udp'], username: 'u', credential: 'c' }];
  startNode({ ack: { iceServers: turn, ice_ttl: year } });
  const fetches = [];
  const fetch = async (url) => {
    fetches.push(url);
    const body = JSON.stringify({ iceServers: turn, ttl: year });
    return { ok: true, status: 200, text: async () => body, json: async () => JSON.parse(body) };
  };
  // Node says so with a TimeoutOverflowWarning each time: counted here, not printed.
  let overflows = 0;
  const emitWarning = process.emitWarning;
  process.emitWarning = (w, type, ...rest) => {
    if (type === 'TimeoutOverflowWarning') overflows++;
    else emitWarning.call(process, w, type, ...rest);
  };
  let call = null;
  try {
    ({ call } = (await joinAll(['a'], 'standup', { fetch })).a);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(fetches.length, 0, `GET /v1/ice-servers ${fetches.length} times in 0.1 s (${overflows} timers over 2^31-1 ms)`);
  } finally {
    // Leaving ends the loop.
    await call?.leave();
    process.emitWarning = emitWarning;
  }
});

test('explain: the 1012 close after a room\'s history was lost does not say the node is shutting down', async () => {
  // gateway/hub.go: when Redis lost a room's history, every member gets
  // {"type":"reconnect","reason":"history lost"} and its connection is
  // closed at once with 1012 "history lost" (session.leave); the node
  // itself goes on. Only a drain closes with 1012 "draining".
  const { ws, closes } = await welcomedClient();
  ws.push({ type: 'reconnect', after_ms: 1500, reason: 'history lost' });
  ws.drop(1012, 'history lost');
  assert.deepEqual(closes.map((e) => [e.code, e.reason]), [[1012, 'history lost']]);
  const said = explain(closes[0]);
  assert.doesNotMatch(said, /shutting down/, `explain says: ${said}`);
  assert.equal(said, 'The node lost the recent history of a room (its message store restarted): reconnecting; messages sent meanwhile may be missing.');
});
