// The admin pages in Chromium: they ask for the admin token (a password field,
// kept in sessionStorage, never in the URL); the status page shows live counts
// (and an allocation a WebRTC connection holds in another tab), and the self-test page
// gathers srflx and relay candidates against turnd with REST credentials it
// mints itself (POST /api/credentials, --static-auth-secret).
//
// Run: scripts/browser-tests.sh   (private network namespace, TURND_BIN=target/debug/turnd)

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  browserSuite,
  launchChromium,
  PASSWORD,
  RELAY_PORTS,
  turnUrl,
  USER,
} from './harness.mjs';

const [MIN_PORT, MAX_PORT] = RELAY_PORTS.admin;
const TOKEN = 'browser-admin-token-7f3a';
const SECRET = 'browser-admin-rest-secret';

let adminUrl = null;

const s = browserSuite({
  ports: 'admin',
  turndOptions: () => ({
    extraArgs: ['--admin-token', TOKEN, '--admin-listen', '127.0.0.1:0', '--static-auth-secret', SECRET],
  }),
  turndStarted: async () => { adminUrl = await s.turnd.waitForAdmin(); },
  launchBrowser: () => launchVisitorChromium(),
});

/**
 * Chromium as a visitor of the self-test page is: CHROMIUM_ARGS without the
 * fake media UI. --use-fake-ui-for-media-stream grants camera/microphone
 * permission, and with that permission Chromium exposes host candidates
 * (mDNS is off here); on loopback, with no NAT, the srflx candidate then
 * equals the host candidate and Chromium drops it as redundant, so the page
 * would say "srflx: NO" although STUN answered. A visitor who granted no media
 * permission gets no host candidates and sees the srflx one.
 */
function launchVisitorChromium() {
  return launchChromium({ withoutArgs: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'] });
}

/** Bounded fetch from node (inside the namespace too). */
async function get(url, init = {}) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
}

/** The status page's value cell for key `k` (its JSON text), or null. */
async function statusValue(page, k) {
  return page.evaluate((k) => {
    const row = document.getElementById(`status-${k}`);
    return row ? row.children[1]?.textContent ?? null : null;
  }, k);
}

/** Waits until the page refreshed after `since` (its data-refreshed timestamp). */
async function waitRefreshed(page, since, timeout = 10_000) {
  await page.waitForFunction((since) => Number(document.body.dataset.refreshed || 0) > since, since, { timeout });
  return page.evaluate(() => Number(document.body.dataset.refreshed));
}

/**
 * Opens `path` of the admin listener in a new page and signs in the way a
 * person does: the page asks for the token in a password field (the token
 * is never put in the URL).
 */
async function openSignedIn(path) {
  const page = await s.newPage({ helpers: false });
  await page.goto(`${adminUrl}${path}`);
  await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 });
  await page.fill('#token', TOKEN);
  await page.click('#login-button');
  return page;
}

test('the admin API wants the token, /healthz and the pages do not', { timeout: 20_000 }, s.withTurndLog(async () => {
  assert.match(adminUrl, /^http:\/\/127\.0\.0\.1:\d+\/$/);
  assert.equal((await get(`${adminUrl}healthz`)).status, 200);
  // The pages hold no data: served to anyone, they ask for the token.
  assert.equal((await get(adminUrl)).status, 200);
  assert.equal((await get(`${adminUrl}selftest`)).status, 200);
  assert.equal((await get(`${adminUrl}api/status`)).status, 401);
  // A token in the query string is refused (browser history, proxy logs).
  assert.equal((await get(`${adminUrl}api/status?token=wrong`)).status, 401);
  assert.equal((await get(`${adminUrl}api/status?token=${TOKEN}`)).status, 401);
  assert.equal((await get(`${adminUrl}api/status`, { headers: { Authorization: `Bearer ${TOKEN}` } })).status, 200);
}));

test('a wrong token on the status page asks again and keeps nothing', { timeout: 20_000 }, s.withTurndLog(async () => {
  const page = await s.newPage({ helpers: false });
  await page.goto(adminUrl);
  await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 });
  await page.fill('#token', 'not-the-admin-token');
  await page.click('#login-button');
  await page.waitForFunction(() => document.getElementById('login-error').textContent === 'wrong token', null, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('turnd-admin-token')), null);
  assert.ok(!page.url().includes('token'), page.url());
}));

test('the status page shows live counts and a WebRTC allocation', { timeout: 60_000 }, s.withTurndLog(async (t) => {
  const status = await openSignedIn('');
  assert.ok(!status.url().includes(TOKEN), status.url());
  let stamp = await waitRefreshed(status, 0);
  assert.ok(await status.$('#status-allocations'), 'no #status-allocations row');
  assert.equal(await statusValue(status, 'draining'), 'false');
  assert.equal(await statusValue(status, 'listening_port'), String(s.turnd.port));
  const createdBefore = Number(await statusValue(status, 'allocations_created'));
  const liveBefore = Number(await statusValue(status, 'allocations'));

  // Another tab holds a relay allocation through a TURN-only RTCPeerConnection.
  const rtc = await s.newPage();
  const relay = await rtc.evaluate(async ({ url, username, credential }) => {
    const { withTimeout, watch, describe } = window.rtc;
    const pc = watch(new RTCPeerConnection({ iceServers: [{ urls: url, username, credential }], iceTransportPolicy: 'relay' }), 'held');
    window.held = pc; // kept open: the allocation lives while the page does
    pc.createDataChannel('hold');
    await pc.setLocalDescription(await pc.createOffer());
    await withTimeout(pc.__gathered, 15_000, () => `ICE gathering (${describe(pc)})`);
    return { candidates: pc.__candidates, errors: pc.__errors };
  }, { url: turnUrl(s.turnd.port), username: USER, credential: PASSWORD });
  const relayCands = relay.candidates.filter((c) => c.type === 'relay');
  assert.ok(relayCands.length > 0, `no relay candidate: ${JSON.stringify(relay)}`);
  const relayAddr = `${relayCands[0].address}:${relayCands[0].port}`;

  // The status page picks it up on its own (it polls every 2 s).
  await status.waitForFunction(
    ({ before, relayAddr }) => {
      const v = (k) => Number(document.getElementById(`status-${k}`)?.children[1]?.textContent);
      const rows = [...document.querySelectorAll('#allocs tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent));
      return v('allocations') > before && rows.some((r) => r.includes(relayAddr));
    },
    { before: liveBefore, relayAddr },
    { timeout: 10_000 },
  );
  stamp = await waitRefreshed(status, stamp);
  const rows = await status.$$eval('#allocs tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const mine = rows.find((r) => r.includes(relayAddr));
  assert.ok(mine, `allocation ${relayAddr} not in the table: ${JSON.stringify(rows)}`);
  // columns: id, user, client, relay, transport, age, bytes to peer, bytes to client
  assert.equal(mine[1], USER, JSON.stringify(mine));
  assert.match(mine[2], /^127\.0\.0\.1:\d+$/, JSON.stringify(mine));
  assert.equal(mine[4], 'udp', JSON.stringify(mine));
  assert.ok(Number(await statusValue(status, 'allocations_created')) > createdBefore, 'allocations_created did not move');
  t.diagnostic(`status page row: ${JSON.stringify(mine)}`);

  // The same through the API the page uses.
  const api = await (await get(`${adminUrl}api/allocations`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  assert.ok(api.some((a) => a.relay === relayAddr && a.user === USER), JSON.stringify(api));

  await rtc.evaluate(() => window.held.close());
}));

test('the self-test page gathers srflx and relay with credentials it mints', { timeout: 60_000 }, s.withTurndLog(async (t) => {
  const page = await s.newPage({ helpers: false });
  const credentialCalls = [];
  page.on('request', (r) => { if (r.url().includes('/api/credentials')) credentialCalls.push(r.method()); });
  await page.goto(`${adminUrl}selftest`);
  await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 });
  await page.fill('#token', TOKEN);
  await page.click('#login-button');
  await page.waitForFunction(() => document.body.dataset.ready === '1', null, { timeout: 10_000 });
  assert.deepEqual(credentialCalls, ['POST'], 'the page mints credentials with POST /api/credentials');
  const filled = await page.evaluate(() => ({
    host: document.getElementById('host').value,
    port: document.getElementById('port').value,
    user: document.getElementById('user').value,
    password: document.getElementById('password').value,
  }));
  assert.equal(filled.host, '127.0.0.1');
  assert.equal(filled.port, String(s.turnd.port));
  assert.match(filled.user, /^\d+:selftest$/, `REST username expected: ${JSON.stringify(filled)}`);
  assert.ok(filled.password.length > 0);

  await page.click('#run');
  await page.waitForFunction(() => document.body.dataset.done === '1', null, { timeout: 15_000 });
  const result = await page.evaluate(() => ({
    srflx: document.body.dataset.srflx,
    relay: document.body.dataset.relay,
    verdict: document.getElementById('verdict').textContent,
    errors: document.getElementById('errors').textContent,
    rows: [...document.querySelectorAll('#cands tr')].map((tr) => ({
      cls: tr.className, cells: [...tr.children].map((td) => td.textContent),
    })),
  }));
  const ctx = JSON.stringify(result);
  t.diagnostic(`self-test: ${result.verdict}; ${result.rows.length} candidates`);
  assert.equal(result.srflx, 'true', `srflx: ${ctx}`);
  assert.equal(result.relay, 'true', `relay: ${ctx}`);
  const relayRows = result.rows.filter((r) => r.cls.split(' ').includes('cand-relay'));
  assert.ok(relayRows.length > 0, `no .cand-relay row: ${ctx}`);
  assert.ok(await page.$('tr.cand-relay'), 'no tr.cand-relay element');
  assert.ok(await page.$('tr.cand-srflx'), 'no tr.cand-srflx element');
  // columns: type, protocol, address, port, url
  const [, proto, addr, port] = relayRows[0].cells;
  assert.equal(proto, 'udp', ctx);
  assert.equal(addr, '127.0.0.1', ctx);
  assert.ok(Number(port) >= MIN_PORT && Number(port) <= MAX_PORT, `relay port ${port} outside ${MIN_PORT}-${MAX_PORT}`);
  assert.equal(result.errors.trim(), '', `candidate errors: ${ctx}`);
  // The relay was allocated with the minted REST username.
  // eslint-disable-next-line no-control-regex
  const log = s.turnd.logTail().replace(/\x1b\[[0-9;]*m/g, '');
  assert.ok(
    log.split('\n').some((l) => l.includes('allocation created') && l.includes(`user=${filled.user}`)),
    `no "allocation created user=${filled.user}" in turnd's log`,
  );
}));
