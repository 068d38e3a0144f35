#!/usr/bin/env bash
# Side-by-side load benchmark: turnd, coturn (one relay thread) and two bare
# UDP forwarders (the floors: `bare_rs`, one recvfrom + one sendto per datagram;
# `bare_mmsg`, recvmmsg/sendmmsg batches of 64), driven by
# target/release/turnd-bench with the same load.
#
#   benches/compare.sh            # full: 3 runs per point, 5 s windows (about 25 minutes on 2 cores)
#   benches/compare.sh --quick    # 1 run per point, 2 s windows, short sweeps (about 5 minutes)
#
# --xdp [OPTIONS]: runs benches/compare-xdp.sh instead (turnd with XDP
# generic/native beside turnd in user space, coturn and the floors over veth
# in network namespaces; root; see its header).
#
# Options: --quick, --no-coturn, --no-streams (skip TCP/TLS), --no-alloc (skip
# the allocation-rate test), --no-burst (skip the burst-paced points),
# --no-sweep (skip the 100-allocation loss sweep), --no-flow (skip the
# single-flow throughput sweep). Environment: SERVER_CPU (default 0) and
# GEN_CPU (default 1) are the cores the servers and the load generator are
# pinned to with taskset; RUNS, SWEEP_RUNS (default RUNS), DURATION, WARMUP,
# SWEEP_DURATION, RATES, SWEEP_RATES, SWEEP_PACING (default burst), FLOW_RATES
# (datagrams/s), FLOW_SIZE (default 1200), FLOW_PACING (default even), ALLOCS
# override the defaults below; OUT is where the raw results are kept (default
# target/compare/DATE). AUTOGROUP_NICE (root only, e.g. -10): the script
# re-runs itself in a session of its own (setsid) and gives that session's
# scheduler autogroup this nice value, so the benchmark is not held to a third
# of a core by other sessions' builds (with autogroups, a process's own nice
# only ranks it inside its session). BASELINE=PATH: a second turnd binary
# (e.g. the previous commit's release build) measured as `turnd_base` beside
# the others, with a turnd/before ratio column: before/after in one run.
# BASELINE_ARGS: extra arguments for that second turnd (split on spaces), e.g.
# BASELINE=target/release/turnd BASELINE_ARGS="--redis-userdb redis://..."
# measures the same build with and without an option.
#
# Method (see BENCHMARKS.md and benches/results/compare-paced.md): every
# server is started once, pinned to SERVER_CPU; the points are interleaved
# (for each run, pacing and rate: turnd, coturn, bare_rs, bare_mmsg one after
# the other) so a shared machine's background load hits all alike. Each point
# is a fresh turnd-bench process on GEN_CPU: 100 allocations (401 dance,
# Allocate, ChannelBind to its own UDP echo peer), 200-byte payloads, at the
# given round trips/s in total, round robin over the allocations, paced
# `even` (each send at its own due time, one datagram per send: the main
# table) and `burst` (sends due within 50 µs together, catch-up bursts). The
# sweep raises the rate until loss reaches 0.1 % or the generator can no
# longer offer the rate (offered < 97 %). The single-flow sweep sends
# FLOW_SIZE-byte ChannelData (bare: raw datagrams) one way from one
# allocation to a sink peer and raises the rate the same way. Medians of the
# runs; the tables show turnd/bare_rs, turnd/bare_mmsg and turnd/coturn
# ratios. Every process this script starts is stopped by PID on exit. Traffic
# stays on 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."

# The XDP fast path (issue 15) has its own topology (network namespaces,
# veth) and script: `benches/compare.sh --xdp [its options]`.
if [ "${1:-}" = --xdp ]; then
    shift
    exec benches/compare-xdp.sh "$@"
fi

if [ -n "${AUTOGROUP_NICE:-}" ] && [ -z "${COMPARE_OWN_SESSION:-}" ]; then
    COMPARE_OWN_SESSION=1 exec setsid --wait "$0" "$@"
fi
if [ -n "${AUTOGROUP_NICE:-}" ]; then
    echo "$AUTOGROUP_NICE" >/proc/self/autogroup || echo "compare.sh: could not set the autogroup's nice" >&2
fi

QUICK=0 COTURN=1 STREAMS=1 ALLOC=1 BURST=1 SWEEP=1 FLOW=1
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        --no-coturn) COTURN=0 ;;
        --no-streams) STREAMS=0 ;;
        --no-alloc) ALLOC=0 ;;
        --no-burst) BURST=0 ;;
        --no-sweep) SWEEP=0 ;;
        --no-flow) FLOW=0 ;;
        -h | --help)
            sed -n '2,50p' "$0"
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
    : "${FLOW_RATES:=20000 50000 100000 150000 200000}"
    : "${ALLOCS:=1000}"
else
    : "${RUNS:=3}" "${DURATION:=5}" "${WARMUP:=1}" "${SWEEP_DURATION:=2}"
    : "${SWEEP_RATES:=20000 30000 40000 50000 60000 70000 80000 90000 100000 120000 140000 160000}"
    : "${FLOW_RATES:=20000 40000 60000 80000 100000 120000 150000 200000}"
    : "${ALLOCS:=1500}"
fi
: "${RATES:=20000 50000}" "${SWEEP_RUNS:=$RUNS}" "${SWEEP_PACING:=burst}"
: "${FLOW_SIZE:=1200}" "${FLOW_PACING:=even}"
PACINGS=even
[ "$BURST" = 1 ] && PACINGS="even burst"
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

if [ -n "${BASELINE:-}" ]; then
    BASE_PORT=$(free_port)
    while [ "$BASE_PORT" = "$TURND_PORT" ]; do BASE_PORT=$(free_port); done
    "${PIN_SERVER[@]}" "$BASELINE" -L 127.0.0.1 -p "$BASE_PORT" -E 127.0.0.1 --no-tls --no-tcp \
        --min-port 59000 --max-port 60999 -u "$USER_NAME:$PASSWORD" -r "$REALM" \
        --allow-loopback-peers --unauth-rate 0 ${BASELINE_ARGS:-} >"$OUT/turnd-base.log" 2>&1 &
    BASE_PID=$!
    PIDS+=("$BASE_PID")
    wait_udp "$BASE_PORT"
fi

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

# The forwarders' relay sockets get turnd's listener buffer (4 MiB): a client's
# datagrams queue there, where a TURN server queues them in its listener.
BARE_MMSG_PORT=$(free_port)
"${PIN_SERVER[@]}" "$BENCH" forwarder --listen "127.0.0.1:$BARE_MMSG_PORT" --buffer 4194304 \
    >"$OUT/forwarder-mmsg.log" 2>&1 &
BARE_MMSG_PID=$!
PIDS+=("$BARE_MMSG_PID")
wait_udp "$BARE_MMSG_PORT"
BARE_RS_PORT=$(free_port)
while [ "$BARE_RS_PORT" = "$BARE_MMSG_PORT" ]; do BARE_RS_PORT=$(free_port); done
"${PIN_SERVER[@]}" "$BENCH" forwarder --no-batch --listen "127.0.0.1:$BARE_RS_PORT" --buffer 4194304 \
    >"$OUT/forwarder-rs.log" 2>&1 &
BARE_RS_PID=$!
PIDS+=("$BARE_RS_PID")
wait_udp "$BARE_RS_PORT"

TARGETS=(turnd)
[ -n "${BASELINE:-}" ] && TARGETS+=(turnd_base)
[ "$COTURN" = 1 ] && TARGETS+=(coturn)
TARGETS+=(bare_rs bare_mmsg)

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
        turnd_base)
            [ "$transport" = udp ] || return 0
            pid=$BASE_PID
            server=127.0.0.1:$BASE_PORT
            ;;
        coturn)
            pid=$COTURN_PID
            server=127.0.0.1:$COTURN_PORT
            [ "$transport" = tls ] && server=127.0.0.1:$COTURN_TLS_PORT
            ;;
        bare_mmsg)
            pid=$BARE_MMSG_PID
            server=127.0.0.1:$BARE_MMSG_PORT
            extra=(--bare)
            ;;
        bare_rs)
            pid=$BARE_RS_PID
            server=127.0.0.1:$BARE_RS_PORT
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

# sweep TARGET KIND RUN "RATES" ARGS...: raises the rate until a point fails
# (loss >= 0.1 % or offered < 97 %).
sweep() {
    local target=$1 kind=$2 run=$3 rates=$4 rate r
    shift 4
    for rate in $rates; do
        r=$(bench "$target" udp "$target|udp|$kind|$rate|$run" --rate "$rate" \
            --duration "$SWEEP_DURATION" --warmup 0.5 "$@")
        if ! passes "$r" "$rate"; then
            echo "   stops at $rate per second"
            break
        fi
    done
}

summary() {
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "== results in $OUT; servers on core $SERVER_CPU, generator on core $GEN_CPU; $(summary)"
for run in $(seq 1 "$RUNS"); do
    for pacing in $PACINGS; do
        for rate in $RATES; do
            for target in "${TARGETS[@]}"; do
                echo "-- run $run: $target at $rate round trips/s, $pacing pacing ($(summary))"
                bench "$target" udp "$target|udp|fixed-$pacing|$rate|$run" \
                    --allocations "$ALLOCATIONS" --size "$SIZE" --rate "$rate" --pacing "$pacing" \
                    --duration "$DURATION" --warmup "$WARMUP" >/dev/null
            done
        done
    done
    if [ "$SWEEP" = 1 ] && [ "$run" -le "$SWEEP_RUNS" ]; then
        for target in "${TARGETS[@]}"; do
            echo "-- run $run: $target sweep ($SWEEP_PACING pacing)"
            sweep "$target" sweep "$run" "$SWEEP_RATES" \
                --allocations "$ALLOCATIONS" --size "$SIZE" --pacing "$SWEEP_PACING"
        done
    fi
    if [ "$FLOW" = 1 ] && [ "$run" -le "$SWEEP_RUNS" ]; then
        for target in "${TARGETS[@]}"; do
            echo "-- run $run: $target single flow, $FLOW_SIZE B one way ($FLOW_PACING pacing)"
            sweep "$target" flow "$run" "$FLOW_RATES" \
                --allocations 1 --one-way --size "$FLOW_SIZE" --pacing "$FLOW_PACING"
        done
    fi
    if [ "$STREAMS" = 1 ]; then
        for target in "${TARGETS[@]}"; do
            case "$target" in bare*) continue ;; esac
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
        case "$target" in bare*) continue ;; esac
        for run in $(seq 1 "$RUNS"); do
            echo "-- run $run: $target, $ALLOCS authenticated allocations"
            bench "$target" udp "$target|udp|alloc|$ALLOCS|$run" \
                --allocations-only --allocations "$ALLOCS" >/dev/null
        done
    done
fi

echo
echo "== summary (medians of $RUNS run(s); $(summary) at the end)"
python3 - "$RESULTS" "$RATES" "$FLOW_SIZE" <<'EOF' | tee "$OUT/summary.txt"
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rates = [int(r) for r in sys.argv[2].split()]
flow_size = int(sys.argv[3])
by = defaultdict(list)
for r in rows:
    if r.get("failed"):
        continue
    target, transport, kind, param, run = r["label"].split("|")
    by[(target, transport, kind, param)].append(r)

def med(target, transport, kind, param, key):
    vals = [r[key] for r in by.get((target, transport, kind, str(param)), []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def passed(r, rate):
    return r["loss_pct"] < 0.1 and r["offered_rt_per_s"] >= 0.97 * rate

def max_rate(kind):
    def f(target):
        # Per run: the highest swept rate that passed, then the median over runs.
        per_run = defaultdict(lambda: 0)
        runs = set()
        for (t, tr, k, param), rs in by.items():
            if t != target or k != kind:
                continue
            for r in rs:
                run = r["label"].split("|")[4]
                runs.add(run)
                if passed(r, float(param)):
                    per_run[run] = max(per_run[run], float(param))
        vals = [per_run[run] for run in runs]
        return statistics.median(vals) if vals else None
    return f

names = {"turnd": "turnd", "turnd_base": "before", "coturn": "coturn", "bare_rs": "bare r/s", "bare_mmsg": "bare mmsg"}
targets = [t for t in names if any(k[0] == t for k in by)]
ratios = [("turnd/bare r/s", "turnd", "bare_rs"), ("turnd/bare mmsg", "turnd", "bare_mmsg"), ("turnd/coturn", "turnd", "coturn"), ("turnd/before", "turnd", "turnd_base")]
ratios = [r for r in ratios if r[1] in targets and r[2] in targets]

def fmt(v, d=2):
    if v is None:
        return "-"
    if isinstance(v, (int, float)) and d == 0:
        return f"{v:,.0f}"
    return f"{v:.{d}f}" if isinstance(v, float) else str(v)

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

def table(title, metrics, with_ratios=True, cw=11):
    w = max(len(m[0]) for m in metrics) + 2
    head = f"{title:<{w}}" + "".join(f"{names[t]:>{cw}}" for t in targets)
    rs = ratios if with_ratios else []
    head += "".join(f"{n:>17}" for n, _, _ in rs)
    print(head)
    print("-" * len(head))
    for name, f, d in metrics:
        vals = {t: f(t) for t in targets}
        line = f"{name:<{w}}" + "".join(f"{fmt(vals[t], d):>{cw}}" for t in targets)
        line += "".join(f"{ratio(vals[a], vals[b]):>17}" for _, a, b in rs)
        print(line)
    print()

def m(kind, rate, key):
    return lambda t: med(t, "udp", kind, rate, key)

for pacing in ("even", "burst"):
    kind = f"fixed-{pacing}"
    if not any(k[2] == kind for k in by):
        continue
    metrics = []
    for rate in rates:
        metrics.append((f"server CPU per relayed packet @ {rate} rt/s (us)", m(kind, rate, "server_cpu_us_per_pkt"), 2))
    for rate in rates:
        metrics.append((f"  busiest thread only @ {rate} rt/s (us)", m(kind, rate, "server_top_thread_us_per_pkt"), 2))
    for rate in rates:
        metrics.append((f"RTT p50 @ {rate} rt/s (us)", m(kind, rate, "rtt_p50_us"), 0))
    for rate in rates:
        metrics.append((f"RTT p99 @ {rate} rt/s (us)", m(kind, rate, "rtt_p99_us"), 0))
    for rate in rates:
        metrics.append((f"loss @ {rate} rt/s (%)", m(kind, rate, "loss_pct"), 3))
    for rate in rates:
        metrics.append((f"server CPU @ {rate} rt/s (% of a core)", m(kind, rate, "server_cpu_pct"), 1))
    for rate in rates:
        metrics.append((f"generator CPU @ {rate} rt/s (% of a core)", m(kind, rate, "gen_cpu_pct"), 1))
    metrics.append((f"server threads", m(kind, rates[-1], "server_threads"), 0))
    metrics.append((f"server RSS after the {rates[-1]} rt/s run (KiB)", m(kind, rates[-1], "server_rss_kib"), 0))
    table(f"UDP, 100 allocations x 200 B, {pacing} pacing", metrics)
    pm = []
    for rate in rates:
        pm.append((f"gap p1/p50/p99 @ {rate} (ideal {1e6 / rate:.0f} us)", lambda t, rate=rate: "/".join(fmt(med(t, "udp", kind, rate, k), 1) for k in ("gap_p1_us", "gap_p50_us", "gap_p99_us")), 0))
        pm.append((f"  gaps < half the ideal @ {rate} (%)", m(kind, rate, "gap_short_pct"), 1))
        if pacing == "even":
            pm.append((f"  late p50/p99 @ {rate} (us)", lambda t, rate=rate: "/".join(fmt(med(t, "udp", kind, rate, k), 0) for k in ("late_p50_us", "late_p99_us")), 0))
        pm.append((f"  sends given up @ {rate}", m(kind, rate, "skipped"), 0))
    table(f"pacing achieved ({pacing}), medians", pm, with_ratios=False, cw=18)

if any(k[2] == "sweep" for k in by):
    table("100 allocations x 200 B, sweep", [("max rate at < 0.1 % loss (rt/s)", max_rate("sweep"), 0)])

if any(k[2] == "flow" for k in by):
    mbit = lambda v: None if v is None else v * flow_size * 8 / 1e6
    fm = [("max at < 0.1 % loss (Mbit/s of payload)", lambda t: mbit(max_rate("flow")(t)), 0)]
    flow_rates = sorted({int(k[3]) for k in by if k[2] == "flow"})
    for rate in flow_rates:
        fm.append((f"delivered @ {rate} dgram/s = {mbit(rate):.0f} Mbit/s", m("flow", rate, "delivered_mbit_s"), 0))
        fm.append((f"  loss @ {rate} dgram/s (%)", m("flow", rate, "loss_pct"), 3))
        fm.append((f"  server CPU per datagram @ {rate} (us)", m("flow", rate, "server_cpu_us_per_pkt"), 2))
    table(f"single flow, {flow_size} B one way (sweep stops at the first failure)", fm)

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
