// The network diagnostics page against a node: run by
// diagnostics_browser_test.go, with lib.mjs's environment and
//
//   PARLEY_CHROMIUM_ARGS  a JSON array of Chromium flags beside the usual ones
//                         (a certificate to trust, UDP turned off for WebRTC)
//   PARLEY_DIAG_NAME      the screenshots' file name prefix
//   PARLEY_DIAG_PHONE     "1": also load the page at 390x844 and photograph it
//   PARLEY_DIAG_TOKEN     a JWT to type into the Token field before pressing
//                         "Run checks" (the run on load goes without)
//
// It waits for the run the page starts on load, presses "Run checks" once
// more and waits for that run, presses "Copy", and reports what each check's
// row shows, the verdict, the summary and what reached the clipboard.
import { env, run, step, watch } from './lib.mjs';
import path from 'node:path';

const base = env('PARLEY_URL');
const shots = env('PARLEY_SCREENSHOT_DIR');
const name = env('PARLEY_DIAG_NAME', 'diagnostics');
const extraArgs = JSON.parse(process.env.PARLEY_CHROMIUM_ARGS || '[]');
const phone = process.env.PARLEY_DIAG_PHONE === '1';
const token = process.env.PARLEY_DIAG_TOKEN || '';
const runTimeout = 90000;

// read collects what a person sees on the page.
async function read(page) {
  return page.evaluate(() => ({
    rows: [...document.querySelectorAll('.check')].map((li) => ({
      check: li.dataset.check,
      result: li.dataset.result,
      pill: li.querySelector('.pill').textContent,
      figure: li.querySelector('.figure').textContent,
      meaning: li.querySelector('.meaning').textContent,
    })),
    verdict: {
      result: document.querySelector('#verdict').dataset.result,
      title: document.querySelector('#verdict h2').textContent,
      text: document.querySelector('#verdict p').textContent,
    },
    progress: document.querySelector('#progress').textContent,
    summary: document.querySelector('#summary').textContent,
    scrollWidth: document.documentElement.scrollWidth,
    width: window.innerWidth,
  }));
}

async function finished(page) {
  await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: runTimeout, polling: 100 });
}

run(async (browser, log) => {
  const result = { screenshots: [] };

  const desktop = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await desktop.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  const page = await desktop.newPage();
  watch(page, 'desktop', log);
  const started = Date.now();
  await page.goto(`${base}/diagnostics.html`);
  await finished(page);
  result.firstRun = await read(page);
  result.firstRun.tokenFieldOpen = await page.evaluate(() => document.querySelector('#run details').open);
  step(`first run (on load) done in ${Date.now() - started} ms: ${result.firstRun.progress}`);
  const firstShot = path.join(shots, `${name}-on-load.png`);
  if (token) {
    // What the page said before it had the token is worth a look too.
    await page.screenshot({ path: firstShot, fullPage: true });
    result.screenshots.push(firstShot);
    await page.fill('#run input[name="token"]', token);
  }

  // The button runs every check again.
  await page.click('#run-button');
  await page.waitForFunction(() => document.body.dataset.state === 'running', null, { timeout: 10000, polling: 25 });
  const again = Date.now();
  await finished(page);
  step(`second run (Run checks) done in ${Date.now() - again} ms`);
  Object.assign(result, await read(page));

  await page.click('#copy');
  await page.waitForFunction(() => document.querySelector('#copied').textContent !== '', null, { timeout: 10000 });
  result.copied = await page.textContent('#copied');
  result.clipboard = await page.evaluate(() => navigator.clipboard.readText());

  const desktopShot = path.join(shots, `${name}-desktop.png`);
  await page.screenshot({ path: desktopShot, fullPage: true });
  result.screenshots.push(desktopShot);

  if (phone) {
    const small = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const p = await small.newPage();
    watch(p, 'phone', log);
    await p.goto(`${base}/diagnostics.html`);
    await finished(p);
    result.phone = await read(p);
    step(`phone run done: ${result.phone.progress}`);
    const top = path.join(shots, `${name}-phone.png`);
    await p.screenshot({ path: top });
    const whole = path.join(shots, `${name}-phone-full.png`);
    await p.screenshot({ path: whole, fullPage: true });
    result.screenshots.push(top, whole);
  }
  return result;
}, { args: extraArgs });
