#!/usr/bin/env bash
# UDP round trips under a slow-connection attack on TCP and TLS (issue 10).
#
#   benches/slow_clients.sh            # quiet, then 2,000 slow TCP and TLS
#                                      # connections from 1 and from 200 addresses
#
# turnd (release, relay-threads 1, TCP on 3478, TLS on 5349, loopback only)
# relays a UDP load from turnd-bench: ALLOCS allocations, RATE round trips/s
# in total, evenly paced (default 20 x 50/s), SIZE-byte payloads, DURATION s
# measured after a 2 s warm-up. Each attack point first runs
# benches/slow_clients.py for SETTLE s (so connections have been opened,
# timed out and reopened), then measures while it keeps going. Points: quiet,
# tcp/1 source, tcp/200 sources, tls/1 source, tls/200 sources, quiet again.
# Prints one line per point: loss %, RTT p50/p99/max (µs), turnd's open and
# refused connections from /metrics. Environment: DURATION (20), SETTLE (12),
# CONNECTIONS (2000), ALLOCS (20), RATE (1000), SIZE (200), TURND (the binary,
# default target/release/turnd), EXTRA (more turnd arguments), OUT (raw
# results, default target/slow-clients/DATE), TURND_CPUS / CLIENT_CPUS
# (taskset CPU lists for turnd and for the load tool and attacker, e.g. 1 and
# 0, so the attacker's own work does not run on turnd's core; default: no
# pinning), LOAD_NICE / ATTACK_NICE (nice values of the load tool and the
# attacker; default -15 as root, else 0, and 19: sharing a core with the
# load tool, the attacker must not delay the load tool's own sends and
# receives, or the RTT measures the load tool, not turnd; a plain CPU hog
# on the load tool's core at equal priority raises its p99 about 9x with
# no traffic to turnd at all), LOAD_RT (a SCHED_FIFO priority for the load
# tool, e.g. 50, in place of LOAD_NICE: it then preempts the attacker on
# its core at once, so only turnd's delays are left in the RTT), ACCEPT_CPUS
# (a CPU list for turnd's acceptor thread, `turnd-accept`, alone, moved there
# after start: on a many-core host the scheduler gives the acceptor and the
# UDP worker separate cores; on 2 cores, TURND_CPUS=1 ACCEPT_CPUS=0 does that
# by hand). Every process it starts is
# stopped by PID on exit. Raise `ulimit -n` as root if the hard limit is low.
set -euo pipefail

cd "$(dirname "$0")/.."

: "${DURATION:=20}" "${SETTLE:=12}" "${CONNECTIONS:=2000}" "${ALLOCS:=20}" "${RATE:=1000}" "${SIZE:=200}"
: "${TURND:=target/release/turnd}" "${EXTRA:=}" "${TURND_CPUS:=}" "${CLIENT_CPUS:=}"
if [ "$(id -u)" -eq 0 ]; then : "${LOAD_NICE:=-15}"; else : "${LOAD_NICE:=0}"; fi
: "${ATTACK_NICE:=19}" "${LOAD_RT:=}" "${ACCEPT_CPUS:=}"
if [ -n "$LOAD_RT" ]; then LOAD_SCHED=(chrt -f "$LOAD_RT"); else LOAD_SCHED=(nice -n "$LOAD_NICE"); fi
: "${OUT:=target/slow-clients/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

cargo build --release --bin turnd --bin turnd-bench >&2
BENCH=target/release/turnd-bench

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
TMP=$(mktemp -d)
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=turnd-bench -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

# pin CPUS CMD...: becomes CMD on the CPU list CPUS (taskset), or CMD as is
# when empty. Only in a subshell (a background job or a pipeline), so $! is
# CMD's own PID.
pin() {
    local cpus=$1
    shift
    if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

# shellcheck disable=SC2086 # EXTRA is a list of words
pin "$TURND_CPUS" "$TURND" -L 127.0.0.1 -p 3478 -E 127.0.0.1 --min-port 61000 --max-port 62999 \
    -u bench:bench -r bench --allow-loopback-peers --relay-threads 1 \
    --cert "$TMP/cert.pem" --pkey "$TMP/key.pem" --tls-listening-port 5349 \
    --prometheus --prometheus-address 127.0.0.1 --prometheus-port 9641 $EXTRA \
    >"$OUT/turnd.log" 2>&1 &
TURND_PID=$!
PIDS+=("$TURND_PID")
for _ in $(seq 50); do
    grep -q "listening on tls" "$OUT/turnd.log" && break
    sleep 0.1
done

if [ -n "$ACCEPT_CPUS" ]; then
    for t in /proc/"$TURND_PID"/task/*; do
        if [ "$(cat "$t/comm")" = turnd-accept ]; then taskset -p -c "$ACCEPT_CPUS" "${t##*/}" >&2; fi
    done
fi

metric() {
    curl -s http://127.0.0.1:9641/metrics | awk -v m="$1" '$1 == m { print $2 }' | head -1
}

# point LABEL [ATTACK ARGS...]: one measurement, with the attacker when ARGS are given.
point() {
    local label=$1 attacker=
    shift
    if [ $# -gt 0 ]; then
        pin "$CLIENT_CPUS" nice -n "$ATTACK_NICE" python3 benches/slow_clients.py --connections "$CONNECTIONS" \
            --duration "$((SETTLE + DURATION + 8))" "$@" >"$OUT/attacker-$label.log" 2>&1 &
        attacker=$!
        PIDS+=("$attacker")
        sleep "$SETTLE"
    fi
    local line
    line=$(pin "$CLIENT_CPUS" "${LOAD_SCHED[@]}" "$BENCH" --server 127.0.0.1:3478 --user bench --password bench \
        --allocations "$ALLOCS" --rate "$RATE" --size "$SIZE" --duration "$DURATION" \
        --warmup 2 --server-pid "$TURND_PID" --label "$label" 2>>"$OUT/bench.stderr" |
        tee -a "$OUT/bench.log" | grep '^RESULT ' | sed 's/^RESULT //' || true)
    local open refused_total refused_ip
    open=$(metric turnd_connections_admitted)
    refused_total=$(metric 'turnd_connections_refused_total{limit="max-connections"}')
    refused_ip=$(metric 'turnd_connections_refused_total{limit="max-connections-per-ip"}')
    if [ -n "$attacker" ]; then
        kill "$attacker" 2>/dev/null || true
        wait "$attacker" 2>/dev/null || true
        sleep 2
    fi
    echo "$line" >>"$OUT/results.jsonl"
    python3 -c '
import json, sys
r = json.loads(sys.argv[1]) if sys.argv[1] else {"failed": True}
label, admitted, refused_total, refused_ip = sys.argv[2:6]
if r.get("failed"):
    print("%-14s no result" % label)
    sys.exit()
print("%-14s loss %6.3f %%  rtt p50 %6d us  p99 %6d us  max %6d us  delivered %.0f/s  admitted %s  refused(max-connections) %s  refused(per-ip) %s" % (
    label, r["loss_pct"], r["rtt_p50_us"], r["rtt_p99_us"], r["rtt_max_us"],
    r["delivered_rt_per_s"], admitted, refused_total, refused_ip))
' "$line" "$label" "${open:-?}" "${refused_total:-?}" "${refused_ip:-?}"
}

echo "turnd $("$TURND" --version 2>/dev/null | head -1), relay-threads 1, load: $ALLOCS allocations x $((RATE / ALLOCS))/s, $SIZE B, ${DURATION} s; attack: $CONNECTIONS connections, 1 byte/s"
point quiet
point tcp-1src --port 3478 --sources 1
point tcp-200src --port 3478 --sources 200
point tls-1src --port 5349 --sources 1 --tls
point tls-200src --port 5349 --sources 200 --tls
point quiet-again
echo "raw results in $OUT"
