//! Workers of one process sharing nonces, quotas, ports and reservations.

use super::*;

/// Two workers of one process: same seed and epoch, one [`SharedState`].
fn sharded_pair(tweak: impl Fn(&mut ServerConfig)) -> (Harness, Harness) {
    let mut a = Harness::new(&tweak);
    let config = a.server.config().clone();
    let shared = SharedState::new(&config);
    let mut b = Harness::new(&tweak);
    b.now = a.now;
    b.server = Server::new(config, a.now, 1_700_000_000, [7; 32]);
    a.server.set_shard(0, 2, &shared);
    b.server.set_shard(1, 2, &shared);
    (a, b)
}

#[test]
fn workers_share_nonces_quotas_ports_and_reservations() {
    let (mut w0, mut w1) = sharded_pair(|c| c.user_quota = 4);
    let free = w0.server.free_ports("203.0.113.1".parse().unwrap());
    // A nonce from worker 0 is accepted by worker 1 (same key and epoch).
    let c = w0.client(1, "alice", "secret");
    assert_eq!(w1.allocate(&c).class(), Class::Success);
    let d = w0.client(2, "alice", "secret");
    assert_eq!(w0.allocate(&d).class(), Class::Success);
    let ids = (
        w1.server.allocation(&c.ft).unwrap().id,
        w0.server.allocation(&d.ft).unwrap().id,
    );
    assert_ne!(ids.0, ids.1, "allocation ids must be unique per process");
    // Both took ports from the one pool.
    assert_eq!(
        w1.server.free_ports("203.0.113.1".parse().unwrap()),
        free - 2
    );
    // EVEN-PORT R on worker 0; the token is claimed on worker 1. Three
    // allocations of alice and the reservation: the quota is reached on
    // both workers.
    let e = w0.client(3, "alice", "secret");
    let a = w0.request(&e, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    let relay = w0.relay_of(&e);
    let token = a
        .msg()
        .get(AttributeType::RESERVATION_TOKEN)
        .unwrap()
        .to_vec();
    let f = w1.client(4, "alice", "secret");
    let over = w1.allocate(&f);
    assert_eq!(over.code(), Some(486), "user quota counts both workers");
    // Claiming the token takes the reservation's slot, not another one.
    let b = w1.request(&f, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &token)
            .unwrap();
    });
    assert_eq!(b.class(), Class::Success, "token claimed on another worker");
    assert_eq!(w1.relay_of(&f).port(), relay.port() + 1);
    let g = w1.client(5, "alice", "secret");
    assert_eq!(w1.allocate(&g).code(), Some(486));
    // Worker 0's reservation timer finds the token claimed and frees nothing.
    let before = w0.server.free_ports(relay.ip());
    w0.advance(Duration::from_secs(31));
    assert_eq!(w0.server.free_ports(relay.ip()), before);
}

#[test]
fn shard_splits_only_the_bandwidth_capacity() {
    let c = ServerConfig {
        bps_capacity: 1_000_001,
        min_port: 50000,
        max_port: 50999,
        ..ServerConfig::default()
    };
    let s = c.shard(4);
    assert_eq!(s.bps_capacity, 250_001);
    assert_eq!((s.min_port, s.max_port), (50000, 50999));
    assert_eq!(c.shard(1).bps_capacity, 1_000_001);
}
