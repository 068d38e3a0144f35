//! Fault injection against the real turnd binary over real sockets: a peer
//! that answers with ICMP port unreachable, a client that vanishes, relay
//! ports running out, file descriptors running out, a broken TLS
//! certificate before SIGHUP, a log file on a full file system, and a panic
//! inside a worker or a worker thread ending (the test-only hook
//! `TURND_FAULT_INJECT`). (The SQLite user database faults are in
//! `tests/faults_userdb.rs`.)
//!
//! Each fault is checked for what must hold while it lasts (relaying of the
//! allocations it does not touch, an error answer instead of a hang) and
//! for recovery once it is gone.
//!
//! Runs as root in a private network namespace with loopback up (the
//! full-file-system test mounts a tmpfs): `unshare --net -- sh -c 'ip link
//! set lo up && exec cargo test --offline --test faults'`.
//!
//! Relay ports: `Suite::Faults` slots 0-13 in `support::ports` (slots
//! 14-19 are `tests/faults_userdb.rs`'s).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(2);

/// turnd with the standard arguments, the relay ports of `slot`, loopback
/// peers, a Prometheus listener on 127.0.0.1, then `extra`.
fn relay_server(slot: u16, extra: &[&str]) -> Turnd {
    let (min, max) = relay_ports(Suite::Faults, slot);
    relay_server_ports(min, max, extra)
}

/// [`relay_server`] with the relay ports `min..=max` (within a slot of
/// `Suite::Faults`).
fn relay_server_ports(min: u16, max: u16, extra: &[&str]) -> Turnd {
    Turnd::standard(min, max)
        .arg("--allow-loopback-peers")
        .args(PROMETHEUS)
        .args(extra)
}

/// A UDP port on 127.0.0.1 that nothing listens on (bound a moment ago and
/// closed): datagrams sent there get ICMP port unreachable.
fn closed_udp_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let a = s.local_addr().unwrap();
    drop(s);
    a
}

/// Sends `data` through `c` to `echo` (a Send indication) and waits for the
/// echo as a Data indication from it; panics otherwise.
#[track_caller]
fn indication_round_trip(c: &mut Client, echo: SocketAddr, data: &[u8]) {
    c.send_indication(echo, data);
    let (from, back) = c.expect_data(WAIT);
    assert_eq!(from, echo, "Data indication from another peer");
    assert_eq!(back, data, "echo differs");
}

#[test]
fn icmp_port_unreachable_from_one_peer_does_not_stop_relaying() {
    let mut server = relay_server(0, &[]).start();
    let addr = server.udp();
    let echo = EchoPeer::start();
    let closed = closed_udp_port();
    assert_eq!(closed.ip(), echo.addr.ip());

    // Send indications: the permission for 127.0.0.1 covers both peers.
    let mut c = Client::new(addr, USER, PASSWORD);
    c.allocate();
    c.create_permission(&[echo.addr, closed]).expect_success();
    // Channels: one to the closed port, one to the echo peer.
    let mut ch = Client::new(addr, USER, PASSWORD);
    ch.allocate();
    ch.channel_bind(0x4000, closed).expect_success();
    ch.channel_bind(0x4001, echo.addr).expect_success();

    for round in 0..20u8 {
        // Each datagram to the closed port draws an ICMP port unreachable
        // back to the relay socket; a relay socket that saw the error would
        // report it on its next receive or send.
        for _ in 0..5 {
            c.send_indication(closed, b"to nobody");
            ch.channel_data(0x4000, b"to nobody");
        }
        indication_round_trip(&mut c, echo.addr, &[round; 40]);
        channel_round_trip(&mut ch, 0x4001, &[round; 41]);
    }

    // The worker is healthy: a fresh allocation relays too, and the ones
    // that met the ICMP errors refresh.
    let mut fresh = Client::new(addr, USER, PASSWORD);
    fresh.allocate();
    fresh.create_permission(&[echo.addr]).expect_success();
    indication_round_trip(&mut fresh, echo.addr, b"fresh");
    c.refresh(None).expect_success();
    ch.refresh(None).expect_success();
    assert!(server.is_running(), "turnd died");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Seconds, for the lifetimes below.
const PERMISSION_LIFETIME: u64 = 2;
const CHANNEL_LIFETIME: u64 = 3;
const ALLOCATION_LIFETIME: u64 = 5;
/// How early an expiry may be seen: the lifetimes start when the server
/// handled the request, a little before the client had its answer.
const EARLY: Duration = Duration::from_millis(300);
/// How late an expiry may be seen: the server's timer and this test's
/// 100 ms metrics polling.
const LATE: Duration = Duration::from_millis(1500);

/// The gauges of an allocation's state, from `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Gauges {
    allocations: f64,
    permissions: f64,
    channels: f64,
    ports_free: f64,
}

fn gauges(prom: SocketAddr) -> Gauges {
    let m = scrape_metrics(prom);
    Gauges {
        allocations: m
            .find("turnd_allocations", &[])
            .iter()
            .map(|s| s.value)
            .sum(),
        permissions: m.get("turnd_permissions", &[]),
        channels: m.get("turnd_channels", &[]),
        ports_free: m.get("turnd_relay_ports_free", &[("relay_ip", "127.0.0.1")]),
    }
}

/// Panics unless `seen` (when something was first seen gone, from the
/// start of the lifetimes) is within [`EARLY`] before and [`LATE`] after
/// `lifetime` seconds.
#[track_caller]
fn assert_on_time(what: &str, seen: Option<Duration>, lifetime: u64) {
    let lifetime = Duration::from_secs(lifetime);
    let seen = seen.unwrap_or_else(|| panic!("{what} never expired"));
    assert!(
        seen + EARLY >= lifetime && seen <= lifetime + LATE,
        "{what} expired after {seen:?}, configured {lifetime:?} (allowed {EARLY:?} early, {LATE:?} late)"
    );
}

#[test]
fn a_vanished_client_expires_on_time_and_its_port_returns_to_the_pool() {
    // One relay port: the port coming back is seen by a new Allocate.
    let (min, _) = relay_ports(Suite::Faults, 1);
    let perm = PERMISSION_LIFETIME.to_string();
    let chan = CHANNEL_LIFETIME.to_string();
    let alloc = ALLOCATION_LIFETIME.to_string();
    let mut server = relay_server_ports(
        min,
        min,
        &[
            "--permission-lifetime",
            &perm,
            "--channel-lifetime",
            &chan,
            "--max-allocate-lifetime",
            &alloc,
        ],
    )
    .start();
    let addr = server.udp();
    let prom = server.prometheus();
    let echo = EchoPeer::start();
    let other = Peer::bind("127.0.0.2");

    let mut c = Client::new(addr, USER, PASSWORD);
    let a = c.allocate();
    assert_eq!(a.lifetime as u64, ALLOCATION_LIFETIME, "LIFETIME capped");
    let start = Instant::now();
    c.create_permission(&[other.addr()]).expect_success();
    c.channel_bind(0x4000, echo.addr).expect_success();
    channel_round_trip(&mut c, 0x4000, b"before vanishing");
    assert_eq!(
        gauges(prom),
        Gauges {
            allocations: 1.0,
            permissions: 2.0,
            channels: 1.0,
            ports_free: 0.0
        }
    );
    // A second client meanwhile gets 508: the one port is taken.
    let mut second = Client::new(addr, USER, PASSWORD);
    second
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(508);

    // The client vanishes: its socket closes without a Refresh 0.
    drop(c);
    let (mut perms_gone, mut chans_gone, mut alloc_gone) = (None, None, None);
    let deadline = Duration::from_secs(ALLOCATION_LIFETIME) + LATE + Duration::from_secs(1);
    while start.elapsed() < deadline && alloc_gone.is_none() {
        let g = gauges(prom);
        let t = start.elapsed();
        if g.permissions == 0.0 {
            perms_gone.get_or_insert(t);
        }
        if g.channels == 0.0 {
            chans_gone.get_or_insert(t);
        }
        if g.allocations == 0.0 && g.ports_free == 1.0 {
            alloc_gone.get_or_insert(t);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "expired after: permissions {perms_gone:?}, channel {chans_gone:?}, allocation {alloc_gone:?}"
    );
    assert_on_time("the permissions", perms_gone, PERMISSION_LIFETIME);
    assert_on_time("the channel", chans_gone, CHANNEL_LIFETIME);
    assert_on_time("the allocation", alloc_gone, ALLOCATION_LIFETIME);

    // The port is back: the second client gets it.
    let b = second.allocate();
    assert_eq!(b.relay, a.relay, "the one relay port again");
    second.channel_bind(0x4000, echo.addr).expect_success();
    channel_round_trip(&mut second, 0x4000, b"after");
}

#[test]
fn relay_ports_running_out_is_508_and_recovers_as_soon_as_one_is_freed() {
    let (min, _) = relay_ports(Suite::Faults, 2);
    let mut server = relay_server_ports(min, min + 1, &[]).start();
    let addr = server.udp();
    let prom = server.prometheus();
    let echo = EchoPeer::start();

    let mut holders: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::new(addr, USER, PASSWORD);
            c.allocate();
            c.channel_bind(0x4000, echo.addr).expect_success();
            c
        })
        .collect();
    assert_eq!(gauges(prom).ports_free, 0.0);
    let mut late = Client::new(addr, USER, PASSWORD);
    for _ in 0..3 {
        late.allocate_with(&[Attr::transport_udp()])
            .expect_error(508);
    }
    // Those holding ports keep relaying.
    for c in &mut holders {
        channel_round_trip(c, 0x4000, b"still relaying");
    }
    // One port freed: the very next Allocate gets it.
    holders[0].refresh(Some(0)).expect_success();
    let a = late.allocate();
    server.assert_relay_in_range(a.relay);
    late.channel_bind(0x4000, echo.addr).expect_success();
    channel_round_trip(&mut late, 0x4000, b"recovered");
    channel_round_trip(&mut holders[1], 0x4000, b"still relaying");
    assert_eq!(gauges(prom).ports_free, 0.0);
}

/// How long turnd may take to exit after a panic.
const EXIT_AFTER_PANIC: Duration = Duration::from_secs(5);

/// turnd with two relay workers and `TURND_FAULT_INJECT=panic-worker:N`
/// (the test-only hook: worker `N` panics on its first datagram): fresh
/// client sockets send until one lands on worker `N` (the kernel spreads
/// them by 4-tuple); the process must then exit promptly with status 101,
/// never stay half-alive.
fn a_worker_panic_exits_the_process(slot: u16, worker: usize) {
    let mut server = relay_server(slot, &["--relay-threads", "2"])
        .env("TURND_FAULT_INJECT", format!("panic-worker:{worker}"))
        .start();
    let addr = server.udp();
    let mut sent = 0;
    let mut status = None;
    // 64 sockets: all of them missing worker N has odds of 2^-64.
    for _ in 0..64 {
        let c = Client::new(addr, USER, PASSWORD);
        c.send_raw(&unauthenticated_allocate(new_tid()));
        sent += 1;
        status = server.wait_exit(Duration::from_millis(100));
        if status.is_some() {
            break;
        }
    }
    let status = status
        .or_else(|| server.wait_exit(EXIT_AFTER_PANIC))
        .unwrap_or_else(|| {
            panic!("turnd still runs {EXIT_AFTER_PANIC:?} after {sent} datagrams, worker {worker} armed to panic")
        });
    assert_eq!(status.code(), Some(101), "exit status after a panic");
    let log = server.log();
    assert!(
        log.contains(&format!("injected panic in relay worker {worker}")),
        "{log}"
    );
    assert_eq!(
        log.matches("a thread panicked: exiting").count(),
        1,
        "one error line:\n{log}"
    );
    eprintln!("worker {worker} panicked after {sent} datagram(s): turnd exited with {status}");
}

#[test]
fn a_panic_in_a_worker_thread_exits_the_process() {
    a_worker_panic_exits_the_process(3, 1);
}

#[test]
fn a_panic_on_the_main_thread_exits_the_process() {
    a_worker_panic_exits_the_process(4, 0);
}

/// Open descriptors of process `pid` (entries of `/proc/PID/fd`).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// CPU time process `pid` used so far (user + system, `/proc/PID/stat`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// `prlimit --pid PID --nofile=N:N`: lowers the open-file limit of the
/// running turnd (util-linux; a missing prlimit fails the test).
fn limit_open_files(pid: u32, n: usize) {
    let out = run_with_timeout(
        Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")]),
        Duration::from_secs(5),
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "prlimit --nofile={n}:{n}: {out:?}"
    );
}

/// A fresh client's Allocate: its allocation, or the error code.
fn try_allocate(addr: SocketAddr) -> Result<Client, u16> {
    let mut c = Client::new(addr, USER, PASSWORD);
    let r = c.allocate_with(&[Attr::transport_udp()]);
    match r.error_code() {
        None => {
            Client::allocated(r);
            Ok(c)
        }
        Some(code) => Err(code),
    }
}

/// True when a `GET /metrics` to `addr` sees its connection closed (EOF
/// or reset) with no answer within 2 s.
fn http_closed_unanswered(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connect to /metrics");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Sends `data` on channel 0x4000 of `c` and waits for its echo.
#[track_caller]
fn stream_round_trip(c: &mut StreamClient, data: &[u8]) {
    c.channel_data(0x4000, data);
    let (ch, back) = c.expect_channel_data(WAIT);
    assert_eq!((ch, back.as_slice()), (0x4000, data), "echo over TCP");
}

/// Descriptors left above turnd's idle count before the limit bites.
const FD_HEADROOM: usize = 6;
/// How long descriptors stay out while turnd's CPU time is watched.
const EMFILE_WATCH: Duration = Duration::from_secs(3);
/// Most CPU time turnd may use meanwhile: a bound on a busy loop, not a
/// performance figure (an accept loop spinning on EMFILE uses a whole core).
const EMFILE_CPU_BOUND: Duration = Duration::from_millis(500);

#[test]
fn file_descriptors_running_out_refuse_new_work_keep_old_and_recover() {
    let mut server = relay_server(5, &["--relay-threads", "1"])
        .listen_implied()
        .start();
    let addr = server.udp();
    let tcp = server.listeners.tcp();
    let prom = server.prometheus();
    let pid = server.pid();
    let echo = EchoPeer::start();

    // An allocation made before the limit, relaying on a channel.
    let mut old = Client::new(addr, USER, PASSWORD);
    old.allocate();
    old.channel_bind(0x4000, echo.addr).expect_success();
    channel_round_trip(&mut old, 0x4000, b"before");
    // And one over TCP.
    let mut old_tcp = StreamClient::connect_tcp(tcp);
    old_tcp.allocate();
    old_tcp.channel_bind(0x4000, echo.addr).expect_success();
    stream_round_trip(&mut old_tcp, b"before");
    let idle = open_fds(pid);
    let limit = idle + FD_HEADROOM;
    limit_open_files(pid, limit);

    // Fill the descriptors with allocations (one relay socket each).
    let mut fillers = Vec::new();
    let refused = loop {
        match try_allocate(addr) {
            Ok(c) => fillers.push(c),
            Err(code) => break code,
        }
        // Descriptor numbers, not counts, meet the limit: a gap below it
        // (a descriptor closed since) gives one more.
        assert!(
            fillers.len() <= 2 * FD_HEADROOM,
            "the limit of {limit} never bit"
        );
    };
    assert_eq!(refused, 508, "Allocate without a descriptor left");
    assert!(
        server.wait_for_log("cannot open a relay socket", 1, WAIT)
            && server.log().contains("Too many open files"),
        "the 508's cause is not logged:\n{}",
        server.log()
    );
    eprintln!(
        "turnd: {idle} descriptors at idle with two allocations (UDP, TCP); limit {limit}: {} more allocations, then 508",
        fillers.len()
    );
    // Still at the limit: every new Allocate gets 508, at once.
    for _ in 0..3 {
        assert_eq!(try_allocate(addr).err(), Some(508));
    }
    // A TCP connection is closed unanswered, not left hanging, and the
    // allocation made before keeps relaying.
    let cpu_before = cpu_time(pid);
    let watch = Instant::now();
    let mut shed = 0;
    while watch.elapsed() < EMFILE_WATCH {
        assert!(
            StreamClient::refused_at_accept(tcp, Duration::from_secs(2)),
            "a TCP connection at EMFILE was served or left open"
        );
        shed += 1;
        channel_round_trip(&mut old, 0x4000, b"during");
        stream_round_trip(&mut old_tcp, b"during");
    }
    let cpu = cpu_time(pid) - cpu_before;
    eprintln!(
        "at EMFILE for {:?}: {shed} TCP connections closed unserved, turnd used {cpu:?} of CPU",
        watch.elapsed()
    );
    assert!(
        cpu < EMFILE_CPU_BOUND,
        "turnd used {cpu:?} of CPU in {EMFILE_WATCH:?} at EMFILE: a busy loop?"
    );
    // The HTTP listener too: a scrape is closed unanswered, not left hanging.
    assert!(
        http_closed_unanswered(prom),
        "a /metrics scrape at EMFILE was answered or left open"
    );
    // One warning from each of the two listeners (the log comes through a
    // pipe: give it a moment).
    server.wait_for_log("accept failed: backing off", 2, WAIT);
    let log = server.log();
    let warnings = log.matches("accept failed: backing off").count();
    assert!(
        warnings == 2,
        "{warnings} accept warnings in {EMFILE_WATCH:?} (one per listener per 10 s at most):\n{log}"
    );

    // Descriptors free again: everything works.
    for mut c in fillers {
        c.refresh(Some(0)).expect_success();
    }
    let mut fresh = try_allocate(addr).expect("Allocate after descriptors were freed");
    fresh.channel_bind(0x4000, echo.addr).expect_success();
    channel_round_trip(&mut fresh, 0x4000, b"after");
    assert!(
        StreamClient::wait_for_room(tcp, Duration::from_secs(2)),
        "TCP not served after descriptors were freed"
    );
    assert!(
        server.wait_for_log("accept works again", 1, WAIT),
        "the end of the failures is not logged:\n{}",
        server.log()
    );
    assert_eq!(gauges(prom).allocations, 3.0);
    channel_round_trip(&mut old, 0x4000, b"after");
    stream_round_trip(&mut old_tcp, b"after");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted (lazily, so a
/// busy mount goes too) and removed on drop, also when the test fails.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts it; needs root (a failure, never a skip, without).
    fn mount(name: &str, size: &str) -> Tmpfs {
        let dir = TempDir::new(name);
        let out = run_with_timeout(
            Command::new("mount").args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "turnd-test",
                dir.path.to_str().unwrap(),
            ]),
            Duration::from_secs(5),
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "mount tmpfs on {} (root needed): {out:?}",
            dir.path.display()
        );
        Tmpfs { dir }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run_with_timeout(
            Command::new("umount").args(["-l", self.dir.path.to_str().unwrap()]),
            Duration::from_secs(5),
        );
    }
}

/// Fills the file system of `path` (a new file there) until ENOSPC.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = [0x55u8; 4096];
    for _ in 0..100_000 {
        match f.write(&chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    panic!("{} never filled up", path.display());
}

#[test]
fn a_full_file_system_under_log_file_does_not_stop_relaying() {
    let fs = Tmpfs::mount("full-log", "64k");
    let log_file = fs.join("turnd.log");
    let lf = log_file.to_str().unwrap().to_owned();
    let mut server = relay_server(6, &["--log-file", &lf, "--verbose"]).start();
    let addr = server.udp();
    let pid = server.pid();
    let echo = EchoPeer::start();
    let mut c = Client::new(addr, USER, PASSWORD);
    c.allocate();
    c.channel_bind(0x4000, echo.addr).expect_success();
    channel_round_trip(&mut c, 0x4000, b"log space left");
    assert!(read_or_empty(&log_file).contains("allocation created"));

    fill(&fs.join("filler"));
    let before = std::fs::metadata(&log_file).unwrap().len();
    // Plenty of log lines that cannot be written: allocations, requests.
    let cpu_before = cpu_time(pid);
    let mut others = Vec::new();
    for i in 0..20u8 {
        let mut o = Client::new(addr, USER, PASSWORD);
        o.allocate();
        o.channel_bind(0x4000, echo.addr).expect_success();
        channel_round_trip(&mut o, 0x4000, &[i; 30]);
        channel_round_trip(&mut c, 0x4000, &[i; 31]);
        others.push(o);
    }
    for mut o in others {
        o.refresh(Some(0)).expect_success();
    }
    std::thread::sleep(Duration::from_secs(1));
    let cpu = cpu_time(pid) - cpu_before;
    eprintln!("log file on a full tmpfs: 20 allocations relayed; turnd used {cpu:?} of CPU");
    assert!(server.is_running(), "turnd died on a full file system");
    assert!(
        cpu < Duration::from_secs(1),
        "turnd used {cpu:?} of CPU with its log file on a full file system"
    );
    let after = std::fs::metadata(&log_file).unwrap().len();
    assert!(
        after <= before + 4096,
        "the log grew from {before} to {after} bytes on a full fs"
    );
    // One line on stderr says so, not one per dropped line.
    let stderr = server.log();
    assert_eq!(
        stderr.matches("cannot write log file").count(),
        1,
        "stderr:\n{stderr}"
    );

    // Space again: the log goes on, saying how many lines were dropped.
    std::fs::remove_file(fs.join("filler")).unwrap();
    let mut again = Client::new(addr, USER, PASSWORD);
    again.allocate();
    channel_round_trip(&mut c, 0x4000, b"log space again");
    assert!(
        wait_until(WAIT, || read_or_empty(&log_file)
            .contains("log line(s) dropped")),
        "no note of the dropped lines in the log:\n{}",
        read_or_empty(&log_file)
    );
    let text = read_or_empty(&log_file);
    let tail = &text[text.find("log line(s) dropped").unwrap()..];
    assert!(tail.contains("allocation created"), "{tail}");
    server.signal("TERM");
    let st = server
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGTERM");
    assert!(st.success(), "{st}");
}

/// SIGHUP with the certificate file `cert` broken by `break_it`: the log
/// says the certificate was not reloaded and why (naming the file), and a
/// new TLS connection still gets the certificate `der`.
fn broken_certificate_is_refused(
    server: &mut TestServer,
    cert: &Path,
    der: &[u8],
    n: usize,
    why: &str,
    break_it: impl FnOnce(),
) {
    break_it();
    server.signal("HUP");
    assert!(
        server.wait_for_log("TLS certificate not reloaded", n, Duration::from_secs(5)),
        "SIGHUP with a broken certificate not reported:\n{}",
        server.log()
    );
    let log = server.log();
    let line = log
        .lines()
        .filter(|l| l.contains("TLS certificate not reloaded"))
        .nth(n - 1)
        .unwrap();
    assert!(
        line.contains(&cert.display().to_string()) && line.contains(why),
        "the line does not say why ({why}, {}): {line}",
        cert.display()
    );
    let trust = tls_client_config(&[der], &[], &[ALPN_STUN_TURN]);
    let mut c = StreamClient::connect_tls(server.listeners.tls(), trust)
        .expect("TLS after a refused reload");
    assert_eq!(
        c.peer_cert_der().as_deref(),
        Some(der),
        "the old certificate"
    );
    c.binding();
}

#[test]
fn a_broken_or_removed_certificate_before_sighup_keeps_the_old_one() {
    let cert = TestCert::generate("faults-tls", "turnd-faults");
    let (min, max) = relay_ports(Suite::Faults, 7);
    let mut server = Turnd::standard(min, max)
        .args(cert.args())
        .args(["--tls-listening-port", "0"])
        .listen_implied()
        .start();
    // Garbage in the certificate file (the key stays good).
    broken_certificate_is_refused(
        &mut server,
        &cert.cert,
        &cert.der,
        1,
        "no CERTIFICATE found",
        || std::fs::write(&cert.cert, [0xde, 0xad, 0xbe, 0xef].repeat(64)).unwrap(),
    );
    // The certificate file removed.
    broken_certificate_is_refused(&mut server, &cert.cert, &cert.der, 2, "cannot read", || {
        std::fs::remove_file(&cert.cert).unwrap()
    });
    assert!(server.is_running(), "turnd died");
}

#[test]
fn a_worker_thread_that_ends_without_a_panic_exits_the_process() {
    // TURND_FAULT_INJECT=end-worker:1 (test-only): worker 1 returns as it
    // starts; the main thread looks every 500 ms.
    let mut server = relay_server(8, &["--relay-threads", "2"])
        .env("TURND_FAULT_INJECT", "end-worker:1")
        .start();
    let status = server
        .wait_exit(EXIT_AFTER_PANIC)
        .unwrap_or_else(|| panic!("turnd still runs {EXIT_AFTER_PANIC:?} after worker 1 ended"));
    assert_eq!(status.code(), Some(1), "exit status after a worker ended");
    let log = server.log();
    assert!(log.contains("relay worker 1 stopped unexpectedly"), "{log}");
}
