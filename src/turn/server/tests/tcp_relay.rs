//! RFC 6062 TCP relays.

use super::*;

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
