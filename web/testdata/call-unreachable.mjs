// The call page when a call cannot connect. The node serves no TURN, and
// page B asks for "Relay only": B has no address to offer, and A none that B
// may use, so the browsers never even try a pair. B says at once that Relay
// only cannot work on this node and offers to join again without it; A
// says, once the connection has taken too long, that the call could not
// connect and what to try. B takes its offer, and the two connect: A's
// sentence goes. Both data only (?media=data).
//
//   PARLEY_URL  the node, without TURN
import { env, randomRoom, step } from './lib.mjs';
import { join, newCallPage, notice, runWithMedia, shoot, tiles, waitPair, waitStatus, wait } from './call-lib.mjs';

async function told(page, timeout = wait.timeout) {
  await page.locator('#notice:not([hidden])').waitFor({ timeout });
  return {
    notice: await notice(page),
    action: await page.$eval('#notice-action', (el) => (el.hidden ? '' : el.textContent)),
    tiles: await tiles(page),
  };
}

runWithMedia(async (browser, log) => {
  const name = randomRoom('unreachable');
  const base = `${env('PARLEY_URL')}/call.html?call=${name}&media=data`;
  const a = await newCallPage(browser, log, 'A', base, { camera: false });
  const b = await newCallPage(browser, log, 'B', `${base}&relay=1`, { camera: false });
  const sessionA = await join(a);
  const joined = Date.now();
  await join(b);
  const relayB = await told(b);
  step(`B: "${relayB.notice}" [${relayB.action}]`);
  const failedA = await told(a, 60000);
  failedA.afterMs = Date.now() - joined;
  step(`A: "${failedA.notice}" [${failedA.action}] after ${failedA.afterMs} ms`);
  const screenshots = [await shoot(a, 'call-could-not-connect.png'), await shoot(b, 'call-no-turn.png')];

  await b.click('#notice-action');
  await waitStatus(b, 'open');
  const sessionB = await b.locator('.tile[data-local]').getAttribute('data-session', wait);
  const again = {
    relay: await b.evaluate(() => document.querySelector('#join').elements.relay.checked),
    pairs: { a: await waitPair(a, sessionB, null), b: await waitPair(b, sessionA, null) },
  };
  await a.locator('#notice').waitFor({ state: 'hidden', ...wait });
  again.notices = { a: await notice(a), b: await notice(b) };
  step(`B joined again without Relay only: A sees ${again.pairs.a.pill}, B sees ${again.pairs.b.pill}`);
  return { relayB, failedA, again, screenshots };
});
