// The chat page when the node cannot renew its room for a while: after a
// network cut, the node refuses the page's resubscribe twice with `internal`
// (its message bus is coming back), as a node on Redis does after a Redis
// restart. The page keeps the room, reconnects, and shows every message, the
// ones published while it was away and while it was refused included, once
// each, in order.
import path from 'node:path';
import { control, env, publish, randomRoom, run, step, watch } from './lib.mjs';

const base = env('PARLEY_URL');
const direct = env('PARLEY_DIRECT');
const shots = env('PARLEY_SCREENSHOT_DIR');
const wait = { timeout: 20000 };

function messages(page) {
  return page.$$eval('#messages li', (lis) => lis.map((li) => [Number(li.dataset.offset), li.querySelector('.text').textContent]));
}

async function waitText(page, text) {
  await page.locator('#messages li .text', { hasText: text }).first().waitFor(wait);
}

async function waitState(page, state) {
  await page.locator(`#status[data-state="${state}"]`).waitFor(wait);
}

run(async (browser, log) => {
  const room = randomRoom('refused');
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const page = await context.newPage();
  watch(page, 'chat', log);
  await page.goto(`${base}/chat.html`);
  await page.fill('#join input[name="room"]', room);
  await page.click('#join button[type="submit"]');
  await waitState(page, 'open');
  await page.locator('#text:enabled').waitFor(wait);
  step(`joined ${room}`);
  // What the SDK tells the application.
  await page.evaluate(() => {
    const client = window.parleyChat.client;
    window.__seen = { delivered: [], lost: [], errors: [], closes: [], states: [], rooms: [] };
    client.on('message', (m) => window.__seen.delivered.push([m.epoch, m.offset]));
    client.on('lost', (e) => window.__seen.lost.push(e.room));
    client.on('error', (e) => {
      window.__seen.errors.push([e.code, e.room ?? null]);
      // Whether the room was still subscribed when the application heard.
      window.__seen.rooms.push(client.rooms());
    });
    client.on('close', (e) => window.__seen.closes.push(e.code));
    client.on('state', (s) => window.__seen.states.push(s));
  });

  await page.fill('#text', 'Before');
  await page.press('#text', 'Enter');
  await waitText(page, 'Before');

  // The node refuses the next two subscribes of the room; at each refusal
  // it publishes "During refusal N" first.
  await control(`fail?room=${encodeURIComponent(room)}&n=2`);
  await control('cut');
  await waitState(page, 'reconnecting');
  for (let i = 1; i <= 2; i++) await publish(direct, room, { text: `While away ${i}` });
  await control('restore');
  step('cut, published while away, restored');
  for (const text of ['While away 1', 'While away 2', 'During refusal 1', 'During refusal 2']) await waitText(page, text);
  await waitState(page, 'open');
  const { failures } = await control('failures');
  await page.fill('#text', 'After');
  await page.press('#text', 'Enter');
  await waitText(page, 'After');
  const notice = await page.$eval('#notice', (el) => (el.hidden ? '' : el.textContent));
  await page.screenshot({ path: path.join(shots, 'chat-resubscribe-refused.png') });
  step('renewed');

  return {
    room,
    failures,
    shown: await messages(page),
    notice,
    roomsAfter: await page.evaluate(() => window.parleyChat.client.rooms()),
    ...(await page.evaluate(() => window.__seen)),
  };
});
