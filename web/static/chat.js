// The chat demo: one Parley client, one room at a time.
import { Parley, explain } from './parley.js';

const $ = (selector) => document.querySelector(selector);
const joinForm = $('#join');
const sendForm = $('#send');
const textInput = $('#text');
const statusEl = $('#status');
const noticeEl = $('#notice');
const log = $('#messages');
const membersEl = $('#members');
const membersEmpty = $('#members-empty');
const membersCount = $('#members-count');
const membersMore = $('#members-more');
const roomName = $('#room-name');

const maxShown = 200;
let client = null;
let room = null;
let token = '';
let epoch = null; // epoch of the messages on screen
const shown = new Map(); // offset -> <li>
const myUsers = new Set(); // in dev mode every connection is a new anonymous user
let draining = false; // the node asked this client to move

joinForm.elements.room.value = new URLSearchParams(location.search).get('room') || 'lobby';

// For the browser console: parleyChat.client is the live client.
window.parleyChat = {
  get client() {
    return client;
  },
};

function showState() {
  const state = client.state;
  statusEl.dataset.state = state;
  statusEl.dataset.session = client.session ?? '';
  switch (state) {
    case 'connecting':
      statusEl.textContent = 'Connecting…';
      break;
    case 'open':
      statusEl.textContent = `Connected as ${client.user} on node ${client.welcome.node}`;
      break;
    case 'reconnecting':
      statusEl.textContent = draining ? explain('draining') : 'Reconnecting…';
      break;
    case 'closed':
      statusEl.textContent = 'Disconnected.';
      break;
  }
}

function notice(text) {
  noticeEl.textContent = text;
  noticeEl.hidden = !text;
}

// say is the SDK's sentence for an error or a close, pointing at this page's
// token field for the ones about tokens, which it opens so that the
// sentence can be followed at once.
function say(err) {
  const text = explain(err, { token: 'paste a JWT into the Token field above and press Join' });
  if (err?.code === 'unauthorized' || err?.code === 1008) joinForm.querySelector('details').open = true;
  return text;
}

// explainSend says why a message was not sent.
function explainSend(err, name) {
  switch (err.code) {
    case 'forbidden':
      return `Not sent: your token does not allow sending to ${name}.`;
    case 'rate_limited':
      return 'Not sent: that was faster than the node allows. Wait a moment and send it again.';
    case 'timeout':
      return 'Not sent: the node did not answer in time. Send it again.';
    case 'unauthorized':
      return say(err);
    case 'closed':
      return 'Not sent: not connected. Press Join to connect again.';
    default:
      return `Not sent: ${err.message}.`;
  }
}

function newKey() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function clearMessages() {
  shown.clear();
  log.replaceChildren();
}

function addMessage(m) {
  if (m.epoch !== epoch) {
    clearMessages(); // a new epoch: positions start over
    epoch = m.epoch;
  }
  if (shown.has(m.offset)) return;
  const li = document.createElement('li');
  li.dataset.offset = m.offset;
  const mine = m.from !== undefined && myUsers.has(m.from);
  if (mine) li.classList.add('mine');
  const meta = document.createElement('span');
  meta.className = 'meta';
  const time = m.ts ? new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
  meta.textContent = `${mine ? 'you' : (m.from ?? 'server')} · ${time}`;
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = typeof m.data?.text === 'string' ? m.data.text : JSON.stringify(m.data);
  li.append(meta, text);
  // Keep offset order, whatever order history and live messages come in.
  let before = null;
  for (const [offset, el] of shown) {
    if (offset > m.offset && (before === null || offset < Number(before.dataset.offset))) before = el;
  }
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.insertBefore(li, before);
  shown.set(m.offset, li);
  while (shown.size > maxShown) {
    const oldest = Math.min(...shown.keys());
    shown.get(oldest).remove();
    shown.delete(oldest);
  }
  if (atBottom || mine) log.scrollTop = log.scrollHeight;
}

// showMembers lists the members the client knows (for a big room, the first
// page and the joins since) and counts all of them: total is the room's
// members_total, kept up to date by the SDK.
function showMembers(_event, members, total) {
  const me = client.user;
  const users = [...new Set(members.map((m) => m.user))].sort((a, b) => (b === me) - (a === me) || a.localeCompare(b));
  const items = users.map((user) => {
    const li = document.createElement('li');
    li.dataset.user = user;
    const name = document.createElement('span');
    name.className = 'user';
    name.textContent = user;
    li.append(name);
    if (user === me) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = '(you)';
      li.append(you);
    }
    return li;
  });
  membersEl.replaceChildren(...items);
  membersCount.textContent = `(${total})`;
  membersCount.dataset.total = total;
  const unlisted = total - members.length;
  membersMore.textContent = `${unlisted} more not listed`;
  membersMore.hidden = unlisted <= 0;
  membersEmpty.hidden = total > 0;
}

function clearMembers() {
  membersEl.replaceChildren();
  membersCount.textContent = '';
  delete membersCount.dataset.total;
  membersMore.hidden = true;
}

// loadHistory shows the room's recent messages and returns the position they
// end at, so the subscription continues from there without a gap.
async function loadHistory(name) {
  try {
    const res = await fetch(`/v1/rooms/${encodeURIComponent(name)}/history?limit=50`, { headers: authHeaders() });
    if (!res.ok) return undefined;
    const h = await res.json();
    if (name !== room) return undefined;
    for (const m of h.messages) addMessage(m);
    return { epoch: h.epoch, offset: h.offset };
  } catch {
    return undefined; // the subscription still starts at the current position
  }
}

async function onLost(name) {
  if (name !== room) return;
  notice('Some messages were no longer in the room\u2019s history, so the latest ones are shown instead.');
  clearMessages();
  epoch = null;
  await loadHistory(name);
}

function connect() {
  client = new Parley({ token: token || undefined });
  client.on('state', showState);
  client.on('welcome', (w) => {
    draining = false;
    myUsers.add(w.user);
    showState();
  });
  client.on('draining', () => {
    draining = true;
  });
  client.on('close', (e) => {
    // The node closed this page as a slow consumer; the other closes are
    // told by the status line, or by the error frame before them.
    if (e.code === 1013) notice(say(e));
  });
  client.on('error', (err) => notice(say(err)));
  showState();
}

async function join(name) {
  if (room) {
    const old = room;
    room = null;
    client.unsubscribe(old).catch(() => {});
  }
  room = name;
  history.replaceState(null, '', `?room=${encodeURIComponent(name)}`);
  roomName.textContent = `in ${name}`;
  notice('');
  clearMessages();
  epoch = null;
  clearMembers();
  const since = await loadHistory(name);
  try {
    await client.subscribe(name, {
      presence: true,
      since,
      onMessage: addMessage,
      onPresence: showMembers,
      onLost,
    });
    textInput.disabled = false;
    sendForm.querySelector('button').disabled = false;
    textInput.focus();
  } catch (err) {
    if (room === name) room = null;
    notice(say(err));
  }
}

joinForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const name = joinForm.elements.room.value.trim();
  if (!client) {
    token = joinForm.elements.token.value.trim();
    connect();
  } else if (client.state === 'closed') {
    // Stopped (a refused or expired token): connect again with the token as
    // it is now; the room resumes from the last message shown.
    token = joinForm.elements.token.value.trim();
    client.token = token || undefined;
    notice('');
    client.connect();
  }
  if (name && name !== room) join(name);
});

sendForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = textInput.value.trim();
  if (!text || !room) return;
  textInput.value = '';
  // The key makes a publish caught by a reconnect safe to send again.
  const name = room;
  client.publish(room, { text }, { key: newKey() }).catch((err) => notice(explainSend(err, name)));
});
