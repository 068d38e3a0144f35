#!/usr/bin/env bash
# Chromium (WebRTC) end-to-end tests against turnd.
#
# Runs node's test runner on tests/browser/*.test.mjs inside a private network
# namespace that has only loopback, so turnd, chromium and all their traffic stay
# on that namespace's own 127.0.0.1. Then tests/browser/two-nodes/*.test.mjs in
# another private namespace whose loopback interface also holds 192.0.2.1 and
# 192.0.2.2 (documentation addresses, RFC 5737): two turnd nodes there, because
# Chromium will not follow a 300 Try Alternate to a loopback (127/8) address.
# Nothing leaves either namespace. Needs root (unshare --net).
# Last, tests/browser/xdp.test.mjs on its own (in a third private namespace, after
# the others, so that its two Chromiums and a video call do not load the machine
# under them): Chromium through turnd with the XDP fast path on, generic then
# native mode, across three namespaces it makes itself (needs turnd built with
# `cargo build --features xdp`, and ethtool). TURND_XDP_MODES picks the modes
# (default generic,native).
#
#   TURND_BIN   turnd binary (default target/debug/turnd, relative to the repo root)
#   CHROMIUM_BIN chromium binary (default /usr/bin/chromium)
#   TURND_LOG   optional file to which all of turnd's output is appended
#
# Prerequisites: scripts/install-deps.sh, then cargo build --features xdp (without
# the feature, xdp.test.mjs fails: turnd refuses xdp = "generic"). A missing binary is a
# failure, never a skip.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

export TURND_BIN="${TURND_BIN:-target/debug/turnd}"
case "$TURND_BIN" in
  /*) ;;
  *) TURND_BIN="$root/$TURND_BIN" ;;
esac
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

fail() { echo "browser-tests: FAIL: $*" >&2; exit 1; }

[ -x "$TURND_BIN" ] || fail "turnd binary not found or not executable: $TURND_BIN (run cargo build, or set TURND_BIN)"
[ -x "$CHROMIUM_BIN" ] || fail "chromium not found: $CHROMIUM_BIN (run scripts/install-deps.sh)"
command -v node >/dev/null || fail "node not found (run scripts/install-deps.sh)"
command -v unshare >/dev/null || fail "unshare not found (util-linux; run scripts/install-deps.sh)"
command -v ip >/dev/null || fail "ip not found (iproute2; run scripts/install-deps.sh)"
[ -f tests/browser/node_modules/playwright-core/package.json ] \
  || fail "tests/browser/node_modules/playwright-core missing (run scripts/install-deps.sh)"

shopt -s nullglob
tests=()
for f in tests/browser/*.test.mjs; do
  [ "$f" = tests/browser/xdp.test.mjs ] || tests+=("$f")
done
[ "${#tests[@]}" -gt 0 ] || fail "no tests/browser/*.test.mjs found"
[ -f tests/browser/xdp.test.mjs ] || fail "tests/browser/xdp.test.mjs not found"
command -v ethtool >/dev/null || fail "ethtool not found (run scripts/install-deps.sh)"
two_nodes=(tests/browser/two-nodes/*.test.mjs)
[ "${#two_nodes[@]}" -gt 0 ] || fail "no tests/browser/two-nodes/*.test.mjs found"

echo "browser-tests: TURND_BIN=$TURND_BIN CHROMIUM_BIN=$CHROMIUM_BIN node=$(node --version)"
# Inside the namespace: bring loopback up, then run the tests. Node's test runner
# exits non-zero if any test fails; both sets run, and either failing fails.
status=0
unshare --net -- sh -c 'ip link set lo up && exec node --test --test-reporter=spec "$@"' sh "${tests[@]}" || status=1
unshare --net -- sh -c 'ip link set lo up &&
  ip addr add 192.0.2.1/32 dev lo &&
  ip addr add 192.0.2.2/32 dev lo &&
  exec node --test --test-reporter=spec "$@"' sh "${two_nodes[@]}" || status=1
unshare --net -- sh -c 'ip link set lo up && exec node --test --test-reporter=spec "$@"' sh tests/browser/xdp.test.mjs || status=1
exit "$status"
