// The node dashboard: GET /v1/stats once a second, figures and small live
// charts drawn on <canvas>. On the admin listener the endpoint is open; on
// the public listener it needs the API key, which the page asks for and keeps
// in sessionStorage (this tab only).

const $ = (selector) => document.querySelector(selector);

const every = 1000; // ms between samples while the node answers
const history = 60; // samples each chart keeps: a minute
const keyName = 'parley.dashboard.apiKey';

const stateEl = $('#state');
const noticeEl = $('#notice');
const nodeLine = $('#node-line');
const keyForm = $('#key-form');
const keyWhy = $('#key-why');
const forgetButton = $('#forget');
const updatedEl = $('#updated');

let key = sessionStorage.getItem(keyName) || '';
let timer = 0;
let inFlight = null; // the AbortController of the request under way
let prev = null; // the last snapshot, for rates
let failures = 0;
let waitingForKey = false;
let linked = false; // the nav points at the public listener (admin only)

// ---- formatting ----

const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });

function count(n) {
  return n >= 100000 ? compact.format(n) : whole.format(n);
}

function rate(n) {
  if (n >= 100) return count(Math.round(n));
  if (n >= 10) return n.toFixed(0);
  return n === 0 ? '0' : n.toFixed(1);
}

function bytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${i === 0 ? Math.round(n) : n.toFixed(n >= 100 ? 0 : 1)} ${units[i]}`;
}

// ms shows milliseconds with two or three significant digits, and no
// trailing zeros: 0.27 ms, 4.2 ms, 5 ms, 250 ms, 1.25 s.
function ms(v) {
  if (v == null) return '–';
  if (v >= 1000) return `${+(v / 1000).toFixed(v >= 10000 ? 0 : 2)} s`;
  if (v >= 10) return `${Math.round(v)} ms`;
  if (v >= 1) return `${+v.toFixed(1)} ms`;
  return `${+v.toFixed(2)} ms`;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} days ${h % 24} h`;
}

// show sets an output's text, and its raw value in data-value for whoever
// reads the page without parsing text.
function show(id, value, text) {
  const el = document.getElementById(id);
  el.dataset.value = value == null ? '' : String(value);
  el.textContent = text ?? (value == null ? '–' : String(value));
}

// ---- charts ----

// Chart draws series of numbers on a canvas, newest at the right, scaled to
// the largest value shown. It redraws at the canvas's size in device pixels
// each time, so a resize, a zoom or a move to a screen of another pixel
// ratio is picked up at the next sample (or at once, by the observer).
class Chart {
  constructor(canvas, series, { format = axis } = {}) {
    this.canvas = canvas;
    this.series = series; // [{ color: '--c1' }, ...]
    this.format = format;
    this.points = []; // arrays of values, or null for a gap
  }

  push(values) {
    this.points.push(values);
    if (this.points.length > history) this.points.shift();
    // How many samples the chart shows, for whoever reads the page.
    this.canvas.dataset.points = String(this.points.filter(Boolean).length);
    this.draw();
  }

  gap() {
    if (this.points.length && this.points[this.points.length - 1] !== null) this.push(null);
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(c);
    const line = css.getPropertyValue('--chart-grid').trim() || '#ccc';
    const muted = css.getPropertyValue('--muted').trim() || '#777';

    let top = 0;
    for (const p of this.points) if (p) for (const v of p) if (v > top) top = v;
    top = niceCeil(top);

    // The grid: a baseline and a line at the top, labelled.
    const pad = 2;
    const y = (v) => h - pad - (v / top) * (h - 2 * pad - 12);
    ctx.lineWidth = 1;
    ctx.strokeStyle = line;
    ctx.beginPath();
    ctx.moveTo(0, Math.round(y(0)) + 0.5);
    ctx.lineTo(w, Math.round(y(0)) + 0.5);
    ctx.moveTo(0, Math.round(y(top)) + 0.5);
    ctx.lineTo(w, Math.round(y(top)) + 0.5);
    ctx.stroke();
    ctx.fillStyle = muted;
    ctx.font = '10px system-ui, sans-serif';
    ctx.textBaseline = 'bottom';
    ctx.fillText(this.format(top), 0, Math.round(y(top)) - 1);

    const step = w / (history - 1);
    const x0 = w - (this.points.length - 1) * step;
    // The first series is filled under its line; the others are lines.
    this.series.forEach((s, si) => {
      const color = css.getPropertyValue(s.color).trim() || '#36c';
      const runs = [];
      let run = [];
      this.points.forEach((p, i) => {
        if (!p || p[si] == null) {
          if (run.length) runs.push(run);
          run = [];
          return;
        }
        run.push([x0 + i * step, y(p[si])]);
      });
      if (run.length) runs.push(run);
      for (const r of runs) {
        if (si === 0 && r.length > 1) {
          ctx.beginPath();
          ctx.moveTo(r[0][0], y(0));
          for (const [px, py] of r) ctx.lineTo(px, py);
          ctx.lineTo(r[r.length - 1][0], y(0));
          ctx.closePath();
          ctx.globalAlpha = 0.14;
          ctx.fillStyle = color;
          ctx.fill();
          ctx.globalAlpha = 1;
        }
        ctx.beginPath();
        r.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
        ctx.strokeStyle = color;
        ctx.lineWidth = 1.75;
        ctx.lineJoin = 'round';
        ctx.stroke();
        if (r.length === 1) {
          ctx.fillStyle = color;
          ctx.beginPath();
          ctx.arc(r[0][0], r[0][1], 1.75, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    });
  }
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten, so the chart's top
// label reads well; at least 1.
// axis labels a chart's top: whole numbers as counts, fractions as they are.
function axis(v) {
  return Number.isInteger(v) ? count(v) : String(v);
}

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

const charts = {
  connections: new Chart($('#c-connections'), [{ color: '--c1' }, { color: '--c2' }]),
  messages: new Chart($('#c-messages'), [{ color: '--c1' }, { color: '--c2' }]),
  latency: new Chart($('#c-latency'), [{ color: '--c1' }, { color: '--c2' }, { color: '--c3' }], { format: (v) => ms(v) }),
  rooms: new Chart($('#c-rooms'), [{ color: '--c1' }]),
  calls: new Chart($('#c-calls'), [{ color: '--c1' }, { color: '--c2' }]),
  slow: new Chart($('#c-slow'), [{ color: '--c1' }]),
  turn: new Chart($('#c-turn'), [{ color: '--c1' }], { format: (v) => `${bytes(v)}/s` }),
};

const observer = new ResizeObserver(() => Object.values(charts).forEach((c) => c.draw()));
Object.values(charts).forEach((c) => observer.observe(c.canvas));
// A move to a screen of another pixel ratio resizes nothing the observer
// sees: redraw then too.
function watchPixelRatio() {
  matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`).addEventListener(
    'change',
    () => {
      Object.values(charts).forEach((c) => c.draw());
      watchPixelRatio();
    },
    { once: true },
  );
}
watchPixelRatio();

// ---- state and messages ----

function setState(state, text) {
  stateEl.dataset.state = state;
  stateEl.textContent = text;
}

function notice(text) {
  noticeEl.textContent = text;
  noticeEl.hidden = !text;
}

function stale(on) {
  document.body.classList.toggle('stale', on);
}

// locked hides the figures while the node shows none here: a page of empty
// tiles would read as broken.
function locked(on, line) {
  document.body.classList.toggle('locked', on);
  if (on) nodeLine.textContent = line;
}

// ---- one sample ----

// slowSeen remembers the slow-consumer close count of each sample of the
// last minute, as [uptime, count].
const slowSeen = [];

function update(s) {
  failures = 0;
  waitingForKey = false;
  keyForm.hidden = true;
  forgetButton.hidden = !key || s.listener === 'admin';
  stale(false);
  locked(false);
  linkPublic(s);
  // The node answers requests close together with one snapshot: a second
  // look at it adds nothing, and no rate.
  if (prev && s.node === prev.node && s.uptime_seconds === prev.uptime_seconds) return;

  // A node that restarted starts its counters again: no rate across that.
  if (prev && (s.uptime_seconds < prev.uptime_seconds || s.node !== prev.node)) {
    prev = null;
    slowSeen.length = 0;
    Object.values(charts).forEach((c) => c.gap());
  }
  const dt = prev ? s.uptime_seconds - prev.uptime_seconds : 0;
  const per = (now, before) => (dt > 0 ? Math.max(0, now - before) / dt : null);

  const bus = s.cluster.bus === 'redis' ? 'Redis fan-out' : 'in-memory fan-out';
  nodeLine.textContent = `Node ${s.node} · up ${duration(s.uptime_seconds)} · ${bus}`;
  if (s.draining) {
    setState('draining', 'Draining');
    notice('This node is draining: it has told its clients to reconnect, to another node if there is one, and will stop shortly. The figures go on until it does.');
  } else if (!s.ready) {
    setState('degraded', 'Not ready');
    notice(s.cluster.redis && !s.cluster.redis.connected
      ? 'This node cannot reach Redis: it takes no new clients until it reconnects (its /readyz says 503, so a load balancer sends them elsewhere).'
      : 'This node is not ready: it takes no new clients right now.');
  } else {
    setState('live', 'Live');
    notice('');
  }

  // Connections.
  const c = s.connections;
  show('v-connections', c.total, count(c.total));
  show('v-ws', c.websocket, count(c.websocket));
  show('v-sse', c.sse, count(c.sse));
  charts.connections.push([c.websocket, c.sse]);

  // Messages.
  const m = s.messages;
  const outRate = prev ? per(m.out, prev.messages.out) : null;
  const inRate = prev ? per(m.in, prev.messages.in) : null;
  show('v-out-rate', outRate, outRate == null ? '–' : rate(outRate));
  show('v-in-rate', inRate, inRate == null ? '–' : rate(inRate));
  show('v-out-total', m.out, count(m.out));
  if (outRate != null) charts.messages.push([outRate, inRate]);

  // Latency.
  const l = s.delivery_latency;
  show('v-p50', l.p50_ms, ms(l.p50_ms));
  show('v-p90', l.p90_ms, ms(l.p90_ms));
  show('v-p99', l.p99_ms, ms(l.p99_ms));
  show('v-max', l.max_ms, l.max_ms == null ? '–' : `${l.capped ? 'over' : '≤'} ${ms(l.max_ms)}`);
  $('#v-window').textContent = l.count
    ? `over the last ${duration(l.window_seconds)}: ${count(l.count)} writes to clients`
    : `no deliveries in the last ${duration(l.window_seconds)}`;
  charts.latency.push([l.p99_ms, l.p90_ms, l.p50_ms]);

  // Rooms.
  show('v-rooms', s.rooms.subscribed, count(s.rooms.subscribed));
  $('#s-rooms').textContent = s.rooms.held != null
    ? `with a subscriber here · ${count(s.rooms.held)} held in memory`
    : 'with a subscriber on this node';
  charts.rooms.push([s.rooms.subscribed]);

  // Calls.
  show('v-calls', s.calls.active, count(s.calls.active));
  show('v-peers', s.calls.peers, count(s.calls.peers));
  $('#s-away').textContent = s.calls.peers_away ? ` (${count(s.calls.peers_away)} away)` : '';
  charts.calls.push([s.calls.active, s.calls.peers]);

  // Slow consumers: the count, and how many in the last minute.
  show('v-slow', s.slow_consumer_closes, count(s.slow_consumer_closes));
  slowSeen.push([s.uptime_seconds, s.slow_consumer_closes]);
  while (slowSeen.length > 1 && s.uptime_seconds - slowSeen[0][0] > 60) slowSeen.shift();
  const lastMinute = s.slow_consumer_closes - slowSeen[0][1];
  $('#s-slow').textContent = lastMinute > 0
    ? `${count(lastMinute)} in the last minute: clients that did not read fast enough`
    : 'none lately: every client reads fast enough';
  document.getElementById('tile-slow').classList.toggle('alert', lastMinute > 0);
  const slowRate = prev ? per(s.slow_consumer_closes, prev.slow_consumer_closes) : null;
  if (slowRate != null) charts.slow.push([slowRate]);

  // TURN.
  const tile = document.getElementById('tile-turn');
  tile.classList.toggle('off', !s.turn);
  $('#s-turn').hidden = !s.turn;
  $('#s-turn-off').hidden = Boolean(s.turn);
  if (s.turn) {
    const relayRate = prev?.turn ? per(s.turn.relayed_bytes, prev.turn.relayed_bytes) : null;
    show('v-allocations', s.turn.allocations, count(s.turn.allocations));
    show('v-relay-rate', relayRate, relayRate == null ? '–' : `${bytes(relayRate)}/s`);
    show('v-relay-total', s.turn.relayed_bytes, bytes(s.turn.relayed_bytes));
    if (relayRate != null) charts.turn.push([relayRate]);
  } else {
    show('v-allocations', null, 'Off');
  }

  cluster(s);
  prev = s;
  updatedEl.textContent = `Updated ${new Date(s.time).toLocaleTimeString()}.`;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function pill(row, text, state) {
  const td = row.insertCell();
  const span = document.createElement('span');
  span.className = 'dash-pill small';
  span.dataset.state = state;
  span.textContent = text;
  td.append(span);
}

// nodeLink is a link to a node's public URL, or null when there is none
// a page can follow: the list comes from Redis, where any node writes.
function nodeLink(url) {
  let u;
  try {
    u = new URL(url);
  } catch {
    return null;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
  const a = document.createElement('a');
  a.href = u.href;
  a.className = 'node-url';
  a.target = '_blank';
  a.rel = 'noopener';
  a.textContent = u.host + (u.pathname === '/' ? '' : u.pathname);
  a.title = `Open ${u.href}, where this node serves its clients`;
  return a;
}

// seen says how long ago a node last announced itself, by this node's clock.
function seen(n, s) {
  if (n.self) return 'now';
  if (!n.last_seen) return '–';
  const ago = (Date.parse(s.time) - Date.parse(n.last_seen)) / 1000;
  return ago < 1 ? 'just now' : `${duration(ago)} ago`;
}

function cluster(s) {
  const nodes = s.cluster.nodes?.length ? s.cluster.nodes : [{ id: s.node, self: true, uptime_seconds: s.uptime_seconds }];
  const body = $('#nodes tbody');
  body.replaceChildren();
  for (const n of nodes) {
    const row = body.insertRow();
    row.dataset.node = n.id;
    if (n.self) row.className = 'self';
    const name = cell(row, n.id);
    if (n.self) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = 'this node';
      name.append(' ', you);
    }
    const link = n.url ? nodeLink(n.url) : null;
    if (link) name.append(link);
    if (!n.self) pill(row, 'live', 'live');
    else if (s.draining) pill(row, 'draining', 'draining');
    else pill(row, s.ready ? 'ready' : 'not ready', s.ready ? 'live' : 'degraded');
    cell(row, duration(n.uptime_seconds), 'opt');
    cell(row, seen(n, s));
  }

  const r = s.cluster.redis;
  $('#redis-wrap').hidden = !r;
  $('#redis-line').hidden = !r;
  if (!r) {
    $('#cluster-line').textContent = 'One node: fan-out in memory (no --redis). Rooms and history live in this process.';
    return;
  }
  $('#cluster-line').textContent = s.cluster.nodes_error
    ? 'This node cannot reach Redis, so it cannot see the other nodes: it lists itself alone until it reconnects.'
    : `${nodes.length === 1 ? 'One node shares' : `${count(nodes.length)} nodes share`} this Redis and act as one. Each announces itself there every few seconds: a node that shuts down leaves this list at once, one that dies within 15 s. Each node's own figures are on its own dashboard.`;
  const rb = $('#redis tbody');
  rb.replaceChildren();
  for (const sh of r.shards) {
    const tr = rb.insertRow();
    cell(tr, sh.addr || 'Redis');
    pill(tr, sh.connected ? 'connected' : 'down', sh.connected ? 'live' : 'down');
    cell(tr, count(sh.channels));
  }
  $('#redis-line').textContent = `${count(r.presence_members)} presence members and ${count(r.sessions)} session addresses leased by this node · ${count(r.reconnects)} reconnects · ${count(r.errors)} failed commands.`;
}

// linkPublic points the site's links at the public listener when the page
// comes from the admin listener, which serves only the dashboard.
function linkPublic(s) {
  if (linked || s.listener !== 'admin' || !s.public_url) return;
  linked = true;
  for (const a of document.querySelectorAll('header.top nav a')) {
    const href = a.getAttribute('href');
    if (href === 'dashboard.html') continue;
    a.href = new URL(href, `${s.public_url}/`).href;
  }
}

// ---- refusals and failures ----

function refused(status, err) {
  prev = null;
  Object.values(charts).forEach((c) => c.gap());
  stale(true);
  if (status === 401) {
    const hadKey = Boolean(key);
    if (hadKey) {
      key = '';
      sessionStorage.removeItem(keyName);
    }
    forgetButton.hidden = true;
    waitingForKey = true;
    setState('locked', 'Key needed');
    locked(true, 'Waiting for the API key.');
    keyWhy.textContent = hadKey
      ? 'The node refused that key. Check the key the node was started with (--api-key, or PARLEY_API_KEY) and enter it again.'
      : 'On the node\'s public address its figures are for operators only: enter the API key the node was started with (--api-key, or PARLEY_API_KEY).';
    notice('');
    keyForm.hidden = false;
    keyForm.elements.key.focus();
    return;
  }
  if (status === 404) {
    setState('locked', 'Not served here');
    locked(true, 'This node shows its figures on its admin listener only.');
    notice('This node does not serve its figures on its public address, because it has no API key. Open the dashboard on its admin listener instead, from the node\'s own machine: http://127.0.0.1:9090/dashboard with the default --admin-addr. Or start the node with --api-key to see them here.');
    schedule(10000);
    return;
  }
  setState('down', 'Error');
  const why = err?.message ? ` (${err.message})` : '';
  notice(`The node answered with an error, status ${status}${why}: trying again in a few seconds.`);
  schedule(retryDelay());
}

function unreachable() {
  prev = null;
  Object.values(charts).forEach((c) => c.gap());
  stale(true);
  setState('down', 'Unreachable');
  notice(`Cannot reach the node at ${location.host}: it may have stopped or be restarting. The page tries again every few seconds and picks up where it left off once the node answers.`);
  schedule(retryDelay());
}

function retryDelay() {
  failures++;
  return Math.min(2000 * failures, 10000);
}

// ---- the loop ----

function schedule(delay) {
  clearTimeout(timer);
  timer = 0;
  if (document.hidden || waitingForKey) return;
  timer = setTimeout(poll, delay);
}

async function poll() {
  timer = 0;
  inFlight?.abort();
  const ctl = new AbortController();
  inFlight = ctl;
  const deadline = setTimeout(() => ctl.abort(), 5000);
  let res;
  try {
    res = await fetch('/v1/stats', {
      headers: key ? { Authorization: `Bearer ${key}` } : {},
      cache: 'no-store',
      signal: ctl.signal,
    });
    const body = await res.json().catch(() => null);
    if (ctl.signal.aborted && inFlight !== ctl) return;
    if (res.ok && body) {
      update(body);
      schedule(every);
    } else {
      refused(res.status, body?.error);
    }
  } catch {
    if (inFlight !== ctl) return; // replaced by a newer request
    unreachable();
  } finally {
    clearTimeout(deadline);
    if (inFlight === ctl) inFlight = null;
  }
}

// A hidden tab samples nothing: the charts show a gap for the time away, and
// rates start again from the first sample after.
document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    clearTimeout(timer);
    timer = 0;
    inFlight?.abort();
    inFlight = null;
    prev = null;
    Object.values(charts).forEach((c) => c.gap());
    if (!waitingForKey) setState('paused', 'Paused');
    return;
  }
  if (!waitingForKey) poll();
});

keyForm.addEventListener('submit', (e) => {
  e.preventDefault();
  key = keyForm.elements.key.value.trim();
  if (!key) return;
  sessionStorage.setItem(keyName, key);
  keyForm.elements.key.value = '';
  keyForm.hidden = true;
  waitingForKey = false;
  setState('connecting', 'Connecting');
  poll();
});

forgetButton.addEventListener('click', () => {
  key = '';
  sessionStorage.removeItem(keyName);
  forgetButton.hidden = true;
  clearTimeout(timer);
  poll();
});

if (!document.hidden) poll();
else setState('paused', 'Paused');
