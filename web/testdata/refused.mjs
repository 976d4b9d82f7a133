// The demo pages on a node that checks JWTs and holds as many rooms as it
// may ("news" only). The node refuses the live events page's streams:
// without a token, with an expired one, for a room the token does not allow,
// and for a room new to the full node. EventSource does not say why; the page
// does, in a sentence, and stops, except for the full node, which it asks
// again. The chat page, refused alike, says so too, and joins once given a
// token.
import path from 'node:path';
import { control, env, run, step, until, watch } from './lib.mjs';

const base = env('PARLEY_URL');
const shots = env('PARLEY_SCREENSHOT_DIR');
const wait = { timeout: 10000 };

async function mint(query) {
  return (await control(`token?${query}`)).token;
}

async function sseRequests() {
  return (await control('count')).sse;
}

run(async (browser, log) => {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const page = await context.newPage();
  watch(page, 'events', log);
  // Every request for the stream, as the browser makes it: the
  // EventSource's, and the SDK's fetch that reads a refusal.
  const requests = [];
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/v1/sse') requests.push(r.resourceType());
  });
  const seen = () =>
    page.evaluate(() => ({
      notice: document.querySelector('#notice').hidden ? '' : document.querySelector('#notice').textContent,
      status: document.querySelector('#status').textContent,
      state: document.querySelector('#status').dataset.state,
      tokenBox: document.querySelector('#watch details').open,
    }));
  const watchRooms = async (rooms, token) => {
    await page.fill('#watch input[name="rooms"]', rooms);
    await page.fill('#watch input[name="token"]', token);
    await page.click('#watch button[type="submit"]');
  };

  await page.goto(`${base}/events.html?rooms=news`);
  const started = Date.now();
  await page.click('#watch button[type="submit"]');
  await page.locator('#notice', { hasText: 'none was given' }).waitFor(wait);
  const shownAfterMs = Date.now() - started;
  await page.locator('#status[data-state="closed"]').waitFor(wait);
  const goRequests = await sseRequests();
  const pageRequests = [...requests];
  await page.screenshot({ path: path.join(shots, 'events-no-token.png') });
  step(`no token: the page said so after ${shownAfterMs} ms, after ${goRequests} requests`);
  // Longer than the EventSource's own retry (3 s) and the SDK's first backoff (1 s).
  await page.waitForTimeout(4000);
  const noToken = {
    ...(await seen()),
    shownAfterMs,
    goRequests,
    goRequestsLate: await sseRequests(),
    pageRequests,
    pageRequestsLate: [...requests],
  };
  step('no token: no request since');

  // The same room with a token that expired: the page takes the token as it
  // is now, and says it expired.
  await watchRooms('news', await mint('user=late&ttl_ms=-60000'));
  await page.locator('#notice', { hasText: 'expired' }).waitFor(wait);
  await page.locator('#status[data-state="closed"]').waitFor(wait);
  const expired = await seen();
  step('expired token: said so');

  // A token for news only, on news and secret.
  const newsOnly = await mint('user=reader&ttl_ms=120000&subscribe=news');
  await watchRooms('news,secret', newsOnly);
  await page.locator('#notice', { hasText: 'does not allow' }).waitFor(wait);
  await page.locator('#status[data-state="closed"]').waitFor(wait);
  const forbidden = await seen();
  step('forbidden room: said so');

  await watchRooms('news', newsOnly);
  await page.locator('#status[data-state="open"]').waitFor(wait);
  const allowed = await seen();
  step('allowed room: watching');

  // A room the full node does not hold: over_capacity, with Retry-After 5 s.
  // The page says so and asks again.
  const anyRoom = await mint('user=reader&ttl_ms=120000');
  await watchRooms('other', anyRoom);
  await page.locator('#status[data-state="reconnecting"]', { hasText: 'holds as many rooms' }).waitFor(wait);
  const full = await seen();
  const firstRefusal = await sseRequests();
  let retried = true;
  try {
    await until('a retry', async () => (await sseRequests()) > firstRefusal, 12000);
  } catch {
    retried = false;
  }
  step(`full node: retried ${retried}`);
  await page.click('#stop');
  await page.locator('#status[data-state="closed"]').waitFor(wait);
  // The fetch of a refusal in flight, if any, finishes before the count.
  await page.waitForTimeout(300);
  const requestsAtStop = await sseRequests();
  await page.waitForTimeout(1500);
  const afterStop = await sseRequests();
  step('full node: stopped');

  // The chat page: without a token, then with one, then a room the token
  // does not allow.
  const chat = await context.newPage();
  watch(chat, 'chat', log);
  const chatSeen = () =>
    chat.evaluate(() => ({
      notice: document.querySelector('#notice').hidden ? '' : document.querySelector('#notice').textContent,
      status: document.querySelector('#status').textContent,
      state: document.querySelector('#status').dataset.state,
      tokenBox: document.querySelector('#join details').open,
    }));
  await chat.goto(`${base}/chat.html?room=news`);
  await chat.click('#join button[type="submit"]');
  await chat.locator('#notice', { hasText: 'none was given' }).waitFor(wait);
  await chat.locator('#status[data-state="closed"]').waitFor(wait);
  const chatNoToken = await chatSeen();
  step('chat without a token: said so');
  await chat.fill('#join input[name="token"]', newsOnly);
  await chat.click('#join button[type="submit"]');
  await chat.locator('#status[data-state="open"]').waitFor(wait);
  await chat.locator('#text:enabled').waitFor(wait);
  const chatJoined = await chatSeen();
  step('chat with a token: joined');
  await chat.fill('#join input[name="room"]', 'secret');
  await chat.click('#join button[type="submit"]');
  await chat.locator('#notice', { hasText: 'does not allow' }).waitFor(wait);
  const chatForbidden = await chatSeen();
  step('chat, a room the token does not allow: said so');

  return {
    noToken,
    expired,
    forbidden,
    allowed,
    full: { ...full, retried, requests: requestsAtStop, afterStop },
    chat: { noToken: chatNoToken, joined: chatJoined, forbidden: chatForbidden },
  };
});
