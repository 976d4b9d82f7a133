// The node dashboard on a real node: on the admin listener at desktop size
// (no key), and on the public listener at phone size, where it asks for the
// API key. The Go test runs `parley loadtest` when asked; both pages must
// show live, non-zero figures while it runs. Then the node drains and stops,
// and the admin page says so in sentences.
//
// Besides lib.mjs's variables: PARLEY_ADMIN, the node's admin listener, and
// PARLEY_API_KEY, its API key. PARLEY_URL is its public listener.
// PARLEY_NOKEY_URL is the public listener of a node without an API key,
// which does not serve its figures there.
import path from 'node:path';
import { control, env, run, step, until, watch } from './lib.mjs';

const admin = env('PARLEY_ADMIN');
const base = env('PARLEY_URL');
const apiKey = env('PARLEY_API_KEY');
const noKeyBase = env('PARLEY_NOKEY_URL');
const shots = env('PARLEY_SCREENSHOT_DIR');
const wait = { timeout: 30000 };

// figures reads what a dashboard shows: each output's raw value, the state
// pill, the notice, and how the charts are drawn.
function figures(page) {
  return page.evaluate(() => {
    const num = (id) => {
      const v = document.getElementById(id).dataset.value;
      return v === '' || v === undefined ? null : Number(v);
    };
    const canvas = document.getElementById('c-messages');
    const notice = document.getElementById('notice');
    return {
      state: document.getElementById('state').dataset.state,
      notice: notice.hidden ? '' : notice.textContent,
      connections: num('v-connections'),
      websocket: num('v-ws'),
      outRate: num('v-out-rate'),
      inRate: num('v-in-rate'),
      outTotal: num('v-out-total'),
      p50: num('v-p50'),
      p99: num('v-p99'),
      rooms: num('v-rooms'),
      allocations: num('v-allocations'),
      relayTotal: num('v-relay-total'),
      chartPoints: Number(canvas.dataset.points || 0),
      canvasWidth: canvas.width,
      canvasCSSWidth: canvas.clientWidth,
      pixelRatio: window.devicePixelRatio,
      overflow: document.documentElement.scrollWidth > window.innerWidth,
      nodeLine: document.getElementById('node-line').textContent,
    };
  });
}

function busy(f) {
  return f.state === 'live' && f.connections > 0 && f.outRate > 0 && f.p50 > 0 && f.p99 > 0 && f.chartPoints >= 4;
}

run(async (browser, log) => {
  const desktopContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const desktop = await desktopContext.newPage();
  watch(desktop, 'admin dashboard', log);
  await desktop.goto(`${admin}/dashboard`);
  await desktop.locator('#state[data-state="live"]').waitFor(wait);
  const idle = await figures(desktop);
  step(`admin dashboard live: ${idle.nodeLine}, ${idle.connections} connections`);

  // The public listener: a phone, at three device pixels to the CSS pixel.
  const phoneContext = await browser.newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 3,
    isMobile: true,
    hasTouch: true,
  });
  const phone = await phoneContext.newPage();
  watch(phone, 'public dashboard', log);
  await phone.goto(`${base}/dashboard.html`);
  await phone.locator('#key-form:not([hidden])').waitFor(wait);
  const keyPrompt = await phone.locator('#key-why').textContent();
  const lockedState = await phone.locator('#state').getAttribute('data-state');
  await phone.screenshot({ path: path.join(shots, 'dashboard-key-phone.png') });
  step('the public dashboard asks for the key');

  await phone.fill('#key-form input[name="key"]', 'not-the-key');
  await phone.click('#key-form button[type="submit"]');
  await phone.locator('#key-why', { hasText: 'refused that key' }).waitFor(wait);
  const wrongKey = await phone.locator('#key-why').textContent();
  await phone.fill('#key-form input[name="key"]', apiKey);
  await phone.click('#key-form button[type="submit"]');
  await phone.locator('#state[data-state="live"]').waitFor(wait);
  const stored = await phone.evaluate(() => sessionStorage.getItem('parley.dashboard.apiKey'));
  step('the public dashboard is live with the key');

  // A node without an API key sends the page to its admin listener.
  const elsewhere = await phoneContext.newPage();
  watch(elsewhere, 'dashboard of a node without a key', log);
  await elsewhere.goto(`${noKeyBase}/dashboard.html`);
  await elsewhere.locator('#notice:not([hidden])').waitFor(wait);
  const noKey = await figures(elsewhere);
  noKey.keyFormShown = await elsewhere.locator('#key-form').isVisible();
  await elsewhere.close();
  step('a node without a key: the page points to the admin listener');

  await control('loadtest');
  step('loadtest started');
  let desktopBusy;
  let phoneBusy;
  await until('both dashboards show the load', async () => {
    desktopBusy = await figures(desktop);
    phoneBusy = await figures(phone);
    return busy(desktopBusy) && busy(phoneBusy) && desktopBusy.relayTotal > 0;
  }, 45000);
  // A few more samples, so the screenshots show the charts moving.
  await until('the charts hold eight samples', async () => (await figures(desktop)).chartPoints >= 8 && (await figures(phone)).chartPoints >= 8, 30000);
  step(`under load: ${desktopBusy.connections} connections, ${desktopBusy.outRate} messages out/s, p50 ${desktopBusy.p50} ms, p99 ${desktopBusy.p99} ms`);
  await desktop.screenshot({ path: path.join(shots, 'dashboard-desktop.png'), fullPage: true });
  await phone.screenshot({ path: path.join(shots, 'dashboard-phone.png') });

  // The tab hidden: no more requests until it shows again.
  const requests = [];
  phone.on('request', (r) => {
    if (new URL(r.url()).pathname === '/v1/stats') requests.push(Date.now());
  });
  await phone.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  const pausedState = await phone.locator('#state').getAttribute('data-state');
  const before = requests.length;
  await phone.waitForTimeout(2500);
  const whileHidden = requests.length - before;
  await phone.evaluate(() => {
    delete document.hidden;
    delete document.visibilityState;
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await phone.locator('#state[data-state="live"]').waitFor(wait);
  step(`hidden for 2.5 s: ${whileHidden} requests`);

  const load = await control('loadtest-wait');
  step(`loadtest done: ${JSON.stringify(load)}`);

  // The node drains with clients on it, then stops.
  await control('drain');
  await desktop.locator('#state[data-state="draining"]').waitFor(wait);
  const draining = await figures(desktop);
  await desktop.screenshot({ path: path.join(shots, 'dashboard-draining.png') });
  step('draining shown');
  await desktop.locator('#state[data-state="down"]').waitFor(wait);
  const gone = await figures(desktop);
  await desktop.screenshot({ path: path.join(shots, 'dashboard-unreachable.png') });
  step('unreachable shown');

  return {
    idle,
    keyPrompt,
    lockedState,
    wrongKey,
    keyStored: stored === apiKey,
    noKey,
    desktop: desktopBusy,
    phone: phoneBusy,
    pausedState,
    whileHidden,
    draining,
    gone,
    shots: ['dashboard-desktop.png', 'dashboard-phone.png', 'dashboard-key-phone.png', 'dashboard-draining.png', 'dashboard-unreachable.png'],
  };
});
