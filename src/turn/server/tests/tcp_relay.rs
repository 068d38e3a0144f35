//! RFC 6062 TCP relays.

use super::*;
use std::sync::Arc;

#[test]
fn tcp_relay_connect_attempt_and_bind() {
    let mut h = Harness::new(|_| {});
    // RFC 6062 needs a TCP or TLS client connection.
    let c = h.tcp_relay_client(1);
    let relay = h.relay_of(&c);

    // Connect: no answer until the shell reports the TCP outcome.
    let tid = h.tid();
    let b = h.build(Method::CONNECT, tid, Some(&c), |w| {
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
            .unwrap()
    });
    assert_eq!(h.input(c.ft, &b), ClientOutput::None);
    let (r, p, id) = h.io.connects[0];
    assert_eq!((r, p), (relay, peer()));
    let again = h.request(&c, Method::CONNECT, |w| {
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
            .unwrap()
    });
    assert_eq!(again.code(), Some(446), "a second Connect to the same peer");
    let now = h.now;
    let t = h
        .server
        .handle_tcp_connect_result(now, id, true, &mut h.out, &mut h.io);
    let Some(Reply { to, len }) = t else {
        panic!("{t:?}")
    };
    assert_eq!(to, c.ft);
    let resp = Message::parse(&h.out[..len]).unwrap();
    assert_eq!(
        (resp.method(), resp.class()),
        (Method::CONNECT, Class::Success)
    );
    assert_eq!(resp.transaction_id(), tid);
    assert_eq!(resp.get_u32(AttributeType::CONNECTION_ID), Some(id));
    assert!(resp.check_integrity(&c.key));

    // ConnectionBind on a new connection by the same user binds it, once.
    let data_ft = FiveTuple {
        transport: Transport::Tcp,
        ..ft(2)
    };
    let data = Client {
        ft: data_ft,
        user: "alice",
        key: c.key,
        nonce: h.client(2, "alice", "secret").nonce,
    };
    let bound = h.request(&data, Method::CONNECTION_BIND, |w| {
        w.u32(AttributeType::CONNECTION_ID, id).unwrap()
    });
    assert_eq!(bound.class(), Class::Success);
    assert_eq!(bound.connection_bound, Some(id));
    let data2 = Client {
        ft: FiveTuple {
            transport: Transport::Tcp,
            ..ft(3)
        },
        user: "alice",
        key: c.key,
        nonce: h.client(3, "alice", "secret").nonce,
    };
    let twice = h.request(&data2, Method::CONNECTION_BIND, |w| {
        w.u32(AttributeType::CONNECTION_ID, id).unwrap()
    });
    assert_eq!(twice.code(), Some(400));

    // An incoming peer connection needs a permission.
    let now = h.now;
    assert!(h
        .server
        .handle_peer_connection(now, relay, "192.0.2.99:5555".parse().unwrap(), &mut h.out)
        .is_none());
    let ConnectionAttempt {
        connection_id: id2,
        to,
        len,
    } = h
        .server
        .handle_peer_connection(now, relay, "192.0.2.10:7777".parse().unwrap(), &mut h.out)
        .unwrap();
    assert_eq!(to, c.ft);
    let ind = Message::parse(&h.out[..len]).unwrap();
    assert_eq!(ind.method(), Method::CONNECTION_ATTEMPT);
    assert_eq!(ind.get_u32(AttributeType::CONNECTION_ID), Some(id2));
    h.advance(TCP_CONNECTION_BIND_TIMEOUT + Duration::from_secs(1));
    assert!(
        h.io.closed_tcp.contains(&id2),
        "not bound within 30 s: closed"
    );

    // Over UDP, a TCP relay is a bad request.
    let u = h.client(9, "alice", "secret");
    let r = h.request(&u, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
    });
    assert_eq!(r.code(), Some(400));
}

/// A TCP allocation of alice with one connection to `peer()`, bound to a
/// data connection: (the control client, the connection id).
fn bound_tcp_connection(h: &mut Harness) -> (Client, u32) {
    let tcp_ft = FiveTuple {
        transport: Transport::Tcp,
        ..ft(1)
    };
    let c = Client {
        ft: tcp_ft,
        ..h.client(1, "alice", "secret")
    };
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
    });
    assert_eq!(a.class(), Class::Success);
    let b = {
        let tid = h.tid();
        h.build(Method::CONNECT, tid, Some(&c), |w| {
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
                .unwrap()
        })
    };
    assert_eq!(h.input(c.ft, &b), ClientOutput::None);
    let (_, _, id) = h.io.connects[0];
    let now = h.now;
    assert!(h
        .server
        .handle_tcp_connect_result(now, id, true, &mut h.out, &mut h.io)
        .is_some());
    let data = Client {
        ft: FiveTuple {
            transport: Transport::Tcp,
            ..ft(2)
        },
        ..h.client(2, "alice", "secret")
    };
    let bound = h.request(&data, Method::CONNECTION_BIND, |w| {
        w.u32(AttributeType::CONNECTION_ID, id).unwrap()
    });
    assert_eq!(bound.connection_bound, Some(id));
    (c, id)
}

#[test]
fn tcp_pipe_bytes_count_in_stats_and_user_totals() {
    let mut h = Harness::new(|_| {});
    let (c, id) = bound_tcp_connection(&mut h);
    let now = h.now;
    assert!(h.server.account_tcp_pipe(now, id, true, 1000));
    assert!(h.server.account_tcp_pipe(now, id, false, 300));
    assert!(h.server.account_tcp_pipe(now, id, false, 200));
    let s = h.server.stats();
    assert_eq!((s.bytes_to_peer, s.packets_to_peer), (1000, 1));
    assert_eq!((s.bytes_to_client, s.packets_to_client), (500, 2));
    let a = h.server.allocation(&c.ft).unwrap();
    assert_eq!((a.bytes_to_peer, a.bytes_to_client), (1000, 500));
    assert_eq!(h.server.user_bytes()[&Arc::from("alice")], (1000, 500));
    // An unknown connection is allowed (the shell cuts it) and not counted.
    assert!(h.server.account_tcp_pipe(now, id + 1000, true, 50));
    assert_eq!(h.server.stats().bytes_to_peer, 1000);
}

#[test]
fn tcp_pipe_is_throttled_by_max_bps_not_dropped() {
    // 100,000 B/s, burst one second's worth.
    let mut h = Harness::new(|c| c.max_bps = 100_000);
    let (_, id) = bound_tcp_connection(&mut h);
    let now = h.now;
    let mut allowed = 0;
    while h.server.account_tcp_pipe(now, id, true, 16_384) {
        allowed += 16_384;
    }
    assert_eq!(allowed, 98_304, "the burst goes at once, then it waits");
    assert_eq!(h.server.stats().bytes_to_peer, 98_304);
    assert_eq!(
        h.server.stats().dropped_bandwidth,
        0,
        "a refused chunk is held by the shell, not dropped"
    );
    // The other direction has its own bucket.
    assert!(h.server.account_tcp_pipe(now, id, false, 16_384));
    // After 0.2 s, 20,000 bytes more (21,696 in all): one chunk of 16 KiB, not two.
    let later = now + Duration::from_millis(200);
    assert!(h.server.account_tcp_pipe(later, id, true, 16_384));
    assert!(!h.server.account_tcp_pipe(later, id, true, 16_384));
}

#[test]
fn tcp_pipe_is_throttled_by_bps_capacity() {
    let mut h = Harness::new(|c| c.bps_capacity = 100_000);
    let (_, id) = bound_tcp_connection(&mut h);
    let now = h.now;
    let mut allowed = 0;
    while h.server.account_tcp_pipe(now, id, false, 8_192) {
        allowed += 8_192;
    }
    assert_eq!(allowed, 98_304);
}

/// A TCP relay has no UDP socket: a Send indication or ChannelData on its
/// control connection is dropped, never routed as a datagram from the TCP
/// relay's address (found by the server_sequence fuzz target).
#[test]
fn tcp_relay_sends_no_datagrams() {
    let mut h = Harness::new(|_| {});
    let c = h.tcp_relay_client(1);
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);
    let before = h.server.stats();
    assert_eq!(
        h.send_indication(&c, peer(), b"datagram"),
        ClientOutput::None
    );
    let bound = h.bind(&c, 0x4001, peer());
    if bound.class() == Class::Success {
        assert_eq!(h.channel_data(&c, 0x4001, b"datagram"), ClientOutput::None);
    }
    let after = h.server.stats();
    assert_eq!(after.packets_to_peer, before.packets_to_peer);
    assert_eq!(after.bytes_to_peer, before.bytes_to_peer);
}
