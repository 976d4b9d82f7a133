// A page that comes back too late to keep its place in a call. Page A is on
// the node; page B reaches it through the test's proxy. The node keeps an
// away peer for one second (--call-grace 1s). The proxy cuts B off for
// longer than that, so A sees B leave; when B's page is back, its resume
// comes too late: it says so, joins the call again as a new peer, and the
// two talk again.
//
//   PARLEY_URL      the node, for page A
//   PARLEY_URL_B    the proxy, for page B
//   PARLEY_CONTROL  POST /cut and POST /restore
import { control, env, randomRoom, step } from './lib.mjs';
import { chat, join, newCallPage, runWithMedia, say, shoot, tiles, waitChat, waitPair, waitStatus, wait } from './call-lib.mjs';

runWithMedia(async (browser, log) => {
  const name = randomRoom('late');
  const query = `/call.html?call=${name}&media=data`;
  const a = await newCallPage(browser, log, 'A', env('PARLEY_URL') + query, { camera: false });
  const b = await newCallPage(browser, log, 'B', env('PARLEY_URL_B') + query, { camera: false });
  const sessionA = await join(a);
  const sessionB = await join(b);
  await waitPair(a, sessionB, null);
  await waitPair(b, sessionA, null);
  await say(a, 'Before the cut');
  await waitChat(b, 'Before the cut');

  await control('cut');
  await waitStatus(b, 'reconnecting');
  // A hears that B left once the grace period is over.
  await a.locator(`.tile[data-session="${sessionB}"]`).waitFor({ state: 'detached', ...wait });
  const tilesWhileAway = await tiles(a);
  step('B is away; A saw B leave');
  await control('restore');
  await b.locator('#chat-log li.system', { hasText: 'away too long' }).waitFor(wait);
  await waitStatus(b, 'open');
  const newB = await b.locator('.tile[data-local]').getAttribute('data-session');
  step(`B joined again as ${newB}`);
  const pairs = { a: await waitPair(a, newB, null), b: await waitPair(b, sessionA, null) };
  await say(b, 'Back from B');
  await waitChat(a, 'Back from B');
  await say(a, 'Welcome back');
  await waitChat(b, 'Welcome back');
  const screenshots = [await shoot(b, 'call-late-b.png')];
  return {
    sessions: { a: sessionA, b: sessionB, newB },
    tilesWhileAway,
    pairs,
    tiles: { a: await tiles(a), b: await tiles(b) },
    chat: { a: await chat(a), b: await chat(b) },
    status: await b.$eval('#status', (el) => el.textContent),
    screenshots,
  };
});
