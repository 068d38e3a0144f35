// Chromium's WebRTC stack against turnd: STUN Binding, TURN allocation over UDP with
// long-term credentials, data and media relayed through turnd.
//
// Run: scripts/browser-tests.sh   (private network namespace, TURND_BIN=target/debug/turnd)

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DISABLED_FEATURES,
  MAX_PORT,
  MIN_PORT,
  PASSWORD,
  PLAYWRIGHT_DISABLED_FEATURES,
  USER,
  assertRelayedBothWays,
  browserSuite,
  gatherCandidates,
  relayDataChannel,
  retryDataChannelStall,
  turnUrl,
} from './harness.mjs';

const s = browserSuite({ ports: 'webrtc', pageServer: true });

const inRelayRange = (port) => port >= MIN_PORT && port <= MAX_PORT;

test('chromium runs with the expected effective command line', { timeout: 30_000 }, s.withTurndLog(async (t) => {
  await s.newPage({ url: 'chrome://version', helpers: false });
  const cmd = (await s.page.locator('#command_line').innerText({ timeout: 10_000 })).trim();
  t.diagnostic(`effective chromium command line: ${cmd}`);

  const lists = [...cmd.matchAll(/--disable-features=(\S+)/g)].map((m) => m[1].split(','));
  assert.ok(lists.length > 0, `no --disable-features on the command line: ${cmd}`);
  const effective = new Set(lists[lists.length - 1]);
  const wanted = new Set([...DISABLED_FEATURES, ...lists.flat()]);
  const missing = [...wanted].filter((f) => !effective.has(f));
  assert.deepEqual(missing, [], `the last --disable-features (the one Chromium honours) lacks: ${missing.join(', ')}`);
  for (const f of PLAYWRIGHT_DISABLED_FEATURES) assert.ok(effective.has(f), `${f} not disabled`);
  assert.ok(effective.has('WebRtcHideLocalIpsWithMdns'), 'mDNS host candidates are not disabled');
  for (const sw of [
    '--allow-loopback-in-peer-connection',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--disable-quic',
    '--no-sandbox',
    '--headless',
  ]) {
    assert.ok(cmd.split(/\s+/).includes(sw), `${sw} missing from ${cmd}`);
  }
  assert.ok(cmd.includes('--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'), `host resolver rules missing from ${cmd}`);
}));

test('data channel flows both ways through a relay/relay UDP candidate pair', { timeout: 40_000 }, s.withTurndLog(async (t) => {
  await s.newPage();
  const iceServers = [{ urls: turnUrl(s.turnd.port), username: USER, credential: PASSWORD }];
  const result = await retryDataChannelStall(t, () => relayDataChannel(s.page, iceServers, { bigChar: 'x' }));
  t.diagnostic(`connected in ${Math.round(result.connectMs)} ms`);
  assertRelayedBothWays(result, { relayProtocol: 'udp', minPort: MIN_PORT, maxPort: MAX_PORT });
}));

test('trickle ICE gathering yields srflx 127.0.0.1 and relay candidates', { timeout: 30_000 }, s.withTurndLog(async (t) => {
  await s.newPage();
  const port = s.turnd.port;
  const url = turnUrl(port);
  const result = await gatherCandidates(s.page, {
    iceServers: [{ urls: `stun:127.0.0.1:${port}` }, { urls: url, username: USER, credential: PASSWORD }],
    iceTransportPolicy: 'all',
  }, 'gatherer');

  const ctx = JSON.stringify(result);
  t.diagnostic(`candidates: ${result.candidates.map((c) => c.candidate).join(' | ')}`);
  const srflx = result.candidates.filter((c) => c.type === 'srflx');
  const relay = result.candidates.filter((c) => c.type === 'relay');
  assert.ok(srflx.some((c) => c.address === '127.0.0.1' && c.protocol === 'udp'), `no udp srflx 127.0.0.1 candidate: ${ctx}`);
  assert.ok(relay.length > 0, `no relay candidate: ${ctx}`);
  for (const c of relay) {
    assert.equal(c.address, '127.0.0.1', `relay candidate not on 127.0.0.1: ${ctx}`);
    assert.ok(inRelayRange(c.port), `relay port ${c.port} outside ${MIN_PORT}-${MAX_PORT}: ${ctx}`);
    assert.equal(c.protocol, 'udp', `relay candidate protocol is not udp: ${ctx}`);
    assert.equal(c.url, url, `relay candidate from an unexpected server url: ${ctx}`);
    // Chromium shares one UDP socket between the STUN and TURN server, so the mapped
    // address in the Allocate response (the relay candidate's raddr/rport) must equal
    // the Binding's XOR-MAPPED-ADDRESS (the srflx candidate).
    assert.ok(
      srflx.some((s) => s.address === c.relatedAddress && s.port === c.relatedPort),
      `relay candidate's mapped address ${c.relatedAddress}:${c.relatedPort} matches no srflx candidate: ${ctx}`,
    );
  }
  assert.deepEqual(result.errors, [], `candidate errors reported: ${ctx}`);
}));

test('STUN Binding alone (no TURN server) yields the srflx 127.0.0.1 candidate', { timeout: 30_000 }, s.withTurndLog(async (t) => {
  await s.newPage();
  const result = await gatherCandidates(s.page, { iceServers: [{ urls: `stun:127.0.0.1:${s.turnd.port}` }] }, 'stun-only');
  const ctx = JSON.stringify(result);
  t.diagnostic(`candidates: ${result.candidates.map((c) => c.candidate).join(' | ')}`);
  assert.ok(result.candidates.some((c) => c.type === 'srflx' && c.address === '127.0.0.1'), `no srflx 127.0.0.1 candidate: ${ctx}`);
  assert.ok(!result.candidates.some((c) => c.type === 'relay'), `relay candidate without a TURN server: ${ctx}`);
  assert.deepEqual(result.errors, [], `candidate errors reported: ${ctx}`);
}));

test('a wrong TURN password gives icecandidateerror 401 and no relay candidate', { timeout: 30_000 }, s.withTurndLog(async (t) => {
  await s.newPage();
  const url = turnUrl(s.turnd.port);
  // Gathering completes with the failure; a late error event may still land.
  const result = await gatherCandidates(s.page, {
    iceServers: [{ urls: url, username: USER, credential: 'wrong' }],
    iceTransportPolicy: 'relay',
  }, 'wrong-password', { lateError: 401 });
  const ctx = JSON.stringify(result);
  t.diagnostic(`candidate errors: ${JSON.stringify(result.errors)}`);
  assert.ok(result.errors.some((e) => e.errorCode === 401), `no icecandidateerror with errorCode 401: ${ctx}`);
  assert.ok(result.errors.every((e) => e.url.startsWith(`turn:127.0.0.1:${s.turnd.port}`)), `error from an unexpected url: ${ctx}`);
  assert.ok(!result.candidates.some((c) => c.type === 'relay'), `a relay candidate was allocated with a wrong password: ${ctx}`);
}));

test('two-way video call (fake camera and microphone) relayed through turnd', { timeout: 60_000 }, s.withTurndLog(async (t) => {
  await s.newPage({ secure: true });
  const result = await s.page.evaluate(async ({ url, username, credential }) => {
    const { withTimeout, sleep, watch, link, negotiate, waitConnected, selectedPair } = window.rtc;
    const config = { iceServers: [{ urls: url, username, credential }], iceTransportPolicy: 'relay' };
    const media = () => withTimeout(
      navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240, frameRate: 30 }, audio: true }),
      10_000, 'getUserMedia with the fake devices');
    const streamA = await media();
    const streamB = await media();
    const a = watch(new RTCPeerConnection(config), 'caller');
    const b = watch(new RTCPeerConnection(config), 'callee');
    try {
      link(a, b);
      for (const track of streamA.getTracks()) a.addTrack(track, streamA);
      const t0 = performance.now();
      await negotiate(a, b, async (callee) => {
        // Add the callee's tracks after it saw the offer, so they reuse the offered
        // transceivers and one offer/answer makes the call two-way.
        for (const track of streamB.getTracks()) callee.addTrack(track, streamB);
      });
      await Promise.all([waitConnected(a, 15_000), waitConnected(b, 15_000)]);
      const connectMs = performance.now() - t0;

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
      const threshold = 30;
      const samples = [];
      const deadline = performance.now() + 20_000;
      let ok = false;
      let first = null;
      while (performance.now() < deadline) {
        const s = { t: Math.round(performance.now() - t0), a: await inbound(a), b: await inbound(b) };
        samples.push(s);
        const frames = (x) => x.video?.framesDecoded ?? 0;
        if (!first && frames(s.a) >= threshold && frames(s.b) >= threshold) {
          first = s;
        } else if (first && s.t - first.t >= 1000) {
          if (frames(s.a) > frames(first.a) && frames(s.b) > frames(first.b)) { ok = true; break; }
          first = null; // not rising: look again
        }
        await sleep(250);
      }
      const pairA = await selectedPair(a);
      const pairB = await selectedPair(b);
      return { ok, connectMs, threshold, samples: samples.slice(-4), pairA, pairB, errorsA: a.__errors, errorsB: b.__errors };
    } finally {
      a.close();
      b.close();
      for (const tr of [...streamA.getTracks(), ...streamB.getTracks()]) tr.stop();
    }
  }, { url: turnUrl(s.turnd.port), username: USER, credential: PASSWORD });

  const ctx = JSON.stringify(result);
  const last = result.samples[result.samples.length - 1];
  t.diagnostic(`connected in ${Math.round(result.connectMs)} ms; last sample: ${JSON.stringify(last)}`);
  assert.ok(result.ok, `video frames decoded did not reach ${result.threshold} and keep rising on both sides within 20 s: ${ctx}`);
  for (const side of ['a', 'b']) {
    assert.ok(last[side].video.frameWidth > 0, `${side}: no decoded video frame size: ${ctx}`);
    assert.ok(last[side].audio?.packetsReceived > 0, `${side}: no audio packets received: ${ctx}`);
  }
  for (const [name, sel] of [['caller', result.pairA], ['callee', result.pairB]]) {
    assert.ok(sel, `${name}: no selected candidate pair: ${ctx}`);
    assert.equal(sel.local.candidateType, 'relay', `${name}: local candidate not relay: ${ctx}`);
    assert.equal(sel.remote.candidateType, 'relay', `${name}: remote candidate not relay: ${ctx}`);
    assert.equal(sel.local.relayProtocol, 'udp', `${name}: relayProtocol not udp: ${ctx}`);
  }
}));
