// Chromium's WebRTC stack against turnd's TCP and TLS listeners: a data channel
// relayed relay/relay through `turn:...?transport=tcp` (relayProtocol 'tcp') and
// through `turns:...?transport=tcp` (relayProtocol 'tls') with a certificate made
// here and trusted by its SPKI hash (--ignore-certificate-errors-spki-list).
//
// Run: scripts/browser-tests.sh   (private network namespace, TURND_BIN=target/debug/turnd)

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate, createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, afterEach, before, test } from 'node:test';

import {
  PASSWORD,
  USER,
  assertLoopbackOnlyNetwork,
  installPageHelpers,
  launchChromium,
  retryDataChannelStall,
  startTurnd,
} from './harness.mjs';

// This file's relay ports (webrtc.test.mjs uses 40000-40999, rest.test.mjs
// 41000-41999; files run in parallel).
const MIN_PORT = 23920;
const MAX_PORT = 23999;

let turnd = null;
let browser = null;
let page = null;
let certDir = null;
let spki = null;

/** A self-signed certificate for 127.0.0.1/localhost (openssl), and its SPKI sha256 (base64). */
function makeCert() {
  const openssl = ['/usr/bin/openssl', '/usr/local/bin/openssl', '/bin/openssl'].find((p) => existsSync(p));
  if (!openssl) throw new Error('openssl not found: this test makes its certificate with `openssl req -x509` (apt-get install openssl)');
  const dir = mkdtempSync(path.join(tmpdir(), 'turnd-browser-cert-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync(openssl, [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
  ], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
  // base64(sha256(DER SubjectPublicKeyInfo)): what openssl x509 -pubkey | openssl pkey -pubin
  // -outform der | openssl dgst -sha256 -binary | base64 prints.
  const der = new X509Certificate(readFileSync(cert)).publicKey.export({ type: 'spki', format: 'der' });
  const hash = createHash('sha256').update(der).digest('base64');
  return { dir, cert, key, spki: hash };
}

before(async () => {
  assertLoopbackOnlyNetwork();
  const c = makeCert();
  certDir = c.dir;
  spki = c.spki;
  turnd = await startTurnd({
    extraArgs: ['--cert', c.cert, '--pkey', c.key, '--tls-listening-port', '0'],
    minPort: MIN_PORT,
    maxPort: MAX_PORT,
    listeners: ['udp', 'tcp', 'tls'],
  });
  browser = await launchChromium({ extraArgs: [`--ignore-certificate-errors-spki-list=${spki}`] });
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    try {
      if (turnd) {
        const res = await turnd.stop();
        assert.ok(
          res.graceful,
          `turnd (pid ${turnd.pid}) did not exit within 5 s of SIGTERM (or had already died): ${JSON.stringify(res)}\n` +
            `--- turnd output ---\n${turnd.logTail()}`,
        );
      }
    } finally {
      if (certDir) rmSync(certDir, { recursive: true, force: true });
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

/** Run a test body; on failure append turnd's recent output and check it is still alive. */
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

/** Two relay-only peer connections through `url`; a data channel both ways; selected pairs. */
async function relayDataChannel(url) {
  return page.evaluate(async ({ url, username, credential }) => {
    const { withTimeout, watch, link, negotiate, waitConnected, selectedPair, describe } = window.rtc;
    const config = { iceServers: [{ urls: url, username, credential }], iceTransportPolicy: 'relay' };
    const a = watch(new RTCPeerConnection(config), 'a');
    const b = watch(new RTCPeerConnection(config), 'b');
    try {
      link(a, b);
      const dcA = a.createDataChannel('chat');
      const dcBPromise = new Promise((resolve) => { b.ondatachannel = (e) => resolve(e.channel); });
      const t0 = performance.now();
      await negotiate(a, b);
      await Promise.all([waitConnected(a, 20_000), waitConnected(b, 20_000)]);
      const connectMs = performance.now() - t0;
      const dcB = await withTimeout(dcBPromise, 10_000, () => `datachannel event on b (${describe(b)})`);
      const opened = (dc) => (dc.readyState === 'open' ? Promise.resolve()
        : new Promise((resolve) => dc.addEventListener('open', resolve, { once: true })));
      await withTimeout(Promise.all([opened(dcA), opened(dcB)]), 10_000, 'both data channels open');

      const big = 'y'.repeat(16 * 1024);
      const fromA = [...Array.from({ length: 30 }, (_, i) => `a->b #${i}`), big + 'A'];
      const fromB = [...Array.from({ length: 30 }, (_, i) => `b->a #${i}`), big + 'B'];
      const collect = (dc, n) => new Promise((resolve) => {
        const got = [];
        dc.addEventListener('message', (e) => { got.push(e.data); if (got.length === n) resolve(got); });
      });
      const gotAtB = collect(dcB, fromA.length);
      const gotAtA = collect(dcA, fromB.length);
      for (const m of fromA) dcA.send(m);
      for (const m of fromB) dcB.send(m);
      const [atB, atA] = await withTimeout(Promise.all([gotAtB, gotAtA]), 15_000, 'data channel messages both ways');
      return {
        connectMs,
        sentA: fromA, sentB: fromB, atA, atB,
        pairA: await selectedPair(a), pairB: await selectedPair(b),
        candidatesA: a.__candidates, candidatesB: b.__candidates,
        errorsA: a.__errors, errorsB: b.__errors,
      };
    } finally {
      a.close();
      b.close();
    }
  }, { url, username: USER, credential: PASSWORD });
}

function checkRelayed(result, relayProtocol) {
  assert.deepEqual(result.atB, result.sentA, 'messages a->b did not arrive intact and in order');
  assert.deepEqual(result.atA, result.sentB, 'messages b->a did not arrive intact and in order');
  for (const [name, sel] of [['a', result.pairA], ['b', result.pairB]]) {
    assert.ok(sel, `${name}: no selected candidate pair in getStats`);
    const ctx = JSON.stringify(sel);
    assert.equal(sel.local?.candidateType, 'relay', `${name}: local candidate is not relay: ${ctx}`);
    assert.equal(sel.remote?.candidateType, 'relay', `${name}: remote candidate is not relay: ${ctx}`);
    assert.equal(sel.local.relayProtocol, relayProtocol, `${name}: local relayProtocol is not ${relayProtocol}: ${ctx}`);
    // The relayed address itself is UDP (REQUESTED-TRANSPORT UDP); only the client-server leg is TCP/TLS.
    assert.equal(sel.local.protocol, 'udp', `${name}: relayed candidate protocol is not udp: ${ctx}`);
    assert.equal(sel.local.address, '127.0.0.1', `${name}: relayed address is not 127.0.0.1: ${ctx}`);
    assert.ok(sel.local.port >= MIN_PORT && sel.local.port <= MAX_PORT,
      `${name}: relayed port ${sel.local.port} outside ${MIN_PORT}-${MAX_PORT}: ${ctx}`);
    // Chromium reports the selected pair as 'in-progress' while a consent
    // check on it is outstanding; it has succeeded before (responses came back).
    assert.ok(sel.pair.state === 'succeeded' || (sel.pair.state === 'in-progress' && sel.pair.responsesReceived > 0),
      `${name}: selected pair not succeeded: ${ctx}`);
    assert.ok(sel.pair.nominated, `${name}: selected pair not nominated: ${ctx}`);
    assert.ok(sel.pair.bytesSent > 0 && sel.pair.bytesReceived > 0, `${name}: no bytes over the selected pair: ${ctx}`);
  }
  assert.equal(result.pairA.remote.port, result.pairB.local.port, 'a and b disagree on b\'s relayed address');
  assert.equal(result.pairB.remote.port, result.pairA.local.port, 'b and a disagree on a\'s relayed address');
  assert.deepEqual(result.errorsA, [], `a reported candidate errors: ${JSON.stringify(result.errorsA)}`);
  assert.deepEqual(result.errorsB, [], `b reported candidate errors: ${JSON.stringify(result.errorsB)}`);
}

test('turnd printed tcp and tls listeners', () => {
  assert.ok(turnd.tcpPort > 0, `no tcp listener: ${turnd.logTail()}`);
  assert.ok(turnd.tlsPort > 0, `no tls listener: ${turnd.logTail()}`);
  assert.equal(turnd.tcpPort, turnd.port, 'TCP shares the UDP port');
  assert.notEqual(turnd.tlsPort, turnd.tcpPort);
  assert.match(spki, /^[A-Za-z0-9+/]{43}=$/);
});

test('data channel relay/relay through turn:...?transport=tcp (relayProtocol tcp)', { timeout: 60_000 }, withTurndLog(async (t) => {
  await newPage();
  const url = `turn:127.0.0.1:${turnd.tcpPort}?transport=tcp`;
  const result = await retryDataChannelStall(t, () => relayDataChannel(url));
  t.diagnostic(`${url}: connected in ${Math.round(result.connectMs)} ms`);
  checkRelayed(result, 'tcp');
  assert.match(turnd.logTail(), /connection opened client=127\.0\.0\.1:\d+ transport=Tcp/, 'turnd saw no TCP connection');
}));

test('data channel relay/relay through turns:...?transport=tcp (relayProtocol tls)', { timeout: 60_000 }, withTurndLog(async (t) => {
  await newPage();
  const url = `turns:127.0.0.1:${turnd.tlsPort}?transport=tcp`;
  const result = await retryDataChannelStall(t, () => relayDataChannel(url));
  t.diagnostic(`${url}: connected in ${Math.round(result.connectMs)} ms`);
  checkRelayed(result, 'tls');
  assert.match(turnd.logTail(), /connection opened client=127\.0\.0\.1:\d+ transport=Tls/, 'turnd saw no TLS connection');
}));
