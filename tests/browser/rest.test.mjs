// Chromium's WebRTC stack against turnd with TURN REST API credentials
// (static-auth-secret): a pair minted by `turnd credentials` relays a data channel
// relay/relay; an expired pair is refused with 401.
//
// Run: scripts/browser-tests.sh   (private network namespace, TURND_BIN=target/debug/turnd)

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { test } from 'node:test';

import {
  RELAY_PORTS,
  browserSuite,
  resolveTurndBin,
  turnUrl,
} from './harness.mjs';

const [MIN_PORT, MAX_PORT] = RELAY_PORTS.rest;
const SECRET = 'rest-browser-secret';

const s = browserSuite({ ports: 'rest', turndOptions: () => ({ extraArgs: ['--static-auth-secret', SECRET] }) });

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

test('a data channel relays relay/relay with REST credentials minted by turnd credentials', { timeout: 40_000 }, s.withTurndLog(async (t) => {
  const url = turnUrl(s.turnd.port);
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

  await s.newPage();
  // The snippet goes into RTCPeerConnection as printed.
  const result = await s.page.evaluate(async ({ iceServers }) => {
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
  const log = s.turnd.logTail().replace(/\x1b\[[0-9;]*m/g, '');
  const mine = log.split('\n').filter((l) => l.includes('allocation created') && l.includes(`user=${creds.username}`));
  assert.ok(mine.length >= 2, `no "allocation created user=${creds.username}" lines for both peers in turnd's log`);
}));

test('expired REST credentials give icecandidateerror 401 and no relay candidate', { timeout: 30_000 }, s.withTurndLog(async (t) => {
  const url = turnUrl(s.turnd.port);
  const username = `${Math.floor(Date.now() / 1000) - 60}:alice`;
  const credential = restPassword(SECRET, username);
  await s.newPage();
  const result = await s.page.evaluate(async ({ url, username, credential }) => {
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
  const log = s.turnd.logTail().replace(/\x1b\[[0-9;]*m/g, '');
  assert.ok(log.includes('rest credentials expired'), 'turnd did not log the expiry as the reason');
}));
