// Issue 13, section 5, the Chromium parts: a fleet of turnd nodes, each in its
// own network namespace on one bridge, users in one redis-server, and Chromium
// on the bridge:
//   - a relay/relay data channel with one peer on node A and the other on B;
//   - node A draining (SIGTERM, --drain-timeout, --alternate-server B): its
//     call keeps flowing, and a client given only A's turn: URL is sent to B
//     by 300 Try Alternate and connects there.
// The protocol parts (users, quota, Redis down, fleet list, revocation) are in
// tests/fleet_netns.rs.
//
// The test makes namespaces `turnd-<pid>-{hub,a,b}` (ip netns): the bridge and
// its address 192.0.2.1 are in `hub`, with redis-server and Chromium (started
// through a wrapper that execs it in `hub`; playwright talks to it over
// pipes). The test's own namespace keeps loopback only, so the other browser
// test files, which run beside this one, still see the network they expect.
// Everything is removed after the file, also when it fails.
//
// Run: scripts/browser-tests.sh (root, private network namespace).

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  CHROMIUM,
  REALM,
  RELAY_PORTS,
  assertLoopbackOnlyNetwork,
  assertRelayedBothWays,
  installPageHelpers,
  launchChromium,
  relayDataChannel,
  resolveTurndBin,
  retryDataChannelStall,
  startTurnd,
} from './harness.mjs';

const HUB = `turnd-${process.pid}-hub`;
const HUB_IP = '192.0.2.1';
const REDIS_URL = `redis://${HUB_IP}:6379/0`;
const [FIRST_PORT] = RELAY_PORTS.fleet;
// Each node in its own namespace, on the default TURN port, with its own
// hundred relay ports (so a port also tells which node relays).
const NODES = {
  a: { ns: `turnd-${process.pid}-a`, ip: '192.0.2.11', minPort: FIRST_PORT, maxPort: FIRST_PORT + 99 },
  b: { ns: `turnd-${process.pid}-b`, ip: '192.0.2.12', minPort: FIRST_PORT + 100, maxPort: FIRST_PORT + 199 },
};
const TURN_PORT = 3478;
const USER = 'carol';
const PASSWORD = 'pw-carol';
/** How long a drained node keeps its allocations (longer than the test). */
const DRAIN_S = 120;

const turnUrl = (node) => `turn:${NODES[node].ip}:${TURN_PORT}?transport=udp`;
const iceServers = (node) => [{ urls: turnUrl(node), username: USER, credential: PASSWORD }];

/** Runs a command to completion (10 s at most); its stdout. Throws on failure. */
function run(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw new Error(`${cmd} ${args.join(' ')} failed (needs root in a private network namespace): ${err.stderr || err.message}`);
  }
}
const ip = (...args) => run('ip', args);
const inHub = (cmd, ...args) => run('ip', ['netns', 'exec', HUB, cmd, ...args]);

/** Deletes the namespaces (their interfaces go with them); never throws. */
function removeNamespaces() {
  for (const ns of [HUB, ...Object.values(NODES).map((n) => n.ns)]) {
    try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 }); } catch { /* not there */ }
  }
}

/** The bridge in `hub`, a veth from it into each node's namespace. */
function makeNamespaces() {
  removeNamespaces(); // what a crashed run with this PID left
  for (const ns of [HUB, ...Object.values(NODES).map((n) => n.ns)]) {
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  ip('-n', HUB, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', HUB, 'addr', 'add', `${HUB_IP}/24`, 'dev', 'br0');
  ip('-n', HUB, 'link', 'set', 'br0', 'up');
  for (const [name, n] of Object.entries(NODES)) {
    ip('-n', HUB, 'link', 'add', `v${name}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', n.ns);
    ip('-n', HUB, 'link', 'set', `v${name}`, 'master', 'br0');
    ip('-n', HUB, 'link', 'set', `v${name}`, 'up');
    ip('-n', n.ns, 'addr', 'add', `${n.ip}/24`, 'dev', 'eth0');
    ip('-n', n.ns, 'link', 'set', 'eth0', 'up');
  }
}

/** redis-server on the bridge address in `hub`, stopped by its PID. */
async function startRedis(dir) {
  const child = spawn('ip', ['netns', 'exec', HUB, 'redis-server', '--port', '6379', '--bind', HUB_IP, '--save', '',
    '--appendonly', 'no', '--protected-mode', 'no', '--dir', dir, '--logfile', ''], { stdio: 'ignore' });
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });
  child.on('error', (err) => { exited = { error: err.message }; });
  for (let i = 0; i < 100 && exited === null; i += 1) {
    try {
      if (inHub('redis-cli', '-h', HUB_IP, '-p', '6379', 'PING').trim() === 'PONG') return child;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`redis-server did not answer PING in ${HUB} (scripts/install-deps.sh installs it): ${JSON.stringify(exited)}`);
}

/** A node of the fleet in its namespace; users from Redis. */
function startNode(name, extraArgs = []) {
  const n = NODES[name];
  return startTurnd({
    netns: n.ns,
    ip: n.ip,
    listeningPort: TURN_PORT,
    minPort: n.minPort,
    maxPort: n.maxPort,
    extraArgs: ['--server-name', name, '--redis-userdb', REDIS_URL, '--allowed-peer-ip', '192.0.2.0/24', ...extraArgs],
  });
}

/** Waits (bounded) until `server`'s recent output holds `needle`. */
async function waitForLog(server, needle, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!server.logTail().includes(needle)) {
    if (Date.now() > deadline) throw new Error(`turnd (pid ${server.pid}) did not log "${needle}" within ${timeoutMs} ms\n${server.logTail()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const s = { dir: null, redis: null, nodes: {}, browser: null, callPage: null };

before(async () => {
  assertLoopbackOnlyNetwork();
  resolveTurndBin();
  process.on('exit', removeNamespaces);
  s.dir = mkdtempSync(path.join(tmpdir(), 'turnd-fleet-'));
  makeNamespaces();
  s.redis = await startRedis(s.dir);
  // The user is in Redis before the nodes start: their first read has it.
  inHub(resolveTurndBin(), 'user', '--redis-userdb', REDIS_URL, '--realm', REALM, 'add', USER, PASSWORD);
  s.nodes.b = await startNode('b');
  s.nodes.a = await startNode('a', ['--drain-timeout', String(DRAIN_S), '--alternate-server', `${NODES.b.ip}:${TURN_PORT}`]);
  const wrapper = path.join(s.dir, 'chromium-in-hub');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec '${HUB}' '${CHROMIUM}' "$@"\n`);
  chmodSync(wrapper, 0o755);
  s.browser = await launchChromium({ executablePath: wrapper });
});

after(async () => {
  try {
    if (s.browser) await s.browser.close();
    for (const n of Object.values(s.nodes)) await n.stop({ graceMs: 2_000 });
    if (s.redis && s.redis.exitCode === null) s.redis.kill('SIGKILL');
  } finally {
    removeNamespaces();
    process.off('exit', removeNamespaces);
    if (s.dir) rmSync(s.dir, { recursive: true, force: true });
  }
});

/** A fresh page with the in-page helpers. */
async function newPage() {
  const page = await s.browser.context.newPage();
  await page.goto('about:blank');
  await page.evaluate(installPageHelpers);
  return page;
}

/** Runs `fn`; on failure appends every node's recent output. */
const withLogs = (fn) => async (t) => {
  try {
    await fn(t);
  } catch (err) {
    const logs = Object.entries(s.nodes).map(([name, n]) => `--- node ${name} (pid ${n.pid}) ---\n${n.logTail()}`);
    throw new Error(`${err.message}\n${logs.join('\n')}`, { cause: err });
  }
};

test('a relay/relay data channel with one peer on node A and the other on node B', { timeout: 60_000 }, withLogs(async (t) => {
  const page = await newPage();
  try {
    const result = await retryDataChannelStall(t, () => relayDataChannel(page, iceServers('a'), { iceServersB: iceServers('b'), bigChar: 'x' }));
    t.diagnostic(`connected in ${Math.round(result.connectMs)} ms: a ${result.pairA.local.address}:${result.pairA.local.port}, b ${result.pairB.local.address}:${result.pairB.local.port}`);
    assertRelayedBothWays(result, {
      relayProtocol: 'udp',
      address: NODES.a.ip,
      minPort: NODES.a.minPort,
      maxPort: NODES.a.maxPort,
      b: { address: NODES.b.ip, minPort: NODES.b.minPort, maxPort: NODES.b.maxPort },
    });
  } finally {
    await page.close();
  }
}));

// The two tests below run in order, after the one above: the first leaves
// node A draining, with its call open in `s.callPage`.
test('node A draining (SIGTERM, --drain-timeout): its call with node B keeps flowing', { timeout: 60_000 }, withLogs(async () => {
  const page = await newPage();
  s.callPage = page;
  // A call between a peer on A and a peer on B, kept open in the page.
  const call = await page.evaluate(async ({ iceA, iceB }) => {
    const { watch, link, negotiate, waitConnected, withTimeout, selectedPair } = window.rtc;
    const a = watch(new RTCPeerConnection({ iceServers: iceA, iceTransportPolicy: 'relay' }), 'call-a');
    const b = watch(new RTCPeerConnection({ iceServers: iceB, iceTransportPolicy: 'relay' }), 'call-b');
    link(a, b);
    const dcA = a.createDataChannel('call');
    const dcBPromise = new Promise((resolve) => { b.ondatachannel = (e) => resolve(e.channel); });
    await negotiate(a, b);
    await Promise.all([waitConnected(a, 15_000), waitConnected(b, 15_000)]);
    const dcB = await withTimeout(dcBPromise, 10_000, 'datachannel event on call-b');
    const opened = (dc) => (dc.readyState === 'open' ? Promise.resolve()
      : new Promise((resolve) => dc.addEventListener('open', resolve, { once: true })));
    await withTimeout(Promise.all([opened(dcA), opened(dcB)]), 10_000, 'both call data channels open');
    // One message each way: resolves with what arrived.
    const ping = async (tag) => {
      const first = (dc) => new Promise((resolve) => dc.addEventListener('message', (e) => resolve(e.data), { once: true }));
      const atB = first(dcB);
      const atA = first(dcA);
      dcA.send(`${tag} a->b`);
      dcB.send(`${tag} b->a`);
      return withTimeout(Promise.all([atB, atA]), 10_000, `call messages both ways (${tag})`);
    };
    window.fleetCall = { a, b, ping };
    return { first: await ping('before'), pairA: await selectedPair(a), pairB: await selectedPair(b) };
  }, { iceA: iceServers('a'), iceB: iceServers('b') });
  assert.deepEqual(call.first, ['before a->b', 'before b->a']);
  assert.equal(call.pairA.local.address, NODES.a.ip, JSON.stringify(call.pairA));
  assert.equal(call.pairB.local.address, NODES.b.ip, JSON.stringify(call.pairB));

  process.kill(s.nodes.a.pid, 'SIGTERM');
  await waitForLog(s.nodes.a, 'draining: no new allocations');
  for (let i = 0; i < 5; i += 1) {
    const got = await page.evaluate((tag) => window.fleetCall.ping(tag), `draining ${i}`);
    assert.deepEqual(got, [`draining ${i} a->b`, `draining ${i} b->a`]);
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(s.nodes.a.exited(), null, 'node A exited instead of draining');
}));

// Chromium follows the 300 (libwebrtc TurnAllocateRequest::OnTryAlternate,
// then TurnPort::TryAlternateServer) with the NONCE it holds: a draining or
// full node answers a client's first, credential-less Allocate with a bare
// 300, before any 401, so the client reaches B without A's nonce (B could not
// check it: 438, which libwebrtc does not retry for an Allocate).

test('a new client given only node A\'s turn: URL is sent to node B by 300 and connects there', { timeout: 60_000 }, withLogs(async (t) => {
  assert.ok(s.callPage, 'the draining test ran first');
  const page = await newPage();
  try {
    // Both peers given A's URL only: both end up on B.
    const result = await retryDataChannelStall(t, () => relayDataChannel(page, iceServers('a'), { label: 'redirected' }));
    t.diagnostic(`redirected pair connected in ${Math.round(result.connectMs)} ms: ${result.pairA.local.address}:${result.pairA.local.port} and ${result.pairB.local.address}:${result.pairB.local.port}`);
    assertRelayedBothWays(result, { relayProtocol: 'udp', address: NODES.b.ip, minPort: NODES.b.minPort, maxPort: NODES.b.maxPort });
    for (const c of [...result.candidatesA, ...result.candidatesB].filter((x) => x.type === 'relay')) {
      assert.equal(c.address, NODES.b.ip, `a relay candidate not on B: ${JSON.stringify(c)}`);
    }
    // The old call still flows; A still drains.
    const last = await s.callPage.evaluate(() => window.fleetCall.ping('after'));
    assert.deepEqual(last, ['after a->b', 'after b->a']);
    assert.equal(s.nodes.a.exited(), null, 'node A ended its drain early');
  } finally {
    await page.close();
  }
}));
