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
  assertRelayedBothWays,
  browserSuite,
  launchChromium,
  relayDataChannel,
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

/** relayDataChannel through `url` (30 messages each way and a 16 KiB one). */
function relayThrough(url) {
  const iceServers = [{ urls: url, username: USER, credential: PASSWORD }];
  return relayDataChannel(s.page, iceServers, { count: 30, bigChar: 'y', connectMs: 20_000, messagesMs: 15_000 });
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
  const result = await retryDataChannelStall(t, () => relayThrough(url));
  t.diagnostic(`${url}: connected in ${Math.round(result.connectMs)} ms`);
  assertRelayedBothWays(result, { relayProtocol: 'tcp', minPort: MIN_PORT, maxPort: MAX_PORT });
  assert.match(s.turnd.logTail(), /connection opened client=127\.0\.0\.1:\d+ transport=Tcp/, 'turnd saw no TCP connection');
}));

test('data channel relay/relay through turns:...?transport=tcp (relayProtocol tls)', { timeout: 60_000 }, s.withTurndLog(async (t) => {
  await s.newPage();
  const url = `turns:127.0.0.1:${s.turnd.tlsPort}?transport=tcp`;
  const result = await retryDataChannelStall(t, () => relayThrough(url));
  t.diagnostic(`${url}: connected in ${Math.round(result.connectMs)} ms`);
  assertRelayedBothWays(result, { relayProtocol: 'tls', minPort: MIN_PORT, maxPort: MAX_PORT });
  assert.match(s.turnd.logTail(), /connection opened client=127\.0\.0\.1:\d+ transport=Tls/, 'turnd saw no TLS connection');
}));
