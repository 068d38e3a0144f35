//! The secure-by-default peer policy over real sockets: without
//! `--allow-loopback-peers`, loopback, private, link-local, unspecified,
//! multicast and broadcast peers are refused with 403 (RFC 8656 section 21.3
//! recommends it; coturn's `denied-peer-ip` defaults likewise).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const DENIED: &[&str] = &[
    "127.0.0.1",
    "127.0.0.2",
    "10.0.0.1",
    "192.168.1.1",
    "172.16.0.1",
    "172.31.255.254",
    "100.64.0.1",
    "169.254.169.254",
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
];

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn create_permission_to_denied_addresses_is_403() {
    let (min, max) = relay_ports(Suite::PeerPolicy, 0);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.allocate();
    for ip in DENIED {
        let r = c.create_permission(&[addr(ip, 9)]);
        r.expect_error(403);
        assert!(
            r.integrity_ok(&c.key()),
            "{ip}: 403 carries MESSAGE-INTEGRITY"
        );
    }
    // One denied address among allowed ones spoils the whole request.
    c.create_permission(&[addr("192.0.2.1", 9), addr("10.0.0.1", 9)])
        .expect_error(403);
}

#[test]
fn channel_bind_to_denied_addresses_is_403() {
    let (min, max) = relay_ports(Suite::PeerPolicy, 1);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.allocate();
    for (i, ip) in DENIED.iter().enumerate() {
        let r = c.channel_bind(0x4000 + i as u16, addr(ip, 3478));
        r.expect_error(403);
    }
}

#[test]
fn ipv6_peers_on_an_ipv4_relay_are_refused() {
    // Mapped and native IPv6 peers on an IPv4 allocation: 443 (family
    // mismatch) or 403 (denied); never accepted.
    let (min, max) = relay_ports(Suite::PeerPolicy, 2);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.allocate();
    for ip in ["::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"] {
        let r = c.create_permission(&[addr(ip, 9)]);
        let code = r.error_code();
        assert!(
            matches!(code, Some(443) | Some(403)),
            "{ip}: expected 443 or 403, got {r:?}"
        );
    }
    // Plain IPv6 documentation address: the family alone decides (443).
    c.create_permission(&[addr("2001:db8::1", 9)])
        .expect_error(443);
}

#[test]
fn send_to_a_denied_loopback_peer_is_not_delivered() {
    let (min, max) = relay_ports(Suite::PeerPolicy, 3);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    let a = c.allocate();
    let peer = Peer::bind("127.0.0.1");
    c.create_permission(&[peer.addr()]).expect_error(403);
    c.channel_bind(0x4000, peer.addr()).expect_error(403);
    std::thread::sleep(Duration::from_millis(50));
    c.send_indication(peer.addr(), b"must not arrive");
    c.channel_data(0x4000, b"must not arrive either");
    peer.expect_silence(SILENCE);
    // Nor does the peer get through to the client.
    peer.send_to(b"hello?", a.relay);
    c.expect_silence(SILENCE);
}

#[test]
fn public_address_is_accepted() {
    let (min, max) = relay_ports(Suite::PeerPolicy, 4);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.allocate();
    // Permission and channel only: no datagram is sent to these addresses.
    c.create_permission(&[addr("192.0.2.1", 9)])
        .expect_success();
    c.create_permission(&[addr("198.51.100.7", 5000), addr("203.0.113.9", 5000)])
        .expect_success();
    c.channel_bind(0x4000, addr("192.0.2.1", 3478))
        .expect_success();
    // Just outside the private and shared ranges.
    for ip in ["172.32.0.1", "100.128.0.1", "11.0.0.1", "192.169.0.1"] {
        c.create_permission(&[addr(ip, 9)]).expect_success();
    }
}

#[test]
fn allowed_peer_ip_opens_loopback() {
    let (min, max) = relay_ports(Suite::PeerPolicy, 5);
    let server = TestServer::start(min, max, &["--allowed-peer-ip", "127.0.0.1"]);
    let mut c = server.client();
    let a = c.allocate();
    let peer = Peer::bind("127.0.0.1");
    c.create_permission(&[peer.addr()]).expect_success();
    // The rest of 127/8 stays closed.
    c.create_permission(&[addr("127.0.0.2", 9)])
        .expect_error(403);
    // Traffic flows both ways through the opened address.
    std::thread::sleep(Duration::from_millis(50));
    c.send_indication(peer.addr(), b"allowed");
    assert_eq!(
        peer.recv(Duration::from_secs(2)),
        Some((a.relay, b"allowed".to_vec()))
    );
    peer.send_to(b"back", a.relay);
    assert_eq!(
        c.expect_data(Duration::from_secs(2)),
        (peer.addr(), b"back".to_vec())
    );
}

#[test]
fn denied_peer_ip_closes_a_public_address() {
    let (min, max) = relay_ports(Suite::PeerPolicy, 6);
    let server = TestServer::start(min, max, &["--denied-peer-ip", "192.0.2.0/24"]);
    let mut c = server.client();
    c.allocate();
    c.create_permission(&[addr("192.0.2.1", 9)])
        .expect_error(403);
    c.create_permission(&[addr("198.51.100.1", 9)])
        .expect_success();
}
