//! Live reload on SIGHUP against the real turnd binary started with only
//! `--config FILE`: a relayed ChannelData stream loses nothing across the
//! reload, new users and quotas apply at once, and a broken file is refused
//! (logged) while the server keeps running with the configuration it had.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

// Relay ports of this file: 45000-45999.
const MIN_PORT: u16 = 45000;
const MAX_PORT: u16 = 45099;

/// Packets streamed through the relay across the reload.
const PACKETS: u32 = 3000;
/// Most packets in flight at once.
const WINDOW: u32 = 32;
/// Packet at which the file is rewritten and SIGHUP sent.
const RELOAD_AT: u32 = 1000;
/// Longest wait for the server to log a reload (or its refusal).
const LOG_WAIT: Duration = Duration::from_secs(5);

/// turnd started with `--config FILE` only, killed (by PID) on drop.
struct ConfigServer {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl ConfigServer {
    fn start(config: &Path) -> ConfigServer {
        let mut child = Command::new(turnd_bin())
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn turnd");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let l = log.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends at EOF, when turnd exits.
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut l = l.lock().unwrap();
                if l.len() < 1 << 20 {
                    l.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line
                        .strip_prefix("turnd: listening on udp ")
                        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    {
                        break a;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    thread::sleep(Duration::from_millis(100));
                    panic!(
                        "turnd --config {} did not start ({e:?}, exit {status:?}); stderr:\n{}",
                        config.display(),
                        log.lock().unwrap()
                    );
                }
            }
        };
        ConfigServer { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -HUP <pid>`: this child only.
    fn sighup(&self) {
        let pid = self.child.id().to_string();
        let out = run_with_timeout(
            Command::new("kill").args(["-HUP", &pid]),
            Duration::from_secs(5),
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "kill -HUP {pid}: {out:?}"
        );
    }

    /// Waits (bounded) until the log contains `needle` `count` times.
    fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + LOG_WAIT;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {count}x {needle:?} in turnd's log within {LOG_WAIT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- turnd log ----\n{}\n---- end ----", self.log());
        }
    }
}

/// A UDP echo peer on 127.0.0.1 in a thread, stopped on drop.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Echo {
    fn start() -> Echo {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut echoed = 0u64;
            // Bounded: stops on the flag, or after 120 s whatever happens.
            let hard = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < hard {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                    echoed += 1;
                }
            }
            echoed
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `text` to `path` atomically (write aside, then rename), so turnd
/// never reads a half-written file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn base_config(users: &str, extra: &str) -> String {
    format!(
        "listening-ip = \"127.0.0.1\"\n\
         listening-port = 0\n\
         relay-ip = \"127.0.0.1\"\n\
         min-port = {MIN_PORT}\n\
         max-port = {MAX_PORT}\n\
         realm = \"{REALM}\"\n\
         user = [{users}]\n\
         allow-loopback-peers = true\n\
         {extra}"
    )
}

fn payload(seq: u32) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.resize(160, (seq % 251) as u8);
    p
}

#[test]
fn sighup_reloads_users_and_quota_without_losing_relayed_packets() {
    let dir: PathBuf = temp_path("reload");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("turnd.toml");
    write_atomic(&file, &base_config("\"alice:secret\"", ""));

    let mut server = ConfigServer::start(&file);
    let echo = Echo::start();
    let mut c = Client::new(server.addr, USER, PASSWORD);
    c.allocate();
    const CH: u16 = 0x4001;
    c.channel_bind(CH, echo.addr).expect_success();
    // frank does not exist yet.
    Client::new(server.addr, "frank", "pw")
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(401);

    // Stream, windowed, with the reload in the middle.
    let mut received: HashSet<u32> = HashSet::new();
    let mut next = 0u32;
    let mut hup_sent = false;
    let mut reloaded_at: Option<u32> = None;
    let started = Instant::now();
    while received.len() < PACKETS as usize {
        while next < PACKETS && next - (received.len() as u32) < WINDOW {
            if next == RELOAD_AT && !hup_sent {
                write_atomic(
                    &file,
                    &base_config("\"alice:secret\", \"frank:pw\"", "user-quota = 5\n"),
                );
                server.sighup();
                hup_sent = true;
            }
            // Make sure the reload completes while the stream is running.
            if next == PACKETS - 500 && reloaded_at.is_none() {
                server.wait_log("configuration reloaded", 1);
                reloaded_at = Some(next);
            }
            c.channel_data(CH, &payload(next));
            next += 1;
        }
        if hup_sent
            && reloaded_at.is_none()
            && received.len() % 16 == 0
            && server.log().contains("configuration reloaded")
        {
            reloaded_at = Some(next);
        }
        match c.recv(Duration::from_secs(2)) {
            Some(Incoming::Channel { channel, data }) => {
                assert_eq!(channel, CH);
                let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
                assert_eq!(data, payload(seq), "payload of packet {seq} altered");
                assert!(received.insert(seq), "packet {seq} delivered twice");
            }
            Some(other) => panic!("unexpected datagram during the stream: {other:?}"),
            None => {
                let lost = next - received.len() as u32;
                panic!(
                    "stream stalled: {lost} packet(s) in flight never came back \
                     ({} of {next} sent received; SIGHUP sent: {hup_sent}; reload logged at packet {reloaded_at:?})",
                    received.len()
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let reloaded_at = reloaded_at.expect("reload observed during the stream");
    eprintln!(
        "streamed {PACKETS} packets (window {WINDOW}) in {elapsed:?}; SIGHUP at packet {RELOAD_AT}, \
         reload logged by packet {reloaded_at}; 0 lost"
    );
    assert!(
        reloaded_at < PACKETS,
        "the reload happened during the stream"
    );
    assert!(server.is_running());

    // The new user works, and the new quota applies to him: 5, then 486.
    let mut franks: Vec<Client> = Vec::new();
    for i in 0..5 {
        let mut f = Client::new(server.addr, "frank", "pw");
        let r = f.allocate_with(&[Attr::transport_udp()]);
        assert!(r.is_success(), "frank's allocation #{}: {r:?}", i + 1);
        franks.push(f);
    }
    let mut sixth = Client::new(server.addr, "frank", "pw");
    sixth
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(486);

    // A broken file: SIGHUP is refused and logged, the old config stays.
    write_atomic(
        &file,
        &base_config("\"alice:secret\"", "no-such-option = 1\n"),
    );
    server.sighup();
    server.wait_log("not reloaded", 1);
    assert!(server.is_running(), "turnd exited on a bad reload");
    let log = server.log();
    assert!(
        log.contains("no-such-option"),
        "the refusal names the option:\n{log}"
    );
    assert_eq!(
        log.matches("configuration reloaded").count(),
        1,
        "the broken file was applied:\n{log}"
    );
    // alice still works, frank (from the last good config) too, and the
    // allocation made before both reloads still relays.
    Client::new(server.addr, USER, PASSWORD).allocate();
    // frank authenticates and his quota of 5 still holds: 486, not 401...
    let mut f = Client::new(server.addr, "frank", "pw");
    f.allocate_with(&[Attr::transport_udp()]).expect_error(486);
    // ...and once one of his allocations is deleted, he allocates again.
    franks[0].refresh(Some(0)).expect_success();
    f.allocate();
    for i in 0..10u32 {
        c.channel_data(CH, &payload(PACKETS + i));
        let (ch, data) = c.expect_channel_data(RESPONSE_TIMEOUT);
        assert_eq!(ch, CH);
        assert_eq!(data, payload(PACKETS + i));
    }
    drop(c);
    drop(echo);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
