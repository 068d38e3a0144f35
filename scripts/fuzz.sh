#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz, libFuzzer with AddressSanitizer
# on the stable toolchain through RUSTC_BOOTSTRAP=1) and runs each for a while.
#
#   scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]
#
# SECONDS-PER-TARGET defaults to 60; no TARGET runs every target. Each run
# starts from the committed corpus (fuzz/corpus/TARGET, and the crash inputs
# in fuzz/regressions/TARGET, both read only) and keeps
# what it finds in fuzz/target/fuzz-corpus/TARGET (ignored by git). A crash
# leaves its input in fuzz/artifacts/TARGET/ and fails the script; commit a
# minimised copy to fuzz/regressions/TARGET/ with the fix. Longer campaigns:
#   scripts/fuzz.sh 3600 server_sequence
# Environment: FUZZ_RSS_MB (memory limit per run, default 2048).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=${1:-60}
shift || true
all=(stun_message stun_differential channel_data stream_framer writer_roundtrip
     server_sequence coturn_conf toml_config)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all[@]}")

command -v cargo-fuzz >/dev/null 2>&1 || {
  echo "fuzz: cargo-fuzz missing (scripts/install-deps.sh installs it)" >&2
  exit 1
}
export RUSTC_BOOTSTRAP=1

# -a: debug assertions and overflow checks, as in the tests.
cargo fuzz build -a

failed=()
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work"
  echo "==> fuzz $t for ${seconds}s"
  # Crash regressions run first among the inputs (a regression fails).
  extra=()
  [ -d "regressions/$t" ] && extra=("regressions/$t")
  if ! cargo fuzz run -a "$t" "$work" "corpus/$t" "${extra[@]}" -- \
      -max_total_time="$seconds" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
      -print_final_stats=1 2>&1 | tail -n 25; then
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ok: ${targets[*]}"
