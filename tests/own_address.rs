//! Issue 10: an authenticated client must not reach this host's own
//! services through the relay. turnd relays on documentation addresses of
//! a veth pair inside the test's network namespace, next to a TCP and a UDP
//! service bound on 0.0.0.0: every address of the host is refused as a peer
//! (403, or dropped), but for another allocation's relayed address.
//!
//! Needs root and `ip` inside a private network namespace (the suite runs
//! in `unshare --net`); fails, not skips, without them.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use support::*;
use turnd::stun::{AttributeType, Method};

/// The relay address (on veth `A`).
const RELAY_IP: &str = "192.0.2.201";
/// The listening address (on veth `A` too).
const LISTEN_IP: &str = "192.0.2.202";
/// Another interface address of the host, neither listening nor relaying.
const OTHER_IP: &str = "192.0.2.203";
/// The IPv6 relay address (on veth `A`).
const RELAY_IP6: &str = "2001:db8:ff::1";
/// Another IPv6 address of the host.
const OTHER_IP6: &str = "2001:db8:ff::3";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// The veth pair `ownaddr0`/`ownaddr1` with the test's addresses on
/// `ownaddr0`, while a test of this file runs; refuses to touch a namespace
/// that is not private.
static VETH: netns::SharedSetup = netns::SharedSetup::new(veth_up, veth_down);

fn veth_up() {
    netns::assert_private_namespace("ownaddr");
    netns::ip("link add ownaddr0 type veth peer name ownaddr1");
    for a in [RELAY_IP, LISTEN_IP, OTHER_IP] {
        netns::ip(&format!("addr add {a}/24 dev ownaddr0"));
    }
    for a in [RELAY_IP6, OTHER_IP6] {
        netns::ip(&format!("-6 addr add {a}/64 dev ownaddr0 nodad"));
    }
    netns::ip("link set ownaddr0 up");
    netns::ip("link set ownaddr1 up");
}

fn veth_down() {
    netns::ip_quiet("link del ownaddr0");
}

/// turnd listening on [`LISTEN_IP`] (UDP and TCP), relaying on [`RELAY_IP`].
fn server(slot: u16, extra: &[&str]) -> TestServer {
    let (min, max) = relay_ports(Suite::OwnAddress, slot);
    Turnd::standard(min, max)
        .set("--listening-ip", LISTEN_IP)
        .set("--relay-ip", RELAY_IP)
        .args(extra)
        .listen(Listen {
            udp: true,
            tcp: true,
            tls: 0,
        })
        .start()
}

/// A TCP service on 0.0.0.0 that answers each connection with "ssh".
fn tcp_service() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(&mut s, b"ssh");
        }
    });
    port
}

fn tcp_client(server: &TestServer) -> StreamClient {
    let mut c = StreamClient::connect_tcp(server.listeners.tcp());
    c.allocate_with(&[Attr::transport(6)]).expect_success();
    c
}

#[test]
fn connect_to_own_addresses_is_403() {
    let _net = VETH.enter();
    let mut server = server(0, PROMETHEUS);
    let service = tcp_service();
    let mut c = tcp_client(&server);
    for peer in [
        sa(RELAY_IP, service),
        sa(LISTEN_IP, service),
        sa(OTHER_IP, service),
        sa(RELAY_IP, server.listeners.tcp().port()),
    ] {
        c.request(Method::CONNECT, &[Attr::peer(peer)])
            .expect_error(403);
    }
    assert!(server.wait_for_log("peer is an address of this host: 403", 4, SILENCE));
    let m = scrape_metrics(server.prometheus());
    assert_eq!(
        m.get("turnd_own_address_refused_total", &[("path", "connect")]),
        4.0
    );
}

#[test]
fn allowed_peer_ip_opens_an_own_address() {
    let _net = VETH.enter();
    let server = server(1, &["--allowed-peer-ip", OTHER_IP]);
    let service = tcp_service();
    let mut c = tcp_client(&server);
    let r = c.request(Method::CONNECT, &[Attr::peer(sa(OTHER_IP, service))]);
    r.expect_success();
    assert!(r.u32(AttributeType::CONNECTION_ID).is_some());
    c.request(Method::CONNECT, &[Attr::peer(sa(RELAY_IP, service))])
        .expect_error(403);
    let mut u = Client::new_on("0.0.0.0", server.addr, USER, PASSWORD);
    u.allocate();
    u.create_permission(&[sa(OTHER_IP, 9)]).expect_success();
    u.create_permission(&[sa(LISTEN_IP, 9)]).expect_error(403);
}

#[test]
fn udp_relays_reach_each_other_but_not_the_host() {
    let _net = VETH.enter();
    let server = server(2, &[]);
    let service = UdpSocket::bind("0.0.0.0:0").unwrap();
    service
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let svc = service.local_addr().unwrap().port();
    let mut a = Client::new_on("0.0.0.0", server.addr, USER, PASSWORD);
    let mut b = Client::new_on("0.0.0.0", server.addr, USER, PASSWORD);
    let relay_a = a.allocate().relay;
    let relay_b = b.allocate().relay;
    assert_eq!(relay_a.ip().to_string(), RELAY_IP);

    // Non-relay addresses of the host: 403 whatever the port.
    for peer in [
        sa(LISTEN_IP, svc),
        sa(OTHER_IP, svc),
        sa(LISTEN_IP, server.addr.port()),
    ] {
        a.create_permission(&[peer]).expect_error(403);
        a.channel_bind(0x4000, peer).expect_error(403);
    }
    // The relay address: a permission (per IP address) is granted...
    a.create_permission(&[sa(RELAY_IP, svc)]).expect_success();
    // ...but only another allocation's relayed port is reached.
    a.channel_bind(0x4000, sa(RELAY_IP, svc)).expect_error(403);
    a.channel_bind(0x4000, sa(RELAY_IP, server.addr.port()))
        .expect_error(403);
    a.send_indication(sa(RELAY_IP, svc), b"to the service");
    a.send_indication(sa(RELAY_IP, server.addr.port()), b"turn in turn");
    let mut buf = [0u8; 100];
    assert!(
        service.recv_from(&mut buf).is_err(),
        "the service got a relayed datagram"
    );
    // The service (an own address) cannot send to the client either.
    service.send_to(b"from the service", relay_a).unwrap();
    a.expect_silence(SILENCE);

    // Two allocations relay to each other.
    a.channel_bind(0x4001, relay_b).expect_success();
    b.create_permission(&[relay_a]).expect_success();
    a.channel_data(0x4001, b"a to b");
    let (from, data) = b.expect_data(RESPONSE_TIMEOUT);
    assert_eq!((from, data.as_slice()), (relay_a, &b"a to b"[..]));
    b.send_indication(relay_a, b"b to a");
    let (n, data) = a.expect_channel_data(RESPONSE_TIMEOUT);
    assert_eq!((n, data.as_slice()), (0x4001, &b"b to a"[..]));
}

#[test]
fn ipv6_own_addresses_are_refused_too() {
    let _net = VETH.enter();
    let server = server(3, &["--relay-ip", RELAY_IP6]);
    let service = UdpSocket::bind("[::]:0").unwrap();
    let svc = service.local_addr().unwrap().port();
    let v6 = Attr::Raw(AttributeType::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    let mut a = Client::new_on("0.0.0.0", server.addr, USER, PASSWORD);
    let relay_a = Client::allocated(a.allocate_with(&[Attr::transport_udp(), v6.clone()])).relay;
    let mut b = Client::new_on("0.0.0.0", server.addr, USER, PASSWORD);
    let relay_b = Client::allocated(b.allocate_with(&[Attr::transport_udp(), v6])).relay;
    assert_eq!(relay_a.ip().to_string(), RELAY_IP6);
    a.create_permission(&[sa(OTHER_IP6, svc)]).expect_error(403);
    a.create_permission(&[sa(RELAY_IP6, svc)]).expect_success();
    a.channel_bind(0x4000, sa(RELAY_IP6, svc)).expect_error(403);
    a.channel_bind(0x4000, relay_b).expect_success();
    b.create_permission(&[relay_a]).expect_success();
    a.channel_data(0x4000, b"a to b");
    let (from, data) = b.expect_data(RESPONSE_TIMEOUT);
    assert_eq!((from, data.as_slice()), (relay_a, &b"a to b"[..]));
}
