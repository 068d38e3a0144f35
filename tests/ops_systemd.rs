//! Running under systemd: the unit file passes `systemd-analyze verify`, the
//! `sd_notify` protocol over a real Unix datagram socket (READY=1 once the
//! listeners answer, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on
//! SIGTERM, exit 0; the abstract-namespace `@name` form), drain on SIGTERM
//! with `--drain-timeout`, and `--pidfile`.
//!
//! Relay ports: `Suite::OpsSystemd` in `support::ports`.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A notify socket bound by the test; what turnd sends arrives here.
struct NotifySocket {
    sock: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    env: String,
    _dir: Option<TempDir>,
}

impl NotifySocket {
    /// A socket at a path in a fresh temporary directory.
    fn at_path() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path = dir.join("notify.sock");
        let sock =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        NotifySocket {
            sock,
            env: path.to_str().expect("utf-8 temp path").to_owned(),
            _dir: Some(dir),
        }
    }

    /// A socket in the abstract namespace; NOTIFY_SOCKET is `@name`.
    fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "turnd-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
        NotifySocket {
            sock,
            env: format!("@{name}"),
            _dir: None,
        }
    }

    /// The next datagram within `timeout`, as text.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Every datagram within `window`.
    fn collect(&self, window: Duration) -> Vec<(Duration, String)> {
        let start = Instant::now();
        let deadline = start + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            if let Some(m) = self.recv(left) {
                out.push((start.elapsed(), m));
            }
        }
    }

    /// Waits (bounded) for a datagram whose lines include `state`, skipping
    /// WATCHDOG=1 pings; returns what was skipped. Panics on anything else.
    #[track_caller]
    fn expect_state(&self, state: &str, timeout: Duration, server: &TestServer) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = self.recv(left) else {
                panic!(
                    "no {state} on NOTIFY_SOCKET={} within {timeout:?} (got {skipped:?}); log:\n{}",
                    self.env,
                    server.log()
                );
            };
            if m.lines().any(|l| l == state) {
                return skipped;
            }
            assert!(
                m.lines().all(|l| l == "WATCHDOG=1"),
                "unexpected notify datagram {m:?} while waiting for {state}"
            );
            skipped.push(m);
        }
    }
}

/// turnd with the standard arguments, the relay ports of `slot` and `extra`.
fn relay_server(slot: u16, extra: &[&str]) -> Turnd {
    let (min, max) = relay_ports(Suite::OpsSystemd, slot);
    Turnd::standard(min, max).args(extra)
}

/// Spawns turnd with NOTIFY_SOCKET set (and WATCHDOG_* as given), checks
/// READY=1 comes once the listener answers Binding, then watchdogs, then
/// STOPPING=1 and exit 0 on SIGTERM.
fn notify_lifecycle(sock: &NotifySocket, slot: u16) {
    let mut server = relay_server(slot, &[])
        .env("NOTIFY_SOCKET", &sock.env)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .spawn();
    // READY=1 before anything else but watchdog pings (which start after READY).
    let skipped = sock.expect_state("READY=1", START_TIMEOUT, &server);
    assert!(skipped.is_empty(), "datagrams before READY=1: {skipped:?}");
    // The listener is bound when READY=1 is sent: it prints its address
    // first (flushed), and a Binding sent right now is answered.
    let addr = match server.wait_stdout("turnd: listening on udp ", Duration::from_secs(2)) {
        Some(a) => a.parse::<std::net::SocketAddr>().expect("udp address"),
        None => panic!(
            "READY=1 came but no `listening on udp` line within 2 s: {:?}",
            server.stdout_lines()
        ),
    };
    let mut c = Client::new(addr, USER, PASSWORD);
    let (tid, b) = c.build_request(turnd::stun::Method::BINDING, &[], false);
    c.send_raw(&b);
    // One transmission only, answered well within a retransmission timeout.
    let mut answered = false;
    let deadline = Instant::now() + Duration::from_millis(500);
    while let Some(d) = c.recv_raw(deadline.saturating_duration_since(Instant::now())) {
        if d.len() >= 20 && d[8..20] == tid {
            let r = Response::new(d);
            r.expect_success();
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "Binding sent right after READY=1 not answered within 500 ms"
    );

    // WATCHDOG_USEC=200000: a ping every 100 ms; at least 3 within ~1 s.
    let got = sock.collect(Duration::from_millis(1000));
    let pings = got.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(
        pings >= 3,
        "expected >= 3 WATCHDOG=1 within 1 s with WATCHDOG_USEC=200000, got {got:?}"
    );
    assert!(
        got.iter().all(|(_, m)| m == "WATCHDOG=1"),
        "unexpected datagrams while running: {got:?}"
    );
    // Pings are spread out (interval ~100 ms), not a burst.
    assert!(
        pings <= 20,
        "too many WATCHDOG=1 pings in 1 s ({pings}): {got:?}"
    );

    server.signal("TERM");
    sock.expect_state("STOPPING=1", Duration::from_secs(5), &server);
    let st = server
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("turnd did not exit within 5 s of SIGTERM"));
    assert!(st.success(), "exit status after SIGTERM: {st}");
}

#[test]
fn notify_socket_path_ready_watchdog_stopping() {
    let sock = NotifySocket::at_path();
    notify_lifecycle(&sock, 0);
}

#[test]
fn notify_socket_abstract_namespace() {
    let sock = NotifySocket::abstract_name();
    notify_lifecycle(&sock, 1);
}

/// WATCHDOG_PID naming another process: the watchdog is not ours, no pings
/// (sd_watchdog_enabled semantics); READY=1 still comes.
#[test]
fn watchdog_pid_of_another_process_means_no_pings() {
    let sock = NotifySocket::at_path();
    let mut server = relay_server(2, &[])
        .env("NOTIFY_SOCKET", &sock.env)
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1")
        .spawn();
    sock.expect_state("READY=1", START_TIMEOUT, &server);
    let got = sock.collect(Duration::from_millis(600));
    assert!(
        got.is_empty(),
        "WATCHDOG_PID=1 (not turnd) yet turnd sent: {got:?}"
    );
    server.signal("TERM");
    sock.expect_state("STOPPING=1", Duration::from_secs(5), &server);
    let st = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(st.success(), "{st}");
}

/// Without NOTIFY_SOCKET nothing breaks: turnd serves and exits 0 on SIGTERM.
#[test]
fn no_notify_socket_is_fine() {
    let mut server = relay_server(3, &[])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .start();
    let mut c = Client::new(server.udp(), USER, PASSWORD);
    c.request_unsigned(turnd::stun::Method::BINDING, &[])
        .expect_success();
    server.signal("TERM");
    let st = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(st.success(), "{st}");
}

/// SIGTERM with --drain-timeout 5 and a live allocation: new Allocates get
/// 508, the existing allocation keeps relaying both ways and refreshing; once
/// it is deleted, turnd exits 0 right away (well before the 5 s).
#[test]
fn drain_on_sigterm() {
    let peer = EchoPeer::start();
    let mut server = relay_server(4, &["--allow-loopback-peers", "--drain-timeout", "5"]).start();
    let addr = server.udp();
    let mut a = Client::new(addr, USER, PASSWORD);
    a.allocate();
    a.channel_bind(0x4001, peer.addr).expect_success();
    channel_round_trip(&mut a, 0x4001, b"before sigterm");

    server.signal("TERM");
    assert!(
        server.wait_for_log("draining", 1, Duration::from_secs(5)),
        "no `draining` log line after SIGTERM"
    );
    let sigterm_at = Instant::now();

    // A new client: 508 (Insufficient Capacity).
    let mut b = Client::new(addr, USER, PASSWORD);
    let r = b.allocate_with(&[Attr::transport_udp()]);
    r.expect_error(508);

    // The existing allocation relays both ways and refreshes.
    for i in 0..5u8 {
        channel_round_trip(&mut a, 0x4001, &[b'd', b'r', b'a', b'i', b'n', i]);
    }
    let r = a.refresh(Some(600));
    r.expect_success();
    a.channel_bind(0x4001, peer.addr).expect_success();
    channel_round_trip(&mut a, 0x4001, b"after refresh");
    assert!(
        server.is_running(),
        "turnd exited while an allocation lived"
    );

    // Delete it: turnd exits 0 within ~1 s, not after the 5 s drain timeout.
    a.refresh(Some(0)).expect_success();
    let deleted_at = Instant::now();
    let st = server
        .wait_exit(Duration::from_secs(3))
        .expect("turnd did not exit within 3 s after the last allocation was deleted");
    let after_delete = deleted_at.elapsed();
    assert!(st.success(), "exit status {st}");
    assert!(
        after_delete < Duration::from_millis(1200),
        "turnd took {after_delete:?} to exit after the last allocation ended"
    );
    assert!(
        sigterm_at.elapsed() < Duration::from_secs(4),
        "exit came near the drain timeout, not at the last allocation's end"
    );
}

/// SIGTERM with --drain-timeout 5 and no allocation: exits at once.
#[test]
fn drain_without_allocations_exits_at_once() {
    let mut server = relay_server(5, &["--drain-timeout", "5"]).start();
    let t = Instant::now();
    server.signal("TERM");
    let st = server
        .wait_exit(Duration::from_secs(6))
        .expect("no exit within 6 s");
    assert!(st.success(), "{st}");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "took {:?} to exit with nothing to drain",
        t.elapsed()
    );
}

/// The drain timeout bounds the wait: an allocation that stays alive does not
/// keep turnd running past --drain-timeout.
#[test]
fn drain_timeout_bounds_the_wait() {
    let mut server = relay_server(6, &["--drain-timeout", "1"]).start();
    let mut a = Client::new(server.udp(), USER, PASSWORD);
    a.allocate();
    let t = Instant::now();
    server.signal("TERM");
    let st = server
        .wait_exit(Duration::from_secs(5))
        .expect("turnd still running 5 s after SIGTERM with --drain-timeout 1");
    assert!(st.success(), "{st}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "exit after {took:?} with --drain-timeout 1"
    );
}

/// --pidfile: holds the PID while running, removed on exit.
#[test]
fn pidfile_written_and_removed() {
    let dir = TempDir::new("pidfile");
    let pidfile = dir.join("turnd.pid");
    let p = pidfile.to_str().unwrap().to_owned();
    let mut server = relay_server(7, &["--pidfile", &p]).start();
    assert!(
        wait_until(Duration::from_secs(5), || read_or_empty(&pidfile)
            .trim()
            .parse::<u32>()
            .is_ok()),
        "no PID in {p}"
    );
    assert_eq!(
        read_or_empty(&pidfile).trim(),
        server.pid().to_string(),
        "pidfile content"
    );
    server.signal("TERM");
    let st = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(st.success(), "{st}");
    assert!(!pidfile.exists(), "pidfile {p} left behind after exit");
}

/// `systemd-analyze verify` on the shipped unit, with ExecStart pointing at
/// the binary under test (verify checks the executable exists) and the
/// example config given with an absolute path.
#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze not found: run scripts/install-deps.sh (Debian package `systemd`)"
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/turnd.service")).expect("read unit");
    let example = root.join("turnserver.toml.example");
    assert!(example.exists());
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart= in unit");
    assert!(
        exec.contains("--config"),
        "ExecStart should pass --config: {exec}"
    );
    assert!(
        unit.lines().any(|l| l == "Type=notify"),
        "the unit must be Type=notify"
    );
    let rewritten: String = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!(
                    "ExecStart={} --config {}",
                    turnd_bin(),
                    example.canonicalize().unwrap().display()
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    // The config it now names is valid.
    let check = run_with_timeout(
        Command::new(turnd_bin())
            .arg("check-config")
            .arg(example.canonicalize().unwrap()),
        Duration::from_secs(10),
    );
    assert!(
        check.status.is_some_and(|s| s.success()),
        "check-config {}: {check:?}",
        example.display()
    );

    verify_unit(analyze, &rewritten, "systemd/turnd.service");
    // With the XDP drop-in (README: XDP fast path) merged in.
    let drop_in =
        std::fs::read_to_string(root.join("systemd/turnd-xdp.conf")).expect("read drop-in");
    assert!(drop_in.contains("CAP_BPF") && drop_in.contains("SystemCallFilter=bpf"));
    verify_unit(
        analyze,
        &format!("{rewritten}{drop_in}"),
        "systemd/turnd.service + systemd/turnd-xdp.conf",
    );
}

/// `systemd-analyze verify` passes on the unit `rewritten` (`what` names it).
fn verify_unit(analyze: &str, rewritten: &str, what: &str) {
    let dir = TempDir::new("unit");
    let path = dir.join("turnd.service");
    std::fs::write(&path, rewritten).unwrap();
    let verify = || {
        run_with_timeout(
            Command::new(analyze)
                .arg("verify")
                .arg(&path)
                .env("SYSTEMD_LOG_COLOR", "0")
                .env("SYSTEMD_PAGER", ""),
            Duration::from_secs(60),
        )
    };
    // Passing means exit 0 and nothing on stderr: verify exits 0 on unknown
    // keys or bad values ("Unknown key ..., ignoring") and only prints them.
    let ok = |o: &RunOutput| o.status.is_some_and(|s| s.success()) && o.stderr.trim().is_empty();
    let out = verify();
    assert!(!out.timed_out(), "systemd-analyze verify hung: {out:?}");
    if ok(&out) {
        return;
    }
    let report = format!("{}{}", out.stdout, out.stderr);
    // The one environment-dependent complaint tolerated: the `turnd` system
    // user and group are created at install time (README), so a host
    // without them may make verify complain about User=/Group=. Only when
    // every complaint is about them is a copy without those lines verified.
    // (On Debian 12's systemd 252 verify does not check the user at all.)
    let about_user = |l: &str| {
        l.contains("User=")
            || l.contains("Group=")
            || ((l.contains("user") || l.contains("group")) && l.contains("turnd"))
    };
    let complaints: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        complaints.iter().all(|l| about_user(l)),
        "systemd-analyze verify reports problems with {what}:\n{report}"
    );
    eprintln!(
        "NOTE: systemd-analyze verify complains only about the `turnd` user/group, which is created \
         at install time (README); verifying a copy without User=/Group=.\n{report}"
    );
    let stripped: String = rewritten
        .lines()
        .filter(|l| !l.starts_with("User=") && !l.starts_with("Group="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, stripped).unwrap();
    let again = verify();
    assert!(
        ok(&again),
        "systemd-analyze verify still fails on {what} without User=/Group=: {again:?}\n(first run: {report})"
    );
}
