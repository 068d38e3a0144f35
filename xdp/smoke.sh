#!/bin/bash
# Smoke test of the turnd XDP fast path (root; Linux with XDP on veth).
#
#   xdp/smoke.sh [generic|native|both]      (default both)
#
# Topology, three private namespaces per mode (documentation addresses):
#
#   client ns  c0 ==veth== r0  relay ns  r1 ==veth== p0  peer ns
#   192.0.2.2 (client)    192.0.2.1 (listen) 192.0.2.65 (relay)  192.0.2.66 (peer)
#   192.0.2.3 (peer2)     2001:db8:1::1      2001:db8:2::1       2001:db8:2::2
#   2001:db8:1::2/::3
#
# The program is loaded once per mode (bpftool, maps pinned in a private
# bpffs) and attached to r0 and r1. Binding 1 (client -> peer in peer ns)
# exercises bpf_redirect r0 <-> r1; binding 2 (client -> peer2, a second
# address in the client ns) exercises XDP_TX on r0; binding 3 has a deadline
# in the past. No turnd runs: whatever the program passes reaches no socket.
#
# Knobs (for the experiments in README.md):
#   TXCSUM=on      keep TX checksum offload on the senders' veths (default off:
#                  veth hands locally generated UDP to XDP with a partial
#                  checksum, see README)
#   PEER=gro|none  native mode only: what the veth peers c0/p0 get so that
#                  frames the relay sends natively are delivered (default xdp:
#                  the pass-everything xdp_pass.o; gro: GRO on, enough for
#                  bpf_redirect but not for XDP_TX; none: nothing, see README)
#   FORWARDING=0   leave forwarding off in the relay ns
#   FAMILIES="4 6"
#   BENCH=N        also send N ChannelData (100 bytes of data) as fast as one
#                  python3 process can, client -> peer, and print the program's
#                  own run time per packet (kernel.bpf_stats_enabled) and the
#                  VM-wide CPU time (/proc/stat) over the run
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PKT="python3 $HERE/pkt.py"
MODES=${1:-both}
[ "$MODES" = both ] && MODES="generic native"
TXCSUM=${TXCSUM:-off}
PEER=${PEER:-xdp}
FORWARDING=${FORWARDING:-1}
FAMILIES=${FAMILIES:-"4 6"}
BENCH=${BENCH:-0}

[ "$(id -u)" = 0 ] || { echo "smoke.sh: needs root" >&2; exit 1; }
# no dots in the path: libbpf turns them into '_' when pinning maps
WORK=$(mktemp -d /tmp/turnd-xdp-smoke-XXXXXX)
BPFFS=$WORK/bpffs
ID=txdp$$
C=$ID-c R=$ID-r P=$ID-p
PIDS=()
FAILS=0

cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for ns in $C $R $P; do
		if ip netns list | grep -qw "$ns"; then
			for d in r0 r1; do ip -n $R link set dev $d xdpgeneric off 2>/dev/null; ip -n $R link set dev $d xdpdrv off 2>/dev/null; done
			ip netns del "$ns"
		fi
	done
	mountpoint -q "$BPFFS" && umount "$BPFFS"
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

log() { echo "== $*"; }
ok() { echo "   ok: $*"; }
fail() { echo "   FAIL: $*"; FAILS=$((FAILS + 1)); }

"$HERE/build.sh" "$WORK/turnd_xdp.o"
OBJ=$WORK/turnd_xdp.o
mkdir "$BPFFS"
mount -t bpf bpf "$BPFFS"

setup_netns() {
	ip netns add $C; ip netns add $R; ip netns add $P
	for ns in $C $R $P; do ip -n $ns link set lo up; done
	ip -n $C link add c0 type veth peer name r0 netns $R
	ip -n $P link add p0 type veth peer name r1 netns $R
	ip -n $C addr add 192.0.2.2/26 dev c0
	ip -n $C addr add 192.0.2.3/26 dev c0
	ip -n $C addr add 2001:db8:1::2/64 dev c0 nodad
	ip -n $C addr add 2001:db8:1::3/64 dev c0 nodad
	ip -n $R addr add 192.0.2.1/26 dev r0
	ip -n $R addr add 2001:db8:1::1/64 dev r0 nodad
	ip -n $R addr add 192.0.2.65/26 dev r1
	ip -n $R addr add 2001:db8:2::1/64 dev r1 nodad
	ip -n $P addr add 192.0.2.66/26 dev p0
	ip -n $P addr add 2001:db8:2::2/64 dev p0 nodad
	for l in "$C c0" "$R r0" "$R r1" "$P p0"; do ip -n ${l% *} link set dev ${l#* } up; done
	ip -n $C route add default via 192.0.2.1
	ip -n $C -6 route add default via 2001:db8:1::1
	ip -n $P route add default via 192.0.2.65
	ip -n $P -6 route add default via 2001:db8:2::1
	ip netns exec $R sysctl -qw net.ipv4.conf.all.forwarding=$FORWARDING net.ipv6.conf.all.forwarding=$FORWARDING
	if [ "$TXCSUM" = off ]; then
		ip netns exec $C $PKT ethtool c0 tx off
		ip netns exec $P $PKT ethtool p0 tx off
	fi
}

# counters: global counter snapshot as a bash array indexed like enum turnd_counter
CNT_NAMES=(pass_not_udp pass_no_entry pass_expired pass_bad_len pass_ttl pass_bad_entry
	pass_no_csum pass_fib_no_neigh pass_fib_fwd_disabled pass_fib_frag_needed
	pass_fib_other pass_adjust_head c2p_tx c2p_redirect p2c_tx p2c_redirect)
counters() {
	bpftool -j map dump pinned $MAPS/turnd_counters >$WORK/cnt.json
	$PKT percpu-dump $WORK/cnt.json 1 | tr '\n' ' '
}
snap() { read -r -a BEFORE <<<"$(counters)"; }
# expect_delta name=n ... : the counters changed by exactly these amounts (others
# by 0), except pass_not_udp (ARP, ND, MLD, ICMP errors come and go), printed only
expect_delta() {
	local after i name want got bad="" other
	read -r -a after <<<"$(counters)"
	for i in "${!CNT_NAMES[@]}"; do
		name=${CNT_NAMES[$i]}
		want=0
		for kv in "$@"; do [ "${kv%=*}" = "$name" ] && want=${kv#*=}; done
		got=$((after[i] - BEFORE[i]))
		[ $i = 0 ] && { other=$got; continue; }
		[ "$got" = "$want" ] || bad="$bad $name:+$got(want +$want)"
	done
	if [ -z "$bad" ]; then ok "counters: ${*:-no change} (pass_not_udp +$other)"; else fail "counters:$bad"; fi
}
stats() { # stats IDX -> "c2p_packets c2p_bytes p2c_packets p2c_bytes"
	bpftool -j map lookup pinned $MAPS/turnd_stats key hex $($PKT u32 $1) >$WORK/st.json
	$PKT percpu-sum $WORK/st.json 4
}

# recv NS IFACE ADDR PORT OUT: start a receiver for 1 s in the background
recv() {
	rm -f $WORK/ready
	ip netns exec $1 $PKT recv $2 $3 $4 1.0 $5 $WORK/ready &
	RECV_PID=$!
	PIDS+=($RECV_PID)
	for _ in $(seq 50); do [ -e $WORK/ready ] && break; sleep 0.05; done
}
recv_wait() { wait $RECV_PID || fail "receiver exited with an error"; }
send() { ip netns exec "$@"; }
# check OUT COUNT SRC SPORT PAYLOAD WHAT
check() {
	if $PKT expect "$1" "$2" "$3" "$4" "$5"; then ok "$6"; else fail "$6"; fi
}

cpu_jiffies() { awk '/^cpu / {print $2 + $3 + $4, $7 + $8, $5 + $6}' /proc/stat; } # busy-non-irq irq+softirq idle+iowait
bench() {
	log "$MODE IPv$fam: bench, $BENCH x ChannelData(100) client -> peer (redirect)"
	local D3 prog rt0 rc0 rt1 rc1 c0 c1 t0 t1 sink
	D3=4000$(printf %04x 100)$(head -c 100 /dev/zero | od -An -v -tx1 | tr -d ' \n')
	ip netns exec $P $PKT sink $PE 50000 600 &
	sink=$!
	PIDS+=($sink)
	sleep 0.3
	sysctl -qw kernel.bpf_stats_enabled=1
	prog=$(bpftool -j prog show pinned $BPFFS/$MODE/prog)
	rt0=$(echo "$prog" | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_time_ns",0))')
	rc0=$(echo "$prog" | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_cnt",0))')
	snap
	read -r -a c0 <<<"$(cpu_jiffies)"
	t0=$(date +%s.%N)
	send $C $PKT send $CL 40000 $LI $LP $D3 $BENCH
	t1=$(date +%s.%N)
	read -r -a c1 <<<"$(cpu_jiffies)"
	prog=$(bpftool -j prog show pinned $BPFFS/$MODE/prog)
	rt1=$(echo "$prog" | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_time_ns",0))')
	rc1=$(echo "$prog" | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_cnt",0))')
	kill $sink
	expect_delta c2p_redirect=$BENCH
	# the cost every packet that is not ours pays: unbound channel -> lookup misses -> XDP_PASS
	local rt2 rc2 rt3 rc3
	rt2=$(bpftool -j prog show pinned $BPFFS/$MODE/prog | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_time_ns",0))')
	rc2=$(bpftool -j prog show pinned $BPFFS/$MODE/prog | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_cnt",0))')
	send $C $PKT send $CL 40000 $LI $LP 4fff0064${D3:8} $((BENCH / 2))
	rt3=$(bpftool -j prog show pinned $BPFFS/$MODE/prog | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_time_ns",0))')
	rc3=$(bpftool -j prog show pinned $BPFFS/$MODE/prog | python3 -c 'import json,sys;print(json.load(sys.stdin).get("run_cnt",0))')
	sysctl -qw kernel.bpf_stats_enabled=0
	echo "   bench: passed packets (unbound channel, 2 lookups miss): $(( (rt3 - rt2) / (rc3 - rc2) )) ns/run over $((rc3 - rc2)) runs"
	python3 - "$BENCH" "$t0" "$t1" "$rt0" "$rt1" "$rc0" "$rc1" "${c0[@]}" "${c1[@]}" <<'PY'
import os, sys
n, t0, t1, rt0, rt1, rc0, rc1 = int(sys.argv[1]), *map(float, sys.argv[2:8])
c0, c1 = list(map(int, sys.argv[8:11])), list(map(int, sys.argv[11:14]))
hz = os.sysconf("SC_CLK_TCK")
dt = t1 - t0
busy = (c1[0] - c0[0]) / hz; irq = (c1[1] - c0[1]) / hz; idle = (c1[2] - c0[2]) / hz
print("   bench: %d packets in %.2f s (%.0f pps, sender-bound)" % (n, dt, n / dt))
print("   bench: XDP program run time %.0f ns/run over %d runs (bpf_stats)" % ((rt1 - rt0) / max(1, rc1 - rc0), rc1 - rc0))
print("   bench: VM-wide CPU over the run: user+nice+system %.2f s, irq+softirq %.2f s, idle %.2f s"
      " (%d CPUs; includes the python sender and other tenants)" % (busy, irq, idle, os.cpu_count()))
print("   bench: irq+softirq per packet %.0f ns" % (irq / n * 1e9))
PY
}

run_family() { # run_family 4|6
	local fam=$1 CL LI RE PE PE2 base
	if [ $fam = 4 ]; then
		CL=192.0.2.2 PE2=192.0.2.3 LI=192.0.2.1 RE=192.0.2.65 PE=192.0.2.66 base=0
	else
		CL=2001:db8:1::2 PE2=2001:db8:1::3 LI=2001:db8:1::1 RE=2001:db8:2::1 PE=2001:db8:2::2 base=10
	fi
	local LP=3478
	log "$MODE IPv$fam: map entries (stats slots $((base + 1))-$((base + 3)))"
	# binding 1: client:40000 ch 0x4000 <-> relay:49152 <-> peer:50000 (peer ns, redirect)
	# binding 2: client:40001 ch 0x4001 <-> relay:49153 <-> peer2:50001 (client ns, XDP_TX)
	# binding 3: client:40002 ch 0x4002 <-> relay:49154 <-> peer:50002, deadline 1 s ago
	local n cp rp pp ch pe ttl
	for n in 1 2 3; do
		cp=$((39999 + n)) rp=$((49151 + n)) pp=$((49999 + n)) ch=$((0x3fff + n))
		pe=$PE; [ $n = 2 ] && pe=$PE2
		ttl=300; [ $n = 3 ] && ttl=-1
		bpftool map update pinned $MAPS/turnd_c2p key hex $($PKT c2p-key $CL $cp $LI $LP $ch) \
			value hex $($PKT c2p-val $RE $rp $pe $pp $((base + n)) $ttl)
		bpftool map update pinned $MAPS/turnd_p2c key hex $($PKT p2c-key $pe $pp $RE $rp) \
			value hex $($PKT p2c-val $CL $cp $LI $LP $ch $((base + n)) $ttl)
	done

	# 101 bytes (odd length) client -> peer, 57 bytes peer -> client
	local D1 D2
	D1=$(head -c 101 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
	D2=$(head -c 57 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
	local CD1=4000$(printf %04x 101)$D1

	log "$MODE IPv$fam: next hop not resolved yet -> passed"
	snap
	recv $P p0 $PE 50000 $WORK/r.json
	send $C $PKT send $CL 40000 $LI $LP $CD1
	recv_wait
	check $WORK/r.json 0 "" 0 "" "nothing reached the peer"
	if [ "$FORWARDING" = 1 ]; then expect_delta pass_fib_no_neigh=1; else expect_delta pass_fib_fwd_disabled=1; fi

	log "$MODE IPv$fam: resolving neighbours from the relay ns (one UDP datagram each)"
	send $R $PKT send $RE 9 $PE 9 00
	send $R $PKT send $LI 9 $CL 9 00
	send $R $PKT send $LI 9 $PE2 9 00
	sleep 0.5
	ip -n $R neigh show | grep -E "^($PE|$CL|$PE2) " | sed 's/^/   /'
	if [ "$FORWARDING" != 1 ]; then
		log "$MODE IPv$fam: forwarding off: every relay attempt is passed"
		snap
		send $C $PKT send $CL 40000 $LI $LP $CD1
		sleep 0.2
		expect_delta pass_fib_fwd_disabled=1
		return
	fi

	log "$MODE IPv$fam: client -> peer (binding 1, other interface: redirect)"
	snap
	recv $P p0 $PE 50000 $WORK/r.json
	send $C $PKT send $CL 40000 $LI $LP $CD1 3
	recv_wait
	check $WORK/r.json 3 $RE 49152 $D1 "peer got 3 x 101 bytes from relay $RE:49152, checksums ok"
	expect_delta c2p_redirect=3

	log "$MODE IPv$fam: peer -> client (binding 1, redirect)"
	snap
	recv $C c0 $CL 40000 $WORK/r.json
	send $P $PKT send $PE 50000 $RE 49152 $D2 3
	recv_wait
	check $WORK/r.json 3 $LI $LP 4000$(printf %04x 57)$D2 "client got 3 ChannelData (0x4000, length 57) from $LI:$LP, checksums ok"
	expect_delta p2c_redirect=3

	log "$MODE IPv$fam: client -> peer2 and back (binding 2, same interface: XDP_TX)"
	snap
	recv $C c0 $PE2 50001 $WORK/r.json
	send $C $PKT send $CL 40001 $LI $LP 4001$(printf %04x 101)$D1 2
	recv_wait
	check $WORK/r.json 2 $RE 49153 $D1 "peer2 got 2 x 101 bytes from $RE:49153"
	recv $C c0 $CL 40001 $WORK/r.json
	send $C $PKT send $PE2 50001 $RE 49153 $D2 2
	recv_wait
	check $WORK/r.json 2 $LI $LP 4001$(printf %04x 57)$D2 "client got 2 ChannelData (0x4001) from $LI:$LP"
	expect_delta c2p_tx=2 p2c_tx=2

	log "$MODE IPv$fam: empty ChannelData (length 0) -> empty datagram"
	snap
	recv $P p0 $PE 50000 $WORK/r.json
	send $C $PKT send $CL 40000 $LI $LP 40000000
	recv_wait
	check $WORK/r.json 1 $RE 49152 "" "peer got an empty datagram"
	expect_delta c2p_redirect=1

	log "$MODE IPv$fam: data lengths 1-33, 255, 256, 1000, 1400 both ways (checksums over odd/even lengths)"
	local LENS=$(seq -s, 1 33),255,256,1000,1400 nl=37 tot=$((33 * 34 / 2 + 255 + 256 + 1000 + 1400))
	snap
	recv $P p0 $PE 50000 $WORK/r.json
	send $C $PKT send-lengths $CL 40000 $LI $LP 4000 $LENS
	recv_wait
	if $PKT expect-lengths $WORK/r.json $RE 49152 - $LENS; then ok "peer got all $nl lengths, checksums ok"; else fail "c2p lengths"; fi
	recv $C c0 $CL 40000 $WORK/r.json
	send $P $PKT send-lengths $PE 50000 $RE 49152 - $LENS
	recv_wait
	if $PKT expect-lengths $WORK/r.json $LI $LP 4000 $LENS; then ok "client got all $nl as ChannelData, checksums ok"; else fail "p2c lengths"; fi
	expect_delta c2p_redirect=$nl p2c_redirect=$nl

	log "$MODE IPv$fam: peer datagram that fits the MTU only without the 4-byte header -> passed"
	local big=$((1500 - 8 - (fam == 4 ? 20 : 40)))
	snap
	recv $C c0 $CL 40000 $WORK/r.json
	send $P $PKT send-lengths $PE 50000 $RE 49152 - $big
	recv_wait
	check $WORK/r.json 0 "" 0 "" "nothing reached the client ($big bytes + 4 > MTU 1500)"
	expect_delta pass_fib_frag_needed=1

	log "$MODE IPv$fam: per-binding counters (turnd_stats)"
	local s
	s=$(stats $((base + 1)))
	local w1="$((4 + nl)) $((303 + tot)) $((3 + nl)) $((171 + tot))"
	[ "$s" = "$w1" ] && ok "slot $((base + 1)): $s" || fail "slot $((base + 1)): $s (want $w1)"
	s=$(stats $((base + 2)))
	[ "$s" = "2 202 2 114" ] && ok "slot $((base + 2)): $s" || fail "slot $((base + 2)): $s (want 2 202 2 114)"

	log "$MODE IPv$fam: expired entry (binding 3) -> passed both ways"
	snap
	recv $P p0 $PE 50002 $WORK/r.json
	send $C $PKT send $CL 40002 $LI $LP 4002$(printf %04x 101)$D1
	recv_wait
	check $WORK/r.json 0 "" 0 "" "nothing reached the peer"
	recv $C c0 $CL 40002 $WORK/r.json
	send $P $PKT send $PE 50002 $RE 49154 $D2
	recv_wait
	check $WORK/r.json 0 "" 0 "" "nothing reached the client"
	expect_delta pass_expired=2
	s=$(stats $((base + 3)))
	[ "$s" = "0 0 0 0" ] && ok "slot $((base + 3)): $s" || fail "slot $((base + 3)): $s"

	[ "$BENCH" -gt 0 ] && bench
	log "$MODE IPv$fam: malformed ChannelData -> passed"
	snap
	recv $P p0 $PE 50000 $WORK/r.json
	send $C $PKT send $CL 40000 $LI $LP 40000064$(head -c 10 /dev/zero | od -An -v -tx1 | tr -d ' \n') # length 100, 10 bytes
	send $C $PKT send $CL 40000 $LI $LP 400000050102030405000000 # length 5, padded to 8
	send $C $PKT send $CL 40000 $LI $LP 400000                   # 3 bytes
	send $C $PKT send $CL 40000 $LI $LP 4fff0001aa               # unbound channel
	send $C $PKT send $CL 40000 $LI $LP 000100002112a442000000000000000000000000 # STUN header
	recv_wait
	check $WORK/r.json 0 "" 0 "" "nothing reached the peer"
	expect_delta pass_bad_len=2 pass_no_entry=3

	log "$MODE IPv$fam: hairpin (the peer is another relayed address of this relay) -> passed"
	# client:40003 ch 0x4003 -> relay:49155 -> $RE:49156 (local); bpf_fib_lookup
	# reports a local destination as BPF_FIB_LKUP_RET_NOT_FWDED
	bpftool map update pinned $MAPS/turnd_c2p key hex $($PKT c2p-key $CL 40003 $LI $LP 0x4003) \
		value hex $($PKT c2p-val $RE 49155 $RE 49156 $((base + 4)) 300)
	snap
	send $C $PKT send $CL 40003 $LI $LP 4003000401020304
	sleep 0.2
	expect_delta pass_fib_other=1

	log "$MODE IPv$fam: entry deleted by user space -> passed"
	bpftool map delete pinned $MAPS/turnd_c2p key hex $($PKT c2p-key $CL 40000 $LI $LP 0x4000)
	snap
	recv $P p0 $PE 50000 $WORK/r.json
	send $C $PKT send $CL 40000 $LI $LP $CD1
	recv_wait
	check $WORK/r.json 0 "" 0 "" "nothing reached the peer"
	expect_delta pass_no_entry=1
}

for MODE in $MODES; do
	case $MODE in
	generic) ATTACH=xdpgeneric ;;
	native) ATTACH=xdpdrv ;;
	*) echo "unknown mode $MODE" >&2; exit 2 ;;
	esac
	log "mode $MODE: namespaces $C $R $P"
	setup_netns
	if [ $MODE = native ] && [ "$PEER" = gro ]; then
		# veth delivers redirected frames only to a peer with NAPI, which GRO turns on
		ip netns exec $C $PKT ethtool c0 gro on
		ip netns exec $P $PKT ethtool p0 gro on
	elif [ $MODE = native ] && [ "$PEER" = xdp ]; then
		# XDP_TX frames are delivered only to a peer with an XDP program
		ip -n $C link set dev c0 xdpdrv obj $WORK/xdp_pass.o sec xdp
		ip -n $P link set dev p0 xdpdrv obj $WORK/xdp_pass.o sec xdp
	fi
	# iproute2's own loader must accept the object too
	ip -n $R link set dev r0 $ATTACH obj $OBJ sec xdp
	ip -n $R link show dev r0 | grep -o "prog/xdp id [0-9]*" | sed "s/^/   ip link ... $ATTACH obj: /"
	ip -n $R link set dev r0 $ATTACH off
	# one program, one set of maps, attached to both relay interfaces
	mkdir -p $BPFFS/$MODE
	bpftool prog load $OBJ $BPFFS/$MODE/prog type xdp pinmaps $BPFFS/$MODE/maps
	MAPS=$BPFFS/$MODE/maps
	ip -n $R link set dev r0 $ATTACH pinned $BPFFS/$MODE/prog
	ip -n $R link set dev r1 $ATTACH pinned $BPFFS/$MODE/prog
	ip -n $R link show | grep -o "^[0-9]*: r[01]@[a-z0-9]*\|prog/xdp.*" | paste - - | sed 's/^/   /'
	for fam in $FAMILIES; do run_family $fam; done
	log "mode $MODE: detach"
	ip -n $R link set dev r0 $ATTACH off
	ip -n $R link set dev r1 $ATTACH off
	if ip -n $R link show | grep -q "prog/xdp"; then fail "program still attached"; else ok "no program left on r0/r1"; fi
	ip netns del $C; ip netns del $R; ip netns del $P
	rm -rf "${BPFFS:?}/$MODE"
done

if [ $FAILS = 0 ]; then echo "smoke.sh: all checks passed ($MODES)"; else echo "smoke.sh: $FAILS check(s) FAILED"; exit 1; fi
