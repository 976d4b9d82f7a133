// The live events demo: ParleySSE (EventSource) in, the HTTP API out.
import { ParleySSE } from './parley.js';

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

function showState(state) {
  statusEl.dataset.state = state;
  const rooms = sse ? sse.rooms.join(', ') : '';
  statusEl.textContent = {
    connecting: 'Connecting…',
    open: `Watching ${rooms}`,
    reconnecting: 'Reconnecting…',
    closed: 'Not watching.',
  }[state] ?? state;
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
  sse?.close();
  notice('');
  sse = new ParleySSE({
    rooms,
    token: token() || undefined,
    onMessage: addEvent,
    onLost: (room) => notice(`Events of ${room} were missed while disconnected: they are no longer in its history.`),
  });
  sse.on('state', showState);
  sse.on('error', (err) => notice(`Error: ${err.message}`));
  showState(sse.state);
  stopButton.disabled = false;
  if (!rooms.includes(publishForm.elements.room.value)) publishForm.elements.room.value = rooms[0];
});

stopButton.addEventListener('click', () => {
  sse?.close();
  stopButton.disabled = true;
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
