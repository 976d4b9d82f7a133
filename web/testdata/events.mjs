// The live events page: EventSource receives what the page itself publishes
// through the HTTP API, and what a backend publishes; after a network cut the
// browser resumes with Last-Event-ID and misses nothing.
import path from 'node:path';
import { control, env, publish, randomRoom, run, step, watch } from './lib.mjs';

const base = env('PARLEY_URL');
const direct = env('PARLEY_DIRECT');
const shots = env('PARLEY_SCREENSHOT_DIR');
const wait = { timeout: 20000 };

function shown(page) {
  return page.$$eval('#events li', (lis) => lis.map((li) => [li.dataset.room, Number(li.dataset.offset)]));
}

async function waitOffset(page, room, offset) {
  await page.locator(`#events li[data-room="${room}"][data-offset="${offset}"]`).waitFor(wait);
}

run(async (browser, log) => {
  const room = randomRoom('events');
  const other = randomRoom('other');
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const page = await context.newPage();
  watch(page, 'events', log);
  await page.goto(`${base}/events.html`);
  await page.fill('#watch input[name="rooms"]', `${room},${other}`);
  await page.click('#watch button[type="submit"]');
  await page.locator('#status[data-state="open"]').waitFor(wait);
  step(`watching ${room},${other}`);

  // The page's own button publishes through the HTTP API.
  await page.fill('#publish input[name="room"]', room);
  await page.click('#publish button[type="submit"]');
  await page.locator('#published', { hasText: 'offset 1' }).waitFor(wait);
  await waitOffset(page, room, 1);
  const firstText = await page.$eval(`#events li[data-offset="1"] pre`, (el) => el.textContent);
  step('the test event arrived');

  // A backend publishes to both rooms.
  await publish(base, room, { text: 'from a backend', n: 2 });
  await publish(base, other, { text: 'another room' });
  await waitOffset(page, room, 2);
  await waitOffset(page, other, 1);
  await page.screenshot({ path: path.join(shots, 'events.png') });

  // Cut the stream; publish while it is down; the browser's EventSource
  // reconnects (after the stream's retry: 3000) and resumes.
  await control('cut');
  await page.locator('#status[data-state="reconnecting"]').waitFor(wait);
  step('cut');
  await publish(direct, room, { text: 'while away', n: 3 });
  await publish(direct, room, { text: 'while away', n: 4 });
  await control('restore');
  await waitOffset(page, room, 4);
  await page.locator('#status[data-state="open"]').waitFor(wait);
  step('resumed');
  return { room, other, firstText, shown: await shown(page) };
});
