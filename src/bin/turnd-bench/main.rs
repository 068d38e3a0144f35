//! `turnd-bench`: end-to-end load generator for TURN servers (turnd, coturn,
//! anything speaking RFC 8656) and a bare UDP forwarder to compare them with.
//!
//! ```text
//! turnd-bench --server 127.0.0.1:3478 --user U --password P --rate 20000 --server-pid PID
//! turnd-bench --server 127.0.0.1:3478 --user U --password P --window 4
//! turnd-bench --server 127.0.0.1:3478 --user U --password P --allocations-only --allocations 5000
//! turnd-bench forwarder --listen 127.0.0.1:40000 &
//! turnd-bench --bare --server 127.0.0.1:40000 --rate 20000 --server-pid $!
//! turnd-bench --server 127.0.0.1:3478 --rate 50000 --pacing even --server-pid PID
//! turnd-bench --server 127.0.0.1:3478 --one-way --allocations 1 --size 1200 --rate 100000
//! turnd-bench forwarder --no-batch --listen 127.0.0.1:40001 &
//! turnd-bench soak --turnd target/release/turnd --minutes 30 --out soak-out
//! ```
//!
//! Each allocation is a client socket (or TCP/TLS connection with
//! `--transport`) that does the 401 dance, an authenticated Allocate and a
//! ChannelBind (channel 0x4000) to a UDP echo peer run by the tool itself on
//! 127.0.0.1 (so the server must allow loopback peers). Then ChannelData
//! messages of `--size` payload bytes go round trip client -> server ->
//! peer -> server -> client, paced at `--rate` round trips/s in total, or
//! with `--window` round trips in flight per allocation. Results: a table and
//! a last line `RESULT {json}`. `--pacing even` gives each send its own due
//! time (one datagram per send); `--pacing burst` (the default) sends what is
//! due within `--tick-us` together. `--one-way` makes the peers sinks: one
//! flow's throughput and loss instead of round trips.
//!
//! Server CPU per relayed packet = (utime + stime of the server process from
//! /proc/PID/stat over the measured window) / (2 x round trips completed in
//! the window): each round trip is two relayed packets, client->peer and
//! peer->client.

#![forbid(unsafe_code)] // the few system calls it needs are in `turnd::sys`
#![allow(clippy::disallowed_methods)] // a load generator reads the clock

mod echo;
mod engine;
mod forwarder;
mod plot;
mod procstat;
mod proto;
mod report;
mod soak;
mod stream;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use engine::{Engine, Load, Pacing, Target, Timing, TrafficReport, Transport};
use report::{opt, r};

#[derive(Parser, Debug)]
#[command(
    name = "turnd-bench",
    about = "Load generator for TURN servers (and a bare UDP forwarder to compare with)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the bare UDP forwarder (the floor: one relay socket per client,
    /// recvmmsg/sendmmsg, no TURN) until killed.
    Forwarder {
        /// Control address clients send BIND to; relay sockets use its IP.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// One recvfrom + one sendto per datagram (one datagram per readiness
        /// event, level-triggered) instead of recvmmsg/sendmmsg batches of 64.
        #[arg(long)]
        no_batch: bool,
        /// SO_RCVBUF/SO_SNDBUF of each relay socket in bytes (0: the kernel's
        /// default). A client's datagrams land in its relay socket here, where
        /// a TURN server has them land in its listener socket (turnd: 4 MiB).
        #[arg(long, default_value_t = 0)]
        buffer: usize,
    },
    /// Runs a UDP echo peer (recvmmsg/sendmmsg) on --listen until killed:
    /// the peer for --peer when it must live elsewhere (another network
    /// namespace).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        /// SO_RCVBUF/SO_SNDBUF in bytes.
        #[arg(long, default_value_t = 4 << 20)]
        buffer: usize,
    },
    /// Runs turnd (or attaches to one) for --minutes under churn, samples
    /// its RSS, descriptors, allocations and relay ports into soak.csv and
    /// soak.png, and checks that nothing leaked (exit 1 when a check fails).
    Soak(Box<soak::SoakArgs>),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The TURN server (or, with --bare, the forwarder's control address).
    #[arg(long)]
    server: Option<SocketAddr>,
    /// TURN username.
    #[arg(long, default_value = "bench")]
    user: String,
    /// TURN password.
    #[arg(long, default_value = "bench")]
    password: String,
    /// Target the bare forwarder (`turnd-bench forwarder`) instead of a TURN server.
    #[arg(long)]
    bare: bool,
    /// Transport to the TURN server (the relay is UDP in every case).
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// Mixed payload sizes: allocation i sends --size + (i * 389) mod
    /// (--size-max - --size + 1) bytes, so the flows' sizes spread over
    /// --size..=--size-max (round trips only).
    #[arg(long, conflicts_with = "one_way")]
    size_max: Option<usize>,
    /// Number of allocations (client sockets).
    #[arg(long, default_value_t = 100)]
    allocations: usize,
    /// Application payload per packet in bytes (ChannelData adds 4).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Round trips per second in total, spread round-robin over the allocations.
    #[arg(long, conflicts_with = "window")]
    rate: Option<f64>,
    /// Round trips in flight per allocation, as fast as they come back.
    #[arg(long)]
    window: Option<u32>,
    /// Measured window in seconds (at most 600).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up before the measured window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Longest wait for the window's last answers after it closes, in ms.
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// PID of the server: reports its CPU time per relayed packet and its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Only create allocations as fast as possible (authenticated
    /// allocations/s, RSS per allocation), then release them.
    #[arg(long)]
    allocations_only: bool,
    /// UDP echo peer sockets (allocations are spread over them).
    #[arg(long, default_value_t = 1)]
    echo_sockets: usize,
    /// Loopback addresses the client sockets are spread over: 127.0.0.1 to
    /// 127.0.0.N (each address has its own ~28,000 ephemeral ports, so 100,000
    /// allocations need 4 or more). Only with a loopback server.
    #[arg(long, default_value_t = 1)]
    client_ips: u8,
    /// Setup transactions in flight at once.
    #[arg(long, default_value_t = 128)]
    setup_concurrency: usize,
    /// Shortest sleep between paced sends in µs (sends due within it leave
    /// together; burst pacing only).
    #[arg(long, default_value_t = 50)]
    tick_us: u64,
    /// How --rate spreads sends: `even` (each send at its own due time, one
    /// datagram per send, late sends one by one, > 20 ms late given up) or
    /// `burst` (sends due within --tick-us together, catch-up bursts of up to
    /// 2 ms worth, > 50 ms behind given up).
    #[arg(long, value_enum, default_value = "burst")]
    pacing: Pacing,
    /// One-way traffic: the peers are sinks that count what arrives (send
    /// time and sequence number in the payload); reports offered and
    /// delivered Mbit/s, loss and one-way delay. --size must be >= 24.
    #[arg(long, conflicts_with = "window")]
    one_way: bool,
    /// A label copied into the RESULT line.
    #[arg(long)]
    label: Option<String>,
    /// Address the client sockets bind to (default: the loopback server's
    /// address, else 127.0.0.1); needed when the server is not on loopback.
    #[arg(long)]
    local_ip: Option<std::net::IpAddr>,
    /// An external echo peer (`turnd-bench echo`) every allocation binds its
    /// channel to, instead of the generator's own echo socket (round trips
    /// only).
    #[arg(long, conflicts_with = "one_way")]
    peer: Option<SocketAddr>,
    /// Another process of the generator (the external echo peer): its
    /// utime + stime over the window is reported (repeatable).
    #[arg(long)]
    gen_pid: Vec<u32>,
    /// A kernel thread (ksoftirqd/N) whose utime + stime over the window is
    /// reported: softirq work that overflowed to it (repeatable).
    #[arg(long)]
    kthread_pid: Vec<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Forwarder {
            listen,
            no_batch,
            buffer,
        }) => {
            return match forwarder::run(listen, !no_batch, (buffer > 0).then_some(buffer)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("turnd-bench forwarder: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Echo { listen, buffer }) => {
            return match echo::run(listen, buffer) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("turnd-bench echo: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Soak(args)) => {
            return match soak::run(*args) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("turnd-bench soak: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    match run(cli.run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("turnd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: RunArgs) -> Result<ExitCode, String> {
    let server = a.server.ok_or("--server ADDR is required")?;
    if a.size < engine::MIN_SIZE || a.size > 1400 {
        return Err(format!(
            "--size must be {}..=1400 bytes (timestamp, index and marker live in the payload)",
            engine::MIN_SIZE
        ));
    }
    if a.one_way && a.size < engine::MIN_SIZE_ONE_WAY {
        return Err(format!(
            "--one-way needs --size >= {} (the sequence number lives in the payload)",
            engine::MIN_SIZE_ONE_WAY
        ));
    }
    if a.size_max.is_some_and(|m| m > 1400) {
        return Err("--size-max must be at most 1400 bytes".into());
    }
    if a.allocations == 0 {
        return Err("--allocations must be at least 1".into());
    }
    if a.bare && a.transport != Transport::Udp {
        return Err("--bare is UDP only".into());
    }
    let load = match (a.rate, a.window, a.allocations_only) {
        (_, _, true) => None,
        (Some(r), None, _) if r > 0.0 => Some(Load::Rate(r)),
        (None, Some(w), _) if w > 0 => Some(Load::Window(w)),
        _ => return Err("give --rate R (> 0) or --window W (> 0), or --allocations-only".into()),
    };
    let duration = a.duration.clamp(0.1, 600.0);
    let warmup = a.warmup.clamp(0.0, 60.0);
    let mut eng = Engine::new(engine::Config {
        server,
        user: a.user.clone(),
        password: a.password.clone(),
        bare: a.bare,
        transport: a.transport,
        allocations: a.allocations,
        size: a.size,
        size_max: a.size_max,
        echo_sockets: a.echo_sockets,
        client_ips: a.client_ips.max(1),
        setup_concurrency: a.setup_concurrency,
        server_pid: a.server_pid,
        one_way: a.one_way,
        local_ip: a.local_ip,
        peer: a.peer,
        gen_pids: a.gen_pid.clone(),
        kthread_pids: a.kthread_pid.clone(),
    })
    .map_err(|e| format!("setting up {} client sockets: {e}", a.allocations))?;
    let target_name = if a.bare { "bare" } else { "turn" };

    let Some(load) = load else {
        return allocations_only(&mut eng, &a);
    };

    let setup = eng
        .setup(Target::Bound, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    if setup.failed > 0 {
        eprintln!(
            "turnd-bench: {} of {} allocations failed (error code: count, 0 = timeout) {:?}",
            setup.failed, a.allocations, setup.codes
        );
    }
    if setup.ok == 0 {
        return Err("no allocation could be made".into());
    }
    let timing = Timing {
        warmup,
        duration,
        drain: a.drain_ms as f64 / 1000.0,
        tick_us: a.tick_us,
        pacing: a.pacing,
    };
    let rep = eng.traffic(load, timing).map_err(|e| e.to_string())?;
    let _ = eng.setup(Target::Released, Duration::from_secs(5));
    print_traffic(&a, target_name, load, &rep, setup.elapsed);
    Ok(ExitCode::SUCCESS)
}

fn print_traffic(a: &RunArgs, target: &str, load: Load, rep: &TrafficReport, setup: Duration) {
    let d = rep.window_s;
    let offered = rep.sent as f64 / d;
    let delivered = rep.received as f64 / d;
    let loss = if rep.sent > 0 {
        100.0 * (rep.sent.saturating_sub(rep.received)) as f64 / rep.sent as f64
    } else {
        0.0
    };
    let (p50, p99, max) = (
        rep.hist.quantile(0.5),
        rep.hist.quantile(0.99),
        rep.hist.max(),
    );
    // A round trip is 2 relayed packets; a one-way datagram is 1.
    let relayed = if a.one_way {
        rep.received_in_window
    } else {
        2 * rep.received_in_window
    };
    let unit = if a.one_way {
        "datagrams/s"
    } else {
        "round trips/s"
    };
    // Payload bits per second (the application's bytes, no headers).
    let mbit = |per_s: f64| per_s * a.size as f64 * 8.0 / 1e6;
    let ideal_gap_us = match load {
        Load::Rate(r) => 1e6 / r,
        Load::Window(_) => f64::NAN,
    };
    let unit_us = engine::GAP_UNIT_NS as f64 / 1000.0;
    let gap_q = |q: f64| rep.gaps.quantile(q).map(|v| v as f64 * unit_us);
    let gap_p1 = gap_q(0.01);
    let gap_p50 = gap_q(0.5);
    let gap_p99 = gap_q(0.99);
    // Sends that left less than half the ideal gap after the previous one.
    let gap_short = rep
        .gaps
        .fraction_below((ideal_gap_us / 2.0 / unit_us) as u64)
        .map(|f| 100.0 * f);
    let late_p50 = rep.late.quantile(0.5);
    let late_p99 = rep.late.quantile(0.99);
    let server_cpu = match (rep.server_start.cpu, rep.server_end.cpu) {
        (Some(s), Some(e)) => Some(e.saturating_sub(s)),
        _ => None,
    };
    let cpu_pct = server_cpu.map(|c| 100.0 * c.as_secs_f64() / rep.cpu_wall_s);
    // The busiest thread alone (the relay thread, for a one-thread relay).
    let top = procstat::top_thread(&rep.server_start, &rep.server_end);
    let top_per_pkt = top
        .filter(|_| relayed > 0)
        .map(|(c, _)| c.as_secs_f64() * 1e6 / relayed as f64);
    let cpu_per_pkt = server_cpu
        .filter(|_| relayed > 0)
        .map(|c| c.as_secs_f64() * 1e6 / relayed as f64);
    let gen_pct = 100.0 * rep.gen_cpu.as_secs_f64() / rep.cpu_wall_s;
    let gen_per_rt = if rep.received_in_window > 0 {
        rep.gen_cpu.as_secs_f64() * 1e6 / rep.received_in_window as f64
    } else {
        f64::NAN
    };
    let extra_s = rep.gen_extra_cpu.as_secs_f64();
    let per_pkt = |s: f64| (relayed > 0).then(|| s * 1e6 / relayed as f64);
    let host = rep.host;
    let load_text = match load {
        Load::Rate(r) => format!("rate {r:.0} {unit}, {} pacing", a.pacing.name()),
        Load::Window(w) => format!("window {w} per allocation"),
    };
    let transport = if a.bare { "udp" } else { a.transport.name() };
    println!(
        "turnd-bench: {target} over {transport}, {} allocations x {} B payload, {load_text}, {:.1} s window after {:.1} s warm-up (setup {:.0} ms)",
        rep.allocations,
        a.size,
        d,
        a.warmup,
        setup.as_secs_f64() * 1e3
    );
    if a.one_way {
        println!(
            "  {:<24} {offered:.0} {unit} = {:.1} Mbit/s of payload",
            "offered",
            mbit(offered)
        );
        println!(
            "  {:<24} {delivered:.0} {unit} = {:.1} Mbit/s of payload ({} out of order)",
            "delivered",
            mbit(delivered),
            rep.reordered
        );
    } else {
        println!("  {:<24} {offered:.0} {unit}", "offered");
        println!(
            "  {:<24} {delivered:.0} {unit} = {:.0} relayed packets/s",
            "delivered",
            2.0 * delivered
        );
    }
    println!(
        "  {:<24} {loss:.3} % ({} of {} lost; {} send errors, {} sends given up: generator > 50 ms behind)",
        "loss",
        rep.sent.saturating_sub(rep.received),
        rep.sent,
        rep.send_errors,
        rep.skipped
    );
    if rep.gaps.count() > 0 {
        let f = |v: Option<f64>| opt(v.map(|v| format!("{v:.1}")));
        println!(
            "  {:<24} p1 {} / p50 {} / p99 {} us (ideal {ideal_gap_us:.1} us; {} % under half of it); late p50 {} / p99 {} us",
            "gaps between sends",
            f(gap_p1),
            f(gap_p50),
            f(gap_p99),
            f(gap_short),
            opt(late_p50),
            opt(late_p99)
        );
    }
    println!(
        "  {:<24} {} / {} / {} us",
        if a.one_way {
            "one-way p50 / p99 / max"
        } else {
            "RTT p50 / p99 / max"
        },
        opt(p50),
        opt(p99),
        opt(max)
    );
    if a.server_pid.is_some() {
        println!(
            "  {:<24} {} % of one core; {} us per relayed packet",
            "server CPU",
            opt(cpu_pct.map(|v| format!("{v:.1}"))),
            opt(cpu_per_pkt.map(|v| format!("{v:.2}")))
        );
        println!(
            "  {:<24} (utime+stime of every thread from /proc/PID/stat over the window, divided by {})",
            "",
            if a.one_way {
                "the datagrams delivered to the sink"
            } else {
                "2 x round trips: each round trip is 2 relayed packets, client->peer and peer->client"
            }
        );
        println!(
            "  {:<24} {} us per relayed packet ({} threads in all)",
            "server busiest thread",
            opt(top_per_pkt.map(|v| format!("{v:.2}"))),
            opt(top.map(|t| t.1))
        );
        println!("  {:<24} {} KiB", "server RSS", opt(rep.server_end.rss_kib));
    }
    println!(
        "  {:<24} {gen_pct:.1} % of one core; {gen_per_rt:.2} us per round trip",
        "generator CPU"
    );
    if !a.gen_pid.is_empty() {
        println!(
            "  {:<24} {:.1} % of one core (utime+stime of {:?})",
            "generator's other procs",
            100.0 * extra_s / rep.cpu_wall_s,
            a.gen_pid
        );
    }
    if let Some(h) = host {
        println!(
            "  {:<24} busy {:.3} s in {:.3} s (user {:.3}, system {:.3}, irq {:.3}, softirq {:.3}; idle {:.3}, steal {:.3}); {} us per relayed packet, idle baseline not subtracted",
            "host CPU (/proc/stat)",
            h.busy().as_secs_f64(),
            rep.cpu_wall_s,
            h.user.as_secs_f64(),
            h.system.as_secs_f64(),
            h.irq.as_secs_f64(),
            h.softirq.as_secs_f64(),
            h.idle.as_secs_f64(),
            h.steal.as_secs_f64(),
            opt(per_pkt(h.busy().as_secs_f64()).map(|v| format!("{v:.2}")))
        );
    }
    let v = json!({
        "mode": target,
        "label": a.label,
        "transport": transport,
        "allocations": rep.allocations,
        "size": a.size,
        "size_max": a.size_max,
        "rate": match load { Load::Rate(r) => json!(r), Load::Window(_) => json!(null) },
        "pacing": match load { Load::Rate(_) => json!(a.pacing.name()), Load::Window(_) => json!(null) },
        "one_way": a.one_way,
        "offered_mbit_s": a.one_way.then(|| r(mbit(offered), 2)),
        "delivered_mbit_s": a.one_way.then(|| r(mbit(delivered), 2)),
        "reordered": rep.reordered,
        "ideal_gap_us": r(ideal_gap_us, 2),
        "gap_p1_us": gap_p1.map(|v| r(v, 1)),
        "gap_p50_us": gap_p50.map(|v| r(v, 1)),
        "gap_p99_us": gap_p99.map(|v| r(v, 1)),
        "gap_short_pct": gap_short.map(|v| r(v, 2)),
        "late_p50_us": late_p50,
        "late_p99_us": late_p99,
        "window": match load { Load::Window(w) => json!(w), Load::Rate(_) => json!(null) },
        "duration_s": d,
        "offered_rt_per_s": r(offered, 1),
        "delivered_rt_per_s": r(delivered, 1),
        "relayed_pkt_per_s": r(2.0 * delivered, 1),
        "sent": rep.sent,
        "received": rep.received,
        "loss_pct": r(loss, 4),
        "send_errors": rep.send_errors,
        "skipped": rep.skipped,
        "rtt_p50_us": p50,
        "rtt_p99_us": p99,
        "rtt_max_us": max,
        "server_cpu_pct": cpu_pct.map(|v| r(v, 2)),
        "server_cpu_us_per_pkt": cpu_per_pkt.map(|v| r(v, 3)),
        "server_top_thread_us_per_pkt": top_per_pkt.map(|v| r(v, 3)),
        "server_threads": top.map(|t| t.1),
        "relayed_packets_counted": relayed,
        "server_rss_kib": rep.server_end.rss_kib,
        "gen_cpu_pct": r(gen_pct, 2),
        "gen_cpu_us_per_rt": r(gen_per_rt, 3),
        "setup_ms": r(setup.as_secs_f64() * 1e3, 1),
    });
    // The whole host's CPU and the generator's other processes (a second
    // object: one json! of everything exceeds the macro recursion limit).
    let more = json!({
        "cpu_wall_s": r(rep.cpu_wall_s, 4),
        "gen_cpu_s": r(rep.gen_cpu.as_secs_f64(), 4),
        "gen_extra_cpu_s": r(extra_s, 4),
        "kthread_cpu_s": r(rep.kthread_cpu.as_secs_f64(), 4),
        "gen_cpu_all_us_per_pkt": per_pkt(rep.gen_cpu.as_secs_f64() + extra_s).map(|v| r(v, 3)),
        "host_busy_s": host.map(|h| r(h.busy().as_secs_f64(), 4)),
        "host_user_s": host.map(|h| r(h.user.as_secs_f64(), 4)),
        "host_system_s": host.map(|h| r(h.system.as_secs_f64(), 4)),
        "host_irq_s": host.map(|h| r(h.irq.as_secs_f64(), 4)),
        "host_softirq_s": host.map(|h| r(h.softirq.as_secs_f64(), 4)),
        "host_idle_s": host.map(|h| r(h.idle.as_secs_f64(), 4)),
        "host_steal_s": host.map(|h| r(h.steal.as_secs_f64(), 4)),
        "host_busy_us_per_pkt": host.and_then(|h| per_pkt(h.busy().as_secs_f64())).map(|v| r(v, 3)),
    });
    let mut v = v;
    if let (Some(o), serde_json::Value::Object(m)) = (v.as_object_mut(), more) {
        o.extend(m);
    }
    report::emit(&v);
}

fn allocations_only(eng: &mut Engine, a: &RunArgs) -> Result<ExitCode, String> {
    let pid = a.server_pid;
    let before = procstat::sample(pid);
    let rep = eng
        .setup(Target::Allocated, Duration::from_secs(300))
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(200));
    let after = procstat::sample(pid);
    let released = eng
        .setup(Target::Released, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));
    let freed = procstat::sample(pid);
    let rate = rep.ok as f64 / rep.elapsed.as_secs_f64();
    let per_alloc = match (before.rss_kib, after.rss_kib) {
        (Some(b), Some(e)) if rep.ok > 0 => {
            Some(e.saturating_sub(b) as f64 * 1024.0 / rep.ok as f64)
        }
        _ => None,
    };
    let transport = if a.bare { "udp" } else { a.transport.name() };
    println!(
        "turnd-bench: {} allocations over {transport} (401, then authenticated Allocate), {} transactions in flight",
        a.allocations, a.setup_concurrency
    );
    println!(
        "  {:<24} {rate:.0} per second ({} ok, {} failed {:?}, {:.3} s)",
        "allocations",
        rep.ok,
        rep.failed,
        rep.codes,
        rep.elapsed.as_secs_f64()
    );
    if pid.is_some() {
        println!(
            "  {:<24} before {} KiB, with the allocations {} KiB, after releasing them {} KiB",
            "server RSS",
            opt(before.rss_kib),
            opt(after.rss_kib),
            opt(freed.rss_kib)
        );
        println!(
            "  {:<24} {} bytes",
            "RSS per allocation",
            opt(per_alloc.map(|v| format!("{v:.0}")))
        );
    }
    println!("  {:<24} {} released", "release", released.ok);
    report::emit(&json!({
        "mode": "allocations",
        "label": a.label,
        "target": if a.bare { "bare" } else { "turn" },
        "transport": transport,
        "allocations": a.allocations,
        "ok": rep.ok,
        "failed": rep.failed,
        "elapsed_s": r(rep.elapsed.as_secs_f64(), 4),
        "allocs_per_s": r(rate, 1),
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "rss_released_kib": freed.rss_kib,
        "rss_per_alloc_bytes": per_alloc.map(|v| r(v, 0)),
        "released": released.ok,
    }));
    Ok(if rep.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
