// Counts Chromium relay/relay data-channel stalls through turnd (issue 11, part 4).
// Not a test: a measurement, run by hand, in a private network namespace:
//
//   unshare --net -- sh -c 'ip link set lo up && exec node tests/browser/stall-rate.mjs \
//       --runs 60 --round-trip 1 --workers 1'
//
// Each run: two fresh relay-only peer connections in one page, a data channel,
// 50 messages of 1 KB each way (as the measurement), with or without
// one ping/pong round trip first (--round-trip 1|0). A run whose messages do
// not all arrive within 10 s is a stall. TURND_BIN (default
// target/release/turnd) and CHROMIUM_BIN as for scripts/browser-tests.sh.
import { parseArgs } from 'node:util';

import {
  PASSWORD,
  RELAY_PORTS,
  USER,
  assertLoopbackOnlyNetwork,
  installPageHelpers,
  launchChromium,
  relayDataChannel,
  startTurnd,
  turnUrl,
} from './harness.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '60' },
    'round-trip': { type: 'string', default: '1' },
    workers: { type: 'string', default: '1' },
  },
});
const runs = Number(values.runs);
const roundTrip = values['round-trip'] === '1';
process.env.TURND_BIN ??= 'target/release/turnd';

assertLoopbackOnlyNetwork();
const [minPort, maxPort] = RELAY_PORTS.webrtc;
const turnd = await startTurnd({ minPort, maxPort, extraArgs: ['--workers', values.workers] });
const browser = await launchChromium();
let stalls = 0;
let other = 0;
try {
  const page = await browser.context.newPage();
  await page.goto('about:blank');
  await page.evaluate(installPageHelpers);
  const iceServers = [{ urls: turnUrl(turnd.port), username: USER, credential: PASSWORD }];
  for (let i = 0; i < runs; i++) {
    try {
      const r = await relayDataChannel(page, iceServers, { count: 50, size: 1000, roundTrip });
      const intact = JSON.stringify(r.atB) === JSON.stringify(r.sentA) && JSON.stringify(r.atA) === JSON.stringify(r.sentB);
      if (!intact) { other += 1; console.log(`run ${i}: messages out of order or damaged`); }
    } catch (err) {
      const msg = String(err?.message).split('\n')[0];
      if (msg.includes('data channel messages both ways')) stalls += 1; else other += 1;
      console.log(`run ${i}: ${msg}`);
    }
  }
} finally {
  await browser.close();
  await turnd.stop();
}
console.log(JSON.stringify({ runs, roundTrip, workers: Number(values.workers), stalls, otherFailures: other }));
