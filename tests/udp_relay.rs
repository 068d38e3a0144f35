//! Relaying over UDP against the real turnd binary, with loopback peers
//! allowed: permissions, Send/Data indications, channels (RFC 8656
//! sections 9-12).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;
use turnd::stun::Method;

const WAIT: Duration = Duration::from_secs(2);

fn server(i: u16) -> TestServer {
    let (min, max) = relay_ports(Suite::UdpRelay, i);
    TestServer::start(min, max, &["--allow-loopback-peers"])
}

#[test]
fn send_indication_reaches_peer_and_data_indication_comes_back() {
    let server = server(0);
    let mut c = server.client();
    let a = c.allocate();
    let peer = Peer::bind("127.0.0.1");
    c.create_permission(&[peer.addr()]).expect_success();

    let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    c.send_indication(peer.addr(), &payload);
    let (from, got) = peer.recv(WAIT).expect("peer received nothing");
    assert_eq!(from, a.relay, "datagram must come from the relayed address");
    assert_eq!(got, payload, "exact payload");

    // An odd length exercises DATA padding.
    let reply = b"pong from the peer!".to_vec();
    peer.send_to(&reply, a.relay);
    let (p, data) = c.expect_data(WAIT);
    assert_eq!(p, peer.addr(), "XOR-PEER-ADDRESS");
    assert_eq!(data, reply, "DATA");

    // An empty datagram is relayed too.
    peer.send_to(&[], a.relay);
    let (p, data) = c.expect_data(WAIT);
    assert_eq!(p, peer.addr());
    assert!(data.is_empty());
}

fn send_first(c: &Client, use_channel: bool, peer: SocketAddr) {
    if use_channel {
        c.channel_data(0x4000, b"first");
    } else {
        c.send_indication(peer, b"first");
    }
}

#[test]
fn first_packets_after_allocation_are_relayed() {
    // A client may send at once after the CreatePermission or ChannelBind
    // success (RFC 8656 sections 9, 11): nothing may be lost on a fresh relay
    // socket. Rounds 0-9 send the data right after the last response; rounds
    // 10-19 pipeline Allocate, CreatePermission/ChannelBind and the data
    // before reading any answer (the server handles them in order; this is
    // what a busy server sees from a fast client).
    let server = server(8);
    for round in 0..20 {
        let mut c = server.client();
        let peer = Peer::bind("127.0.0.1");
        let use_channel = round % 2 == 1;
        let bind = if use_channel {
            (
                Method::CHANNEL_BIND,
                vec![Attr::channel(0x4000), Attr::peer(peer.addr())],
            )
        } else {
            (Method::CREATE_PERMISSION, vec![Attr::peer(peer.addr())])
        };
        let relay = if round < 10 {
            let a = c.allocate();
            c.request(bind.0, &bind.1).expect_success();
            send_first(&c, use_channel, peer.addr());
            a.relay
        } else {
            c.fetch_nonce();
            let (at, alloc) = c.build_request(Method::ALLOCATE, &[Attr::transport_udp()], true);
            let (bt, bind_req) = c.build_request(bind.0, &bind.1, true);
            c.start_request(&alloc);
            c.start_request(&bind_req);
            send_first(&c, use_channel, peer.addr());
            let a = Client::allocated(c.finish_request(&alloc, at));
            c.finish_request(&bind_req, bt).expect_success();
            a.relay
        };
        let got = peer.recv(Duration::from_millis(500));
        assert_eq!(
            got,
            Some((relay, b"first".to_vec())),
            "round {round} ({}): the first datagram on relay {relay} was not relayed",
            if use_channel {
                "ChannelData"
            } else {
                "Send indication"
            },
        );
        c.refresh(Some(0)).expect_success();
    }
}

#[test]
fn permission_is_per_ip_and_needed_in_both_directions() {
    let server = server(1);
    let mut c = server.client();
    let a = c.allocate();
    let permitted = Peer::bind("127.0.0.1");
    let other_port = Peer::bind("127.0.0.1");
    let stranger = Peer::bind("127.0.0.2");

    // Before any permission nothing passes either way.
    c.send_indication(permitted.addr(), b"too early");
    permitted.expect_silence(SILENCE);
    permitted.send_to(b"too early", a.relay);
    c.expect_silence(SILENCE);

    c.create_permission(&[permitted.addr()]).expect_success();

    // Peer to client: the stranger (127.0.0.2) is dropped, then a permitted
    // datagram is delivered and is the first thing the client sees.
    // Had the stranger's datagram been relayed, whichever order the two
    // arrive in, it would be the first or the second thing the client sees.
    stranger.send_to(b"from stranger", a.relay);
    permitted.send_to(b"from permitted", a.relay);
    let (p, d) = c.expect_data(WAIT);
    assert_eq!(
        (p, d.as_slice()),
        (permitted.addr(), &b"from permitted"[..])
    );
    // Permissions are per IP address: another port on 127.0.0.1 passes.
    other_port.send_to(b"same ip other port", a.relay);
    let (p, d) = c.expect_data(WAIT);
    assert_eq!(
        (p, d.as_slice()),
        (other_port.addr(), &b"same ip other port"[..])
    );
    c.expect_silence(SILENCE);

    // Client to peer: a Send to the stranger is dropped.
    c.send_indication(stranger.addr(), b"to stranger");
    stranger.expect_silence(SILENCE);

    // One request may install several permissions.
    c.create_permission(&[permitted.addr(), stranger.addr()])
        .expect_success();
    stranger.send_to(b"now allowed", a.relay);
    let (p, d) = c.expect_data(WAIT);
    assert_eq!((p, d.as_slice()), (stranger.addr(), &b"now allowed"[..]));
}

#[test]
fn channel_data_flows_both_ways_after_channel_bind() {
    let server = server(2);
    let mut c = server.client();
    let a = c.allocate();
    let peer = Peer::bind("127.0.0.1");
    // ChannelBind alone installs the permission (RFC 8656 section 11.2).
    c.channel_bind(0x4000, peer.addr()).expect_success();

    c.channel_data(0x4000, b"hello over a channel");
    let (from, got) = peer.recv(WAIT).expect("peer received nothing");
    assert_eq!(from, a.relay);
    assert_eq!(got, b"hello over a channel");

    peer.send_to(b"hi back", a.relay);
    let (ch, data) = c.expect_channel_data(WAIT);
    assert_eq!(ch, 0x4000);
    assert_eq!(data, b"hi back");

    // Send indications to a bound peer still work; the answer comes as ChannelData.
    c.send_indication(peer.addr(), b"via send");
    assert_eq!(peer.recv(WAIT).expect("peer got nothing").1, b"via send");
    peer.send_to(b"x", a.relay);
    assert_eq!(c.expect_channel_data(WAIT), (0x4000, b"x".to_vec()));

    // ChannelData on an unbound channel is dropped.
    c.channel_data(0x4001, b"unbound channel");
    peer.expect_silence(SILENCE);

    // A large datagram (over 1500 bytes) both ways.
    let big: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    c.channel_data(0x4000, &big);
    assert_eq!(peer.recv(WAIT).expect("big to peer").1, big);
    peer.send_to(&big, a.relay);
    assert_eq!(c.expect_channel_data(WAIT), (0x4000, big));
}

#[test]
fn channel_rebinding_rules() {
    let server = server(3);
    let mut c = server.client();
    c.allocate();
    let p1 = Peer::bind("127.0.0.1");
    let p2 = Peer::bind("127.0.0.1");
    c.channel_bind(0x4000, p1.addr()).expect_success();
    // The same channel to another peer: 400.
    c.channel_bind(0x4000, p2.addr()).expect_error(400);
    // The same peer on another channel: 400.
    c.channel_bind(0x4001, p1.addr()).expect_error(400);
    // Rebinding the same pair refreshes it: success.
    c.channel_bind(0x4000, p1.addr()).expect_success();
    // Another channel for another peer is fine.
    c.channel_bind(0x4001, p2.addr()).expect_success();

    // And the bindings are the ones that were accepted.
    let a = c.allocate_with(&[Attr::transport_udp()]);
    a.expect_error(437);
    c.channel_data(0x4000, b"to p1");
    c.channel_data(0x4001, b"to p2");
    assert_eq!(p1.recv(WAIT).expect("p1").1, b"to p1");
    assert_eq!(p2.recv(WAIT).expect("p2").1, b"to p2");
    p1.expect_silence(Duration::from_millis(100));
    p2.expect_silence(Duration::from_millis(100));
}

#[test]
fn channel_numbers_outside_the_range_are_400() {
    let server = server(4);
    let mut c = server.client();
    c.allocate();
    let peer = Peer::bind("127.0.0.1");
    for n in [0x0000u16, 0x3FFF, 0x8000, 0xFFFF] {
        let r = c.channel_bind(n, peer.addr());
        r.expect_error(400);
        assert!(r.integrity_ok(&c.key()), "{n:#06x}: {r:?}");
    }
    // Missing XOR-PEER-ADDRESS or CHANNEL-NUMBER: 400.
    c.request(Method::CHANNEL_BIND, &[Attr::channel(0x4000)])
        .expect_error(400);
    c.request(Method::CHANNEL_BIND, &[Attr::peer(peer.addr())])
        .expect_error(400);
    // The lowest valid number still works afterwards.
    c.channel_bind(0x4000, peer.addr()).expect_success();
}

#[test]
fn requests_without_allocation_get_437() {
    let server = server(5);
    let mut c = server.client();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    c.create_permission(&[peer]).expect_error(437);
    c.channel_bind(0x4000, peer).expect_error(437);
    c.refresh(Some(600)).expect_error(437);
}

/// Panics unless `peer` echoed exactly `count` datagrams (its counter may
/// trail the last echo the client already has by a moment).
#[track_caller]
fn assert_echoed(peer: &EchoPeer, count: u64) {
    let echoed = || peer.echoed.load(Ordering::Relaxed);
    wait_until(WAIT, || echoed() == count);
    assert_eq!(echoed(), count, "the peer saw every packet once");
}

fn packet(seq: u32, len: usize) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend((0..len - 4).map(|i| (seq as usize + i) as u8));
    v
}

/// Sends `count` packets with at most `window` unanswered; every packet must
/// come back intact exactly once.
fn windowed_echo(c: &mut Client, count: u32, window: u32, send: impl Fn(&Client, &[u8])) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = HashSet::new();
    let mut next = 0u32;
    while seen.len() < count as usize {
        assert!(
            Instant::now() < deadline,
            "timed out with {} of {count} back",
            seen.len()
        );
        while next < count && next - (seen.len() as u32) < window {
            send(c, &packet(next, 100 + (next % 64) as usize));
            next += 1;
        }
        let data = match c.recv(Duration::from_secs(2)) {
            Some(Incoming::Channel {
                channel: 0x4000,
                data,
            }) => data,
            Some(Incoming::Data { data, .. }) => data,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!(
                "lost packets: {} sent, {} back, waited 2 s",
                next,
                seen.len()
            ),
        };
        let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
        assert_eq!(data, packet(seq, data.len()), "corrupted packet {seq}");
        assert_eq!(data.len(), 100 + (seq % 64) as usize);
        assert!(seen.insert(seq), "duplicate packet {seq}");
    }
    assert_eq!(next, count);
}

#[test]
fn two_thousand_channel_packets_without_loss() {
    let server = server(6);
    let mut c = server.client();
    c.allocate();
    let peer = EchoPeer::start();
    c.channel_bind(0x4000, peer.addr).expect_success();
    windowed_echo(&mut c, 2000, 32, |c, d| c.channel_data(0x4000, d));
    assert_echoed(&peer, 2000);
}

#[test]
fn one_thousand_send_indications_without_loss() {
    let server = server(7);
    let mut c = server.client();
    c.allocate();
    let peer = EchoPeer::start();
    let addr = peer.addr;
    c.create_permission(&[addr]).expect_success();
    windowed_echo(&mut c, 1000, 32, |c, d| c.send_indication(addr, d));
    assert_echoed(&peer, 1000);
}

/// Sends `signal` (STOP, CONT) to the server process.
fn signal(server: &TestServer, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &server.pid().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{signal} failed");
}

/// A client's datagrams that the server reads in one batch leave for their
/// peers in one `sendmmsg` per relay socket; what a later request in the
/// same batch does must not overtake them. While the server is stopped
/// (SIGSTOP), a burst of ChannelData to two peers (runs of one and of many)
/// queues in its listener socket with a Refresh to 0 right behind it and one
/// more ChannelData after that; once it runs again (SIGCONT) it reads them
/// in batches. Every datagram sent before the Refresh arrives, complete and
/// in order, and the one after it does not.
#[test]
fn a_burst_of_channel_data_arrives_in_order_before_a_refresh_to_zero_behind_it() {
    let server = server(8);
    let mut c = server.client();
    let a = c.allocate();
    let (p1, p2) = (Peer::bind("127.0.0.1"), Peer::bind("127.0.0.1"));
    c.channel_bind(0x4000, p1.addr()).expect_success();
    c.channel_bind(0x4001, p2.addr()).expect_success();
    // 40 alternating (runs of one), then 60 to p1 and 50 to p2 (long runs):
    // 150 datagrams, so that the Refresh is not the first of a 32-datagram
    // batch.
    let mut expected = (Vec::new(), Vec::new());
    let order = (0..40u32)
        .map(|i| i % 2)
        .chain((0..60).map(|_| 0))
        .chain((0..50).map(|_| 1));
    signal(&server, "STOP");
    for (seq, to) in order.enumerate() {
        let p = packet(seq as u32, 60 + seq % 40);
        c.channel_data(0x4000 + to as u16, &p);
        if to == 0 {
            &mut expected.0
        } else {
            &mut expected.1
        }
        .push(p);
    }
    let (tid, refresh) = c.build_request(Method::REFRESH, &[Attr::lifetime(0)], true);
    c.start_request(&refresh);
    c.channel_data(0x4001, b"after the allocation ended");
    signal(&server, "CONT");
    c.finish_request(&refresh, tid).expect_success();
    for (peer, want) in [(&p1, &expected.0), (&p2, &expected.1)] {
        for (i, w) in want.iter().enumerate() {
            let (from, got) = peer
                .recv(WAIT)
                .unwrap_or_else(|| panic!("datagram {i} of {} missing", want.len()));
            assert_eq!(from, a.relay);
            assert_eq!(&got, w, "datagram {i}: wrong or out of order");
        }
    }
    p1.expect_silence(SILENCE);
    p2.expect_silence(SILENCE);
}
