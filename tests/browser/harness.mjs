// Shared helpers for the Chromium end-to-end tests: start turnd, launch Debian's
// chromium through playwright-core, and the in-page WebRTC helpers.
//
// Run through scripts/browser-tests.sh, which puts node, turnd and chromium in a
// private network namespace that has only loopback.

import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { accessSync, appendFileSync, constants, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';
import { after, afterEach, before } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const REALM = 'test.example';
export const USER = 'alice';
export const PASSWORD = 'secret';

// Relay ports of each browser test file, handed out here (files run in
// parallel). tests/support/ports.rs reserves the same blocks, so the Rust
// table's overlap check covers these too.
export const RELAY_PORTS = {
  webrtc: [40000, 40999],
  rest: [41000, 41999],
  tcp_tls: [23920, 23999],
  admin: [25900, 25999],
  fleet: [38300, 38599],
};
export const [MIN_PORT, MAX_PORT] = RELAY_PORTS.webrtc;

// playwright-core's own --disable-features list (lib/coreBundle.js,
// packages/playwright-core/src/server/chromium/chromiumSwitches.ts, 1.65.1).
// Chromium honours only the LAST --disable-features switch, so ours must repeat
// playwright's list; the command-line test checks on chrome://version that every
// feature playwright disables is still in the effective (last) switch.
export const PLAYWRIGHT_DISABLED_FEATURES = [
  'AvoidUnnecessaryBeforeUnloadCheckSync',
  'DestroyProfileOnBrowserClose',
  'HttpsUpgrades',
  'HttpsFirstBalancedModeAutoEnable',
  'LensOverlay',
  'MediaRouter',
  'PaintHolding',
  'ThirdPartyStoragePartitioning',
  'AvoidCorsURLLoaderRestartOnRedirect',
  'TcpPortRandomizationWin',
  'OptimizationHints',
  'NetworkTimeServiceQuerying',
  'AimEnabled',
  'PreconnectToSearch',
  'msForceBrowserSignIn',
  'msEdgeUpdateLaunchServicesPreferredVersion',
];
export const DISABLED_FEATURES = [...PLAYWRIGHT_DISABLED_FEATURES, 'WebRtcHideLocalIpsWithMdns'];

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
  `--disable-features=${DISABLED_FEATURES.join(',')}`,
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
];

/** Refuse to run where Chromium could reach anything but loopback. */
export function assertLoopbackOnlyNetwork() {
  if (process.env.TURND_BROWSER_TESTS_ALLOW_HOST_NETWORK === '1') return;
  const names = Object.keys(networkInterfaces()).filter((n) => n !== 'lo');
  if (names.length > 0) {
    throw new Error(
      `browser tests must run in a network namespace with only loopback, found interfaces: ${names.join(', ')}; ` +
        'run them with scripts/browser-tests.sh (unshare --net)',
    );
  }
}

export function resolveTurndBin() {
  const bin = path.resolve(repoRoot, process.env.TURND_BIN || 'target/debug/turnd');
  if (!existsSync(bin)) {
    throw new Error(`turnd binary not found at ${bin} (set TURND_BIN or run cargo build)`);
  }
  accessSync(bin, constants.X_OK);
  return bin;
}

/**
 * Start turnd on an ephemeral UDP port and wait (bounded) for its
 * "turnd: listening on udp 127.0.0.1:PORT" line on stdout.
 *
 * Options (all optional): `extraArgs`, more turnd arguments appended after the
 * standard ones (e.g. ['--static-auth-secret', 'S']); `minPort`/`maxPort`, the
 * relay port range (default MIN_PORT-MAX_PORT; test files run in parallel, so
 * give each its own range); `listeners`, which "turnd: listening on PROTO
 * 127.0.0.1:PORT" lines to wait for (default ['udp']; e.g. ['udp', 'tcp', 'tls']
 * with --cert/--pkey/--tls-listening-port 0); `netns`, a network namespace
 * to run it in (`ip netns exec NS turnd ...`: ip execs turnd, the PID is
 * turnd's), with `ip`, the listening and relay address there (default
 * 127.0.0.1), and `listeningPort` (default 0). The returned server has `port`
 * (the UDP port, else the first one seen), `tcpPort`, `tlsPort` (the first TLS
 * port) and `tlsPorts`. `ip` (default 127.0.0.1) is the listening and relay
 * address (tests/browser/two-nodes/ runs two turnd on 192.0.2.1 and
 * 192.0.2.2); `stderrLines()` gives every line turnd wrote to stderr (its
 * logs).
 */
export async function startTurnd({
  timeoutMs = 10_000, extraArgs = [], minPort = MIN_PORT, maxPort = MAX_PORT, listeners = ['udp'],
  netns = null, ip = '127.0.0.1', listeningPort = 0,
} = {}) {
  const bin = resolveTurndBin();
  const args = [
    '--listening-ip', ip,
    '--listening-port', String(listeningPort),
    '--relay-ip', ip,
    '--min-port', String(minPort),
    '--max-port', String(maxPort),
    '--realm', REALM,
    '--user', `${USER}:${PASSWORD}`,
    '--allow-loopback-peers',
    '--verbose',
    ...extraArgs,
  ];
  // detached: turnd leads its own process group, so the SIGKILL fallback also
  // reaches anything it might have started. SIGTERM goes to turnd's PID only.
  const [program, argv] = netns === null ? [bin, args] : ['ip', ['netns', 'exec', netns, bin, ...args]];
  const child = spawn(program, argv, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const killGroup = () => {
    try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
    child.stdout.destroy();
    child.stderr.destroy();
  };
  const logTail = [];
  const stderrSeen = [];
  // TURND_LOG=FILE keeps turnd's whole output (it is also shown, last 200 lines, on failure).
  const logFile = process.env.TURND_LOG ? path.resolve(process.env.TURND_LOG) : null;
  const keep = (stream, line) => {
    if (logFile) appendFileSync(logFile, `[${stream}] ${line}\n`);
    logTail.push(`[${stream}] ${line}`);
    if (logTail.length > 200) logTail.shift();
  };
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  // Never leave a turnd behind, even if the runner dies between hooks.
  const killOnExit = () => { if (exited === null) killGroup(); };
  process.on('exit', killOnExit);

  createInterface({ input: child.stderr }).on('line', (l) => { stderrSeen.push(l); keep('stderr', l); });
  const stdoutLines = createInterface({ input: child.stdout });
  // Every stdout line, for server.waitForStdout (added for admin.test.mjs).
  const stdoutSeen = [];
  const stdoutWaiters = new Set();
  stdoutLines.on('line', (line) => {
    stdoutSeen.push(line);
    for (const w of [...stdoutWaiters]) w(line);
  });

  const server = {
    bin,
    args,
    child,
    pid: child.pid,
    port: null,
    tcpPort: null,
    tlsPort: null,
    tlsPorts: [],
    logTail: () => logTail.join('\n'),
    stderrLines: () => [...stderrSeen],
    exited: () => exited,
    async stop({ graceMs = 5_000 } = {}) {
      process.off('exit', killOnExit);
      if (exited !== null) return { ...exited, graceful: false, alreadyExited: true };
      process.kill(child.pid, 'SIGTERM');
      let timer;
      const res = await Promise.race([
        exitPromise,
        new Promise((r) => { timer = setTimeout(() => r(null), graceMs); }),
      ]);
      clearTimeout(timer);
      if (res !== null) { killGroup(); return { ...res, graceful: true }; }
      killGroup();
      await exitPromise;
      return { ...exited, graceful: false };
    },
  };

  const seen = { udp: [], tcp: [], tls: [] };
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(
        `turnd did not print "turnd: listening on ${listeners.join('/')} ${ip}:PORT" within ${timeoutMs} ms\n` +
          `command: ${bin} ${args.join(' ')}\n--- turnd output ---\n${server.logTail()}`,
      ));
    }, timeoutMs);
    child.on('error', (err) => { clearTimeout(timer); reject(new Error(`cannot spawn ${bin}: ${err.message}`)); });
    exitPromise.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(
        `turnd exited (code ${code}, signal ${signal}) before listening\n` +
          `command: ${bin} ${args.join(' ')}\n--- turnd output ---\n${server.logTail()}`,
      ));
    });
    stdoutLines.on('line', (line) => {
      keep('stdout', line);
      const m = /^turnd: listening on (udp|tcp|tls) (\S+):(\d+)\s*$/.exec(line);
      if (!m || m[2] !== ip) return;
      seen[m[1]].push(Number(m[3]));
      if (listeners.every((p) => seen[p].length > 0)) {
        clearTimeout(timer);
        resolve(seen.udp[0] ?? seen[listeners[0]][0]);
      }
    });
  }).catch(async (err) => {
    const wasRunning = exited === null;
    killGroup();
    if (wasRunning) await exitPromise;
    process.off('exit', killOnExit);
    throw err;
  });
  if (!(port > 0 && port < 65536)) throw new Error(`turnd printed an invalid port ${port}`);
  server.port = port;
  // Added for admin.test.mjs: other stdout lines (admin, prometheus listeners).
  Object.assign(server, {
    /** Every stdout line so far. */
    stdoutLines: () => [...stdoutSeen],
    /**
     * Resolves with the match of the first stdout line (past or future) that
     * matches `re`; rejects after `timeoutMs` or when turnd exits first.
     */
    waitForStdout(re, { timeoutMs = 10_000 } = {}) {
      for (const line of stdoutSeen) {
        const m = re.exec(line);
        if (m) return Promise.resolve(m);
      }
      return new Promise((resolve, reject) => {
        let waiter = null;
        const done = () => { clearTimeout(timer); stdoutWaiters.delete(waiter); };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`turnd printed no stdout line matching ${re} within ${timeoutMs} ms\n` +
            `--- turnd output ---\n${server.logTail()}`));
        }, timeoutMs);
        waiter = (line) => {
          const m = re.exec(line);
          if (m) { done(); resolve(m); }
        };
        stdoutWaiters.add(waiter);
        exitPromise.then(({ code, signal }) => {
          if (!stdoutWaiters.has(waiter)) return;
          done();
          reject(new Error(`turnd exited (code ${code}, signal ${signal}) before printing a line matching ${re}\n` +
            `--- turnd output ---\n${server.logTail()}`));
        });
      });
    },
    /**
     * The admin API's base URL (`http://127.0.0.1:PORT/`), from turnd's
     * `turnd: listening on admin http://ADDR/` line (needs --admin-token and
     * --admin-listen 127.0.0.1:PORT, port 0 allowed).
     */
    async waitForAdmin({ timeoutMs = 10_000 } = {}) {
      const m = await server.waitForStdout(/^turnd: listening on admin (http:\/\/127\.0\.0\.1:\d+\/)\s*$/, { timeoutMs });
      return m[1];
    },
  });
  server.tcpPort = seen.tcp[0] ?? null;
  server.tlsPorts = seen.tls;
  server.tlsPort = seen.tls[0] ?? null;
  return server;
}

/**
 * Launch Chromium with CHROMIUM_ARGS. Options (all optional): `extraArgs`,
 * more switches appended; `withoutArgs`, switches of CHROMIUM_ARGS left out;
 * `hostResolverRules`, a replacement for the value of the single
 * --host-resolver-rules switch (e.g.
 * 'MAP localhost 127.0.0.1 , MAP * ~NOTFOUND , EXCLUDE 127.0.0.1');
 * `executablePath`, what playwright starts (default CHROMIUM; a wrapper that
 * execs CHROMIUM in a network namespace, for fleet.test.mjs).
 */
export async function launchChromium({
  extraArgs = [], withoutArgs = [], hostResolverRules = null, executablePath = CHROMIUM,
} = {}) {
  if (!existsSync(CHROMIUM)) throw new Error(`chromium not found at ${CHROMIUM} (apt-get install chromium)`);
  const profile = mkdtempSync(path.join(tmpdir(), 'turnd-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath,
      headless: true,
      args: [
        ...CHROMIUM_ARGS.filter((a) => !withoutArgs.includes(a)).map((a) => (hostResolverRules !== null && a.startsWith('--host-resolver-rules=')
          ? `--host-resolver-rules=${hostResolverRules}` : a)),
        ...extraArgs,
      ],
      timeout: 30_000,
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    throw err;
  }
  return {
    context,
    async close() {
      try { await context.close(); } finally { rmSync(profile, { recursive: true, force: true }); }
    },
  };
}

/**
 * Installs window.rtc: small helpers used by page.evaluate. Must be
 * self-contained: it is serialised into the page.
 */
export function installPageHelpers() {
  const withTimeout = (promise, ms, what) => {
    let timer;
    return Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => {
          const desc = typeof what === 'function' ? what() : what;
          reject(new Error(`timed out after ${ms} ms waiting for ${desc}`));
        }, ms);
      }),
    ]).finally(() => clearTimeout(timer));
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** Track a connection's local candidates and candidate errors. */
  const watch = (pc, name) => {
    pc.__name = name;
    pc.__candidates = [];
    pc.__errors = [];
    pc.__pending = [];
    pc.__addErrors = [];
    pc.__gathered = new Promise((resolve) => {
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve();
      });
      pc.addEventListener('icecandidate', (e) => { if (!e.candidate) resolve(); });
    });
    pc.addEventListener('icecandidate', (e) => {
      if (e.candidate && e.candidate.candidate) {
        const c = e.candidate;
        pc.__candidates.push({
          candidate: c.candidate, type: c.type, address: c.address, port: c.port,
          protocol: c.protocol, relatedAddress: c.relatedAddress, relatedPort: c.relatedPort, url: c.url,
        });
      }
    });
    pc.addEventListener('icecandidateerror', (e) => {
      pc.__errors.push({ errorCode: e.errorCode, errorText: e.errorText, url: e.url, address: e.address, port: e.port });
    });
    return pc;
  };

  const describe = (pc) =>
    `${pc.__name}: connectionState=${pc.connectionState} iceConnectionState=${pc.iceConnectionState} ` +
    `iceGatheringState=${pc.iceGatheringState} candidates=${JSON.stringify(pc.__candidates)} ` +
    `candidateErrors=${JSON.stringify(pc.__errors)} addIceCandidateErrors=${JSON.stringify(pc.__addErrors)}`;

  /** Wire a's and b's candidates to each other, queueing until the remote description is set. */
  const link = (a, b) => {
    const deliver = (to) => async (e) => {
      if (!e.candidate) return;
      if (to.remoteDescription) {
        try {
          await to.addIceCandidate(e.candidate);
        } catch (err) {
          to.__addErrors.push(`${e.candidate.candidate}: ${err}`);
        }
      } else {
        to.__pending.push(e.candidate);
      }
    };
    a.addEventListener('icecandidate', deliver(b));
    b.addEventListener('icecandidate', deliver(a));
  };
  const flush = async (pc) => {
    const q = pc.__pending.splice(0);
    for (const c of q) await pc.addIceCandidate(c);
  };

  /** Offer from a, answer from b; beforeAnswer(b) runs after b has the offer. */
  const negotiate = async (a, b, beforeAnswer) => {
    const offer = await a.createOffer();
    await a.setLocalDescription(offer);
    await b.setRemoteDescription(offer);
    await flush(b);
    if (beforeAnswer) await beforeAnswer(b);
    const answer = await b.createAnswer();
    await b.setLocalDescription(answer);
    await a.setRemoteDescription(answer);
    await flush(a);
  };

  const waitConnected = (pc, ms) =>
    withTimeout(
      new Promise((resolve, reject) => {
        const check = () => {
          if (pc.connectionState === 'connected') resolve();
          else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
            reject(new Error(`connection ${pc.connectionState}; ${describe(pc)}`));
          }
        };
        pc.addEventListener('connectionstatechange', check);
        check();
      }),
      ms,
      () => `connectionState 'connected' (${describe(pc)})`,
    );

  /** The selected candidate pair and its local and remote candidates, from getStats. */
  const selectedPair = async (pc) => {
    const stats = await pc.getStats();
    const byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      stats.forEach((s) => {
        if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = pair || s;
      });
    }
    if (!pair) return null;
    const clean = (s) => (s ? JSON.parse(JSON.stringify(s)) : null);
    return {
      pair: clean(pair),
      local: clean(byId.get(pair.localCandidateId)),
      remote: clean(byId.get(pair.remoteCandidateId)),
    };
  };

  /**
   * Two relay-only peer connections with `iceServers`, linked in-page, and a
   * data channel `label` both ways: `count` messages `${prefix}a->b #i` (and
   * b->a), then a 16 KiB one of `bigChar` when given (b uses `iceServersB`
   * when given, else `iceServers`) (`size` pads each
   * numbered message to that many characters). With `roundTrip` (the
   * default) one ping/pong round trip a->b->a is made when both channels are
   * open, before the bulk send (see retryDataChannelStall). Connecting may
   * take `connectMs`, the messages `messagesMs`. Resolves with what was sent
   * and received, the connect time, both selected pairs, candidates and
   * errors.
   */
  const relayDataChannel = async (iceServers, {
    label = 'chat', count = 20, prefix = '', bigChar = null, size = 0, roundTrip = true,
    connectMs = 15_000, messagesMs = 10_000, iceServersB = null,
  } = {}) => {
    const config = { iceServers, iceTransportPolicy: 'relay' };
    const a = watch(new RTCPeerConnection(config), 'a');
    const b = watch(new RTCPeerConnection({ ...config, iceServers: iceServersB ?? iceServers }), 'b');
    try {
      link(a, b);
      const dcA = a.createDataChannel(label);
      const dcBPromise = new Promise((resolve) => { b.ondatachannel = (e) => resolve(e.channel); });
      const t0 = performance.now();
      await negotiate(a, b);
      await Promise.all([waitConnected(a, connectMs), waitConnected(b, connectMs)]);
      const connected = performance.now() - t0;
      const dcB = await withTimeout(dcBPromise, 10_000, () => `datachannel event on b (${describe(b)})`);
      const opened = (dc) => (dc.readyState === 'open' ? Promise.resolve()
        : new Promise((resolve) => dc.addEventListener('open', resolve, { once: true })));
      await withTimeout(Promise.all([opened(dcA), opened(dcB)]), 10_000, 'both data channels open');
      if (roundTrip) {
        const first = (dc) => new Promise((resolve) => dc.addEventListener('message', (e) => resolve(e.data), { once: true }));
        const pingAtB = first(dcB).then((m) => { dcB.send(`pong:${m}`); return m; });
        const pongAtA = first(dcA);
        dcA.send('ping');
        const [ping, pong] = await withTimeout(Promise.all([pingAtB, pongAtA]), messagesMs, 'data channel messages both ways (ping/pong round trip)');
        if (ping !== 'ping' || pong !== 'pong:ping') throw new Error(`round trip got ${JSON.stringify([ping, pong])}`);
      }

      const messages = (dir, end) => {
        const m = Array.from({ length: count }, (_, i) => `${prefix}${dir} #${i}`.padEnd(size, '.'));
        if (bigChar) m.push(bigChar.repeat(16 * 1024) + end);
        return m;
      };
      const fromA = messages('a->b', 'A');
      const fromB = messages('b->a', 'B');
      const collect = (dc, n) => new Promise((resolve) => {
        const got = [];
        dc.addEventListener('message', (e) => { got.push(e.data); if (got.length === n) resolve(got); });
      });
      const gotAtB = collect(dcB, fromA.length);
      const gotAtA = collect(dcA, fromB.length);
      for (const m of fromA) dcA.send(m);
      for (const m of fromB) dcB.send(m);
      const [atB, atA] = await withTimeout(Promise.all([gotAtB, gotAtA]), messagesMs, 'data channel messages both ways');
      return {
        connectMs: connected,
        sentA: fromA, sentB: fromB, atA, atB,
        pairA: await selectedPair(a), pairB: await selectedPair(b),
        candidatesA: a.__candidates, candidatesB: b.__candidates,
        errorsA: a.__errors, errorsB: b.__errors,
      };
    } finally {
      a.close();
      b.close();
    }
  };

  /**
   * One connection with `config` (named `name`) gathers ICE candidates for a
   * data channel offer, within 15 s; with `lateError` (an error code) it
   * waits up to 500 ms more for that icecandidateerror when gathering ended
   * without it. Resolves with the candidates, the candidate errors and the
   * gathering state; the connection is closed.
   */
  const gather = async (config, name, { lateError = null } = {}) => {
    const pc = watch(new RTCPeerConnection(config), name);
    try {
      pc.createDataChannel('probe');
      await pc.setLocalDescription(await pc.createOffer());
      await withTimeout(pc.__gathered, 15_000, () => `ICE gathering to complete (${describe(pc)})`);
      if (lateError !== null && !pc.__errors.some((e) => e.errorCode === lateError)) {
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, 500);
          pc.addEventListener('icecandidateerror', (e) => {
            if (e.errorCode === lateError) { clearTimeout(timer); resolve(); }
          });
        });
      }
      return { candidates: pc.__candidates, errors: pc.__errors, state: pc.iceGatheringState };
    } finally {
      pc.close();
    }
  };

  window.rtc = {
    withTimeout, sleep, watch, describe, link, flush, negotiate, waitConnected, selectedPair, relayDataChannel, gather,
  };
}

/**
 * window.rtc.relayDataChannel(iceServers, options) in `page` (helpers
 * installed).
 */
export function relayDataChannel(page, iceServers, options = {}) {
  return page.evaluate(({ iceServers, options }) => window.rtc.relayDataChannel(iceServers, options), { iceServers, options });
}

/** window.rtc.gather(config, name, options) in `page` (helpers installed). */
export function gatherCandidates(page, config, name, options = {}) {
  return page.evaluate(({ config, name, options }) => window.rtc.gather(config, name, options), { config, name, options });
}

/**
 * Checks a relayDataChannel result: every message arrived intact and in
 * order both ways; both selected pairs are relay/relay over `relayProtocol`
 * to the client, with UDP relayed addresses on `address` (default
 * 127.0.0.1) within `minPort`-`maxPort` (b's: `b.address`, `b.minPort`,
 * `b.maxPort` where given), succeeded (or in-progress with responses, while a
 * consent check is out), nominated and carrying bytes; each side's remote
 * candidate is the other's relayed address, the two differ, and no candidate
 * errors were reported.
 */
export function assertRelayedBothWays(result, {
  relayProtocol, minPort, maxPort, address = '127.0.0.1', b = {},
}) {
  assert.deepEqual(result.atB, result.sentA, 'messages a->b did not arrive intact and in order');
  assert.deepEqual(result.atA, result.sentB, 'messages b->a did not arrive intact and in order');
  const own = { a: { address, minPort, maxPort }, b: { address, minPort, maxPort, ...b } };
  for (const [name, sel] of [['a', result.pairA], ['b', result.pairB]]) {
    const { address, minPort, maxPort } = own[name];
    assert.ok(sel, `${name}: no selected candidate pair in getStats`);
    const ctx = JSON.stringify(sel);
    assert.equal(sel.local?.candidateType, 'relay', `${name}: local candidate is not relay: ${ctx}`);
    assert.equal(sel.remote?.candidateType, 'relay', `${name}: remote candidate is not relay: ${ctx}`);
    assert.equal(sel.local.relayProtocol, relayProtocol, `${name}: local relayProtocol is not ${relayProtocol}: ${ctx}`);
    // The relayed address itself is UDP (REQUESTED-TRANSPORT UDP); only the client-server leg may be TCP/TLS.
    assert.equal(sel.local.protocol, 'udp', `${name}: relayed candidate protocol is not udp: ${ctx}`);
    assert.equal(sel.local.address, address, `${name}: relayed address is not ${address}: ${ctx}`);
    assert.ok(sel.local.port >= minPort && sel.local.port <= maxPort,
      `${name}: relayed port ${sel.local.port} outside ${minPort}-${maxPort}: ${ctx}`);
    // Chromium reports the selected pair as 'in-progress' while a consent
    // check on it is outstanding; it has succeeded before (responses came back).
    assert.ok(sel.pair.state === 'succeeded' || (sel.pair.state === 'in-progress' && sel.pair.responsesReceived > 0),
      `${name}: selected pair not succeeded: ${ctx}`);
    assert.ok(sel.pair.nominated, `${name}: selected pair not nominated: ${ctx}`);
    assert.ok(sel.pair.bytesSent > 0 && sel.pair.bytesReceived > 0, `${name}: no bytes over the selected pair: ${ctx}`);
  }
  // Each side's remote relay candidate is the other side's own relayed address.
  assert.equal(result.pairA.remote.port, result.pairB.local.port, 'a and b disagree on b\'s relayed address');
  assert.equal(result.pairB.remote.port, result.pairA.local.port, 'b and a disagree on a\'s relayed address');
  assert.notEqual(result.pairA.local.port, result.pairB.local.port, 'both allocations got the same relay port');
  assert.deepEqual(result.errorsA, [], `a reported candidate errors: ${JSON.stringify(result.errorsA)}`);
  assert.deepEqual(result.errorsB, [], `b reported candidate errors: ${JSON.stringify(result.errorsB)}`);
}

/**
 * A one-page HTTP server on 127.0.0.1 (ephemeral port). getUserMedia needs a secure
 * context, and about:blank (an opaque origin) is not one; http://127.0.0.1 is.
 */
export async function startPageServer() {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end('<!doctype html><title>turnd browser test</title>');
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

export function turnUrl(port) {
  return `turn:127.0.0.1:${port}?transport=udp`;
}

/**
 * Runs `attempt` (a relay/relay data-channel exchange in the page) and runs
 * it once more when Chromium's data channel stalled: connected, channels
 * open, but the messages never arrived ("waiting for data channel messages
 * both ways"). The stall is Chromium's, not the relay's: measured by hand
 * with tests/browser/stall-rate.mjs (50 x 1 KB messages each way, release
 * turnd; figures in issue 11's note), bulk-sending as soon as both channels
 * are open stalled in 19 of 100 runs with 2 relay workers and 10 of 100
 * with 1 on a loaded 2-core machine (coturn 4.6.1 stalls too: 1 in 60 on a
 * quiet one), always with the answerer's messages never reaching the
 * offerer; a packet trace of such a stall (RUST_LOG=turnd::packet=trace)
 * showed turnd relaying every datagram of both peers, in order and at the
 * right lengths, while Chromium's SCTP went quiet. One ping/pong round trip
 * before the bulk send (relayDataChannel's `roundTrip`, on by default)
 * removed the race: 0 stalls in 300 runs, interleaved with the runs above.
 * The retry stays as a safety net for a stall of the round trip itself; a
 * relay that loses data fails both attempts.
 * The retry is reported as a test diagnostic, never hidden.
 */
export async function retryDataChannelStall(t, attempt) {
  try {
    return await attempt();
  } catch (err) {
    if (!String(err?.message).includes('waiting for data channel messages both ways')) throw err;
    t.diagnostic(`data channel stalled once (${String(err.message).split('\n')[0]}); retrying with fresh peer connections`);
    return attempt();
  }
}

/**
 * The setup every browser test file shares, registered with node:test's
 * before/after/afterEach: checks the network is loopback only, runs `setUp`
 * (e.g. makes a certificate), starts turnd with `turndOptions(s)` (see
 * startTurnd; relay ports from `ports`, a RELAY_PORTS key), runs
 * `turndStarted(s)`, starts a page server when `pageServer`, then the browser
 * `launchBrowser(s)`; closes every page after each
 * test; closes the browser and page server, stops turnd (a turnd that does not
 * exit within 5 s of SIGTERM fails the file), then runs `tearDown` after all.
 *
 * Returns `s`: `s.turnd`, `s.browser`, `s.pageServer`, `s.page` (the last page
 * opened), `s.newPage(...)` and `s.withTurndLog(fn)`.
 */
export function browserSuite({
  ports,
  turndOptions = () => ({}),
  pageServer = false,
  launchBrowser = () => launchChromium(),
  setUp = async () => {},
  turndStarted = async () => {},
  tearDown = async () => {},
} = {}) {
  const [minPort, maxPort] = RELAY_PORTS[ports] ?? [];
  assert.ok(minPort, `no relay ports for ${ports} in RELAY_PORTS`);
  const pages = [];
  const s = {
    turnd: null,
    browser: null,
    pageServer: null,
    page: null,
    minPort,
    maxPort,
    /**
     * A fresh page on `url` (default about:blank; with `secure`, the page
     * server's http://127.0.0.1 origin, where getUserMedia works), with the
     * in-page WebRTC helpers installed unless `helpers` is false.
     */
    async newPage({ secure = false, url = null, helpers = true } = {}) {
      const page = await s.browser.context.newPage();
      pages.push(page);
      s.page = page;
      const target = url ?? (secure ? s.pageServer.url : null);
      if (target !== null) await page.goto(target);
      else if (helpers) await page.goto('about:blank');
      if (secure) assert.ok(await page.evaluate(() => window.isSecureContext), `${target} is not a secure context`);
      if (helpers) await page.evaluate(installPageHelpers);
      return page;
    },
    /** Runs a test body; on failure appends turnd's recent output, and checks turnd is still alive. */
    withTurndLog(fn) {
      return async (t) => {
        try {
          await fn(t);
        } catch (err) {
          err.message += `\n--- turnd (pid ${s.turnd?.pid}) recent output ---\n${s.turnd?.logTail() ?? '(not started)'}`;
          throw err;
        }
        const dead = s.turnd.exited();
        assert.equal(dead, null, `turnd died during the test: ${JSON.stringify(dead)}\n${s.turnd.logTail()}`);
      };
    },
  };

  before(async () => {
    assertLoopbackOnlyNetwork();
    await setUp(s);
    s.turnd = await startTurnd({ minPort, maxPort, ...turndOptions(s) });
    await turndStarted(s);
    if (pageServer) s.pageServer = await startPageServer();
    s.browser = await launchBrowser(s);
  });

  after(async () => {
    try {
      if (s.browser) await s.browser.close();
      if (s.pageServer) await s.pageServer.close();
    } finally {
      try {
        if (s.turnd) {
          const res = await s.turnd.stop();
          // turnd's contract: SIGTERM stops it. A hang or a crash is a failure.
          assert.ok(
            res.graceful,
            `turnd (pid ${s.turnd.pid}) did not exit within 5 s of SIGTERM (or had already died): ${JSON.stringify(res)}\n` +
              `--- turnd output ---\n${s.turnd.logTail()}`,
          );
        }
      } finally {
        await tearDown(s);
      }
    }
  });

  afterEach(async () => {
    for (const p of pages.splice(0)) await p.close().catch(() => {});
    s.page = null;
  });

  return s;
}
