// parley.js: the browser SDK of the Parley protocol, version 1.
//
// An ES module with no dependencies:
//
//   import { Parley } from '/parley.js';
//   const client = new Parley({ token });            // ws(s)://<this host>/v1/ws
//   await client.subscribe('lobby', { presence: true, onMessage: m => show(m) });
//   await client.publish('lobby', { text: 'hi' });
//
// The client reconnects by itself (exponential backoff with full jitter, or when
// a draining node says so with a `reconnect` frame), resubscribes every room
// from the last position it saw, and drops any offset it has already delivered.
// docs/SDK.md describes the whole API; docs/PROTOCOL.md the frames it speaks.

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
 * (`timeout`, `disconnected`, `closed`, `already_subscribed`, `unsubscribed`). */
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
  // and every subscribe answered. A connection the node closes before then
  // (1013 while sending a big room's subscribe ack, say) does not count, so
  // repeated failures back off instead of resubscribing in a tight loop.
  #readyCheck() {
    if (this.#welcomed && this.#subAcks.size === 0) this.#attempt = 0;
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
