#!/usr/bin/env bash
# Soak: turnd (release) under churn for MINUTES (default 30), issue 11.
#
#   benches/soak.sh              # 30 minutes into target/soak/DATE
#   MINUTES=60 OUT=/tmp/soak benches/soak.sh --clients 100
#
# Builds turnd and turnd-bench (release) and runs `turnd-bench soak`, which
# writes a config (REST secret, loopback relay, 30 s lifetimes, TLS with a
# self-signed certificate from openssl, metrics) into OUT, starts turnd,
# drives 60 client slots (7 in 10 UDP, 2 TCP, 1 TLS; 5 packets/s of 200 B
# each, evenly paced; lives of 10-90 s ending in a delete, an abandoned
# allocation left to expire or a closed connection), sends turnd a SIGHUP
# every minute, samples RSS, descriptors, allocations and relay ports every
# 10 s into OUT/soak.csv and OUT/soak.png, and checks: no loss, no failed
# transaction, every relay port free and descriptors back to their start
# level after the drain, RSS and descriptors in the steady state (after a
# 5-minute warm-up) within 10 % of their level at the same load. Exit 1
# when a check fails. More `turnd-bench soak` options (see --help) may
# follow on the command line. Environment: MINUTES (30), OUT
# (target/soak/DATE), NICE (nice value of both processes, default 0).
set -euo pipefail

cd "$(dirname "$0")/.."

: "${MINUTES:=30}" "${NICE:=0}"
: "${OUT:=target/soak/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

cargo build --release --bin turnd --bin turnd-bench >&2
exec nice -n "$NICE" target/release/turnd-bench soak --turnd target/release/turnd \
    --minutes "$MINUTES" --out "$OUT" "$@"
