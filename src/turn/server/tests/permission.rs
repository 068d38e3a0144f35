//! CreatePermission and ChannelBind: rules, expiry and the peer policy.

use super::*;

#[test]
fn channel_rebinding_rules() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let p2: SocketAddr = "192.0.2.11:6000".parse().unwrap();
    assert_eq!(h.bind(&c, 0x4000, peer()).class(), Class::Success);
    assert_eq!(
        h.bind(&c, 0x4000, peer()).class(),
        Class::Success,
        "refresh of the same binding"
    );
    assert_eq!(
        h.bind(&c, 0x4000, p2).code(),
        Some(400),
        "channel bound to another peer"
    );
    assert_eq!(
        h.bind(&c, 0x4001, peer()).code(),
        Some(400),
        "peer bound to another channel"
    );
    assert_eq!(h.bind(&c, 0x3FFF, p2).code(), Some(400));
    assert_eq!(h.bind(&c, 0x8000, p2).code(), Some(400));
    assert_eq!(h.bind(&c, 0x4FFF, p2).class(), Class::Success);
    // Family mismatch: an IPv6 peer on an IPv4 relay.
    assert_eq!(
        h.bind(&c, 0x4002, "[2001:db8::1]:5".parse().unwrap())
            .code(),
        Some(443)
    );
}

#[test]
fn permission_and_channel_expiry() {
    let mut h = Harness::new(|_| {});
    let mut c = h.client(1, "alice", "secret");
    let a = h.allocate(&c);
    assert_eq!(a.class(), Class::Success);
    h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 3600).unwrap()
    });
    let relay = h.relay_of(&c);
    h.bind(&c, 0x4000, peer());
    // Permission 300 s, channel 600 s.
    h.advance(Duration::from_secs(299));
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"x"),
        ClientOutput::ToPeer { .. }
    ));
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        ClientOutput::None,
        "permission expired"
    );
    assert_eq!(h.peer_sends(relay, peer(), b"x").0, PeerOutput::None);
    // Refresh the permission: the channel (still bound) works again.
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"x"),
        ClientOutput::ToPeer { .. }
    ));
    h.advance(Duration::from_secs(300));
    // The nonce is older than 600 s now: take a fresh one as a client would after 438.
    c.nonce = h.client(1, "alice", "secret").nonce;
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        ClientOutput::None,
        "channel expired after 600 s"
    );
    assert!(h.server.allocation(&c.ft).unwrap().channels.is_empty());
    // Once expired the number can be bound again.
    assert_eq!(
        h.bind(&c, 0x4000, "192.0.2.12:1".parse().unwrap()).class(),
        Class::Success
    );
}

#[test]
fn peer_policy_on_every_path() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    for bad in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "172.16.0.1:9",
        "192.168.1.1:9",
        "100.64.0.1:9",
        "169.254.169.254:80",
        "0.0.0.0:9",
        "224.0.0.1:9",
        "255.255.255.255:9",
    ] {
        let p: SocketAddr = bad.parse().unwrap();
        assert_eq!(h.permit(&c, p).code(), Some(403), "CreatePermission {bad}");
        assert_eq!(h.bind(&c, 0x4000, p).code(), Some(403), "ChannelBind {bad}");
    }
    // One bad address among good ones rejects the whole request and installs nothing.
    let r = h.request(&c, Method::CREATE_PERMISSION, |w| {
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
            .unwrap();
        w.xor_address(
            AttributeType::XOR_PEER_ADDRESS,
            "10.1.1.1:1".parse().unwrap(),
        )
        .unwrap();
    });
    assert_eq!(r.code(), Some(403));
    assert!(h.server.allocation(&c.ft).unwrap().permissions.is_empty());
    // Send to a denied peer is dropped.
    let denied = "127.0.0.1:9".parse().unwrap();
    assert_eq!(h.send_indication(&c, denied, b"x"), ClientOutput::None);
}

#[test]
fn ipv6_relay_and_mapped_forms_of_denied_peers() {
    let mut h = Harness::new(|c| c.relay_ips.push("2001:db8::1".parse().unwrap()));
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::REQUESTED_ADDRESS_FAMILY, 0x02 << 24)
            .unwrap();
    });
    let relay = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert!(relay.is_ipv6());
    for bad in [
        "[::1]:9",
        "[::ffff:127.0.0.1]:9",
        "[::ffff:169.254.169.254]:80",
        "[64:ff9b::a00:1]:9",
        "[2002:c0a8:101::1]:9",
        "[::10.0.0.1]:9",
        "[fe80::1]:9",
        "[fd00::1]:9",
        "[ff02::1]:9",
        "[::]:9",
    ] {
        assert_eq!(
            h.permit(&c, bad.parse().unwrap()).code(),
            Some(403),
            "{bad}"
        );
    }
    assert_eq!(
        h.permit(&c, "[2001:db8:5::1]:9".parse().unwrap()).class(),
        Class::Success
    );
    assert_eq!(
        h.permit(&c, peer()).code(),
        Some(443),
        "IPv4 peer on an IPv6 relay"
    );
}

#[test]
fn allow_loopback_and_allowed_peer_ip() {
    let mut h = Harness::new(|c| {
        c.policy.allow_loopback = true;
        c.policy.allowed.push("10.9.0.0/16".parse().unwrap());
    });
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    assert_eq!(
        h.permit(&c, "127.0.0.1:9".parse().unwrap()).class(),
        Class::Success
    );
    assert_eq!(
        h.permit(&c, "10.9.1.1:9".parse().unwrap()).class(),
        Class::Success
    );
    assert_eq!(
        h.permit(&c, "10.8.1.1:9".parse().unwrap()).code(),
        Some(403)
    );
}
