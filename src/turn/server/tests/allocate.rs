//! Allocate and Refresh: lifetimes, reservations, quotas, relay addresses.

use super::*;

#[test]
fn allocate_refresh_and_expiry() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.allocate(&c);
    assert_eq!(a.class(), Class::Success);
    assert!(a.msg().check_integrity(&c.key));
    assert_eq!(a.msg().get_u32(AttributeType::LIFETIME), Some(600));
    let relay = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert!((50000..=50999).contains(&relay.port()));
    assert!(h.io.open.contains(&relay));

    // Requested 5000 s is capped at 3600 s; 10 s is raised to the default 600 s.
    let r = h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 5000).unwrap()
    });
    assert_eq!(r.msg().get_u32(AttributeType::LIFETIME), Some(3600));
    let r = h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 10).unwrap()
    });
    assert_eq!(r.msg().get_u32(AttributeType::LIFETIME), Some(600));

    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocation_count(), 0, "expired after 600 s");
    assert!(h.io.open.is_empty(), "relay socket closed");
    assert_eq!(
        h.server.free_ports("203.0.113.1".parse().unwrap()),
        1000,
        "port returned"
    );
}

#[test]
fn refresh_zero_deletes_and_then_437() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let r = h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(r.class(), Class::Success);
    assert_eq!(r.msg().get_u32(AttributeType::LIFETIME), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    let r = h.request(&c, Method::REFRESH, |_| {});
    assert_eq!(r.code(), Some(437));
}

#[test]
fn retransmitted_allocate_gets_same_answer_and_one_allocation() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let b = h.build(Method::ALLOCATE, [42; 12], Some(&c), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    let first = h.request_raw(c.ft, &b).unwrap();
    let second = h.request_raw(c.ft, &b).unwrap();
    assert_eq!(first.bytes, second.bytes);
    assert_eq!(h.io.opened, 1);
    assert_eq!(h.server.allocation_count(), 1);
    // A new transaction for an existing allocation is a mismatch.
    assert_eq!(h.allocate(&c).code(), Some(437));
    // After the transaction lifetime the cache is gone: a late retransmission is a mismatch too.
    h.advance(TRANSACTION_LIFETIME + Duration::from_secs(1));
    assert_eq!(h.request_raw(c.ft, &b).unwrap().code(), Some(437));
}

#[test]
fn even_port_reservation_token() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
    });
    let relay = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relay.port() % 2, 0);
    let token = a
        .msg()
        .get(AttributeType::RESERVATION_TOKEN)
        .unwrap()
        .to_vec();
    assert_eq!(token.len(), 8);
    let d = h.client(2, "alice", "secret");
    let b = h.request(&d, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &token)
            .unwrap();
    });
    let relay2 = b
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relay2.port(), relay.port() + 1);
    // A token is used once.
    let e = h.client(3, "alice", "secret");
    let again = h.request(&e, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &token)
            .unwrap();
    });
    assert_eq!(again.code(), Some(508));
}

#[test]
fn unused_reservation_returns_port_after_30_s() {
    let mut h = Harness::new(|c| {
        c.min_port = 50000;
        c.max_port = 50001;
    });
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    let ip = "203.0.113.1".parse().unwrap();
    assert_eq!(h.server.free_ports(ip), 0);
    h.advance(RESERVATION_LIFETIME + Duration::from_secs(1));
    assert_eq!(h.server.free_ports(ip), 1);
}

#[test]
fn user_and_total_quota_486() {
    let mut h = Harness::new(|c| {
        c.user_quota = 1;
        c.total_quota = 2;
    });
    let a = h.client(1, "alice", "secret");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    let a2 = h.client(2, "alice", "secret");
    assert_eq!(h.allocate(&a2).code(), Some(486));
    let b = h.client(3, "bob", "hunter2");
    assert_eq!(h.allocate(&b).class(), Class::Success);
    let b2 = h.client(4, "bob", "hunter2");
    assert_eq!(h.allocate(&b2).code(), Some(486), "total quota");
    // Deleting one frees the user's quota.
    h.request(&a, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(h.allocate(&a2).class(), Class::Success);
}

#[test]
fn port_exhaustion_is_508_and_busy_ports_are_skipped() {
    let mut h = Harness::new(|c| {
        c.min_port = 50000;
        c.max_port = 50002;
    });
    h.io.busy.insert("203.0.113.1:50001".parse().unwrap());
    let mut relays = HashSet::new();
    for port in 1..=2 {
        let c = h.client(port, "alice", "secret");
        assert_eq!(h.allocate(&c).class(), Class::Success);
        relays.insert(h.relay_of(&c).port());
    }
    assert_eq!(relays, HashSet::from([50000, 50002]));
    let c = h.client(3, "alice", "secret");
    assert_eq!(h.allocate(&c).code(), Some(508));
}

#[test]
fn dual_allocation_and_address_error_code() {
    let mut h = Harness::new(|c| c.relay_ips.push("2001:db8::1".parse().unwrap()));
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::ADDITIONAL_ADDRESS_FAMILY, 0x02 << 24)
            .unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    let relays: Vec<SocketAddr> = a
        .msg()
        .attributes()
        .filter(|(t, _)| *t == AttributeType::XOR_RELAYED_ADDRESS)
        .map(|(_, v)| decode_xor_address(v, &a.msg().transaction_id()).unwrap())
        .collect();
    assert_eq!(relays.len(), 2);
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6());
    // Peers of both families are reachable, each through its own relay.
    let v6peer: SocketAddr = "[2001:db8:9::1]:7".parse().unwrap();
    assert_eq!(h.bind(&c, 0x4000, peer()).class(), Class::Success);
    assert_eq!(h.bind(&c, 0x4001, v6peer).class(), Class::Success);
    assert_eq!(
        h.channel_data(&c, 0x4001, b"x"),
        ClientOutput::ToPeer {
            relay: relays[1],
            peer: v6peer,
            range: 4..5
        }
    );
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        ClientOutput::ToPeer {
            relay: relays[0],
            peer: peer(),
            range: 4..5
        }
    );
    // Deleting closes both relay sockets.
    h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert!(h.io.open.is_empty());

    // Without an IPv6 relay address: the IPv4 half stands, ADDRESS-ERROR-CODE says 440.
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::ADDITIONAL_ADDRESS_FAMILY, 0x02 << 24)
            .unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    assert_eq!(
        a.msg().get(AttributeType::ADDRESS_ERROR_CODE),
        Some(&[2, 0, 4, 40][..])
    );
    // Both family attributes at once, or an IPv4 additional family: 400.
    let d = h.client(2, "alice", "secret");
    let bad = h.request(&d, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::ADDITIONAL_ADDRESS_FAMILY, 0x01 << 24)
            .unwrap();
    });
    assert_eq!(bad.code(), Some(400));
}

#[test]
fn external_ip_is_advertised() {
    let mut h = Harness::new(|c| {
        c.external_ips
            .push((None, "198.51.100.200".parse().unwrap()))
    });
    let c = h.client(1, "alice", "secret");
    let a = h.allocate(&c);
    let advertised = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    let bound = h.relay_of(&c);
    assert_eq!(
        advertised.ip(),
        "198.51.100.200".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(advertised.port(), bound.port());
    assert_eq!(
        bound.ip(),
        "203.0.113.1".parse::<std::net::IpAddr>().unwrap()
    );
}

#[test]
fn several_relay_addresses_share_the_allocations() {
    let mut h = Harness::new(|c| {
        c.relay_ips = vec![
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        ];
        c.min_port = 50000;
        c.max_port = 50001;
    });
    let mut ips = HashSet::new();
    for port in 1..=4 {
        let c = h.client(port, "alice", "secret");
        assert_eq!(h.allocate(&c).class(), Class::Success, "allocation {port}");
        ips.insert(h.relay_of(&c).ip());
    }
    assert_eq!(ips.len(), 2, "both relay addresses used");
    let c = h.client(5, "alice", "secret");
    assert_eq!(h.allocate(&c).code(), Some(508), "2 addresses x 2 ports");
}

#[test]
fn reconfigure_keeps_allocations_and_revokes_denied_peers() {
    let mut h = Harness::new(|c| c.policy.allowed.push("10.9.0.0/16".parse().unwrap()));
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let internal: SocketAddr = "10.9.0.5:9".parse().unwrap();
    assert_eq!(h.bind(&c, 0x4000, internal).class(), Class::Success);
    assert_eq!(h.bind(&c, 0x4001, peer()).class(), Class::Success);
    let mut fresh = h.server.config().clone();
    fresh.policy.allowed.clear();
    fresh.credentials = Credentials::new();
    fresh.credentials.add_user("alice", REALM, "rotated");
    let now = h.now;
    h.server.reconfigure(now, fresh);
    assert_eq!(
        h.server.allocation_count(),
        1,
        "allocations survive a reload"
    );
    assert!(
        matches!(
            h.channel_data(&c, 0x4001, b"x"),
            ClientOutput::ToPeer { .. }
        ),
        "allowed peer keeps flowing"
    );
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        ClientOutput::None,
        "newly denied peer is cut"
    );
    assert_eq!(
        h.request(&c, Method::REFRESH, |_| {}).code(),
        Some(401),
        "old password no longer works"
    );
}

/// `n` users `u0`, `u1`... with password `pw`, each allocating and ending
/// one allocation (Refresh with LIFETIME 0).
fn allocate_and_end_as_many_users(n: usize) -> Harness {
    let users: Vec<&'static str> = (0..n)
        .map(|i| &*Box::leak(format!("u{i}").into_boxed_str()))
        .collect();
    let mut h = Harness::new(|c| {
        c.unauth_rate = 0;
        for u in &users {
            c.credentials.add_user(u, REALM, "pw");
        }
    });
    for (i, u) in users.iter().enumerate() {
        let c = h.client(1000 + i as u16, u, "pw");
        assert_eq!(h.allocate(&c).class(), Class::Success);
        let r = h.request(&c, Method::REFRESH, |w| {
            w.u32(AttributeType::LIFETIME, 0).unwrap()
        });
        assert_eq!(r.class(), Class::Success);
    }
    assert_eq!(h.server.allocation_count(), 0);
    h
}

/// REST usernames are unique per credential, so the per-user byte totals of
/// ended allocations must not grow with every user ever seen: the core keeps
/// at most `ENDED_USERS_CAP` (10,000) of them until the next snapshot.
#[test]
fn ended_user_totals_stay_bounded() {
    let h = allocate_and_end_as_many_users(10_100);
    let n = h.server.user_bytes().len();
    assert!(n <= 10_000, "{n} users' totals kept");
}

/// Ended users' totals are handed out once (to the shell's snapshot, which
/// keeps the cumulative table) and then forgotten by the core.
#[test]
fn ended_user_totals_are_handed_out_once() {
    let mut h = allocate_and_end_as_many_users(10_005);
    let ended = h.server.take_ended_user_bytes();
    assert_eq!(ended.users.len(), ENDED_USERS_CAP);
    assert_eq!(ended.other, (0, 0), "no bytes were relayed");
    assert_eq!(ended.other_allocations, 5);
    assert!(h.server.user_bytes().is_empty());
    let again = h.server.take_ended_user_bytes();
    assert!(again.users.is_empty() && again.other_allocations == 0);

    // Nothing is kept when no one asks for per-user totals.
    let mut h = Harness::new(|c| c.user_byte_totals = false);
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert!(h.server.take_ended_user_bytes().users.is_empty());
}

/// Issue 10: an EVEN-PORT reservation (R bit) holds a quota slot of its
/// user until it is claimed (the claiming Allocate takes that slot over) or
/// lapses (the slot comes back).
#[test]
fn even_port_reservations_count_toward_quotas() {
    fn allocate_reserving(h: &mut Harness, c: &Client) -> (Answer, Vec<u8>) {
        let a = h.request(c, Method::ALLOCATE, |w| {
            w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
            w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
        });
        let token = a
            .msg()
            .get(AttributeType::RESERVATION_TOKEN)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        (a, token)
    }
    fn claim(h: &mut Harness, c: &Client, token: &[u8]) -> Answer {
        h.request(c, Method::ALLOCATE, |w| {
            w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
            w.attribute(AttributeType::RESERVATION_TOKEN, token)
                .unwrap();
        })
    }

    // user-quota 1: the allocation and its reservation need two slots.
    let mut h = Harness::new(|c| c.user_quota = 1);
    let c = h.client(1, "alice", "secret");
    assert_eq!(allocate_reserving(&mut h, &c).0.code(), Some(486));
    assert_eq!(h.allocate(&c).class(), Class::Success);

    // user-quota 2: the reservation holds the second slot until it lapses.
    let mut h = Harness::new(|c| c.user_quota = 2);
    let c = h.client(1, "alice", "secret");
    let (a, _) = allocate_reserving(&mut h, &c);
    assert_eq!(a.class(), Class::Success);
    let d = h.client(2, "alice", "secret");
    assert_eq!(
        h.allocate(&d).code(),
        Some(486),
        "the reservation holds a slot"
    );
    h.advance(RESERVATION_LIFETIME + Duration::from_secs(1));
    let d = h.client(2, "alice", "secret");
    assert_eq!(h.allocate(&d).class(), Class::Success, "lapsed: slot back");

    // total-quota 2: claiming takes the reservation's slot over, once.
    let mut h = Harness::new(|c| c.total_quota = 2);
    let c = h.client(1, "alice", "secret");
    let (a, token) = allocate_reserving(&mut h, &c);
    assert_eq!(a.class(), Class::Success);
    let bob = h.client(2, "bob", "hunter2");
    assert_eq!(h.allocate(&bob).code(), Some(486));
    let d = h.client(3, "alice", "secret");
    assert_eq!(claim(&mut h, &d, &token).class(), Class::Success);
    assert_eq!(h.allocate(&bob).code(), Some(486), "two allocations now");
    h.advance(RESERVATION_LIFETIME + Duration::from_secs(1));
    assert_eq!(
        h.allocate(&bob).code(),
        Some(486),
        "a claimed token frees nothing"
    );
    let r = h.request(&d, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(r.class(), Class::Success);
    let bob = h.client(2, "bob", "hunter2");
    assert_eq!(h.allocate(&bob).class(), Class::Success);

    // Another user's token: the slot moves to the claimer.
    let mut h = Harness::new(|c| c.user_quota = 2);
    let c = h.client(1, "alice", "secret");
    let (_, token) = allocate_reserving(&mut h, &c);
    let bob = h.client(2, "bob", "hunter2");
    assert_eq!(claim(&mut h, &bob, &token).class(), Class::Success);
    let d = h.client(3, "alice", "secret");
    assert_eq!(
        h.allocate(&d).class(),
        Class::Success,
        "alice's slot came back"
    );
}

/// A client at `ip:port` over `transport` holding a nonce for that address
/// (nonces are bound to the client's IP: a 438 brings the right one).
fn client_on(h: &mut Harness, ip: &str, port: u16, transport: Transport) -> Client {
    let mut c = h.client(port, "alice", "secret");
    c.ft.client = SocketAddr::new(ip.parse().unwrap(), port);
    c.ft.transport = transport;
    let r = h.request(&c, Method::REFRESH, |_| {});
    if r.code() == Some(438) {
        c.nonce = r.msg().get(AttributeType::NONCE).unwrap().to_vec();
    }
    c
}

#[test]
fn draining_answers_allocate_with_300_and_an_alternate_of_the_clients_family() {
    let alternates: Vec<SocketAddr> = vec![
        "192.0.2.21:3478".parse().unwrap(),
        "[2001:db8::21]:3478".parse().unwrap(),
        "192.0.2.22:3479".parse().unwrap(),
    ];
    let tls: Vec<SocketAddr> = vec!["192.0.2.31:5349".parse().unwrap()];
    let (a, t) = (alternates.clone(), tls.clone());
    let mut h = Harness::new(move |c| {
        c.alternate_servers = a;
        c.tls_alternate_servers = t;
    });
    let before = h.client(1, "alice", "secret");
    assert_eq!(h.allocate(&before).class(), Class::Success);
    // Clients that hold a nonce from before the drain (a credential-less
    // Allocate while draining is redirected before any challenge: see
    // shed.rs).
    let clients: Vec<Client> = (2..6).map(|p| h.client(p, "alice", "secret")).collect();
    let tls_v4 = client_on(&mut h, "198.51.100.7", 7, Transport::Tls);
    let tls_v6 = client_on(&mut h, "2001:db8::7", 8, Transport::Tls);
    h.server.start_draining();

    // IPv4 UDP clients get the IPv4 alternates, in turn; never the IPv6 one.
    let mut seen = Vec::new();
    for c in &clients {
        let r = h.allocate(c);
        assert_eq!(r.code(), Some(300), "Try Alternate while draining");
        assert!(r.msg().check_integrity(&c.key), "the 300 is authenticated");
        let alt = decode_address(r.msg().get(AttributeType::ALTERNATE_SERVER).unwrap()).unwrap();
        assert!(alt.is_ipv4(), "{alt}");
        seen.push(alt);
    }
    assert!(
        seen.contains(&alternates[0]) && seen.contains(&alternates[2]),
        "{seen:?}"
    );
    assert_eq!(h.server.allocation_count(), 1, "no allocation made");

    // A TLS client gets the TLS alternate.
    let r = h.allocate(&tls_v4);
    assert_eq!(r.code(), Some(300));
    let alt = decode_address(r.msg().get(AttributeType::ALTERNATE_SERVER).unwrap()).unwrap();
    assert_eq!(alt, tls[0]);

    // An IPv6 TLS client: no alternate of its family, 508 as without any.
    let r = h.allocate(&tls_v6);
    assert_eq!(r.code(), Some(508));
    assert!(r.msg().get(AttributeType::ALTERNATE_SERVER).is_none());

    // The allocation made before the drain keeps refreshing.
    let r = h.request(&before, Method::REFRESH, |_| {});
    assert_eq!(r.class(), Class::Success);
}

#[test]
fn draining_without_alternates_answers_508() {
    let mut h = Harness::new(|_| {});
    h.server.start_draining();
    let c = h.client(1, "alice", "secret");
    let r = h.allocate(&c);
    assert_eq!(r.code(), Some(508));
    assert!(r.msg().get(AttributeType::ALTERNATE_SERVER).is_none());
}
