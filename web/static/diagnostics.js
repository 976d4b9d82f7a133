// Network diagnostics: can this browser, on this network, use the node for
// calls? Each check sets its row (a pill, a measured figure and a sentence on
// what it means for calls); the verdict and the plain-text summary follow
// from all of them.
import { Parley, ParleySSE, ParleyError, explain } from './parley.js';

const $ = (selector) => document.querySelector(selector);
const form = $('#run');
const runButton = $('#run-button');
const progressEl = $('#progress');
const verdictEl = $('#verdict');
const summaryEl = $('#summary');
const copyButton = $('#copy');
const copiedEl = $('#copied');

// Bounds of each step, ms. A network that blocks something usually makes it
// hang rather than fail, so every wait ends.
const connectTimeout = 10000; // WebSocket welcome, SSE stream open
const deliverTimeout = 10000; // an event published until SSE delivers it
const gatherTimeout = 10000; // a STUN answer or a TURN allocation
const relayTimeout = 15000; // two peers connected through the relay, and the echoes
const pings = 5; // data-channel echoes per relay
const slowRoundTrip = 400; // ms: above this, signaling is slow enough to notice

// checks are the rows in page order: their name in the summary, and the
// element of each.
const checks = ['websocket', 'sse', 'ice', 'stun', 'turn-udp', 'turn-tcp', 'turn-tls'].map((id) => {
  const el = document.querySelector(`[data-check="${id}"]`);
  return {
    id,
    el,
    name: el.querySelector('h3').textContent,
    pill: el.querySelector('.pill'),
    figure: el.querySelector('.figure'),
    meaning: el.querySelector('.meaning'),
    initial: el.querySelector('.meaning').textContent,
  };
});
const byId = Object.fromEntries(checks.map((c) => [c.id, c]));

const pillText = { pending: 'Waiting', running: 'Checking…', pass: 'Pass', warn: 'Warning', fail: 'Fail', skip: 'Skipped' };

// results holds what each check found in the current run: {result, figure,
// meaning, pill} as shown, plus what later checks and sentences need.
let results = {};
let report = null; // the finished run, for the summary

function show(id, result, figure, meaning, pill) {
  const c = byId[id];
  const r = (results[id] = { ...results[id], result, figure: figure ?? '', meaning: meaning ?? c.initial, pill: pill ?? pillText[result] });
  c.el.dataset.result = result;
  c.pill.textContent = r.pill;
  c.figure.textContent = r.figure;
  c.meaning.textContent = r.meaning;
  return r;
}

function progress(text, state) {
  progressEl.textContent = text;
  progressEl.dataset.state = state;
}

// ---- figures ----

function ms(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return '?';
  if (value < 10) return `${(Math.round(value * 10) / 10).toFixed(1)} ms`;
  return `${Math.round(value)} ms`;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function duration(seconds) {
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

const transportName = { udp: 'UDP', tcp: 'TCP', tls: 'TLS' };

// ---- errors as sentences ----

// giveToken ends the sentences about a missing, refused or expired token:
// the way to give one on this page.
const giveToken = 'paste a JWT into the Token field above and run the checks again';

// describe says in a sentence what an error from the node means here. A
// token problem also opens the token field, so the sentence that points at
// it can be followed at once.
function describe(err, doing) {
  if (err?.code === 'unauthorized') form.querySelector('details').open = true;
  // The rooms of this page are its own scratch rooms: the way out of a
  // refusal is another token, not another room.
  if (err?.code === 'forbidden' && /^not allowed to (subscribe|publish)/.test(err.message ?? '')) {
    return `Your token does not allow ${doing}: use a token that allows any room, or ask the node's operator for one.`;
  }
  return explain(err, { token: giveToken });
}

function token() {
  return form.elements.token.value.trim();
}

// ---- WebSocket ----

// waitOpen resolves true at the client's welcome, or false when it stops
// (its token was refused) or after limit ms.
function waitOpen(client, event, limit) {
  return new Promise((resolve) => {
    const offs = [];
    const done = (value) => {
      clearTimeout(timer);
      for (const off of offs) off();
      resolve(value);
    };
    const timer = setTimeout(() => done(false), limit);
    offs.push(client.on(event, () => done(true)));
    offs.push(client.on('state', (s) => s === 'closed' && done(false)));
  });
}

async function checkWebSocket(run) {
  show('websocket', 'running', 'Connecting…');
  progress('Checking the WebSocket…', 'running');
  const started = performance.now();
  let lastError = null;
  let lastClose = null;
  const client = new Parley({ token: token() || undefined, connectTimeout, maxDelay: 2000 });
  client.on('error', (err) => (lastError = err));
  client.on('close', (c) => (lastClose = c));
  const opened = await waitOpen(client, 'welcome', connectTimeout);
  if (!opened) {
    client.close();
    const why = lastError
      ? describe(lastError, 'this connection')
      : 'The WebSocket to the node could not be opened: calls cannot be set up from this network. A proxy or firewall may block WebSockets: try another network, or ask its administrator to allow them to this site.';
    const figure = lastClose ? `closed with code ${lastClose.code}${lastClose.reason ? ` (${lastClose.reason})` : ''}` : `no answer within ${connectTimeout / 1000} s`;
    show('websocket', 'fail', figure, why);
    return null;
  }
  const connected = performance.now() - started;
  run.node = client.welcome.node;
  // The round trip is a command's ack: subscribe to and leave a room of
  // this run alone, a few times.
  const acks = [];
  try {
    for (let i = 0; i < 3; i++) {
      let t = performance.now();
      await client.subscribe(run.room);
      acks.push(performance.now() - t);
      t = performance.now();
      await client.unsubscribe(run.room);
      acks.push(performance.now() - t);
    }
  } catch (err) {
    show('websocket', 'warn', `connected in ${ms(connected)} · round trip not measured`,
      `Connected, but ${describe(err, 'the test room').replace(/^\w/, (c) => c.toLowerCase())}`);
    return client;
  }
  const rtt = median(acks);
  const figure = `connected in ${ms(connected)} · round trip ${ms(rtt)} (median of ${acks.length} acks) · node ${run.node}`;
  if (rtt > slowRoundTrip) {
    show('websocket', 'warn', figure, `Signaling works, but slowly: calls take longer to set up, and chat lags by about ${ms(rtt)}.`);
  } else {
    show('websocket', 'pass', figure, 'Signaling works: calls can be set up from here, and chat and live rooms update at once.');
  }
  return client;
}

// ---- Server-Sent Events ----

async function publishOnce(run, client, data) {
  if (client && client.state === 'open') return client.publish(run.room, data);
  // Without a WebSocket, the HTTP API carries the test event.
  const headers = { 'Content-Type': 'application/json' };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const res = await fetch(`/v1/rooms/${encodeURIComponent(run.room)}/messages`, { method: 'POST', headers, body: JSON.stringify(data) });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new ParleyError(body.error?.code ?? 'unavailable', body.error?.message ?? `HTTP ${res.status}`), { status: res.status });
  return body;
}

async function checkSSE(run, client) {
  show('sse', 'running', 'Opening the stream…');
  progress('Checking Server-Sent Events…', 'running');
  const wsWorks = results.websocket?.result === 'pass' || results.websocket?.result === 'warn';
  const probe = Math.random().toString(36).slice(2);
  let lastError = null;
  let delivered;
  const arrived = new Promise((resolve) => (delivered = resolve));
  const started = performance.now();
  const sse = new ParleySSE({
    rooms: [run.room],
    token: token() || undefined,
    maxDelay: 3000,
    onMessage: (m) => m.data?.probe === probe && delivered(performance.now()),
  });
  sse.on('error', (err) => (lastError = err));
  try {
    const opened = await waitOpen(sse, 'welcome', connectTimeout);
    if (!opened) {
      // The node's refusal (a token, say) is the node's to explain; anything
      // else means the stream does not get through this network.
      const refused = lastError && lastError.code !== 'disconnected' && lastError.code !== 'unavailable';
      let why;
      if (refused) why = describe(lastError, 'this event stream');
      else if (wsWorks) why = 'WebSocket works but Server-Sent Events are blocked: live events must come over the WebSocket from this network. Calls are not affected.';
      else why = 'Neither WebSocket nor Server-Sent Events reach the node: nothing live works from this network. Try another network.';
      let figure = `stream not open within ${connectTimeout / 1000} s`;
      if (refused) figure = lastError.status ? `refused (HTTP ${lastError.status})` : `refused (${lastError.code})`;
      show('sse', 'fail', figure, why);
      return;
    }
    const open = performance.now() - started;
    const sent = performance.now();
    try {
      await publishOnce(run, client, { diagnostics: true, probe });
    } catch (err) {
      show('sse', 'warn', `opened in ${ms(open)} · delivery not measured`, `The stream opens, but ${describe(err, 'the test event').replace(/^\w/, (c) => c.toLowerCase())}`);
      return;
    }
    const at = await Promise.race([arrived, new Promise((resolve) => setTimeout(() => resolve(null), deliverTimeout))]);
    if (at === null) {
      show('sse', 'fail', `opened in ${ms(open)} · the test event did not arrive within ${deliverTimeout / 1000} s`,
        'The event stream opens, but events are held back on the way (often by a proxy that buffers responses): live events must come over the WebSocket from this network. Calls are not affected.');
      return;
    }
    show('sse', 'pass', `opened in ${ms(open)} · an event delivered in ${ms(at - sent)}`, 'Live events stream to this browser: pages that only watch rooms work here.');
  } finally {
    sse.close();
  }
}

// ---- ICE servers ----

// parseURL splits a stun:, turn: or turns: URL into what the rows need:
// {url, scheme, host, port, transport}.
function parseURL(url) {
  const m = /^(stuns?|turns?):(\[[^\]]+\]|[^:?]+)(?::(\d+))?(?:\?transport=(udp|tcp))?/i.exec(url);
  if (!m) return null;
  const scheme = m[1].toLowerCase();
  const secure = scheme.endsWith('s');
  const transport = scheme === 'turns' ? 'tls' : (m[4] ?? 'udp').toLowerCase();
  return { url, scheme, host: m[2], port: Number(m[3] ?? (secure ? 5349 : 3478)), transport };
}

async function checkICE() {
  show('ice', 'running', 'Asking the node…');
  progress('Asking for the ICE servers…', 'running');
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  let res;
  let body;
  try {
    res = await fetch('/v1/ice-servers', { headers, cache: 'no-store' });
    // A proxy's error page is not JSON: the status alone tells then.
    body = await res.json().catch(() => null);
  } catch {
    show('ice', 'fail', 'no answer', 'The node did not answer the request for its STUN and TURN servers: check the connection and run the checks again.');
    return null;
  }
  if (!res.ok) {
    const err = new ParleyError(body?.error?.code ?? 'unavailable', body?.error?.message ?? `HTTP ${res.status}`);
    if (res.status === 404) {
      show('ice', 'fail', 'none offered', 'This node serves no STUN or TURN servers: calls connect only when both browsers can reach each other directly, which fails behind most routers and firewalls.');
    } else {
      show('ice', 'fail', `refused (HTTP ${res.status})`, describe(err, 'asking for ICE servers'));
    }
    return null;
  }
  const stun = [];
  const turn = { udp: null, tcp: null, tls: null };
  let turnCount = 0;
  for (const server of body.iceServers ?? []) {
    for (const url of [server.urls].flat()) {
      const u = parseURL(url);
      if (!u) continue;
      if (u.scheme.startsWith('stun')) stun.push(u);
      else {
        turnCount++;
        turn[u.transport] ??= { ...u, username: server.username, credential: server.credential };
      }
    }
  }
  const ttl = Number(body.ttl) > 0 ? ` · credentials valid ${duration(Number(body.ttl))}` : '';
  const figure = `${stun.length} STUN, ${turnCount} TURN URL${turnCount === 1 ? '' : 's'}${ttl}`;
  if (turnCount === 0) {
    show('ice', 'warn', figure, 'This node offers no TURN relay: calls from networks that block direct connections will fail.');
  } else {
    show('ice', 'pass', figure, 'The node hands this browser its STUN and TURN servers, with credentials.');
  }
  return { stun: stun[0] ?? null, turn };
}

// ---- STUN and TURN ----

// gather starts ICE gathering on a new RTCPeerConnection and resolves when
// accept(candidate) holds for a candidate, when gathering completes, or
// after limit ms: {found, after, candidates, errors, complete, failure}.
function gather(config, accept, limit) {
  return new Promise((resolve) => {
    const out = { found: null, after: null, candidates: [], errors: [], complete: false, failure: null };
    let pc;
    try {
      pc = new RTCPeerConnection(config);
    } catch (err) {
      out.failure = err;
      resolve(out);
      return;
    }
    const started = performance.now();
    let timer = null;
    const finish = () => {
      clearTimeout(timer);
      pc.onicecandidate = pc.onicecandidateerror = null;
      pc.close();
      resolve(out);
    };
    pc.onicecandidate = (e) => {
      if (!e.candidate) {
        out.complete = true;
        finish();
        return;
      }
      out.candidates.push(e.candidate);
      if (accept(e.candidate)) {
        out.found = e.candidate;
        out.after = performance.now() - started;
        finish();
      }
    };
    pc.onicecandidateerror = (e) => out.errors.push({ url: e.url, code: e.errorCode, text: e.errorText });
    timer = setTimeout(finish, limit);
    pc.createDataChannel('diagnostics');
    pc.setLocalDescription().catch((err) => {
      out.failure = err;
      finish();
    });
  });
}

function turnConfig(server) {
  return {
    iceServers: [{ urls: [server.url], username: server.username, credential: server.credential }],
    iceTransportPolicy: 'relay',
  };
}

function errorText(errors) {
  const e = errors[errors.length - 1];
  if (!e) return '';
  return `error ${e.code}${e.text ? `: ${e.text}` : ''}`;
}

async function checkSTUN(server) {
  if (!server) {
    show('stun', 'skip', 'none offered', 'This node offers no STUN server: calls find direct paths only on the local network, and otherwise relay.', 'Not offered');
    return;
  }
  show('stun', 'running', `Asking ${server.host}:${server.port}…`);
  const g = await gather({ iceServers: [{ urls: [server.url] }] }, (c) => c.type === 'srflx', gatherTimeout);
  if (g.found) {
    const address = g.found.address ? `${g.found.address}:${g.found.port}` : 'received';
    show('stun', 'pass', `reflexive address ${address} · answered in ${ms(g.after)}`,
      `STUN answered: UDP gets out of this network, and other browsers can try to reach you directly at ${g.found.address ?? 'your public address'}.`);
    return;
  }
  const hosts = g.candidates.filter((c) => c.type === 'host' && (c.protocol ?? 'udp') === 'udp');
  if (g.complete && g.errors.length === 0 && hosts.length > 0) {
    // The browser drops a reflexive candidate that repeats a host candidate
    // it shows as is: STUN answered with this device's own address.
    show('stun', 'pass', 'reflexive address: this device\'s own',
      'STUN answered with this device\'s own address: there is no NAT in between, so direct connections are likely to work.');
    return;
  }
  if (g.failure) {
    show('stun', 'fail', `the browser refused the server (${g.failure.message})`, 'This browser would not use the node\'s STUN server: tell the node\'s operator.');
    return;
  }
  let figure;
  if (g.errors.length) figure = errorText(g.errors);
  else if (g.complete) figure = 'this browser sent no UDP';
  else figure = `no answer within ${gatherTimeout / 1000} s`;
  show('stun', 'fail', figure, 'STUN did not answer: UDP to the node is blocked, so calls cannot connect directly and must be relayed.');
}

// allocate asks the TURN server for a relay over one transport.
async function allocate(kind, server) {
  const id = `turn-${kind}`;
  if (!server) {
    results[id] = { result: 'skip', offered: false };
    return;
  }
  show(id, 'running', `Allocating on ${server.host}:${server.port}…`);
  const g = await gather(turnConfig(server), (c) => c.type === 'relay', gatherTimeout);
  const r = { server, offered: true, allocated: !!g.found, after: g.after, errors: g.errors, complete: g.complete };
  if (g.found) {
    r.relay = `${g.found.address}:${g.found.port}`;
    r.protocol = g.found.relayProtocol || null;
    show(id, 'running', `relay ${r.relay} allocated in ${ms(g.after)} · measuring the round trip…`);
  } else {
    const codes = g.errors.map((e) => e.code);
    r.refused = codes.some((c) => c === 401 || c === 403 || c === 437 || c === 441 || c === 486 || c === 508);
    r.failure = !!g.failure;
    if (g.failure) r.why = `the browser refused the server (${g.failure.message})`;
    else if (g.errors.length) r.why = errorText(g.errors);
    else if (g.complete) r.why = kind === 'udp' ? 'this browser sent no UDP' : 'this browser could not reach it';
    else r.why = `no answer within ${gatherTimeout / 1000} s`;
    show(id, 'fail', r.why, `${kind === 'udp' ? 'UDP' : `TURN over ${transportName[kind]}`} did not get a relay: checking the others…`);
  }
  results[id] = { ...results[id], ...r };
}

// roundTrip connects two RTCPeerConnections of this page to each other
// through the relay only, and times data-channel echoes between them.
async function roundTrip(server) {
  const config = turnConfig(server);
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  const timers = [];
  try {
    const da = a.createDataChannel('diagnostics', { negotiated: true, id: 0 });
    const db = b.createDataChannel('diagnostics', { negotiated: true, id: 0 });
    db.onmessage = (e) => db.send(e.data);
    // Candidates that arrive before the remote description wait for it.
    const wire = (from, to) => {
      const queue = [];
      from.onicecandidate = (e) => {
        if (!e.candidate) return;
        if (to.remoteDescription) to.addIceCandidate(e.candidate).catch(() => {});
        else queue.push(e.candidate);
      };
      return () => queue.splice(0).forEach((c) => to.addIceCandidate(c).catch(() => {}));
    };
    const toB = wire(a, b);
    const toA = wire(b, a);
    const deadline = new Promise((_, reject) => timers.push(setTimeout(() => reject(new Error('timeout')), relayTimeout)));
    const failed = new Promise((_, reject) => {
      a.onconnectionstatechange = () => a.connectionState === 'failed' && reject(new Error('failed'));
    });
    // Either may reject after the race they are in is over.
    deadline.catch(() => {});
    failed.catch(() => {});
    const opened = new Promise((resolve) => (da.onopen = resolve));
    await a.setLocalDescription();
    await b.setRemoteDescription(a.localDescription);
    toB();
    await b.setLocalDescription();
    await a.setRemoteDescription(b.localDescription);
    toA();
    await Promise.race([opened, deadline, failed]);
    const rtts = [];
    for (let i = 0; i < pings; i++) {
      const echoed = new Promise((resolve) => (da.onmessage = (e) => e.data === `ping ${i}` && resolve()));
      const t = performance.now();
      da.send(`ping ${i}`);
      await Promise.race([echoed, deadline, failed]);
      rtts.push(performance.now() - t);
    }
    // What the browser says it used: the local side of the selected pair.
    const stats = await a.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) ?? pair;
    });
    if (!pair) stats.forEach((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && (pair = s));
    const local = pair ? stats.get(pair.localCandidateId) : null;
    return { ok: true, rtt: median(rtts), type: local?.candidateType ?? null, protocol: local?.relayProtocol ?? null };
  } catch (err) {
    let why = `no connection through the relay (${err.message})`;
    if (err.message === 'failed') why = 'the connection through the relay failed';
    if (err.message === 'timeout') why = `no connection through the relay within ${relayTimeout / 1000} s`;
    return { ok: false, why };
  } finally {
    timers.forEach(clearTimeout);
    a.close();
    b.close();
  }
}

async function checkCalls(ice) {
  progress('Checking STUN and TURN…', 'running');
  if (!ice) {
    for (const id of ['stun', 'turn-udp', 'turn-tcp', 'turn-tls']) {
      show(id, 'skip', '', 'Not checked: the node did not hand out its ICE servers.');
      results[id].offered = null;
    }
    return;
  }
  // The allocations run side by side: on a network that drops packets each
  // waits out its bound, and they would add up.
  await Promise.all([checkSTUN(ice.stun), ...['udp', 'tcp', 'tls'].map((kind) => allocate(kind, ice.turn[kind]))]);
  // The round trips one at a time, so that none slows another's figure.
  for (const kind of ['udp', 'tcp', 'tls']) {
    const r = results[`turn-${kind}`];
    if (!r.allocated) continue;
    progress(`Measuring the round trip through TURN over ${transportName[kind]}…`, 'running');
    r.trip = await roundTrip(r.server);
  }
}

// ---- sentences that depend on several checks ----

// conclude sets the TURN rows' results and sentences, now that every relay
// has been tried: what a blocked transport means depends on what else works.
function conclude() {
  const t = { udp: results['turn-udp'], tcp: results['turn-tcp'], tls: results['turn-tls'] };
  if (t.udp.offered === null) return; // no ICE servers: the rows say so
  const works = (kind) => t[kind].allocated && t[kind].trip?.ok;
  const fallback = works('tcp') ? 'tcp' : works('tls') ? 'tls' : null;
  for (const kind of ['udp', 'tcp', 'tls']) {
    const id = `turn-${kind}`;
    const r = t[kind];
    const name = transportName[kind];
    if (!r.offered) {
      show(id, 'skip', kind === 'tls' ? 'no turns: URL among the ICE servers' : `no turn: URL for ${name} among the ICE servers`,
        kind === 'tls'
          ? 'TURN over TLS is not offered by this node: calls from networks that let only encrypted web traffic out will fail.'
          : `TURN over ${name} is not offered by this node.`,
        'Not offered');
      continue;
    }
    const where = `${r.server.host}:${r.server.port}`;
    if (!r.allocated) {
      if (r.failure) {
        show(id, 'fail', `${where} · ${r.why}`, `This browser would not use the node's TURN server for ${name}: tell the node's operator.`);
      } else if (r.refused) {
        show(id, 'fail', `${where} · ${r.why}`, `The relay refused this browser's credentials: calls cannot be relayed over ${name}. Tell the node's operator.`);
      } else if (kind === 'udp') {
        const next = fallback
          ? `UDP is blocked: calls will use TURN over ${transportName[fallback]}, expect higher latency.`
          : 'UDP is blocked, and so are the relays over TCP and TLS: calls cannot connect from this network. Try another network, such as a phone\'s hotspot.';
        show(id, 'fail', `${where} · ${r.why}`, next);
      } else if (kind === 'tcp') {
        const next = works('udp')
          ? `TCP to port ${r.server.port} is blocked: calls work here over UDP, but would fail on a network that also blocks UDP${works('tls') ? ', were it not for TLS' : ''}.`
          : works('tls')
            ? `TCP to port ${r.server.port} is blocked: calls will use TURN over TLS, expect higher latency.`
            : `TCP to port ${r.server.port} is blocked too: calls cannot be relayed from this network.`;
        show(id, 'fail', `${where} · ${r.why}`, next);
      } else {
        show(id, 'fail', `${where} · ${r.why}`,
          `TLS to port ${r.server.port} failed (blocked, or the browser does not trust the node's certificate): calls from networks that let only encrypted web traffic out will fail.`);
      }
      continue;
    }
    const allocated = `relay ${r.relay} allocated in ${ms(r.after)}`;
    if (!r.trip?.ok) {
      show(id, 'warn', `${allocated} · ${r.trip?.why ?? 'no round trip'}`,
        `A relay over ${name} was allocated, but no data came back through it: relayed calls may fail. Tell the node's operator.`);
      continue;
    }
    // The transport as the browser reports it for the connection it chose.
    const protocol = r.trip.protocol ?? r.protocol;
    const over = protocol ? ` over ${transportName[protocol] ?? protocol}` : '';
    const figure = `${allocated} · round trip ${ms(r.trip.rtt)}${over}`;
    let meaning;
    if (kind === 'udp') meaning = 'Calls can relay over UDP when a direct path fails: the relay with the least delay.';
    else if (kind === 'tcp') {
      meaning = works('udp')
        ? `Calls fall back to TURN over TCP (port ${r.server.port}) on networks that block UDP.`
        : `Calls from this network will relay over TCP (port ${r.server.port}): they work, with more delay than over UDP.`;
    } else {
      meaning = works('udp') || works('tcp')
        ? `Calls can relay over TLS on port ${r.server.port}, which gets through firewalls that let only encrypted web traffic out.`
        : `Calls from this network will relay over TLS on port ${r.server.port}: they work, with more delay than over UDP.`;
    }
    show(id, 'pass', figure, meaning);
  }
}

// verdict sums the checks up for calls, in a heading and a sentence.
function verdict() {
  const ok = (id) => results[id]?.result === 'pass' || results[id]?.result === 'warn';
  const pass = (id) => results[id]?.result === 'pass';
  let result;
  let title;
  let text;
  if (!ok('websocket')) {
    result = 'fail';
    title = 'Calls cannot be set up from this network';
    text = `Calls are signaled over the WebSocket, which does not work here. ${results.websocket.meaning}`;
  } else if (results.ice?.result === 'fail') {
    result = 'fail';
    title = 'Calls are unlikely to connect';
    text = results.ice.meaning;
  } else if (['turn-udp', 'turn-tcp', 'turn-tls'].every((id) => results[id]?.offered === false)) {
    result = pass('stun') ? 'warn' : 'fail';
    title = pass('stun') ? 'Calls may work, but only directly' : 'Calls are unlikely to connect';
    text = 'This node offers no TURN relay, so calls connect only where both browsers can reach each other directly: behind most office and mobile networks they will fail.';
  } else if (pass('turn-udp')) {
    result = 'pass';
    title = 'Calls will work from this network';
    text = pass('stun')
      ? 'Browsers can try to connect directly, and the relay over UDP carries the call when they cannot.'
      : 'Calls will go through the relay over UDP: direct connections are not possible from here.';
  } else if (pass('turn-tcp') || pass('turn-tls')) {
    const via = pass('turn-tcp') ? 'TCP' : 'TLS';
    result = 'warn';
    title = `Calls will work, relayed over ${via}`;
    text = `UDP is blocked: calls will use TURN over ${via}, expect higher latency.`;
  } else {
    result = 'fail';
    title = 'Calls will not connect from this network';
    text = 'None of the node\'s relays could be reached from here. Try another network, such as a phone\'s hotspot, or ask the network\'s administrator to allow UDP, or TCP to the TURN port.';
  }
  if (ok('websocket') && results.sse?.result === 'fail') text += ' Live events over Server-Sent Events do not come through; see below.';
  return { result, title, text };
}

// ---- the summary ----

function summaryText(run, v) {
  const pad = (label) => `${label}:`.padEnd(9);
  const lines = [
    'Parley network diagnostics',
    `${pad('Node')}${run.node ?? 'unknown (no WebSocket welcome)'} at ${location.origin}`,
    `${pad('Time')}${run.finished.toISOString()} (took ${((run.finishedAt - run.startedAt) / 1000).toFixed(1)} s)`,
    `${pad('Browser')}${navigator.userAgent}`,
    `${pad('Verdict')}${v.title}. ${v.text}`,
    '',
  ];
  for (const c of checks) {
    const r = results[c.id];
    const tag = (r.pill === pillText[r.result] ? r.result : r.pill).toUpperCase();
    lines.push(`[${tag}] ${c.name}${r.figure ? `: ${r.figure}` : ''}`);
    lines.push(`    ${r.meaning}`);
  }
  return lines.join('\n');
}

// ---- running ----

let running = false;

async function runChecks() {
  if (running) return;
  running = true;
  runButton.disabled = true;
  copyButton.disabled = true;
  copiedEl.textContent = '';
  document.body.dataset.state = 'running';
  results = {};
  report = null;
  for (const c of checks) show(c.id, 'pending', '', c.initial);
  verdictEl.dataset.result = 'running';
  verdictEl.querySelector('h2').textContent = 'Checking this network…';
  verdictEl.querySelector('p').textContent = 'This takes a few seconds.';
  summaryEl.textContent = 'The checks have not finished yet.';
  const run = { room: `diagnostics-${Math.random().toString(36).slice(2, 10)}`, node: null, startedAt: performance.now() };
  try {
    const client = await checkWebSocket(run);
    try {
      await checkSSE(run, client);
    } finally {
      client?.close();
    }
    const ice = await checkICE();
    await checkCalls(ice);
    conclude();
  } catch (err) {
    // A bug of this page, not a finding about the network: say so on the
    // rows still open rather than leave them spinning.
    for (const c of checks) {
      if (['pending', 'running'].includes(results[c.id]?.result)) show(c.id, 'fail', '', `This check stopped unexpectedly (${err?.message ?? err}): reload the page and run the checks again.`);
    }
  }
  run.finishedAt = performance.now();
  run.finished = new Date();
  const v = verdict();
  verdictEl.dataset.result = v.result;
  verdictEl.querySelector('h2').textContent = v.title;
  verdictEl.querySelector('p').textContent = v.text;
  report = summaryText(run, v);
  summaryEl.textContent = report;
  const counts = { pass: 0, warn: 0, fail: 0, skip: 0 };
  for (const c of checks) if (results[c.id].result in counts) counts[results[c.id].result]++;
  const parts = [`${counts.pass} passed`];
  if (counts.warn) parts.push(`${counts.warn} with a warning`);
  if (counts.fail) parts.push(`${counts.fail} failed`);
  if (counts.skip) parts.push(`${counts.skip} not offered or not checked`);
  // The dot takes the verdict's colour: a failed check that calls can do
  // without (UDP, where TCP relays) is not a red light.
  progress(`Finished at ${run.finished.toLocaleTimeString()}: ${parts.join(', ')}.`, v.result);
  copyButton.disabled = false;
  runButton.disabled = false;
  running = false;
  document.body.dataset.state = 'done';
}

// copy puts the summary on the clipboard; where the Clipboard API is not
// allowed, it selects the text and asks the browser to copy the selection.
async function copy() {
  if (!report) return;
  try {
    await navigator.clipboard.writeText(report);
    copiedEl.textContent = 'Copied to the clipboard.';
    return;
  } catch {
    // fall back to the selection below
  }
  const range = document.createRange();
  range.selectNodeContents(summaryEl);
  const selection = getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  const copied = document.execCommand('copy');
  copiedEl.textContent = copied ? 'Copied to the clipboard.' : 'The browser did not allow copying: the text is selected, press Ctrl+C (or ⌘C) to copy it.';
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  runChecks();
});
copyButton.addEventListener('click', copy);

if (typeof RTCPeerConnection !== 'function') {
  // Without WebRTC there is nothing to check for calls: say so once.
  verdictEl.dataset.result = 'fail';
  verdictEl.querySelector('h2').textContent = 'This browser cannot make calls';
  verdictEl.querySelector('p').textContent = 'It has no WebRTC: open this page in a current Chrome, Edge, Firefox or Safari.';
  runButton.disabled = true;
} else {
  runChecks();
}
