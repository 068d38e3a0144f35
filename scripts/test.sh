#!/usr/bin/env bash
# turnd's one test command (README's "Run the tests"; .ci/run calls it).
#
# On a fresh Debian machine, as root: installs what the tests need
# (scripts/install-deps.sh: coturn's turnutils, Debian's chromium, playwright-core),
# checks formatting and lints, builds the benches, then runs every test:
#   - cargo test (unit, scenario, loopback integration and turnutils interop tests)
#     inside a private network namespace that has only loopback;
#   - the Kubernetes manifests and the container image (scripts/deploy-check.sh);
#   - the Chromium WebRTC tests (scripts/browser-tests.sh), in their own namespace;
#   - every fuzz target built and run briefly (scripts/fuzz.sh; a crash fails).
# Any missing tool is a failure, never a skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "install test dependencies"
scripts/install-deps.sh

step "build"
# The XDP fast path (feature `xdp`) is built and tested too; plain
# `cargo build` (the quick start) needs no clang.
cargo build --locked --all-targets
cargo build --locked --all-targets --features xdp

step "format and lints"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo clippy --locked --all-targets --features xdp -- -D warnings

step "benches build (figures are taken by hand: see BENCHMARKS.md)"
cargo bench --locked --no-run

step "cargo test (private network namespace, loopback only)"
unshare --net -- sh -c 'ip link set lo up && exec cargo test --locked --offline --no-fail-fast --features xdp'

step "Kubernetes manifests and container image (scripts/deploy-check.sh; private network namespaces)"
scripts/deploy-check.sh

step "Chromium WebRTC tests (private network namespace, loopback only)"
scripts/browser-tests.sh

step "fuzz targets: build and run each briefly (scripts/fuzz.sh; longer campaigns by hand)"
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

step "all tests passed"
