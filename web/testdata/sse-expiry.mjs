// ParleySSE on a node that checks JWTs, in a real browser: two streams whose
// tokens expire a few seconds after they open. The node sends an `error`
// event (code unauthorized) and ends each stream. The one with a token
// function gets a fresh token and resumes from its last event; the messages
// published while it renewed arrive once each. The one with a fixed token
// reports the error and stops.
import { control, env, publish, randomRoom, run, step, until, watch } from './lib.mjs';

const base = env('PARLEY_URL');

async function mint(user, ttlMs) {
  return (await control(`token?user=${user}&ttl_ms=${ttlMs}`)).token;
}

run(async (browser, log) => {
  const room = randomRoom('expiry');
  const backend = await mint('backend', 120000);
  const context = await browser.newContext();
  const page = await context.newPage();
  watch(page, 'sse', log);

  // The page's token function. The first token expires after 2 to 3 s; the
  // renewal waits until the test has published while the page was away.
  let tokenCalls = 0;
  let release;
  const released = new Promise((resolve) => (release = resolve));
  await page.exposeFunction('freshToken', async () => {
    tokenCalls++;
    if (tokenCalls === 1) return mint('renewing', 3000);
    await released;
    return mint('renewing', 120000);
  });
  // The fixed token is minted as the page opens its stream, so it too lasts
  // 2 to 3 s from there, however long the page took to load.
  await page.exposeFunction('fixedToken', () => mint('fixed', 3000));

  await page.goto(`${base}/`);
  await page.evaluate(
    async (room) => {
      const { ParleySSE } = await import('/parley.js');
      const fixed = await window.fixedToken();
      window.__sse = {};
      const open = (name, token) => {
        const log = { streams: 0, raw: [], errors: [], welcomes: 0, delivered: [], states: [] };
        // Records every event the browser dispatches on the stream: its name,
        // and its data (null for the EventSource's own connection errors).
        class RecordingEventSource extends EventSource {
          constructor(url) {
            super(url);
            log.streams++;
            for (const type of ['welcome', 'message', 'error', 'reconnect']) {
              this.addEventListener(type, (e) => log.raw.push([type, typeof e.data === 'string' ? e.data : null]));
            }
          }
        }
        const sse = new ParleySSE({
          rooms: [room],
          token,
          EventSource: RecordingEventSource,
          minDelay: 200,
          maxDelay: 1000,
          onMessage: (m) => log.delivered.push(m.offset),
          onError: (err) => log.errors.push({ code: err.code, message: err.message }),
        });
        sse.on('welcome', () => log.welcomes++);
        sse.on('state', (s) => log.states.push(s));
        window.__sse[name] = { sse, log };
      };
      open('renewing', () => window.freshToken());
      open('fixed', fixed);
    },
    room,
  );
  const seen = (name) => page.evaluate((n) => ({ ...window.__sse[n].log, state: window.__sse[n].sse.state }), name);

  await until('both streams open', async () => (await seen('renewing')).welcomes >= 1 && (await seen('fixed')).welcomes >= 1);
  step('both streams open');
  await publish(base, room, { n: 1 }, backend);

  // The renewing stream's token expires: the node's error event makes the
  // page ask for a fresh token, which is held while two messages go out.
  await until('the renewal', () => tokenCalls >= 2);
  step('the token expired; the page asked for a fresh one');
  await publish(base, room, { n: 2 }, backend);
  await publish(base, room, { n: 3 }, backend);
  release();
  await until('messages 1 to 3', async () => (await seen('renewing')).delivered.length >= 3);
  step('resumed with a fresh token');
  await publish(base, room, { n: 4 }, backend);
  await until('message 4', async () => (await seen('renewing')).delivered.length >= 4);

  // The fixed token's stream ended for good; give it time to show that it
  // does not come back.
  await until('the fixed stream to close', async () => (await seen('fixed')).state === 'closed');
  await page.waitForTimeout(1500);
  step('the fixed stream stayed closed');
  return { room, tokenCalls, renewing: await seen('renewing'), fixed: await seen('fixed') };
});
