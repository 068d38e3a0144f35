//! Processes: the one way to start `turnd` ([`Turnd`], a builder of
//! arguments, environment and the listeners to wait for) and the running
//! server it gives ([`TestServer`]); any other command run to completion
//! ([`run_with_timeout`]); bounded polling ([`wait_until`]); free ports and
//! temporary directories.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Client, PASSWORD, REALM, START_TIMEOUT, USER};

/// Most bytes of server log kept for failure reports.
const LOG_CAP: usize = 256 * 1024;

/// How often [`wait_until`] looks again.
const POLL: Duration = Duration::from_millis(10);

/// Path of the binary under test.
pub fn turnd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_turnd")
}

/// The listeners a started [`TestServer`] waits for before it is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    /// `turnd: listening on udp ADDR`.
    pub udp: bool,
    /// `turnd: listening on tcp ADDR`.
    pub tcp: bool,
    /// How many `turnd: listening on tls ADDR` lines.
    pub tls: usize,
}

impl Listen {
    /// The UDP listener only (the default).
    pub const UDP: Listen = Listen {
        udp: true,
        tcp: false,
        tls: 0,
    };

    /// What `args` imply: UDP unless `--no-udp`, TCP unless `--no-tcp`, and
    /// with `--cert` (and no `--no-tls`) one TLS listener per
    /// `--tls-listening-port` (at least one).
    pub fn implied_by(args: &[String]) -> Listen {
        let has = |a: &str| args.iter().any(|x| x == a);
        let tls = if has("--cert") && !has("--no-tls") {
            args.iter()
                .filter(|a| *a == "--tls-listening-port")
                .count()
                .max(1)
        } else {
            0
        };
        Listen {
            udp: !has("--no-udp"),
            tcp: !has("--no-tcp"),
            tls,
        }
    }
}

/// The listening addresses turnd printed on stdout.
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    /// `turnd: listening on udp ADDR`.
    pub udp: Option<SocketAddr>,
    /// `turnd: listening on tcp ADDR`.
    pub tcp: Option<SocketAddr>,
    /// `turnd: listening on tls ADDR` (one per TLS port, in order).
    pub tls: Vec<SocketAddr>,
}

impl Listeners {
    /// Reads every `turnd: listening on (udp|tcp|tls) ADDR` line of `lines`.
    fn parse(lines: &[String]) -> Listeners {
        let mut l = Listeners::default();
        for line in lines {
            let Some((proto, a)) = line
                .strip_prefix("turnd: listening on ")
                .and_then(|rest| rest.split_once(' '))
            else {
                continue;
            };
            let Ok(a) = a.trim().parse::<SocketAddr>() else {
                continue;
            };
            // Loopback, or documentation addresses a test put on a veth
            // inside its own network namespace (tests/own_address.rs).
            assert!(
                (a.ip().is_loopback() || is_documentation(a.ip())) && a.port() != 0,
                "{line}"
            );
            match proto {
                "udp" => l.udp = Some(a),
                "tcp" => l.tcp = Some(a),
                "tls" => l.tls.push(a),
                _ => {}
            }
        }
        l
    }

    /// True when every listener `want` names is there.
    fn has(&self, want: Listen) -> bool {
        (!want.udp || self.udp.is_some())
            && (!want.tcp || self.tcp.is_some())
            && self.tls.len() >= want.tls
    }

    /// The TCP listener; panics when there is none.
    #[track_caller]
    pub fn tcp(&self) -> SocketAddr {
        self.tcp.expect("turnd printed no tcp listener")
    }

    /// The first TLS listener; panics when there is none.
    #[track_caller]
    pub fn tls(&self) -> SocketAddr {
        *self.tls.first().expect("turnd printed no tls listener")
    }
}

/// True for the documentation ranges 192.0.2.0/24, 198.51.100.0/24,
/// 203.0.113.0/24 and 2001:db8::/32 (RFC 5737, RFC 3849).
fn is_documentation(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            matches!(
                v4.octets(),
                [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
            )
        }
        std::net::IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0xdb8],
    }
}

/// The arguments that serve `/metrics` on an ephemeral port of 127.0.0.1
/// (turnd prints the port it got).
pub const PROMETHEUS: &[&str] = &[
    "--prometheus",
    "--prometheus-port",
    "0",
    "--prometheus-address",
    "127.0.0.1",
];

/// How to start `turnd`: its arguments, its environment and the listeners to
/// wait for. Every test server is started through this builder.
///
/// `RUST_LOG` is removed and `NO_COLOR=1` set; `TURND_TEST_LOG=turnd=trace`
/// in the test's environment becomes the server's `RUST_LOG`, so a failure
/// report shows the packet log.
#[derive(Clone, Debug)]
#[must_use]
pub struct Turnd {
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
    listen: Option<Listen>,
    /// The command turnd runs under (`ip netns exec NS`), none when empty.
    wrapper: Vec<String>,
}

impl Turnd {
    /// No arguments at all (for `--config FILE` and the like).
    pub fn bare() -> Turnd {
        Turnd {
            args: Vec::new(),
            env: Vec::new(),
            listen: None,
            wrapper: Vec::new(),
        }
    }

    /// The standard test arguments: listener and relay on 127.0.0.1
    /// (listening port 0), relay ports `min_port..=max_port`, realm
    /// [`REALM`], user alice:secret.
    pub fn standard(min_port: u16, max_port: u16) -> Turnd {
        Turnd::bare().args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            &min_port.to_string(),
            "--max-port",
            &max_port.to_string(),
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASSWORD}"),
        ])
    }

    /// One more argument.
    pub fn arg(mut self, a: impl AsRef<str>) -> Turnd {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// More arguments.
    pub fn args<S: AsRef<str>>(mut self, a: impl IntoIterator<Item = S>) -> Turnd {
        self.args
            .extend(a.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Gives `option` the value `value`: replaces the value after an
    /// `option` already there (e.g. the standard `--listening-port 0`), else
    /// appends both.
    pub fn set(mut self, option: &str, value: impl AsRef<str>) -> Turnd {
        match self.args.iter().position(|a| a == option) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.as_ref().to_owned(),
            _ => self
                .args
                .extend([option.to_owned(), value.as_ref().to_owned()]),
        }
        self
    }

    /// Sets `key=value` in the server's environment.
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Turnd {
        self.env
            .push((key.to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes `key` from the server's environment.
    pub fn env_remove(mut self, key: &str) -> Turnd {
        self.env.push((key.to_owned(), None));
        self
    }

    /// The listeners [`Turnd::start`] waits for (default: [`Listen::UDP`]).
    pub fn listen(mut self, want: Listen) -> Turnd {
        self.listen = Some(want);
        self
    }

    /// [`Turnd::listen`] with what the arguments imply ([`Listen::implied_by`]).
    pub fn listen_implied(self) -> Turnd {
        let want = Listen::implied_by(&self.args);
        self.listen(want)
    }

    /// Runs turnd in the named network namespace (`ip netns exec NS turnd
    /// ...`; `ip` execs turnd, so the PID is turnd's).
    pub fn in_netns(mut self, ns: &str) -> Turnd {
        self.wrapper = ["ip", "netns", "exec", ns].map(String::from).to_vec();
        self
    }

    /// The arguments so far.
    pub fn arguments(&self) -> &[String] {
        &self.args
    }

    /// Starts turnd and returns at once, before it listens.
    pub fn spawn(self) -> TestServer {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(turnd_bin());
                c
            }
            None => Command::new(turnd_bin()),
        };
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        if let Ok(filter) = std::env::var("TURND_TEST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", turnd_bin()));
        let log = Arc::new(Mutex::new(String::new()));
        drain_into(child.stderr.take().expect("piped stderr"), log.clone());
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        {
            let stdout = stdout.clone();
            // Ends at EOF, when turnd exits.
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    stdout.lock().unwrap().push(line);
                }
            });
        }
        let port_arg = |name: &str| {
            self.args
                .iter()
                .position(|a| a == name)
                .and_then(|i| self.args.get(i + 1))
                .and_then(|p| p.parse::<u16>().ok())
        };
        TestServer {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            listeners: Listeners::default(),
            min_port: port_arg("--min-port").unwrap_or(0),
            max_port: port_arg("--max-port").unwrap_or(0),
            args: self.args,
            stdout,
            log,
            status: None,
        }
    }

    /// Starts turnd and waits (at most [`START_TIMEOUT`]) until it printed
    /// the listeners asked for; panics, with its output, when they do not
    /// come or turnd exits first.
    #[track_caller]
    pub fn start(self) -> TestServer {
        let want = self.listen.unwrap_or(Listen::UDP);
        let mut s = self.spawn();
        s.listeners = s.wait_listeners(want);
        let l = &s.listeners;
        s.addr = l
            .udp
            .or(l.tcp)
            .or(l.tls.first().copied())
            .expect("a listener");
        s
    }
}

/// A running `turnd` (see [`Turnd`]), killed (by PID) on drop; its output is
/// printed when the test panics.
pub struct TestServer {
    child: Child,
    /// The first listener waited for: UDP, else TCP, else TLS (0.0.0.0:0 for
    /// a server only spawned).
    pub addr: SocketAddr,
    /// The listeners waited for at start.
    pub listeners: Listeners,
    /// Lowest relay port it was given (`--min-port`; 0 when none).
    pub min_port: u16,
    /// Highest relay port it was given (`--max-port`; 0 when none).
    pub max_port: u16,
    args: Vec<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl TestServer {
    /// `Turnd::standard(min_port, max_port).args(extra).start()`: the
    /// standard arguments, then `extra`, waiting for the UDP listener.
    #[track_caller]
    pub fn start(min_port: u16, max_port: u16, extra: &[&str]) -> TestServer {
        Turnd::standard(min_port, max_port).args(extra).start()
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// What it wrote on stderr so far (its log).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A client with the default credentials, talking to [`TestServer::addr`].
    pub fn client(&self) -> Client {
        Client::new(self.addr, USER, PASSWORD)
    }

    /// Panics unless `relay` is on 127.0.0.1 within the server's relay port range.
    #[track_caller]
    pub fn assert_relay_in_range(&self, relay: SocketAddr) {
        assert_eq!(
            relay.ip(),
            std::net::IpAddr::from([127, 0, 0, 1]),
            "relay {relay}"
        );
        assert!(
            (self.min_port..=self.max_port).contains(&relay.port()),
            "relay port {} outside {}..={}",
            relay.port(),
            self.min_port,
            self.max_port
        );
    }

    /// Waits (at most `timeout`) for a stdout line starting with
    /// `prefix`; returns the rest of the line.
    pub fn wait_stdout(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_owned()));
            found.is_some()
        });
        found
    }

    /// Polls `found` on the stdout lines until it gives a value, at most
    /// [`START_TIMEOUT`]; panics (with the output) when turnd exits first or
    /// the time runs out. `what` names the awaited lines in the panic.
    #[track_caller]
    fn wait_printed<T>(&mut self, what: &str, found: impl Fn(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(t) = found(&self.stdout.lock().unwrap()) {
                return t;
            }
            let exited = self.try_exit();
            if exited.is_some() || Instant::now() >= deadline {
                // The last lines may still be in the pipe readers.
                let late = wait_until(Duration::from_millis(200), || {
                    found(&self.stdout.lock().unwrap()).is_some()
                });
                if late {
                    if let Some(t) = found(&self.stdout.lock().unwrap()) {
                        return t;
                    }
                }
                let why = match exited {
                    Some(st) => format!("exited ({st})"),
                    None => format!("still running after {START_TIMEOUT:?}"),
                };
                panic!(
                    "turnd {:?} {why} without printing {what}; stdout {:?}; stderr:\n{}",
                    self.args,
                    self.stdout_lines(),
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the listeners `want` names.
    #[track_caller]
    fn wait_listeners(&mut self, want: Listen) -> Listeners {
        self.wait_printed(&format!("its listeners {want:?}"), |lines| {
            let l = Listeners::parse(lines);
            l.has(want).then_some(l)
        })
    }

    /// The rest of the line `turnd: listening on {what} ...`.
    #[track_caller]
    fn wait_listening(&mut self, what: &str) -> String {
        let prefix = format!("turnd: listening on {what} ");
        self.wait_printed(&format!("`{prefix}ADDR`"), |lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&prefix).map(|r| r.trim().to_owned()))
        })
    }

    /// The UDP listening address (`turnd: listening on udp ADDR`).
    #[track_caller]
    pub fn udp(&mut self) -> SocketAddr {
        let a = self.wait_listening("udp");
        a.parse()
            .unwrap_or_else(|e| panic!("bad udp listening address {a:?}: {e}"))
    }

    /// The Prometheus listener (`turnd: listening on prometheus http://ADDR/metrics`).
    #[track_caller]
    pub fn prometheus(&mut self) -> SocketAddr {
        let a = self.wait_listening("prometheus");
        let addr = a
            .strip_prefix("http://")
            .and_then(|a| a.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("prometheus line not http://ADDR/metrics: {a:?}"));
        addr.parse()
            .unwrap_or_else(|e| panic!("bad prometheus address {addr:?}: {e}"))
    }

    /// The admin listener (`turnd: listening on admin http://ADDR/`).
    #[track_caller]
    pub fn admin(&mut self) -> SocketAddr {
        let a = self.wait_listening("admin");
        let addr = a
            .strip_prefix("http://")
            .and_then(|a| a.strip_suffix('/'))
            .unwrap_or_else(|| panic!("admin line not http://ADDR/: {a:?}"));
        addr.parse()
            .unwrap_or_else(|e| panic!("bad admin address {addr:?}: {e}"))
    }

    /// `kill -SIG <pid>` (`sig` like "TERM", "HUP"): this child only.
    #[track_caller]
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let out = run_with_timeout(
            Command::new("kill").args([&format!("-{sig}"), &pid]),
            Duration::from_secs(5),
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "kill -{sig} {pid}: {out:?}"
        );
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut st = None;
        wait_until(timeout, || {
            st = self.try_exit();
            st.is_some()
        });
        st
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits (at most `timeout`) until the log holds `needle` at least
    /// `count` times; true when it did.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().matches(needle).count() >= count)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Child::kill signals this child's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- turnd {:?} ({}) ----\nstdout: {:?}\nstderr:\n{}\n---- end of turnd log ----",
                self.args,
                self.addr,
                self.stdout_lines(),
                self.log()
            );
        }
    }
}

/// Copies `r` into `log` (capped at [`LOG_CAP`] bytes) on a thread until EOF.
fn drain_into(mut r: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut l = log.lock().unwrap();
                    if l.len() < LOG_CAP {
                        l.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }
        }
    });
}

/// Output of a command run with [`run_with_timeout`].
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status; `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    /// Everything written on stdout.
    pub stdout: String,
    /// Everything written on stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl RunOutput {
    /// True when it ran past the timeout and was killed.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
}

/// Runs `cmd` to completion, killing it (by PID) after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> RunOutput {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let out = Arc::new(Mutex::new(String::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let (o, e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let to = {
        let out = out.clone();
        thread::spawn(move || drain_to_end(o, out))
    };
    let te = {
        let err = err.clone();
        thread::spawn(move || drain_to_end(e, err))
    };
    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // The pipes close when the process (and anything it forked) is gone.
    let _ = to.join();
    let _ = te.join();
    let stdout = out.lock().unwrap().clone();
    let stderr = err.lock().unwrap().clone();
    RunOutput {
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

fn drain_to_end(mut r: impl Read, into: Arc<Mutex<String>>) {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    into.lock().unwrap().push_str(&String::from_utf8_lossy(&v));
}

/// How long a turnd subcommand, or a turnd expected to exit, may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `turnd args` (a subcommand, or a server expected to exit) in the
/// repository root (RUST_LOG removed, NO_COLOR set); panics when it is still
/// running after [`COMMAND_TIMEOUT`].
#[track_caller]
pub fn run_turnd<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> RunOutput {
    let mut cmd = Command::new(turnd_bin());
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
    assert!(
        !out.timed_out(),
        "turnd {args:?} still running after {COMMAND_TIMEOUT:?}: {out:?}"
    );
    out
}

/// [`run_turnd`], panicking unless it exits 0; its stdout.
#[track_caller]
pub fn run_turnd_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = run_turnd(args);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "turnd {args:?} failed ({:?}): stdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Polls `cond` every 10 ms until it is true or `timeout` passed; true when
/// it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP a moment ago (turnd
/// listens on both on its listening port).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 100 tries");
}

/// A fresh temporary directory (removed on drop).
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/turnd-test-<pid>-<name>-<random>`.
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "turnd-test-{}-{name}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    /// `path/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Reads `path` as text ("" when it does not exist).
pub fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The UDP listening address turnd printed for `host` (`192.0.2.1` or
/// `[2001:db8::1]`): its `turnd: listening on udp HOST:PORT` line, waited
/// for at most [`START_TIMEOUT`].
#[track_caller]
pub fn listening(n: &mut TestServer, host: &str) -> SocketAddr {
    let want = format!("turnd: listening on udp {host}:");
    assert!(
        wait_until(START_TIMEOUT, || n
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with(&want))),
        "no `{want}PORT` line: {:?}",
        n.stdout_lines()
    );
    let line = n
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with(&want))
        .unwrap();
    line["turnd: listening on udp ".len()..]
        .trim()
        .parse()
        .unwrap()
}
