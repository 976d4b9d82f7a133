// The chat page in two browsers: messages and presence; a network cut during
// which messages are published (they arrive after the reconnect, once each);
// and a drain onto a node whose history is new (the page reports the loss).
import path from 'node:path';
import { control, env, publish, randomRoom, run, step, watch } from './lib.mjs';

const base = env('PARLEY_URL');
const direct = env('PARLEY_DIRECT');
const shots = env('PARLEY_SCREENSHOT_DIR');
const wait = { timeout: 20000 };

// messages returns what a page shows: [offset, text] in screen order.
function messages(page) {
  return page.$$eval('#messages li', (lis) => lis.map((li) => [Number(li.dataset.offset), li.querySelector('.text').textContent]));
}

async function waitText(page, text) {
  await page.locator('#messages li .text', { hasText: text }).first().waitFor(wait);
}

async function waitState(page, state) {
  await page.locator(`#status[data-state="${state}"]`).waitFor(wait);
}

async function session(page) {
  return page.$eval('#status', (el) => el.dataset.session);
}

// countHeartbeats counts the pings the page's WebSocket receives and the
// pongs it sends, as the browser's network stack sees them.
function countHeartbeats(page) {
  const n = { pings: 0, pongs: 0 };
  page.on('websocket', (ws) => {
    ws.on('framereceived', (f) => {
      for (const line of String(f.payload).split('\n')) if (line.includes('"type":"ping"')) n.pings++;
    });
    ws.on('framesent', (f) => {
      if (String(f.payload).includes('"type":"pong"')) n.pongs++;
    });
  });
  return n;
}

async function until(what, cond, timeout = wait.timeout) {
  const deadline = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

run(async (browser, log) => {
  const room = randomRoom('chat');
  const pages = [];
  for (const name of ['A', 'B']) {
    const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
    const page = await context.newPage();
    watch(page, name, log);
    page.heartbeats = countHeartbeats(page);
    await page.goto(`${base}/chat.html`);
    step(`${name}: page loaded`);
    await page.fill('#join input[name="room"]', room);
    await page.click('#join button[type="submit"]');
    await waitState(page, 'open');
    step(`${name}: connected`);
    await page.locator('#text:enabled').waitFor(wait);
    step(`${name}: joined`);
    // What the SDK delivers, as the application sees it.
    await page.evaluate(() => {
      const client = window.parleyChat.client;
      window.__seen = { delivered: [], lost: [], states: [] };
      client.on('message', (m) => window.__seen.delivered.push([m.epoch, m.offset]));
      client.on('lost', (e) => window.__seen.lost.push(e.room));
      client.on('state', (s) => window.__seen.states.push(s));
    });
    pages.push(page);
  }
  const [a, b] = pages;
  const users = await Promise.all(pages.map((p) => p.evaluate(() => window.parleyChat.client.user)));
  step(`joined ${room} as ${users.join(' and ')}`);

  // Each sees the other.
  await a.locator(`#members li[data-user="${users[1]}"]`).waitFor(wait);
  await b.locator(`#members li[data-user="${users[0]}"]`).waitFor(wait);
  // The count is the room's members_total, as the SDK keeps it.
  for (const p of pages) await p.locator('#members-count[data-total="2"]').waitFor(wait);
  const memberCounts = await Promise.all(pages.map((p) => p.$eval('#members-count', (el) => el.textContent)));
  // Presence a page at a time, through the SDK.
  const presencePages = await a.evaluate(async (room) => {
    const client = window.parleyChat.client;
    const first = await client.presence(room, { limit: 1 });
    const second = await client.presence(room, { cursor: first.next, limit: 1 });
    const all = await client.allMembers(room, { limit: 1 });
    return {
      first: { sessions: first.members.map((m) => m.session), total: first.total, next: first.next !== null },
      second: { sessions: second.members.map((m) => m.session), total: second.total, next: second.next !== null },
      all: all.map((m) => m.session),
    };
  }, room);
  step('presence seen both ways');

  await send(a, 'Hello from A');
  await waitText(b, 'Hello from A');
  await send(b, 'Hi A, B here');
  await waitText(a, 'Hi A, B here');
  step('messages exchanged');

  // Idle connections get pings; the SDK answers each with a pong, and the
  // connections live on.
  const sessions = await Promise.all(pages.map(session));
  for (const p of pages) {
    await until('three pings', () => p.heartbeats.pings >= 3);
    await until('a pong for every ping', () => p.heartbeats.pongs >= p.heartbeats.pings);
  }
  const heartbeats = pages.map((p) => ({ ...p.heartbeats }));
  await Promise.all(pages.map((p) => waitState(p, 'open')));
  const sessionsAfterPings = await Promise.all(pages.map(session));
  await a.screenshot({ path: path.join(shots, 'chat.png') });
  step('heartbeats answered; screenshot taken');

  // Cut the network. While both are away, three messages go out through the
  // HTTP API and A types one more: after the reconnect each arrives once.
  await control('cut');
  await Promise.all(pages.map((p) => waitState(p, 'reconnecting')));
  const statusWhileAway = await a.$eval('#status', (el) => el.textContent);
  step(`cut: pages show "${statusWhileAway}"`);
  for (let i = 1; i <= 3; i++) await publish(direct, room, { text: `While you were away ${i}` });
  await send(a, 'Typed while reconnecting');
  await control('restore');
  for (const p of pages) {
    await waitState(p, 'open');
    for (let i = 1; i <= 3; i++) await waitText(p, `While you were away ${i}`);
    await waitText(p, 'Typed while reconnecting');
  }
  const sessionsAfterCut = await Promise.all(pages.map(session));
  const shownAfterCut = await Promise.all(pages.map(messages));
  step('resumed after the cut');

  // Drain: the node goes away and a node with an empty history takes over, so
  // the positions cannot be resumed and the page says so.
  const drained = await control('drain');
  for (const p of pages) {
    await p.locator('#notice:not([hidden])').waitFor(wait);
    await waitState(p, 'open');
  }
  const sessionsAfterDrain = await Promise.all(pages.map(session));
  await send(b, 'After the move');
  await waitText(a, 'After the move');
  await waitText(b, 'After the move');
  const notice = await a.$eval('#notice', (el) => el.textContent);
  await a.screenshot({ path: path.join(shots, 'chat-after-drain.png') });
  step('moved to the new node');

  const seen = [];
  for (const p of pages) {
    seen.push({
      user: await p.evaluate(() => window.parleyChat.client.user),
      shown: await messages(p),
      ...(await p.evaluate(() => window.__seen)),
    });
  }
  return {
    room,
    users,
    memberCounts,
    presencePages,
    sessions,
    heartbeats,
    sessionsAfterPings,
    sessionsAfterCut,
    shownAfterCut,
    sessionsAfterDrain,
    statusWhileAway,
    notice,
    drained,
    pages: seen,
  };
});
