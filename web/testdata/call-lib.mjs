// Helpers of the call page's browser tests (call-relay.mjs, call-restart.mjs),
// on top of lib.mjs. Chromium runs with its fake camera and microphone; a
// browser context may use them only when the test grants it the permission,
// so a context without the grant meets a real refusal (NotAllowedError), as a
// person who pressed Block would.
import path from 'node:path';
import { env, run, step, until } from './lib.mjs';

export const wait = { timeout: 30000 };

// pages are the call pages open, for the account of a failure.
const pages = [];

// describe logs what each page shows and what its Call holds, so that a
// failure says where the call stood.
async function describe() {
  for (const page of pages) {
    try {
      const state = await page.evaluate(() => ({
        status: document.querySelector('#status').textContent,
        notice: document.querySelector('#notice').hidden ? '' : document.querySelector('#notice-text').textContent,
        session: window.parleyCall.call?.session ?? null,
        peers: [...(window.parleyCall.call?.peers.values() ?? [])].map((p) => ({
          session: p.session,
          state: p.state,
          pair: p.pair,
          signaling: p.pc.signalingState,
          ice: p.pc.iceConnectionState,
          gathering: p.pc.iceGatheringState,
        })),
      }));
      step(`${page.label} when it failed: ${JSON.stringify(state)}`);
      step(`${page.label} tiles: ${JSON.stringify(await tiles(page))}`);
    } catch (err) {
      step(`${page.label}: ${err.message}`);
    }
  }
}

// runWithMedia is lib.mjs's run with Chromium's fake camera and microphone;
// a failure logs where each call page stood.
export function runWithMedia(fn) {
  return run(fn, { args: ['--use-fake-device-for-media-stream'], onFailure: describe });
}

// newCallPage opens the call page at url (with its query) in a context of
// its own, with the camera and microphone allowed when camera is true.
export async function newCallPage(browser, log, name, url, { camera = true, viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  if (camera) await context.grantPermissions(['camera', 'microphone'], { origin: new URL(url).origin });
  const page = await context.newPage();
  page.on('pageerror', (err) => log.pageErrors.push(`${name}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') log.consoleErrors.push(`${name}: ${msg.text()}`);
  });
  page.label = name;
  pages.push(page);
  await page.goto(url);
  step(`${name}: page loaded`);
  return page;
}

export async function waitStatus(page, state, timeout = wait.timeout) {
  await page.locator(`#status[data-state="${state}"]`).waitFor({ timeout });
}

// join presses Join and waits until the page is in the call; it returns the
// page's own session (its local tile's).
export async function join(page) {
  await page.click('#join-button');
  await waitStatus(page, 'open');
  const session = await page.locator('.tile[data-local]').getAttribute('data-session', wait);
  step(`${page.label}: in the call as ${session}`);
  return session;
}

// tiles is what the page shows of each peer.
export function tiles(page) {
  return page.$$eval('#tiles .tile', (els) =>
    els.map((el) => ({
      session: el.dataset.session,
      user: el.dataset.user,
      local: el.dataset.local !== undefined,
      state: el.dataset.state,
      pair: el.dataset.pair ?? '',
      rtt: el.dataset.rtt === undefined ? null : Number(el.dataset.rtt),
      frames: el.dataset.frames === undefined ? null : Number(el.dataset.frames),
      pill: el.querySelector('.pair').hidden ? '' : el.querySelector('.pair').textContent,
      stateText: el.querySelector('.state').textContent,
      stats: el.querySelector('.stats').textContent,
      videoWidth: el.querySelector('video').videoWidth,
    })),
  );
}

export async function tile(page, session) {
  return (await tiles(page)).find((t) => t.session === session) ?? null;
}

// waitPair waits until the page's tile of session is connected over a pair
// of the given type (any, when pair is null), with a round-trip time.
export async function waitPair(page, session, pair, timeout = wait.timeout) {
  const type = pair === null ? '[data-pair]' : `[data-pair="${pair}"]`;
  await page.locator(`.tile[data-session="${session}"][data-state="connected"]${type}[data-rtt]`).waitFor({ timeout });
  return tile(page, session);
}

// framesGrow waits until the page has decoded at least `by` more video
// frames from session than when it was called, and reports the figures.
export async function framesGrow(page, session, by, timeout = wait.timeout) {
  const start = Date.now();
  let from = null;
  await until(`${page.label}: decoded frames from ${session}`, async () => {
    from = (await tile(page, session))?.frames ?? null;
    return from !== null;
  }, timeout);
  let to = from;
  await until(`${page.label}: ${by} more frames decoded from ${session} (from ${from})`, async () => {
    to = (await tile(page, session))?.frames ?? to;
    return to >= from + by;
  }, timeout);
  return { from, to, ms: Date.now() - start };
}

export async function say(page, text) {
  await page.locator('#chat-text:enabled').waitFor(wait);
  await page.fill('#chat-text', text);
  await page.press('#chat-text', 'Enter');
}

export async function waitChat(page, text, timeout = wait.timeout) {
  await page.locator('#chat-log li .text', { hasText: text }).first().waitFor({ timeout });
}

export function chat(page) {
  return page.$$eval('#chat-log li', (lis) =>
    lis.map((li) => ({
      kind: li.className || 'theirs',
      who: li.querySelector('.meta')?.textContent.split(' · ')[0] ?? '',
      text: li.querySelector('.text').textContent,
    })),
  );
}

export async function notice(page) {
  return page.$eval('#notice', (el) => (el.hidden ? '' : el.querySelector('#notice-text').textContent));
}

// shoot saves a screenshot into the test's screenshot directory and returns
// its path.
export async function shoot(page, name, options = {}) {
  const file = path.join(env('PARLEY_SCREENSHOT_DIR'), name);
  await page.screenshot({ path: file, ...options });
  step(`screenshot ${file}`);
  return file;
}

// fitsWidth reports whether the page needs no sideways scrolling.
export function fitsWidth(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}
