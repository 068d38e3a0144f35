//! `turnd probe` ([`turnd::probe::run_to`]) against real servers on loopback:
//! the turnd binary, and coturn's `turnserver` over UDP, TCP and TLS. Each
//! server is a child process killed by PID when its guard drops; every wait
//! is bounded.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use turnd::probe::{run_to, ProbeArgs};
use turnd::stun::{Class, Message, MessageType, MessageWriter, Method};

const SECRET: &str = "probe-shared-secret";
/// How long coturn may take to start answering.
const COTURN_START_TIMEOUT: Duration = Duration::from_secs(15);
const COTURN: &str = "/usr/bin/turnserver";

/// A server process, killed (by its PID) and reaped on drop; its output is
/// printed when the test fails.
struct Proc {
    name: &'static str,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- {} output ----\n{}\n---- end of {} output ----",
                self.name,
                self.log.lock().unwrap(),
                self.name
            );
        }
    }
}

/// Copies `r` into `log` line by line on a thread.
fn drain(r: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut l = log.lock().unwrap();
            if l.len() < 512 * 1024 {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
}

/// Starts turnd (the standard test arguments, this file's turnd relay
/// ports) with `extra`, waiting for the listeners `extra` implies.
fn start_turnd(extra: &[&str]) -> TestServer {
    let (min, max) = relay_ports(Suite::ProbeTurnd, 0);
    Turnd::standard(min, max)
        .args(extra)
        .listen_implied()
        .start()
}

/// True when a STUN Binding to `addr` over UDP gets a success answer within 200 ms.
fn answers_binding(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 64];
    let tid: [u8; 12] = rand::random();
    let w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid,
    )
    .unwrap();
    let n = w.finish();
    if sock.send_to(&buf[..n], addr).is_err() {
        return false;
    }
    let mut rx = [0u8; 1500];
    match sock.recv_from(&mut rx) {
        Ok((n, _)) => Message::parse(&rx[..n])
            .map(|m| m.class() == Class::Success && m.transaction_id() == tid)
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A coturn `turnserver` on loopback.
struct Coturn {
    _proc: Proc,
    port: u16,
    tls_port: Option<u16>,
    _dir: TempDir,
}

/// Starts coturn with the relay ports of slot `i` of `Suite::ProbeCoturn`; with `tls` (a cert and
/// key) it also listens for TLS. Waits (bounded) until it answers a Binding
/// over UDP and accepts TCP connections.
fn start_coturn(i: u16, tls: Option<(&Path, &Path)>) -> Coturn {
    assert!(
        Path::new(COTURN).exists(),
        "coturn's turnserver is not installed ({COTURN} is missing): run scripts/install-deps.sh"
    );
    let dir = TempDir::new("coturn");
    let (min, max) = relay_ports(Suite::ProbeCoturn, i);
    let port = free_port();
    let tls_port = tls.map(|_| free_port());
    let mut args: Vec<String> = [
        "-n",
        "--no-cli",
        "--log-file=stdout",
        "-L",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--min-port",
        &min.to_string(),
        "--max-port",
        &max.to_string(),
        "-a",
        "-f",
        "-u",
        "alice:secret",
        "-r",
        REALM,
        "--allow-loopback-peers",
        "--no-dtls",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!(
        "--pidfile={}",
        dir.join("turnserver.pid").display()
    ));
    match (tls, tls_port) {
        (Some((cert, key)), Some(tls_port)) => {
            args.extend([
                "--cert".to_string(),
                cert.display().to_string(),
                "--pkey".to_string(),
                key.display().to_string(),
                "--tls-listening-port".to_string(),
                tls_port.to_string(),
            ]);
        }
        _ => args.push("--no-tls".into()),
    }
    let mut child = Command::new(COTURN)
        .args(&args)
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {COTURN}: {e} (run scripts/install-deps.sh)"));
    let log = Arc::new(Mutex::new(String::new()));
    drain(child.stdout.take().unwrap(), log.clone());
    drain(child.stderr.take().unwrap(), log.clone());
    let mut proc = Proc {
        name: "turnserver",
        child,
        log,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + COTURN_START_TIMEOUT;
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("turnserver exited early ({status}); args {args:?}");
        }
        let tcp_ok = |p: u16| {
            TcpStream::connect_timeout(&([127, 0, 0, 1], p).into(), Duration::from_millis(200))
                .is_ok()
        };
        if answers_binding(addr) && tcp_ok(port) && tls_port.map(tcp_ok).unwrap_or(true) {
            ready = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ready,
        "turnserver on {addr} did not answer within {COTURN_START_TIMEOUT:?}; args {args:?}"
    );
    Coturn {
        _proc: proc,
        port,
        tls_port,
        _dir: dir,
    }
}

/// A self-signed certificate for CN=localhost naming 127.0.0.1 only.
fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    make_cert_files_for(dir, "cert.pem", "key.pem", "localhost", "IP:127.0.0.1")
}

fn args(url: String) -> ProbeArgs {
    ProbeArgs {
        url,
        user: Some(USER.into()),
        password: Some(PASSWORD.into()),
        secret: None,
        timeout: 5,
        ca: None,
        insecure: false,
    }
}

/// Runs the probe in-process; returns its verdict and its report (also printed).
fn probe(a: &ProbeArgs) -> (bool, String) {
    let mut out = Vec::new();
    let ok = run_to(a, &mut out);
    let text = String::from_utf8(out).expect("utf-8 report");
    println!("{text}");
    (ok, text)
}

fn assert_passes(a: &ProbeArgs) -> String {
    let (ok, text) = probe(a);
    assert!(ok, "probe {} should pass:\n{text}", a.url);
    for n in 1..=6 {
        assert!(
            text.contains(&format!("{n}. ")),
            "step {n} missing:\n{text}"
        );
    }
    assert!(!text.contains("FAILED"), "{text}");
    assert!(text.contains("PASS: the relay works"), "{text}");
    assert!(text.contains("RTT"), "{text}");
    text
}

fn assert_fails_with(a: &ProbeArgs, words: &str) -> String {
    let (ok, text) = probe(a);
    assert!(!ok, "probe {} should fail:\n{text}", a.url);
    assert!(text.contains("FAILED"), "{text}");
    assert!(
        text.contains(words),
        "the report should say {words:?}:\n{text}"
    );
    text
}

// ---------------------------------------------------------------------------
// turnd
// ---------------------------------------------------------------------------

#[test]
fn probe_passes_against_turnd_over_udp() {
    let turnd = start_turnd(&["--allow-loopback-peers"]);
    let addr = turnd.addr;
    let text = assert_passes(&args(format!("turn:{addr}?transport=udp")));
    assert!(text.contains("realm \"test.example\""), "{text}");
    let relay_port = text
        .split_once("relayed address 127.0.0.1:")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse::<u16>().ok());
    assert!(
        relay_port.is_some_and(|p| (turnd.min_port..=turnd.max_port).contains(&p)),
        "relayed address not in turnd's relay ports: {text}"
    );
}

#[test]
fn probe_reports_a_wrong_password() {
    let turnd = start_turnd(&["--allow-loopback-peers"]);
    let addr = turnd.addr;
    let mut a = args(format!("turn:{addr}?transport=udp"));
    a.password = Some("not-the-password".into());
    let text = assert_fails_with(&a, "wrong user name or password");
    assert!(text.contains("2. Allocate: FAILED"), "{text}");
}

#[test]
fn probe_reports_no_answer_from_a_closed_udp_port() {
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut a = args(format!("turn:127.0.0.1:{port}?transport=udp"));
    a.timeout = 1;
    let start = Instant::now();
    let text = assert_fails_with(&a, "no answer");
    assert!(text.contains("1. STUN Binding: FAILED"), "{text}");
    assert!(text.contains("within 1 s"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn probe_reports_the_peer_policy_of_turnd_without_loopback_peers() {
    let turnd = start_turnd(&[]);
    let addr = turnd.addr;
    let text = assert_fails_with(&args(format!("turn:{addr}?transport=udp")), "peer policy");
    assert!(text.contains("403"), "{text}");
    assert!(
        text.contains("4. CreatePermission and ChannelBind: FAILED"),
        "{text}"
    );
}

#[test]
fn probe_mints_rest_credentials_from_a_secret() {
    let turnd = start_turnd(&[
        "--allow-loopback-peers",
        "--use-auth-secret",
        "--static-auth-secret",
        SECRET,
    ]);
    let addr = turnd.addr;
    let mut a = args(format!("turn:{addr}?transport=udp"));
    a.user = None;
    a.password = None;
    a.secret = Some(SECRET.into());
    assert_passes(&a);

    // The wrong secret.
    a.secret = Some("another-secret".into());
    assert_fails_with(&a, "wrong user name or password");

    // Credentials that expired an hour ago.
    let username = "1000000000:bob".to_string();
    a.secret = None;
    a.password = Some(turnd::auth::rest_password(SECRET, &username));
    a.user = Some(username);
    assert_fails_with(&a, "expired");
}

#[test]
fn probe_asks_for_credentials_when_none_are_given() {
    let turnd = start_turnd(&["--allow-loopback-peers"]);
    let addr = turnd.addr;
    let mut a = args(format!("turn:{addr}?transport=udp"));
    a.user = None;
    a.password = None;
    assert_fails_with(&a, "--user and --password");
}

#[test]
fn probe_of_a_stun_url_only_binds() {
    let turnd = start_turnd(&[]);
    let addr = turnd.addr;
    let (ok, text) = probe(&args(format!("stun:{addr}")));
    assert!(ok, "{text}");
    assert!(text.contains("1. STUN Binding: ok"), "{text}");
    assert!(text.contains("reflexive address 127.0.0.1:"), "{text}");
    assert!(!text.contains("2. "), "{text}");
}

#[test]
fn probe_passes_against_turnd_over_tcp_and_tls() {
    let certs = TempDir::new("turnd-certs");
    let (cert, key) = self_signed_cert(&certs.path);
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let turnd = start_turnd(&[
        "--allow-loopback-peers",
        "--cert",
        &cert_s,
        "--pkey",
        &key_s,
        "--tls-listening-port",
        "0",
    ]);
    let l = &turnd.listeners;
    let text = assert_passes(&args(format!("turn:{}?transport=tcp", l.tcp())));
    assert!(text.contains("TCP connected"), "{text}");

    let mut a = args(format!("turns:{}", l.tls()));
    a.ca = Some(cert);
    let text = assert_passes(&a);
    assert!(text.contains("ALPN stun.turn"), "{text}");
}

// ---------------------------------------------------------------------------
// coturn
// ---------------------------------------------------------------------------

#[test]
fn probe_passes_against_coturn_over_udp() {
    let coturn = start_coturn(0, None);
    assert_passes(&args(format!(
        "turn:127.0.0.1:{}?transport=udp",
        coturn.port
    )));
}

#[test]
fn probe_passes_against_coturn_over_tcp() {
    let coturn = start_coturn(1, None);
    let text = assert_passes(&args(format!(
        "turn:127.0.0.1:{}?transport=tcp",
        coturn.port
    )));
    assert!(text.contains("TCP connected"), "{text}");
}

#[test]
fn probe_reports_a_refused_tcp_connection() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut a = args(format!("turn:127.0.0.1:{port}?transport=tcp"));
    a.timeout = 1;
    assert_fails_with(&a, "connection refused: nothing listens on");
}

#[test]
fn probe_over_tls_against_coturn_checks_the_certificate() {
    let certs = TempDir::new("certs");
    let (cert, key) = self_signed_cert(&certs.path);
    let coturn = start_coturn(2, Some((&cert, &key)));
    let tls_port = coturn.tls_port.unwrap();

    // Trusting the server's certificate with --ca: passes.
    let mut a = args(format!("turns:127.0.0.1:{tls_port}"));
    a.ca = Some(cert.clone());
    let text = assert_passes(&a);
    assert!(text.contains("TLS 1."), "{text}");

    // Without --ca the self-signed certificate is not trusted.
    a.ca = None;
    let text = assert_fails_with(&a, "certificate");
    assert!(text.contains("1. STUN Binding: FAILED"), "{text}");
    assert!(text.contains("--ca"), "{text}");

    // --insecure skips the check.
    a.insecure = true;
    assert_passes(&a);

    // The certificate names 127.0.0.1 only, not localhost.
    let mut a = args(format!("turns:localhost:{tls_port}"));
    a.ca = Some(cert);
    assert_fails_with(&a, "TLS certificate does not match localhost");
}
