// The call page: one Parley client, one call at a time, a mesh of
// RTCPeerConnections that parley.js's Call keeps, and a text chat over their
// data channels.
import { Parley, explain } from './parley.js';

const $ = (selector) => document.querySelector(selector);
const joinForm = $('#join');
const joinButton = $('#join-button');
const leaveButton = $('#leave');
const statusEl = $('#status');
const noticeEl = $('#notice');
const noticeText = $('#notice-text');
const noticeAction = $('#notice-action');
const tilesEl = $('#tiles');
const idleEl = $('#idle');
const inviteEl = $('#invite');
const inviteLink = $('#invite-link');
const chatLog = $('#chat-log');
const chatEmpty = $('#chat-empty');
const chatForm = $('#chat-send');
const chatInput = $('#chat-text');
const chatButton = chatForm.querySelector('button');
const tileTemplate = $('#tile-template');

const maxChat = 200;
// How long a connection may take before the page says the call could not
// connect. A browser reports a connection as failed only once it has tried
// every pair of addresses; with no pair at all (relay only on a node
// without TURN, or a network that yields no candidate) it waits forever.
const connectTimeout = 20000;

let client = null;
let call = null;
let localStream = null;
let joining = false;
let draining = false; // the node asked this client to move to another node
let tokenGiven = '';
// me is this page's user in the call: the user it joined as, which a resumed
// peer keeps though its new connection may be another (anonymous) user.
let me = null;
const tiles = new Map(); // session -> tile (the local one under its own session)
const open = new Set(); // sessions whose data channel is open
const failing = new Set(); // sessions whose connection failed and has not connected since
let statsTimer = null;
// restarting is true while the Call replaces every connection after a
// rejoin that came too late: its 'leave' and 'peer' events are no news.
let restarting = false;

// tokenHint ends the sentences about a refused or missing token.
const tokenHint = { token: 'paste a JWT into the Token field above and press Join' };

// sentence is explain() with this page's way to give a token.
function sentence(err) {
  return explain(err, tokenHint);
}

const params = new URLSearchParams(location.search);
joinForm.elements.call.value = params.get('call') || 'standup';
joinForm.elements.relay.checked = ['1', 'true', 'yes', 'on'].includes(params.get('relay') ?? '');
if (params.get('media') === 'data') joinForm.elements.media.value = 'data';
if (params.get('token')) {
  joinForm.elements.token.value = params.get('token');
  joinForm.querySelector('details').open = true;
}

// For the browser console: parleyCall.client and parleyCall.call are the
// live objects.
window.parleyCall = {
  get client() {
    return client;
  },
  get call() {
    return call;
  },
};

// ---- notices and status ----

// notice shows a sentence, with a button for the action that answers it,
// or hides it (text ''). kind says what the sentence is about, so that the
// page can take it back when that is over.
function notice(text, action = null, kind = action?.kind ?? '') {
  noticeText.textContent = text || '';
  noticeEl.hidden = !text;
  noticeEl.dataset.kind = kind;
  noticeAction.hidden = !action;
  noticeAction.onclick = null;
  if (action) {
    noticeAction.textContent = action.label;
    noticeAction.onclick = () => {
      notice('');
      action.run();
    };
  }
}

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function peopleCount() {
  const n = call ? call.peers.size + 1 : 0;
  return n === 1 ? 'just you so far' : `${n} people`;
}

// showStatus says where the page is: not in a call, joining, in one, or
// reconnecting to the node (the call's media goes on meanwhile).
function showStatus() {
  if (joining) {
    setStatus('connecting', 'Joining…');
    return;
  }
  if (!call) {
    setStatus('idle', 'Not in a call.');
    return;
  }
  // Media already flowing does not pass through the node, so the call goes
  // on while the page finds a node again.
  if (draining) {
    setStatus('reconnecting', `${sentence('draining')} The call goes on meanwhile.`);
    return;
  }
  if (client.state === 'reconnecting' || client.state === 'connecting') {
    setStatus('reconnecting', 'Lost the connection to the node: reconnecting. The call goes on meanwhile.');
    return;
  }
  const relay = call.relayOnly ? ' · relay only' : '';
  const node = client.welcome?.node ? ` on node ${client.welcome.node}` : '';
  setStatus('open', `In ${call.name} as ${me ?? 'you'}${node} · ${peopleCount()}${relay}`);
}

// ---- tiles ----

function initials(user) {
  const name = String(user || '?').replace(/^anon-/, '');
  return name.slice(0, 2).toUpperCase();
}

const stateNames = {
  new: 'Connecting…',
  connecting: 'Connecting…',
  connected: 'Connected',
  disconnected: 'Reconnecting…',
  failed: 'Could not connect',
  closed: 'Left',
};

const pairTitles = {
  host: 'Direct, on the same network',
  srflx: 'Direct, through a NAT (found with STUN)',
  prflx: 'Direct, through a NAT',
  relay: 'Through a TURN relay',
};

function makeTile(session, user, local) {
  const el = tileTemplate.content.firstElementChild.cloneNode(true);
  el.dataset.session = session;
  el.dataset.user = user ?? '';
  el.querySelector('.avatar').textContent = initials(user);
  const nameEl = el.querySelector('.name');
  nameEl.textContent = local ? 'You' : user || 'Someone';
  nameEl.title = user ?? '';
  const video = el.querySelector('video');
  if (local) {
    el.classList.add('local');
    el.dataset.local = '';
    video.muted = true;
    el.dataset.state = 'local';
  }
  const tile = { el, video, session, local, stream: null };
  el.querySelector('.unmute').addEventListener('click', () => {
    video.muted = false;
    video.play().catch(() => {});
    el.querySelector('.unmute').hidden = true;
  });
  tiles.set(session, tile);
  tilesEl.append(el);
  layout();
  return tile;
}

function layout() {
  document.body.classList.toggle('in-call', !!call);
  joinButton.hidden = !!call;
  leaveButton.hidden = !call;
  tilesEl.dataset.count = String(tiles.size);
  idleEl.hidden = tiles.size > 0;
  inviteEl.hidden = !call || call.peers.size > 0;
  if (call) {
    const u = new URL('call.html', location.href);
    u.searchParams.set('call', call.name);
    if (call.relayOnly) u.searchParams.set('relay', '1');
    inviteLink.href = u.href;
    inviteLink.textContent = u.href;
  }
}

function removeTile(session) {
  const tile = tiles.get(session);
  if (!tile) return;
  clearTimeout(tile.timer);
  tile.video.srcObject = null;
  tile.el.remove();
  tiles.delete(session);
  layout();
}

function clearTiles() {
  for (const session of [...tiles.keys()]) removeTile(session);
}

// showStream puts a stream on a tile, or the avatar when it carries no video.
function showStream(tile, stream) {
  const hasVideo = !!stream && stream.getVideoTracks().length > 0;
  tile.el.classList.toggle('has-video', hasVideo);
  if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
  tile.stream = stream;
  if (!stream) return;
  tile.video.play().catch(() => {
    if (tile.local || tile.video.muted) return;
    // The browser wants a gesture before it plays sound: play muted, and
    // offer the sound.
    tile.video.muted = true;
    tile.video.play().catch(() => {});
    tile.el.querySelector('.unmute').hidden = false;
  });
}

function showPeerState(session, state) {
  const tile = tiles.get(session);
  if (!tile) return;
  tile.el.dataset.state = state;
  tile.el.classList.remove('stalled');
  tile.el.querySelector('.state').textContent = stateNames[state] ?? state;
  if (state !== 'connected') {
    const pill = tile.el.querySelector('.pair');
    pill.hidden = true;
    delete tile.el.dataset.pair;
    delete tile.el.dataset.rtt;
  }
  if (state === 'connected') {
    clearTimeout(tile.timer);
    recovered(session);
  }
}

function showPair(session, { pair, rtt, protocol }) {
  const tile = tiles.get(session);
  if (!tile || !pair) return;
  tile.el.dataset.pair = pair;
  if (rtt === null || rtt === undefined) delete tile.el.dataset.rtt;
  else tile.el.dataset.rtt = String(Math.round(rtt));
  const pill = tile.el.querySelector('.pair');
  const parts = [pair];
  if (pair === 'relay' && protocol) parts.push(protocol.toUpperCase());
  if (rtt !== null && rtt !== undefined) parts.push(`${Math.round(rtt)} ms`);
  pill.textContent = parts.join(' · ');
  pill.dataset.pair = pair;
  pill.title = `${pairTitles[pair] ?? pair}${rtt !== null && rtt !== undefined ? `; round trip ${Math.round(rtt)} ms` : ''}`;
  pill.hidden = false;
}

// failed says the call could not connect to a peer, with a way out: the
// Call reports the first failure of each connection, and keeps restarting
// ICE meanwhile.
function failed(err) {
  failing.add(err.session);
  // Relay only on a node without TURN: the Call says so as soon as it
  // meets the peer, and that sentence says more than any later one.
  if (/no TURN server/.test(err.message ?? '')) {
    notice(sentence(err), { kind: 'relay', label: 'Join again without Relay only', run: () => rejoin({ relay: false }) });
    return;
  }
  if (noticeEl.dataset.kind === 'relay') return;
  // A node without TURN has no relay to suggest: say so, and offer nothing
  // that leads back here.
  if (call && !hasTURN(call)) {
    notice(
      "The call could not connect directly, and this node has no TURN relay to fall back on: try another network, or ask the node's operator to enable TURN.",
      { kind: 'ice', label: 'Join again', run: () => rejoin({}) },
    );
    return;
  }
  const relayOff = call && !call.relayOnly;
  notice(
    sentence(err),
    relayOff
      ? { kind: 'ice', label: 'Join again with Relay only', run: () => rejoin({ relay: true }) }
      : { kind: 'ice', label: 'Join again', run: () => rejoin({}) },
  );
}

// hasTURN reports whether the call's ICE servers include a TURN relay.
function hasTURN(c) {
  return [...c.peers.values()].some((p) =>
    (p.pc?.getConfiguration?.().iceServers ?? []).some((s) => [s.urls].flat().some((u) => /^turns?:/.test(String(u)))),
  );
}

// recovered takes the sentence back once no connection is failing: the
// Call's restarts got through, or the peer left.
function recovered(session) {
  if (!failing.delete(session)) return;
  if (failing.size === 0 && noticeEl.dataset.kind === 'ice') notice('');
}

// pollMedia reads, once a second, what each peer's video decodes and what
// the camera sends: a user sees a frozen picture as the frames figure
// standing still.
let polling = false;
async function pollMedia() {
  // getStats can take longer than the interval on a busy machine.
  if (!call || polling) return;
  polling = true;
  try {
    await readMedia();
  } finally {
    polling = false;
  }
}

async function readMedia() {
  for (const [session, tile] of [...tiles]) {
    if (tile.local) {
      const track = localStream?.getVideoTracks()[0];
      const s = track?.getSettings?.();
      tile.el.querySelector('.stats').textContent = s?.width
        ? `Sending ${s.width}×${s.height}${s.frameRate ? ` at ${Math.round(s.frameRate)} fps` : ''}`
        : localStream
          ? 'Sending sound only'
          : 'Data only: no camera or microphone';
      continue;
    }
    const pc = call.peers.get(session)?.pc;
    if (!pc) continue;
    let inbound = null;
    try {
      const report = await pc.getStats();
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && (r.kind ?? r.mediaType) === 'video') inbound = r;
      });
    } catch {
      continue; // closed meanwhile
    }
    const stats = tile.el.querySelector('.stats');
    if (!inbound) {
      const video = tile.stream?.getVideoTracks().length > 0;
      const sound = tile.stream?.getAudioTracks().length > 0;
      const connected = tile.el.dataset.state === 'connected';
      stats.textContent = video ? 'Waiting for video…' : sound ? 'Sound only' : connected ? 'Data only' : '';
      continue;
    }
    const frames = inbound.framesDecoded ?? 0;
    tile.el.dataset.frames = String(frames);
    const size = inbound.frameWidth ? `${inbound.frameWidth}×${inbound.frameHeight}` : 'no picture yet';
    const fps = inbound.framesPerSecond ? ` at ${Math.round(inbound.framesPerSecond)} fps` : '';
    stats.textContent = `${size}${fps} · ${frames.toLocaleString('en')} frames`;
  }
}

// ---- chat ----

function chatLine(cls, who, text) {
  const li = document.createElement('li');
  if (cls) li.className = cls;
  if (who !== null) {
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = `${who} · ${new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`;
    li.append(meta);
  }
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  li.append(body);
  const atBottom = chatLog.scrollHeight - chatLog.scrollTop - chatLog.clientHeight < 40;
  chatLog.append(li);
  while (chatLog.children.length > maxChat) chatLog.firstElementChild.remove();
  chatEmpty.hidden = true;
  if (atBottom || cls === 'mine') chatLog.scrollTop = chatLog.scrollHeight;
}

function systemLine(text) {
  chatLine('system', null, text);
}

function userOf(session) {
  return call?.peers.get(session)?.user || tiles.get(session)?.el.dataset.user || 'Someone';
}

function updateChat() {
  const ready = !!call && open.size > 0;
  chatInput.disabled = !ready;
  chatButton.disabled = !ready;
  chatInput.placeholder = !call
    ? 'Join a call to chat'
    : ready
      ? 'Write to everyone in the call'
      : 'Waiting for someone to connect';
}

// ---- the call ----

function remoteTile(session, user) {
  return tiles.get(session) ?? makeTile(session, user, false);
}

function addPeer(p) {
  const known = tiles.has(p.session);
  const tile = remoteTile(p.session, p.user);
  if (p.stream) showStream(tile, p.stream);
  showPeerState(p.session, p.state ?? 'new');
  if (p.pair) showPair(p.session, p);
  if (known) return;
  tile.timer = setTimeout(() => {
    const t = tiles.get(p.session);
    if (t !== tile || tile.el.dataset.state === 'connected') return;
    tile.el.classList.add('stalled');
    tile.el.querySelector('.state').textContent = stateNames.failed;
    if (!failing.has(p.session)) failed({ code: 'ice_failed', session: p.session });
  }, connectTimeout);
}

function connectClient() {
  const token = joinForm.elements.token.value.trim();
  if (client && client.state !== 'closed' && token === tokenGiven) return;
  if (client) client.close();
  tokenGiven = token;
  client = new Parley({ token: token || undefined });
  client.on('state', showStatus);
  client.on('welcome', () => {
    draining = false;
    showStatus();
  });
  client.on('draining', () => {
    draining = true;
    showStatus();
  });
  client.on('close', (ev) => {
    // The slow-consumer close is a sentence of its own; the others are the
    // reconnecting status.
    if (ev.code === 1013) notice(sentence(ev), null, 'node');
  });
  client.on('error', (err) => {
    if (err.code === 'unauthorized') joinForm.querySelector('details').open = true;
    notice(sentence(err), null, 'node');
    if (client.state === 'closed') {
      endCall();
      showStatus();
    }
  });
}

// media asks for the camera and microphone. On a refusal it shows why and
// offers to join with data only; it returns undefined then.
async function media() {
  if (joinForm.elements.media.value !== 'camera') return null;
  if (!navigator.mediaDevices?.getUserMedia) {
    notice('This browser cannot use a camera on this page (it needs HTTPS, or localhost).', dataOnlyAction());
    return undefined;
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } },
    });
  } catch (err) {
    notice(sentence(err), dataOnlyAction());
    return undefined;
  }
}

function dataOnlyAction() {
  return {
    kind: 'media',
    label: 'Join with data only',
    run: () => {
      joinForm.elements.media.value = 'data';
      join();
    },
  };
}

async function join() {
  if (joining || call) return;
  const name = joinForm.elements.call.value.trim();
  if (!joinForm.reportValidity()) return;
  joining = true;
  joinButton.disabled = true;
  notice('');
  showStatus();
  const stream = await media();
  if (stream === undefined) {
    joining = false;
    joinButton.disabled = false;
    showStatus();
    return;
  }
  connectClient();
  const relayOnly = joinForm.elements.relay.checked;
  let joined;
  try {
    joined = await client.join(name, { relayOnly, stream, dataChannel: true });
  } catch (err) {
    stream?.getTracks().forEach((t) => t.stop());
    joining = false;
    joinButton.disabled = false;
    notice(sentence(err));
    showStatus();
    return;
  }
  joining = false;
  call = joined;
  me = client.user;
  localStream = stream;
  const u = new URL(location.href);
  u.searchParams.set('call', name);
  if (relayOnly) u.searchParams.set('relay', '1');
  else u.searchParams.delete('relay');
  history.replaceState(null, '', u);
  leaveButton.disabled = false;
  for (const input of joinForm.querySelectorAll('input')) input.disabled = true;
  chatLog.replaceChildren();

  const local = makeTile(call.session, me, true);
  showStream(local, localStream);
  // The peers already in the call get 'peer' events too, right after join()
  // resolves: only the ones who come later joined.
  const here = [...call.peers.values()];
  systemLine(
    here.length === 0
      ? `You joined ${name}. Nobody else is here yet.`
      : `You joined ${name} with ${here.map((p) => p.user || 'someone').join(', ')}.`,
  );
  call.on('peer', (p) => {
    const known = tiles.has(p.session);
    addPeer(call.peers.get(p.session) ?? p);
    if (!known && !restarting) systemLine(`${p.user || 'Someone'} joined.`);
    showStatus();
  });
  call.on('leave', (p) => {
    if (!restarting) systemLine(`${p.user || userOf(p.session)} left.`);
    open.delete(p.session);
    recovered(p.session);
    removeTile(p.session);
    updateChat();
    showStatus();
  });
  call.on('track', ({ session, stream: s }) => {
    const tile = tiles.get(session);
    if (tile) showStream(tile, s);
  });
  call.on('open', ({ session }) => {
    open.add(session);
    updateChat();
  });
  call.on('data', ({ session, data }) => {
    if (typeof data === 'string') chatLine('', userOf(session), data);
  });
  call.on('state', ({ session, state }) => {
    if (state === 'closed' || state === 'failed') open.delete(session);
    showPeerState(session, state);
    updateChat();
  });
  call.on('stats', (s) => showPair(s.session, s));
  call.on('rejoined', ({ resumed }) => {
    if (noticeEl.dataset.kind === 'node') notice('');
    if (!resumed) {
      // The page came back too late to keep its place: the Call joined
      // afresh, as a new peer, and now closes every connection and makes
      // new ones, with the events of that, at once.
      restarting = true;
      queueMicrotask(() => {
        restarting = false;
      });
      for (const [session, tile] of [...tiles]) if (!tile.local) removeTile(session);
      open.clear();
      failing.clear();
      me = client.user;
      const local = [...tiles.values()].find((t) => t.local);
      if (local) {
        tiles.delete(local.session);
        local.session = call.session;
        local.el.dataset.session = call.session;
        local.el.dataset.user = me;
        local.el.querySelector('.name').title = me;
        local.el.querySelector('.avatar').textContent = initials(me);
        tiles.set(call.session, local);
      }
      systemLine('You were away too long to keep your place, so you joined the call again.');
      updateChat();
    }
    showStatus();
  });
  call.on('ended', ({ reason, error }) => {
    if (call !== joined) return;
    endCall();
    if (error) notice(sentence(error));
    else if (reason !== 'left') notice('You are no longer in the call: press Join to join it again.');
    showStatus();
  });
  call.on('error', (err) => {
    if (err.code === 'ice_failed') failed(err);
    else notice(sentence(err), null, 'node');
  });

  for (const p of here) addPeer(p);
  updateChat();
  statsTimer = setInterval(pollMedia, 1000);
  layout();
  showStatus();
}

// endCall takes the page out of the call: the tiles, the camera, the chat.
function endCall() {
  call = null;
  clearInterval(statsTimer);
  statsTimer = null;
  failing.clear();
  localStream?.getTracks().forEach((t) => t.stop());
  localStream = null;
  open.clear();
  clearTiles();
  updateChat();
  leaveButton.disabled = true;
  joinButton.disabled = false;
  for (const input of joinForm.querySelectorAll('input')) input.disabled = false;
  layout();
}

async function leave() {
  const c = call;
  if (!c) return;
  leaveButton.disabled = true;
  endCall();
  try {
    await c.leave();
  } catch {
    // Left locally either way: the node ends the peer when the connection goes.
  }
  systemLine(`You left ${c.name}.`);
  // The page needs the node only for calls.
  client?.close();
  notice('');
  showStatus();
}

// rejoin leaves and joins again, with the relay switch as given.
async function rejoin({ relay }) {
  if (relay !== undefined) joinForm.elements.relay.checked = relay;
  await leave();
  join();
}

joinForm.addEventListener('submit', (e) => {
  e.preventDefault();
  join();
});
leaveButton.addEventListener('click', () => leave());

chatForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = chatInput.value.trim();
  if (!text || !call) return;
  chatInput.value = '';
  call.send(text);
  chatLine('mine', 'you', text);
});

// A closed tab leaves the call at once, instead of after the node's grace
// period.
addEventListener('pagehide', () => {
  call?.leave().catch(() => {});
});

updateChat();
layout();
