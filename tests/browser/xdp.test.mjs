// Issue 15, the Chromium part: a data channel and a video call through turnd
// with the XDP fast path on (`xdp = "generic"`, then `xdp = "native"`), on a
// flow the kernel program can take.
//
// Why three namespaces: if both browsers used this turnd with relay-only
// policy, every packet would hairpin (the peer is another relayed address of
// the same host); the prototype's program passed hairpins to user space, and
// a hairpin is not the common case the fast path is for. So the main flow has
// only one side on turnd (the hairpin is tested on its own, below):
//
//   ns client (Chromium A)      ns relay (turnd)                 ns peer (Chromium B)
//   c0 192.0.2.2/26  ---veth---  r0 192.0.2.1/26   (listening)
//                                r1 192.0.2.65/26  (relay)  ---veth---  p0 192.0.2.66/26
//
// turnd listens on 192.0.2.1 and 192.0.2.65 (port 3478), relays on 192.0.2.65.
// A: iceTransportPolicy "relay", turn:192.0.2.1:3478. B: no iceServers, host
// candidates only. So the selected pair is A's relayed address <-> B's host
// address: A -> turnd is ChannelData on r0, turnd -> B plain UDP on r1, and
// back. Neither A nor B has a route to the other's subnet, so nothing can go
// around the relay, although the relay namespace forwards (forwarding=1, which
// bpf_fib_lookup needs).
// Per xdp/README.md (branch xdp-prototype): TX checksum offload off on c0 and
// p0 (local senders' partial checksums break the XDP rewrites); in native mode
// GRO on c0 and p0 (the veth peer of a redirect target needs NAPI, else
// redirected frames vanish).
//
// Proves, per mode: 200 binary messages of varied sizes each way arrive byte
// for byte and in order; a two-way video call (fake camera and microphone)
// decodes frames on both sides; the selected pairs are relay<->host (A) and
// host<->relay (B); turnd's /metrics shows kernel-relayed packets in both
// directions and that the kernel relayed most of them (for each call on its
// own, and in all); turnd_xdp_entries >= 1 during a call and back to 0 within
// 3 s of its end (Chromium's Refresh 0); the program is on r0 and r1 in the
// mode asked while turnd runs and gone after SIGTERM; the user's byte totals
// (turnd_user_relayed_bytes_total) equal the server's; each allocation's
// packet counts at its end agree with /metrics (see checkAllocationCounts for
// what xdp changes there). Then the hairpin: B relay-only on this turnd too
// (turn:192.0.2.65:3478), 200 messages each way byte for byte, relay<->relay
// pairs, the program's hairpin counters rising and >= 90 % of the messages'
// packets in the kernel.
//
// IPv4 only: Chromium's TURN client sends no REQUESTED-ADDRESS-FAMILY, so it
// always asks for an IPv4 relayed address (checked: with turnd on
// [2001:db8:1::1] and only an IPv6 relay-ip, Chromium's Allocate gets 440), and
// an IPv6 client with an IPv4 relay is a cross-family flow, which stays in user
// space by design. IPv6 in the kernel is for the protocol-level tests.
//
// Namespaces `turnd-<pid>-x{c,r,p}` are made per mode and deleted after it
// (also when it fails). The test's own namespace keeps loopback only.
// TURND_XDP_MODES (default "generic,native"; "off" is accepted, for checking
// the harness on a turnd built without the xdp feature: then the kernel
// checks are replaced by "no xdp metrics at all").
//
// Run: scripts/browser-tests.sh (root, private network namespace; turnd built
// with `cargo build --features xdp`; needs ethtool).

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';

import {
  CHROMIUM,
  REALM,
  assertLoopbackOnlyNetwork,
  installPageHelpers,
  launchChromium,
  repoRoot,
  resolveTurndBin,
} from './harness.mjs';

const MODES = (process.env.TURND_XDP_MODES || 'generic,native').split(',').map((m) => m.trim()).filter(Boolean);
for (const m of MODES) assert.ok(['off', 'generic', 'native'].includes(m), `TURND_XDP_MODES: unknown mode ${m}`);

const NS = { client: `turnd-${process.pid}-xc`, relay: `turnd-${process.pid}-xr`, peer: `turnd-${process.pid}-xp` };
const ADDR = { client: '192.0.2.2', listen: '192.0.2.1', relay: '192.0.2.65', peer: '192.0.2.66' };
const TURN_PORT = 3478;
// The relay namespace is this file's own, so these ports collide with nothing.
const MIN_PORT = 42000;
const MAX_PORT = 42099;
const METRICS_PORT = 9641;
const USER = 'xdpuser';
const PASSWORD = 'xdp-secret';
const ICE_SERVERS = [{ urls: `turn:${ADDR.listen}:${TURN_PORT}?transport=udp`, username: USER, credential: PASSWORD }];
/** B's, in the hairpin test: the same turnd, on r1's address (the one B can reach). */
const ICE_SERVERS_B = [{ urls: `turn:${ADDR.relay}:${TURN_PORT}?transport=udp`, username: USER, credential: PASSWORD }];
const MESSAGES = 200;
// A page origin for getUserMedia (needs a secure context; about:blank is not
// one). Served by playwright's request interception, so nothing listens.
const PAGE_URL = 'http://127.0.0.1:9/xdp';

/** Runs a command to completion (10 s at most); its stdout. Throws with stderr. */
function run(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw new Error(`${cmd} ${args.join(' ')} failed (needs root in a private network namespace): ${err.stderr || err.message}`);
  }
}
const ip = (...args) => run('ip', args);
const inNs = (ns, cmd, ...args) => run('ip', ['netns', 'exec', ns, cmd, ...args]);

/** Every tool this file needs; a missing one fails the file. */
function checkTools() {
  for (const tool of ['ip', 'ethtool']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      throw new Error(`${tool} not found on PATH (scripts/install-deps.sh installs it)`);
    }
  }
  if (!existsSync(CHROMIUM)) throw new Error(`chromium not found at ${CHROMIUM} (scripts/install-deps.sh)`);
  resolveTurndBin();
}

/** Deletes the namespaces (their veths go with them); never throws. */
function removeNamespaces() {
  for (const ns of Object.values(NS)) {
    try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 }); } catch { /* not there */ }
  }
}

/** The three namespaces and two veth pairs of the diagram above, set for `mode`. */
function makeNamespaces(mode) {
  removeNamespaces();
  for (const ns of Object.values(NS)) {
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  ip('-n', NS.client, 'link', 'add', 'c0', 'type', 'veth', 'peer', 'name', 'r0', 'netns', NS.relay);
  ip('-n', NS.peer, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'r1', 'netns', NS.relay);
  for (const [ns, dev, addr] of [
    [NS.client, 'c0', ADDR.client], [NS.relay, 'r0', ADDR.listen], [NS.relay, 'r1', ADDR.relay], [NS.peer, 'p0', ADDR.peer],
  ]) {
    ip('-n', ns, 'addr', 'add', `${addr}/26`, 'dev', dev);
  }
  // bpf_fib_lookup needs forwarding on the ingress interface (before the links come up, so r0/r1 inherit it).
  inNs(NS.relay, 'sysctl', '-q', '-w', 'net.ipv4.conf.all.forwarding=1', 'net.ipv4.conf.default.forwarding=1');
  for (const [ns, dev] of [[NS.client, 'c0'], [NS.relay, 'r0'], [NS.relay, 'r1'], [NS.peer, 'p0']]) {
    ip('-n', ns, 'link', 'set', dev, 'up');
  }
  for (const dev of ['r0', 'r1']) {
    const fwd = inNs(NS.relay, 'sysctl', '-n', `net.ipv4.conf.${dev}.forwarding`).trim();
    assert.equal(fwd, '1', `forwarding is ${fwd} on ${dev}`);
  }
  // A and B cannot reach each other except through turnd.
  for (const [ns, to] of [[NS.client, ADDR.peer], [NS.peer, ADDR.client]]) {
    let routed = true;
    try { execFileSync('ip', ['-n', ns, 'route', 'get', to], { stdio: 'ignore', timeout: 10_000 }); } catch { routed = false; }
    assert.ok(!routed, `${ns} has a route to ${to}: the call could bypass the relay`);
  }
  // Local senders: TX checksum offload off. Native mode: GRO on the veth peers of r0/r1.
  for (const [ns, dev] of [[NS.client, 'c0'], [NS.peer, 'p0']]) {
    inNs(ns, 'ethtool', '-K', dev, 'tx', 'off');
    inNs(ns, 'ethtool', '-K', dev, 'gro', mode === 'native' ? 'on' : 'off');
    const features = inNs(ns, 'ethtool', '-k', dev);
    assert.match(features, /^tx-checksumming: off/m, `${dev}: TX checksum offload still on:\n${features}`);
    if (mode === 'native') assert.match(features, /^generic-receive-offload: on/m, `${dev}: GRO not on:\n${features}`);
  }
}

/** `ip -d link show DEV` in the relay namespace. */
const relayLink = (dev) => ip('-n', NS.relay, '-d', 'link', 'show', 'dev', dev);
/** The XDP attach mode `ip link` shows after the MTU ("xdp": native, "xdpgeneric"), or null. */
const xdpFlag = (link) => /\bmtu \d+ (xdp\w*) /.exec(link)?.[1] ?? null;

/** turnd in the relay namespace, listening on r0's address, relaying on r1's. */
async function startRelay(mode, { timeoutMs = 15_000 } = {}) {
  const bin = resolveTurndBin();
  const args = [
    '--listening-ip', ADDR.listen,
    // Also on r1's address: B's TURN server in the hairpin test.
    '--listening-ip', ADDR.relay,
    '--listening-port', String(TURN_PORT),
    '--relay-ip', ADDR.relay,
    '--min-port', String(MIN_PORT),
    '--max-port', String(MAX_PORT),
    '--realm', REALM,
    '--user', `${USER}:${PASSWORD}`,
    '--allowed-peer-ip', '192.0.2.0/24',
    '--prometheus',
    '--prometheus-port', String(METRICS_PORT),
    '--prometheus-username-labels',
    '--verbose',
    ...(mode === 'off' ? [] : ['--xdp', mode]),
  ];
  // ip execs turnd: the PID is turnd's, and it leads its own process group.
  const child = spawn('ip', ['netns', 'exec', NS.relay, bin, ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const logFile = process.env.TURND_LOG ? path.resolve(process.env.TURND_LOG) : null;
  const tail = [];
  const stderrAll = [];
  const keep = (stream, line) => {
    if (logFile) appendFileSync(logFile, `[xdp ${mode}] [${stream}] ${line}\n`);
    if (stream === 'stderr') stderrAll.push(line);
    tail.push(`[${stream}] ${line}`);
    if (tail.length > 300) tail.shift();
  };
  let exited = null;
  const exitPromise = new Promise((resolve) => child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited); }));
  const killGroup = () => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } };
  const killOnExit = () => { if (exited === null) killGroup(); };
  process.on('exit', killOnExit);
  const stdout = createInterface({ input: child.stdout });
  createInterface({ input: child.stderr }).on('line', (l) => keep('stderr', l));
  const server = {
    pid: child.pid,
    args,
    logTail: () => tail.join('\n'),
    exited: () => exited,
    /** The first stderr line matching `re` (polled, `ms` at most): its match. */
    async waitForLog(re, ms = 5_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        for (const l of stderrAll) {
          const m = re.exec(l);
          if (m) return m;
        }
        if (Date.now() > deadline) throw new Error(`turnd logged no line matching ${re} within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    /** SIGTERM to turnd's PID; SIGKILL to its group after `graceMs`. */
    async stop({ graceMs = 5_000 } = {}) {
      process.off('exit', killOnExit);
      if (exited !== null) return { ...exited, graceful: false, alreadyExited: true };
      process.kill(child.pid, 'SIGTERM');
      let timer;
      const res = await Promise.race([exitPromise, new Promise((r) => { timer = setTimeout(() => r(null), graceMs); })]);
      clearTimeout(timer);
      killGroup();
      if (res !== null) return { ...res, graceful: true };
      await exitPromise;
      return { ...exited, graceful: false };
    },
  };
  await new Promise((resolve, reject) => {
    const fail = (why) => reject(new Error(`${why}\ncommand: ${bin} ${args.join(' ')}\n--- turnd output ---\n${server.logTail()}`));
    const want = new Set([ADDR.listen, ADDR.relay].map((a) => `turnd: listening on udp ${a}:${TURN_PORT}`));
    const timer = setTimeout(() => fail(`turnd did not print ${[...want].map((w) => `"${w}"`).join(' and ')} within ${timeoutMs} ms`), timeoutMs);
    child.on('error', (err) => { clearTimeout(timer); fail(`cannot spawn ${bin}: ${err.message}`); });
    exitPromise.then(({ code, signal }) => { clearTimeout(timer); fail(`turnd exited (code ${code}, signal ${signal}) before listening`); });
    stdout.on('line', (line) => {
      keep('stdout', line);
      want.delete(line.trim());
      if (want.size === 0) { clearTimeout(timer); resolve(); }
    });
  }).catch(async (err) => {
    killGroup();
    await exitPromise;
    process.off('exit', killOnExit);
    throw err;
  });
  return server;
}

/** turnd's /metrics, fetched from inside the relay namespace (listener on its 127.0.0.1). */
function scrapeMetrics() {
  const text = inNs(NS.relay, process.execPath, '-e', `
    fetch('http://127.0.0.1:${METRICS_PORT}/metrics', { signal: AbortSignal.timeout(5000) })
      .then(async (r) => { if (!r.ok) throw new Error('HTTP ' + r.status); process.stdout.write(await r.text()); })
      .catch((e) => { console.error(String(e)); process.exit(1); });`);
  const samples = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  const get = (name, labels = {}) => {
    const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
    return hits.length === 0 ? null : hits.reduce((sum, s) => sum + s.value, 0);
  };
  // The xdp spec names the directions to_peer/to_client; turnd's older series
  // say client_to_peer/peer_to_client: either is taken.
  const dir = (name, direction) => get(name, { direction })
    ?? get(name, { direction: `${direction === 'to_peer' ? 'client' : 'peer'}_${direction}` });
  return { text, samples, get, dir };
}

/** Relayed packets per direction, all and in the kernel; packets the program passed, by reason. */
function relayedPackets() {
  const m = scrapeMetrics();
  const out = { passed: {} };
  for (const d of ['to_peer', 'to_client']) {
    out[d] = { all: m.dir('turnd_relayed_packets_total', d) ?? 0, kernel: m.dir('turnd_xdp_relayed_packets_total', d) ?? 0 };
  }
  for (const x of m.samples.filter((x) => x.name === 'turnd_xdp_passed_packets_total')) out.passed[x.labels.reason] = x.value;
  return out;
}

/**
 * With xdp on: waits (bounded) until turnd_xdp_entries satisfies `pred`;
 * returns the last value. Entries follow ChannelBind and the allocation's
 * end on turnd's 100 ms sync tick.
 */
async function waitEntries(pred, what, ms = 3_000) {
  const deadline = Date.now() + ms;
  let n = null;
  for (;;) {
    n = scrapeMetrics().get('turnd_xdp_entries');
    if (pred(n)) return n;
    if (Date.now() > deadline) throw new Error(`turnd_xdp_entries is ${n} after ${ms} ms; wanted ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The packets relayed since each check's `before` (a relayedPackets()), as
 * diagnostics; with xdp on, checks that the kernel relayed some in each
 * direction, and more than the share `min` of them.
 */
async function checkDeltas(t, mode, checks) {
  // turnd reads the kernel's counters back on a tick: up to 1 s late.
  if (mode !== 'off') await new Promise((r) => setTimeout(r, 1_500));
  const now = relayedPackets();
  for (const { what, before, min } of checks) {
    const delta = Object.fromEntries(['to_peer', 'to_client'].map((d) => [d, { all: now[d].all - before[d].all, kernel: now[d].kernel - before[d].kernel }]));
    const passed = Object.entries(now.passed).map(([r, n]) => [r, n - (before.passed[r] ?? 0)]).filter(([, n]) => n > 0);
    t.diagnostic(`relayed during ${what}: ${Object.entries(delta).map(([d, { all, kernel }]) =>
      `${d} ${kernel} of ${all} in the kernel${all > 0 ? ` (${(100 * kernel / all).toFixed(1)} %)` : ''}`).join(', ')}` +
      (mode === 'off' ? '' : `; passed to user space by the program: ${passed.map(([r, n]) => `${r} ${n}`).join(', ') || 'none'}`));
    for (const [d, { all, kernel }] of Object.entries(delta)) {
      assert.ok(all > 0, `${d}: nothing relayed during ${what}`);
      if (mode === 'off') continue;
      assert.ok(kernel > 0, `${d}: the kernel relayed nothing during ${what} (${kernel} of ${all})`);
      assert.ok(kernel > all * min, `${d}: the kernel relayed only ${kernel} of ${all} packets during ${what} (want more than ${100 * min} %)`);
    }
  }
}

/** A browser in namespace `ns` (wrapper script: `ip netns exec NS chromium`), and one page on PAGE_URL with the helpers. */
async function browserIn(ns, dir) {
  const wrapper = path.join(dir, `chromium-in-${ns}`);
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec '${ns}' '${CHROMIUM}' "$@"\n`);
  chmodSync(wrapper, 0o755);
  // No loopback candidates: B's only host candidate is p0's address.
  const browser = await launchChromium({ executablePath: wrapper, withoutArgs: ['--allow-loopback-in-peer-connection'] });
  try {
    await browser.context.route(`${PAGE_URL}**`, (route) => route.fulfill({
      status: 200, contentType: 'text/html; charset=utf-8', body: '<!doctype html><title>turnd xdp test</title>',
    }));
    const page = await browser.context.newPage();
    await page.goto(PAGE_URL);
    assert.ok(await page.evaluate(() => window.isSecureContext), `${PAGE_URL} is not a secure context`);
    await page.evaluate(installPageHelpers);
    await page.evaluate(installXdpHelpers);
    return { browser, page };
  } catch (err) {
    await browser.close();
    throw err;
  }
}

/** In-page helpers for two pages in two browsers; serialised into the page (self-contained). */
function installXdpHelpers() {
  const { withTimeout, watch, describe, waitConnected, selectedPair, sleep } = window.rtc;

  /** Message `i` from side `dir` ('a' or 'b'): a size from a fixed list, then pseudo-random; xorshift32 content. */
  const SPECIAL = [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 100, 255, 256, 257, 1000, 1024, 1100, 1150, 1151, 1199, 1200, 1201,
    1300, 1400, 1472, 1500, 2048, 4095, 4096, 8191, 16384, 32768, 65535];
  const xorshift = (seed) => {
    let x = seed >>> 0 || 1;
    return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  };
  const message = (dir, i) => {
    const rnd = xorshift(((dir === 'a' ? 0x9e3779b9 : 0x7f4a7c15) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0);
    const size = i < SPECIAL.length ? SPECIAL[i] : 1 + (rnd() % 3000);
    const bytes = new Uint8Array(size);
    for (let j = 0; j < size; j += 1) bytes[j] = rnd() & 0xff;
    // The first bytes say which message this is (when it is long enough), so a reorder shows as one.
    if (size >= 4) new DataView(bytes.buffer).setUint32(0, (dir === 'a' ? 0xa0000000 : 0xb0000000) + i);
    return bytes;
  };

  /** Records every message of `dc`: strings and binary apart. */
  const record = (dc) => {
    dc.binaryType = 'arraybuffer';
    const box = { strings: [], binary: [], waiters: new Set() };
    dc.addEventListener('message', (e) => {
      if (typeof e.data === 'string') box.strings.push(e.data);
      else box.binary.push(new Uint8Array(e.data));
      for (const w of [...box.waiters]) w();
    });
    box.until = (pred, ms, what) => withTimeout(new Promise((resolve) => {
      const check = () => { if (pred()) { box.waiters.delete(check); resolve(); } };
      box.waiters.add(check);
      check();
    }), ms, what);
    return box;
  };

  const opened = (dc) => (dc.readyState === 'open' ? Promise.resolve()
    : new Promise((resolve) => dc.addEventListener('open', resolve, { once: true })));

  /** Local description once ICE gathering completed (no trickle: the SDP carries the candidates). */
  const gathered = async (pc, name) => {
    await withTimeout(pc.__gathered, 15_000, () => `ICE gathering on ${name} (${describe(pc)})`);
    return pc.localDescription.sdp;
  };

  const inbound = async (pc) => {
    const out = { video: null, audio: null };
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && (s.kind === 'video' || s.kind === 'audio')) {
        out[s.kind] = {
          framesDecoded: s.framesDecoded, packetsReceived: s.packetsReceived, bytesReceived: s.bytesReceived,
          frameWidth: s.frameWidth, frameHeight: s.frameHeight, packetsLost: s.packetsLost,
        };
      }
    });
    return out;
  };

  const media = () => withTimeout(
    navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240, frameRate: 30 }, audio: true }),
    10_000, 'getUserMedia with the fake devices');

  const x = {
    pc: null,
    video: false,
    dc: null,
    box: null,
    stream: null,

    /** A (offerer): relay-only connection; returns the offer with its relay candidates. */
    async offer({ iceServers, video }) {
      x.video = video;
      x.pc = watch(new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' }), 'A');
      if (video) {
        x.stream = await media();
        for (const t of x.stream.getTracks()) x.pc.addTrack(t, x.stream);
      } else {
        x.dc = x.pc.createDataChannel('xdp');
        x.box = record(x.dc);
      }
      await x.pc.setLocalDescription(await x.pc.createOffer());
      return { sdp: await gathered(x.pc, 'A'), candidates: x.pc.__candidates, errors: x.pc.__errors };
    },

    /** B (answerer): no ICE servers, host candidates only (or relay only on `iceServers`); returns the answer. */
    async answer({ sdp, video, iceServers = null }) {
      x.video = video;
      x.pc = watch(new RTCPeerConnection(iceServers ? { iceServers, iceTransportPolicy: 'relay' } : { iceServers: [] }), 'B');
      if (!video) {
        x.dcPromise = new Promise((resolve) => {
          x.pc.addEventListener('datachannel', (e) => { x.dc = e.channel; x.box = record(e.channel); resolve(e.channel); });
        });
      }
      await x.pc.setRemoteDescription({ type: 'offer', sdp });
      if (video) {
        // The callee's tracks go on the offered transceivers: one offer/answer, two-way call.
        x.stream = await media();
        for (const t of x.stream.getTracks()) x.pc.addTrack(t, x.stream);
      }
      await x.pc.setLocalDescription(await x.pc.createAnswer());
      return { sdp: await gathered(x.pc, 'B'), candidates: x.pc.__candidates, errors: x.pc.__errors };
    },

    async accept({ sdp }) {
      await x.pc.setRemoteDescription({ type: 'answer', sdp });
    },

    async connected({ ms = 20_000 } = {}) {
      const t0 = performance.now();
      await waitConnected(x.pc, ms);
      if (!x.video) {
        if (!x.dc) await withTimeout(x.dcPromise, 10_000, () => `datachannel event (${describe(x.pc)})`);
        await withTimeout(opened(x.dc), 10_000, () => `data channel open (${describe(x.pc)})`);
      }
      return performance.now() - t0;
    },

    /**
     * One string round trip a->b->a (see harness.mjs retryDataChannelStall:
     * it keeps Chromium's SCTP from stalling on a bulk send right after open);
     * call on both sides at once.
     */
    async roundTrip({ me }) {
      const { dc, box } = x;
      if (me === 'a') {
        dc.send('ping');
        await box.until(() => box.strings.length > 0, 10_000, 'pong at a');
        if (box.strings[0] !== 'pong') throw new Error(`a got ${JSON.stringify(box.strings)} instead of pong`);
      } else {
        await box.until(() => box.strings.length > 0, 10_000, 'ping at b');
        if (box.strings[0] !== 'ping') throw new Error(`b got ${JSON.stringify(box.strings)} instead of ping`);
        dc.send('pong');
      }
    },

    /** `count` binary messages from this side; checks the other side's `count` byte for byte and in order. */
    async bulk({ me, count, ms = 30_000 }) {
      const other = me === 'a' ? 'b' : 'a';
      const { dc, box } = x;
      let sentBytes = 0;
      for (let i = 0; i < count; i += 1) {
        const m = message(me, i);
        sentBytes += m.length;
        // Chromium refuses a send beyond its 16 MiB buffer; stay far below it.
        for (let k = 0; k < 200 && dc.bufferedAmount > 4 * 1024 * 1024; k += 1) await sleep(10);
        dc.send(m);
      }
      await box.until(() => box.binary.length >= count, ms,
        () => `${count} messages at ${me} (got ${box.binary.length}; ${describe(x.pc)})`);
      const bad = [];
      let gotBytes = 0;
      for (let i = 0; i < box.binary.length; i += 1) {
        const got = box.binary[i];
        gotBytes += got.length;
        const want = message(other, i);
        if (got.length !== want.length) { bad.push({ i, why: `length ${got.length}, want ${want.length}` }); continue; }
        for (let j = 0; j < want.length; j += 1) {
          if (got[j] !== want[j]) { bad.push({ i, why: `byte ${j} is ${got[j]}, want ${want[j]}` }); break; }
        }
      }
      return { sent: count, sentBytes, received: box.binary.length, gotBytes, bad: bad.slice(0, 10), badCount: bad.length };
    },

    /** Waits until this side decoded `threshold` frames and they keep rising over 1 s (20 s at most). */
    async frames({ threshold = 30, ms = 20_000 } = {}) {
      const t0 = performance.now();
      const samples = [];
      let first = null;
      let ok = false;
      while (performance.now() - t0 < ms) {
        const s = { t: Math.round(performance.now() - t0), ...(await inbound(x.pc)) };
        samples.push(s);
        const n = (v) => v.video?.framesDecoded ?? 0;
        if (!first && n(s) >= threshold) first = s;
        else if (first && s.t - first.t >= 1000) {
          if (n(s) > n(first)) { ok = true; break; }
          first = null;
        }
        await sleep(250);
      }
      return { ok, threshold, samples: samples.slice(-3) };
    },

    pair: () => selectedPair(x.pc),

    close() {
      if (x.pc) x.pc.close();
      if (x.stream) for (const t of x.stream.getTracks()) t.stop();
      Object.assign(x, { pc: null, dc: null, box: null, stream: null, dcPromise: null });
    },
  };
  window.xdp = x;
}

/** Calls window.xdp[fn](arg) in `page`. */
const call = (page, fn, arg = {}) => page.evaluate(({ fn, arg }) => window.xdp[fn](arg), { fn, arg });

/**
 * Offer from A, answer from B (each with its gathered candidates), both
 * connected; returns the SDP candidates and the connect time.
 */
async function connect(a, b, { video = false, hairpin = false } = {}) {
  const offer = await call(a, 'offer', { iceServers: ICE_SERVERS, video });
  const relays = offer.candidates.filter((c) => c.type === 'relay');
  assert.ok(relays.length > 0 && offer.candidates.every((c) => c.type === 'relay'),
    `A gathered no relay candidate or others too: ${JSON.stringify(offer)}`);
  for (const c of relays) assert.equal(c.address, ADDR.relay, `A's relayed address is not on r1: ${JSON.stringify(c)}`);
  assert.deepEqual(offer.errors, [], `A: candidate errors: ${JSON.stringify(offer.errors)}`);
  const answer = await call(b, 'answer', { sdp: offer.sdp, video, iceServers: hairpin ? ICE_SERVERS_B : null });
  if (hairpin) {
    assert.ok(answer.candidates.length > 0 && answer.candidates.every((c) => c.type === 'relay' && c.address === ADDR.relay),
      `B's candidates are not exactly relay ${ADDR.relay}: ${JSON.stringify(answer)}`);
    assert.deepEqual(answer.errors, [], `B: candidate errors: ${JSON.stringify(answer.errors)}`);
  } else {
    const hosts = answer.candidates.filter((c) => c.protocol === 'udp');
    assert.ok(hosts.length > 0 && hosts.every((c) => c.type === 'host' && c.address === ADDR.peer),
      `B's UDP candidates are not exactly host ${ADDR.peer}: ${JSON.stringify(answer.candidates)}`);
  }
  await call(a, 'accept', { sdp: answer.sdp });
  const [msA, msB] = await Promise.all([call(a, 'connected'), call(b, 'connected')]);
  return { offer, answer, connectMs: Math.max(msA, msB) };
}

/** Hairpin: both selected pairs relay <-> relay, both relayed addresses on r1, each the other's. */
async function assertRelayRelayPairs(a, b) {
  const [pa, pb] = [await call(a, 'pair'), await call(b, 'pair')];
  const ctx = JSON.stringify({ a: pa, b: pb });
  assert.ok(pa && pb, `no selected pair: ${ctx}`);
  for (const [name, p] of [['A', pa], ['B', pb]]) {
    assert.equal(p.local.candidateType, 'relay', `${name}'s local candidate is not relay: ${ctx}`);
    assert.equal(p.remote.candidateType, 'relay', `${name}'s remote candidate is not relay: ${ctx}`);
    assert.equal(p.local.relayProtocol, 'udp', `${name}'s relayProtocol is not udp: ${ctx}`);
    assert.equal(p.local.address, ADDR.relay, ctx);
    assert.ok(p.local.port >= MIN_PORT && p.local.port <= MAX_PORT, `${name}'s relay port outside ${MIN_PORT}-${MAX_PORT}: ${ctx}`);
    assert.ok(p.pair.state === 'succeeded' || (p.pair.state === 'in-progress' && p.pair.responsesReceived > 0),
      `${name}: selected pair not succeeded: ${ctx}`);
    assert.ok(p.pair.bytesSent > 0 && p.pair.bytesReceived > 0, `${name}: no bytes on the selected pair: ${ctx}`);
  }
  assert.equal(pa.remote.port, pb.local.port, `A's remote is not B's relayed address: ${ctx}`);
  assert.equal(pb.remote.port, pa.local.port, `B's remote is not A's relayed address: ${ctx}`);
  assert.notEqual(pa.local.port, pb.local.port, ctx);
  return { a: pa, b: pb };
}

/** A's selected pair: its relayed address <-> B's host; B's: its host <-> A's relayed address. */
async function assertRelayHostPairs(a, b) {
  const [pa, pb] = [await call(a, 'pair'), await call(b, 'pair')];
  const ctx = JSON.stringify({ a: pa, b: pb });
  assert.ok(pa && pb, `no selected pair: ${ctx}`);
  assert.equal(pa.local.candidateType, 'relay', `A's local candidate is not relay: ${ctx}`);
  assert.equal(pa.local.relayProtocol, 'udp', `A's relayProtocol is not udp: ${ctx}`);
  assert.equal(pa.local.address, ADDR.relay, ctx);
  assert.ok(pa.local.port >= MIN_PORT && pa.local.port <= MAX_PORT, `A's relay port outside ${MIN_PORT}-${MAX_PORT}: ${ctx}`);
  assert.equal(pa.remote.candidateType, 'host', `A's remote candidate is not B's host: ${ctx}`);
  assert.equal(pa.remote.address, ADDR.peer, ctx);
  assert.equal(pb.local.candidateType, 'host', `B's local candidate is not host: ${ctx}`);
  assert.equal(pb.local.address, ADDR.peer, ctx);
  assert.equal(pb.remote.candidateType, 'relay', `B's remote candidate is not A's relay: ${ctx}`);
  assert.equal(pb.remote.address, ADDR.relay, ctx);
  assert.equal(pb.remote.port, pa.local.port, `A and B disagree on A's relayed port: ${ctx}`);
  assert.equal(pa.remote.port, pb.local.port, `A and B disagree on B's port: ${ctx}`);
  for (const [name, p] of [['A', pa], ['B', pb]]) {
    assert.ok(p.pair.state === 'succeeded' || (p.pair.state === 'in-progress' && p.pair.responsesReceived > 0),
      `${name}: selected pair not succeeded: ${ctx}`);
    assert.ok(p.pair.bytesSent > 0 && p.pair.bytesReceived > 0, `${name}: no bytes on the selected pair: ${ctx}`);
  }
  return { a: pa, b: pb };
}

/**
 * After a call ended: turnd's "allocation deleted" line for A's relayed port
 * gives the allocation's own packet counts; /metrics counted `metrics` during
 * the call (`before`: relayedPackets() before it; the only allocation that
 * relayed). They are equal, with xdp as without: an ending allocation takes
 * its kernel entries out and its last kernel counts along before the line is
 * written (RelayIo::end_fast_path).
 */
async function checkAllocationCounts(t, mode, server, relayPorts, before) {
  const alloc = { to_peer: 0, to_client: 0 };
  for (const port of relayPorts) {
    const re = new RegExp(`allocation deleted .*relay=${ADDR.relay.replaceAll('.', '\\.')}:${port} .*packets_to_peer=(\\d+) packets_to_client=(\\d+)`);
    const m = await server.waitForLog(re);
    alloc.to_peer += Number(m[1]);
    alloc.to_client += Number(m[2]);
  }
  if (mode !== 'off') await new Promise((r) => setTimeout(r, 1_500));
  const now = relayedPackets();
  const metrics = { to_peer: now.to_peer.all - before.to_peer.all, to_client: now.to_client.all - before.to_client.all };
  t.diagnostic(`allocation(s) ${relayPorts.map((p) => `${ADDR.relay}:${p}`).join(' + ')} at their end: ${JSON.stringify(alloc)}; /metrics during the call: ${JSON.stringify(metrics)}`);
  assert.deepEqual(alloc, metrics, 'the allocation\'s packet counts (turnd\'s log at its end) differ from /metrics\' for the call');
}

checkTools();
process.on('exit', removeNamespaces);

before(() => {
  assertLoopbackOnlyNetwork();
});

after(() => {
  removeNamespaces();
  process.off('exit', removeNamespaces);
});

for (const mode of MODES) {
  describe(`xdp = "${mode}": Chromium A (relay only) <-> turnd <-> Chromium B (host)`, () => {
    const s = { dir: null, turnd: null, a: null, b: null, metrics: [] };

    /** Runs `fn`; on failure appends turnd's recent output and its metrics; checks turnd is alive. */
    const withLogs = (fn) => async (t) => {
      try {
        await fn(t);
      } catch (err) {
        let metrics = '';
        try { metrics = scrapeMetrics().text.split('\n').filter((l) => l.startsWith('turnd_xdp') || l.startsWith('turnd_relayed')).join('\n'); } catch (e) { metrics = String(e); }
        throw new Error(`${err.message}\n--- turnd metrics (xdp, relayed) ---\n${metrics}\n--- turnd (pid ${s.turnd?.pid}) recent output ---\n${s.turnd?.logTail()}`, { cause: err });
      }
      assert.equal(s.turnd.exited(), null, `turnd died during the test: ${JSON.stringify(s.turnd.exited())}\n${s.turnd.logTail()}`);
    };

    before(async () => {
      s.dir = mkdtempSync(path.join(tmpdir(), 'turnd-xdp-'));
      makeNamespaces(mode);
      s.turnd = await startRelay(mode);
      s.a = await browserIn(NS.client, s.dir);
      s.b = await browserIn(NS.peer, s.dir);
    });

    after(async () => {
      try {
        for (const side of [s.a, s.b]) if (side) await side.browser.close().catch(() => {});
        if (s.turnd) {
          const res = await s.turnd.stop();
          assert.ok(res.graceful, `turnd (pid ${s.turnd.pid}) did not exit within 5 s of SIGTERM: ${JSON.stringify(res)}\n${s.turnd.logTail()}`);
          // The program goes with turnd (bpf_link): nothing stale on the interfaces.
          for (const dev of ['r0', 'r1']) {
            const link = relayLink(dev);
            assert.equal(xdpFlag(link), null, `${dev} still has an XDP program after turnd exited:\n${link}`);
            assert.ok(!link.includes('prog/xdp'), `${dev} still has an XDP program after turnd exited:\n${link}`);
          }
        }
      } finally {
        removeNamespaces();
        if (s.dir) rmSync(s.dir, { recursive: true, force: true });
      }
    });

    test('the XDP program is attached to r0 and r1 (or to nothing with xdp off)', withLogs(async (t) => {
      for (const dev of ['r0', 'r1']) {
        const link = relayLink(dev);
        t.diagnostic(`${dev}: ${link.split('\n').filter((l) => /xdp|prog/.test(l)).join(' | ').trim() || '(no xdp)'}`);
        const want = { off: null, generic: 'xdpgeneric', native: 'xdp' }[mode];
        assert.equal(xdpFlag(link), want, `${dev}: XDP attach mode is not ${want}:\n${link}`);
        if (mode !== 'off') assert.match(link, /prog\/xdp id \d+ name turnd_xdp\b/, `${dev}: turnd's XDP program is not attached:\n${link}`);
      }
      if (mode !== 'off') {
        const m = scrapeMetrics();
        for (const dev of ['r0', 'r1']) {
          assert.equal(m.get('turnd_xdp_attached', { interface: dev, mode }), 1,
            `turnd_xdp_attached{interface="${dev}",mode="${mode}"} is not 1:\n${m.text.split('\n').filter((l) => l.includes('xdp')).join('\n')}`);
        }
      }
    }));

    /** Hairpin packets the program sent (ChannelData in, ChannelData out). */
    const hairpinSent = () => {
      const m = scrapeMetrics();
      return (m.get('turnd_xdp_sent_packets_total', { path: 'hairpin_tx' }) ?? 0)
        + (m.get('turnd_xdp_sent_packets_total', { path: 'hairpin_redirect' }) ?? 0);
    };

    /** The data channel call: A <-> B's host, or (`hairpin`) A <-> B both relay-only on this turnd. */
    const dataChannelCall = (hairpin) => withLogs(async (t) => {
      const before = relayedPackets();
      const hairpinBefore = hairpinSent();
      let pairs = null;
      const { connectMs } = await connect(s.a.page, s.b.page, { hairpin });
      t.diagnostic(`connected in ${Math.round(connectMs)} ms`);
      try {
        await Promise.all([call(s.a.page, 'roundTrip', { me: 'a' }), call(s.b.page, 'roundTrip', { me: 'b' })]);
        // By now the channel's kernel entry is written (100 ms tick after
        // ChannelBind); 1.5 s more lets the counters so far be read back.
        await new Promise((r) => setTimeout(r, 1_500));
        const steady = relayedPackets();
        const [atA, atB] = await Promise.all([
          call(s.a.page, 'bulk', { me: 'a', count: MESSAGES }),
          call(s.b.page, 'bulk', { me: 'b', count: MESSAGES }),
        ]);
        t.diagnostic(`a->b ${atA.sentBytes} bytes in ${atA.sent} messages, b->a ${atB.sentBytes} bytes in ${atB.sent}`);
        for (const [name, r, from] of [['B', atB, atA], ['A', atA, atB]]) {
          assert.equal(r.badCount, 0, `${name}: ${r.badCount} messages differ: ${JSON.stringify(r.bad)}`);
          assert.equal(r.received, MESSAGES, `${name} got ${r.received} messages, want ${MESSAGES}`);
          assert.equal(r.gotBytes, from.sentBytes, `${name} got ${r.gotBytes} bytes, the other side sent ${from.sentBytes}`);
        }
        pairs = hairpin ? await assertRelayRelayPairs(s.a.page, s.b.page) : await assertRelayHostPairs(s.a.page, s.b.page);
        t.diagnostic(`A ${pairs.a.local.address}:${pairs.a.local.port} (relay) <-> B ${pairs.b.local.address}:${pairs.b.local.port} (${hairpin ? 'relay' : 'host'})`);
        // The whole call: its first packets go through user space until the
        // entry is written. The messages, sent once the entry is there: (almost) all in the kernel.
        await checkDeltas(t, mode, [
          { what: 'the whole call', before, min: 0.5 },
          { what: `the ${MESSAGES} x 2 messages (entry written)`, before: steady, min: 0.9 },
        ]);
        const channels = hairpin ? 2 : 1;
        if (mode !== 'off') t.diagnostic(`turnd_xdp_entries during the call: ${await waitEntries((n) => n >= channels, `>= ${channels} (the call's channels)`)}`);
        const hairpins = hairpinSent() - hairpinBefore;
        t.diagnostic(`hairpin packets sent by the program during the call: ${hairpins}`);
        if (hairpin && mode !== 'off') assert.ok(hairpins > 0, 'the program sent no hairpin packet (turnd_xdp_sent_packets_total{path="hairpin_*"})');
        if (!hairpin) assert.equal(hairpins, 0, 'hairpin packets in a call that has none');
      } finally {
        await call(s.a.page, 'close');
        await call(s.b.page, 'close');
      }
      // Chromium ends its allocation (Refresh 0) on close: its kernel entries go.
      if (mode !== 'off') await waitEntries((n) => n === 0, '0 once the call ended (Refresh 0)');
      await checkAllocationCounts(t, mode, s.turnd, hairpin ? [pairs.a.local.port, pairs.b.local.port] : [pairs.a.local.port], before);
    });

    test(`a data channel carries ${MESSAGES} binary messages each way byte for byte`, { timeout: 120_000 }, dataChannelCall(false));

    test('a two-way video call decodes frames on both sides', { timeout: 120_000 }, withLogs(async (t) => {
      const before = relayedPackets();
      let pairs = null;
      const { connectMs } = await connect(s.a.page, s.b.page, { video: true });
      t.diagnostic(`connected in ${Math.round(connectMs)} ms`);
      try {
        const [fa, fb] = await Promise.all([call(s.a.page, 'frames'), call(s.b.page, 'frames')]);
        const ctx = JSON.stringify({ a: fa, b: fb });
        t.diagnostic(`last samples: A ${JSON.stringify(fa.samples.at(-1))}; B ${JSON.stringify(fb.samples.at(-1))}`);
        for (const [name, f] of [['A', fa], ['B', fb]]) {
          assert.ok(f.ok, `${name}: video frames decoded did not reach ${f.threshold} and keep rising within 20 s: ${ctx}`);
          const last = f.samples.at(-1);
          assert.ok(last.video.frameWidth > 0, `${name}: no decoded frame size: ${ctx}`);
          assert.ok(last.audio?.packetsReceived > 0, `${name}: no audio packets: ${ctx}`);
        }
        pairs = await assertRelayHostPairs(s.a.page, s.b.page);
        await checkDeltas(t, mode, [{ what: 'the whole call', before, min: 0.5 }]);
        if (mode !== 'off') t.diagnostic(`turnd_xdp_entries during the call: ${await waitEntries((n) => n >= 1, '>= 1 (the call\'s channel)')}`);
      } finally {
        await call(s.a.page, 'close');
        await call(s.b.page, 'close');
      }
      // Chromium ends its allocation (Refresh 0) on close: its kernel entries go.
      if (mode !== 'off') await waitEntries((n) => n === 0, '0 once the call ended (Refresh 0)');
      await checkAllocationCounts(t, mode, s.turnd, [pairs.a.local.port], before);
    }));

    // Both peers relay-only on this turnd: every packet goes from one relayed
    // address of this server to another (the hairpin, relayed in the kernel
    // since commit 5913169). B's TURN server is turnd's listener on r1.
    test(`hairpin (B relay-only on this turnd too): ${MESSAGES} messages each way byte for byte`, { timeout: 120_000 }, dataChannelCall(true));

    test(mode === 'off' ? 'metrics: all relayed in user space, no xdp series'
      : 'metrics: the kernel relayed packets both ways, most of them', withLogs(async (t) => {
      const m = scrapeMetrics();
      const relevant = m.text.split('\n').filter((l) => /^turnd_(xdp_|relayed_|user_relayed_)/.test(l));
      t.diagnostic(relevant.join(' | '));
      const get = m.dir;
      for (const direction of ['to_peer', 'to_client']) {
        const all = get('turnd_relayed_packets_total', direction);
        assert.ok(all > 0, `turnd_relayed_packets_total{direction="${direction}"} is ${all}`);
        // One user relayed everything: its byte total (kernel part included) is the server's.
        const allBytes = get('turnd_relayed_bytes_total', direction);
        const userBytes = m.dir('turnd_user_relayed_bytes_total', direction);
        assert.equal(userBytes, allBytes, `${direction}: turnd_user_relayed_bytes_total{user="${USER}"} is ${userBytes}, turnd_relayed_bytes_total ${allBytes}`);
        const kernel = get('turnd_xdp_relayed_packets_total', direction);
        if (mode === 'off') {
          assert.ok(kernel === null || kernel === 0, `xdp off, but turnd_xdp_relayed_packets_total{direction="${direction}"} is ${kernel}`);
          continue;
        }
        assert.ok(kernel > 0, `turnd_xdp_relayed_packets_total{direction="${direction}"} is ${kernel}`);
        t.diagnostic(`${direction}: ${kernel} of ${all} packets in the kernel (${(100 * kernel / all).toFixed(1)} %)`);
        assert.ok(kernel <= all, `${direction}: kernel ${kernel} > all ${all} (turnd_relayed_packets_total must include the kernel part)`);
        assert.ok(kernel > all / 2, `${direction}: only ${kernel} of ${all} relayed packets went through the kernel`);
        const bytes = get('turnd_xdp_relayed_bytes_total', direction);
        assert.ok(bytes > 0, `turnd_xdp_relayed_bytes_total{direction="${direction}"} is ${bytes}`);
      }
    }));
  });
}
