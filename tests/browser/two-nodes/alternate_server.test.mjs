// Two turnd nodes and Chromium (issue 13, load shedding): node A is full
// (`max-allocations = 2`, both allocations held by a call in progress) and
// names node B in `alternate-server`; a browser given only A's turn: URL,
// relay only, follows A's 300 Try Alternate to B, over UDP and TCP, gets its
// relay candidates on B and carries a data channel through them. Then A
// drains (SIGTERM, `drain-timeout`): its call goes on, new calls still go
// to B. A counts and logs the sheds.
//
// The nodes listen on 192.0.2.1 (A) and 192.0.2.2 (B), documentation
// addresses (RFC 5737), not on 127.0.0.0/8: libwebrtc refuses to follow a
// redirect to a loopback address (TurnPort::SetAlternateServer, "Blocking
// attempted redirect to loopback address", crbug.com/649118).
// scripts/browser-tests.sh runs this directory in a network namespace of its
// own with only the loopback interface, which holds those two addresses too
// (the kernel would not load a dummy interface here), so nothing leaves the
// namespace and the loopback-only tests beside it are untouched (their relay
// ports cannot meet these either).
//
// Run: scripts/browser-tests.sh   (TURND_BIN=target/debug/turnd)

import assert from 'node:assert/strict';
import { networkInterfaces } from 'node:os';
import { after, before, test } from 'node:test';

import {
  PASSWORD,
  USER,
  launchChromium,
  installPageHelpers,
  relayDataChannel,
  retryDataChannelStall,
  startTurnd,
} from '../harness.mjs';

const A_IP = '192.0.2.1';
const B_IP = '192.0.2.2';
const A_PORTS = [25800, 25849];
const B_PORTS = [25850, 25899];
const PEERS = ['--allowed-peer-ip', '192.0.2.0/24'];
const METRICS = (ip) => ['--prometheus', '--prometheus-port', '0', '--prometheus-address', ip];

const inRange = (port, [min, max]) => port >= min && port <= max;

/** Only the loopback interface, holding A's and B's addresses too. */
function assertTwoNodeNetwork() {
  const ifaces = networkInterfaces();
  const others = Object.keys(ifaces).filter((n) => n !== 'lo');
  const addrs = (ifaces.lo ?? []).map((a) => a.address);
  if (others.length > 0 || !addrs.includes(A_IP) || !addrs.includes(B_IP)) {
    throw new Error(
      `tests/browser/two-nodes needs a namespace with only lo, holding ${A_IP} and ${B_IP}; found ` +
        `${JSON.stringify(Object.fromEntries(Object.entries(ifaces).map(([n, a]) => [n, a.map((x) => x.address)])))}; ` +
        'run it with scripts/browser-tests.sh',
    );
  }
}

/** turnd's /metrics as a map from series (name{labels}) to value. */
async function metrics(node) {
  const m = await node.waitForStdout(/^turnd: listening on prometheus (http:\/\/\S+\/metrics)\s*$/);
  const r = await fetch(m[1], { signal: AbortSignal.timeout(10_000) });
  assert.equal(r.status, 200);
  const series = new Map();
  for (const line of (await r.text()).split('\n')) {
    const f = /^(\S+) (\d+)$/.exec(line);
    if (f) series.set(f[1], Number(f[2]));
  }
  return series;
}

/** Live allocations (the turnd_allocations gauge over transports and families). */
function allocations(series) {
  let n = 0;
  for (const [k, v] of series) if (k.startsWith('turnd_allocations{')) n += v;
  return n;
}

let a = null;
let b = null;
let browser = null;
let page = null;
/** Set once A drained and exited 0 (the last test): nothing left to stop. */
let aDrained = false;

before(async () => {
  assertTwoNodeNetwork();
  b = await startTurnd({ ip: B_IP, minPort: B_PORTS[0], maxPort: B_PORTS[1], extraArgs: [...PEERS, ...METRICS(B_IP)] });
  a = await startTurnd({
    ip: A_IP,
    minPort: A_PORTS[0],
    maxPort: A_PORTS[1],
    extraArgs: ['--max-allocations', '2', '--drain-timeout', '60', '--alternate-server', `${B_IP}:${b.port}`, ...PEERS, ...METRICS(A_IP)],
  });
  // Chromium's TCP sockets (TURN over TCP) go through its host resolver,
  // which the harness maps to nothing but 127.0.0.1: open A and B too.
  browser = await launchChromium({ hostResolverRules: `MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE ${A_IP} , EXCLUDE ${B_IP}` });
  page = await browser.context.newPage();
  await page.goto('about:blank');
  await page.evaluate(installPageHelpers);
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    for (const node of [a, b]) {
      if (!node || (node === a && aDrained)) continue;
      const res = await node.stop();
      assert.ok(res.graceful, `turnd (pid ${node.pid}) did not exit within 5 s of SIGTERM: ${JSON.stringify(res)}\n${node.logTail()}`);
    }
  }
});

/** Runs `fn`; on failure appends both nodes' recent output. */
const withLogs = (fn) => async (t) => {
  try {
    await fn(t);
  } catch (err) {
    err.message += `\n--- node A recent output ---\n${a?.logTail()}\n--- node B recent output ---\n${b?.logTail()}`;
    throw err;
  }
};

const turnA = (transport) => [{ urls: `turn:${A_IP}:${a.port}?transport=${transport}`, username: USER, credential: PASSWORD }];

/** One round trip on the call in progress on A (window.call). */
const callRoundTrip = (tag) => page.evaluate(async (tag) => {
  const { dx, dy } = window.call;
  const first = (dc) => new Promise((resolve) => dc.addEventListener('message', (e) => resolve(e.data), { once: true }));
  const atY = first(dy).then((m) => { dy.send(`pong:${m}`); return m; });
  const atX = first(dx);
  dx.send(tag);
  return window.rtc.withTimeout(Promise.all([atY, atX]), 10_000, `a round trip on the call on A (${tag})`);
}, tag);

test('a call in progress fills node A (max-allocations = 2)', { timeout: 40_000 }, withLogs(async (t) => {
  // Two connections relayed by A, with a data channel, stay open (they
  // refresh) for the tests below.
  const call = await page.evaluate(async (iceServers) => {
    const { watch, link, negotiate, waitConnected, withTimeout, selectedPair } = window.rtc;
    const config = { iceServers, iceTransportPolicy: 'relay' };
    const x = watch(new RTCPeerConnection(config), 'call-x');
    const y = watch(new RTCPeerConnection(config), 'call-y');
    link(x, y);
    const dx = x.createDataChannel('call');
    const dyPromise = new Promise((resolve) => { y.ondatachannel = (e) => resolve(e.channel); });
    await negotiate(x, y);
    await Promise.all([waitConnected(x, 15_000), waitConnected(y, 15_000)]);
    const dy = await withTimeout(dyPromise, 10_000, 'datachannel event on call-y');
    const opened = (dc) => (dc.readyState === 'open' ? Promise.resolve()
      : new Promise((resolve) => dc.addEventListener('open', resolve, { once: true })));
    await withTimeout(Promise.all([opened(dx), opened(dy)]), 10_000, 'both call channels open');
    window.call = { x, y, dx, dy };
    return { pairs: [await selectedPair(x), await selectedPair(y)], candidates: [...x.__candidates, ...y.__candidates] };
  }, turnA('udp'));
  t.diagnostic(`call candidates: ${call.candidates.map((c) => c.candidate).join(' | ')}`);
  for (const sel of call.pairs) {
    assert.equal(sel?.local?.address, A_IP, `the call is not relayed by A: ${JSON.stringify(sel)}`);
    assert.ok(inRange(sel.local.port, A_PORTS), `relay port outside A's range: ${JSON.stringify(sel)}`);
  }
  assert.deepEqual(await callRoundTrip('first'), ['first', 'pong:first']);
  assert.equal(allocations(await metrics(a)), 2, 'A holds its two allocations');
}));

/**
 * Two new connections given only A's URL (TURN over `transport`): relayed by
 * B after A's 300s, each counted with `reason` and logged by A; A makes no
 * allocation, B makes them.
 */
async function redirectedCall(t, transport, reason) {
  const before = await metrics(a);
  const shedBefore = before.get(`turnd_allocations_shed_total{reason="${reason}"}`) ?? 0;
  const redirectsBefore = before.get('turnd_requests_total{method="allocate",code="300"}') ?? 0;
  const loggedBefore = a.stderrLines().length;
  const createdOnB = (await metrics(b)).get('turnd_allocations_created_total') ?? 0;

  const result = await retryDataChannelStall(t, () => relayDataChannel(page, turnA(transport), { count: 10 }));
  t.diagnostic(`connected in ${Math.round(result.connectMs)} ms`);
  assert.deepEqual(result.atB, result.sentA, 'messages a->b did not arrive intact and in order');
  assert.deepEqual(result.atA, result.sentB, 'messages b->a did not arrive intact and in order');
  for (const [name, cands, errors] of [['a', result.candidatesA, result.errorsA], ['b', result.candidatesB, result.errorsB]]) {
    const relay = cands.filter((c) => c.type === 'relay');
    t.diagnostic(`${name} candidates: ${cands.map((c) => c.candidate).join(' | ')}`);
    assert.ok(relay.length > 0, `${name}: no relay candidate: ${JSON.stringify(cands)}`);
    for (const c of relay) {
      assert.equal(c.address, B_IP, `${name}: a relay candidate not on B: ${JSON.stringify(c)}`);
      assert.ok(inRange(c.port, B_PORTS), `${name}: relay port ${c.port} outside B's ${B_PORTS.join('-')}`);
    }
    assert.deepEqual(errors, [], `${name}: candidate errors`);
  }
  for (const [name, sel] of [['a', result.pairA], ['b', result.pairB]]) {
    const ctx = JSON.stringify(sel);
    assert.ok(sel, `${name}: no selected candidate pair`);
    assert.equal(sel.local?.candidateType, 'relay', `${name}: local candidate is not relay: ${ctx}`);
    assert.equal(sel.remote?.candidateType, 'relay', `${name}: remote candidate is not relay: ${ctx}`);
    assert.equal(sel.local.relayProtocol, transport, `${name}: not TURN over ${transport}: ${ctx}`);
    assert.equal(sel.local.address, B_IP, `${name}: selected relayed address is not B's: ${ctx}`);
    assert.equal(sel.remote.address, B_IP, `${name}: remote relayed address is not B's: ${ctx}`);
    assert.ok(sel.pair.bytesSent > 0 && sel.pair.bytesReceived > 0, `${name}: no bytes over the selected pair: ${ctx}`);
  }

  const afterA = await metrics(a);
  const shed = (afterA.get(`turnd_allocations_shed_total{reason="${reason}"}`) ?? 0) - shedBefore;
  const redirects = (afterA.get('turnd_requests_total{method="allocate",code="300"}') ?? 0) - redirectsBefore;
  t.diagnostic(`A shed ${shed} Allocate requests (${reason}), answered 300 ${redirects} times`);
  assert.ok(shed >= 2, `A shed ${shed} Allocate requests, expected one per connection at least`);
  assert.equal(redirects, shed, 'every shed Allocate got a 300');
  assert.equal(allocations(afterA), 2, 'A made no new allocation');
  const logged = a.stderrLines().slice(loggedBefore)
    .filter((l) => l.includes('allocate shed: 300 try alternate') && l.includes(`reason="${reason}"`));
  assert.equal(logged.length, shed, `A logged ${logged.length} sheds:\n${logged.join('\n')}`);
  assert.ok(logged.every((l) => l.includes(`alternate=${B_IP}:${b.port}`)), `A named another alternate:\n${logged.join('\n')}`);
  const created = ((await metrics(b)).get('turnd_allocations_created_total') ?? 0) - createdOnB;
  assert.ok(created >= 2, `B created ${created} allocations, expected one per connection at least`);
}

for (const transport of ['udp', 'tcp']) {
  test(`a full node sends Chromium (TURN over ${transport}) on with 300 Try Alternate: relay candidates and a data channel on the other node`, { timeout: 60_000 }, withLogs(async (t) => {
    await redirectedCall(t, transport, 'max_allocations');
    assert.deepEqual(await callRoundTrip(transport), [transport, `pong:${transport}`], 'the call on A goes on');
  }));
}

test('a draining node keeps its call and sends new ones on', { timeout: 60_000 }, withLogs(async (t) => {
  const drains = () => a.stderrLines().some((l) => l.includes('draining: no new allocations'));
  process.kill(a.pid, 'SIGTERM');
  const deadline = Date.now() + 5_000;
  while (!drains() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.ok(drains(), 'A did not log that it drains');
  await redirectedCall(t, 'udp', 'draining');
  assert.deepEqual(await callRoundTrip('draining'), ['draining', 'pong:draining'], 'the call on A goes on while A drains');
  assert.equal(a.exited(), null, 'A exited while its call was in progress');

  // The call ends (Refresh with LIFETIME 0 from each side): A's drain is
  // over and it exits 0 long before its drain-timeout.
  await page.evaluate(() => { window.call.x.close(); window.call.y.close(); });
  const exitBy = Date.now() + 10_000;
  while (a.exited() === null && Date.now() < exitBy) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(a.exited(), { code: 0, signal: null }, 'A did not exit 0 once its last allocation ended');
  assert.ok(a.stderrLines().some((l) => l.includes('draining: every allocation has ended')));
  aDrained = true;
}));
