// Shared helpers of the browser tests. They are run by browser_test.go with
// the server's addresses in the environment:
//
//   PARLEY_URL            the web app, as a browser reaches it (through the test's proxy)
//   PARLEY_DIRECT         the node itself, for the HTTP API while the proxy is cut
//   PARLEY_CONTROL        the Go test's control endpoint: POST /cut, /restore, /drain
//                         (POST /token in the token expiry test)
//   PARLEY_SCREENSHOT_DIR where screenshots go
//   PARLEY_CHROMIUM       the browser (default /usr/bin/chromium)
//
// A script prints one JSON line with what it saw on stdout and exits 0, or
// prints why it failed on stderr and exits 1. Progress goes to stderr.
import { chromium } from 'playwright-core';

const started = Date.now();

export function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`${name} is not set`);
  return v;
}

export function step(what) {
  process.stderr.write(`[${String(Date.now() - started).padStart(5)} ms] ${what}\n`);
}

// until polls cond (which may be async) until it holds.
export async function until(what, cond, timeout = 20000) {
  const deadline = Date.now() + timeout;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

// control asks the Go test to act: cut, restore or drain the network, or
// (in the token expiry test) mint a token.
export async function control(action) {
  const res = await fetch(`${env('PARLEY_CONTROL')}/${action}`, { method: 'POST' });
  const body = await res.text();
  if (!res.ok) throw new Error(`control ${action}: ${res.status} ${body}`);
  return body ? JSON.parse(body) : {};
}

// publish sends one message through the HTTP API from outside the browser,
// with token (a JWT) if the node checks them.
export async function publish(base, room, data, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`${base}/v1/rooms/${encodeURIComponent(room)}/messages`, {
    method: 'POST',
    headers,
    body: JSON.stringify(data),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`publish to ${room}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

export function randomRoom(prefix) {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}`;
}

// watch records what a page reports that a test should know about.
export function watch(page, name, log) {
  page.on('pageerror', (err) => log.pageErrors.push(`${name}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') log.consoleErrors.push(`${name}: ${msg.text()}`);
  });
}

// run launches Debian's Chromium, runs fn(browser, log), prints its result,
// and always closes the browser. options.args are Chromium flags beside the
// usual ones; options.onFailure, if given, is awaited after a failure, before
// the browser closes, to log where the pages stood.
export async function run(fn, options = {}) {
  const log = { pageErrors: [], consoleErrors: [] };
  let browser;
  const deadline = setTimeout(() => {
    process.stderr.write('browser test: overall timeout\n');
    browser?.close().finally(() => process.exit(1));
  }, Number(process.env.PARLEY_TIMEOUT_MS || 100000));
  let code = 0;
  try {
    browser = await chromium.launch({
      executablePath: env('PARLEY_CHROMIUM', '/usr/bin/chromium'),
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        ...(options.args ?? []),
      ],
    });
    step(`chromium ${browser.version()} ${(options.args ?? []).join(' ')}`.trimEnd());
    const result = await fn(browser, log);
    process.stdout.write(JSON.stringify({ ...result, ...log }) + '\n');
  } catch (err) {
    process.stderr.write(`browser test failed: ${err?.stack ?? err}\n`);
    await options.onFailure?.().catch(() => {});
    if (log.pageErrors.length) process.stderr.write(`page errors: ${log.pageErrors.join('; ')}\n`);
    code = 1;
  } finally {
    clearTimeout(deadline);
    await browser?.close().catch(() => {});
  }
  process.exit(code);
}
