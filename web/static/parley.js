// parley.js: the browser SDK of the Parley protocol, version 1.
//
// An ES module with no dependencies:
//
//   import { Parley } from '/parley.js';
//   const client = new Parley({ token });            // ws(s)://<this host>/v1/ws
//   await client.subscribe('lobby', { presence: true, onMessage: m => show(m) });
//   await client.publish('lobby', { text: 'hi' });
//   const call = await client.join('standup', { stream });  // a WebRTC mesh call
//
// The client reconnects by itself (exponential backoff with full jitter, or when
// a draining node says so with a `reconnect` frame), resubscribes every room
// from the last position it saw, drops any offset it has already delivered,
// and rejoins every call as the same peer with its resume token. explain()
// turns any error it reports into a sentence a person can act on.
// docs/SDK.md describes the whole API; docs/PROTOCOL.md and docs/CALLS.md the
// frames it speaks.

/**
 * A member of a room's presence: one session of a user.
 * @typedef {{user: string, session: string, node?: string}} Member
 */

/**
 * One page of a room's presence, as client.presence() resolves it.
 * @typedef {object} PresencePage
 * @property {Member[]} members this page, ordered by session id
 * @property {number} total how many members the room has in all
 * @property {string|null} next the cursor of the next page; null on the last one
 */

/** The WebSocket subprotocol of the Parley protocol, version 1. */
export const SUBPROTOCOL = 'parley.v1';

/** An error from the node (`code` is the protocol's error code) or the SDK
 * (`timeout`, `disconnected`, `closed`, `already_subscribed`, `unsubscribed`,
 * `already_joined`, `ice_failed`, `negotiation_failed`, `bad_frame`).
 * Depending on what failed it also has `frame` (the node's error frame),
 * `room`, `call`, `session` (a peer of the call), `status` (an HTTP status),
 * and `retrying` (true when the client keeps what the node refused for now,
 * a room or a call it renews after a reconnect, and tries again by itself).
 * explain(err) says what it means in a sentence. */
export class ParleyError extends Error {
  constructor(code, message, frame) {
    super(message || code);
    this.name = 'ParleyError';
    this.code = code;
    if (frame !== undefined) this.frame = frame;
  }
}

// report hands an exception thrown by application code to the host's error
// reporting, without letting it break the client.
function report(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else console.error(err);
}

// Emitter is a minimal event emitter: on() returns a function that removes the
// listener.
class Emitter {
  #listeners = new Map();

  on(type, fn) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  off(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  emit(type, value) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (err) {
        report(err);
      }
    }
  }
}

// call runs an application callback, reporting what it throws.
function call(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (err) {
    report(err);
  }
}

function baseURL() {
  return typeof location !== 'undefined' ? location.href : undefined;
}

// endpoint resolves url against the page and switches its scheme to scheme
// ('ws' or 'http'), keeping TLS. A URL with no path gets the default one, so
// 'https://rt.example.com' will do.
function endpoint(url, path, scheme) {
  const u = new URL(url ?? path, baseURL());
  if (u.pathname === '/' || u.pathname === '') u.pathname = path;
  const tls = u.protocol === 'https:' || u.protocol === 'wss:';
  u.protocol = scheme + (tls ? 's:' : ':');
  return u;
}

async function resolveToken(token) {
  return typeof token === 'function' ? await token() : token;
}

// tokenExpiry reads a JWT's exp claim, in ms, without verifying the token
// (the node does); null for a token that is not a JWT or has no exp.
function tokenExpiry(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims?.exp === 'number' && claims.exp > 0 ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

// A token from a token function is refreshed on the live connection at 80% of
// its remaining lifetime, and at least refreshMargin ms before its exp when it
// lives longer than that, but never sooner than minRefreshDelay ms after the
// last refresh (nodes limit refreshes to a few a second).
const refreshMargin = 5000;
const minRefreshDelay = 1000;

// refreshDelay is the ms from now to refresh a token that expires at exp (ms).
function refreshDelay(now, exp) {
  const left = exp - now;
  let delay = left * 0.8;
  if (left > refreshMargin) delay = Math.min(delay, left - refreshMargin);
  return Math.max(delay, minRefreshDelay);
}

// The Call's side of its client: module-private method names, so that only
// Parley hands it acks, frames and the end.
const callAck = Symbol('callAck'); // (ack, rejoin): a join or rejoin's ack
const callFrame = Symbol('callFrame'); // (frame): a signal or peer frame of the call
const callOffline = Symbol('callOffline'); // (): the connection dropped
const callEnd = Symbol('callEnd'); // (reason, error): the call ended without leave()

// transientCodes are the error codes of a refusal that may pass: the node is
// short of something for now (its message bus, room slots, a rate) or going
// away, and the same subscribe may succeed later or on another node.
const transientCodes = new Set(['internal', 'over_capacity', 'rate_limited', 'draining']);

// backoff is the delay before reconnect attempt n (0-based): full jitter over
// an exponentially growing cap.
function backoff(n, min, max) {
  const cap = Math.min(max, min * 2 ** Math.min(n, 30));
  return Math.random() * cap;
}

/**
 * A connection to a Parley node over WebSocket.
 *
 * States: 'idle' (not started), 'connecting' (first connection), 'open'
 * (welcome received), 'reconnecting' (lost, waiting or dialling again),
 * 'closed' (close() was called, or the token was refused).
 *
 * Events (client.on(name, fn)): 'state' (the new state), 'open' (the socket
 * opened), 'welcome' (the welcome frame), 'close' ({code, reason, wasClean}),
 * 'reconnecting' ({attempt, delay}), 'draining' (the reconnect frame),
 * 'message' (every delivered message), 'lost' ({room, ack}), 'refresh'
 * ({expires}: the node took a fresh token on the live connection; expires is
 * its exp in ms), 'error' (a ParleyError that no promise received; with
 * `room` when a subscription could not be renewed after a reconnect: a
 * refusal that may pass, `internal`, `over_capacity`, `rate_limited` or
 * `draining`, keeps the room, and the client reconnects with backoff to
 * renew it; any other drops the room).
 *
 * Calls: join() joins a WebRTC call and resolves to a Call, which this client
 * keeps joined across reconnects (see Call).
 *
 * Tokens: a session lasts as long as its token. With a token function whose
 * tokens are JWTs with an exp, the client refreshes the token on the live
 * connection ahead of expiry (at 80% of its remaining lifetime, and at least
 * 5 s before exp when it lives that long): it calls the function and sends a
 * `refresh` frame, and the session goes on with its rooms, no replay and no
 * presence change. The new token must be for the same user. If that fails
 * (the function throws, or the node refuses the token: an 'error' event), the
 * node ends the session when the current token expires, and the client
 * reconnects with a fresh token and resumes every room.
 */
export class Parley extends Emitter {
  /**
   * @param {object} [options]
   * @param {string} [options.url] the node: ws://, wss://, http(s):// (with or without /v1/ws) or a path; default /v1/ws on this page's host
   * @param {string|(() => string|Promise<string>)} [options.token] a JWT, or a function returning one (called
   *   before every connection, and ahead of each token's exp to refresh it on the live connection)
   * @param {(room: string, ack: object) => void} [options.onLost] called when a room could not be resumed
   * @param {number} [options.timeout=10000] ms a command waits for its ack or error
   * @param {number} [options.connectTimeout=10000] ms from dialling to the welcome frame
   * @param {number} [options.minDelay=250] first reconnect delay cap, ms
   * @param {number} [options.maxDelay=10000] largest reconnect delay cap, ms
   * @param {boolean} [options.connect=true] connect at once; otherwise call connect()
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation (e.g. in Node)
   */
  constructor(options = {}) {
    super();
    this.url = options.url;
    this.token = options.token;
    this.onLost = options.onLost;
    this.timeout = options.timeout ?? 10000;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.minDelay = options.minDelay ?? 250;
    this.maxDelay = options.maxDelay ?? 10000;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** The current state. */
    this.state = 'idle';
    /** The last welcome frame: {session, node, user, ping_ms}. */
    this.welcome = null;
    if (options.connect !== false) this.connect();
  }

  #ws = null; // the current socket, or null
  #welcomed = false; // the current socket has had its welcome
  #everOpened = false;
  #stopped = false; // close() was called
  #attempt = 0; // reconnect attempts since the last ready connection
  #reconnectAt = null; // ms timestamp from a reconnect frame
  #lastError = null; // the last error frame without an id
  #seq = 0;
  #subs = new Map(); // room -> subscription
  #pending = new Map(); // id -> command (publish, unsubscribe)
  #subAcks = new Map(); // id -> {sub, since} for subscribe frames in flight
  #retryTimer = null;
  #connectTimer = null;
  #drainTimer = null;
  #watchdog = null;
  #lastSeen = 0;
  #token = null; // the token of the current connection (from a token function), or null
  #refreshTimer = null;
  #calls = new Map(); // call name -> call entry (see join)
  #joinAcks = new Map(); // id -> call entry, for join frames in flight

  /** The session id of the current connection, or null. */
  get session() {
    return this.#welcomed ? this.welcome.session : null;
  }

  /** The user of the current connection (in dev mode a new anonymous one per connection). */
  get user() {
    return this.#welcomed ? this.welcome.user : null;
  }

  /** Starts connecting (after close(), too). Subscriptions kept across close() resume. */
  connect() {
    if (this.state === 'connecting' || this.state === 'open' || (this.state === 'reconnecting' && !this.#stopped)) return;
    this.#stopped = false;
    this.#attempt = 0;
    this.#dial();
  }

  /** Closes the connection and stops reconnecting. Pending commands, and
   * subscribes not acknowledged yet, fail with `closed`; acknowledged
   * subscriptions are kept, and resume if connect() is called again. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#endCalls();
    const ws = this.#ws;
    if (ws) this.#lost(ws, 1000, 'closed by client', true);
    else this.#setState('closed');
    this.#rejectWaiting(() => new ParleyError('closed', 'the client was closed'));
  }

  // rejectWaiting rejects every pending command, and every subscribe not
  // acknowledged yet, with an error of newError(): the client has stopped.
  #rejectWaiting(newError) {
    for (const [id, cmd] of this.#pending) {
      this.#pending.delete(id);
      clearTimeout(cmd.timer);
      cmd.reject(newError());
    }
    for (const [room, sub] of this.#subs) {
      if (!sub.waiter) continue;
      this.#subs.delete(room);
      clearTimeout(sub.waiter.timer);
      const err = newError();
      err.room = room;
      sub.waiter.reject(err);
      sub.waiter = null;
    }
    for (const [name, entry] of this.#calls) {
      if (!entry.waiter) continue;
      this.#calls.delete(name);
      clearTimeout(entry.waiter.timer);
      const err = newError();
      err.call = name;
      entry.waiter.reject(err);
      entry.waiter = null;
      entry.call[callEnd](null, null);
    }
  }

  /** Drops the current connection and reconnects at once, resuming every room
   * (for instance after the token changed). */
  reconnect() {
    if (this.#stopped) return this.connect();
    this.#reconnectAt = Date.now();
    if (this.#ws) this.#lost(this.#ws, 1000, 'reconnect requested', true);
  }

  /**
   * Joins a room. Resolves with the ack ({epoch, offset, recovered, members?})
   * once the node has subscribed this session; rejects with a ParleyError.
   * The subscription lasts until unsubscribe(): after every reconnect it is
   * renewed from the last position delivered.
   *
   * @param {string} room
   * @param {object} [options]
   * @param {boolean} [options.presence] receive presence events, members and their count
   * @param {(message: object) => void} [options.onMessage] each message, once, in offset order
   * @param {(event: object, members: Member[], total: number) => void} [options.onPresence] a join,
   *   a leave, or a 'sync' ({event: 'sync', total, next}: a fresh first page of members after a
   *   (re)subscribe); members is the known list (that page plus later joins, less leaves),
   *   total the room's member count
   * @param {(room: string, ack: object) => void} [options.onLost] messages since the last
   *   position are gone (a new epoch, or past history): reload the room's state
   * @param {{epoch: string, offset: number}} [options.since] start after this position
   * @param {number} [options.timeout] ms to wait for the first ack
   */
  subscribe(room, options = {}) {
    if (this.#subs.has(room)) {
      return Promise.reject(new ParleyError('already_subscribed', `already subscribed to ${room}`));
    }
    const sub = {
      room,
      presence: !!options.presence,
      onMessage: options.onMessage,
      onPresence: options.onPresence,
      onLost: options.onLost,
      pos: options.since ? { epoch: options.since.epoch, offset: options.since.offset } : null,
      members: new Map(), // session -> Member: the known members
      total: null, // the room's member count, from the last sync and the events since
      next: null, // cursor after the first page, null when that page was everything
      waiter: null,
    };
    const promise = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#subs.get(room) !== sub) return;
        this.#subs.delete(room);
        sub.waiter = null;
        if (this.#welcomed) this.#command({ type: 'unsubscribe', room }).catch(() => {});
        reject(new ParleyError('timeout', `subscribe ${room}: no answer within ${options.timeout ?? this.timeout} ms`));
      }, options.timeout ?? this.timeout);
      sub.waiter = { resolve, reject, timer };
    });
    this.#subs.set(room, sub);
    if (this.#welcomed) this.#sendSubscribe(sub);
    return promise;
  }

  /** Leaves a room; its callbacks are not called again. */
  unsubscribe(room) {
    const sub = this.#subs.get(room);
    if (!sub) return Promise.reject(new ParleyError('not_found', `not subscribed to ${room}`));
    this.#subs.delete(room);
    if (sub.waiter) {
      clearTimeout(sub.waiter.timer);
      sub.waiter.reject(new ParleyError('unsubscribed', `unsubscribed from ${room}`));
      sub.waiter = null;
    }
    if (!this.#welcomed) return Promise.resolve({ type: 'ack' });
    return this.#command({ type: 'unsubscribe', room });
  }

  /**
   * Publishes data (any JSON value) to a room. Resolves with the ack
   * ({epoch, offset, duplicate?}). With a `key` (an idempotency key, at most 64
   * bytes) a publish in flight when the connection drops is sent again after
   * the reconnect, and the node publishes it at most once; without one it
   * rejects with `disconnected`, because it may or may not have been published.
   *
   * @param {string} room
   * @param {*} data
   * @param {{key?: string, timeout?: number}} [options]
   */
  publish(room, data, options = {}) {
    const frame = { type: 'publish', room, data };
    if (options.key) frame.key = options.key;
    return this.#command(frame, options.timeout);
  }

  /** The last position delivered in a room, {epoch, offset}, or null. */
  position(room) {
    const pos = this.#subs.get(room)?.pos;
    return pos ? { ...pos } : null;
  }

  /**
   * The known members of a room subscribed with presence: the first page of
   * the subscribe ack (at most 100, by session id), plus the joins and less
   * the leaves since. When the room has more members than that page, the
   * list is partial: membersTotal() counts them all, and presence() or
   * allMembers() pages through them.
   * @param {string} room
   * @returns {Member[]}
   */
  members(room) {
    return [...(this.#subs.get(room)?.members.values() ?? [])];
  }

  /**
   * How many members a room subscribed with presence has, on every node:
   * the ack's members_total, kept in step with joins and leaves. Null for a
   * room not subscribed with presence, or not acknowledged yet.
   * @param {string} room
   * @returns {number|null}
   */
  membersTotal(room) {
    const sub = this.#subs.get(room);
    return sub?.presence ? sub.total : null;
  }

  /**
   * Fetches one page of a room's presence, across every node. Without a
   * cursor it is the first page; pass the `next` of a page to get the one
   * after it. The room need not be subscribed.
   * @param {string} room
   * @param {{cursor?: string, limit?: number, timeout?: number}} [options] limit: 1 to 1000
   *   members a page (the node's default is 100)
   * @returns {Promise<PresencePage>}
   */
  async presence(room, options = {}) {
    const frame = { type: 'presence', room };
    if (options.cursor) frame.cursor = options.cursor;
    if (options.limit !== undefined) frame.limit = options.limit;
    const ack = await this.#command(frame, options.timeout);
    const members = Array.isArray(ack.members) ? ack.members : [];
    return { members, total: ack.members_total ?? members.length, next: ack.next || null };
  }

  /**
   * Fetches every page of a room's presence and returns all its members,
   * each session once. A room with many members takes many round trips.
   * @param {string} room
   * @param {{limit?: number, timeout?: number}} [options] limit per page; timeout per page
   * @returns {Promise<Member[]>}
   */
  async allMembers(room, options = {}) {
    const all = new Map();
    let cursor;
    for (;;) {
      const page = await this.presence(room, { cursor, limit: options.limit, timeout: options.timeout });
      for (const m of page.members) all.set(m.session, m);
      if (!page.next || page.next === cursor) break;
      cursor = page.next;
    }
    return [...all.values()];
  }

  /** The rooms this client is subscribed to (or is subscribing to). */
  rooms() {
    return [...this.#subs.keys()];
  }

  // ---- calls ----

  /**
   * Joins a WebRTC call (docs/CALLS.md) and resolves to its Call once the
   * node has acknowledged the join; the Call's events start after that.
   * Rejects with a ParleyError: the node's (`forbidden` for a call the token
   * does not allow or one that is full, `bad_room`, `rate_limited`…),
   * `already_joined`, `timeout` or `closed`. A join whose connection drops
   * before the ack is sent again after the reconnect. The client keeps the
   * call joined until call.leave() or close(): after every reconnect it
   * joins again with the call's resume token, as the same peer.
   *
   * @param {string} name the call
   * @param {CallOptions} [options]
   * @returns {Promise<Call>}
   */
  join(name, options = {}) {
    if (this.#calls.has(name)) return Promise.reject(Object.assign(new ParleyError('already_joined', `already in call ${name}`), { call: name }));
    if (this.#stopped && this.state === 'closed') return Promise.reject(new ParleyError('closed', 'the client is closed'));
    const entry = { name, call: null, joined: false, resume: null, awaiting: false, early: [], waiter: null };
    entry.call = new Call(this.#callHost(entry), name, options);
    const timeout = options.timeout ?? this.timeout;
    const promise = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#calls.get(name) !== entry || !entry.waiter) return;
        this.#calls.delete(name);
        entry.waiter = null;
        // The join may have reached the node: leave, so that no peer stays behind.
        if (this.#welcomed) this.#command({ type: 'leave', call: name }).catch(() => {});
        entry.call[callEnd](null, null);
        reject(Object.assign(new ParleyError('timeout', `join ${name}: no answer within ${timeout} ms`), { call: name }));
      }, timeout);
      entry.waiter = { resolve, reject, timer };
    });
    this.#calls.set(name, entry);
    if (this.#welcomed) this.#sendJoin(entry);
    return promise;
  }

  /** The calls this client is in (or is joining). */
  calls() {
    return [...this.#calls.keys()];
  }

  // callHost is what a Call asks of this client: its signals, its leave,
  // and where and how to fetch fresh ICE servers.
  #callHost(entry) {
    return {
      signal: (to, data) => this.#command({ type: 'signal', call: entry.name, to, data }),
      leave: () => this.#leaveCall(entry),
      token: () => this.#currentToken(),
      iceServersURL: () => {
        const u = endpoint(this.url, '/v1/ws', 'http');
        u.pathname = u.pathname.replace(/\/v1\/ws\/?$/, '').replace(/\/$/, '') + '/v1/ice-servers';
        u.search = '';
        u.hash = '';
        return u.toString();
      },
    };
  }

  // currentToken is the token of the current connection, for the HTTP API:
  // the last one a token function gave (refreshed on the live connection),
  // or the fixed one.
  async #currentToken() {
    if (typeof this.token !== 'function') return this.token ?? null;
    return this.#token ?? (await resolveToken(this.token));
  }

  #sendJoin(entry) {
    const id = String(++this.#seq);
    const frame = { type: 'join', id, call: entry.name };
    if (entry.resume) frame.resume = entry.resume;
    entry.awaiting = true;
    entry.early = [];
    this.#joinAcks.set(id, entry);
    this.#send(frame);
  }

  // leaveCall forgets a call the application left, and tells the node.
  async #leaveCall(entry) {
    if (this.#calls.get(entry.name) !== entry) return;
    this.#calls.delete(entry.name);
    if (entry.waiter) {
      clearTimeout(entry.waiter.timer);
      entry.waiter.reject(Object.assign(new ParleyError('closed', `left call ${entry.name} before joining it`), { call: entry.name }));
      entry.waiter = null;
    }
    // Away, the node drops the peer after its grace period; the next
    // connection does not join the call again.
    if (!this.#welcomed) return;
    try {
      await this.#command({ type: 'leave', call: entry.name });
    } catch {
      // not_found (not in the call on this connection), or the connection dropped
    }
  }

  // endCalls leaves every call as the client closes: the other peers see
  // this peer leave at once, rather than after the node's grace period.
  #endCalls() {
    for (const [name, entry] of this.#calls) {
      if (!entry.joined) {
        if (this.#welcomed && entry.awaiting) this.#send({ type: 'leave', id: String(++this.#seq), call: name });
        continue;
      }
      this.#calls.delete(name);
      if (this.#welcomed) this.#send({ type: 'leave', id: String(++this.#seq), call: name });
      entry.call[callEnd]('closed', null);
    }
  }

  #onJoined(entry, ack) {
    if (typeof ack.session !== 'string' || ack.session === '') {
      this.#onJoinFailed(entry, { type: 'error', code: 'bad_frame', message: 'a join ack without a session' });
      return;
    }
    const rejoin = entry.joined;
    entry.joined = true;
    entry.awaiting = false;
    if (typeof ack.resume === 'string' && ack.resume !== '') entry.resume = ack.resume;
    const early = entry.early;
    entry.early = [];
    entry.call[callAck](ack, rejoin);
    if (entry.waiter) {
      clearTimeout(entry.waiter.timer);
      const { resolve } = entry.waiter;
      entry.waiter = null;
      resolve(entry.call);
    }
    for (const f of early) {
      if (this.#calls.get(entry.name) !== entry) return;
      entry.call[callFrame](f);
    }
  }

  // onJoinFailed handles the node's refusal of a join. A first join rejects
  // its promise. A rejoin refused for now (transientCodes) keeps the call:
  // the client drops the connection (close code 4002) and reconnects with
  // backoff to join again, in time if the node's grace period allows. A
  // rejoin refused for good ends the call ('error', then 'ended').
  #onJoinFailed(entry, error) {
    const err = new ParleyError(error.code, error.message, error);
    err.call = entry.name;
    if (entry.waiter) {
      this.#calls.delete(entry.name);
      clearTimeout(entry.waiter.timer);
      const { reject } = entry.waiter;
      entry.waiter = null;
      entry.call[callEnd](null, null);
      reject(err);
      return;
    }
    if (!transientCodes.has(error.code)) {
      this.#calls.delete(entry.name);
      entry.call[callEnd]('refused', err);
      return;
    }
    const ws = this.#ws;
    err.retrying = true;
    entry.call.emit('error', err);
    if (ws && this.#ws === ws && this.#calls.get(entry.name) === entry) this.#lost(ws, 4002, `rejoin of call ${entry.name} refused: ${error.code}`, false);
  }

  // onCallFrame hands a call's signal or peer event to its Call. The node
  // sends none before the join's ack; any that comes while a rejoin waits
  // for its ack is held until then.
  #onCallFrame(f) {
    const entry = this.#calls.get(f.call);
    if (!entry || (!entry.joined && !entry.awaiting)) return;
    if (entry.awaiting) {
      entry.early.push(f);
      return;
    }
    entry.call[callFrame](f);
  }

  // ---- connection ----

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  async #dial() {
    clearTimeout(this.#retryTimer);
    this.#setState(this.#everOpened ? 'reconnecting' : 'connecting');
    let token;
    try {
      token = await resolveToken(this.token);
    } catch (err) {
      this.emit('error', new ParleyError('unauthorized', `token: ${err?.message ?? err}`));
      this.#retry();
      return;
    }
    if (this.#stopped || this.#ws) return;
    this.#token = typeof this.token === 'function' ? token : null;
    const url = endpoint(this.url, '/v1/ws', 'ws');
    if (token) url.searchParams.set('token', token);
    let ws;
    try {
      ws = new this.WebSocket(url.toString(), SUBPROTOCOL);
    } catch (err) {
      this.emit('error', new ParleyError('bad_request', `WebSocket: ${err?.message ?? err}`));
      this.#retry();
      return;
    }
    this.#ws = ws;
    this.#welcomed = false;
    this.#lastError = null;
    ws.onopen = () => {
      if (this.#ws === ws) this.emit('open', { url: ws.url, protocol: ws.protocol });
    };
    ws.onmessage = (ev) => {
      if (this.#ws === ws) this.#receive(ev.data);
    };
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (ev) => this.#lost(ws, ev.code, ev.reason, ev.wasClean);
    this.#connectTimer = setTimeout(() => {
      if (this.#ws === ws && !this.#welcomed) this.#lost(ws, 4000, 'connect timeout', false);
    }, this.connectTimeout);
  }

  // lost ends the socket ws (whoever noticed first) and decides what next.
  #lost(ws, code, reason, wasClean) {
    if (this.#ws !== ws) return;
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (ws.readyState === 0 || ws.readyState === 1) {
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#drainTimer);
    clearTimeout(this.#watchdog);
    clearTimeout(this.#refreshTimer);
    this.#welcomed = false;
    this.#subAcks.clear();
    this.#joinAcks.clear();
    for (const entry of this.#calls.values()) {
      entry.awaiting = false;
      entry.early = [];
      if (entry.joined) entry.call[callOffline]();
    }
    for (const [id, cmd] of this.#pending) {
      if (!cmd.sent) continue;
      if ((cmd.frame.type === 'publish' && cmd.frame.key) || cmd.frame.type === 'presence') {
        // Sent again after the welcome: the key makes that safe for a
        // publish, and a presence query changes nothing.
        cmd.sent = false;
        continue;
      }
      this.#pending.delete(id);
      clearTimeout(cmd.timer);
      if (cmd.frame.type === 'unsubscribe') cmd.resolve({ type: 'ack', id });
      else cmd.reject(new ParleyError('disconnected', 'the connection dropped before the ack'));
    }
    for (const [id, cmd] of this.#pending) {
      if (cmd.frame.type !== 'unsubscribe') continue;
      // A new session has no subscriptions to leave.
      this.#pending.delete(id);
      clearTimeout(cmd.timer);
      cmd.resolve({ type: 'ack', id });
    }
    this.emit('close', { code, reason, wasClean });
    if (this.#stopped) {
      this.#setState('closed');
      return;
    }
    if (code === 1008 && this.#lastError?.code === 'unauthorized' && typeof this.token !== 'function') {
      // The same token would be refused again. What waits for the node
      // fails with the reason, rather than with a timeout later.
      this.#stopped = true;
      this.#setState('closed');
      const frame = this.#lastError;
      const refused = () => new ParleyError('unauthorized', reason || frame.message || 'the node refused the token', frame);
      this.emit('error', refused());
      this.#rejectWaiting(refused);
      return;
    }
    this.#retry();
  }

  #retry() {
    if (this.#stopped) return;
    let delay;
    if (this.#reconnectAt !== null) {
      delay = Math.max(0, this.#reconnectAt - Date.now());
      this.#reconnectAt = null;
    } else {
      delay = backoff(this.#attempt, this.minDelay, this.maxDelay);
    }
    this.#attempt++;
    this.#setState('reconnecting');
    this.emit('reconnecting', { attempt: this.#attempt, delay });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#dial(), delay);
  }

  // watch closes a connection that has been silent for ping_ms + 10 s.
  #watch(ws, limit) {
    clearTimeout(this.#watchdog);
    const left = this.#lastSeen + limit - Date.now();
    if (left <= 0) {
      this.#lost(ws, 4001, 'heartbeat timeout', false);
      return;
    }
    this.#watchdog = setTimeout(() => this.#watch(ws, limit), left);
  }

  #send(frame) {
    this.#ws.send(JSON.stringify(frame));
  }

  // ---- frames ----

  #receive(data) {
    this.#lastSeen = Date.now();
    if (typeof data !== 'string') return;
    for (const line of data.split('\n')) {
      if (line === '') continue;
      let frame;
      try {
        frame = JSON.parse(line);
      } catch {
        this.emit('error', new ParleyError('bad_frame', 'a server frame is not JSON'));
        continue;
      }
      if (!this.#ws) return; // a frame handler closed the connection
      this.#frame(frame);
    }
  }

  #frame(f) {
    switch (f.type) {
      case 'welcome':
        return this.#onWelcome(f);
      case 'ping':
        return this.#send({ type: 'pong' });
      case 'ack':
        return this.#onReply(f, null);
      case 'error':
        return this.#onReply(null, f);
      case 'message':
        return this.#onMessage(f);
      case 'presence':
        return this.#onPresence(f);
      case 'reconnect':
        return this.#onDrain(f);
      case 'signal':
      case 'peer':
        return this.#onCallFrame(f);
      default:
      // Unknown frames are ignored: the protocol may grow.
    }
  }

  #onWelcome(f) {
    const ws = this.#ws;
    clearTimeout(this.#connectTimer);
    this.welcome = { session: f.session, node: f.node, user: f.user, ping_ms: f.ping_ms };
    this.#welcomed = true;
    this.#everOpened = true;
    this.#watch(ws, (f.ping_ms || 25000) + 10000);
    this.#setState('open');
    this.emit('welcome', this.welcome);
    if (this.#ws !== ws) return; // a listener closed it
    this.#scheduleRefresh(ws, tokenExpiry(this.#token));
    // Calls first: a peer away from its call keeps its place only for the
    // node's grace period.
    for (const entry of this.#calls.values()) this.#sendJoin(entry);
    for (const sub of this.#subs.values()) this.#sendSubscribe(sub);
    for (const cmd of this.#pending.values()) {
      if (!cmd.sent) {
        cmd.sent = true;
        this.#send(cmd.frame);
      }
    }
    this.#readyCheck();
  }

  // readyCheck starts the backoff over once the connection is ready: welcomed,
  // and every subscribe and join answered. A connection the node closes before then
  // (1013 while sending a big room's subscribe ack, say) does not count, so
  // repeated failures back off instead of resubscribing in a tight loop.
  #readyCheck() {
    if (this.#welcomed && this.#subAcks.size === 0 && this.#joinAcks.size === 0) this.#attempt = 0;
  }

  #onDrain(f) {
    const ws = this.#ws;
    const after = Math.max(0, Number(f.after_ms) || 0);
    this.#reconnectAt = Date.now() + after;
    this.emit('draining', f);
    clearTimeout(this.#drainTimer);
    // The node closes with 1012 about then; if it has not, leave first, so a
    // load balancer sends the new connection to another node.
    this.#drainTimer = setTimeout(() => this.#lost(ws, 1000, 'draining', true), after);
  }

  // scheduleRefresh arms the refresh of ws's token, which expires at exp (ms),
  // when it came from a token function and has an exp.
  #scheduleRefresh(ws, exp) {
    clearTimeout(this.#refreshTimer);
    if (exp === null || typeof this.token !== 'function') return;
    this.#refreshTimer = setTimeout(() => this.#refresh(ws, exp), refreshDelay(Date.now(), exp));
  }

  // refresh sends a fresh token on ws. A refusal is reported and ends the
  // refreshing: the node closes the session when its token expires, and the
  // client reconnects with a fresh one. A token function that throws, a rate
  // limit or a timeout are tried again on the current token's schedule.
  async #refresh(ws, exp) {
    let token;
    try {
      token = await resolveToken(this.token);
    } catch (err) {
      if (this.#ws !== ws) return;
      this.emit('error', new ParleyError('unauthorized', `token: ${err?.message ?? err}`));
      this.#scheduleRefresh(ws, exp);
      return;
    }
    if (this.#ws !== ws || !this.#welcomed || typeof token !== 'string' || token === '') return;
    let ack;
    try {
      ack = await this.#command({ type: 'refresh', token });
    } catch (err) {
      if (this.#ws !== ws) return;
      if (err.code === 'rate_limited' || err.code === 'timeout') this.#scheduleRefresh(ws, exp);
      else this.emit('error', err);
      return;
    }
    if (this.#ws !== ws) return;
    this.#token = token;
    const expires = Number(ack.expires) > 0 ? ack.expires * 1000 : tokenExpiry(token);
    this.emit('refresh', { expires });
    this.#scheduleRefresh(ws, expires);
  }

  #sendSubscribe(sub) {
    const id = String(++this.#seq);
    const frame = { type: 'subscribe', id, room: sub.room };
    if (sub.presence) frame.presence = true;
    const since = sub.pos ? { ...sub.pos } : null;
    if (since) frame.since = since;
    this.#subAcks.set(id, { sub, since });
    this.#send(frame);
  }

  #command(frame, timeout) {
    if (this.#stopped) return Promise.reject(new ParleyError('closed', 'the client is closed'));
    const id = String(++this.#seq);
    frame.id = id;
    return new Promise((resolve, reject) => {
      const ms = timeout ?? this.timeout;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ParleyError('timeout', `${frame.type}: no answer within ${ms} ms`));
      }, ms);
      const cmd = { frame, resolve, reject, timer, sent: false };
      this.#pending.set(id, cmd);
      if (this.#welcomed) {
        cmd.sent = true;
        this.#send(frame);
      }
    });
  }

  #onReply(ack, error) {
    const f = ack ?? error;
    const id = f.id;
    if (id === undefined || id === '') {
      if (error) {
        this.#lastError = error;
        this.emit('error', new ParleyError(error.code, error.message, error));
      }
      return;
    }
    const joining = this.#joinAcks.get(id);
    if (joining) {
      this.#joinAcks.delete(id);
      if (this.#calls.get(joining.name) === joining) {
        if (ack) this.#onJoined(joining, ack);
        else this.#onJoinFailed(joining, error);
      }
      this.#readyCheck();
      return;
    }
    const subAck = this.#subAcks.get(id);
    if (subAck) {
      this.#subAcks.delete(id);
      const { sub, since } = subAck;
      if (this.#subs.get(sub.room) === sub) {
        if (ack) this.#onSubscribed(sub, since, ack);
        else this.#onSubscribeFailed(sub, error);
      }
      this.#readyCheck();
      return;
    }
    const cmd = this.#pending.get(id);
    if (!cmd) return; // timed out already
    this.#pending.delete(id);
    clearTimeout(cmd.timer);
    if (ack) cmd.resolve(ack);
    else cmd.reject(new ParleyError(error.code, error.message, error));
  }

  #onSubscribed(sub, since, ack) {
    const recovered = !!(since && ack.recovered);
    if (!recovered) {
      // Start from the room's current position; a recovered subscribe keeps
      // its position, and the missed messages follow the ack.
      sub.pos = { epoch: ack.epoch, offset: ack.offset };
    }
    if (sub.presence) {
      sub.members = new Map((ack.members ?? []).map((m) => [m.session, m]));
      sub.next = ack.members_next || null;
      sub.total = Math.max(Number(ack.members_total) || 0, sub.members.size);
      const sync = { type: 'presence', room: sub.room, event: 'sync', total: sub.total, next: sub.next };
      call(sub.onPresence, sync, [...sub.members.values()], sub.total);
    }
    if (sub.waiter) {
      clearTimeout(sub.waiter.timer);
      const { resolve } = sub.waiter;
      sub.waiter = null;
      resolve(ack);
    }
    if (since && !recovered) {
      call(sub.onLost, sub.room, ack);
      call(this.onLost, sub.room, ack);
      this.emit('lost', { room: sub.room, ack });
    }
  }

  // onSubscribeFailed handles the node's refusal of a subscribe. The first
  // subscribe of a room rejects its promise, and the room is forgotten. A
  // renewal (the room was subscribed on an earlier connection) refused for
  // now (transientCodes: the node's message bus is coming back, say) keeps
  // the room and its position: after the 'error' event the client drops the
  // connection (close code 4002) and reconnects with backoff, renewing every
  // room from where it was. A renewal refused for good (say, the new token
  // does not allow the room) forgets the room, with the 'error' event.
  #onSubscribeFailed(sub, error) {
    const err = new ParleyError(error.code, error.message, error);
    err.room = sub.room;
    if (sub.waiter) {
      this.#subs.delete(sub.room);
      clearTimeout(sub.waiter.timer);
      const { reject } = sub.waiter;
      sub.waiter = null;
      reject(err);
      return;
    }
    if (!transientCodes.has(error.code)) {
      this.#subs.delete(sub.room);
      this.emit('error', err);
      return;
    }
    const ws = this.#ws;
    err.retrying = true;
    this.emit('error', err);
    // Unless a listener has closed the client or left the connection.
    if (ws && this.#ws === ws && this.#subs.get(sub.room) === sub) this.#lost(ws, 4002, `resubscribe of ${sub.room} refused: ${error.code}`, false);
  }

  #onMessage(m) {
    const sub = this.#subs.get(m.room);
    if (!sub) return;
    const pos = sub.pos;
    if (pos && pos.epoch === m.epoch && m.offset <= pos.offset) return; // seen it
    sub.pos = { epoch: m.epoch, offset: m.offset };
    call(sub.onMessage, m);
    this.emit('message', m);
  }

  #onPresence(p) {
    const sub = this.#subs.get(p.room);
    if (!sub || !sub.presence || sub.total === null) return;
    const known = sub.members.has(p.session);
    if (p.event === 'join' && !known) {
      sub.members.set(p.session, { user: p.user, session: p.session });
      sub.total++;
    } else if (p.event === 'leave') {
      sub.members.delete(p.session);
      // A member the known list lacks was on a page not fetched, unless that
      // list was the whole room.
      if (known || sub.next !== null) sub.total--;
    }
    sub.total = Math.max(sub.total, sub.members.size);
    call(sub.onPresence, p, [...sub.members.values()], sub.total);
  }
}

// probeTimeout bounds the fetch that reads why the browser gave up on an
// event stream, ms.
const probeTimeout = 10000;

// httpCodes names the HTTP statuses of an answer that carries no error of the
// node's own (a proxy's page, say) with the protocol's codes.
const httpCodes = { 400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 429: 'rate_limited' };

// refusal turns an HTTP error answer into a ParleyError: the node's
// {"error": {code, message}} when the body is one, else a code for the
// status (`draining` for a plain 503 that says so, `unavailable` for any
// status without a code of its own) and the body's first line as the
// message.
function refusal(status, text) {
  let code;
  let message;
  try {
    const e = JSON.parse(text)?.error;
    if (e && typeof e.code === 'string') {
      code = e.code;
      message = typeof e.message === 'string' ? e.message : '';
    }
  } catch {
    // not the node's JSON error
  }
  if (code === undefined) {
    const line = String(text ?? '').trim().split('\n')[0].slice(0, 200);
    if (httpCodes[status]) code = httpCodes[status];
    else if (status === 503 && /^draining\b/.test(line)) code = 'draining';
    else code = 'unavailable';
    message = line;
  }
  const err = new ParleyError(code, message || `HTTP ${status}`);
  err.status = status;
  return err;
}

// final reports whether a stream refused with err would be refused again
// alike: a client error other than a timeout or a rate limit. A refused token
// is final unless a token function can get another one.
function final(err, renewable) {
  const s = err.status;
  if (s === 401 && renewable) return false;
  return s >= 400 && s < 500 && s !== 408 && s !== 429;
}

/**
 * Receives room messages over Server-Sent Events (EventSource), resuming from
 * the last event after any reconnect.
 *
 *   const sse = new ParleySSE({ rooms: ['news'], onMessage: m => show(m) });
 *
 * Events: 'state' ('connecting', 'open', 'reconnecting', 'closed'),
 * 'welcome', 'message', 'lost' ({room}), 'draining', 'error' (a ParleyError:
 * an `error` event of the stream, with the node's code, or the node's answer
 * to a stream it refused).
 *
 * EventSource does not tell why a stream could not open. When the browser
 * gives up on one, the client fetches the same URL once and reads the
 * status and the node's JSON error: a refusal that would repeat (a missing
 * or refused token, a room the token does not allow) stops the client
 * (state 'closed'); anything else (the node draining or full, the network)
 * is retried with backoff. Either way the error, with its `code`, `message`
 * and HTTP `status`, goes to onError and the 'error' event, and stays in
 * `error` until a stream opens.
 *
 * When the node ends the stream with an `unauthorized` error (the token
 * expired), a `token` function is called for a fresh token and the stream
 * resumes from the last event; with a fixed token the client stops (state
 * 'closed'), since the same token would be refused again.
 */
export class ParleySSE extends Emitter {
  /**
   * @param {object} options
   * @param {string[]} options.rooms
   * @param {string} [options.url] default /v1/sse on this page's host
   * @param {string|(() => string|Promise<string>)} [options.token] a JWT, or a function returning one
   *   (called before every stream the client opens, so it can renew an expired token)
   * @param {(message: object) => void} [options.onMessage]
   * @param {(room: string) => void} [options.onLost]
   * @param {(err: ParleyError) => void} [options.onError] every error, as the 'error' event has it
   * @param {number} [options.minDelay=1000] @param {number} [options.maxDelay=30000]
   * @param {boolean} [options.connect=true] connect at once; otherwise call connect()
   * @param {typeof EventSource} [options.EventSource]
   * @param {typeof fetch} [options.fetch] reads the answer to a stream the browser gave up on
   */
  constructor(options) {
    super();
    this.rooms = [...options.rooms];
    this.url = options.url;
    this.token = options.token;
    this.onMessage = options.onMessage;
    this.onLost = options.onLost;
    this.onError = options.onError;
    this.minDelay = options.minDelay ?? 1000;
    this.maxDelay = options.maxDelay ?? 30000;
    this.EventSource = options.EventSource ?? globalThis.EventSource;
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.state = 'idle';
    this.welcome = null;
    /** Why the client is not open: the last error since a stream opened, or null. */
    this.error = null;
    if (options.connect !== false) this.connect();
  }

  #es = null;
  #url = null; // the URL of the current stream
  #probe = null; // the AbortController of the fetch reading a refusal
  #stopped = false;
  #lastId = '';
  #pos = new Map(); // room -> {epoch, offset}
  #attempt = 0; // streams opened since the last welcome
  #timer = null;

  /** The last event id: an opaque cursor over every room of the stream. */
  get lastEventId() {
    return this.#lastId;
  }

  /** Starts receiving (after close(), or after a refusal, too), from the last event. */
  connect() {
    if (this.#es || this.#probe || this.state === 'connecting') return;
    this.#stopped = false;
    this.error = null;
    clearTimeout(this.#timer);
    this.#open();
  }

  /** Closes the stream and stops reconnecting. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#es?.close();
    this.#es = null;
    this.#probe?.abort();
    this.#probe = null;
    this.error = null;
    this.#setState('closed');
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  #fail(err) {
    this.error = err;
    call(this.onError, err);
    this.emit('error', err);
  }

  // stop ends the client for an error that would repeat: state 'closed',
  // with the error in `error` by then.
  #stop(err) {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.error = err;
    this.#setState('closed');
    this.#fail(err);
  }

  async #open() {
    this.#setState(this.welcome ? 'reconnecting' : 'connecting');
    let token;
    try {
      token = await resolveToken(this.token);
    } catch (err) {
      this.#fail(new ParleyError('unauthorized', `token: ${err?.message ?? err}`));
      this.#retry();
      return;
    }
    if (this.#stopped || this.#es || this.#probe) return;
    const url = endpoint(this.url, '/v1/sse', 'http');
    url.searchParams.set('rooms', this.rooms.join(','));
    if (token) url.searchParams.set('token', token);
    // A new EventSource cannot set Last-Event-ID; the node reads this instead.
    // (An EventSource's own reconnects send the header, which takes precedence.)
    if (this.#lastId) url.searchParams.set('last_event_id', this.#lastId);
    this.#url = url;
    const es = new this.EventSource(url.toString());
    this.#es = es;
    es.addEventListener('welcome', (e) => {
      const w = JSON.parse(e.data);
      // Older nodes sent every control frame of a stream, errors included,
      // as a welcome event; a welcome has no type.
      if (w.type === 'error') return this.#onServerError(es, e.data);
      const resumed = this.welcome !== null;
      this.#lastId = e.lastEventId;
      this.welcome = w;
      this.error = null;
      this.#attempt = 0;
      for (const [room, info] of Object.entries(w.rooms ?? {})) {
        if (!info.recovered) {
          const had = this.#pos.has(room);
          this.#pos.set(room, { epoch: info.epoch, offset: info.offset });
          if (resumed && had) {
            call(this.onLost, room);
            this.emit('lost', { room });
          }
        }
      }
      this.#setState('open');
      this.emit('welcome', w);
    });
    es.addEventListener('message', (e) => {
      const m = JSON.parse(e.data);
      this.#lastId = e.lastEventId;
      const pos = this.#pos.get(m.room);
      if (pos && pos.epoch === m.epoch && m.offset <= pos.offset) return;
      this.#pos.set(m.room, { epoch: m.epoch, offset: m.offset });
      call(this.onMessage, m);
      this.emit('message', m);
    });
    es.addEventListener('reconnect', (e) => {
      let after = 0;
      try {
        after = Number(JSON.parse(e.data).after_ms) || 0;
      } catch {
        // keep 0
      }
      this.emit('draining', e.data);
      this.#drop(es, after);
    });
    // The node's `event: error` and the EventSource's own connection errors
    // share the name: the first is a MessageEvent with data, the second a
    // plain Event.
    es.addEventListener('error', (e) => {
      if (this.#es !== es) return;
      if (typeof e.data === 'string') this.#onServerError(es, e.data);
      else this.#onStreamError(es);
    });
  }

  // onServerError handles an error event of the stream: the error frame of
  // the WebSocket protocol, {type: 'error', code, message}.
  #onServerError(es, data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      f = { type: 'error', code: 'internal', message: 'an error event that is not JSON' };
    }
    const err = new ParleyError(f.code || 'internal', f.message, f);
    if (err.code !== 'unauthorized') {
      // If the node ends the stream, the browser reconnects and resumes.
      this.#fail(err);
      return;
    }
    // The node ends the stream. Left alone, the browser would reconnect with
    // the same token, which is refused.
    es.close();
    this.#es = null;
    if (typeof this.token === 'function') {
      this.#fail(err);
      // At once with a fresh token; with backoff if that one fails too.
      this.#retry(this.#attempt === 0 ? 0 : null);
      return;
    }
    this.#stop(err);
  }

  #onStreamError(es) {
    if (es.readyState !== 2) {
      this.#setState('reconnecting'); // a network error: the browser retries by itself
      return;
    }
    // The browser gave up: the node (or a proxy) answered with an HTTP
    // error, which EventSource does not show. One fetch of the same URL
    // reads it.
    es.close();
    this.#es = null;
    if (this.state === 'open') this.#setState('reconnecting');
    const url = new URL(this.#url);
    if (this.#lastId) url.searchParams.set('last_event_id', this.#lastId);
    this.#check(url.toString());
  }

  // check fetches url, the stream the browser gave up on, reads the status
  // and the node's error, and stops or retries.
  async #check(url) {
    if (typeof this.fetch !== 'function') {
      this.#fail(new ParleyError('disconnected', 'the event stream failed'));
      this.#retry();
      return;
    }
    const probe = new AbortController();
    this.#probe = probe;
    const timer = setTimeout(() => probe.abort(), probeTimeout);
    let res = null;
    let text = '';
    try {
      res = await this.fetch(url, { headers: { Accept: 'text/event-stream' }, cache: 'no-store', signal: probe.signal });
      // A stream that opens now is not read: only the status matters.
      if (!res.ok) text = await res.text();
    } catch {
      // a network error, the timeout, or a cross-origin answer the node did
      // not allow this page to read
    } finally {
      clearTimeout(timer);
      probe.abort();
    }
    if (this.#probe !== probe) return; // closed meanwhile
    this.#probe = null;
    if (this.#stopped) return;
    if (!res) {
      this.#fail(new ParleyError('disconnected', 'the event stream failed: the node could not be reached'));
      this.#retry();
      return;
    }
    if (res.ok) {
      const type = res.headers?.get('content-type') ?? '';
      this.#fail(
        type.startsWith('text/event-stream')
          ? new ParleyError('disconnected', 'the event stream failed')
          : Object.assign(new ParleyError('unavailable', `the answer is ${type || 'untyped'}, not an event stream`), { status: res.status }),
      );
      this.#retry();
      return;
    }
    const err = refusal(res.status, text);
    if (final(err, typeof this.token === 'function')) {
      this.#stop(err);
      return;
    }
    this.#fail(err);
    // Retry-After (over_capacity says how long) is the least delay.
    const after = Number(res.headers?.get('retry-after')) * 1000 || 0;
    const delay = backoff(this.#attempt, this.minDelay, this.maxDelay);
    this.#retry(Math.max(after, delay));
  }

  #drop(es, after) {
    if (this.#es !== es) return;
    es.close();
    this.#es = null;
    this.#retry(after);
  }

  #retry(after = null) {
    if (this.#stopped) return;
    const delay = after ?? backoff(this.#attempt, this.minDelay, this.maxDelay);
    this.#attempt++;
    this.#setState('reconnecting');
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#open(), delay);
  }
}

/**
 * Options of client.join().
 * @typedef {object} CallOptions
 * @property {boolean} [relayOnly=false] use TURN relays only (iceTransportPolicy 'relay'); also on when the ack says relay
 * @property {MediaStream|null} [stream=null] local media whose tracks go to every peer, or null for data only
 * @property {boolean} [dataChannel=true] a negotiated data channel (label 'parley', id 0) on every pair, as the Go SDK's
 * @property {RTCIceServer[]} [iceServers] ICE servers to use instead of the ack's (they are then never refreshed)
 * @property {number} [statsInterval=1000] ms between getStats samples of each connected peer; 0 turns sampling off
 * @property {number} [timeout] ms to wait for the join's ack (default: the client's timeout)
 * @property {typeof RTCPeerConnection} [RTCPeerConnection] an implementation (tests pass a fake)
 * @property {typeof fetch} [fetch] fetches fresh TURN credentials from /v1/ice-servers
 */

/**
 * A remote peer of a call, in call.peers. Its fields follow the
 * PeerConnection toward it.
 * @typedef {object} CallPeer
 * @property {string} session the peer's session in the call
 * @property {string|null} user its user
 * @property {boolean} polite this client's role toward it in perfect negotiation
 * @property {RTCPeerConnection} pc the PeerConnection toward it
 * @property {RTCPeerConnectionState} state the PeerConnection's connectionState
 * @property {'host'|'srflx'|'prflx'|'relay'|null} pair the selected candidate pair's type: relay when
 *   either side is a relay, else the local candidate's type; null until a pair is selected
 * @property {number|null} rtt the pair's round-trip time, ms
 * @property {'udp'|'tcp'|'tls'|null} protocol how the local candidate reaches the peer, or its TURN server for a relay
 * @property {MediaStream|null} stream the peer's media, once a track arrived
 */

// firstOfferWait is how long a peer that learnt of another from a `join`
// event waits for that peer's first offer before it offers itself, ms: the
// other normally offers at once, and perfect negotiation settles a late
// crossing.
const firstOfferWait = 5000;

// iceRestartDelay is how long a PeerConnection may stay disconnected before
// the impolite peer of the pair restarts ICE, ms; the polite one waits twice
// as long, so that the two rarely restart at once. A failed connection is
// restarted at once by the impolite peer, after this delay by the polite.
const iceRestartDelay = 3000;

// TURN credentials are fetched again at 80% of their lifetime, and at least
// credentialMargin s before they expire when they live long enough; a failed
// fetch is tried again after credentialRetryMin s, doubling up to
// credentialRetryMax.
const credentialMargin = 30;
const credentialRetryMin = 5;
const credentialRetryMax = 60;

// credentialDelay is the delay, in s, before TURN credentials valid for ttl s
// are fetched again.
function credentialDelay(ttl) {
  return Math.max(Math.min(ttl * 0.8, ttl - credentialMargin), ttl * 0.5);
}

// signalsHeld bounds the signals a Call keeps while it cannot send them (its
// connection is away) or cannot place them (from a peer not announced yet).
const signalsHeld = 256;

// codesLostToReconnects are the failures of a signal that the ICE restart
// after a rejoin makes up for.
const codesLostToReconnects = new Set(['disconnected', 'closed', 'timeout']);

// description is what a signal carries of a session description.
function description(d) {
  return d.type === 'rollback' ? { type: 'rollback', sdp: '' } : { type: d.type, sdp: d.sdp };
}

// iceUfrag is the first ICE username fragment of an SDP body, or ''.
function iceUfrag(sdp) {
  return /a=ice-ufrag:(\S+)/.exec(sdp ?? '')?.[1] ?? '';
}

// selectedPair reads the candidate pair a PeerConnection sends on from its
// statistics: the transport's selectedCandidatePairId, or (where a browser
// does not give it) the nominated pair that succeeded.
function selectedPair(report) {
  let pair;
  report.forEach((s) => {
    if (!pair && s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
  });
  if (!pair) {
    report.forEach((s) => {
      if (!pair && s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
    });
  }
  const local = pair && report.get(pair.localCandidateId);
  if (!local) return null;
  const remote = report.get(pair.remoteCandidateId);
  const relay = local.candidateType === 'relay';
  return {
    pair: relay || remote?.candidateType === 'relay' ? 'relay' : (local.candidateType ?? null),
    rtt: typeof pair.currentRoundTripTime === 'number' ? Math.round(pair.currentRoundTripTime * 10000) / 10 : null,
    protocol: (relay ? local.relayProtocol : local.protocol) ?? local.protocol ?? null,
  };
}

/**
 * This client's membership of a WebRTC call: a mesh of RTCPeerConnections,
 * one per remote peer, negotiated with the W3C's perfect negotiation pattern
 * over the call's signals, with the role (polite or not) the node gives each
 * pair. Made by client.join(); docs/CALLS.md describes calls, docs/SDK.md
 * this API.
 *
 * Who starts: a peer listed in the join ack is offered to at once; one that
 * joins later (a `join` event) is answered, and offered to only if its own
 * offer has not come within 5 s. Candidates are trickled, with
 * `{candidate: null}` at the end; remote ones that come before a remote
 * description wait for it. ICE restarts when a connection fails (the
 * impolite peer at once, the polite 3 s later) or stays disconnected for 3 s
 * (the polite 6 s), when the node says a peer resumed, and after this
 * client's own rejoin (the impolite side of each pair; the other answers).
 * TURN credentials from the ack are fetched again from /v1/ice-servers
 * before they expire and set on every PeerConnection.
 *
 * Events (call.on(name, fn)): 'peer' ({session, user}: a PeerConnection
 * toward a new peer exists), 'leave' ({session, user}: the peer left, its
 * PeerConnection is closed), 'track' ({session, track, stream}), 'open'
 * ({session}: the data channel toward it opened), 'data' ({session, data}),
 * 'state' ({session, state}: its connectionState), 'stats' ({session, pair,
 * rtt, protocol}: every statsInterval while connected), 'restart' ({session,
 * reason}: this side began an ICE restart; reason 'failed', 'disconnected',
 * 'resume', 'reconnect' or 'manual'), 'rejoined' ({resumed}: the client
 * reconnected and joined again; resumed false means this peer came too late
 * and starts over as a new one, with new PeerConnections), 'ended'
 * ({reason, error}: 'left' after leave(), 'closed' after client.close(),
 * 'refused' when a rejoin was refused for good), 'error' (a ParleyError: a
 * signal the node refused, `ice_failed` with `session` when a connection
 * failed, `negotiation_failed` when a description could not be applied, a
 * rejoin refused).
 */
export class Call extends Emitter {
  /** @hideconstructor Calls are made by client.join(). */
  constructor(host, name, options = {}) {
    super();
    /** The call's name. */
    this.name = name;
    /** This peer's session in the call: the `from` of its signals. It stays
     * across resumes, and changes only after a rejoin that did not resume. */
    this.session = null;
    /** Whether the PeerConnections use TURN relays only. */
    this.relayOnly = !!options.relayOnly;
    this.#host = host;
    this.#PC = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.#dataChannel = options.dataChannel !== false;
    this.#stream = options.stream ?? null;
    this.#override = Array.isArray(options.iceServers);
    this.#iceServers = this.#override ? options.iceServers : [];
    this.#statsInterval = options.statsInterval ?? 1000;
  }

  #host;
  #PC;
  #fetch;
  #dataChannel;
  #stream;
  #override; // options.iceServers replace the ack's, and are not refreshed
  #iceServers;
  #statsInterval;
  #links = new Map(); // session -> link: the PeerConnection toward a peer and its negotiation
  #strangers = new Map(); // session -> signals from a peer not announced yet
  #ready = false; // joined on the current connection: signals go out
  #outbox = []; // {link, data}: signals made while the connection was away
  #ended = false;
  #held = []; // events until the application has the Call, then null
  #statsTimer = null;
  #credentialTimer = null;
  #credentialFailures = 0;

  /** The remote peers: session -> CallPeer, each kept up to date. */
  get peers() {
    return new Map([...this.#links].map(([session, l]) => [session, l.peer]));
  }

  /** Whether the call has ended (leave(), the client's close(), a refused rejoin). */
  get ended() {
    return this.#ended;
  }

  emit(type, value) {
    if (this.#held) this.#held.push([type, value]);
    else super.emit(type, value);
  }

  /**
   * Sends text on the data channel to every peer whose channel is open, or
   * to one session. Returns how many peers it went to.
   * @param {string} data
   * @param {string} [to]
   * @returns {number}
   */
  send(data, to) {
    let n = 0;
    for (const l of this.#links.values()) {
      if (to !== undefined && l.peer.session !== to) continue;
      if (l.dc?.readyState !== 'open') continue;
      l.dc.send(data);
      n++;
    }
    return n;
  }

  /**
   * Restarts ICE toward one peer, or every peer (reason 'manual').
   * @param {string} [session]
   */
  restartIce(session) {
    for (const l of this.#links.values()) {
      if (session === undefined || l.peer.session === session) this.#restart(l, 'manual');
    }
  }

  /**
   * Replaces the local media sent to every peer: a track of a kind already
   * sent replaces the old one in place (no renegotiation); a new kind is
   * added; a kind the new stream lacks stops being sent.
   * @param {MediaStream|null} stream
   */
  setStream(stream) {
    this.#stream = stream ?? null;
    for (const l of this.#links.values()) this.#applyStream(l);
  }

  /** Leaves the call: the node tells the other peers at once, and every
   * PeerConnection is closed ('ended' {reason: 'left'}). */
  async leave() {
    if (this.#ended) return;
    const left = this.#host.leave();
    this.#end('left', null);
    await left;
  }

  // ---- from the client ----

  [callAck](ack, rejoin) {
    if (this.#ended) return;
    this.#takeICE(ack);
    const peers = Array.isArray(ack.peers) ? ack.peers : [];
    if (!rejoin) {
      this.session = ack.session;
      this.#ready = true;
      for (const p of peers) this.#connect(p, true);
      this.#scheduleStats();
      // The application gets the Call when join() resolves, in a microtask;
      // what happened meanwhile waits for it.
      setTimeout(() => this.#release(), 0);
      return;
    }
    if (!ack.resumed) {
      // This peer came back too late: the others saw it leave, and now see a
      // new peer join. Its PeerConnections start over.
      this.#outbox = [];
      this.#strangers.clear();
      this.session = ack.session;
      this.#ready = true;
      this.emit('rejoined', { resumed: false });
      for (const l of [...this.#links.values()]) this.#drop(l, true);
      for (const p of peers) this.#connect(p, true);
      return;
    }
    this.#ready = true;
    this.emit('rejoined', { resumed: true });
    // The ack lists the call as it is now: peer events of the time away are
    // not replayed.
    const now = new Set(peers.map((p) => p.session));
    for (const l of [...this.#links.values()]) if (!now.has(l.peer.session)) this.#drop(l, true);
    const out = this.#outbox;
    this.#outbox = [];
    const offered = new Set(); // links whose offer under way just went out
    for (const { link, data } of out) {
      if (link.closed) continue;
      this.#signal(link, data);
      if (data.sdp?.type === 'offer') offered.add(link);
    }
    for (const l of this.#links.values()) {
      this.#reconfigure(l);
      this.#resync(l, 'reconnect', offered.has(l));
    }
    // A peer that joined meanwhile found this one in its ack, and offers.
    for (const p of peers) if (!this.#links.has(p.session)) this.#connect(p, false);
  }

  [callFrame](f) {
    if (this.#ended) return;
    if (f.type === 'signal') {
      const l = this.#links.get(f.from);
      if (l) {
        this.#onSignal(l, f.data);
        return;
      }
      // The `join` event of a peer that offers at once can come after its
      // offer: hold its signals until then.
      let held = this.#strangers.get(f.from);
      if (!held) this.#strangers.set(f.from, (held = []));
      if (held.length < signalsHeld) held.push(f.data);
      return;
    }
    const peer = { session: f.session, user: f.user ?? null, polite: !!f.polite };
    const l = this.#links.get(f.session);
    switch (f.event) {
      case 'join':
        if (!l) this.#connect(peer, false);
        return;
      case 'leave':
        this.#strangers.delete(f.session);
        if (l) this.#drop(l, true);
        return;
      case 'resume':
        // Signals sent to it or by it just before it dropped may be lost.
        if (l) this.#resync(l, 'resume');
        else this.#connect(peer, false);
        return;
      default:
      // Unknown events are ignored: the protocol may grow.
    }
  }

  [callOffline]() {
    this.#ready = false;
  }

  [callEnd](reason, error) {
    if (reason === null) {
      // A join that never completed: nothing was made, nothing to tell.
      this.#ended = true;
      return;
    }
    if (error) this.emit('error', error);
    this.#end(reason, error);
  }

  // ---- peers ----

  #config() {
    return { iceServers: this.#iceServers, iceTransportPolicy: this.relayOnly ? 'relay' : 'all' };
  }

  // takeICE takes the ICE servers and relay policy of a join ack, and
  // schedules the refresh of its TURN credentials.
  #takeICE(ack) {
    if (ack.relay) this.relayOnly = true;
    clearTimeout(this.#credentialTimer);
    this.#credentialFailures = 0;
    if (this.#override) return;
    this.#iceServers = Array.isArray(ack.iceServers) ? ack.iceServers : [];
    const ttl = Number(ack.ice_ttl);
    if (ttl > 0) this.#credentialTimer = setTimeout(() => this.#refreshCredentials(), Math.min(credentialDelay(ttl) * 1000, 2 ** 31 - 1));
  }

  // connect makes the PeerConnection toward a peer. The peer found in the
  // join ack is offered to (negotiation starts with the data channel or the
  // tracks); one announced by a `join` event is waited for.
  #connect(p, offer) {
    const pc = new this.#PC(this.#config());
    const peer = { session: p.session, user: p.user ?? null, polite: !!p.polite, pc, state: pc.connectionState ?? 'new', pair: null, rtt: null, protocol: null, stream: null };
    const l = {
      peer,
      pc,
      polite: peer.polite,
      dc: null,
      senders: [], // {sender, kind}: the RTCRtpSenders of the local media
      // Perfect negotiation (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example).
      makingOffer: false,
      ignoreOffer: false,
      settingRemoteAnswerPending: false,
      chain: Promise.resolve(), // remote signals, applied one after the other
      candidates: [], // remote candidates waiting for a remote description
      waiting: !offer, // no offer of its own before the peer's first one
      waitTimer: null,
      restartTimer: null,
      failures: 0, // times it failed since it was last connected
      // restartFrom is the local ICE username fragment an ICE restart asked
      // for is to replace, or null: the restart is due until an exchange
      // completes with other credentials. (A browser forgets it when the
      // restart's offer is rolled back by a crossing one.)
      restartFrom: null,
      closed: false,
    };
    this.#links.set(p.session, l);
    // The handlers are set before the data channel and tracks are added,
    // whose negotiationneeded they must see.
    pc.onnegotiationneeded = () => this.#negotiate(l);
    pc.onicecandidate = (e) => this.#sendCandidate(l, e.candidate);
    pc.onconnectionstatechange = () => this.#stateChanged(l);
    pc.ontrack = (e) => this.#onTrack(l, e);
    if (this.#dataChannel) {
      const dc = pc.createDataChannel('parley', { negotiated: true, id: 0 });
      l.dc = dc;
      dc.onopen = () => {
        if (!l.closed) this.emit('open', { session: peer.session });
      };
      dc.onmessage = (e) => {
        if (!l.closed) this.emit('data', { session: peer.session, data: e.data });
      };
    }
    this.#applyStream(l);
    if (l.waiting) {
      l.waitTimer = setTimeout(() => {
        l.waiting = false;
        if (!l.closed && !l.pc.remoteDescription) this.#negotiate(l);
      }, firstOfferWait);
    }
    this.emit('peer', { session: peer.session, user: peer.user });
    if (this.relayOnly && !this.#iceServers.some((s) => [s.urls].flat().some((u) => /^turns?:/.test(String(u))))) {
      const err = new ParleyError('ice_failed', `relay only, and no TURN server to reach peer ${peer.session} through`);
      err.session = peer.session;
      err.call = this.name;
      this.emit('error', err);
    }
    const held = this.#strangers.get(p.session);
    this.#strangers.delete(p.session);
    for (const data of held ?? []) this.#onSignal(l, data);
  }

  // applyStream makes l's senders carry the current local stream's tracks:
  // each sender takes the stream's next track of its kind in place (or
  // none, and sends nothing), and a track left over gets a sender of its
  // own, which renegotiates.
  #applyStream(l) {
    const stream = this.#stream;
    const tracks = stream ? [...stream.getTracks()] : [];
    for (const s of l.senders) {
      const i = tracks.findIndex((t) => t.kind === s.kind);
      const track = i >= 0 ? tracks.splice(i, 1)[0] : null;
      if (track === s.sender.track) continue;
      s.sender.replaceTrack(track).catch((err) => {
        if (!l.closed) this.#negotiationFailed(l, `replacing the ${s.kind} track`, err);
      });
      if (track && typeof s.sender.setStreams === 'function') s.sender.setStreams(stream);
    }
    for (const track of tracks) l.senders.push({ sender: l.pc.addTrack(track, stream), kind: track.kind });
  }

  // drop closes l's PeerConnection and forgets the peer.
  #drop(l, tell) {
    if (l.closed) return;
    l.closed = true;
    clearTimeout(l.waitTimer);
    clearTimeout(l.restartTimer);
    if (this.#links.get(l.peer.session) === l) this.#links.delete(l.peer.session);
    try {
      l.pc.close();
    } catch {
      // closed already
    }
    l.peer.state = 'closed';
    if (tell) this.emit('leave', { session: l.peer.session, user: l.peer.user });
  }

  #end(reason, error) {
    if (this.#ended) return;
    this.#ended = true;
    this.#ready = false;
    this.#outbox = [];
    this.#strangers.clear();
    clearTimeout(this.#statsTimer);
    clearTimeout(this.#credentialTimer);
    for (const l of [...this.#links.values()]) this.#drop(l, false);
    this.emit('ended', error ? { reason, error } : { reason });
  }

  #release() {
    const held = this.#held;
    this.#held = null;
    for (const [type, value] of held ?? []) super.emit(type, value);
  }

  // ---- negotiation ----

  // signal sends data to l's peer, or keeps it for after the rejoin while
  // the connection is away.
  #signal(l, data) {
    if (l.closed) return;
    if (!this.#ready) {
      if (this.#outbox.length < signalsHeld) this.#outbox.push({ link: l, data });
      return;
    }
    this.#host.signal(l.peer.session, data).catch((err) => {
      // One lost to a reconnect is made up for by the ICE restart after
      // the rejoin; one refused (the peer left) has nobody to go to.
      if (l.closed || this.#ended || codesLostToReconnects.has(err.code)) return;
      err.session = l.peer.session;
      err.call = this.name;
      this.emit('error', err);
    });
  }

  // negotiate is negotiationneeded's handler: a new offer, the first of
  // the pair or one that restarts ICE.
  async #negotiate(l) {
    const pc = l.pc;
    if (l.closed || l.waiting || pc.signalingState !== 'stable') return;
    try {
      l.makingOffer = true;
      await pc.setLocalDescription();
      // A crossing offer applied meanwhile rolled this one back (polite).
      if (l.closed || pc.signalingState !== 'have-local-offer' || pc.localDescription?.type !== 'offer') return;
      this.#signal(l, { sdp: description(pc.localDescription) });
    } catch (err) {
      if (!l.closed) this.#negotiationFailed(l, 'making an offer', err);
    } finally {
      l.makingOffer = false;
    }
  }

  #negotiationFailed(l, what, err) {
    const e = new ParleyError('negotiation_failed', `${what} for peer ${l.peer.session}: ${err?.message ?? err}`);
    e.session = l.peer.session;
    e.call = this.name;
    this.emit('error', e);
  }

  #onSignal(l, data) {
    l.chain = l.chain.then(() => this.#applySignal(l, data));
  }

  // applySignal applies a remote signal, as perfect negotiation does: of two
  // crossing offers, the impolite peer ignores the other's, and the polite
  // one takes it (setRemoteDescription rolls its own back) and answers.
  async #applySignal(l, data) {
    if (l.closed || data === null || typeof data !== 'object') return;
    const pc = l.pc;
    if (data.sdp && typeof data.sdp === 'object') {
      const desc = data.sdp;
      if (desc.type === 'rollback') {
        // The peer took back an offer this one has not answered yet.
        if (pc.signalingState !== 'have-remote-offer') return;
        try {
          await pc.setRemoteDescription({ type: 'rollback' });
        } catch (err) {
          if (!l.closed) this.#negotiationFailed(l, 'rolling back', err);
        }
        return;
      }
      // An answer to no offer under way is a repeat (the peer answered an
      // offer sent again after a reconnect twice): the first one was taken.
      if (desc.type === 'answer' && pc.signalingState !== 'have-local-offer' && !l.settingRemoteAnswerPending) return;
      // The answer to an offer that restarts ICE has new ICE credentials:
      // one with the current remote ones answers an earlier offer (the copy
      // of an offer sent again after a resume), not the one under way.
      if (
        desc.type === 'answer' &&
        pc.currentLocalDescription &&
        pc.currentRemoteDescription &&
        iceUfrag(pc.pendingLocalDescription?.sdp) !== iceUfrag(pc.currentLocalDescription.sdp) &&
        iceUfrag(desc.sdp) === iceUfrag(pc.currentRemoteDescription.sdp)
      )
        return;
      const readyForOffer = !l.makingOffer && (pc.signalingState === 'stable' || l.settingRemoteAnswerPending);
      const offerCollision = desc.type === 'offer' && !readyForOffer;
      l.ignoreOffer = !l.polite && offerCollision;
      if (l.ignoreOffer) return;
      try {
        l.settingRemoteAnswerPending = desc.type === 'answer';
        try {
          await pc.setRemoteDescription(description(desc));
        } finally {
          l.settingRemoteAnswerPending = false;
        }
        if (l.closed) return;
        l.waiting = false;
        clearTimeout(l.waitTimer);
        if (desc.type === 'offer') {
          await pc.setLocalDescription();
          if (l.closed) return;
          this.#signal(l, { sdp: description(pc.localDescription) });
        }
        if (pc.signalingState === 'stable') this.#exchanged(l);
      } catch (err) {
        if (!l.closed) this.#negotiationFailed(l, `applying the ${desc.type}`, err);
        return;
      }
      const queued = l.candidates;
      l.candidates = [];
      for (const c of queued) await this.#addCandidate(l, c);
      return;
    }
    if ('candidate' in data) {
      if (!pc.remoteDescription) {
        if (l.candidates.length < signalsHeld) l.candidates.push(data.candidate);
        return;
      }
      await this.#addCandidate(l, data.candidate);
    }
  }

  // addCandidate adds a remote candidate; null, or an empty candidate, is
  // the end of candidates. A candidate of an offer this side ignored, or of
  // an ICE generation gone, is refused by the browser, and that is fine.
  async #addCandidate(l, c) {
    try {
      if (c === null || c === undefined || !c.candidate) await l.pc.addIceCandidate(c?.sdpMid != null || c?.sdpMLineIndex != null ? c : undefined);
      else await l.pc.addIceCandidate(c);
    } catch {
      // an ignored offer's, a past generation's, or end-of-candidates a browser does not take
    }
  }

  #sendCandidate(l, c) {
    if (l.closed) return;
    if (c === null || c === undefined) {
      this.#signal(l, { candidate: null });
      return;
    }
    // An empty candidate is one browser's end of a generation; null follows.
    if (!c.candidate) return;
    const init = typeof c.toJSON === 'function' ? c.toJSON() : c;
    const out = { candidate: init.candidate };
    if (init.sdpMid != null) out.sdpMid = init.sdpMid;
    if (init.sdpMLineIndex != null) out.sdpMLineIndex = init.sdpMLineIndex;
    if (init.usernameFragment != null) out.usernameFragment = init.usernameFragment;
    this.#signal(l, { candidate: out });
  }

  // restart restarts ICE toward l's peer: the browser makes an offer with new
  // credentials as soon as no other negotiation is under way.
  #restart(l, reason) {
    if (l.closed || !l.pc.remoteDescription) return;
    this.emit('restart', { session: l.peer.session, reason });
    l.restartFrom ??= iceUfrag(l.pc.currentLocalDescription?.sdp);
    l.pc.restartIce();
  }

  // exchanged runs when an offer/answer exchange has completed: a restart
  // asked for during it, and not made by it, goes now.
  #exchanged(l) {
    if (l.restartFrom === null) return;
    if (iceUfrag(l.pc.currentLocalDescription?.sdp) !== l.restartFrom) l.restartFrom = null;
    else if (l.pc.signalingState === 'stable') l.pc.restartIce();
  }

  // resync makes up for signals that a reconnect (of this peer or the
  // remote) may have lost. An offer under way is sent again: the remote
  // answers it if it never got it. The impolite peer of the pair then
  // restarts ICE; the polite one leaves it to the other, so that the two do
  // not offer at once.
  #resync(l, reason, offerSent = false) {
    if (l.closed) return;
    if (!offerSent && l.pc.signalingState === 'have-local-offer' && l.pc.localDescription) this.#signal(l, { sdp: description(l.pc.localDescription) });
    if (!l.polite) this.#restart(l, reason);
  }

  #reconfigure(l) {
    try {
      const current = typeof l.pc.getConfiguration === 'function' ? l.pc.getConfiguration() : {};
      l.pc.setConfiguration({ ...current, ...this.#config() });
    } catch (err) {
      if (!l.closed) this.#negotiationFailed(l, 'new ICE servers', err);
    }
  }

  #stateChanged(l) {
    if (l.closed) return;
    const state = l.pc.connectionState;
    if (state === l.peer.state) return;
    l.peer.state = state;
    this.emit('state', { session: l.peer.session, state });
    clearTimeout(l.restartTimer);
    l.restartTimer = null;
    switch (state) {
      case 'connected':
        l.failures = 0;
        this.#sample(l);
        return;
      case 'failed':
        if (l.failures++ === 0) {
          const err = new ParleyError('ice_failed', `the connection to peer ${l.peer.session} failed`);
          err.session = l.peer.session;
          err.call = this.name;
          this.emit('error', err);
        }
        break;
      case 'disconnected':
        break;
      default:
        return;
    }
    // A connection that keeps failing (no network) is restarted ever less
    // often, up to every 30 s.
    const again = state === 'failed' ? Math.min(30000, l.failures > 1 ? iceRestartDelay * 2 ** (l.failures - 2) : 0) : 0;
    const delay = again + (state === 'disconnected' ? iceRestartDelay : 0) + (l.polite ? iceRestartDelay : 0);
    if (delay === 0) {
      this.#restart(l, 'failed');
      return;
    }
    l.restartTimer = setTimeout(() => {
      const now = l.pc.connectionState;
      if (now === 'failed' || now === 'disconnected') this.#restart(l, now);
    }, delay);
  }

  #onTrack(l, e) {
    if (l.closed) return;
    let stream = e.streams?.[0] ?? null;
    if (!stream) {
      stream = l.peer.stream ?? (typeof MediaStream === 'function' ? new MediaStream() : null);
      stream?.addTrack(e.track);
    }
    l.peer.stream = stream;
    this.emit('track', { session: l.peer.session, track: e.track, stream });
  }

  // ---- statistics ----

  #scheduleStats() {
    clearTimeout(this.#statsTimer);
    if (!(this.#statsInterval > 0) || this.#ended) return;
    this.#statsTimer = setTimeout(() => {
      for (const l of this.#links.values()) if (l.peer.state === 'connected') this.#sample(l);
      this.#scheduleStats();
    }, this.#statsInterval);
  }

  async #sample(l) {
    if (!(this.#statsInterval > 0)) return;
    let got;
    try {
      got = selectedPair(await l.pc.getStats());
    } catch {
      return; // closed meanwhile
    }
    if (!got || l.closed) return;
    Object.assign(l.peer, got);
    this.emit('stats', { session: l.peer.session, ...got });
  }

  // ---- TURN credentials ----

  // refreshCredentials fetches fresh ICE servers and sets them on every
  // PeerConnection. Allocations made with the old credentials outlive
  // them; the new ones serve later restarts and new peers.
  async #refreshCredentials() {
    let answer;
    try {
      if (typeof this.#fetch !== 'function') throw new ParleyError('unavailable', 'no fetch');
      const token = await this.#host.token();
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      // A request that never answers must not stop the refreshing.
      const signal = typeof AbortSignal?.timeout === 'function' ? AbortSignal.timeout(probeTimeout) : undefined;
      const res = await this.#fetch(this.#host.iceServersURL(), { headers, cache: 'no-store', signal });
      if (!res.ok) throw refusal(res.status, await res.text());
      answer = await res.json();
      if (!Array.isArray(answer?.iceServers)) throw new ParleyError('bad_frame', 'the ICE servers answer has no iceServers');
    } catch {
      if (this.#ended) return;
      const delay = Math.min(credentialRetryMax, credentialRetryMin * 2 ** this.#credentialFailures);
      this.#credentialFailures++;
      clearTimeout(this.#credentialTimer);
      this.#credentialTimer = setTimeout(() => this.#refreshCredentials(), delay * 1000);
      return;
    }
    if (this.#ended) return;
    this.#credentialFailures = 0;
    this.#iceServers = answer.iceServers;
    for (const l of this.#links.values()) this.#reconfigure(l);
    clearTimeout(this.#credentialTimer);
    const ttl = Number(answer.ttl);
    if (ttl > 0) this.#credentialTimer = setTimeout(() => this.#refreshCredentials(), Math.min(credentialDelay(ttl) * 1000, 2 ** 31 - 1));
  }
}

// mediaErrors are the sentences for getUserMedia's DOMExceptions, by name.
const mediaErrors = {
  NotAllowedError:
    'The camera and microphone are blocked for this page: allow them in the browser\u2019s site settings (the icon beside the address), or join without them.',
  PermissionDeniedError:
    'The camera and microphone are blocked for this page: allow them in the browser\u2019s site settings (the icon beside the address), or join without them.',
  NotFoundError: 'No camera or microphone was found: plug one in, or join without them.',
  NotReadableError: 'The camera or microphone is in use by another application, or did not start: close that application and try again.',
  OverconstrainedError: 'The camera cannot give the picture asked for: try another camera, or the default settings.',
  SecurityError: 'The browser allows the camera only on secure pages: open this page over https, or on localhost.',
  AbortError: 'The camera or microphone did not start: try again, or join without them.',
};

// closeSentence is what a WebSocket close (the node's code, or the SDK's
// own 4000-4002) means for the person using the page.
function closeSentence(code, reason, fresh) {
  switch (code) {
    case 1000:
      // The SDK leaves a draining node itself with 1000 'draining'.
      if (reason === 'draining') return codeSentence('draining', reason, {}, fresh);
      return 'The connection was closed.';
    case 1005:
      return 'The connection was closed.';
    case 1001:
      return 'The node stopped hearing from this page (a sleeping tab, or a lost network), so it closed the connection: reconnecting.';
    case 1003:
      return 'The page sent something the node does not take, so the node closed the connection: reload the page.';
    case 1006:
      return 'The connection to the node was lost: reconnecting. If this keeps happening, check your network.';
    case 1008:
      if (/origin/.test(reason)) return codeSentence('forbidden', reason, {}, fresh);
      return codeSentence('unauthorized', reason || 'token refused', {}, fresh);
    case 1009:
      return 'A message was larger than the node takes, so it closed the connection: send less at once.';
    case 1011:
      return 'The node had an internal error and closed the connection: reconnecting.';
    case 1012:
      if (/history lost/.test(reason)) return 'The node lost the recent history of a room (its message store restarted): reconnecting; messages sent meanwhile may be missing.';
      return codeSentence('draining', reason, {}, fresh);
    case 1013:
      return 'This page read its messages too slowly (a slow network, or a busy tab), so the node closed the connection: reconnecting, and catching up on what was missed.';
    case 4000:
      return 'The node did not answer in time: trying again.';
    case 4001:
      return 'Nothing was heard from the node for too long, so the network may be down: reconnecting.';
    case 4002:
      return 'The node could not take back a room or call for a moment: reconnecting to try again.';
    default:
      return `The connection to the node closed (${code}${reason ? `: ${reason}` : ''}): reconnecting.`;
  }
}

// clause is a message from the node without the full stop it may end with.
function clause(message) {
  return String(message ?? '').replace(/[.\s]+$/, '');
}

// codeSentence is what an error code means for the person using the page.
// x is the error (for its room, call or session), message its message.
function codeSentence(code, message, x, fresh) {
  const m = clause(message);
  // A refusal the client tries again by itself: the renewal of a room or a
  // call after a reconnect.
  const what = !x.retrying ? null : x.call ? `the call ${x.call}` : (x.room ?? null);
  switch (code) {
    case 'unauthorized':
      if (/^missing (token|credential)/.test(m)) return `This node checks tokens, and none was given: ${fresh}.`;
      if (/expired/.test(m)) return `Your token has expired: ${fresh}.`;
      return `The node refused the token (${m || 'no reason given'}): ${fresh}.`;
    case 'forbidden': {
      if (/ is full/.test(m)) {
        const peers = /at most (\d+)/.exec(m)?.[1];
        return `The call is full${peers ? ` (at most ${peers} people)` : ''}: wait for someone to leave, or start another call.`;
      }
      if (/calls at once/.test(m)) return 'This page is in as many calls as one connection may be: leave one first.';
      if (/^origin not allowed/.test(m)) return 'This node does not take connections from this site: ask its operator to allow this site\u2019s origin.';
      if (/^room limit reached/.test(m)) return 'That is more rooms than the node lets one connection have: leave some first.';
      if (/^not allowed in call/.test(m)) return 'Your token no longer allows this call: join again with a token that allows it.';
      if (/same user/.test(m)) return 'The fresh token is for another user: sign in again as the same person.';
      const call = x.call ?? /^not allowed to join call (\S+)/.exec(m)?.[1];
      if (call) return `Your token does not allow joining the call ${call}: pick another call, or use a token that allows it.`;
      const sending = /^not allowed to publish to (\S+)/.exec(m)?.[1];
      if (sending) return `Your token does not allow sending to ${sending}: use a token that allows it.`;
      const room = x.room ?? /^not allowed to subscribe to (\S+)/.exec(m)?.[1];
      if (room) return `Your token does not allow the room ${room}: pick another room, or use a token that allows it.`;
      return `The node refused: ${m || 'not allowed'}.`;
    }
    case 'bad_room':
      return 'That name cannot be used: room and call names are 1 to 128 letters, digits or _ . : @ - characters.';
    case 'rate_limited':
      if (what) return `Rejoining ${what} failed for a moment (${m}): trying again.`;
      if (/joining calls too fast/.test(m)) return 'That was joining calls too fast: wait a second and try again.';
      if (/signal/.test(m)) return 'The call sent more signals than the node allows: it catches up in a moment.';
      return 'That was faster than the node allows: wait a moment and try again.';
    case 'over_capacity':
      if (what) return `Rejoining ${what} failed for a moment (${m}): trying again.`;
      return 'The node holds as many rooms and calls as it may: try again in a few seconds, or on another node.';
    case 'draining':
      return 'The node is shutting down: reconnecting, to another node if there is one.';
    case 'internal':
      if (what) return `Rejoining ${what} failed for a moment (${m}): trying again.`;
      return `The node had a problem${m ? ` (${m})` : ''}: try again shortly.`;
    case 'not_found':
      if (/^not in call/.test(m)) return 'This page is no longer in the call: join it again.';
      if (/^no peer/.test(m)) return 'That person has left the call.';
      return `Not found: ${m || 'nothing there'}.`;
    case 'too_large':
      return 'That is larger than the node takes: send something smaller.';
    case 'timeout':
      return 'The node did not answer in time: check your connection, and try again.';
    case 'disconnected':
      return 'The connection dropped before the node answered: try again.';
    case 'closed':
      return 'Not connected to the node: connect again to carry on.';
    case 'unavailable':
      return 'The node cannot be reached: check your network; the page keeps trying.';
    case 'ice_failed':
      if (/no TURN server/.test(message ?? '')) return "Relay only is on, but this node offers no TURN relay: turn Relay only off, or ask the node's operator to enable TURN.";
      return "The call could not connect: try 'relay only' or another network.";
    case 'negotiation_failed':
      return 'The call could not agree on its media with the other browser: leave and join again.';
    case 'already_joined':
      return 'This page is in that call already.';
    case 'already_subscribed':
      return 'This page is in that room already.';
    case 'bad_frame':
      return 'The node sent something this page cannot read: reload the page.';
    case 'bad_request':
      return `The node refused the request (${m || 'bad request'}): reload the page and try again.`;
    default:
      return m ? `Something went wrong: ${m}.` : `Something went wrong (${code}): try again.`;
  }
}

/**
 * A plain sentence a person can act on, for anything the SDK or the browser
 * reports: a ParleyError (or its code as a string), a WebSocket close event
 * or the client's 'close' event value ({code, reason}), a getUserMedia
 * DOMException (NotAllowedError, NotFoundError, NotReadableError,
 * OverconstrainedError…), or any other Error.
 *
 *   client.on('error', (err) => notice(explain(err)));
 *   client.on('close', (e) => { if (e.code === 1013) notice(explain(e)); });
 *   call.on('error', (err) => notice(explain(err)));  // 'ice_failed' included
 *
 * @param {unknown} x
 * @param {object} [options]
 * @param {string} [options.token] what the person does to give a fresh token, ending the
 *   sentences about tokens (default 'sign in again to get a fresh token')
 * @returns {string}
 */
export function explain(x, options = {}) {
  const fresh = options.token || 'sign in again to get a fresh token';
  if (x === null || x === undefined) return 'Something went wrong: try again.';
  if (typeof x === 'string') return mediaErrors[x] ?? codeSentence(x, '', {}, fresh);
  if (typeof x !== 'object') return `Something went wrong: ${clause(x)}.`;
  if (typeof x.name === 'string' && mediaErrors[x.name] && !(x instanceof ParleyError)) return mediaErrors[x.name];
  if (typeof x.code === 'string') return codeSentence(x.code, x.message, x, fresh);
  if (typeof x.code === 'number' && ('reason' in x || 'wasClean' in x)) return closeSentence(x.code, String(x.reason ?? ''), fresh);
  if (typeof x.message === 'string' && x.message) return `Something went wrong: ${clause(x.message)}.`;
  return 'Something went wrong: try again.';
}
