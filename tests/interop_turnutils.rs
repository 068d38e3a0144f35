//! Interop with coturn's test clients (Debian package `coturn`):
//! `turnutils_uclient` relaying through turnd to `turnutils_peer`, an echo
//! peer on loopback. uclient exits 0 even at 100% loss, so its summary is
//! parsed. A missing binary is a failure, never a skip.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

// Relay ports of this file: 22000-22799, 200 per test (uclient makes 20
// allocations with EVEN-PORT reservations per run).
const fn range(i: u16) -> (u16, u16) {
    (22000 + 200 * i, 22000 + 200 * i + 199)
}

/// Longest one uclient run may take (it takes about 10 s).
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(40);

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{name} not found: it comes with the Debian package `coturn`; run scripts/install-deps.sh"
    );
}

/// `turnutils_peer` on 127.0.0.1, killed (by PID) on drop.
struct EchoPeer {
    child: Child,
    port: u16,
}

impl EchoPeer {
    fn start() -> EchoPeer {
        let bin = tool("turnutils_peer");
        // A port that was free a moment ago; retried if another test takes it.
        for _ in 0..5 {
            let port = free_udp_port();
            let mut child = Command::new(&bin)
                .args(["-L", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            if Self::echoes(port) {
                return EchoPeer { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("turnutils_peer never echoed on 127.0.0.1");
    }

    /// True when a datagram sent to the port comes back within ~5 s.
    fn echoes(port: u16) -> bool {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            let _ = s.send_to(b"ping", ("127.0.0.1", port));
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if &buf[..n] == b"ping" {
                    return true;
                }
            }
        }
        false
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Figures from uclient's summary.
#[derive(Debug)]
struct Summary {
    lost: u64,
    sent: u64,
    received: u64,
}

fn parse_summary(out: &str) -> Option<Summary> {
    let mut lost = None;
    let mut sent = None;
    let mut received = None;
    for line in out.lines() {
        if let Some(rest) = line.split("Total lost packets ").nth(1) {
            lost = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        // "start_mclient: tot_send_msgs=2000, tot_recv_msgs=2000" (the final tally
        // has no "msz=" in front; progress lines do, and come earlier anyway).
        if let Some(rest) = line.split("tot_send_msgs=").nth(1) {
            sent = rest.split(',').next().and_then(|n| n.trim().parse().ok());
            received = rest
                .split("tot_recv_msgs=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.trim().parse().ok());
        }
    }
    Some(Summary {
        lost: lost?,
        sent: sent?,
        received: received?,
    })
}

/// Runs uclient with `flags` through a fresh turnd and peer; asserts 0 loss.
fn uclient_run(i: u16, flags: &[&str]) {
    let uclient = tool("turnutils_uclient");
    let peer = EchoPeer::start();
    let (min, max) = range(i);
    let server = TestServer::start(min, max, &["--allow-loopback-peers"]);
    let peer_port = peer.port.to_string();
    let turn_port = server.addr.port().to_string();
    let mut cmd = Command::new(&uclient);
    cmd.args(flags).args([
        "-u",
        USER,
        "-w",
        PASSWORD,
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-p",
        &turn_port,
        "-n",
        "200",
        "-m",
        "10",
        "-l",
        "170",
        "127.0.0.1",
    ]);
    let out = run_with_timeout(&mut cmd, UCLIENT_TIMEOUT);
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let tail: String = {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    };
    assert!(
        !out.timed_out(),
        "uclient {flags:?} ran past {UCLIENT_TIMEOUT:?}; output tail:\n{tail}"
    );
    let summary = parse_summary(&text)
        .unwrap_or_else(|| panic!("uclient {flags:?}: no summary in its output:\n{tail}"));
    assert!(
        summary.sent > 0,
        "uclient {flags:?} sent nothing: {summary:?}\n{tail}"
    );
    assert_eq!(
        summary.lost, 0,
        "uclient {flags:?} lost packets: {summary:?}\n{tail}"
    );
    assert_eq!(
        summary.received, summary.sent,
        "uclient {flags:?}: {summary:?}\n{tail}"
    );
    assert!(
        !server.log().contains("panicked"),
        "turnd panicked:\n{}",
        server.log()
    );
    drop(peer);
}

#[test]
fn uclient_channels() {
    uclient_run(0, &[]);
}

#[test]
fn uclient_send_indications() {
    uclient_run(1, &["-s"]);
}

#[test]
fn uclient_client_to_client() {
    uclient_run(2, &["-y"]);
}

#[test]
fn uclient_no_rtcp_dont_fragment() {
    uclient_run(3, &["-c", "-g"]);
}

#[test]
fn summary_parser_reads_uclient_output() {
    let sample = "\
2: : start_mclient: msz=10, tot_send_msgs=65, tot_recv_msgs=65, tot_send_bytes ~ 11050, tot_recv_bytes ~ 11050
10: : start_mclient: tot_send_msgs=2000, tot_recv_msgs=1990
10: : start_mclient: tot_send_bytes ~ 340000, tot_recv_bytes ~ 340000
10: : Total lost packets 10 (0.500000%), total send dropped 0 (0.000000%)
";
    let s = parse_summary(sample).unwrap();
    assert_eq!((s.lost, s.sent, s.received), (10, 2000, 1990));
    assert!(parse_summary("nothing useful").is_none());
}
