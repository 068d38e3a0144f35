//! Issue 10: addresses of this host are refused as peers on every path, but
//! for another allocation's relayed address (a relay address with a port in
//! `min-port..=max-port`).

use super::*;

/// A listening address and an interface address of the host.
const LISTENING: &str = "198.51.100.1";
const INTERFACE: &str = "203.0.113.5";
/// The harness's relay address.
const RELAY: &str = "203.0.113.1";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn own_host(c: &mut ServerConfig) {
    c.host_ips = vec![LISTENING.parse().unwrap(), INTERFACE.parse().unwrap()];
}

#[test]
fn own_addresses_are_refused_but_relayed_addresses_reach_each_other() {
    let mut h = Harness::new(own_host);
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let other = h.client(2, "bob", "hunter2");
    h.allocate(&other);
    let other_relay = h.relay_of(&other);

    // Every non-relay address of the host: 403 on CreatePermission and
    // ChannelBind, whatever the port.
    for ip in [LISTENING, INTERFACE] {
        for port in [22, 3478, 6379, 50500] {
            assert_eq!(h.permit(&c, sa(ip, port)).code(), Some(403), "{ip}:{port}");
            assert_eq!(h.bind(&c, 0x4000, sa(ip, port)).code(), Some(403));
        }
    }
    // The relay address: a permission is per IP address, so it is allowed...
    assert_eq!(h.permit(&c, sa(RELAY, 22)).class(), Class::Success);
    // ...but only ports of the relay range may be reached.
    for port in [22, 3478, 6379, 9641, 9642, 49999, 51000] {
        assert_eq!(
            h.bind(&c, 0x4001, sa(RELAY, port)).code(),
            Some(403),
            "{port}"
        );
        assert_eq!(
            h.send_indication(&c, sa(RELAY, port), b"x"),
            ClientOutput::None
        );
        let relay = h.relay_of(&c);
        let (t, _) = h.peer_sends(relay, sa(RELAY, port), b"from a service");
        assert_eq!(t, PeerOutput::None, "datagram from {RELAY}:{port}");
    }
    // Another allocation's relayed address: channel, Send and datagrams flow.
    assert_eq!(h.bind(&c, 0x4002, other_relay).class(), Class::Success);
    assert!(matches!(
        h.channel_data(&c, 0x4002, b"hi"),
        ClientOutput::ToPeer { peer, .. } if peer == other_relay
    ));
    assert!(matches!(
        h.send_indication(&c, other_relay, b"x"),
        ClientOutput::ToPeer { peer, .. } if peer == other_relay
    ));
    let relay = h.relay_of(&c);
    let (t, _) = h.peer_sends(relay, other_relay, b"back");
    assert!(matches!(t, PeerOutput::ChannelData { .. }), "{t:?}");

    let refused = h.server.stats().own_address_refused;
    assert_eq!(refused.create_permission, 8);
    assert_eq!(refused.channel_bind, 8 + 7);
    assert_eq!(refused.send, 7);
    assert_eq!(refused.peer_datagram, 7);
}

#[test]
fn external_ip_parts_are_own_addresses_and_the_public_one_relays() {
    let mut h = Harness::new(|c| {
        c.external_ips = vec![(Some(RELAY.parse().unwrap()), "192.0.2.77".parse().unwrap())];
        c.external_ips.push((None, "192.0.2.78".parse().unwrap()));
    });
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    // The advertised public address is a relayed address like the relay's own.
    assert_eq!(h.permit(&c, sa("192.0.2.77", 1)).class(), Class::Success);
    assert_eq!(
        h.bind(&c, 0x4000, sa("192.0.2.77", 50001)).class(),
        Class::Success
    );
    assert_eq!(h.bind(&c, 0x4001, sa("192.0.2.77", 22)).code(), Some(403));
    assert_eq!(
        h.bind(&c, 0x4001, sa("192.0.2.78", 50002)).class(),
        Class::Success
    );
    assert_eq!(h.bind(&c, 0x4002, sa("192.0.2.78", 6379)).code(), Some(403));
}

#[test]
fn allowed_peer_ip_opens_an_own_address() {
    let mut h = Harness::new(|c| {
        own_host(c);
        c.policy.allowed = vec![LISTENING.parse().unwrap(), RELAY.parse().unwrap()];
    });
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    assert_eq!(h.permit(&c, sa(LISTENING, 22)).class(), Class::Success);
    assert_eq!(
        h.bind(&c, 0x4000, sa(LISTENING, 22)).class(),
        Class::Success
    );
    assert_eq!(h.bind(&c, 0x4001, sa(RELAY, 22)).class(), Class::Success);
    assert_eq!(h.permit(&c, sa(INTERFACE, 22)).code(), Some(403));
}

#[test]
fn allow_loopback_peers_opens_own_loopback_addresses_only() {
    let mut h = Harness::new(|c| {
        own_host(c);
        c.host_ips.push("127.0.0.1".parse().unwrap());
        c.policy.allow_loopback = true;
    });
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    assert_eq!(
        h.bind(&c, 0x4000, sa("127.0.0.1", 22)).class(),
        Class::Success
    );
    assert_eq!(h.bind(&c, 0x4001, sa(INTERFACE, 22)).code(), Some(403));
}

#[test]
fn connect_and_peer_connections_from_own_addresses_are_refused() {
    let mut h = Harness::new(own_host);
    let c = h.tcp_relay_client(1);
    let relay = h.relay_of(&c);
    for peer in [
        sa(RELAY, 22),
        sa(RELAY, 6379),
        sa(LISTENING, 9642),
        sa(INTERFACE, 50500),
    ] {
        let r = h.request(&c, Method::CONNECT, |w| {
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
                .unwrap()
        });
        assert_eq!(r.code(), Some(403), "Connect {peer}");
    }
    assert!(h.io.connects.is_empty());
    // Another allocation's TCP relay address may be connected to.
    let tid = h.tid();
    let b = h.build(Method::CONNECT, tid, Some(&c), |w| {
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, sa(RELAY, 50123))
            .unwrap()
    });
    assert_eq!(h.input(c.ft, &b), ClientOutput::None);
    assert_eq!(h.io.connects.len(), 1);
    // Incoming: a permission to the relay address lets relayed addresses in,
    // not the host's services.
    assert_eq!(h.permit(&c, sa(RELAY, 1)).class(), Class::Success);
    let now = h.now;
    let mut out = vec![0u8; 1500];
    assert!(h
        .server
        .handle_peer_connection(now, relay, sa(RELAY, 22), &mut out)
        .is_none());
    assert!(h
        .server
        .handle_peer_connection(now, relay, sa(RELAY, 50124), &mut out)
        .is_some());
    let refused = h.server.stats().own_address_refused;
    assert_eq!((refused.connect, refused.peer_connection), (4, 1));
}

#[test]
fn reload_revokes_permissions_to_addresses_the_host_gained() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    assert_eq!(
        h.bind(&c, 0x4000, sa(INTERFACE, 22)).class(),
        Class::Success
    );
    assert_eq!(h.bind(&c, 0x4002, sa(RELAY, 50001)).class(), Class::Success);
    let mut config = h.server.config().clone();
    own_host(&mut config);
    let now = h.now;
    // INTERFACE's permission and channel.
    assert_eq!(h.server.reconfigure(now, config), 2);
    let a = h.server.allocation(&c.ft).unwrap();
    assert_eq!(a.channels.len(), 1);
    assert!(a.permissions.contains_key(&RELAY.parse().unwrap()));
}
