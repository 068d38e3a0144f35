//! Load shedding (issue 13): at `max-allocations` or with the relay ports of
//! a family nearly exhausted, Allocate is answered 300 Try Alternate with
//! ALTERNATE-SERVER (RFC 8489 section 10) when an alternate server fits,
//! else 508 (at `max-allocations`) or served (ports low); allocations made
//! before keep refreshing and relaying.

use super::*;

fn alternate() -> SocketAddr {
    "192.0.2.21:3478".parse().unwrap()
}

fn alternate_of(r: &Answer) -> Option<SocketAddr> {
    r.msg()
        .get(AttributeType::ALTERNATE_SERVER)
        .map(|v| decode_address(v).unwrap())
}

/// An Allocate without credentials (the first request of every TURN client).
fn bare_allocate(h: &mut Harness, port: u16) -> Answer {
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, None, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    h.request_raw(ft(port), &b).expect("an answer")
}

#[test]
fn max_allocations_sheds_to_the_alternate_and_existing_allocations_go_on() {
    let mut h = Harness::new(|c| {
        c.max_allocations = 2;
        c.alternate_servers = vec![alternate()];
    });
    let a = h.client(1, "alice", "secret");
    let b = h.client(2, "bob", "hunter2");
    let late = h.client(3, "alice", "secret");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    assert_eq!(h.allocate(&b).class(), Class::Success);

    // Full: a client with credentials gets an authenticated 300.
    let r = h.allocate(&late);
    assert_eq!(r.code(), Some(300), "Try Alternate at max-allocations");
    assert!(r.msg().check_integrity(&late.key), "the 300 is signed");
    assert_eq!(alternate_of(&r), Some(alternate()));
    assert_eq!(h.server.allocation_count(), 2, "no third allocation");

    // A credential-less Allocate is redirected before the 401 challenge: a
    // bare 300, no MESSAGE-INTEGRITY, no NONCE to carry to the alternate.
    let r = bare_allocate(&mut h, 4);
    assert_eq!(r.code(), Some(300));
    assert_eq!(alternate_of(&r), Some(alternate()));
    assert!(!r.msg().has_integrity());
    assert!(r.msg().get(AttributeType::NONCE).is_none());
    assert_eq!(h.server.stats().allocations_shed.max_allocations, 2);

    // The allocations made before keep refreshing and relaying.
    let r = h.request(&a, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 600).unwrap()
    });
    assert_eq!(r.class(), Class::Success, "Refresh while shedding");
    assert_eq!(h.permit(&a, peer()).class(), Class::Success);
    assert_eq!(h.bind(&a, 0x4000, peer()).class(), Class::Success);
    assert!(matches!(
        h.channel_data(&a, 0x4000, b"still relaying"),
        ClientOutput::ToPeer { .. }
    ));
    h.advance(Duration::from_secs(500));
    assert!(h.server.allocation(&a.ft).is_some(), "refreshed past 600 s");

    // One ends: the node takes allocations again.
    let r = h.request(&b, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(r.class(), Class::Success);
    let r = h.request(&late, Method::REFRESH, |_| {});
    let late = Client {
        nonce: r
            .msg()
            .get(AttributeType::NONCE)
            .map_or(late.nonce.clone(), <[u8]>::to_vec),
        ..late
    };
    assert_eq!(h.allocate(&late).class(), Class::Success);
    assert_eq!(h.server.allocation_count(), 2);
}

#[test]
fn max_allocations_without_an_alternate_answers_508_not_486() {
    let mut h = Harness::new(|c| {
        c.max_allocations = 1;
        // An alternate of the other family does not fit an IPv4 client.
        c.alternate_servers = vec!["[2001:db8::21]:3478".parse().unwrap()];
    });
    let a = h.client(1, "alice", "secret");
    let b = h.client(2, "bob", "hunter2");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    let r = h.allocate(&b);
    assert_eq!(r.code(), Some(508), "node capacity, not a user's quota");
    assert!(r.msg().check_integrity(&b.key));
    assert!(alternate_of(&r).is_none());
    // Without an alternate nothing is shed before the challenge.
    assert_eq!(bare_allocate(&mut h, 3).code(), Some(401));
    assert_eq!(h.server.stats().allocations_shed.max_allocations, 1);

    // EVEN-PORT with the R bit takes two slots: over a limit of 2 with one
    // allocation held.
    let mut h = Harness::new(|c| {
        c.max_allocations = 2;
    });
    let a = h.client(1, "alice", "secret");
    let b = h.client(2, "bob", "hunter2");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    let r = h.request(&b, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(r.code(), Some(508));
    assert_eq!(h.allocate(&b).class(), Class::Success, "one slot fits");
}

#[test]
fn total_quota_still_answers_486_below_max_allocations() {
    let mut h = Harness::new(|c| {
        c.total_quota = 1;
        c.max_allocations = 5;
        c.alternate_servers = vec![alternate()];
    });
    let a = h.client(1, "alice", "secret");
    let b = h.client(2, "bob", "hunter2");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    assert_eq!(h.allocate(&b).code(), Some(486));
    assert_eq!(
        h.server.stats().allocations_shed,
        AllocationSheds::default()
    );
}

#[test]
fn nearly_exhausted_relay_ports_shed_to_the_alternate_only() {
    // 40 ports: nearly exhausted (below 5 %) with 1 free.
    let tweak = |alternates: Vec<SocketAddr>| {
        move |c: &mut ServerConfig| {
            c.relay_ips = vec![
                "203.0.113.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ];
            c.min_port = 50000;
            c.max_port = 50039;
            c.alternate_servers = alternates;
        }
    };
    let mut h = Harness::new(tweak(vec![alternate()]));
    let clients: Vec<Client> = (1..=41).map(|p| h.client(p, "alice", "secret")).collect();
    for c in &clients[..39] {
        assert_eq!(h.allocate(c).class(), Class::Success);
    }
    assert_eq!(h.server.free_ports("203.0.113.1".parse().unwrap()), 1);
    let r = h.allocate(&clients[39]);
    assert_eq!(r.code(), Some(300), "1 of 40 IPv4 ports free");
    assert_eq!(alternate_of(&r), Some(alternate()));
    assert_eq!(bare_allocate(&mut h, 50).code(), Some(300));
    assert_eq!(h.server.stats().allocations_shed.relay_ports_low, 2);
    // An IPv6 relay is not short of ports: served here.
    let r = h.request(&clients[40], Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(r.class(), Class::Success, "{:?}", r.code());
    assert!(h.relay_of(&clients[40]).is_ipv6());

    // Without an alternate the node spends its last ports, then 508 as
    // before; that is no shed.
    let mut h = Harness::new(tweak(Vec::new()));
    let clients: Vec<Client> = (1..=41).map(|p| h.client(p, "alice", "secret")).collect();
    for c in &clients[..40] {
        assert_eq!(h.allocate(c).class(), Class::Success);
    }
    assert_eq!(h.allocate(&clients[40]).code(), Some(508));
    assert_eq!(
        h.server.stats().allocations_shed,
        AllocationSheds::default()
    );
}

#[test]
fn shedding_leaves_other_requests_and_reconfigure_applies() {
    let mut h = Harness::new(|c| {
        c.max_allocations = 1;
        c.alternate_servers = vec![alternate()];
    });
    let a = h.client(1, "alice", "secret");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    // A credential-less Refresh is challenged as usual.
    let tid = h.tid();
    let b = h.build(Method::REFRESH, tid, None, |_| {});
    assert_eq!(h.request_raw(ft(2), &b).unwrap().code(), Some(401));
    // An Allocate retransmitted on a 5-tuple that holds an allocation is
    // not shed (437 is its answer).
    assert_eq!(h.allocate(&a).code(), Some(437));

    // SIGHUP raising the limit stops the shedding.
    let mut config = h.server.config().clone();
    config.max_allocations = 0;
    let now = h.now;
    h.server.reconfigure(now, config);
    assert_eq!(bare_allocate(&mut h, 3).code(), Some(401));
}

/// One `alternate-server` list shipped to every node of a fleet names the
/// node itself too: it never redirects a client to itself (an address of
/// this host on the port the client came to), but to the others, in turn.
#[test]
fn a_node_never_names_itself_as_the_alternate() {
    let other: SocketAddr = "192.0.2.22:3478".parse().unwrap();
    let mut h = Harness::new(|c| {
        c.max_allocations = 1;
        c.host_ips = vec!["198.51.100.200".parse().unwrap()];
        c.alternate_servers = vec![
            // The address the clients came to, and another of this host's.
            "203.0.113.1:3478".parse().unwrap(),
            "198.51.100.200:3478".parse().unwrap(),
            alternate(),
            // This host on another port is another node.
            "203.0.113.1:3479".parse().unwrap(),
            other,
        ];
    });
    let a = h.client(1, "alice", "secret");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    let mut named = Vec::new();
    for port in 10..16 {
        let r = bare_allocate(&mut h, port);
        assert_eq!(r.code(), Some(300));
        named.push(alternate_of(&r).expect("ALTERNATE-SERVER"));
    }
    let at_3479: SocketAddr = "203.0.113.1:3479".parse().unwrap();
    for want in [alternate(), at_3479, other] {
        assert_eq!(named.iter().filter(|a| **a == want).count(), 2, "{named:?}");
    }
}
