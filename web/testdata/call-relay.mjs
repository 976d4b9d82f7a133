// The call page in two browser contexts with the fake camera, "Relay only"
// on (from ?relay=1): each shows a relay pair toward the other, chat text
// crosses the data channel both ways, and each decodes the other's video.
// Then a third context that may not use the camera: the page says so, joins
// with data only when asked, and is in the call. Screenshots of both pages
// on a desktop, of a call on a phone, and of the refused camera.
import { env, randomRoom, step } from './lib.mjs';
import {
  chat,
  fitsWidth,
  framesGrow,
  join,
  newCallPage,
  notice,
  runWithMedia,
  say,
  shoot,
  tile,
  tiles,
  waitChat,
  waitPair,
  waitStatus,
  wait,
} from './call-lib.mjs';

const base = env('PARLEY_URL');

runWithMedia(async (browser, log) => {
  const name = randomRoom('call');
  const url = `${base}/call.html?call=${name}&relay=1`;
  const screenshots = [];

  const a = await newCallPage(browser, log, 'A', url);
  const b = await newCallPage(browser, log, 'B', url);
  const form = await a.evaluate(() => {
    const f = document.querySelector('#join');
    return { call: f.elements.call.value, relay: f.elements.relay.checked, media: f.elements.media.value };
  });
  const sessionA = await join(a);
  const sessionB = await join(b);

  // Each page shows the other over our TURN relay, with a round-trip time.
  const pairs = {
    a: await waitPair(a, sessionB, 'relay'),
    b: await waitPair(b, sessionA, 'relay'),
  };
  step(`pairs: A sees ${pairs.a.pill}, B sees ${pairs.b.pill}`);

  await say(a, 'Hello from A');
  await waitChat(b, 'Hello from A');
  await say(b, 'Hi A, B here');
  await waitChat(a, 'Hi A, B here');
  step('chat crossed both ways');

  // Frames decoded keep growing on each side.
  const frames = {
    a: await framesGrow(a, sessionB, 30),
    b: await framesGrow(b, sessionA, 30),
  };
  step(`frames: A decoded ${frames.a.from}->${frames.a.to}, B ${frames.b.from}->${frames.b.to}`);
  const remoteVideoWidth = { a: (await tile(a, sessionB)).videoWidth, b: (await tile(b, sessionA)).videoWidth };

  screenshots.push(await shoot(a, 'call-desktop-a.png'));
  screenshots.push(await shoot(b, 'call-desktop-b.png'));

  // A phone: the same call on a 390x844 screen.
  await b.setViewportSize({ width: 390, height: 844 });
  await framesGrow(b, sessionA, 5);
  const phoneFits = await fitsWidth(b);
  screenshots.push(await shoot(b, 'call-phone.png'));
  screenshots.push(await shoot(b, 'call-phone-full.png', { fullPage: true }));

  // A person who does not allow the camera: a sentence, and a way in.
  const c = await newCallPage(browser, log, 'C', url, { camera: false });
  await c.click('#join-button');
  await c.locator('#notice:not([hidden])').waitFor(wait);
  const denied = {
    notice: await notice(c),
    action: await c.$eval('#notice-action', (el) => (el.hidden ? '' : el.textContent)),
    status: await c.$eval('#status', (el) => el.dataset.state),
  };
  step(`C: "${denied.notice}"`);
  screenshots.push(await shoot(c, 'call-camera-denied.png'));
  await c.click('#notice-action');
  await waitStatus(c, 'open');
  const sessionC = await c.locator('.tile[data-local]').getAttribute('data-session', wait);
  const dataOnly = {
    media: await c.evaluate(() => document.querySelector('#join').elements.media.value),
    noticeAfter: await notice(c),
    sees: [await waitPair(c, sessionA, 'relay'), await waitPair(c, sessionB, 'relay')],
    seenByA: await waitPair(a, sessionC, 'relay'),
  };
  await say(a, 'Welcome, C');
  await waitChat(c, 'Welcome, C');
  await say(c, 'Thanks, data only here');
  await waitChat(a, 'Thanks, data only here');
  await waitChat(b, 'Thanks, data only here');
  step('C joined with data only and chats');

  return {
    call: name,
    form,
    sessions: { a: sessionA, b: sessionB, c: sessionC },
    pairs,
    frames,
    remoteVideoWidth,
    phoneFits,
    denied,
    dataOnly,
    tiles: { a: await tiles(a), b: await tiles(b), c: await tiles(c) },
    chat: { a: await chat(a), b: await chat(b), c: await chat(c) },
    screenshots,
  };
});
