//! The peer routes of the hot path (`table.rs`): every test first lets a
//! peer send, so its route is made, then changes what the route caches and
//! checks that the next datagram sees the change. A stale route would relay
//! after a permission, channel or allocation ended, to the wrong client, or
//! with the wrong channel number.

use super::*;

/// Moves the clock without running the timers: what expired is still in the
/// tables, so only the routes' own deadlines stand between it and a peer.
fn later(h: &mut Harness, d: Duration) {
    h.now += d;
}

/// The channel number of a ChannelData output, the client of a Data
/// indication, or nothing.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Channel(FiveTuple, u16),
    Data(FiveTuple),
    Dropped,
}

fn got(h: &mut Harness, relay: SocketAddr, peer: SocketAddr) -> Got {
    match h.peer_sends(relay, peer, b"payload") {
        (PeerOutput::ChannelData { to, .. }, bytes) => {
            Got::Channel(to, u16::from_be_bytes([bytes[0], bytes[1]]))
        }
        (PeerOutput::DataIndication { to, .. }, _) => Got::Data(to),
        (PeerOutput::None, _) => Got::Dropped,
    }
}

fn allocated(h: &mut Harness, port: u16) -> (Client, SocketAddr) {
    let c = h.client(port, "alice", "secret");
    assert_eq!(h.allocate(&c).class(), Class::Success);
    let relay = h.relay_of(&c);
    (c, relay)
}

/// [`peer`] sending to `relay` is dropped until `c` permits it, then
/// reaches `c` in a Data indication.
fn dropped_until_permitted(h: &mut Harness, c: &Client, relay: SocketAddr) {
    assert_eq!(got(h, relay, peer()), Got::Dropped, "no permission yet");
    assert_eq!(h.permit(c, peer()).class(), Class::Success);
    assert_eq!(got(h, relay, peer()), Got::Data(c.ft), "to this client");
}

/// An allocation for client `port` with a permission for [`peer`], which
/// has sent once (so its route is made).
fn permitted(h: &mut Harness, port: u16) -> (Client, SocketAddr) {
    let (c, relay) = allocated(h, port);
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);
    assert_eq!(got(h, relay, peer()), Got::Data(c.ft));
    (c, relay)
}

/// An allocation for client `port` with channel 0x4000 bound to [`peer`],
/// which has sent once (so its route is made).
fn bound(h: &mut Harness, port: u16) -> (Client, SocketAddr) {
    let (c, relay) = allocated(h, port);
    assert_eq!(h.bind(&c, 0x4000, peer()).class(), Class::Success);
    assert_eq!(got(h, relay, peer()), Got::Channel(c.ft, 0x4000));
    (c, relay)
}

/// `secs` later (timers run), `c` refreshes channel 0x4000 to [`peer`].
fn rebind_after(h: &mut Harness, c: &Client, secs: u64) {
    h.advance(Duration::from_secs(secs));
    assert_eq!(h.bind(c, 0x4000, peer()).class(), Class::Success);
}

#[test]
fn permission_expiry_stops_a_routed_peer_before_the_timer_runs() {
    let mut h = Harness::new(|_| {});
    let (c, relay) = permitted(&mut h, 1);
    assert_eq!(h.server.peer_route_count(), 1);
    later(&mut h, PERMISSION_LIFETIME - Duration::from_millis(1));
    assert_eq!(got(&mut h, relay, peer()), Got::Data(c.ft));
    later(&mut h, Duration::from_millis(1));
    assert_eq!(got(&mut h, relay, peer()), Got::Dropped, "expired at 300 s");
    // The timer removes the permission and the route with it.
    h.advance(Duration::ZERO);
    assert_eq!(h.server.peer_route_count(), 0);
    // A new permission lets the peer through again.
    dropped_until_permitted(&mut h, &c, relay);
}

#[test]
fn refreshed_permission_keeps_a_routed_peer_flowing() {
    let mut h = Harness::new(|_| {});
    let (c, relay) = permitted(&mut h, 1);
    h.advance(Duration::from_secs(200));
    h.permit(&c, peer());
    h.advance(Duration::from_secs(200));
    assert_eq!(
        got(&mut h, relay, peer()),
        Got::Data(c.ft),
        "refreshed at 200 s, lasts to 500 s"
    );
}

#[test]
fn channel_expiry_turns_channel_data_into_data_indications() {
    // The channel lapses while the permission stands.
    let mut h = Harness::new(|c| c.channel_lifetime = Duration::from_secs(100));
    let (c, relay) = bound(&mut h, 1);
    later(&mut h, Duration::from_secs(100));
    assert_eq!(
        got(&mut h, relay, peer()),
        Got::Data(c.ft),
        "no stale channel number after 100 s, timer or not"
    );
    h.advance(Duration::ZERO);
    assert_eq!(got(&mut h, relay, peer()), Got::Data(c.ft));
}

#[test]
fn channel_bind_after_the_first_datagram_makes_the_next_channel_data() {
    let mut h = Harness::new(|_| {});
    let (c, relay) = permitted(&mut h, 1);
    assert_eq!(h.bind(&c, 0x4005, peer()).class(), Class::Success);
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(c.ft, 0x4005));
}

#[test]
fn channel_rebound_after_expiry_carries_the_new_number() {
    let mut h = Harness::new(|c| c.channel_lifetime = Duration::from_secs(100));
    let (c, relay) = bound(&mut h, 1);
    h.advance(Duration::from_secs(100));
    assert_eq!(h.bind(&c, 0x4001, peer()).class(), Class::Success);
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(c.ft, 0x4001));
    // And the old number no longer reaches the peer from the client.
    assert_eq!(h.channel_data(&c, 0x4000, b"x"), ClientOutput::None);
}

#[test]
fn channel_bind_refresh_refreshes_the_permission_of_a_routed_peer() {
    let mut h = Harness::new(|_| {});
    let (c, relay) = bound(&mut h, 1);
    rebind_after(&mut h, &c, 250);
    h.advance(Duration::from_secs(250));
    assert_eq!(
        got(&mut h, relay, peer()),
        Got::Channel(c.ft, 0x4000),
        "permission refreshed at 250 s by ChannelBind"
    );
}

#[test]
fn refresh_zero_ends_routing_at_once() {
    let mut h = Harness::new(|_| {});
    let (c, relay) = bound(&mut h, 1);
    let a = h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(a.class(), Class::Success);
    assert_eq!(h.server.peer_route_count(), 0, "routes go with it");
    assert_eq!(got(&mut h, relay, peer()), Got::Dropped);
}

#[test]
fn allocation_expiry_ends_routing_before_the_timer_runs() {
    let mut h = Harness::new(|_| {});
    let (c, relay) = allocated(&mut h, 1);
    // ChannelBind every 250 s keeps the channel and the permission, not
    // the allocation (600 s).
    h.bind(&c, 0x4000, peer());
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(c.ft, 0x4000));
    rebind_after(&mut h, &c, 250);
    rebind_after(&mut h, &c, 250);
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(c.ft, 0x4000));
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"to the peer"),
        ClientOutput::ToPeer { .. }
    ));
    later(&mut h, Duration::from_secs(100));
    assert_eq!(got(&mut h, relay, peer()), Got::Dropped, "ended at 600 s");
    // The client's direction too: nothing relayed past the lifetime.
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"to the peer"),
        ClientOutput::None
    ));
    h.advance(Duration::ZERO);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.peer_route_count(), 0);
}

#[test]
fn relay_port_reused_by_another_allocation_gets_no_old_route() {
    // One relay port: the second allocation gets the first one's address.
    let mut h = Harness::new(|c| c.max_port = c.min_port);
    let (a, relay) = allocated(&mut h, 1);
    h.bind(&a, 0x4000, peer());
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(a.ft, 0x4000));
    let refresh = h.request(&a, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(refresh.class(), Class::Success);

    let (b, relay_b) = allocated(&mut h, 2);
    assert_eq!(relay_b, relay, "the same relayed address");
    dropped_until_permitted(&mut h, &b, relay);
    h.bind(&b, 0x4009, peer());
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(b.ft, 0x4009));

    // The same after an expiry and with the slot reused.
    h.advance(DEFAULT_ALLOCATION_LIFETIME);
    assert_eq!(h.server.allocation_count(), 0);
    let (c, relay_c) = allocated(&mut h, 3);
    assert_eq!(relay_c, relay);
    dropped_until_permitted(&mut h, &c, relay);
}

#[test]
fn admin_delete_and_close_all_end_routing() {
    let mut h = Harness::new(|_| {});
    let (a, relay_a) = allocated(&mut h, 1);
    let (b, relay_b) = allocated(&mut h, 2);
    h.bind(&a, 0x4000, peer());
    h.bind(&b, 0x4000, peer());
    assert_eq!(got(&mut h, relay_a, peer()), Got::Channel(a.ft, 0x4000));
    assert_eq!(got(&mut h, relay_b, peer()), Got::Channel(b.ft, 0x4000));
    let id = h.server.allocation(&a.ft).unwrap().id;
    assert!(h.server.delete_allocation_by_id(id, &mut h.io));
    assert_eq!(got(&mut h, relay_a, peer()), Got::Dropped);
    assert_eq!(got(&mut h, relay_b, peer()), Got::Channel(b.ft, 0x4000));
    h.server.close_all(&mut h.io);
    assert_eq!(got(&mut h, relay_b, peer()), Got::Dropped);
    assert_eq!(h.server.peer_route_count(), 0);
}

#[test]
fn reconfigure_revoking_a_peer_ends_its_route() {
    let mut h = Harness::new(|c| c.policy.allowed.push("10.9.0.0/16".parse().unwrap()));
    let (c, relay) = allocated(&mut h, 1);
    let internal: SocketAddr = "10.9.0.5:9".parse().unwrap();
    h.bind(&c, 0x4000, internal);
    h.bind(&c, 0x4001, peer());
    assert_eq!(got(&mut h, relay, internal), Got::Channel(c.ft, 0x4000));
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(c.ft, 0x4001));
    let mut fresh = h.server.config().clone();
    fresh.policy.allowed.clear();
    let now = h.now;
    assert_eq!(
        h.server.reconfigure(now, fresh),
        2,
        "permission and channel"
    );
    assert_eq!(got(&mut h, relay, internal), Got::Dropped);
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(c.ft, 0x4001));
}

#[test]
fn peer_spraying_from_many_ports_is_relayed_with_bounded_routes() {
    let mut h = Harness::new(|_| {});
    let (c, relay) = allocated(&mut h, 1);
    let (d, relay_d) = allocated(&mut h, 2);
    h.permit(&c, peer());
    h.bind(&d, 0x4000, peer());
    for port in 1..=5_000u16 {
        let from = SocketAddr::new(peer().ip(), port);
        assert_eq!(got(&mut h, relay, from), Got::Data(c.ft), "port {port}");
    }
    assert_eq!(h.server.peer_route_count(), MAX_PEER_ROUTES);
    // Another allocation's bound peer still gets its route and channel.
    assert_eq!(got(&mut h, relay_d, peer()), Got::Channel(d.ft, 0x4000));
    assert_eq!(h.server.peer_route_count(), MAX_PEER_ROUTES + 1);
    // Beyond the cap, the slow path still decides, and still right.
    assert_eq!(
        got(&mut h, relay, "192.0.2.10:7".parse().unwrap()),
        Got::Data(c.ft)
    );
    assert_eq!(
        got(&mut h, relay, "192.0.2.11:7".parse().unwrap()),
        Got::Dropped
    );
    assert_eq!(h.bind(&c, 0x4001, peer()).class(), Class::Success);
    assert_eq!(got(&mut h, relay, peer()), Got::Channel(c.ft, 0x4001));
    // The permissions lapse: their routes go with them.
    h.advance(PERMISSION_LIFETIME);
    assert_eq!(h.server.peer_route_count(), 0);
    assert!(h.server.compact() >= 1, "the route table shrinks");
}

#[test]
fn counters_and_padding_are_the_same_on_the_fast_path() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let c = Client {
        ft: FiveTuple {
            transport: Transport::Tcp,
            ..c.ft
        },
        ..c
    };
    assert_eq!(h.allocate(&c).class(), Class::Success);
    let relay = h.relay_of(&c);
    h.bind(&c, 0x4000, peer());
    for round in 0..3 {
        // Room for the padding after the datagram.
        let mut buf = [0xffu8; 4 + 5 + 3];
        buf[4..9].copy_from_slice(b"abcde");
        let now = h.now;
        let t = h
            .server
            .handle_peer_input(now, relay, peer(), &mut buf, 5, &mut h.out);
        let bytes = buf;
        assert_eq!(
            t,
            PeerOutput::ChannelData {
                to: c.ft,
                range: 0..12
            },
            "round {round}: padded to 4 bytes over TCP"
        );
        assert_eq!(&bytes[..9], [0x40, 0, 0, 5, b'a', b'b', b'c', b'd', b'e']);
        assert_eq!(&bytes[9..], [0, 0, 0]);
    }
    let other: SocketAddr = "192.0.2.10:6001".parse().unwrap();
    for _ in 0..2 {
        assert_eq!(got(&mut h, relay, other), Got::Data(c.ft));
    }
    let a = h.server.allocation(&c.ft).unwrap();
    assert_eq!((a.packets_to_client, a.bytes_to_client), (5, 3 * 5 + 2 * 7));
    let s = h.server.stats();
    assert_eq!((s.packets_to_client, s.bytes_to_client), (5, 29));
    assert_eq!(s.dropped_from_peer, 0);
}

#[test]
fn bandwidth_limit_holds_on_the_fast_path() {
    let mut h = Harness::new(|c| c.max_bps = 100_000);
    let (c, relay) = allocated(&mut h, 1);
    h.bind(&c, 0x4000, peer());
    let payload = vec![0u8; 1000];
    let relayed = (0..1000)
        .filter(|_| h.peer_sends(relay, peer(), &payload).0 != PeerOutput::None)
        .count();
    // Burst is max(100 kB, 64 KiB) = 100 kB: 100 datagrams of 1000 bytes.
    assert_eq!(relayed, 100);
    let s = h.server.stats();
    assert_eq!((s.dropped_bandwidth, s.dropped_from_peer), (900, 900));
    assert_eq!(h.server.peer_route_count(), 1);
}

#[test]
fn many_allocations_each_get_their_own_peers_as_slots_are_reused() {
    // 900 clients on one IP address: no limit on its 401 answers.
    let mut h = Harness::new(|c| c.unauth_rate = 0);
    let refresh_zero = |h: &mut Harness, c: &Client| {
        let a = h.request(c, Method::REFRESH, |w| {
            w.u32(AttributeType::LIFETIME, 0).unwrap()
        });
        assert_eq!(a.class(), Class::Success);
    };
    // 600 allocations, every peer routed.
    let mut live: Vec<(Client, SocketAddr)> = (1..=600).map(|p| permitted(&mut h, p)).collect();
    assert_eq!(h.server.peer_route_count(), 600);
    // All but the first end: their routes go, the empty slots with them.
    // (Past the 40 s of cached answers first: the harness's transaction
    // IDs repeat every 256 requests.)
    h.advance(TRANSACTION_LIFETIME);
    for (c, _) in live.drain(1..) {
        refresh_zero(&mut h, &c);
    }
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.peer_route_count(), 1);
    assert!(h.server.compact() >= 1);
    // New allocations take the freed slots (and relay ports): each peer
    // datagram goes to its own client, none to a former one.
    live.extend((601..=900).map(|p| permitted(&mut h, p)));
    for (c, relay) in &live {
        assert_eq!(got(&mut h, *relay, peer()), Got::Data(c.ft));
    }
    assert_eq!(h.server.peer_route_count(), 301);
}
