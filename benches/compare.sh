#!/usr/bin/env bash
# Side-by-side load benchmark: turnd, coturn (one relay thread) and a bare UDP
# forwarder (the floor), driven by target/release/turnd-bench with the same load.
#
#   benches/compare.sh            # full: 3 runs per point, 5 s windows (about 10 minutes on 2 cores)
#   benches/compare.sh --quick    # 1 run per point, 2 s windows, short sweep (about 2 minutes)
#
# Options: --quick, --no-coturn, --no-streams (skip TCP/TLS), --no-alloc (skip
# the allocation-rate test). Environment: SERVER_CPU (default 0) and GEN_CPU
# (default 1) are the cores the servers and the load generator are pinned to
# with taskset; RUNS, DURATION, WARMUP, SWEEP_DURATION, RATES, SWEEP_RATES,
# ALLOCS override the defaults below; OUT is where the raw results are kept
# (default target/compare/DATE).
#
# Method (see BENCHMARKS.md): every server is started once, pinned to SERVER_CPU;
# the runs are interleaved (run 1 of turnd, coturn, bare, then run 2 ...) so a
# shared machine's background load hits all three alike. Each point is a fresh
# turnd-bench process on GEN_CPU: 100 allocations (401 dance, Allocate,
# ChannelBind to its own UDP echo peer), 200-byte payloads, paced at the
# given round trips/s in total. The sweep raises the rate until loss reaches
# 0.1 % or the generator can no longer offer the rate (offered < 97 %).
# Medians of the runs; the table shows turnd/bare and turnd/coturn ratios.
# Every process this script starts is stopped by PID on exit. Traffic stays on
# 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."

QUICK=0 COTURN=1 STREAMS=1 ALLOC=1
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        --no-coturn) COTURN=0 ;;
        --no-streams) STREAMS=0 ;;
        --no-alloc) ALLOC=0 ;;
        -h | --help)
            sed -n '2,25p' "$0"
            exit 0
            ;;
        *)
            echo "compare.sh: unknown option $a" >&2
            exit 2
            ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    : "${RUNS:=1}" "${DURATION:=2}" "${WARMUP:=0.5}" "${SWEEP_DURATION:=1.5}"
    : "${SWEEP_RATES:=20000 40000 60000 80000 100000 120000 150000}"
    : "${ALLOCS:=1000}"
else
    : "${RUNS:=3}" "${DURATION:=5}" "${WARMUP:=1}" "${SWEEP_DURATION:=2}"
    : "${SWEEP_RATES:=20000 30000 40000 50000 60000 70000 80000 90000 100000 120000 140000 160000}"
    : "${ALLOCS:=1500}"
fi
: "${RATES:=20000 50000}"
: "${SERVER_CPU:=0}" "${GEN_CPU:=1}"
: "${OUT:=target/compare/$(date +%Y%m%d-%H%M%S)}"
ALLOCATIONS=100
SIZE=200
USER_NAME=bench
PASSWORD=bench
REALM=bench

if ! command -v turnserver >/dev/null; then
    [ "$COTURN" = 1 ] && echo "compare.sh: turnserver (coturn) not found: coturn is skipped" >&2
    COTURN=0
fi
PIN_SERVER=() PIN_GEN=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c "$SERVER_CPU")
    PIN_GEN=(taskset -c "$GEN_CPU")
else
    echo "compare.sh: fewer than 2 cores or no taskset: nothing is pinned" >&2
fi

cargo build --release --bin turnd --bin turnd-bench
BENCH=target/release/turnd-bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
TMP=$(mktemp -d)

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port free for both UDP and TCP on 127.0.0.1, below the ephemeral range.
free_port() {
    python3 - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randint(21000, 24999)
    ok = True
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        print(p)
        break
EOF
}

# Waits until something listens on UDP port $1.
wait_udp() {
    local i
    for i in $(seq 1 100); do
        if ss -Hlun "( sport = :$1 )" | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    echo "compare.sh: nothing listens on udp port $1" >&2
    return 1
}

# A throwaway certificate for the TLS listeners.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj /CN=localhost -days 2 2>/dev/null

TURND_PORT=$(free_port)
TURND_TLS_PORT=$(free_port)
while [ "$TURND_TLS_PORT" = "$TURND_PORT" ]; do TURND_TLS_PORT=$(free_port); done
"${PIN_SERVER[@]}" target/release/turnd -L 127.0.0.1 -p "$TURND_PORT" -E 127.0.0.1 \
    --min-port 61000 --max-port 62999 -u "$USER_NAME:$PASSWORD" -r "$REALM" \
    --allow-loopback-peers --unauth-rate 0 \
    --cert "$TMP/cert.pem" --pkey "$TMP/key.pem" --tls-listening-port "$TURND_TLS_PORT" \
    >"$OUT/turnd.log" 2>&1 &
TURND_PID=$!
PIDS+=("$TURND_PID")
wait_udp "$TURND_PORT"

if [ "$COTURN" = 1 ]; then
    COTURN_PORT=$(free_port)
    COTURN_TLS_PORT=$(free_port)
    while [ "$COTURN_TLS_PORT" = "$COTURN_PORT" ]; do COTURN_TLS_PORT=$(free_port); done
    # Debian's coturn 4.6: -m/--relay-threads 1 = one relay thread.
    "${PIN_SERVER[@]}" turnserver -n --no-cli --log-file=stdout -L 127.0.0.1 -p "$COTURN_PORT" \
        --min-port 63000 --max-port 64999 -a -f -u "$USER_NAME:$PASSWORD" -r "$REALM" \
        --allow-loopback-peers --no-dtls --relay-threads 1 \
        --cert "$TMP/cert.pem" --pkey "$TMP/key.pem" --tls-listening-port "$COTURN_TLS_PORT" \
        >"$OUT/coturn.log" 2>&1 &
    COTURN_PID=$!
    PIDS+=("$COTURN_PID")
    wait_udp "$COTURN_PORT"
fi

BARE_PORT=$(free_port)
"${PIN_SERVER[@]}" "$BENCH" forwarder --listen "127.0.0.1:$BARE_PORT" >"$OUT/forwarder.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_udp "$BARE_PORT"

TARGETS=(turnd)
[ "$COTURN" = 1 ] && TARGETS+=(coturn)
TARGETS+=(bare)

# bench TARGET TRANSPORT LABEL ARGS...: one turnd-bench run; its RESULT line is
# appended to $RESULTS and echoed.
bench() {
    local target=$1 transport=$2 label=$3
    shift 3
    local server pid extra=()
    case "$target" in
        turnd)
            pid=$TURND_PID
            server=127.0.0.1:$TURND_PORT
            [ "$transport" = tls ] && server=127.0.0.1:$TURND_TLS_PORT
            ;;
        coturn)
            pid=$COTURN_PID
            server=127.0.0.1:$COTURN_PORT
            [ "$transport" = tls ] && server=127.0.0.1:$COTURN_TLS_PORT
            ;;
        bare)
            pid=$BARE_PID
            server=127.0.0.1:$BARE_PORT
            extra=(--bare)
            ;;
    esac
    local line
    line=$("${PIN_GEN[@]}" "$BENCH" --server "$server" --user "$USER_NAME" --password "$PASSWORD" \
        --transport "$transport" --server-pid "$pid" --label "$label" "${extra[@]}" "$@" \
        2>>"$OUT/bench.stderr" | tee -a "$OUT/bench.log" | grep '^RESULT ' | sed 's/^RESULT //' || true)
    if [ -z "$line" ]; then
        echo "compare.sh: no result for $label (see $OUT/bench.stderr)" >&2
        line='{"label":"'"$label"'","failed":true}'
    fi
    echo "$line" >>"$RESULTS"
    echo "$line"
}

# passes JSON RATE: loss < 0.1 % and at least 97 % of the rate offered.
passes() {
    python3 -c '
import json, sys
r = json.loads(sys.argv[1]); rate = float(sys.argv[2])
ok = not r.get("failed") and r["loss_pct"] < 0.1 and r["offered_rt_per_s"] >= 0.97 * rate
sys.exit(0 if ok else 1)' "$1" "$2"
}

summary() {
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "== results in $OUT; servers on core $SERVER_CPU, generator on core $GEN_CPU; $(summary)"
for run in $(seq 1 "$RUNS"); do
    for target in "${TARGETS[@]}"; do
        for rate in $RATES; do
            echo "-- run $run: $target at $rate round trips/s ($(summary))"
            bench "$target" udp "$target|udp|fixed|$rate|$run" \
                --allocations "$ALLOCATIONS" --size "$SIZE" --rate "$rate" \
                --duration "$DURATION" --warmup "$WARMUP" >/dev/null
        done
        echo "-- run $run: $target sweep"
        for rate in $SWEEP_RATES; do
            r=$(bench "$target" udp "$target|udp|sweep|$rate|$run" \
                --allocations "$ALLOCATIONS" --size "$SIZE" --rate "$rate" \
                --duration "$SWEEP_DURATION" --warmup 0.5)
            if ! passes "$r" "$rate"; then
                echo "   stops at $rate round trips/s"
                break
            fi
        done
    done
    if [ "$STREAMS" = 1 ]; then
        for target in "${TARGETS[@]}"; do
            [ "$target" = bare ] && continue
            for transport in udp tcp tls; do
                echo "-- run $run: $target over $transport at 20000 round trips/s"
                bench "$target" "$transport" "$target|$transport|stream|20000|$run" \
                    --allocations "$ALLOCATIONS" --size "$SIZE" --rate 20000 \
                    --duration "$DURATION" --warmup "$WARMUP" >/dev/null
            done
        done
    fi
done

if [ "$ALLOC" = 1 ]; then
    for target in "${TARGETS[@]}"; do
        [ "$target" = bare ] && continue
        for run in $(seq 1 "$RUNS"); do
            echo "-- run $run: $target, $ALLOCS authenticated allocations"
            bench "$target" udp "$target|udp|alloc|$ALLOCS|$run" \
                --allocations-only --allocations "$ALLOCS" >/dev/null
        done
    done
fi

echo
echo "== summary (medians of $RUNS run(s); $(summary) at the end)"
python3 - "$RESULTS" "$RATES" <<'EOF' | tee "$OUT/summary.txt"
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rates = [int(r) for r in sys.argv[2].split()]
by = defaultdict(list)
for r in rows:
    if r.get("failed"):
        continue
    target, transport, kind, param, run = r["label"].split("|")
    by[(target, transport, kind, param)].append(r)

def med(target, transport, kind, param, key):
    vals = [r[key] for r in by.get((target, transport, kind, str(param)), []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def max_rate(target):
    # Per run: the highest swept rate that passed, then the median over runs.
    per_run = defaultdict(lambda: 0)
    runs = set()
    for (t, tr, kind, param), rs in by.items():
        if t != target or kind != "sweep":
            continue
        for r in rs:
            run = r["label"].split("|")[4]
            runs.add(run)
            rate = float(param)
            if r["loss_pct"] < 0.1 and r["offered_rt_per_s"] >= 0.97 * rate:
                per_run[run] = max(per_run[run], rate)
    vals = [per_run[run] for run in runs]
    return statistics.median(vals) if vals else None

targets = [t for t in ("turnd", "coturn", "bare") if any(k[0] == t for k in by)]

def fmt(v, d=2):
    if v is None:
        return "-"
    if isinstance(v, float) and d == 0:
        return f"{v:.0f}"
    return f"{v:.{d}f}" if isinstance(v, float) else str(v)

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

metrics = []
for rate in rates:
    metrics.append((f"server CPU per relayed packet @ {rate} rt/s (us)", lambda t, rate=rate: med(t, "udp", "fixed", rate, "server_cpu_us_per_pkt"), 2))
for rate in rates:
    metrics.append((f"RTT p99 @ {rate} rt/s (us)", lambda t, rate=rate: med(t, "udp", "fixed", rate, "rtt_p99_us"), 0))
for rate in rates:
    metrics.append((f"RTT p50 @ {rate} rt/s (us)", lambda t, rate=rate: med(t, "udp", "fixed", rate, "rtt_p50_us"), 0))
for rate in rates:
    metrics.append((f"loss @ {rate} rt/s (%)", lambda t, rate=rate: med(t, "udp", "fixed", rate, "loss_pct"), 3))
metrics.append(("max rate at < 0.1 % loss (rt/s)", max_rate, 0))
for rate in rates:
    metrics.append((f"server CPU @ {rate} rt/s (% of a core)", lambda t, rate=rate: med(t, "udp", "fixed", rate, "server_cpu_pct"), 1))
for rate in rates:
    metrics.append((f"generator CPU @ {rate} rt/s (% of a core)", lambda t, rate=rate: med(t, "udp", "fixed", rate, "gen_cpu_pct"), 1))
metrics.append((f"server RSS after the {rates[-1]} rt/s run (KiB)", lambda t: med(t, "udp", "fixed", rates[-1], "server_rss_kib"), 0))

w = max(len(m[0]) for m in metrics) + 2
head = f"{'UDP, 100 allocations x 200 B':<{w}}" + "".join(f"{t:>10}" for t in targets)
ratios = [("turnd/bare", "turnd", "bare"), ("turnd/coturn", "turnd", "coturn")]
ratios = [r for r in ratios if r[1] in targets and r[2] in targets]
head += "".join(f"{n:>14}" for n, _, _ in ratios)
print(head)
print("-" * len(head))
for name, f, d in metrics:
    vals = {t: f(t) for t in targets}
    line = f"{name:<{w}}" + "".join(f"{fmt(vals[t], d):>10}" for t in targets)
    line += "".join(f"{ratio(vals[a], vals[b]):>14}" for _, a, b in ratios)
    print(line)

stream_targets = [t for t in ("turnd", "coturn") if any(k[0] == t and k[2] == "stream" for k in by)]
if stream_targets:
    print()
    print("TCP and TLS vs UDP, 100 allocations x 200 B at 20000 rt/s (same run, relay is UDP)")
    print(f"{'':<12}{'transport':>10}{'delivered pkt/s':>17}{'CPU/pkt (us)':>14}{'RTT p99 (us)':>14}{'pkt/s vs UDP':>14}{'CPU/pkt vs UDP':>16}")
    for t in stream_targets:
        base_pps = med(t, "udp", "stream", 20000, "relayed_pkt_per_s")
        base_cpu = med(t, "udp", "stream", 20000, "server_cpu_us_per_pkt")
        for tr in ("udp", "tcp", "tls"):
            pps = med(t, tr, "stream", 20000, "relayed_pkt_per_s")
            cpu = med(t, tr, "stream", 20000, "server_cpu_us_per_pkt")
            p99 = med(t, tr, "stream", 20000, "rtt_p99_us")
            print(f"{t:<12}{tr:>10}{fmt(pps, 0):>17}{fmt(cpu, 2):>14}{fmt(p99, 0):>14}{ratio(pps, base_pps):>14}{ratio(cpu, base_cpu):>16}")

alloc_targets = [t for t in ("turnd", "coturn") if any(k[0] == t and k[2] == "alloc" for k in by)]
if alloc_targets:
    print()
    print("Authenticated allocations (401 + Allocate, UDP)")
    print(f"{'':<12}{'allocs/s':>10}{'RSS/alloc (B)':>15}{'RSS before':>12}{'with allocs':>13}{'after release':>15}  (KiB)")
    vals = {}
    for t in alloc_targets:
        rs = [r for k, v in by.items() if k[0] == t and k[2] == "alloc" for r in v]
        a = statistics.median([r["allocs_per_s"] for r in rs])
        first = rs[0]
        vals[t] = (a, first.get("rss_per_alloc_bytes"))
        print(f"{t:<12}{fmt(a, 0):>10}{fmt(vals[t][1], 0):>15}{fmt(first.get('rss_before_kib'), 0):>12}{fmt(first.get('rss_after_kib'), 0):>13}{fmt(first.get('rss_released_kib'), 0):>15}")
    if "turnd" in vals and "coturn" in vals:
        print(f"{'turnd/coturn':<12}{ratio(vals['turnd'][0], vals['coturn'][0]):>10}{ratio(vals['turnd'][1], vals['coturn'][1]):>15}")
    print("(RSS per allocation from the first run's growth; later runs reuse memory the first one left)")
EOF
echo "raw results: $RESULTS"
