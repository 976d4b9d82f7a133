// Unit tests of parley.js in Node, against a scripted fake WebSocket and a
// fake EventSource: the paths a real node rarely takes on cue (a replayed
// duplicate, a lost epoch, a drain, a timeout, backoff, presence paging, an
// expired token on an event stream, a stream the node refuses). Run with `node --test web/testdata/`; the
// browser tests cover the same SDK against a real node.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { Parley, ParleyError, ParleySSE, SUBPROTOCOL } from '../static/parley.js';
import { FakeWS } from './callfakes.mjs';

// FakeWS (callfakes.mjs) is the server side of one connection, scripted by
// the test.

const welcome = (n) => ({ type: 'welcome', session: `s${n}`, node: 'n1', user: `u${n}`, ping_ms: 25000 });
const msg = (epoch, offset) => ({ type: 'message', room: 'r', epoch, offset, data: { n: offset }, ts: 1 });

async function until(what, cond, ms = 2000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

// clients are closed after each test, so that one that fails leaves no
// client reconnecting behind it.
const clients = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function newClient(options = {}) {
  FakeWS.all = [];
  FakeWS.refuse = false;
  const client = new Parley({ url: 'ws://node.test/v1/ws', WebSocket: FakeWS, minDelay: 5, maxDelay: 40, ...options });
  clients.push(client);
  return client;
}

async function socket(n) {
  await until(`socket ${n}`, () => FakeWS.all.length > n && FakeWS.all[n].readyState === 1);
  return FakeWS.all[n];
}

test('subscribes, splits batched frames, answers pings, drops repeated offsets', async () => {
  const client = newClient({ token: 'jwt' });
  const got = [];
  const ws = await socket(0);
  assert.equal(ws.protocol, SUBPROTOCOL);
  assert.equal(new URL(ws.url).searchParams.get('token'), 'jwt');
  const acked = client.subscribe('r', { presence: true, onMessage: (m) => got.push(m.offset) });
  assert.equal(ws.sent.length, 0, 'nothing is sent before the welcome');
  ws.push(welcome(0));
  assert.equal(client.state, 'open');
  const [sub] = ws.sentOf('subscribe');
  assert.deepEqual({ ...sub, id: undefined }, { type: 'subscribe', id: undefined, room: 'r', presence: true });
  ws.push({ type: 'ack', id: sub.id, epoch: 'E', offset: 2, recovered: false, members: [{ user: 'u0', session: 's0' }] });
  const ack = await acked;
  assert.equal(ack.offset, 2);
  assert.deepEqual(client.members('r'), [{ user: 'u0', session: 's0' }]);
  ws.push(msg('E', 2), msg('E', 3), msg('E', 3), { type: 'ping' }, msg('E', 4));
  assert.deepEqual(got, [3, 4]);
  assert.equal(ws.sentOf('pong').length, 1);
  assert.deepEqual(client.position('r'), { epoch: 'E', offset: 4 });
  client.close();
  assert.equal(client.state, 'closed');
});

test('resumes after a drop from the last position, delivering the replay once', async () => {
  const client = newClient();
  const got = [];
  const lost = [];
  let ws = await socket(0);
  ws.push(welcome(0));
  client.subscribe('r', { onMessage: (m) => got.push(m.offset), onLost: (room) => lost.push(room) });
  ws.push({ type: 'ack', id: ws.sentOf('subscribe')[0].id, epoch: 'E', offset: 0, recovered: false });
  ws.push(msg('E', 1), msg('E', 2));
  ws.drop();
  assert.equal(client.state, 'reconnecting');
  ws = await socket(1);
  ws.push(welcome(1));
  const [sub] = ws.sentOf('subscribe');
  assert.deepEqual(sub.since, { epoch: 'E', offset: 2 });
  ws.push({ type: 'ack', id: sub.id, epoch: 'E', offset: 4, recovered: true }, msg('E', 2), msg('E', 3), msg('E', 4), msg('E', 4));
  assert.deepEqual(got, [1, 2, 3, 4]);
  assert.deepEqual(lost, []);
  client.close();
});

test('a resubscribe the node cannot recover calls onLost and starts over', async () => {
  const lostAll = [];
  const client = newClient({ onLost: (room) => lostAll.push(room) });
  const got = [];
  const lost = [];
  let ws = await socket(0);
  ws.push(welcome(0));
  client.subscribe('r', { onMessage: (m) => got.push(`${m.epoch}/${m.offset}`), onLost: (room, ack) => lost.push([room, ack.epoch]) });
  ws.push({ type: 'ack', id: ws.sentOf('subscribe')[0].id, epoch: 'E', offset: 7, recovered: false }, msg('E', 8));
  ws.drop(1012);
  ws = await socket(1);
  ws.push(welcome(1));
  const [sub] = ws.sentOf('subscribe');
  assert.deepEqual(sub.since, { epoch: 'E', offset: 8 });
  ws.push({ type: 'ack', id: sub.id, epoch: 'F', offset: 0, recovered: false }, msg('F', 1));
  assert.deepEqual(lost, [['r', 'F']]);
  assert.deepEqual(lostAll, ['r']);
  assert.deepEqual(got, ['E/8', 'F/1']);
  client.close();
});

test('a reconnect frame moves the client after about after_ms', async () => {
  const client = newClient({ minDelay: 5000, maxDelay: 5000 }); // backoff would take seconds
  const ws = await socket(0);
  ws.push(welcome(0));
  const draining = [];
  client.on('draining', (f) => draining.push(f.after_ms));
  const start = Date.now();
  ws.push({ type: 'reconnect', after_ms: 60, reason: 'draining' });
  assert.deepEqual(draining, [60]);
  assert.equal(FakeWS.all.length, 1);
  const next = await socket(1);
  const took = Date.now() - start;
  assert.ok(took >= 55 && took < 1000, `reconnected after ${took} ms, want about 60`);
  assert.equal(ws.readyState, 3, 'the old connection is closed');
  next.push(welcome(1));
  assert.equal(client.state, 'open');
  client.close();
});

test('a keyed publish caught by a drop is sent again; an unkeyed one fails', async () => {
  const client = newClient();
  let ws = await socket(0);
  ws.push(welcome(0));
  const keyed = client.publish('r', { a: 1 }, { key: 'k1' });
  const plain = client.publish('r', { a: 2 });
  assert.equal(ws.sentOf('publish').length, 2);
  ws.drop();
  await assert.rejects(plain, (err) => err instanceof ParleyError && err.code === 'disconnected');
  ws = await socket(1);
  ws.push(welcome(1));
  const [again] = ws.sentOf('publish');
  assert.equal(again.key, 'k1');
  ws.push({ type: 'ack', id: again.id, epoch: 'E', offset: 5, duplicate: true });
  assert.equal((await keyed).offset, 5);
  client.close();
});

test('commands time out; errors reject with the node\'s code', async () => {
  const client = newClient();
  const ws = await socket(0);
  ws.push(welcome(0));
  const slow = client.publish('r', 1, { timeout: 20 });
  await assert.rejects(slow, (err) => err.code === 'timeout');
  const refused = client.subscribe('secret');
  const [sub] = ws.sentOf('subscribe');
  ws.push({ type: 'error', id: sub.id, code: 'forbidden', message: 'not allowed to subscribe to secret' });
  await assert.rejects(refused, (err) => err.code === 'forbidden' && err.room === 'secret');
  assert.deepEqual(client.rooms(), []);
  await assert.rejects(client.unsubscribe('secret'), (err) => err.code === 'not_found');
  client.close();
  await assert.rejects(client.publish('r', 1), (err) => err.code === 'closed');
});

test('reconnect delays grow with full jitter up to maxDelay, and reset on welcome', async () => {
  const client = newClient({ minDelay: 2, maxDelay: 16 });
  const delays = [];
  client.on('reconnecting', (e) => delays.push(e));
  FakeWS.refuse = true;
  await until('eight attempts', () => delays.length >= 8);
  for (const { attempt, delay } of delays) {
    const cap = Math.min(16, 2 * 2 ** (attempt - 1));
    assert.ok(delay >= 0 && delay <= cap, `attempt ${attempt} waited ${delay} ms, cap ${cap}`);
  }
  FakeWS.refuse = false;
  await until('a connection', () => FakeWS.all.some((w) => w.readyState === 1));
  const ws = FakeWS.all.find((w) => w.readyState === 1);
  ws.push(welcome(9));
  delays.length = 0;
  ws.drop();
  await until('a reconnect', () => delays.length >= 1);
  assert.equal(delays[0].attempt, 1, 'attempts start over after a welcome');
  client.close();
});

test('a refused token with no way to renew it stops reconnecting', async () => {
  const client = newClient({ token: 'expired' });
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  const ws = await socket(0);
  ws.push({ type: 'error', code: 'unauthorized', message: 'token expired' });
  ws.drop(1008, 'token expired');
  assert.equal(client.state, 'closed');
  assert.deepEqual(errors, ['unauthorized', 'unauthorized']);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(FakeWS.all.length, 1);
});

test('a refused token fails the subscribes still waiting, with the node\'s reason', async () => {
  const client = newClient();
  const pending = client.subscribe('r');
  const ws = await socket(0);
  ws.push({ type: 'error', code: 'unauthorized', message: 'missing token' });
  ws.drop(1008, 'missing token');
  assert.equal(client.state, 'closed');
  await assert.rejects(pending, (err) => err.code === 'unauthorized' && err.message === 'missing token' && err.room === 'r');
  assert.deepEqual(client.rooms(), []);
});

// jwt is a JWT-shaped token for user that expires at exp (Unix seconds); n
// tells tokens apart. The client reads exp without verifying the signature.
const jwt = (user, exp, n) =>
  `e30.${Buffer.from(JSON.stringify({ sub: user, exp, n })).toString('base64url')}.c2ln`;

test('a token function: the token is refreshed on the live connection before exp', async () => {
  let minted = 0;
  const tokens = [];
  const firstExp = Math.floor(Date.now() / 1000) + 3;
  const client = newClient({
    token: () => {
      const t = jwt('u', minted === 0 ? firstExp : firstExp + 1, ++minted);
      tokens.push(t);
      return t;
    },
  });
  const refreshed = [];
  client.on('refresh', (e) => refreshed.push(e));
  const ws = await socket(0);
  assert.equal(new URL(ws.url).searchParams.get('token'), tokens[0]);
  ws.push(welcome(0));
  const got = [];
  const acked = client.subscribe('r', { onMessage: (m) => got.push(m.offset) });
  ws.push({ type: 'ack', id: ws.sentOf('subscribe')[0].id, epoch: 'E', offset: 0, recovered: false });
  await acked;
  await until('a refresh frame', () => ws.sentOf('refresh').length === 1, 3000);
  assert.ok(Date.now() < firstExp * 1000, 'the refresh is sent before the token expires');
  const [refresh] = ws.sentOf('refresh');
  assert.deepEqual({ ...refresh, id: undefined }, { type: 'refresh', id: undefined, token: tokens[1] });
  const later = firstExp + 3600;
  ws.push({ type: 'ack', id: refresh.id, expires: later });
  await until('the refresh event', () => refreshed.length === 1);
  assert.deepEqual(refreshed, [{ expires: later * 1000 }]);
  // The session goes on: no new socket, no second subscribe, messages flow.
  ws.push(msg('E', 1));
  assert.deepEqual(got, [1]);
  assert.equal(FakeWS.all.length, 1);
  assert.equal(ws.sentOf('subscribe').length, 1);
  assert.equal(client.state, 'open');
});

test('a refused refresh is reported; the expiry then reconnects with a fresh token', async () => {
  let minted = 0;
  const soon = Math.floor(Date.now() / 1000) + 1;
  const client = newClient({ token: () => jwt('u', soon, ++minted) });
  const errors = [];
  client.on('error', (e) => errors.push([e.code, e.message]));
  const ws = await socket(0);
  ws.push(welcome(0));
  await until('a refresh frame', () => ws.sentOf('refresh').length === 1, 3000);
  const [refresh] = ws.sentOf('refresh');
  ws.push({ type: 'error', id: refresh.id, code: 'forbidden', message: 'a refresh token must be for the same user' });
  await until('the error event', () => errors.length === 1);
  assert.deepEqual(errors, [['forbidden', 'a refresh token must be for the same user']]);
  assert.equal(client.state, 'open', 'a refused refresh ends nothing');
  // The node ends the session when the token expires; the client comes back.
  ws.push({ type: 'error', code: 'unauthorized', message: 'token expired' });
  ws.drop(1008, 'token expired');
  const next = await socket(1);
  assert.equal(new URL(next.url).searchParams.get('token'), jwt('u', soon, 3));
});

test('close rejects a subscribe still waiting for its ack', async () => {
  const client = newClient();
  const ws = await socket(0);
  ws.push(welcome(0));
  const pending = client.subscribe('r');
  client.close();
  await assert.rejects(pending, (err) => err.code === 'closed');
  assert.deepEqual(client.rooms(), []);
});

// reconnects records the client's 'reconnecting' events.
function reconnects(client) {
  const got = [];
  client.on('reconnecting', (e) => got.push(e));
  return got;
}

test('a node that closes with 1013 before the subscribe ack gets backoff, not a tight loop', async () => {
  const client = newClient({ minDelay: 2, maxDelay: 64 });
  const delays = reconnects(client);
  const acked = client.subscribe('big', { presence: true, timeout: 5000 });
  // Each connection is welcomed, the room is subscribed, and the node closes
  // it as a slow consumer while it sends the (large) ack.
  for (let i = 0; i < 5; i++) {
    const ws = await socket(i);
    ws.push(welcome(i));
    assert.equal(ws.sentOf('subscribe').length, 1, `connection ${i} subscribes`);
    ws.drop(1013, 'slow consumer');
  }
  assert.deepEqual(delays.map((d) => d.attempt), [1, 2, 3, 4, 5], 'each failed connection counts towards the backoff');
  for (const { attempt, delay } of delays) {
    assert.ok(delay <= Math.min(64, 2 * 2 ** (attempt - 1)), `attempt ${attempt} waited ${delay} ms`);
  }
  // A connection whose subscribes are all answered is ready: the backoff
  // starts over.
  const ws = await socket(5);
  ws.push(welcome(5));
  const [sub] = ws.sentOf('subscribe');
  ws.push({ type: 'ack', id: sub.id, epoch: 'E', offset: 0, recovered: false, members: [], members_total: 5000, members_next: 'c' });
  assert.equal((await acked).members_total, 5000);
  ws.drop(1013, 'slow consumer');
  assert.equal(delays.at(-1).attempt, 1);
  client.close();
});

test('a renewal refused for now keeps the room and its position, and reconnects with backoff to renew it', async () => {
  const client = newClient({ minDelay: 2, maxDelay: 64 });
  const delays = reconnects(client);
  const got = [];
  const errors = [];
  const closes = [];
  client.on('error', (e) => errors.push([e.code, e.room]));
  client.on('close', (e) => closes.push(e.code));
  let ws = await socket(0);
  ws.push(welcome(0));
  client.subscribe('r', { onMessage: (m) => got.push(m.offset) });
  client.subscribe('other');
  for (const sub of ws.sentOf('subscribe')) ws.push({ type: 'ack', id: sub.id, epoch: 'E', offset: 0, recovered: false });
  ws.push(msg('E', 1), msg('E', 2));
  ws.drop();
  // The node's bus is coming back: it refuses the renewal of r, twice, with
  // two codes that may pass.
  for (const [i, code] of [[1, 'internal'], [2, 'rate_limited']]) {
    ws = await socket(i);
    ws.push(welcome(i));
    const sub = ws.sentOf('subscribe').find((f) => f.room === 'r');
    assert.deepEqual(sub.since, { epoch: 'E', offset: 2 });
    ws.push({ type: 'error', id: sub.id, code, message: 'subscribe failed: the message bus (Redis) is unavailable; try again shortly' });
    assert.equal(ws.closedWith, 1000, `connection ${i} is closed`);
    assert.equal(closes.at(-1), 4002);
    assert.deepEqual(client.rooms().sort(), ['other', 'r'], 'the room is kept');
    assert.deepEqual(client.position('r'), { epoch: 'E', offset: 2 });
    assert.equal(client.state, 'reconnecting');
  }
  assert.deepEqual(errors, [['internal', 'r'], ['rate_limited', 'r']]);
  assert.deepEqual(delays.map((d) => d.attempt), [1, 2, 3], 'a refused connection is not ready: the backoff grows');
  // The node is back: r resumes from where it was, and nothing is delivered twice.
  ws = await socket(3);
  ws.push(welcome(3));
  const subs = ws.sentOf('subscribe');
  assert.deepEqual(subs.map((f) => f.room).sort(), ['other', 'r']);
  for (const sub of subs) {
    if (sub.room === 'r') ws.push({ type: 'ack', id: sub.id, epoch: 'E', offset: 4, recovered: true }, msg('E', 2), msg('E', 3), msg('E', 4));
    else ws.push({ type: 'ack', id: sub.id, epoch: 'E', offset: 0, recovered: true });
  }
  ws.push(msg('E', 5));
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  assert.equal(errors.length, 2);
  ws.drop();
  assert.equal(delays.at(-1).attempt, 1, 'a ready connection starts the backoff over');
  client.close();
});

test('a renewal refused for good drops the room; a first subscribe refused for now rejects', async () => {
  const client = newClient();
  const errors = [];
  client.on('error', (e) => errors.push([e.code, e.room]));
  let ws = await socket(0);
  ws.push(welcome(0));
  client.subscribe('r');
  ws.push({ type: 'ack', id: ws.sentOf('subscribe')[0].id, epoch: 'E', offset: 0, recovered: false });
  ws.drop();
  ws = await socket(1);
  ws.push(welcome(1));
  ws.push({ type: 'error', id: ws.sentOf('subscribe')[0].id, code: 'forbidden', message: 'not allowed to subscribe to r' });
  assert.deepEqual(errors, [['forbidden', 'r']]);
  assert.deepEqual(client.rooms(), []);
  assert.equal(ws.readyState, 1, 'the connection goes on');
  // The first subscribe of a room is the application's: its promise gets
  // the error, whatever the code, and the client stays connected.
  const first = client.subscribe('fresh');
  ws.push({ type: 'error', id: ws.sentOf('subscribe').at(-1).id, code: 'internal', message: 'subscribe failed' });
  await assert.rejects(first, (err) => err.code === 'internal' && err.room === 'fresh');
  assert.deepEqual(client.rooms(), []);
  assert.equal(ws.readyState, 1);
  assert.equal(FakeWS.all.length, 2);
  assert.deepEqual(errors, [['forbidden', 'r']]);
  client.close();
});

test('presence: the first page, the total kept in step with joins and leaves', async () => {
  const client = newClient();
  const ws = await socket(0);
  ws.push(welcome(0));
  const seen = [];
  client.subscribe('big', { presence: true, onPresence: (e, members, total) => seen.push([e.event, members.length, total]) });
  client.subscribe('small', { presence: true });
  const [big, small] = ws.sentOf('subscribe');
  assert.equal(client.membersTotal('big'), null, 'no total before the ack');
  const page = [
    { user: 'u0', session: 's0', node: 'n1' },
    { user: 'u1', session: 's1', node: 'n2' },
  ];
  ws.push({ type: 'ack', id: big.id, epoch: 'E', offset: 0, recovered: false, members: page, members_total: 250, members_next: 'p2' });
  ws.push({ type: 'ack', id: small.id, epoch: 'E', offset: 0, recovered: false, members: page, members_total: 2 });
  assert.deepEqual(client.members('big'), page);
  assert.equal(client.membersTotal('big'), 250);
  assert.equal(client.membersTotal('small'), 2);
  assert.deepEqual(seen, [['sync', 2, 250]]);

  const presence = (room, event, session) => ({ type: 'presence', room, event, user: `user-${session}`, session });
  ws.push(presence('big', 'join', 'sX'));
  assert.equal(client.membersTotal('big'), 251);
  assert.deepEqual(client.members('big').map((m) => m.session), ['s0', 's1', 'sX']);
  ws.push(presence('big', 'join', 'sX')); // already known: counted once
  assert.equal(client.membersTotal('big'), 251);
  ws.push(presence('big', 'leave', 's0'));
  assert.equal(client.membersTotal('big'), 250);
  ws.push(presence('big', 'leave', 's9')); // on a page not fetched
  assert.equal(client.membersTotal('big'), 249);
  assert.deepEqual(client.members('big').map((m) => m.session), ['s1', 'sX']);
  assert.deepEqual(seen.slice(1), [['join', 3, 251], ['join', 3, 251], ['leave', 2, 250], ['leave', 2, 249]]);

  // The first page of small was the whole room: a leave of a session it
  // does not list changes nothing.
  ws.push(presence('small', 'leave', 's9'));
  assert.equal(client.membersTotal('small'), 2);
  ws.push(presence('small', 'join', 's2'), presence('small', 'leave', 's0'));
  assert.equal(client.membersTotal('small'), 2);
  assert.deepEqual(client.members('small').map((m) => m.session), ['s1', 's2']);

  // A resubscribe after a reconnect starts over from the new ack.
  ws.drop();
  const ws1 = await socket(1);
  ws1.push(welcome(1));
  const [again] = ws1.sentOf('subscribe').filter((f) => f.room === 'big');
  ws1.push({ type: 'ack', id: again.id, epoch: 'E', offset: 0, recovered: true, members: page.slice(1), members_total: 120, members_next: 'q2' });
  assert.equal(client.membersTotal('big'), 120);
  assert.deepEqual(client.members('big'), page.slice(1));
  assert.equal(client.membersTotal('nope'), null);
  client.close();
});

test('presence() fetches a page; allMembers() walks them all', async () => {
  const client = newClient();
  const ws = await socket(0);
  ws.push(welcome(0));
  const first = client.presence('lobby');
  const [q] = ws.sentOf('presence');
  assert.deepEqual({ ...q, id: undefined }, { type: 'presence', id: undefined, room: 'lobby' });
  ws.push({ type: 'ack', id: q.id, members: [{ user: 'a', session: 's1', node: 'n' }], members_total: 3, next: 'c1' });
  assert.deepEqual(await first, { members: [{ user: 'a', session: 's1', node: 'n' }], total: 3, next: 'c1' });

  const last = client.presence('lobby', { cursor: 'c1', limit: 2 });
  const q2 = ws.sentOf('presence')[1];
  assert.equal(q2.cursor, 'c1');
  assert.equal(q2.limit, 2);
  ws.push({ type: 'ack', id: q2.id, members: [{ user: 'b', session: 's2' }], members_total: 3 });
  assert.equal((await last).next, null, 'no next on the last page');

  // allMembers sends a query per page, each with the cursor of the last.
  const pages = {
    '': { members: [{ user: 'a', session: 's1' }, { user: 'b', session: 's2' }], next: 'x' },
    x: { members: [{ user: 'b', session: 's2' }, { user: 'c', session: 's3' }], next: 'y' },
    y: { members: [{ user: 'd', session: 's4' }] },
  };
  const answered = new Set();
  const answer = setInterval(() => {
    for (const f of ws.sentOf('presence')) {
      if (answered.has(f.id)) continue;
      answered.add(f.id);
      ws.push({ type: 'ack', id: f.id, members_total: 4, ...pages[f.cursor ?? ''] });
    }
  }, 1);
  try {
    const all = await client.allMembers('lobby', { limit: 2 });
    assert.deepEqual(all.map((m) => m.session), ['s1', 's2', 's3', 's4'], 'each session once');
    assert.deepEqual(ws.sentOf('presence').slice(2).map((f) => [f.cursor, f.limit]), [[undefined, 2], ['x', 2], ['y', 2]]);
  } finally {
    clearInterval(answer);
  }

  // A query caught by a drop is sent again after the reconnect.
  const caught = client.presence('lobby', { cursor: 'x' });
  ws.drop();
  const ws1 = await socket(1);
  ws1.push(welcome(1));
  const [resent] = ws1.sentOf('presence');
  assert.equal(resent.cursor, 'x');
  ws1.push({ type: 'ack', id: resent.id, members: [], members_total: 0 });
  assert.deepEqual(await caught, { members: [], total: 0, next: null });

  const refused = client.presence('secret');
  ws1.push({ type: 'error', id: ws1.sentOf('presence')[1].id, code: 'forbidden', message: 'no' });
  await assert.rejects(refused, (err) => err.code === 'forbidden');
  client.close();
});

// FakeES is an EventSource whose stream the test scripts. Its events are what
// a browser dispatches: a MessageEvent (with data) for each `event:` of the
// stream, a plain Event (no data) for a connection error.
class FakeES {
  static all = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.listeners = new Map();
    FakeES.all.push(this);
  }

  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }

  close() {
    this.readyState = 2;
  }

  dispatch(type, event) {
    for (const fn of this.listeners.get(type) ?? []) fn(event);
  }

  // event delivers one event of the stream.
  event(type, data, lastEventId = '') {
    if (this.readyState === 2) return;
    this.readyState = 1;
    this.dispatch(type, { type, data: JSON.stringify(data), lastEventId });
  }

  // fail reports a connection error, after which the browser retries
  // (readyState 0) or gives up (2).
  fail(readyState) {
    this.readyState = readyState;
    this.dispatch('error', { type: 'error' });
  }

  get params() {
    return new URL(this.url).searchParams;
  }
}

// fakeFetch answers the client's fetches of a refused stream: each answer is
// {status, body, headers}, or 'network' for a fetch that fails. The last
// answer repeats. fetch.calls records [url, init] of each call.
function fakeFetch(...answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push([url, init]);
    const a = answers.length > 1 ? answers.shift() : answers[0];
    if (a === 'network') throw new TypeError('fetch failed');
    return new Response(a.body ?? '', { status: a.status, headers: a.headers });
  };
  fetch.calls = calls;
  return fetch;
}

const jsonError = (status, code, message, headers = {}) => ({
  status,
  body: JSON.stringify({ error: { code, message } }),
  headers: { 'Content-Type': 'application/json', ...headers },
});

function newSSE(options = {}) {
  FakeES.all = [];
  const log = { welcomes: 0, errors: [], onError: [], messages: [], states: [] };
  const sse = new ParleySSE({
    url: 'http://node.test',
    rooms: ['r'],
    EventSource: FakeES,
    minDelay: 5,
    maxDelay: 40,
    fetch: fakeFetch('network'),
    onMessage: (m) => log.messages.push(m.offset),
    onError: (err) => log.onError.push(err.code),
    ...options,
  });
  clients.push(sse);
  sse.on('welcome', () => log.welcomes++);
  sse.on('error', (err) => log.errors.push(err));
  sse.on('state', (s) => log.states.push(s));
  return { sse, log };
}

async function stream(n) {
  await until(`event stream ${n}`, () => FakeES.all.length > n);
  return FakeES.all[n];
}

const sseWelcome = (offset) => ({ session: 's', node: 'n1', user: 'u', ping_ms: 25000, rooms: { r: { epoch: 'E', offset, recovered: true } } });
const expired = { type: 'error', code: 'unauthorized', message: 'token expired' };

test('sse: an expired token with a token function: a fresh token, resumed from the last event', async () => {
  let minted = 0;
  const { sse, log } = newSSE({ token: async () => `jwt${++minted}` });
  const es = await stream(0);
  assert.equal(es.params.get('token'), 'jwt1');
  assert.equal(es.params.get('rooms'), 'r');
  es.event('welcome', sseWelcome(0), 'cur0');
  es.event('message', msg('E', 1), 'cur1');
  es.event('error', expired);
  assert.equal(es.readyState, 2, 'the stream is closed, so the browser does not retry with the old token');
  assert.equal(log.welcomes, 1, 'the error is not taken for a welcome');
  assert.deepEqual(log.errors.map((e) => [e.code, e.message, e.frame?.code]), [['unauthorized', 'token expired', 'unauthorized']]);
  assert.deepEqual(log.onError, ['unauthorized']);
  assert.equal(sse.state, 'reconnecting');

  const next = await stream(1);
  assert.equal(next.params.get('token'), 'jwt2');
  assert.equal(next.params.get('last_event_id'), 'cur1');
  next.event('welcome', sseWelcome(1), 'cur1');
  next.event('message', msg('E', 1), 'cur1'); // already delivered
  next.event('message', msg('E', 2), 'cur2');
  assert.deepEqual(log.messages, [1, 2]);
  assert.equal(sse.state, 'open');
  assert.equal(sse.lastEventId, 'cur2');
  sse.close();
});

test('sse: a token function whose tokens keep failing backs off', async () => {
  const random = Math.random;
  Math.random = () => 0.999; // every delay at its cap
  try {
    const { sse } = newSSE({ token: () => 'jwt', minDelay: 150, maxDelay: 150 });
    let es = await stream(0);
    es.event('welcome', sseWelcome(0), 'cur0');
    es.event('error', expired);
    es = await stream(1); // at once after a welcomed stream
    es.event('error', expired); // again, with no welcome between
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(FakeES.all.length, 2, 'the next stream waits for the backoff');
    await stream(2);
    sse.close();
  } finally {
    Math.random = random;
  }
});

test('sse: an expired fixed token stops the client instead of looping', async () => {
  const { sse, log } = newSSE({ token: 'fixed' });
  const es = await stream(0);
  es.event('welcome', sseWelcome(0), 'cur0');
  es.event('error', expired);
  assert.equal(es.readyState, 2);
  assert.equal(sse.state, 'closed');
  assert.equal(log.welcomes, 1);
  assert.deepEqual(log.onError, ['unauthorized']);
  assert.deepEqual(log.errors.map((e) => e.code), ['unauthorized']);
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(FakeES.all.length, 1, 'no new stream with the refused token');

  // connect() starts again, from the last event, with the token set now.
  sse.token = 'renewed';
  sse.connect();
  const next = await stream(1);
  assert.equal(next.params.get('token'), 'renewed');
  assert.equal(next.params.get('last_event_id'), 'cur0');
  sse.close();
});

test('sse: connection errors and other error codes do not end the client', async () => {
  const { sse, log } = newSSE();
  const es = await stream(0);
  es.event('welcome', sseWelcome(0), 'cur0');
  es.fail(0); // the browser reconnects by itself
  assert.equal(sse.state, 'reconnecting');
  assert.deepEqual(log.errors, [], 'a connection error the browser retries is no error of the application');
  es.event('welcome', sseWelcome(0), 'cur0');
  assert.equal(sse.state, 'open');
  es.event('error', { type: 'error', code: 'internal', message: 'boom' });
  assert.deepEqual(log.errors.map((e) => e.code), ['internal']);
  assert.equal(sse.state, 'open');
  assert.equal(FakeES.all.length, 1);
  assert.equal(log.welcomes, 2);
  // The browser gives up, and the node cannot be reached to say why: the
  // client retries with backoff.
  es.fail(2);
  await until('the error', () => log.errors.length === 2);
  assert.deepEqual(log.errors.map((e) => e.code), ['internal', 'disconnected']);
  const next = await stream(1);
  assert.equal(next.params.get('last_event_id'), 'cur0');
  sse.close();
});

test('sse: an error sent as a welcome event by an older node takes the error path', async () => {
  const { sse, log } = newSSE({ token: 'fixed' });
  const es = await stream(0);
  es.event('welcome', sseWelcome(0), 'cur0');
  es.event('welcome', expired);
  assert.equal(log.welcomes, 1);
  assert.deepEqual(log.errors.map((e) => e.code), ['unauthorized']);
  assert.equal(sse.state, 'closed');
});

test('sse: a stream refused with 401 is read with one fetch, and the client stops', async () => {
  const fetch = fakeFetch(jsonError(401, 'unauthorized', 'missing token'));
  const { sse, log } = newSSE({ fetch });
  const es = await stream(0);
  es.fail(2); // the browser gives up: EventSource does not say why
  await until('the client to stop', () => sse.state === 'closed');
  assert.equal(fetch.calls.length, 1);
  const [url, init] = fetch.calls[0];
  assert.equal(url, es.url, 'the same URL as the stream');
  assert.equal(init.headers.Accept, 'text/event-stream');
  assert.ok(init.signal.aborted, 'the fetch is aborted once read');
  assert.deepEqual(
    log.errors.map((e) => [e.code, e.message, e.status]),
    [['unauthorized', 'missing token', 401]],
  );
  assert.deepEqual(log.onError, ['unauthorized']);
  assert.equal(sse.error, log.errors[0], 'the error stays on the client');
  assert.deepEqual(log.states, ['closed'], 'never reconnecting');
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(FakeES.all.length, 1, 'no new stream');
  assert.equal(fetch.calls.length, 1, 'no new fetch');

  // With a token set, connect() starts again.
  sse.token = 'jwt';
  sse.connect();
  assert.equal(sse.error, null);
  const next = await stream(1);
  assert.equal(next.params.get('token'), 'jwt');
  next.event('welcome', sseWelcome(0), 'cur0');
  assert.equal(sse.state, 'open');
  sse.close();
});

test('sse: a stream refused with 403 stops the client with the node\'s reason', async () => {
  const fetch = fakeFetch(jsonError(403, 'forbidden', 'not allowed to subscribe to r'));
  const { sse, log } = newSSE({ token: 'jwt', fetch });
  const es = await stream(0);
  es.event('welcome', sseWelcome(0), 'cur0');
  // The node ends the stream; the browser reconnects by itself, and the
  // reconnect is refused.
  es.fail(0);
  assert.equal(sse.state, 'reconnecting');
  es.fail(2);
  await until('the client to stop', () => sse.state === 'closed');
  assert.deepEqual(log.errors.map((e) => [e.code, e.message, e.status]), [['forbidden', 'not allowed to subscribe to r', 403]]);
  assert.equal(new URL(fetch.calls[0][0]).searchParams.get('last_event_id'), 'cur0', 'the fetch asks for the stream as it would resume');
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(FakeES.all.length, 1);
});

test('sse: a stream refused with 503 (full, draining) is retried with backoff', async () => {
  const fetch = fakeFetch(
    jsonError(503, 'over_capacity', 'this node holds as many rooms as it may; try again later'),
    { status: 503, body: 'draining: reconnect to another node\n', headers: { 'Content-Type': 'text/plain' } },
  );
  const { sse, log } = newSSE({ fetch });
  let es = await stream(0);
  es.fail(2);
  es = await stream(1);
  assert.deepEqual(log.states, ['reconnecting', 'connecting'], 'waiting, then trying again');
  assert.equal(sse.error.code, 'over_capacity');
  es.fail(2);
  es = await stream(2);
  assert.deepEqual(
    log.errors.map((e) => [e.code, e.status]),
    [['over_capacity', 503], ['draining', 503]],
  );
  assert.equal(log.errors[1].message, 'draining: reconnect to another node');
  assert.equal(fetch.calls.length, 2, 'one fetch for each refused stream');
  es.event('welcome', sseWelcome(0), 'cur0');
  assert.equal(sse.state, 'open');
  assert.equal(sse.error, null, 'an open stream clears the error');
  sse.close();
});

test('sse: a refused token with a token function is retried, calling it again', async () => {
  let minted = 0;
  const fetch = fakeFetch(jsonError(401, 'unauthorized', 'token expired'));
  const { sse, log } = newSSE({ token: () => `jwt${++minted}`, fetch });
  (await stream(0)).fail(2);
  const next = await stream(1);
  assert.equal(next.params.get('token'), 'jwt2');
  assert.deepEqual(log.errors.map((e) => e.code), ['unauthorized']);
  assert.deepEqual(log.states, ['reconnecting', 'connecting']);
  sse.close();
});

test('sse: close() while the refusal is read ends the fetch and the client', async () => {
  let signal;
  const fetch = (url, init) => {
    signal = init.signal;
    return new Promise((_, reject) => signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))));
  };
  const { sse, log } = newSSE({ fetch });
  (await stream(0)).fail(2);
  assert.equal(sse.state, 'connecting');
  sse.connect(); // while the fetch is out: nothing more
  assert.equal(FakeES.all.length, 1);
  sse.close();
  assert.ok(signal.aborted);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(sse.state, 'closed');
  assert.deepEqual(log.errors, []);
  assert.equal(FakeES.all.length, 1);
});
