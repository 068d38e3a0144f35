//! Hostile and heavy TCP/TLS clients (issue 10): a connection that trickles
//! bytes without authenticating is closed by `stream-auth-timeout`;
//! `max-connections` caps connections in all; TLS handshakes run on the
//! acceptor thread, not on the UDP worker; RFC 6062 pipes count their bytes
//! in the metrics and obey `max-bps`.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::*;
use turnd::stun::{AttributeType, Method};

const WAIT: Duration = Duration::from_secs(3);

/// turnd with the standard arguments, the relay ports of `slot` and
/// `extra`, started once every listener `extra` implies is up.
fn start(slot: u16, extra: &[&str]) -> TestServer {
    let (min, max) = relay_ports(Suite::StreamHostile, slot);
    Turnd::standard(min, max)
        .args(extra)
        .listen_implied()
        .start()
}

/// True when the server closes `s` within `timeout` while the test writes
/// one byte of a never-finished STUN request every second.
fn trickle_until_closed(s: &mut TcpStream, timeout: Duration) -> bool {
    // An Allocate header announcing 200 bytes of attributes: never complete.
    let header = [
        0x00, 0x03, 0x00, 0xc8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let deadline = Instant::now() + timeout;
    let mut i = 0;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        if s.write_all(&[header[i % header.len()]]).is_err() {
            return true;
        }
        i += 1;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_trickling_connection_is_closed_by_stream_auth_timeout() {
    let server = start(0, &["--stream-auth-timeout", "2"]);
    let l = server.listeners.clone();
    let mut holder = StreamClient::connect_tcp(l.tcp());
    holder.allocate();
    let mut slow = TcpStream::connect(l.tcp()).unwrap();
    let t0 = Instant::now();
    // One byte a second: the idle timeout (30 s) never fires.
    assert!(
        trickle_until_closed(&mut slow, Duration::from_secs(8)),
        "a connection trickling a byte a second outlived stream-auth-timeout 2 s"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_millis(4500),
        "closed after {took:?}, expected about 2 s"
    );
    // A connection with an allocation is not bound by the deadline.
    holder.refresh(Some(600)).expect_success();
    assert!(holder.closed().is_none());
    // Nor is a new one that authenticates in time.
    let mut quick = StreamClient::connect_tcp(l.tcp());
    quick.allocate();
    std::thread::sleep(Duration::from_millis(2500));
    quick.refresh(Some(600)).expect_success();
}

#[test]
fn max_connections_is_enforced_and_counted() {
    let mut args = vec!["--max-connections", "3"];
    args.extend(PROMETHEUS);
    let mut server = start(1, &args);
    let l = server.listeners.clone();
    let prom = server.prometheus();
    let mut held: Vec<StreamClient> = (0..3).map(|_| StreamClient::connect_tcp(l.tcp())).collect();
    for c in &mut held {
        c.binding();
    }
    assert!(
        StreamClient::refused_at_accept(l.tcp(), WAIT),
        "a 4th connection was served with --max-connections 3"
    );
    let m = scrape_metrics(prom);
    assert!(
        m.get(
            "turnd_connections_refused_total",
            &[("limit", "max-connections")]
        ) >= 1.0,
        "refusal not counted"
    );
    assert_eq!(
        m.get(
            "turnd_connections_refused_total",
            &[("limit", "max-connections-per-ip")]
        ),
        0.0
    );
    // UDP is not limited by it.
    server.client().binding();
    // Closing one makes room for another.
    let gone = held.pop().unwrap();
    gone.shutdown(Shutdown::Both);
    drop(gone);
    assert!(
        StreamClient::wait_for_room(l.tcp(), WAIT),
        "no room for a new connection after one closed"
    );
}

/// (utime + stime) in clock ticks of each thread of `pid`, by name.
fn thread_cpu(pid: u32) -> Vec<(u32, String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = e.unwrap().file_name().to_string_lossy().parse().unwrap();
        let dir = format!("/proc/{pid}/task/{tid}");
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(format!("{dir}/comm")),
            std::fs::read_to_string(format!("{dir}/stat")),
        ) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, utime 14.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        out.push((tid, comm.trim().to_owned(), ticks));
    }
    out
}

#[test]
fn tls_handshakes_run_off_the_udp_worker() {
    let cert = TestCert::generate("stream-hostile-tls", "turnd-test");
    let mut args: Vec<String> = cert.args();
    args.extend(
        ["--tls-listening-port", "0", "--relay-threads", "1"]
            .iter()
            .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = start(2, &args);
    let l = server.listeners.clone();
    let pid = server.pid();

    // A TLS connection that never finishes its handshake (half a
    // ClientHello) and one that never starts it.
    let mut half = TcpStream::connect(l.tls()).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    let _silent = TcpStream::connect(l.tls()).unwrap();
    // UDP Binding and Allocate on the same (single) worker still answer.
    let udp = server.udp();
    let mut c = Client::new(udp, USER, PASSWORD);
    let t0 = Instant::now();
    c.binding();
    c.allocate();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

    // Handshakes cost their CPU on the acceptor thread, not on the main
    // thread (whose tid is the pid), which serves TCP and TLS clients.
    let before = thread_cpu(pid);
    assert!(
        before.iter().any(|(_, name, _)| name == "turnd-accept"),
        "no acceptor thread: {before:?}"
    );
    let config = tls_client_config(&[&cert.der], &[], &[ALPN_STUN_TURN]);
    let t0 = Instant::now();
    let mut handshakes = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        StreamClient::connect_tls(l.tls(), config.clone()).expect("TLS handshake");
        handshakes += 1;
    }
    let after = thread_cpu(pid);
    let delta = |pick: &dyn Fn(u32, &str) -> bool| {
        let sum = |v: &[(u32, String, u64)]| -> u64 {
            v.iter()
                .filter(|(t, n, _)| pick(*t, n))
                .map(|(_, _, c)| c)
                .sum()
        };
        sum(&after) - sum(&before)
    };
    let acceptor = delta(&|_, n| n == "turnd-accept");
    let main_thread = delta(&|t, _| t == pid);
    assert!(
        acceptor > main_thread,
        "{handshakes} handshakes: acceptor thread {acceptor} ticks, main thread {main_thread} ticks"
    );
    // The stalled ones did not stop the others and UDP still answers.
    c.refresh(Some(600)).expect_success();
    drop(half);
}

/// A TCP allocation over a TCP control connection, a Connect to a fresh
/// local TCP peer and a bound data connection: (control, data connection,
/// the peer's side).
fn rfc6062_pipe(server: &TestServer) -> (StreamClient, TcpStream, TcpStream) {
    let l = server.listeners.clone();
    let peer_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer: SocketAddr = peer_listener.local_addr().unwrap();
    let mut control = StreamClient::connect_tcp(l.tcp());
    control
        .allocate_with(&[Attr::transport(6)])
        .expect_success();
    control.create_permission(&[peer]).expect_success();
    let r = control.request(Method::CONNECT, &[Attr::peer(peer)]);
    r.expect_success();
    let id = r.u32(AttributeType::CONNECTION_ID).expect("CONNECTION-ID");
    let (peer_side, _) = peer_listener.accept().unwrap();
    let mut data = StreamClient::connect_tcp(l.tcp());
    data.request(
        Method::CONNECTION_BIND,
        &[Attr::U32(AttributeType::CONNECTION_ID, id)],
    )
    .expect_success();
    (control, data.into_raw_tcp(), peer_side)
}

#[test]
fn rfc6062_pipe_bytes_show_in_metrics_and_user_totals() {
    let mut args = vec!["--allow-loopback-peers", "--prometheus-username-labels"];
    args.extend(PROMETHEUS);
    let mut server = start(3, &args);
    let prom = server.prometheus();
    let (_control, mut data, mut peer) = rfc6062_pipe(&server);
    let up = vec![7u8; 10_000];
    data.write_all(&up).unwrap();
    let mut got = vec![0u8; up.len()];
    peer.set_read_timeout(Some(WAIT)).unwrap();
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, up);
    let down = vec![9u8; 5_000];
    peer.write_all(&down).unwrap();
    let mut got = vec![0u8; down.len()];
    data.set_read_timeout(Some(WAIT)).unwrap();
    data.read_exact(&mut got).unwrap();
    assert_eq!(got, down);

    let m = scrape_metrics(prom);
    for (direction, least) in [("client_to_peer", 10_000.0), ("peer_to_client", 5_000.0)] {
        let all = m.get("turnd_relayed_bytes_total", &[("direction", direction)]);
        assert!(all >= least, "{direction}: {all} bytes relayed");
        let labels = [("user", USER), ("direction", direction)];
        let user = m.get("turnd_user_relayed_bytes_total", &labels);
        assert!(user >= least, "{direction}: {user} bytes for the user");
    }
}

#[test]
fn max_bps_throttles_an_rfc6062_pipe_without_loss() {
    // 100,000 bytes/s with a one-second burst: 400,000 bytes take about
    // three seconds; unthrottled, loopback moves them in milliseconds.
    let server = start(4, &["--allow-loopback-peers", "--max-bps", "100000"]);
    let (_control, mut data, mut peer) = rfc6062_pipe(&server);
    let total = 400_000;
    let writer = std::thread::spawn(move || {
        data.write_all(&vec![5u8; total]).unwrap();
        data
    });
    let t0 = Instant::now();
    let mut got = vec![0u8; total];
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    peer.read_exact(&mut got).unwrap();
    let took = t0.elapsed();
    assert!(got.iter().all(|b| *b == 5), "bytes changed in the pipe");
    assert!(
        took >= Duration::from_millis(1500),
        "400,000 bytes through a 100,000 B/s pipe in {took:?}"
    );
    assert!(took <= Duration::from_secs(15), "{took:?}");
    let _ = writer.join();
}
