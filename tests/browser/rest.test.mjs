// Chromium's WebRTC stack against turnd with TURN REST API credentials
// (static-auth-secret): a pair minted by `turnd credentials` relays a data channel
// relay/relay; an expired pair is refused with 401.
//
// Run: scripts/browser-tests.sh   (private network namespace, TURND_BIN=target/debug/turnd)

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { after, afterEach, before, test } from 'node:test';

import {
  assertLoopbackOnlyNetwork,
  installPageHelpers,
  launchChromium,
  resolveTurndBin,
  startTurnd,
  turnUrl,
} from './harness.mjs';

// This file's relay ports (webrtc.test.mjs uses 40000-40999; files run in parallel).
const MIN_PORT = 41000;
const MAX_PORT = 41999;
const SECRET = 'rest-browser-secret';

let turnd = null;
let browser = null;
let page = null;

before(async () => {
  assertLoopbackOnlyNetwork();
  turnd = await startTurnd({ extraArgs: ['--static-auth-secret', SECRET], minPort: MIN_PORT, maxPort: MAX_PORT });
  browser = await launchChromium();
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    if (turnd) {
      const res = await turnd.stop();
      assert.ok(
        res.graceful,
        `turnd (pid ${turnd.pid}) did not exit within 5 s of SIGTERM (or had already died): ${JSON.stringify(res)}\n` +
          `--- turnd output ---\n${turnd.logTail()}`,
      );
    }
  }
});

afterEach(async () => {
  if (page) {
    await page.close().catch(() => {});
    page = null;
  }
});

async function newPage() {
  page = await browser.context.newPage();
  await page.goto('about:blank');
  await page.evaluate(installPageHelpers);
  return page;
}

function withTurndLog(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (err) {
      err.message += `\n--- turnd (pid ${turnd?.pid}) recent output ---\n${turnd?.logTail() ?? '(not started)'}`;
      throw err;
    }
    const dead = turnd.exited();
    assert.equal(dead, null, `turnd died during the test: ${JSON.stringify(dead)}\n${turnd.logTail()}`);
  };
}

/** The TURN REST password, computed independently of turnd: base64(HMAC-SHA1(secret, username)). */
const restPassword = (secret, username) => createHmac('sha1', secret).update(username).digest('base64');

/** Runs `turnd credentials` and parses its output. */
function mintCredentials({ secret, user, ttl, url }) {
  const out = execFileSync(
    resolveTurndBin(),
    ['credentials', '--secret', secret, '--user', user, '--ttl', String(ttl), '--url', url],
    { encoding: 'utf8', timeout: 10_000 },
  );
  const field = (name) => {
    const m = new RegExp(`^${name}:\\s*(\\S+)\\s*$`, 'm').exec(out);
    assert.ok(m, `no "${name}:" line in turnd credentials output:\n${out}`);
    return m[1];
  };
  const username = field('username');
  const password = field('password');
  const jsonLine = out.split('\n').find((l) => l.trim().startsWith('{') && l.includes('iceServers'));
  assert.ok(jsonLine, `no iceServers snippet in:\n${out}`);
  const snippet = JSON.parse(jsonLine);
  return { username, password, snippet, out };
}

test('a data channel relays relay/relay with REST credentials minted by turnd credentials', { timeout: 40_000 }, withTurndLog(async (t) => {
  const url = turnUrl(turnd.port);
  const creds = mintCredentials({ secret: SECRET, user: 'alice', ttl: 3600, url });
  const [expiry, uid] = creds.username.split(':');
  assert.equal(uid, 'alice', `REST username ${creds.username}`);
  const now = Math.floor(Date.now() / 1000);
  assert.ok(Math.abs(Number(expiry) - (now + 3600)) <= 5, `expiry ${expiry} is not about now + 3600`);
  assert.equal(creds.password, restPassword(SECRET, creds.username), 'turnd and node disagree on the REST password');
  const server = creds.snippet.iceServers?.[0];
  assert.ok(server, `snippet: ${JSON.stringify(creds.snippet)}`);
  assert.equal(server.username, creds.username);
  assert.equal(server.credential, creds.password);
  assert.deepEqual([server.urls].flat(), [url], `snippet urls: ${JSON.stringify(server.urls)}`);

  await newPage();
  // The snippet goes into RTCPeerConnection as printed.
  const result = await page.evaluate(async ({ iceServers }) => {
    const { withTimeout, watch, link, negotiate, waitConnected, selectedPair, describe } = window.rtc;
    const config = { iceServers, iceTransportPolicy: 'relay' };
    const a = watch(new RTCPeerConnection(config), 'a');
    const b = watch(new RTCPeerConnection(config), 'b');
    try {
      link(a, b);
      const dcA = a.createDataChannel('rest');
      const dcBPromise = new Promise((resolve) => { b.ondatachannel = (e) => resolve(e.channel); });
      const t0 = performance.now();
      await negotiate(a, b);
      await Promise.all([waitConnected(a, 15_000), waitConnected(b, 15_000)]);
      const connectMs = performance.now() - t0;
      const dcB = await withTimeout(dcBPromise, 10_000, () => `datachannel event on b (${describe(b)})`);
      const opened = (dc) => (dc.readyState === 'open' ? Promise.resolve()
        : new Promise((resolve) => dc.addEventListener('open', resolve, { once: true })));
      await withTimeout(Promise.all([opened(dcA), opened(dcB)]), 10_000, 'both data channels open');

      const fromA = Array.from({ length: 10 }, (_, i) => `rest a->b #${i}`);
      const fromB = Array.from({ length: 10 }, (_, i) => `rest b->a #${i}`);
      const collect = (dc, n) => new Promise((resolve) => {
        const got = [];
        dc.addEventListener('message', (e) => { got.push(e.data); if (got.length === n) resolve(got); });
      });
      const gotAtB = collect(dcB, fromA.length);
      const gotAtA = collect(dcA, fromB.length);
      for (const m of fromA) dcA.send(m);
      for (const m of fromB) dcB.send(m);
      const [atB, atA] = await withTimeout(Promise.all([gotAtB, gotAtA]), 10_000, 'data channel messages both ways');
      return {
        connectMs, sentA: fromA, sentB: fromB, atA, atB,
        pairA: await selectedPair(a), pairB: await selectedPair(b),
        errorsA: a.__errors, errorsB: b.__errors,
      };
    } finally {
      a.close();
      b.close();
    }
  }, { iceServers: creds.snippet.iceServers });

  t.diagnostic(`connected in ${Math.round(result.connectMs)} ms with REST username ${creds.username}`);
  assert.deepEqual(result.atB, result.sentA, 'messages a->b');
  assert.deepEqual(result.atA, result.sentB, 'messages b->a');
  for (const [name, sel] of [['a', result.pairA], ['b', result.pairB]]) {
    assert.ok(sel, `${name}: no selected candidate pair`);
    const ctx = JSON.stringify(sel);
    assert.equal(sel.local?.candidateType, 'relay', `${name}: local candidate is not relay: ${ctx}`);
    assert.equal(sel.remote?.candidateType, 'relay', `${name}: remote candidate is not relay: ${ctx}`);
    assert.equal(sel.local.relayProtocol, 'udp', `${name}: relayProtocol: ${ctx}`);
    assert.equal(sel.local.address, '127.0.0.1', `${name}: relayed address: ${ctx}`);
    assert.ok(sel.local.port >= MIN_PORT && sel.local.port <= MAX_PORT, `${name}: relay port outside ${MIN_PORT}-${MAX_PORT}: ${ctx}`);
    assert.ok(sel.pair.bytesSent > 0 && sel.pair.bytesReceived > 0, `${name}: no bytes over the pair: ${ctx}`);
  }
  assert.deepEqual(result.errorsA, [], `a candidate errors: ${JSON.stringify(result.errorsA)}`);
  assert.deepEqual(result.errorsB, [], `b candidate errors: ${JSON.stringify(result.errorsB)}`);
  // The allocations belong to the REST username, not to the static user alice.
  // (turnd colours its log: strip ANSI escapes first.)
  // eslint-disable-next-line no-control-regex
  const log = turnd.logTail().replace(/\x1b\[[0-9;]*m/g, '');
  const mine = log.split('\n').filter((l) => l.includes('allocation created') && l.includes(`user=${creds.username}`));
  assert.ok(mine.length >= 2, `no "allocation created user=${creds.username}" lines for both peers in turnd's log`);
}));

test('expired REST credentials give icecandidateerror 401 and no relay candidate', { timeout: 30_000 }, withTurndLog(async (t) => {
  const url = turnUrl(turnd.port);
  const username = `${Math.floor(Date.now() / 1000) - 60}:alice`;
  const credential = restPassword(SECRET, username);
  await newPage();
  const result = await page.evaluate(async ({ url, username, credential }) => {
    const { withTimeout, watch, describe } = window.rtc;
    const pc = watch(new RTCPeerConnection({ iceServers: [{ urls: url, username, credential }], iceTransportPolicy: 'relay' }), 'expired');
    try {
      pc.createDataChannel('probe');
      await pc.setLocalDescription(await pc.createOffer());
      await withTimeout(pc.__gathered, 15_000, () => `ICE gathering to complete (${describe(pc)})`);
      return { candidates: pc.__candidates, errors: pc.__errors };
    } finally {
      pc.close();
    }
  }, { url, username, credential });
  const ctx = JSON.stringify(result);
  t.diagnostic(`candidate errors: ${JSON.stringify(result.errors)}`);
  assert.ok(!result.candidates.some((c) => c.type === 'relay'), `relay candidate with expired credentials: ${ctx}`);
  assert.ok(result.errors.some((e) => e.errorCode === 401), `no icecandidateerror 401: ${ctx}`);
  // eslint-disable-next-line no-control-regex
  const log = turnd.logTail().replace(/\x1b\[[0-9;]*m/g, '');
  assert.ok(log.includes('rest credentials expired'), 'turnd did not log the expiry as the reason');
}));
