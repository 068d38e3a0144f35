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
import { test } from 'node:test';

import {
  PASSWORD,
  USER,
  RELAY_PORTS,
  browserSuite,
  launchChromium,
  retryDataChannelStall,
} from './harness.mjs';

const [MIN_PORT, MAX_PORT] = RELAY_PORTS.tcp_tls;

let cert = null;

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

const s = browserSuite({
  ports: 'tcp_tls',
  setUp: () => { cert = makeCert(); },
  turndOptions: () => ({
    extraArgs: ['--cert', cert.cert, '--pkey', cert.key, '--tls-listening-port', '0'],
    listeners: ['udp', 'tcp', 'tls'],
  }),
  launchBrowser: () => launchChromium({ extraArgs: [`--ignore-certificate-errors-spki-list=${cert.spki}`] }),
  tearDown: () => { if (cert) rmSync(cert.dir, { recursive: true, force: true }); },
});

/** Two relay-only peer connections through `url`; a data channel both ways; selected pairs. */
async function relayDataChannel(url) {
  return s.page.evaluate(async ({ url, username, credential }) => {
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
  assert.ok(s.turnd.tcpPort > 0, `no tcp listener: ${s.turnd.logTail()}`);
  assert.ok(s.turnd.tlsPort > 0, `no tls listener: ${s.turnd.logTail()}`);
  assert.equal(s.turnd.tcpPort, s.turnd.port, 'TCP shares the UDP port');
  assert.notEqual(s.turnd.tlsPort, s.turnd.tcpPort);
  assert.match(cert.spki, /^[A-Za-z0-9+/]{43}=$/);
});

test('data channel relay/relay through turn:...?transport=tcp (relayProtocol tcp)', { timeout: 60_000 }, s.withTurndLog(async (t) => {
  await s.newPage();
  const url = `turn:127.0.0.1:${s.turnd.tcpPort}?transport=tcp`;
  const result = await retryDataChannelStall(t, () => relayDataChannel(url));
  t.diagnostic(`${url}: connected in ${Math.round(result.connectMs)} ms`);
  checkRelayed(result, 'tcp');
  assert.match(s.turnd.logTail(), /connection opened client=127\.0\.0\.1:\d+ transport=Tcp/, 'turnd saw no TCP connection');
}));

test('data channel relay/relay through turns:...?transport=tcp (relayProtocol tls)', { timeout: 60_000 }, s.withTurndLog(async (t) => {
  await s.newPage();
  const url = `turns:127.0.0.1:${s.turnd.tlsPort}?transport=tcp`;
  const result = await retryDataChannelStall(t, () => relayDataChannel(url));
  t.diagnostic(`${url}: connected in ${Math.round(result.connectMs)} ms`);
  checkRelayed(result, 'tls');
  assert.match(s.turnd.logTail(), /connection opened client=127\.0\.0\.1:\d+ transport=Tls/, 'turnd saw no TLS connection');
}));
