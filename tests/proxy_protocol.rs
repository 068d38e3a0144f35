//! turnd behind TCP load balancers: the PROXY protocol (v1 and v2) on the
//! TCP and TLS listeners (`proxy-protocol`, `proxy-protocol-trusted`), with
//! crafted headers over real sockets and with a real HAProxy (Debian's
//! `haproxy`) sending `send-proxy` and `send-proxy-v2`; and TLS served on
//! the plain TCP port (detected from the first byte), ALPN `stun.turn`.
//!
//! Runs inside `unshare --net` with loopback up: the clients behind HAProxy
//! bind 127.0.0.2, so the address turnd reports can only be right if it
//! came from the PROXY header (HAProxy itself connects from 127.0.0.1).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use turnd::stun::{AttributeType, Class, Method, TransactionId};

const WAIT: Duration = Duration::from_secs(3);

/// turnd with the standard arguments, the relay ports of `slot`, PROXY
/// protocol on and trusting `trusted`, and `extra`.
fn start_proxied(slot: u16, trusted: &str, extra: &[&str]) -> (TestServer, Listeners) {
    let (min, max) = relay_ports(Suite::ProxyProtocol, slot);
    let server = Turnd::standard(min, max)
        .args(["--proxy-protocol", "--proxy-protocol-trusted", trusted])
        .args(extra)
        .listen_implied()
        .start();
    let l = server.listeners.clone();
    (server, l)
}

/// A TCP connection to `server` from `ip` (port chosen by the kernel).
#[track_caller]
fn connect_from(ip: &str, server: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let local: SocketAddr = format!("{ip}:0").parse().unwrap();
    let s = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .unwrap();
    s.bind(&local.into())
        .unwrap_or_else(|e| panic!("bind {local}: {e}"));
    s.connect_timeout(&server.into(), WAIT)
        .unwrap_or_else(|e| panic!("connect {local} -> {server}: {e}"));
    s.into()
}

/// A v1 header for a TCP connection from `src` to `dst`.
fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header (command 0x21, TCP) from `src` to `dst`, both of one
/// family.
fn v2_proxy(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21);
    let mut body = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("one family"),
    }
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// A v2 LOCAL header (command 0x20, AF_UNSPEC): a load balancer's own
/// health check.
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

/// A TCP client from `ip` to `server` that first sends `bytes` (a PROXY
/// header). A failed write is ignored: turnd may have closed the connection
/// already, which the test then sees.
#[track_caller]
fn sending_from(ip: &str, server: SocketAddr, bytes: &[u8]) -> StreamClient {
    let mut sock = connect_from(ip, server);
    let _ = sock.write_all(bytes);
    StreamClient::over_tcp(sock, server)
}

/// [`sending_from`] 127.0.0.1.
#[track_caller]
fn with_header(server: SocketAddr, header: &[u8]) -> StreamClient {
    sending_from("127.0.0.1", server, header)
}

/// True when a Binding sent on `c` gets no answer and the server closes the
/// connection within `timeout`.
#[track_caller]
fn closed_unanswered(c: &mut StreamClient, timeout: Duration) -> bool {
    let (_, req) = binding_request();
    // The server may have closed already: a failed write is fine.
    let _ = c.try_send_raw(&req);
    c.wait_closed(timeout)
}

#[track_caller]
fn mapped(r: &Response) -> SocketAddr {
    r.xor_addr(AttributeType::XOR_MAPPED_ADDRESS)
        .unwrap_or_else(|| panic!("no XOR-MAPPED-ADDRESS: {r:?}"))
}

/// Allocates on `c`, binds a channel to a fresh peer on 127.0.0.1 and
/// relays `what` both ways.
#[track_caller]
fn relays_both_ways(c: &mut StreamClient, server: &TestServer, what: &[u8]) {
    let a = c.allocate();
    server.assert_relay_in_range(a.relay);
    let peer = Peer::bind("127.0.0.1");
    c.channel_bind(0x4000, peer.addr()).expect_success();
    c.channel_data(0x4000, what);
    assert_eq!(
        peer.recv(WAIT),
        Some((a.relay, what.to_vec())),
        "to the peer"
    );
    peer.send_to(what, a.relay);
    let frame = c.recv_frame(WAIT).expect("ChannelData back from the peer");
    assert_eq!(frame.get(4..4 + what.len()), Some(what), "from the peer");
}

// ------------------------------------------------------- crafted headers

#[test]
fn v1_and_v2_headers_give_the_client_address() {
    let (_server, l) = start_proxied(0, "127.0.0.1", &[]);
    let dst = l.tcp();
    for (header, src) in [
        (
            v1("198.51.100.7:40001".parse().unwrap(), dst),
            "198.51.100.7:40001",
        ),
        (
            v2_proxy("203.0.113.9:40002".parse().unwrap(), dst),
            "203.0.113.9:40002",
        ),
        (
            v1(
                "[2001:db8::7]:40003".parse().unwrap(),
                "[2001:db8::1]:3478".parse().unwrap(),
            ),
            "[2001:db8::7]:40003",
        ),
        (
            v2_proxy(
                "[2001:db8::9]:40004".parse().unwrap(),
                "[2001:db8::1]:3478".parse().unwrap(),
            ),
            "[2001:db8::9]:40004",
        ),
    ] {
        let mut c = with_header(l.tcp(), &header);
        let want: SocketAddr = src.parse().unwrap();
        assert_eq!(mapped(&c.binding()), want, "{header:02x?}");
        // The connection stays usable.
        assert_eq!(mapped(&c.binding()), want);
    }
}

/// A v1 header from `src` and a v2 header from `src` with the next port, to
/// `dst`, each with the client address turnd must then report.
fn both_versions(src: &str, dst: SocketAddr) -> [(Vec<u8>, SocketAddr); 2] {
    let v1_src: SocketAddr = src.parse().unwrap();
    let v2_src = SocketAddr::new(v1_src.ip(), v1_src.port() + 1);
    [(v1(v1_src, dst), v1_src), (v2_proxy(v2_src, dst), v2_src)]
}

/// An unsigned Binding request and its transaction ID.
fn binding_request() -> (TransactionId, Vec<u8>) {
    let tid = new_tid();
    (
        tid,
        build(Method::BINDING, Class::Request, tid, &[], None, false),
    )
}

#[test]
fn header_and_first_request_in_one_segment() {
    // Nothing after the header is lost or taken as part of it.
    let (_server, l) = start_proxied(1, "127.0.0.1", &[]);
    for (header, src) in both_versions("198.51.100.8:5000", l.tcp()) {
        let (tid, request) = binding_request();
        let mut c = with_header(l.tcp(), &[header, request].concat());
        let r = c.await_response(tid, WAIT).expect("Binding answered");
        assert_eq!(mapped(&r), src);
    }
}

#[test]
fn header_written_one_byte_at_a_time() {
    let (_server, l) = start_proxied(2, "127.0.0.1", &[]);
    for (header, src) in both_versions("198.51.100.9:6000", l.tcp()) {
        let mut c = with_header(l.tcp(), &[]);
        c.send_trickle(&header, Duration::from_millis(5));
        assert_eq!(mapped(&c.binding()), src);
    }
}

#[test]
fn v2_local_keeps_the_connection_address() {
    let (_server, l) = start_proxied(3, "127.0.0.1", &[]);
    let mut c = with_header(l.tcp(), &v2_local());
    assert_eq!(mapped(&c.binding()), c.local_addr());
    let mut c = with_header(l.tcp(), b"PROXY UNKNOWN\r\n");
    assert_eq!(mapped(&c.binding()), c.local_addr());
}

#[test]
fn untrusted_source_is_closed_unanswered() {
    // Only 127.0.0.2 may send headers; this connection comes from 127.0.0.1.
    let (_server, l) = start_proxied(4, "127.0.0.2", &[]);
    let mut c = with_header(l.tcp(), &v1("198.51.100.7:40001".parse().unwrap(), l.tcp()));
    assert!(closed_unanswered(&mut c, WAIT), "untrusted source served");
    // The trusted one is served.
    let header = v2_proxy("198.51.100.7:40001".parse().unwrap(), l.tcp());
    let mut c = sending_from("127.0.0.2", l.tcp(), &header);
    assert_eq!(mapped(&c.binding()), "198.51.100.7:40001".parse().unwrap());
}

#[test]
fn missing_or_malformed_headers_are_closed_unanswered() {
    let (_server, l) = start_proxied(5, "127.0.0.1", &[]);
    let dst = l.tcp();
    let mut too_long = b"PROXY TCP4 ".to_vec();
    too_long.extend_from_slice(&[b'1'; 120]);
    let mut bad_v2 = v2_proxy("198.51.100.7:1".parse().unwrap(), dst);
    bad_v2[12] = 0x23; // command 3
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no header, a STUN request", Vec::new()),
        ("garbage", b"HELLO WORLD\r\n".to_vec()),
        (
            "bad v1 address",
            b"PROXY TCP4 1.2.3.999 1.2.3.4 1 2\r\n".to_vec(),
        ),
        ("v1 without CRLF in 107 bytes", too_long),
        ("bad v2 command", bad_v2),
        ("TLS ClientHello start", vec![0x16, 0x03, 0x01, 0x00, 0x05]),
    ];
    for (what, header) in cases {
        let mut c = with_header(dst, &header);
        assert!(closed_unanswered(&mut c, WAIT), "{what}: served");
    }
    // And the server still serves proxied clients.
    let mut c = with_header(dst, &v1("198.51.100.7:9".parse().unwrap(), dst));
    assert_eq!(mapped(&c.binding()), "198.51.100.7:9".parse().unwrap());
}

#[test]
fn a_header_that_does_not_arrive_in_time_is_closed() {
    let (_server, l) = start_proxied(6, "127.0.0.1", &["--tls-handshake-timeout", "1"]);
    let started = Instant::now();
    // Silent, and half a header then silence.
    let mut silent = with_header(l.tcp(), &[]);
    let mut half = with_header(l.tcp(), b"PROXY TCP4 198.51.1");
    assert!(silent.wait_closed(WAIT), "silent connection kept");
    assert!(half.wait_closed(WAIT), "half a header kept");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

#[test]
fn limits_and_client_lists_apply_to_the_header_address() {
    let (_server, l) = start_proxied(
        7,
        "127.0.0.1",
        &[
            "--max-connections-per-ip",
            "1",
            "--denied-client-ip",
            "198.51.100.66",
        ],
    );
    let dst = l.tcp();
    // Many connections from 127.0.0.1 (the balancer): not one address.
    let mut a = with_header(dst, &v1("198.51.100.1:1000".parse().unwrap(), dst));
    let mut b = with_header(dst, &v1("198.51.100.2:1000".parse().unwrap(), dst));
    a.binding();
    b.binding();
    // A second connection of 198.51.100.1 is over its limit.
    let mut a2 = with_header(dst, &v2_proxy("198.51.100.1:1001".parse().unwrap(), dst));
    assert!(
        closed_unanswered(&mut a2, WAIT),
        "per-address limit ignored"
    );
    // A denied client gets no answer.
    let mut denied = with_header(dst, &v1("198.51.100.66:1000".parse().unwrap(), dst));
    let (tid, req) = binding_request();
    denied.send_raw(&req);
    assert!(
        denied.await_response(tid, SILENCE).is_none(),
        "denied-client-ip answered through the PROXY header"
    );
    a.binding();
}

#[test]
fn connections_awaiting_their_header_count_toward_max_connections() {
    let (_server, l) = start_proxied(3, "127.0.0.1", &["--max-connections", "2"]);
    let dst = l.tcp();
    let silent: Vec<StreamClient> = (0..2).map(|_| with_header(dst, &[])).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Refused at accept, long before the silent ones' header timeout.
    let mut third = with_header(dst, &v1("198.51.100.3:3000".parse().unwrap(), dst));
    assert!(
        closed_unanswered(&mut third, Duration::from_secs(2)),
        "a third connection admitted"
    );
    drop(silent);
    let mut port = 3001;
    let served = wait_until(WAIT, || {
        port += 1;
        let src = SocketAddr::from(([198, 51, 100, 3], port));
        let mut c = with_header(dst, &v1(src, dst));
        let (tid, req) = binding_request();
        c.try_send_raw(&req)
            && c.await_response(tid, Duration::from_millis(300))
                .is_some_and(|r| mapped(&r) == src)
    });
    assert!(served, "no room again after the silent connections closed");
}

#[test]
fn a_second_connection_claiming_an_open_5_tuple_is_closed() {
    let (_server, l) = start_proxied(8, "127.0.0.1", &["--allow-loopback-peers"]);
    let dst = l.tcp();
    let src: SocketAddr = "198.51.100.5:7000".parse().unwrap();
    let mut first = with_header(dst, &v1(src, dst));
    let a = first.allocate();
    let mut second = with_header(dst, &v2_proxy(src, dst));
    assert!(
        closed_unanswered(&mut second, WAIT),
        "duplicate 5-tuple served"
    );
    // The first connection and its allocation are untouched.
    let peer = Peer::bind("127.0.0.1");
    first.channel_bind(0x4001, peer.addr()).expect_success();
    first.channel_data(0x4001, b"still here");
    assert_eq!(peer.recv(WAIT), Some((a.relay, b"still here".to_vec())));
}

#[test]
fn proxy_protocol_without_trusted_sources_fails_at_start() {
    let out = run_turnd(&[
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        "0",
        "--proxy-protocol",
    ]);
    assert_ne!(out.status.and_then(|s| s.code()), Some(0), "{out:?}");
    assert!(out.status.is_some(), "still running: {out:?}");
    assert!(
        out.stderr.contains("proxy-protocol-trusted") && out.stderr.contains("`proxy-protocol`"),
        "the error names the options: {out:?}"
    );
}

#[test]
fn config_files_toml_and_coturn_form() {
    let dir = TempDir::new("proxy-config");
    let toml = dir.join("turnd.toml");
    std::fs::write(&toml, "proxy-protocol = true\n").unwrap();
    let out = run_turnd(&["check-config".as_ref(), toml.as_os_str()]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("turnd.toml") && out.stderr.contains("`proxy-protocol`"),
        "the error names the file and the option: {out:?}"
    );
    std::fs::write(
        &toml,
        "proxy-protocol = true\nproxy-protocol-trusted = [\"10.0.0.0/8\", \"2001:db8::1\"]\n",
    )
    .unwrap();
    let out = run_turnd(&["check-config".as_ref(), toml.as_os_str()]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out:?}");
    // coturn's form (turnd's own options may sit in a coturn .conf).
    let conf = dir.join("turnserver.conf");
    std::fs::write(
        &conf,
        "proxy-protocol\nproxy-protocol-trusted=10.0.0.0/8\nproxy-protocol-trusted=192.0.2.1-192.0.2.9\n",
    )
    .unwrap();
    let out = run_turnd(&["check-config".as_ref(), conf.as_os_str()]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out:?}");
    std::fs::write(&conf, "proxy-protocol-trusted=not-an-address\n").unwrap();
    let out = run_turnd(&["check-config".as_ref(), conf.as_os_str()]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(out.stderr.contains("`proxy-protocol-trusted`"), "{out:?}");
}

// ------------------------------------------------- TLS on the TCP port

#[test]
fn tls_is_served_on_the_plain_tcp_port() {
    let cert = TestCert::generate("proxy-tls-on-tcp", "turnd-test");
    let (min, max) = relay_ports(Suite::ProxyProtocol, 9);
    let mut args = cert.args();
    args.extend(["--tls-listening-port".into(), "0".into()]);
    let server = Turnd::standard(min, max)
        .args(&args)
        .arg("--allow-loopback-peers")
        .listen_implied()
        .start();
    let l = server.listeners.clone();
    for alpn in [&[ALPN_STUN_TURN][..], &[]] {
        let config = tls_client_config(&[&cert.der], &[], alpn);
        let mut c = StreamClient::connect_tls(l.tcp(), config)
            .unwrap_or_else(|e| panic!("TLS on the TCP port (ALPN {alpn:?}): {e}"));
        assert_eq!(c.alpn(), alpn.first().map(|a| a.to_vec()));
        assert_eq!(mapped(&c.binding()), c.local_addr());
        relays_both_ways(&mut c, &server, b"tls on the tcp port");
    }
    // Plain TCP on the same port still works.
    let mut plain = StreamClient::connect_tcp(l.tcp());
    assert_eq!(mapped(&plain.binding()), plain.local_addr());
    // A client offering only other ALPN protocols is refused (RFC 7301
    // section 3.2, rustls): turnd speaks `stun.turn` or none.
    let config = tls_client_config(&[&cert.der], &[], &[b"h2"]);
    assert!(StreamClient::connect_tls(l.tcp(), config).is_err());
}

#[test]
fn proxy_header_then_tls_on_the_tcp_port() {
    let cert = TestCert::generate("proxy-tls-header", "turnd-test");
    let mut args = cert.args();
    args.extend(["--tls-listening-port".into(), "0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_server, l) = start_proxied(13, "127.0.0.1", &args);
    let config = tls_client_config(&[&cert.der], &[], &[ALPN_STUN_TURN]);
    for (port, header) in [
        (l.tcp(), v1("198.51.100.77:7777".parse().unwrap(), l.tcp())),
        (
            l.tls(),
            v2_proxy("198.51.100.77:7777".parse().unwrap(), l.tls()),
        ),
    ] {
        let mut sock = connect_from("127.0.0.1", port);
        sock.write_all(&header).unwrap();
        let mut c = StreamClient::over_tls(sock, port, config.clone())
            .unwrap_or_else(|e| panic!("TLS after a PROXY header to {port}: {e}"));
        assert_eq!(mapped(&c.binding()), "198.51.100.77:7777".parse().unwrap());
    }
    // A TLS client that sends no header is closed, even on the TLS port.
    assert!(StreamClient::connect_tls(l.tls(), config).is_err());
}

// ----------------------------------------------------------------- HAProxy

/// The `haproxy` binary: on PATH or in /usr/sbin. Its absence fails the
/// test (scripts/install-deps.sh installs Debian's package).
fn haproxy_bin() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!("haproxy not found on PATH or in /usr/sbin: run scripts/install-deps.sh (Debian package haproxy)");
}

/// A running HAProxy in TCP mode, forwarding its frontend to one turnd
/// listener with a PROXY header; killed (by PID) on drop.
struct HaProxy {
    child: Child,
    /// The frontend, on 127.0.0.1.
    addr: SocketAddr,
    dir: TempDir,
}

impl HaProxy {
    /// Starts HAProxy with a frontend on a free port of 127.0.0.1 and a
    /// backend `backend` given `server_options` (`send-proxy`,
    /// `send-proxy-v2`); returns once the frontend accepts connections.
    fn start(name: &str, backend: SocketAddr, server_options: &str) -> HaProxy {
        let dir = TempDir::new(name);
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = format!(
            "global\n    maxconn 256\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             frontend turn\n    bind {addr}\n    default_backend turnd\n\
             backend turnd\n    server turnd {backend} {server_options}\n"
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new(haproxy_bin())
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start haproxy: {e}"));
        let mut h = HaProxy { child, addr, dir };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up {
            let exited = h.child.try_wait().ok().flatten();
            panic!(
                "haproxy not listening on {addr} (exited: {exited:?}); its log:\n{}",
                h.log()
            );
        }
        h
    }

    fn log(&self) -> String {
        read_or_empty(&self.dir.join("haproxy.log"))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("haproxy log:\n{}", self.log());
        }
    }
}

/// Through HAProxy with `server_options`, from 127.0.0.2: the Binding
/// answer names the client, not HAProxy, and an allocation relays both ways.
fn turn_through_haproxy(slot: u16, name: &str, server_options: &str) {
    let (server, l) = start_proxied(slot, "127.0.0.1", &["--allow-loopback-peers"]);
    let haproxy = HaProxy::start(name, l.tcp(), server_options);
    let mut c = sending_from("127.0.0.2", haproxy.addr, &[]);
    let me = c.local_addr();
    assert_eq!(me.ip().to_string(), "127.0.0.2");
    assert_eq!(mapped(&c.binding()), me, "the client, not haproxy");
    relays_both_ways(&mut c, &server, b"via haproxy");
    // A direct connection from 127.0.0.2 (not trusted) is closed, header or not.
    let mut direct = sending_from("127.0.0.2", l.tcp(), &v1(me, l.tcp()));
    assert!(
        closed_unanswered(&mut direct, WAIT),
        "untrusted direct client served"
    );
}

#[test]
fn haproxy_send_proxy_v1() {
    turn_through_haproxy(10, "haproxy-v1", "send-proxy");
}

#[test]
fn haproxy_send_proxy_v2() {
    turn_through_haproxy(11, "haproxy-v2", "send-proxy-v2");
}

#[test]
fn haproxy_tls_passthrough_send_proxy_v2() {
    let cert = TestCert::generate("proxy-haproxy-tls", "turnd-test");
    let mut args = cert.args();
    args.extend([
        "--tls-listening-port".into(),
        "0".into(),
        "--allow-loopback-peers".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, l) = start_proxied(12, "127.0.0.1", &args);
    let haproxy = HaProxy::start("haproxy-tls", l.tls(), "send-proxy-v2");
    let config = tls_client_config(&[&cert.der], &[], &[ALPN_STUN_TURN]);
    let mut c = StreamClient::over_tls(
        connect_from("127.0.0.2", haproxy.addr),
        haproxy.addr,
        config,
    )
    .expect("TLS handshake through haproxy");
    assert_eq!(c.alpn().as_deref(), Some(ALPN_STUN_TURN));
    let me = c.local_addr();
    assert_eq!(mapped(&c.binding()), me, "the client, not haproxy");
    relays_both_ways(&mut c, &server, b"tls via haproxy");
}
