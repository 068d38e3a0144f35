//! Interop with coturn's `turnutils_uclient` over UDP, TCP (`-t`) and TLS
//! (`-t -S`) to turnd, relaying to `turnutils_peer` (a UDP echo peer on
//! loopback) with channels and Send indications (`-s`), client to client
//! (`-y`), and TCP relays (`-T`, RFC 6062).
//! uclient exits 0 even at 100% loss, so its summary is parsed (as in
//! tests/interop_turnutils.rs). A missing binary is a failure, never a skip.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The relay ports of test `i`: slot `i - 100` of the UDP tests' block from
/// 100 on, slot `i` of the stream tests' block below.
fn range(i: u16) -> (u16, u16) {
    if i >= 100 {
        relay_ports(Suite::InteropUdp, i - 100)
    } else {
        relay_ports(Suite::InteropStream, i)
    }
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
        for _ in 0..5 {
            let port = free_port();
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Over {
    Udp,
    Tcp,
    Tls,
}

/// Runs uclient with `flags` over `over` through a fresh turnd (and a UDP
/// echo peer); asserts that it sent something and lost nothing.
fn uclient_run(i: u16, over: Over, flags: &[&str]) {
    let uclient = tool("turnutils_uclient");
    let peer = EchoPeer::start();
    let (min, max) = range(i);
    let cert =
        (over == Over::Tls).then(|| TestCert::generate(&format!("uclient-{i}"), "turnd-uclient"));
    let mut turnd = Turnd::standard(min, max).arg("--allow-loopback-peers");
    if let Some(c) = &cert {
        turnd = turnd.args(c.args()).args(["--tls-listening-port", "0"]);
    }
    let server = turnd.listen_implied().start();
    let l = &server.listeners;
    let port = match over {
        Over::Udp => l.udp.expect("turnd listens on udp").port(),
        Over::Tcp => l.tcp().port(),
        Over::Tls => l.tls().port(),
    };
    let peer_port = peer.port.to_string();
    let turn_port = port.to_string();
    let mut all_flags: Vec<&str> = if over == Over::Udp {
        vec![]
    } else {
        vec!["-t"]
    };
    if over == Over::Tls {
        all_flags.push("-S");
    }
    all_flags.extend_from_slice(flags);
    let mut cmd = Command::new(&uclient);
    cmd.args(&all_flags).args([
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
    let (summary, tail, elapsed) =
        run_uclient(&mut cmd, UCLIENT_TIMEOUT, &format!("uclient {all_flags:?}"));
    assert!(
        summary.sent > 0,
        "uclient {all_flags:?} sent nothing: {summary:?}\n{tail}"
    );
    assert_eq!(
        summary.lost, 0,
        "uclient {all_flags:?} lost packets: {summary:?}\n{tail}"
    );
    assert_eq!(
        summary.received, summary.sent,
        "uclient {all_flags:?}: {summary:?}\n{tail}"
    );
    assert!(
        !server.log().contains("panicked"),
        "turnd panicked:\n{}",
        server.log()
    );
    eprintln!("uclient {all_flags:?}: {summary:?} in {elapsed:?}");
    drop(peer);
}

#[test]
fn uclient_channels() {
    uclient_run(100, Over::Udp, &[]);
}

#[test]
fn uclient_send_indications() {
    uclient_run(101, Over::Udp, &["-s"]);
}

#[test]
fn uclient_client_to_client() {
    uclient_run(102, Over::Udp, &["-y"]);
}

#[test]
fn uclient_no_rtcp_dont_fragment() {
    uclient_run(103, Over::Udp, &["-c", "-g"]);
}

#[test]
fn uclient_tcp_channels() {
    uclient_run(0, Over::Tcp, &[]);
}

#[test]
fn uclient_tcp_send_indications() {
    uclient_run(1, Over::Tcp, &["-s"]);
}

#[test]
fn uclient_tcp_client_to_client() {
    uclient_run(2, Over::Tcp, &["-y"]);
}

#[test]
fn uclient_tcp_padded_channel_data() {
    uclient_run(3, Over::Tcp, &["-D"]);
}

#[test]
fn uclient_tls_channels() {
    uclient_run(4, Over::Tls, &[]);
}

#[test]
fn uclient_tls_send_indications() {
    uclient_run(5, Over::Tls, &["-s"]);
}

/// RFC 6062 TCP relays: `-T` implies `-t -y -c`: two clients allocate with
/// REQUESTED-TRANSPORT TCP (6), one sends Connect to the other's relayed
/// address, the other gets a ConnectionAttempt indication, and both open a
/// data connection with ConnectionBind (CONNECTION-ID) carrying raw bytes.
#[test]
fn uclient_tcp_relay_rfc6062() {
    uclient_run(6, Over::Tcp, &["-T"]);
}

#[test]
fn summary_parser_reads_uclient_output() {
    let sample = "\
2: : start_mclient: msz=10, tot_send_msgs=65, tot_recv_msgs=65, tot_send_bytes ~ 11050, tot_recv_bytes ~ 11050
10: : start_mclient: tot_send_msgs=2000, tot_recv_msgs=1990
10: : start_mclient: tot_send_bytes ~ 340000, tot_recv_bytes ~ 340000
10: : Total lost packets 10 (0.500000%), total send dropped 0 (0.000000%)
";
    let s = parse_uclient_summary(sample).unwrap();
    assert_eq!((s.lost, s.sent, s.received), (10, 2000, 1990));
    assert!(parse_uclient_summary("nothing useful").is_none());
}
