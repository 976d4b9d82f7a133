// The call page against a node that checks JWTs, with data only (from
// ?media=data): without a token, with an expired one, and with one that
// does not allow the call, the page says so in a sentence and stays out of
// the call; with a token that allows it, pasted into the Token field, it
// joins.
//
//   PARLEY_URL            the node
//   PARLEY_TOKEN_TEAM     a token that allows the calls team:*
//   PARLEY_TOKEN_EXPIRED  a token that has expired
import { env, step } from './lib.mjs';
import { join, newCallPage, notice, runWithMedia, shoot, wait } from './call-lib.mjs';

const base = env('PARLEY_URL');

// attempt presses Join and waits for the page to say why it is not in the
// call, or to be in it.
async function attempt(page, { call, token }) {
  if (call !== undefined) await page.fill('#call-name', call);
  if (token !== undefined) {
    await page.evaluate(() => {
      document.querySelector('#join details').open = true;
    });
    await page.fill('#join input[name="token"]', token);
  }
  await page.click('#join-button');
  await page.locator('#notice:not([hidden]), #status[data-state="open"]').first().waitFor(wait);
  return {
    notice: await notice(page),
    status: await page.$eval('#status', (el) => el.dataset.state),
    tokenOpen: await page.$eval('#join details', (el) => el.open),
  };
}

runWithMedia(async (browser, log) => {
  const screenshots = [];
  const page = await newCallPage(browser, log, 'refused', `${base}/call.html?call=team:standup&media=data`, { camera: false });

  const noToken = await attempt(page, {});
  step(`no token: "${noToken.notice}"`);
  screenshots.push(await shoot(page, 'call-no-token.png'));
  const expired = await attempt(page, { token: env('PARLEY_TOKEN_EXPIRED') });
  step(`expired: "${expired.notice}"`);
  const forbidden = await attempt(page, { call: 'secret-call', token: env('PARLEY_TOKEN_TEAM') });
  step(`forbidden: "${forbidden.notice}"`);
  await page.fill('#call-name', 'team:standup');
  const session = await join(page);
  const allowed = {
    session,
    notice: await notice(page),
    status: await page.$eval('#status', (el) => el.textContent),
  };
  step(`allowed: "${allowed.status}"`);
  // Alone in the call: the page offers the link to send.
  await page.locator('#invite:not([hidden])').waitFor(wait);
  allowed.invite = await page.$eval('#invite-link', (el) => el.href);
  screenshots.push(await shoot(page, 'call-waiting.png'));
  return { noToken, expired, forbidden, allowed, screenshots };
});
