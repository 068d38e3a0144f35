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
  assertRelayedBothWays,
  browserSuite,
  gatherCandidates,
  relayDataChannel,
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
  const result = await relayDataChannel(s.page, creds.snippet.iceServers, { label: 'rest', count: 10, prefix: 'rest ' });

  t.diagnostic(`connected in ${Math.round(result.connectMs)} ms with REST username ${creds.username}`);
  assertRelayedBothWays(result, { relayProtocol: 'udp', minPort: MIN_PORT, maxPort: MAX_PORT });
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
  const result = await gatherCandidates(s.page, { iceServers: [{ urls: url, username, credential }], iceTransportPolicy: 'relay' }, 'expired');
  const ctx = JSON.stringify(result);
  t.diagnostic(`candidate errors: ${JSON.stringify(result.errors)}`);
  assert.ok(!result.candidates.some((c) => c.type === 'relay'), `relay candidate with expired credentials: ${ctx}`);
  assert.ok(result.errors.some((e) => e.errorCode === 401), `no icecandidateerror 401: ${ctx}`);
  // eslint-disable-next-line no-control-regex
  const log = s.turnd.logTail().replace(/\x1b\[[0-9;]*m/g, '');
  assert.ok(log.includes('rest credentials expired'), 'turnd did not log the expiry as the reason');
}));
