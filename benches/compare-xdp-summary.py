#!/usr/bin/env python3
"""Tables for benches/compare-xdp.sh (markdown, medians over runs).

    compare-xdp-summary.py RESULTS.jsonl "RATES" PPS SIZE SIZE_MAX BURST_TICK_US
    compare-xdp-summary.py --line JSON      # one progress line for a RESULT

Per point: host net CPU = host busy (/proc/stat user+nice+system+irq+softirq
over the window) - idle baseline (busy CPU-s/s measured before the target's
block) x window; per relayed packet = that / relayed packets (2 per round
trip). Generator = turnd-bench + its echo peer (utime+stime). Server share
(est.) = host net - generator.
"""
import json
import statistics
import sys
from collections import defaultdict

NAMES = {
    "turnd": "turnd (user space)",
    "coturn": "coturn",
    "bare_rs": "bare r/s",
    "bare_mmsg": "bare mmsg",
    "xdp_generic": "turnd XDP generic",
    "xdp_native": "turnd XDP native",
}
RATIOS = [
    ("XDP gen / bare r/s", "xdp_generic", "bare_rs"),
    ("XDP nat / bare r/s", "xdp_native", "bare_rs"),
    ("XDP gen / bare mmsg", "xdp_generic", "bare_mmsg"),
    ("XDP nat / bare mmsg", "xdp_native", "bare_mmsg"),
    ("XDP gen / turnd", "xdp_generic", "turnd"),
    ("XDP nat / turnd", "xdp_native", "turnd"),
    ("turnd / coturn", "turnd", "coturn"),
]


def derive(r):
    """Adds host_net_us, gen_us, server_est_us, xdp_share, bpf_ns to a result."""
    if r.get("failed") or r.get("uclient"):
        return r
    relayed = r.get("relayed_packets_counted") or 0
    if relayed and r.get("host_busy_s") is not None:
        net = r["host_busy_s"] - r.get("idle_busy_per_s", 0.0) * r["cpu_wall_s"]
        r["host_net_us"] = net * 1e6 / relayed
        g = r.get("gen_cpu_all_us_per_pkt")
        if g is not None:
            r["gen_us"] = g
            r["server_est_us"] = r["host_net_us"] - g
        r["softirq_us"] = r.get("host_softirq_s", 0.0) * 1e6 / relayed
        if r.get("server_cpu_us_per_pkt") is not None:
            r["relay_us"] = r["server_cpu_us_per_pkt"] + r.get("kthread_cpu_s", 0.0) * 1e6 / relayed
        if r.get("server_cpu_us_per_pkt") is not None and r.get("gen_cpu_all_us_per_pkt") is not None:
            r["attributed_us"] = (r["server_cpu_us_per_pkt"] + r["gen_cpu_all_us_per_pkt"]
                                  + r.get("kthread_cpu_s", 0.0) * 1e6 / relayed)
    if r.get("d_all_pkts"):
        r["xdp_share"] = 100.0 * r.get("d_xdp_pkts", 0) / r["d_all_pkts"]
    if r.get("d_bpf_run_cnt"):
        r["bpf_ns"] = r["d_bpf_run_time_ns"] / r["d_bpf_run_cnt"]
    return r


def line(r):
    r = derive(r)
    if r.get("failed"):
        print(f"   {r.get('label')}: failed")
        return
    x = ""
    if "xdp_share" in r:
        x = f", kernel-relayed {r['xdp_share']:.1f} %"
    if "bpf_ns" in r:
        x += f", XDP program {r['bpf_ns']:.0f} ns/run"
    print(
        f"   {r['pacing']:5} {r['rate']:>7.0f} rt/s ({r['allocations']} channels): loss {r['loss_pct']:.3f} %, "
        f"RTT p50/p99 {r['rtt_p50_us']}/{r['rtt_p99_us']} us, host net {r.get('host_net_us', float('nan')):.2f} us/pkt, "
        f"attributed {r.get('attributed_us', float('nan')):.2f}, generator {r.get('gen_us', float('nan')):.2f}, "
        f"server process {r.get('server_cpu_us_per_pkt')}{x}"
    )


def fmt(v, d=2):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if d == 0:
        return f"{v:,.0f}"
    return f"{v:.{d}f}"


def main():
    if sys.argv[1] == "--line":
        line(json.loads(sys.argv[2]))
        return
    path, rates, pps, size, size_max, tick = sys.argv[1:7]
    napi = sys.argv[7] if len(sys.argv) > 7 else "softirq"
    rates = [int(x) for x in rates.split()]
    rows = [derive(json.loads(l)) for l in open(path) if l.strip()]
    by = defaultdict(list)
    for r in rows:
        if r.get("failed"):
            continue
        t, kind, param, run = r["label"].split("|")
        by[(t, kind, param)].append(r)
    targets = [t for t in NAMES if any(k[0] == t for k in by)]
    ratios = [x for x in RATIOS if x[1] in targets and x[2] in targets]

    def med(t, kind, param, key):
        vals = [r[key] for r in by.get((t, kind, str(param)), []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def table(title, metrics, with_ratios=True):
        rs = ratios if with_ratios else []
        print("| " + title + " | " + " | ".join(NAMES[t] for t in targets) + "".join(f" | {n}" for n, _, _ in rs) + " |")
        print("| --- |" + " ---: |" * (len(targets) + len(rs)))
        for name, f, d in metrics:
            vals = {t: f(t) for t in targets}
            cells = [fmt(vals[t], d) for t in targets]
            for _, a, b in rs:
                va, vb = vals[a], vals[b]
                cells.append(f"{va / vb:.2f}" if isinstance(va, float) and isinstance(vb, float) and vb > 0 else "-")
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()

    print(
        f"Load: channels at {pps} round trips/s each (channels = rate / {pps}), payload {size}-{size_max} B "
        f"(fixed per channel, spread evenly), round robin; `even`: each send at its own due time; "
        f"`burst`: sends due within {tick} us leave back to back. 2-core VM: generator + echo peer on one core, "
        "servers pinned to the other. Read the ratios, not the absolute figures."
    )
    print()
    if napi == "threaded":
        print("NAPI threaded: every veth end's receive work runs in its own kernel thread; the relay ns's (its two "
              "veths: IP/UDP delivery to the server's socket, or the XDP program, its FIB lookup and redirect) "
              "pinned to the server core and counted in **relay**, the client and peer ends' pinned to the "
              "generator's core and counted in generator. Per-thread utime+stime from /proc/PID/stat (the "
              "scheduler's precise runtime), so other sessions' load on the host does not enter it.")
    else:
        print("NAPI in softirq: the relay ns's receive work (and with XDP all of the relaying) runs in softirq "
              "on the sending core, charged to whichever task runs there (mostly the generator); **relay** is "
              "then only the server process + ksoftirqd; the host figure is the one that sees everything.")
    print()
    for pacing in ("even", "burst"):
        if not any(k[1] == pacing for k in by):
            continue
        m = []
        for rate in rates:
            ch = rate // int(pps)
            m.append((f"host CPU per relayed packet, net of idle @ {rate} rt/s ({ch} ch) (us)", lambda t, r=rate: med(t, pacing, r, "host_net_us"), 2))
        for rate in rates:
            m.append((f"attributed CPU (relay + generator) @ {rate} (us/pkt)", lambda t, r=rate: med(t, pacing, r, "attributed_us"), 2))
        for rate in rates:
            m.append((f"**relay: server process + relay-side kernel threads** @ {rate} (us/pkt)", lambda t, r=rate: med(t, pacing, r, "relay_us"), 2))
        for rate in rates:
            m.append((f"  generator: turnd-bench + echo peer (+ their NAPI threads) @ {rate} (us/pkt)", lambda t, r=rate: med(t, pacing, r, "gen_us"), 2))
        for rate in rates:
            m.append((f"  server share (est.: host net - generator) @ {rate} (us/pkt)", lambda t, r=rate: med(t, pacing, r, "server_est_us"), 2))
        for rate in rates:
            m.append((f"  server process utime+stime @ {rate} (us/pkt)", lambda t, r=rate: med(t, pacing, r, "server_cpu_us_per_pkt"), 2))
        for rate in rates:
            m.append((f"  host softirq (all, not net of idle) @ {rate} (us/pkt)", lambda t, r=rate: med(t, pacing, r, "softirq_us"), 2))
        for rate in rates:
            m.append((f"RTT p50 @ {rate} rt/s (us)", lambda t, r=rate: med(t, pacing, r, "rtt_p50_us"), 0))
        for rate in rates:
            m.append((f"RTT p99 @ {rate} rt/s (us)", lambda t, r=rate: med(t, pacing, r, "rtt_p99_us"), 0))
        for rate in rates:
            m.append((f"loss @ {rate} rt/s (%)", lambda t, r=rate: med(t, pacing, r, "loss_pct"), 3))
        for rate in rates:
            m.append((f"kernel-relayed share @ {rate} (%)", lambda t, r=rate: med(t, pacing, r, "xdp_share"), 1))
        for rate in rates:
            m.append((f"XDP program per run (bpf_stats) @ {rate} (ns)", lambda t, r=rate: med(t, pacing, r, "bpf_ns"), 0))
        for rate in rates:
            m.append((f"idle baseline (busy CPU-s per s)", lambda t, r=rate: med(t, pacing, r, "idle_busy_per_s"), 3))
            break
        table(f"{pacing} pacing (medians)", m)

    def sweep_of(kind):
        sweep = {}
        for t in targets:
            per_run, why = defaultdict(int), {}
            for (tt, k, param), rs in by.items():
                if tt != t or k != kind:
                    continue
                for r in rs:
                    run = r["label"].split("|")[3]
                    rate = float(param)
                    ok = r["loss_pct"] < 0.1 and r["offered_rt_per_s"] >= 0.97 * rate
                    if ok:
                        per_run[run] = max(per_run[run], rate)
                    else:
                        gen = r["offered_rt_per_s"] < 0.97 * rate
                        why[run] = (f"{'generator' if gen else 'loss'} at {rate / 1000:.0f}k "
                                    f"({r['loss_pct']:.2f} %, offered {100 * r['offered_rt_per_s'] / rate:.0f} %)")
            if per_run or why:
                runs = sorted(set(per_run) | set(why))
                sweep[t] = (statistics.median([per_run[r] for r in runs]),
                            "; ".join(why.get(r, "top of the sweep") for r in runs))
        return sweep

    # Sweeps: per run the highest passing rate; the first failure's reason.
    sweeps = {}
    for kind in sorted({k[1] for k in by if k[1].startswith("sweep")}):
        sweeps[kind] = sweep_of(kind)
    if "sweep" in sweeps:
        sweeps["sweep-even"] = sweeps.pop("sweep")
    for kind, sweep in sweeps.items():
        if not sweep:
            continue
        print(f"| {kind} (rt/s; channels = rate / {pps}) | " + " | ".join(NAMES[t] for t in targets) + "".join(f" | {n}" for n, _, _ in ratios) + " |")
        print("| --- |" + " ---: |" * (len(targets) + len(ratios)))
        cells = [fmt(sweep.get(t, (None,))[0], 0) for t in targets]
        for _, a, b in ratios:
            va, vb = sweep.get(a, (None,))[0], sweep.get(b, (None,))[0]
            cells.append(f"{va / vb:.2f}" if va and vb else "-")
        print("| max rate at < 0.1 % loss | " + " | ".join(cells) + " |")
        print("| first failing point | " + " | ".join(sweep.get(t, (0, "-"))[1] for t in targets) + " |" + " |" * len(ratios))
        print()
    sweep = sweeps.get("sweep-even", {})

    uc = [r for r in rows if r.get("uclient")]
    if uc:
        ub = defaultdict(list)
        for r in uc:
            ub[r["label"].split("|")[0]].append(r)

        def um(t, k):
            vals = [r[k] for r in ub.get(t, []) if r.get(k) is not None]
            return statistics.median(vals) if vals else None

        ut = [t for t in NAMES if t in ub]
        print("Independent check: turnutils_uclient (client ns) -> turnutils_peer (peer ns), "
              f"{uc[0]['label'].split('|')[2]} msgs/s each way ({uc[0].get('sent') and int(uc[0]['sent'])} sent per run), 200 B, "
              "channels, 20 ms per client; host CPU around the whole uclient run (setup included), net of idle")
        print()
        print("| uclient | " + " | ".join(NAMES[t] for t in ut) + " |")
        print("| --- |" + " ---: |" * len(ut))
        for name, k, d in (("host CPU per relayed packet, net of idle (us)", "host_net_us_per_pkt", 2),
                           ("attributed CPU: server + uclient + peer + ksoftirqd (us/pkt)", "attributed_us_per_pkt", 2),
                           ("  uclient utime+stime (us/pkt)", "gen_cpu_us_per_pkt", 2),
                           ("loss (%)", "loss_pct", 3), ("average RTT (ms)", "rtt_avg_ms", 2),
                           ("kernel-relayed packets", "d_xdp_pkts", 0), ("all relayed packets", "d_all_pkts", 0)):
            print(f"| {name} | " + " | ".join(fmt(um(t, k), d) for t in ut) + " |")
        print()
        pairs = [("XDP gen / turnd", "xdp_generic", "turnd"), ("XDP nat / turnd", "xdp_native", "turnd"), ("turnd / coturn", "turnd", "coturn")]
        for n, a, b in pairs:
            for k, what in (("host_net_us_per_pkt", "host net"), ("attributed_us_per_pkt", "attributed")):
                va, vb = um(a, k), um(b, k)
                if va is not None and vb:
                    print(f"- uclient CPU per packet ({what}), {n}: {va / vb:.2f}")
        print()

    # Targets of issue 15, judged on even pacing at each fixed rate.
    print("Issue 15 targets (even pacing):")
    for mode in ("xdp_generic", "xdp_native"):
        if mode not in targets:
            continue
        for base in ("bare_rs", "bare_mmsg"):
            if base not in targets:
                continue
            for rate in rates:
                for key, what in (("relay_us", "relay"), ("host_net_us", "host net"), ("attributed_us", "attributed")):
                    a, b = med(mode, "even", rate, key), med(base, "even", rate, key)
                    if a is not None and b:
                        print(f"- CPU/pkt {NAMES[mode]} / {NAMES[base]} @ {rate} ({what}): {a / b:.2f} "
                              f"({'met' if a / b <= 0.5 else 'missed'}, target <= 0.5)")
            for kind, sw in sweeps.items():
                if mode in sw and base in sw and sw[base][0]:
                    q = sw[mode][0] / sw[base][0]
                    print(f"- max rate ({kind}) {NAMES[mode]} / {NAMES[base]}: {q:.2f} ({'met' if q >= 2 else 'missed'}, "
                          f"target >= 2; XDP stopped: {sw[mode][1]}; {NAMES[base]} stopped: {sw[base][1]})")


if __name__ == "__main__":
    main()
