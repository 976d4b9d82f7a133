// A call that outlives the nodes under one of its pages. Page A is on node 1;
// page B reaches node 3 through the test's proxy. The three nodes share
// Redis. With the call up (relay only, video and chat):
//
//   drain  node 3 is told to shut down (SIGTERM) and the proxy leads to
//          node 2: B's page says the node is shutting down, moves, resumes.
//   kill   node 2 is killed (SIGKILL) and the proxy leads to node 1: B's
//          page says it lost the node, reconnects, resumes.
//
// After each, the call keeps going: nobody leaves, each side shows a relay
// pair, decodes the other's video, and chat crosses both ways. The TURN
// server of each node that went away went with it, so B's relayed media
// moves to the next node's each time.
//
//   PARLEY_URL_A    node 1, for page A
//   PARLEY_URL_B    the proxy, for page B
//   PARLEY_CONTROL  POST /drain and POST /kill
import { control, env, randomRoom, step, until } from './lib.mjs';
import { chat, framesGrow, join, newCallPage, runWithMedia, say, shoot, tile, tiles, waitChat, waitPair } from './call-lib.mjs';

const urlA = env('PARLEY_URL_A');
const urlB = env('PARLEY_URL_B');

// record keeps, from now on, the sessions of the tiles that leave the page
// and every state and sentence of its status line.
function record(page) {
  return page.evaluate(() => {
    window.__seen = { removed: [], states: [] };
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.removedNodes) if (n.dataset?.session) window.__seen.removed.push(n.dataset.session);
    }).observe(document.querySelector('#tiles'), { childList: true });
    const status = document.querySelector('#status');
    const note = () => {
      const s = [status.dataset.state, status.textContent];
      const last = window.__seen.states.at(-1);
      if (!last || last[0] !== s[0] || last[1] !== s[1]) window.__seen.states.push(s);
    };
    note();
    new MutationObserver(note).observe(status, { attributes: true, childList: true, characterData: true, subtree: true });
  });
}

function statusText(page) {
  return page.$eval('#status', (el) => el.textContent);
}

runWithMedia(async (browser, log) => {
  const name = randomRoom('restart');
  const query = `/call.html?call=${name}&relay=1`;
  const screenshots = [];

  const a = await newCallPage(browser, log, 'A', urlA + query);
  const b = await newCallPage(browser, log, 'B', urlB + query);
  const sessionA = await join(a);
  const sessionB = await join(b);
  const before = {
    statusB: await statusText(b),
    pairs: { a: await waitPair(a, sessionB, 'relay'), b: await waitPair(b, sessionA, 'relay') },
  };
  await say(a, 'Before, from A');
  await waitChat(b, 'Before, from A');
  await say(b, 'Before, from B');
  await waitChat(a, 'Before, from B');
  before.frames = { a: await framesGrow(a, sessionB, 20), b: await framesGrow(b, sessionA, 20) };
  step(`call up: B "${before.statusB}", A sees ${before.pairs.a.pill}, B sees ${before.pairs.b.pill}`);
  await record(a);
  await record(b);

  // move takes B's node away with action, and checks that the call goes on.
  async function move(action) {
    const from = await statusText(b);
    const seen = await b.evaluate(() => window.__seen.states.length);
    await control(action);
    const at = Date.now();
    step(`${action}: B's node is going`);
    // The page says so, then is back in the call on the next node.
    const away = () => b.evaluate((n) => window.__seen.states.slice(n).find(([s]) => s === 'reconnecting')?.[1] ?? null, seen);
    await until(`B to say it lost its node (${action})`, async () => (await away()) !== null);
    const statusAway = await away();
    await until(`B back in the call on another node (${action})`, async () => {
      const s = await b.$eval('#status', (el) => [el.dataset.state, el.textContent]);
      return s[0] === 'open' && s[1] !== from;
    });
    const statusAfter = await statusText(b);
    step(`${action}: B back after ${Date.now() - at} ms: "${statusAfter}"`);
    const pairs = { a: await waitPair(a, sessionB, 'relay', 45000), b: await waitPair(b, sessionA, 'relay', 45000) };
    const frames = { a: await framesGrow(a, sessionB, 30, 45000), b: await framesGrow(b, sessionA, 30, 45000) };
    step(`${action}: frames A ${frames.a.from}->${frames.a.to}, B ${frames.b.from}->${frames.b.to}, ${Date.now() - at} ms after`);
    const fromB = `After the ${action}, from B`;
    const fromA = `After the ${action}, from A`;
    await say(b, fromB);
    await waitChat(a, fromB);
    await say(a, fromA);
    await waitChat(b, fromA);
    step(`${action}: chat crossed both ways`);
    screenshots.push(await shoot(a, `call-${action}-a.png`));
    screenshots.push(await shoot(b, `call-${action}-b.png`));
    return {
      statusAway,
      statusAfter,
      pairs,
      frames,
      sessions: {
        a: await b.locator('.tile:not([data-local])').getAttribute('data-session'),
        b: await b.locator('.tile[data-local]').getAttribute('data-session'),
      },
      tileAtA: await tile(a, sessionB),
    };
  }

  const drain = await move('drain');
  const kill = await move('kill');

  return {
    call: name,
    sessions: { a: sessionA, b: sessionB },
    before,
    drain,
    kill,
    seen: { a: await a.evaluate(() => window.__seen), b: await b.evaluate(() => window.__seen) },
    tiles: { a: await tiles(a), b: await tiles(b) },
    chat: { a: await chat(a), b: await chat(b) },
    screenshots,
  };
});
