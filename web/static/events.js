// The live events demo: ParleySSE (EventSource) in, the HTTP API out.
import { ParleySSE, explain } from './parley.js';

const $ = (selector) => document.querySelector(selector);
const watchForm = $('#watch');
const publishForm = $('#publish');
const stopButton = $('#stop');
const statusEl = $('#status');
const noticeEl = $('#notice');
const list = $('#events');
const countEl = $('#count');
const published = $('#published');

const maxShown = 200;
let sse = null;
let received = 0;

const initial = new URLSearchParams(location.search).get('rooms') || 'events';
watchForm.elements.rooms.value = initial;
publishForm.elements.room.value = initial.split(',')[0];

function token() {
  return watchForm.elements.token.value.trim();
}

function notice(text) {
  noticeEl.textContent = text;
  noticeEl.hidden = !text;
}

let draining = false; // the node asked this stream to move

// retrying says why the page is trying again, from the error that made it
// (null: the network, as far as the page can tell).
function retrying(err) {
  if (draining || err?.code === 'draining' || (err?.code === 'over_capacity' && /draining/.test(err.message))) {
    return explain('draining');
  }
  switch (err?.code) {
    case 'over_capacity':
      return 'The node holds as many rooms as it may: trying again in a few seconds…';
    case 'rate_limited':
      return 'Too many connections from this address: trying again in a few seconds…';
    case 'unavailable':
      return 'The node is not answering: trying again in a few seconds…';
    default:
      return null;
  }
}

function showState(state) {
  statusEl.dataset.state = state;
  const rooms = sse ? sse.rooms.join(', ') : '';
  const why = state === 'reconnecting' ? retrying(sse?.error) : null;
  statusEl.textContent = {
    connecting: 'Connecting…',
    open: `Watching ${rooms}`,
    reconnecting: why ?? 'Reconnecting…',
    closed: 'Not watching.',
  }[state] ?? state;
  stopButton.disabled = state === 'closed';
}

// say is the SDK's sentence for an error, pointing at this page's token
// field for the ones about tokens (which it opens, so that the sentence can
// be followed at once), or '' for the errors the status line already tells
// (the page is trying again).
function say(err) {
  switch (err.code) {
    case 'disconnected':
    case 'draining':
    case 'over_capacity':
    case 'rate_limited':
    case 'unavailable':
      return '';
    case 'unauthorized': {
      watchForm.querySelector('details').open = true;
      const resume = sse?.welcome && /expired/.test(err.message) ? ' to carry on from where the stream stopped' : '';
      return explain(err, { token: `paste a JWT into the Token field above and press Watch${resume}` });
    }
    default:
      return explain(err);
  }
}

function addEvent(m) {
  received++;
  countEl.textContent = `(${received})`;
  const li = document.createElement('li');
  li.dataset.room = m.room;
  li.dataset.offset = m.offset;
  const meta = document.createElement('div');
  meta.className = 'meta';
  const time = m.ts ? new Date(m.ts).toLocaleTimeString() : '';
  meta.textContent = `${m.room} #${m.offset} · ${time}`;
  const pre = document.createElement('pre');
  pre.textContent = JSON.stringify(m.data);
  li.append(meta, pre);
  list.prepend(li);
  while (list.children.length > maxShown) list.lastElementChild.remove();
}

watchForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const rooms = watchForm.elements.rooms.value.split(',').map((r) => r.trim()).filter(Boolean);
  if (rooms.length === 0) return;
  notice('');
  if (sse && sse.state === 'closed' && sse.rooms.join(',') === rooms.join(',')) {
    // The same rooms again (after a refused or expired token, say): the
    // stream resumes from its last event, with the token as it is now.
    sse.token = token() || undefined;
    sse.connect();
    return;
  }
  sse?.close();
  draining = false;
  sse = new ParleySSE({
    rooms,
    token: token() || undefined,
    onMessage: addEvent,
    onLost: (room) => notice(`Events of ${room} were missed while disconnected: they are no longer in its history.`),
  });
  sse.on('state', showState);
  sse.on('draining', () => (draining = true));
  sse.on('welcome', () => (draining = false));
  sse.on('error', (err) => {
    const text = say(err);
    if (text) notice(text);
    showState(sse.state);
  });
  showState(sse.state);
  if (!rooms.includes(publishForm.elements.room.value)) publishForm.elements.room.value = rooms[0];
});

stopButton.addEventListener('click', () => {
  sse?.close();
});

publishForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const room = publishForm.elements.room.value.trim();
  const headers = { 'Content-Type': 'application/json' };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  published.textContent = 'Publishing…';
  try {
    const res = await fetch(`/v1/rooms/${encodeURIComponent(room)}/messages`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ kind: 'test', text: 'Test event from the browser', at: new Date().toISOString() }),
    });
    const body = await res.json();
    published.textContent = res.ok ? `Published to ${room} at offset ${body.offset}.` : `Refused: ${body.error?.message ?? res.status}`;
  } catch (err) {
    published.textContent = `Failed: ${err.message}`;
  }
});
