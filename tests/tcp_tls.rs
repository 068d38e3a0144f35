//! STUN/TURN over TCP and TLS (RFC 8656 section 3.1, RFC 7443): Binding,
//! the full TURN exchange over a stream with padded ChannelData (section
//! 12.5), framing under byte-by-byte and pipelined writes, slow and hostile
//! connections, allocation lifetime bound to the connection, the per-address
//! connection limit, and TLS (ALPN `stun.turn`, TLS 1.2 and 1.3).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::collections::HashSet;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use support::*;
use turnd::stun::{AttributeType, Class, Method, TransactionId};

/// turnd with the standard arguments, the relay ports of `slot` and
/// `extra`, started once every listener `extra` implies is up.
fn start(slot: u16, extra: &[&str]) -> (TestServer, Listeners) {
    let (min, max) = relay_ports(Suite::TcpTls, slot);
    let server = Turnd::standard(min, max)
        .args(extra)
        .listen_implied()
        .start();
    let l = server.listeners.clone();
    (server, l)
}

const WAIT: Duration = Duration::from_secs(3);

/// A ChannelData frame as received: checks the length field, the padding to
/// a multiple of 4 and that the padding is zero; returns (channel, data).
#[track_caller]
fn padded_frame(frame: &[u8]) -> (u16, Vec<u8>) {
    assert!(frame.len() >= 4, "short ChannelData frame {frame:02x?}");
    assert_eq!(frame[0] >> 6, 1, "not ChannelData: {frame:02x?}");
    let channel = u16::from_be_bytes([frame[0], frame[1]]);
    let len = u16::from_be_bytes([frame[2], frame[3]]) as usize;
    let padded = (len + 3) & !3;
    assert_eq!(
        frame.len(),
        4 + padded,
        "ChannelData of {len} bytes over a stream must be padded to {} bytes: {frame:02x?}",
        4 + padded
    );
    assert!(
        frame[4 + len..].iter().all(|b| *b == 0),
        "padding is not zero: {frame:02x?}"
    );
    (channel, frame[4..4 + len].to_vec())
}

#[test]
fn binding_over_tcp_reports_the_tcp_source_address() {
    let (_server, l) = start(0, &[]);
    let mut c = StreamClient::connect_tcp(l.tcp());
    assert_eq!(
        l.tcp().port(),
        l.udp.unwrap().port(),
        "tcp and udp share the port"
    );
    let r = c.binding();
    assert_eq!(
        r.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
        Some(c.local_addr()),
        "{r:?}"
    );
    // The connection stays usable for more requests.
    let r2 = c.binding();
    assert_ne!(r.tid(), r2.tid());
}

#[test]
fn turn_over_tcp_relays_both_ways_with_padded_channel_data() {
    let (server, l) = start(1, &["--allow-loopback-peers"]);
    let mut c = StreamClient::connect_tcp(l.tcp());
    let a = c.allocate();
    server.assert_relay_in_range(a.relay);
    assert_eq!(
        a.mapped,
        c.local_addr(),
        "XOR-MAPPED-ADDRESS is the TCP 5-tuple's client side"
    );
    let peer = Peer::bind("127.0.0.1");

    // Send and Data indications.
    c.create_permission(&[peer.addr()]).expect_success();
    c.send_indication(peer.addr(), b"send indication");
    let (from, got) = peer
        .recv(WAIT)
        .expect("Send indication relayed to the peer");
    assert_eq!((from, got.as_slice()), (a.relay, &b"send indication"[..]));
    peer.send_to(b"data indication", a.relay);
    let (p, d) = c.expect_data(WAIT);
    assert_eq!((p, d.as_slice()), (peer.addr(), &b"data indication"[..]));

    // Channels.
    c.channel_bind(0x4001, peer.addr()).expect_success();
    c.channel_data(0x4001, b"to the peer");
    let (from, got) = peer.recv(WAIT).expect("ChannelData relayed to the peer");
    assert_eq!((from, got.as_slice()), (a.relay, &b"to the peer"[..]));

    // From the peer: ChannelData padded to 4 bytes, with zero padding, for
    // every remainder (and an empty datagram).
    for len in [0usize, 1, 2, 3, 4, 5, 6, 7, 8, 13, 1000, 1001] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        peer.send_to(&data, a.relay);
        let frame = c.recv_frame(WAIT).unwrap_or_else(|| {
            panic!(
                "no ChannelData for a {len}-byte datagram (closed: {:?})",
                c.closed()
            )
        });
        let (ch, got) = padded_frame(&frame);
        assert_eq!(ch, 0x4001);
        assert_eq!(got, data, "{len}-byte datagram");
    }
    // A Send indication still works once a channel exists.
    c.send_indication(peer.addr(), b"after bind");
    assert_eq!(peer.recv(WAIT).map(|x| x.1), Some(b"after bind".to_vec()));
    c.expect_silence(SILENCE);
    peer.expect_silence(Duration::from_millis(50));
}

#[test]
fn padded_channel_data_from_the_client_is_accepted_back_to_back() {
    let (server, l) = start(2, &["--allow-loopback-peers"]);
    let mut c = StreamClient::connect_tcp(l.tcp());
    let a = c.allocate();
    server.assert_relay_in_range(a.relay);
    let peer = Peer::bind("127.0.0.1");
    c.channel_bind(0x4002, peer.addr()).expect_success();

    // pjnath style: 5 bytes padded to 8, then more frames in the same write.
    let mut w = padded_channel_data(0x4002, b"12345");
    assert_eq!(w.len(), 12);
    w.extend(padded_channel_data(0x4002, b"abc"));
    w.extend(padded_channel_data(0x4002, b"exactly8"));
    w.extend(padded_channel_data(0x4002, b""));
    w.extend(padded_channel_data(0x4002, b"z"));
    c.send_raw(&w);
    for want in [&b"12345"[..], b"abc", b"exactly8", b"", b"z"] {
        let (from, got) = peer
            .recv(WAIT)
            .unwrap_or_else(|| panic!("peer never got {want:?}"));
        assert_eq!(from, a.relay);
        assert_eq!(got, want, "padding must not reach the peer");
    }
    peer.expect_silence(SILENCE);
    // The connection is still in sync: a request is answered.
    c.refresh(Some(600)).expect_success();
}

#[test]
fn allocate_written_one_byte_at_a_time_is_answered() {
    let (server, l) = start(3, &[]);
    let mut c = StreamClient::connect_tcp(l.tcp());
    // The unsigned half of the dance byte by byte too.
    let (tid, b) = c.build_request(Method::ALLOCATE, &[Attr::transport_udp()], false);
    c.send_trickle(&b, Duration::from_millis(2));
    let r = c
        .await_response(tid, WAIT)
        .expect("401 for a trickled Allocate");
    r.expect_error(401);
    assert!(c.learn_nonce(&r));
    let (tid, b) = c.build_request(Method::ALLOCATE, &[Attr::transport_udp()], true);
    assert!(b.len() > 60);
    c.send_trickle(&b, Duration::from_millis(2));
    let r = c
        .await_response(tid, WAIT)
        .expect("answer to a trickled signed Allocate");
    let a = Client::allocated(r);
    server.assert_relay_in_range(a.relay);
}

#[test]
fn a_hundred_bindings_in_one_write_get_a_hundred_answers() {
    // Unauthenticated-answer rate limiting is tested elsewhere; here only framing.
    let (_server, l) = start(4, &["--unauth-rate", "0"]);
    let mut c = StreamClient::connect_tcp(l.tcp());
    let mut tids: HashSet<TransactionId> = HashSet::new();
    let mut all = Vec::new();
    for _ in 0..100 {
        let (tid, b) = c.build_request(Method::BINDING, &[], false);
        tids.insert(tid);
        all.extend(b);
    }
    assert_eq!(all.len(), 2000);
    c.send_raw(&all);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered = 0;
    while answered < 100 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(f) = c.recv_frame(left) else {
            panic!(
                "only {answered} of 100 Bindings answered (closed: {:?})",
                c.closed()
            );
        };
        let r = Response::new(f);
        r.expect_success();
        assert_eq!(r.method(), Method::BINDING);
        assert!(
            tids.remove(&r.tid()),
            "unexpected or duplicate answer {r:?}"
        );
        assert_eq!(
            r.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
            Some(c.local_addr())
        );
        answered += 1;
    }
    c.expect_silence(SILENCE);
}

#[test]
fn a_stalled_half_frame_does_not_block_others_and_times_out() {
    let (_server, l) = start(5, &["--stream-idle-timeout", "2"]);
    let mut stalled = StreamClient::connect_tcp(l.tcp());
    let (_, b) = stalled.build_request(Method::BINDING, &[], false);
    stalled.send_raw(&b[..10]);
    let stalled_at = Instant::now();

    // Other connections are served meanwhile.
    let mut other = StreamClient::connect_tcp(l.tcp());
    other.binding();
    let mut third = StreamClient::connect_tcp(l.tcp());
    third.binding();
    other.binding();

    assert!(
        stalled.wait_closed(Duration::from_secs(5)),
        "a connection stalled mid-frame was not closed within 5 s with --stream-idle-timeout 2"
    );
    let after = stalled_at.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_millis(4000),
        "stalled connection closed after {after:?}, expected ~2-3 s"
    );
    // A fresh connection still works.
    StreamClient::connect_tcp(l.tcp()).binding();
}

#[test]
fn an_idle_connection_without_allocation_is_closed_but_one_with_an_allocation_is_not() {
    let (_server, l) = start(6, &["--stream-idle-timeout", "1"]);
    let mut idle = StreamClient::connect_tcp(l.tcp());
    idle.binding();
    let mut holder = StreamClient::connect_tcp(l.tcp());
    holder.allocate();
    let t0 = Instant::now();
    assert!(
        idle.wait_closed(Duration::from_secs(4)),
        "idle connection never closed"
    );
    assert!(
        t0.elapsed() <= Duration::from_millis(3000),
        "closed after {:?}",
        t0.elapsed()
    );
    // The allocation's connection outlives the idle timeout.
    std::thread::sleep(Duration::from_millis(1500));
    holder.refresh(Some(600)).expect_success();
    assert!(holder.closed().is_none());
}

#[test]
fn garbage_closes_only_that_connection() {
    let (_server, l) = start(7, &[]);
    let mut good = StreamClient::connect_tcp(l.tcp());
    good.binding();
    let mut bad = StreamClient::connect_tcp(l.tcp());
    bad.send_raw(&[0xFF; 64]);
    assert!(
        bad.wait_closed(WAIT),
        "a connection that sent 0xFF bytes was not closed"
    );
    good.binding();
    StreamClient::connect_tcp(l.tcp()).binding();

    // A STUN header with a length that is not a multiple of 4 is garbage too.
    let mut bad2 = StreamClient::connect_tcp(l.tcp());
    let (_, mut b) = bad2.build_request(Method::BINDING, &[], false);
    b[3] = 5;
    b.extend([0u8; 5]);
    bad2.send_raw(&b);
    assert!(
        bad2.wait_closed(WAIT),
        "unaligned STUN length did not close the connection"
    );
    good.binding();
}

#[test]
fn closing_the_connection_frees_the_allocation() {
    // One relay port: only one allocation at a time.
    let port = relay_ports(Suite::TcpTls, 8).0;
    let p = port.to_string();
    let server = Turnd::standard(port, port)
        .arg("--allow-loopback-peers")
        .listen_implied()
        .start();
    let l = &server.listeners;
    let mut first = StreamClient::connect_tcp(l.tcp());
    let a = first.allocate();
    assert_eq!(a.relay.port(), port);
    let mut second = StreamClient::connect_tcp(l.tcp());
    second
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(508);

    first.shutdown(Shutdown::Both);
    drop(first);
    // The relay port comes back once the server saw the close.
    let deadline = Instant::now() + WAIT;
    let b = loop {
        let mut c = StreamClient::connect_tcp(l.tcp());
        let r = c.allocate_with(&[Attr::transport_udp()]);
        if r.is_success() {
            break (c, Client::allocated(r));
        }
        r.expect_error(508);
        assert!(
            Instant::now() < deadline,
            "relay port {p} not freed within {WAIT:?} after the allocating connection closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut c, a2) = b;
    assert_eq!(a2.relay.port(), port);
    // The new allocation relays.
    let peer = Peer::bind("127.0.0.1");
    c.create_permission(&[peer.addr()]).expect_success();
    c.send_indication(peer.addr(), b"fresh");
    assert_eq!(peer.recv(WAIT), Some((a2.relay, b"fresh".to_vec())));
    drop(server);
}

#[test]
fn connections_per_address_are_limited() {
    let (_server, l) = start(9, &["--max-connections-per-ip", "3"]);
    let mut held: Vec<StreamClient> = (0..3).map(|_| StreamClient::connect_tcp(l.tcp())).collect();
    for c in &mut held {
        c.binding();
    }
    // The 4th is accepted by the kernel, then closed by turnd unanswered.
    assert!(
        StreamClient::refused_at_accept(l.tcp(), WAIT),
        "a 4th connection was served with --max-connections-per-ip 3"
    );
    for c in &mut held {
        c.binding();
    }
    // Closing one makes room for another.
    let gone = held.pop().unwrap();
    gone.shutdown(Shutdown::Both);
    drop(gone);
    assert!(
        StreamClient::wait_for_room(l.tcp(), WAIT),
        "no room for a new connection after one closed"
    );
}

// ---------------------------------------------------------------- TLS

fn start_tls(i: u16, cert: &TestCert, extra: &[&str]) -> (TestServer, Listeners) {
    let mut args: Vec<String> = cert.args();
    args.extend(["--tls-listening-port".into(), "0".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start(i, &args)
}

#[test]
fn turn_over_tls_with_alpn_relays_channel_data() {
    let cert = TestCert::generate("tcp-tls-alpn", "turnd-test");
    let (server, l) = start_tls(10, &cert, &["--allow-loopback-peers"]);
    assert_ne!(l.tls(), l.tcp(), "TLS has its own port");
    let config = tls_client_config(&[&cert.der], &[], &[ALPN_STUN_TURN]);
    let mut c = StreamClient::connect_tls(l.tls(), config).expect("TLS handshake");
    assert_eq!(c.alpn().as_deref(), Some(ALPN_STUN_TURN), "negotiated ALPN");
    assert_eq!(c.peer_cert_der(), Some(cert.der.clone()));

    let r = c.binding();
    assert_eq!(
        r.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
        Some(c.local_addr())
    );
    let a = c.allocate();
    server.assert_relay_in_range(a.relay);
    let peer = Peer::bind("127.0.0.1");
    c.channel_bind(0x4003, peer.addr()).expect_success();
    for len in [5usize, 8, 300] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        c.channel_data(0x4003, &data);
        assert_eq!(
            peer.recv(WAIT),
            Some((a.relay, data.clone())),
            "{len} bytes to the peer"
        );
        peer.send_to(&data, a.relay);
        let frame = c.recv_frame(WAIT).expect("ChannelData over TLS");
        assert_eq!(
            padded_frame(&frame),
            (0x4003, data),
            "{len} bytes from the peer"
        );
    }
    // Send/Data indications over TLS.
    c.send_indication(peer.addr(), b"tls send");
    assert_eq!(peer.recv(WAIT), Some((a.relay, b"tls send".to_vec())));
}

#[test]
fn tls_12_and_13_both_handshake_with_and_without_alpn() {
    let cert = TestCert::generate("tcp-tls-versions", "turnd-test");
    let (_server, l) = start_tls(11, &cert, &[]);
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        for alpn in [&[ALPN_STUN_TURN][..], &[]] {
            let config = tls_client_config(&[&cert.der], &[version], alpn);
            let mut c = StreamClient::connect_tls(l.tls(), config)
                .unwrap_or_else(|e| panic!("{want:?} (ALPN {alpn:?}): {e}"));
            assert_eq!(c.tls_version(), Some(want));
            let expect_alpn = alpn.first().map(|a| a.to_vec());
            assert_eq!(c.alpn(), expect_alpn, "{want:?}");
            c.binding();
            c.allocate();
        }
    }
}

#[test]
fn a_stalled_tls_handshake_is_dropped_and_blocks_nobody() {
    let cert = TestCert::generate("tcp-tls-handshake", "turnd-test");
    let (_server, l) = start_tls(12, &cert, &["--tls-handshake-timeout", "1"]);
    // A TCP connection to the TLS port that never says hello.
    let mut silent = StreamClient::connect_tcp(l.tls());
    let t0 = Instant::now();
    let config = tls_client_config(&[&cert.der], &[], &[ALPN_STUN_TURN]);
    StreamClient::connect_tls(l.tls(), config.clone())
        .expect("handshake while another is stalled")
        .binding();
    assert!(
        silent.wait_closed(Duration::from_secs(4)),
        "stalled handshake never dropped"
    );
    assert!(
        t0.elapsed() <= Duration::from_millis(3000),
        "dropped after {:?}",
        t0.elapsed()
    );
    // Plain STUN to the TLS port is no handshake either: it is closed.
    let mut plain = StreamClient::connect_tcp(l.tls());
    let (tid, b) = plain.build_request(Method::BINDING, &[], false);
    let _ = plain.try_send_raw(&b);
    assert!(plain
        .await_response(tid, Duration::from_millis(500))
        .is_none());
    assert!(
        plain.wait_closed(WAIT),
        "plain TCP on the TLS port was not closed"
    );
    StreamClient::connect_tls(l.tls(), config)
        .expect("TLS still works")
        .binding();
}

#[test]
fn tls_client_rejects_an_unpinned_certificate() {
    // Sanity check of the test client itself: it trusts only the pinned cert.
    let cert = TestCert::generate("tcp-tls-pin", "turnd-test");
    let other = TestCert::generate("tcp-tls-pin-other", "someone-else");
    let (_server, l) = start_tls(13, &cert, &[]);
    let config = tls_client_config(&[&other.der], &[], &[ALPN_STUN_TURN]);
    let e = StreamClient::connect_tls(l.tls(), config)
        .err()
        .expect("handshake must fail with the wrong pin");
    assert!(
        e.contains("certificate") || e.contains("Certificate"),
        "{e}"
    );
}

/// TURN over TCP on an IPv6 listener (::1) with an IPv6 relay: Allocate with
/// REQUESTED-ADDRESS-FAMILY IPv6, a channel to an IPv6 peer, data both ways.
#[test]
fn turn_over_tcp_on_ipv6_loopback() {
    let (min, max) = relay_ports(Suite::TcpTls, 14);
    let server = Turnd::standard(min, max)
        .set("--listening-ip", "::1")
        .set("--relay-ip", "::1")
        .arg("--allow-loopback-peers")
        .listen(Listen {
            udp: false,
            tcp: true,
            tls: 0,
        })
        .start();
    let tcp = server.listeners.tcp();
    assert!(tcp.is_ipv6());
    let mut c = StreamClient::connect_tcp(tcp);
    let r = c.allocate_with(&[
        Attr::transport_udp(),
        Attr::U32(AttributeType::REQUESTED_ADDRESS_FAMILY, 0x02 << 24),
    ]);
    let relay = r
        .xor_addr(AttributeType::XOR_RELAYED_ADDRESS)
        .expect("an IPv6 relay address");
    assert!(
        relay.is_ipv6() && (min..=max).contains(&relay.port()),
        "{relay}"
    );
    let peer = Peer::bind("::1");
    c.channel_bind(0x4002, peer.addr()).expect_success();
    c.channel_data(0x4002, b"over ipv6");
    let (from, got) = peer
        .recv(WAIT)
        .expect("ChannelData relayed to the IPv6 peer");
    assert_eq!((from, got.as_slice()), (relay, &b"over ipv6"[..]));
    peer.send_to(b"back", relay);
    let frame = c.recv_frame(WAIT).expect("ChannelData from the IPv6 peer");
    let (ch, data) = padded_frame(&frame);
    assert_eq!((ch, data.as_slice()), (0x4002, &b"back"[..]));
    drop(server);
}

/// `denied-client-ip` over TCP: the refused client's connection is closed
/// at once, unanswered (not left open until the idle timeout), and counted;
/// an allowed client is served.
#[test]
fn a_refused_client_is_closed_at_accept() {
    let (mut server, l) = start(
        10,
        &[
            "--denied-client-ip",
            "127.0.0.2",
            "--prometheus",
            "--prometheus-port",
            "0",
        ],
    );
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&l.tcp().into()).unwrap();
    let mut refused = StreamClient::over_tcp(sock.into(), l.tcp());
    let (_, req) = binding_request();
    refused.try_send_raw(&req);
    assert!(
        refused.wait_closed(WAIT),
        "the denied client's connection must be closed"
    );
    let mut ok = StreamClient::connect_tcp(l.tcp());
    let (tid, req) = binding_request();
    ok.send_raw(&req);
    ok.await_response(tid, WAIT)
        .expect("an allowed client is answered")
        .expect_success();
    let m = scrape_metrics(server.prometheus());
    assert_eq!(
        m.get(
            "turnd_connections_refused_total",
            &[("limit", "denied-client-ip")]
        ),
        1.0
    );
}

/// A Binding request and its transaction ID.
fn binding_request() -> (TransactionId, Vec<u8>) {
    let tid = new_tid();
    (
        tid,
        build(Method::BINDING, Class::Request, tid, &[], None, false),
    )
}
