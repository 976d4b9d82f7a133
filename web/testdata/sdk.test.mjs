// Unit tests of parley.js in Node, against a scripted fake WebSocket: the
// paths a real node rarely takes on cue (a replayed duplicate, a lost epoch,
// a drain, a timeout, backoff). Run with `node --test web/testdata/`; the
// browser tests cover the same SDK against a real node.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Parley, ParleyError, SUBPROTOCOL } from '../static/parley.js';

// FakeWS is the server side of one connection, scripted by the test.
class FakeWS {
  static all = [];
  static refuse = false; // new sockets fail at once, as when a node is down

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeWS.all.push(this);
    queueMicrotask(() => {
      if (FakeWS.refuse) return this.drop(1006);
      this.readyState = 1;
      this.onopen?.({});
    });
  }

  send(s) {
    this.sent.push(JSON.parse(s));
  }

  close(code) {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.closedWith = code;
    queueMicrotask(() => this.onclose?.({ code: code ?? 1005, reason: '', wasClean: true }));
  }

  // push delivers frames as one text frame, newline-separated, as the node batches them.
  push(...frames) {
    this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join('\n') });
  }

  drop(code = 1006, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: false });
  }

  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

const welcome = (n) => ({ type: 'welcome', session: `s${n}`, node: 'n1', user: `u${n}`, ping_ms: 25000 });
const msg = (epoch, offset) => ({ type: 'message', room: 'r', epoch, offset, data: { n: offset }, ts: 1 });

async function until(what, cond, ms = 2000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function newClient(options = {}) {
  FakeWS.all = [];
  FakeWS.refuse = false;
  return new Parley({ url: 'ws://node.test/v1/ws', WebSocket: FakeWS, minDelay: 5, maxDelay: 40, ...options });
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

test('close rejects a subscribe still waiting for its ack', async () => {
  const client = newClient();
  const ws = await socket(0);
  ws.push(welcome(0));
  const pending = client.subscribe('r');
  client.close();
  await assert.rejects(pending, (err) => err.code === 'closed');
  assert.deepEqual(client.rooms(), []);
});
