#!/usr/bin/env bash
# The XDP fast path side by side (issue 15): turnd with xdp = "generic" and
# "native", turnd in user space (xdp off), coturn and the two bare user-space
# forwarders, over a veth topology in network namespaces, same load, one run.
# Root only (namespaces, XDP). Also reachable as `benches/compare.sh --xdp`.
#
#   benches/compare-xdp.sh                 # 2 runs, 4 s windows (about 15 minutes on 2 cores)
#   benches/compare-xdp.sh --quick         # 1 run, 2 s windows, shorter sweeps (about 6 minutes)
#   NAPI=threaded benches/compare-xdp.sh   # the per-thread CPU split (below)
#
# Topology (documentation addresses, 192.0.2.0/24; namespaces named
# xb<PID>c/r/p, removed on exit; the veths are really named xc/xr/xs/xp<N>,
# unique on the host, shown here as c0/r0/r1/p0):
#
#   client ns  c0 192.0.2.1/26  --veth--  r0 192.0.2.2/26   relay ns
#                                         r1 192.0.2.65/26  relay ns  --veth--  p0 192.0.2.66/26  peer ns
#
# Every server runs in the relay ns, listens on 192.0.2.2 (r0) and relays
# from 192.0.2.65 (r1) (the bare forwarders relay from their control socket
# on 192.0.2.2, routed out of r1). The generator (target/release/turnd-bench)
# runs in the client ns, its echo peer (`turnd-bench echo`, recvmmsg/sendmmsg)
# in the peer ns on 192.0.2.66:3480. What XDP needs (xdp/README.md of the
# xdp-prototype branch), set for every row alike: forwarding=1 in the relay
# ns; TX checksum offload off on the sending veths c0 and p0 (`ethtool -K IF
# tx off`: locally generated CHECKSUM_PARTIAL packets would leave the XDP
# rewrite with a wrong checksum); GRO on c0 and p0 (`ethtool -K IF gro on`:
# native-mode redirects into a veth whose other end has no NAPI vanish).
# Neighbours are resolved by the first packets, which go through turnd's
# user space anyway. Only one XDP turnd runs at a time (an interface holds one
# program): each is started for its own block of points and stopped after it;
# the user-space servers run throughout and see no XDP program on r0/r1.
#
# Load: N channels (allocations, one ChannelBind each, all to the one echo
# peer) at PPS (default 50) round trips/s each, i.e. N = rate / PPS; payload
# sizes spread over SIZE..SIZE_MAX (default 100..1200 B: allocation i sends
# SIZE + (i*389) mod (SIZE_MAX-SIZE+1) bytes, mean ~650 B), round robin over
# the channels. `even`: each send at its own due time (media-like, every flow
# evenly paced); `burst` (--no-burst skips it): sends due within BURST_TICK_US
# (default 2000 us) leave back to back, i.e. rate x 2 ms datagrams every 2 ms
# (40 at 20k rt/s). Fixed points at RATES (default 10000 20000 rt/s = 200 and
# 400 channels) for CPU and RTT; then sweeps (SWEEP_PACINGS, default even and
# burst) over SWEEP_RATES until loss >= 0.1 % or the generator cannot offer
# the rate (< 97 %).
#
# CPU per relayed packet (every figure / relayed packets, 2 per round trip):
# - host net: XDP work runs in softirq and is charged to no server process,
#   so this is the whole host's busy time: the `cpu` line of /proc/stat
#   (user+nice+system+irq+softirq; idle, iowait, steal excluded) over the
#   measured window minus an idle baseline measured in the same run right
#   before each target's block (IDLE_S s, all servers up and idle, no load).
#   It includes the generator and its echo peer (the same load in every row,
#   so it pulls every ratio towards 1) and anything else running on the host;
#   /proc/stat is tick-sampled here (CONFIG_TICK_CPU_ACCOUNTING, no
#   IRQ_TIME_ACCOUNTING), which under-counts short busy periods.
# - relay: utime+stime (/proc/PID/stat: the scheduler's precise runtime) of
#   the server process plus kernel threads: with NAPI=threaded the relay ns's
#   NAPI threads (its receive path: IP/UDP delivery, or the XDP program, FIB
#   lookup and redirect), pinned to the server core; with NAPI=softirq (the
#   default) only ksoftirqd/*, since softirq work runs in whatever task it
#   interrupts (with XDP: mostly the generator, on its core).
# - generator: utime+stime of turnd-bench and its echo peer (+ with
#   NAPI=threaded the client and peer ends' NAPI threads, pinned to the
#   generator's core). attributed = relay + generator.
# - server share (est.) = host net - generator.
# With NAPI=threaded the relay/generator split is exact up to the sends
# (a sender's own transmit into its veth is charged to the sender); it adds a
# NAPI-thread wake-up to every row and costs loss at lower rates (the NAPI
# thread shares the server core with the server), so the sweeps of the
# softirq run are the rate figures.
#
# Options: --quick, --no-coturn, --no-xdp (user-space rows only), --no-burst,
# --no-sweep, --no-uclient (skip the independent check). Environment: TURND
# (default target/release/turnd; needs `--features xdp` for the XDP rows),
# XDP_MODES (default "generic native"), RUNS, DURATION, WARMUP, RATES,
# SWEEP_RATES, SWEEP_DURATION, PPS, SIZE, SIZE_MAX, BURST_TICK_US, IDLE_S,
# SERVER_CPU (0), GEN_CPU (1), OUT (default target/compare-xdp/DATE),
# BPF_STATS (default 1: kernel.bpf_stats_enabled=1 during the XDP blocks for
# the program's own ns per run; adds two clock reads per run to the XDP rows),
# NAPI (default softirq; `threaded`: GRO on every veth end and threaded NAPI,
# the relay side's NAPI threads pinned to SERVER_CPU and counted as the
# relay's CPU, the generator side's to GEN_CPU and counted as the
# generator's: a per-thread split of the kernel's work instead of the
# host-wide figure; it adds a NAPI-thread wake-up per batch to every row),
# RPS (default 0; 1: receive packet steering of the relay ns's veths to
# SERVER_CPU and of the client/peer ends to GEN_CPU, so the relay ns's kernel
# work, generic XDP included, runs on the server core; native XDP runs before
# RPS and stays on the sending core),
# SWEEP_PACINGS (default "even burst"), SWEEP_RUNS and UCLIENT_RUNS (how many
# of the runs include the sweeps / the uclient check; default 1),
# AUTOGROUP_NICE (as in compare.sh: e.g. -10 runs the script in a session of
# its own whose scheduler autogroup gets that nice value),
# UCLIENT_CLIENTS / UCLIENT_MSGS (independent check, default 200 clients x
# 500 messages at 20 ms = 50 pps each, 200 B).
#
# Independent check: coturn's turnutils_uclient (client ns) against
# turnutils_peer (peer ns) on turnd user space, turnd XDP and coturn: the same
# host CPU method around the whole uclient run, its loss and average RTT.
# uclient picks channel numbers in 0x4000-0x7FFF, all of which the fast path
# takes since 644bdd4 (before, only 0x4000-0x4FFF: 21 % of the packets in
# BENCHMARKS' run); it checks loss, RTT and turnd vs coturn.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ -n "${AUTOGROUP_NICE:-}" ] && [ -z "${COMPARE_OWN_SESSION:-}" ]; then
    COMPARE_OWN_SESSION=1 exec setsid --wait "$0" "$@"
fi
if [ -n "${AUTOGROUP_NICE:-}" ]; then
    echo "$AUTOGROUP_NICE" >/proc/self/autogroup || echo "compare-xdp.sh: could not set the autogroup's nice" >&2
fi

QUICK=0 COTURN=1 XDP=1 BURST=1 SWEEP=1 UCLIENT=1
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        --no-coturn) COTURN=0 ;;
        --no-xdp) XDP=0 ;;
        --no-burst) BURST=0 ;;
        --no-sweep) SWEEP=0 ;;
        --no-uclient) UCLIENT=0 ;;
        --xdp) ;;
        -h | --help)
            sed -n '2,90p' "$0"
            exit 0
            ;;
        *)
            echo "compare-xdp.sh: unknown option $a" >&2
            exit 2
            ;;
    esac
done
[ "$(id -u)" = 0 ] || {
    echo "compare-xdp.sh: needs root (network namespaces, XDP)" >&2
    exit 2
}

if [ "$QUICK" = 1 ]; then
    : "${RUNS:=1}" "${DURATION:=2}" "${WARMUP:=1}" "${SWEEP_DURATION:=2}"
    : "${SWEEP_RATES:=20000 40000 60000 80000 100000 120000}"
    : "${IDLE_S:=2}"
else
    : "${RUNS:=2}" "${DURATION:=4}" "${WARMUP:=1}" "${SWEEP_DURATION:=2}"
    : "${SWEEP_RATES:=10000 20000 30000 40000 50000 60000 70000 80000 90000 100000 120000 140000}"
    : "${IDLE_S:=3}"
fi
: "${RATES:=10000 20000}" "${PPS:=50}" "${SIZE:=100}" "${SIZE_MAX:=1200}" "${BURST_TICK_US:=2000}"
: "${XDP_MODES:=generic native}" "${BPF_STATS:=1}" "${NAPI:=softirq}" "${RPS:=0}"
: "${SWEEP_PACINGS:=even burst}" "${SWEEP_RUNS:=1}" "${UCLIENT_RUNS:=1}"
: "${UCLIENT_CLIENTS:=200}" "${UCLIENT_MSGS:=500}"
: "${SERVER_CPU:=0}" "${GEN_CPU:=1}"
: "${OUT:=target/compare-xdp/$(date +%Y%m%d-%H%M%S)}"
: "${TURND:=target/release/turnd}"
BENCH=target/release/turnd-bench
USER_NAME=bench PASSWORD=bench REALM=bench
C_IP=192.0.2.1 L_IP=192.0.2.2 E_IP=192.0.2.65 PEER_IP=192.0.2.66 PEER_PORT=3480 UPEER_PORT=3481
PACINGS=even
[ "$BURST" = 1 ] && PACINGS="even burst"
if ! command -v turnserver >/dev/null; then
    [ "$COTURN" = 1 ] && echo "compare-xdp.sh: turnserver (coturn) not found: coturn is skipped" >&2
    COTURN=0
fi
command -v turnutils_uclient >/dev/null || UCLIENT=0
for b in "$TURND" "$BENCH"; do
    [ -x "$b" ] || {
        echo "compare-xdp.sh: $b missing (cargo build --release --features xdp --bin turnd --bin turnd-bench)" >&2
        exit 2
    }
done
if [ "$XDP" = 1 ] && ! "$TURND" --help 2>&1 | grep -q -- '--xdp'; then
    echo "compare-xdp.sh: $TURND has no --xdp option: the XDP rows are skipped" >&2
    XDP=0
fi
[ "$XDP" = 1 ] || XDP_MODES=""

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
TMP=$(mktemp -d)
P=xb$$
NS_C=${P}c NS_R=${P}r NS_P=${P}p
# Interface names unique on the host (NAPI threads are named after them).
T=$(($$ % 10000))
IC=xc$T IR0=xr$T IR1=xs$T IP=xp$T
nsx() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

PIDS=()
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo 0)
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    ip netns del "$NS_R" 2>/dev/null || true
    ip netns del "$NS_P" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- topology
ip netns add "$NS_C"
ip netns add "$NS_R"
ip netns add "$NS_P"
ip link add $IC netns "$NS_C" type veth peer name $IR0 netns "$NS_R"
ip link add $IR1 netns "$NS_R" type veth peer name $IP netns "$NS_P"
nsx "$NS_C" ip addr add "$C_IP/26" dev $IC
nsx "$NS_R" ip addr add "$L_IP/26" dev $IR0
nsx "$NS_R" ip addr add "$E_IP/26" dev $IR1
nsx "$NS_P" ip addr add "$PEER_IP/26" dev $IP
for ns in "$NS_C" "$NS_R" "$NS_P"; do nsx "$ns" ip link set lo up; done
nsx "$NS_C" ip link set $IC up
nsx "$NS_R" ip link set $IR0 up
nsx "$NS_R" ip link set $IR1 up
nsx "$NS_P" ip link set $IP up
nsx "$NS_C" ip route add default via "$L_IP"
nsx "$NS_P" ip route add default via "$E_IP"
nsx "$NS_R" sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv4.conf.$IR0.forwarding=1 \
    net.ipv4.conf.$IR1.forwarding=1 net.ipv4.ip_local_port_range="55000 64999"
nsx "$NS_C" sysctl -qw net.ipv4.ip_local_port_range="20000 64999"
nsx "$NS_C" ethtool -K $IC tx off gro on >/dev/null
nsx "$NS_P" ethtool -K $IP tx off gro on >/dev/null
if [ "$RPS" = 1 ]; then
    # Receive packet steering: what arrives on the relay ns's veths is
    # processed (IP/UDP delivery, or generic XDP, which runs after RPS) on
    # the server core, what arrives at the client and peer ends on the
    # generator's core. Native XDP runs before RPS, in the NAPI poll on the
    # sending core, so RPS does not move it.
    smask=$(printf %x $((1 << SERVER_CPU))) gmask=$(printf %x $((1 << GEN_CPU)))
    nsx "$NS_R" sh -c "echo $smask >/sys/class/net/$IR0/queues/rx-0/rps_cpus; echo $smask >/sys/class/net/$IR1/queues/rx-0/rps_cpus"
    nsx "$NS_C" sh -c "echo $gmask >/sys/class/net/$IC/queues/rx-0/rps_cpus"
    nsx "$NS_P" sh -c "echo $gmask >/sys/class/net/$IP/queues/rx-0/rps_cpus"
fi
if [ "$NAPI" = threaded ]; then
    # Every veth end gets NAPI (GRO on) in a kernel thread of its own: the
    # relay ns's receive work (IP/UDP delivery, or the XDP program and its
    # redirect) then runs in napi/$IR0-* and napi/$IR1-*, pinned to the server
    # core and counted as the relay's; napi/$IC-* and napi/$IP-* (the
    # generator's receive side) are pinned to the generator's core and counted
    # as the generator's.
    nsx "$NS_R" ethtool -K $IR0 gro on >/dev/null
    nsx "$NS_R" ethtool -K $IR1 gro on >/dev/null
    nsx "$NS_C" sh -c "echo 1 >/sys/class/net/$IC/threaded"
    nsx "$NS_R" sh -c "echo 1 >/sys/class/net/$IR0/threaded; echo 1 >/sys/class/net/$IR1/threaded"
    nsx "$NS_P" sh -c "echo 1 >/sys/class/net/$IP/threaded"
fi
{
    echo "== topology"
    for ns in "$NS_C" "$NS_R" "$NS_P"; do
        echo "-- $ns"
        nsx "$ns" ip -br addr
        nsx "$ns" ip route
    done
    for x in "$NS_C $IC" "$NS_P $IP"; do
        set -- $x
        echo "-- $2: $(nsx "$1" ethtool -k "$2" | grep -E '^(tx-checksumming|generic-receive-offload):' | tr '\n' ' ')"
    done
    echo "-- NAPI: $NAPI, RPS: $RPS"
    echo "-- relay ns forwarding: $(nsx "$NS_R" sysctl -n net.ipv4.conf.$IR0.forwarding net.ipv4.conf.$IR1.forwarding | tr '\n' ' ')"
} >"$OUT/topology.txt" 2>&1

wait_udp() { # NS PORT
    local i
    for i in $(seq 1 100); do
        if nsx "$1" ss -Hlun "( sport = :$2 )" | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    echo "compare-xdp.sh: nothing listens on udp port $2 in $1" >&2
    return 1
}

KSOFTIRQD=()
for c in $(seq 0 $(($(nproc) - 1))); do
    k=$(pgrep -x "ksoftirqd/$c" || true)
    [ -n "$k" ] && KSOFTIRQD+=(--kthread-pid "$k")
done
PIN_S=(taskset -c "$SERVER_CPU")
PIN_G=(taskset -c "$GEN_CPU")

# ---- peers (peer ns)
ip netns exec "$NS_P" "${PIN_G[@]}" "$BENCH" echo --listen "$PEER_IP:$PEER_PORT" >"$OUT/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_udp "$NS_P" "$PEER_PORT"

# ---- user-space servers (relay ns), up for the whole run
TURND_PORT=3478 COTURN_PORT=3479 XDP_PORT=3477 BARE_RS_PORT=3490 BARE_MMSG_PORT=3491
METRICS_PORT=9641
TURND_ARGS=(-L "$L_IP" -E "$E_IP" -u "$USER_NAME:$PASSWORD" -r "$REALM" --unauth-rate 0 --no-tls --no-tcp)
ip netns exec "$NS_R" "${PIN_S[@]}" "$TURND" "${TURND_ARGS[@]}" -p "$TURND_PORT" --min-port 40000 --max-port 44999 \
    >"$OUT/turnd.log" 2>&1 &
TURND_PID=$!
PIDS+=("$TURND_PID")
wait_udp "$NS_R" "$TURND_PORT"
if [ "$COTURN" = 1 ]; then
    # Debian's coturn 4.6: --relay-threads 1 = one relay thread.
    ip netns exec "$NS_R" "${PIN_S[@]}" turnserver -n --no-cli --log-file=stdout -L "$L_IP" -E "$E_IP" \
        -p "$COTURN_PORT" --min-port 50000 --max-port 54999 -a -f -u "$USER_NAME:$PASSWORD" \
        -r "$REALM" --no-dtls --no-tls --no-tcp --relay-threads 1 >"$OUT/coturn.log" 2>&1 &
    COTURN_PID=$!
    PIDS+=("$COTURN_PID")
    wait_udp "$NS_R" "$COTURN_PORT"
fi
ip netns exec "$NS_R" "${PIN_S[@]}" "$BENCH" forwarder --no-batch --listen "$L_IP:$BARE_RS_PORT" --buffer 4194304 \
    >"$OUT/forwarder-rs.log" 2>&1 &
BARE_RS_PID=$!
PIDS+=("$BARE_RS_PID")
wait_udp "$NS_R" "$BARE_RS_PORT"
ip netns exec "$NS_R" "${PIN_S[@]}" "$BENCH" forwarder --listen "$L_IP:$BARE_MMSG_PORT" --buffer 4194304 \
    >"$OUT/forwarder-mmsg.log" 2>&1 &
BARE_MMSG_PID=$!
PIDS+=("$BARE_MMSG_PID")
wait_udp "$NS_R" "$BARE_MMSG_PORT"

XDP_PID=""
start_xdp() { # MODE
    ip netns exec "$NS_R" "${PIN_S[@]}" "$TURND" "${TURND_ARGS[@]}" -p "$XDP_PORT" --min-port 45000 --max-port 49999 \
        --xdp "$1" --prometheus --prometheus-address 127.0.0.1 --prometheus-port "$METRICS_PORT" \
        >"$OUT/turnd-xdp-$1.log" 2>&1 &
    XDP_PID=$!
    PIDS+=("$XDP_PID")
    if ! wait_udp "$NS_R" "$XDP_PORT"; then
        echo "compare-xdp.sh: turnd --xdp $1 did not start; its log:" >&2
        tail -20 "$OUT/turnd-xdp-$1.log" >&2
        XDP_PID=""
        return 1
    fi
    nsx "$NS_R" ip -d link show $IR0 | grep -o 'prog/xdp[a-z]* id [0-9]*' | sed "s/^/   $IR0: /" || true
    nsx "$NS_R" ip -d link show $IR1 | grep -o 'prog/xdp[a-z]* id [0-9]*' | sed "s/^/   $IR1: /" || true
    [ "$BPF_STATS" = 1 ] && sysctl -qw kernel.bpf_stats_enabled=1
    return 0
}
stop_xdp() {
    [ -n "$XDP_PID" ] || return 0
    kill "$XDP_PID" 2>/dev/null || true
    wait "$XDP_PID" 2>/dev/null || true
    XDP_PID=""
    sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do # the program must be gone before the next block
        if ! nsx "$NS_R" ip link show $IR0 | grep -q xdp && ! nsx "$NS_R" ip link show $IR1 | grep -q xdp; then
            return 0
        fi
        sleep 0.1
    done
    echo "compare-xdp.sh: an XDP program is still attached after turnd exited:" >&2
    nsx "$NS_R" ip link show >&2
}

# Counters of the XDP turnd: kernel-relayed packets (metrics) and the XDP
# program's run count / run time (bpf_stats), as JSON.
xdp_counters() {
    local m
    m=$(nsx "$NS_R" curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" || true)
    python3 - "$m" <<'EOF'
import json, subprocess, sys
m = sys.argv[1]
def total(name):
    s = 0.0
    for l in m.splitlines():
        if l.startswith(name + "{") or l.startswith(name + " "):
            try:
                s += float(l.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return s
out = {
    "xdp_pkts": total("turnd_xdp_relayed_packets_total"),
    "all_pkts": total("turnd_relayed_packets_total"),
    "passed": total("turnd_xdp_passed_packets_total"),
    "passed_by": {l.split('reason="')[1].split('"')[0]: float(l.rsplit(" ", 1)[1])
                  for l in m.splitlines() if l.startswith("turnd_xdp_passed_packets_total{")},
}
try:
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout or "[]")
    ps = [p for p in progs if p.get("type") == "xdp" and "turnd" in p.get("name", "")]
    out["bpf_run_cnt"] = sum(p.get("run_cnt", 0) for p in ps)
    out["bpf_run_time_ns"] = sum(p.get("run_time_ns", 0) for p in ps)
except Exception:
    pass
print(json.dumps(out))
EOF
}

# Host busy CPU seconds per second with no load (every server up and idle).
idle_rate() {
    python3 - "$IDLE_S" <<'EOF'
import sys, time
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]), time.monotonic()
b0, t0 = busy()
time.sleep(float(sys.argv[1]))
b1, t1 = busy()
import os
print(f"{(b1 - b0) / os.sysconf('SC_CLK_TCK') / (t1 - t0):.4f}")
EOF
}

# utime+stime (seconds) of the given PIDs, summed.
proc_cpu() {
    python3 - "$@" <<'EOF'
import os, sys
t = 0
for p in sys.argv[1:]:
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    except (OSError, IndexError, ValueError):
        pass
print(t / os.sysconf("SC_CLK_TCK"))
EOF
}

server_of() { # TARGET -> "ADDR PID EXTRA"
    case "$1" in
        turnd) echo "$L_IP:$TURND_PORT $TURND_PID" ;;
        coturn) echo "$L_IP:$COTURN_PORT $COTURN_PID" ;;
        bare_rs) echo "$L_IP:$BARE_RS_PORT $BARE_RS_PID --bare" ;;
        bare_mmsg) echo "$L_IP:$BARE_MMSG_PORT $BARE_MMSG_PID --bare" ;;
        xdp_*) echo "$L_IP:$XDP_PORT $XDP_PID" ;;
    esac
}

IDLE=0
# bench TARGET LABEL ARGS...: one turnd-bench run in the client ns; its RESULT
# line, with the idle baseline (and for XDP the kernel counters) added, goes
# to $RESULTS.
bench() {
    local target=$1 label=$2
    shift 2
    local server pid extra before="{}" after="{}" line
    read -r server pid extra <<<"$(server_of "$target")"
    local acct=("${KSOFTIRQD[@]}")
    if [ "$NAPI" = threaded ]; then
        acct=()
        local k
        for k in $(pgrep "^napi/($IR0|$IR1)-" || true); do
            taskset -pc "$SERVER_CPU" "$k" >/dev/null
            acct+=(--kthread-pid "$k")
        done
        for k in $(pgrep "^napi/($IC|$IP)-" || true); do
            taskset -pc "$GEN_CPU" "$k" >/dev/null
            acct+=(--gen-pid "$k")
        done
    fi
    case "$target" in xdp_*) before=$(xdp_counters) ;; esac
    # shellcheck disable=SC2086
    line=$(nsx "$NS_C" "${PIN_G[@]}" "$BENCH" --server "$server" --user "$USER_NAME" --password "$PASSWORD" \
        --local-ip "$C_IP" --peer "$PEER_IP:$PEER_PORT" --gen-pid "$ECHO_PID" "${acct[@]}" --server-pid "$pid" \
        --label "$label" $extra "$@" 2>>"$OUT/bench.stderr" | tee -a "$OUT/bench.log" | grep '^RESULT ' |
        sed 's/^RESULT //' || true)
    # turnd reads the kernel's counters back at most 1 s late.
    case "$target" in xdp_*) sleep 1.2 && after=$(xdp_counters) ;; esac
    [ -n "$line" ] || line='{"label":"'"$label"'","failed":true}'
    line=$(python3 - "$line" "$IDLE" "$before" "$after" <<'EOF'
import json, sys
r = json.loads(sys.argv[1]); r["idle_busy_per_s"] = float(sys.argv[2])
b, a = json.loads(sys.argv[3]), json.loads(sys.argv[4])
for k in ("xdp_pkts", "all_pkts", "passed", "bpf_run_cnt", "bpf_run_time_ns"):
    if k in a and k in b:
        r["d_" + k] = a[k] - b[k]
if "passed_by" in a:
    r["d_passed_by"] = {k: v - b.get("passed_by", {}).get(k, 0) for k, v in a["passed_by"].items() if v - b.get("passed_by", {}).get(k, 0)}
print(json.dumps(r))
EOF
)
    echo "$line" >>"$RESULTS"
    echo "$line"
}

passes() {
    python3 -c '
import json, sys
r = json.loads(sys.argv[1]); rate = float(sys.argv[2])
ok = not r.get("failed") and r["loss_pct"] < 0.1 and r["offered_rt_per_s"] >= 0.97 * rate
sys.exit(0 if ok else 1)' "$1" "$2"
}

channels() { echo $(($1 / PPS)); }

TARGETS=(turnd)
[ "$COTURN" = 1 ] && TARGETS+=(coturn)
TARGETS+=(bare_rs bare_mmsg)
for m in $XDP_MODES; do TARGETS+=("xdp_$m"); done

summary() { echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
echo "== compare-xdp: results in $OUT; servers on core $SERVER_CPU, generator + echo peer on core $GEN_CPU; $(summary)"
echo "   NOTE: 2-core VM: the generator (and, with XDP, the in-kernel relaying, which runs in softirq on the"
echo "   sender's core) share the host with the servers; read the ratios, not the absolute figures."
echo "   Load: channels at $PPS round trips/s each (channels = rate / $PPS), payload $SIZE..$SIZE_MAX B"
echo "   (allocation i: $SIZE + (i*389) mod $((SIZE_MAX - SIZE + 1))), round robin; even pacing and burst"
echo "   (sends due within $BURST_TICK_US us back to back)."
for run in $(seq 1 "$RUNS"); do
    for target in "${TARGETS[@]}"; do
        case "$target" in
            xdp_*)
                echo "-- run $run: starting turnd --xdp ${target#xdp_}"
                start_xdp "${target#xdp_}" || continue
                ;;
        esac
        IDLE=$(idle_rate)
        echo "-- run $run: $target (idle baseline $IDLE busy CPU-s/s; $(summary))"
        for pacing in $PACINGS; do
            tick=()
            [ "$pacing" = burst ] && tick=(--tick-us "$BURST_TICK_US")
            for rate in $RATES; do
                r=$(bench "$target" "$target|$pacing|$rate|$run" --allocations "$(channels "$rate")" \
                    --size "$SIZE" --size-max "$SIZE_MAX" --rate "$rate" --pacing "$pacing" "${tick[@]}" \
                    --duration "$DURATION" --warmup "$WARMUP")
                python3 benches/compare-xdp-summary.py --line "$r"
            done
        done
        if [ "$SWEEP" = 1 ] && [ "$run" -le "$SWEEP_RUNS" ]; then
            for pacing in $SWEEP_PACINGS; do
                tick=()
                [ "$pacing" = burst ] && tick=(--tick-us "$BURST_TICK_US")
                for rate in $SWEEP_RATES; do
                    r=$(bench "$target" "$target|sweep-$pacing|$rate|$run" --allocations "$(channels "$rate")" \
                        --size "$SIZE" --size-max "$SIZE_MAX" --rate "$rate" --pacing "$pacing" "${tick[@]}" \
                        --duration "$SWEEP_DURATION" --warmup 0.5)
                    if ! passes "$r" "$rate"; then
                        echo "   sweep ($pacing) stops at $rate rt/s"
                        break
                    fi
                done
            done
        fi
        case "$target" in xdp_*) stop_xdp ;; esac
    done
done

# ---- independent check: turnutils_uclient -> turnutils_peer
if [ "$UCLIENT" = 1 ]; then
    ip netns exec "$NS_P" "${PIN_G[@]}" turnutils_peer -L "$PEER_IP" -p "$UPEER_PORT" >"$OUT/uclient-peer.log" 2>&1 &
    UPEER_PID=$!
    PIDS+=("$UPEER_PID")
    wait_udp "$NS_P" "$UPEER_PORT"
    UTARGETS=(turnd)
    [ "$COTURN" = 1 ] && UTARGETS+=(coturn)
    for m in $XDP_MODES; do UTARGETS+=("xdp_$m"); done
    for run in $(seq 1 "$UCLIENT_RUNS"); do
        for target in "${UTARGETS[@]}"; do
            case "$target" in xdp_*) start_xdp "${target#xdp_}" || continue ;; esac
            IDLE=$(idle_rate)
            read -r server pid _ <<<"$(server_of "$target")"
            before="{}" after="{}"
            case "$target" in xdp_*) before=$(xdp_counters) ;; esac
            log="$OUT/uclient-$target-$run.log"
            watch="$pid $UPEER_PID $(pgrep -x 'ksoftirqd/[0-9]*' | tr '\n' ' ')"
            w0=$(proc_cpu $watch)
            s0=$(head -1 /proc/stat)
            t0=$(date +%s.%N)
            nsx "$NS_C" "${PIN_G[@]}" /usr/bin/time -f "UCLIENT_CPU %U %S %e" turnutils_uclient -L "$C_IP" \
                -p "${server##*:}" -u "$USER_NAME" -w "$PASSWORD" -e "$PEER_IP" -r "$UPEER_PORT" -c \
                -m "$UCLIENT_CLIENTS" -n "$UCLIENT_MSGS" -l 200 -z 20 "${server%:*}" >"$log" 2>&1 || true
            t1=$(date +%s.%N)
            s1=$(head -1 /proc/stat)
            w1=$(proc_cpu $watch)
            case "$target" in xdp_*) sleep 1.2 && after=$(xdp_counters) ;; esac
            python3 - "$target" "$run" "$IDLE" "$s0" "$s1" "$t0" "$t1" "$log" "$before" "$after" \
                "$UCLIENT_CLIENTS" "$UCLIENT_MSGS" "$w0" "$w1" <<'EOF' | tee -a "$RESULTS"
import json, os, re, sys
target, run, idle, s0, s1, t0, t1, log, b, a, clients, msgs, w0, w1 = sys.argv[1:]
f0 = [int(x) for x in s0.split()[1:]]; f1 = [int(x) for x in s1.split()[1:]]
tck = os.sysconf("SC_CLK_TCK")
busy = sum((f1[i] - f0[i]) for i in (0, 1, 2, 5, 6)) / tck
wall = float(t1) - float(t0)
text = open(log, errors="replace").read()
def num(pat):
    m = re.findall(pat, text)
    return float(m[-1]) if m else None
r = {"label": f"{target}|uclient|{int(clients) * 50}|{run}", "uclient": True, "wall_s": round(wall, 3),
     "host_busy_s": round(busy, 3), "idle_busy_per_s": float(idle),
     "sent": num(r"tot_send_msgs=(\d+)"), "received": num(r"tot_recv_msgs=(\d+)"),
     "lost": num(r"Total lost packets (\d+)"), "rtt_avg_ms": num(r"Average round trip delay ([\d.]+) ms"),
     "jitter_ms": num(r"Average jitter ([\d.]+) ms")}
m = re.search(r"UCLIENT_CPU ([\d.]+) ([\d.]+) ([\d.]+)", text)
if m:
    r["gen_cpu_s"] = float(m.group(1)) + float(m.group(2))
if r["received"]:
    pk = 2 * r["received"]
    r["host_net_us_per_pkt"] = round((busy - float(idle) * wall) * 1e6 / pk, 3)
    if "gen_cpu_s" in r:
        r["gen_cpu_us_per_pkt"] = round(r["gen_cpu_s"] * 1e6 / pk, 3)
        # server + turnutils_peer + ksoftirqd (/proc/PID/stat) + uclient (time)
        r["attributed_us_per_pkt"] = round((float(w1) - float(w0) + r["gen_cpu_s"]) * 1e6 / pk, 3)
    r["loss_pct"] = round(100 * (r["sent"] - r["received"]) / r["sent"], 4) if r["sent"] else None
b, a = json.loads(b), json.loads(a)
if "xdp_pkts" in a and "xdp_pkts" in b:
    r["d_xdp_pkts"] = a["xdp_pkts"] - b["xdp_pkts"]; r["d_all_pkts"] = a["all_pkts"] - b["all_pkts"]
    r["d_passed_by"] = {k: v - b.get("passed_by", {}).get(k, 0) for k, v in a.get("passed_by", {}).items() if v - b.get("passed_by", {}).get(k, 0)}
print(json.dumps(r))
EOF
            case "$target" in xdp_*) stop_xdp ;; esac
        done
    done
fi

echo
echo "== summary ($(summary) at the end)"
python3 benches/compare-xdp-summary.py "$RESULTS" "$RATES" "$PPS" "$SIZE" "$SIZE_MAX" "$BURST_TICK_US" "$NAPI" | tee "$OUT/summary.md"
echo "raw results: $RESULTS"
