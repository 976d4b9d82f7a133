// The front page: every link on it leads to a page that loads without an
// error, fits a phone's screen and links every other page; the front page
// reads at desktop and phone sizes.
import path from 'node:path';
import { env, run, step, watch } from './lib.mjs';

const base = env('PARLEY_URL');
const shots = env('PARLEY_SCREENSHOT_DIR');

run(async (browser, log) => {
  const sizes = [
    ['desktop', { width: 1200, height: 900 }],
    ['phone', { width: 390, height: 844 }],
  ];
  const links = new Set();
  for (const [name, viewport] of sizes) {
    const context = await browser.newContext({ viewport, deviceScaleFactor: name === 'phone' ? 2 : 1 });
    const page = await context.newPage();
    watch(page, `index-${name}`, log);
    await page.goto(`${base}/`);
    for (const href of await page.$$eval('a[href]', (as) => as.map((a) => a.href))) {
      const u = new URL(href);
      if (u.origin === new URL(base).origin && !u.hash) links.add(u.pathname);
    }
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) throw new Error(`the front page is ${overflow}px wider than a ${viewport.width}px screen`);
    await page.screenshot({ path: path.join(shots, `index-${name}.png`), fullPage: true });
    step(`index at ${name} size`);
    await context.close();
  }
  // Every page it links, on a phone: it loads, fits the screen, and its
  // navigation leads to every other page.
  const status = {};
  const nav = {};
  const overflow = {};
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  for (const p of [...links].sort()) {
    const page = await context.newPage();
    watch(page, p, log);
    const res = await page.goto(`${base}${p}`, { waitUntil: 'networkidle' });
    status[p] = res.status();
    nav[p] = await page.$$eval('header nav a[href]', (as) => as.map((a) => new URL(a.href).pathname));
    overflow[p] = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.close();
  }
  step(`${links.size} links`);
  return { status, nav, overflow };
});
