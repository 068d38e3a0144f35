//! Per-core sharding (`relay-threads`): several workers share one listening
//! address through `SO_REUSEPORT`, each with its own allocations. These tests
//! run turnd with 4 workers and check what must not change for a client:
//! every client's allocation relays, quotas and per-source limits count
//! across workers, an EVEN-PORT reservation can be claimed from another
//! worker, metrics and the admin API see every worker, SIGHUP reaches every
//! worker, and a second server cannot silently join the port group.
//!
//! Relay ports: `Suite::Workers` in `support::ports`.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use turnd::stun::{AttributeType, Method};

const WORKERS: &str = "4";
const TOKEN: &str = "admin-token-workers-0123";

/// turnd with the standard arguments, the relay ports of `slot`, four
/// workers, loopback peers, Prometheus and admin listeners, then `extra`.
fn relay_server(slot: u16, extra: &[&str]) -> Turnd {
    let (min, max) = relay_ports(Suite::Workers, slot);
    Turnd::standard(min, max)
        .args([
            "--relay-threads",
            WORKERS,
            "--allow-loopback-peers",
            "--admin-token",
            TOKEN,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(PROMETHEUS)
        .args(extra)
}

/// Workers that logged an allocation ("worker{n=K}" spans; the main
/// thread, which holds TCP and TLS clients, logs without a span).
fn workers_that_allocated(log: &str) -> HashSet<String> {
    log.lines()
        .filter(|l| l.contains("allocation created"))
        .map(|l| match l.find("worker{n=") {
            Some(i) => l[i..].split('}').next().unwrap_or("").to_owned(),
            None => "main".to_owned(),
        })
        .collect()
}

fn allocations_listed(admin: SocketAddr) -> Vec<serde_json::Value> {
    let r = http_get_bearer(admin, "/api/allocations", TOKEN);
    assert_eq!(r.status, 200, "{r:?}");
    r.json().as_array().expect("a JSON array").clone()
}

#[test]
fn every_client_relays_and_the_whole_process_is_observed() {
    let mut server = relay_server(0, &[]).start();
    let (min, max) = (server.min_port, server.max_port);
    let addr = server.udp();
    let prom = server.prometheus();
    let admin = server.admin();
    let peer = Peer::bind("127.0.0.1");

    // 24 clients, each its own 5-tuple: the kernel spreads them over workers.
    let mut clients = Vec::new();
    let mut relays = HashSet::new();
    for i in 0..24u32 {
        let mut c = Client::new(addr, USER, PASSWORD);
        let a = c.allocate();
        assert!(relays.insert(a.relay), "relay {} given twice", a.relay);
        assert!((min..=max).contains(&a.relay.port()), "{}", a.relay);
        c.channel_bind(0x4000, peer.addr()).expect_success();
        // Client -> peer through the channel, and back.
        let payload = i.to_be_bytes();
        c.channel_data(0x4000, &payload);
        let (from, got) = peer.recv(RESPONSE_TIMEOUT).expect("peer got data");
        assert_eq!(from, a.relay, "data left from the client's own relay");
        assert_eq!(got, payload);
        peer.send_to(&[0xAB; 7], a.relay);
        let (ch, back) = c.expect_channel_data(RESPONSE_TIMEOUT);
        assert_eq!((ch, back), (0x4000, vec![0xAB; 7]));
        clients.push(c);
    }
    let used = workers_that_allocated(&server.log());
    assert!(
        used.len() >= 2,
        "24 clients all landed on one worker ({used:?}): SO_REUSEPORT sharding is not in effect\n{}",
        server.log()
    );

    // Metrics add up every worker.
    let m = scrape_metrics(prom);
    assert_eq!(m.get("turnd_workers", &[]), 4.0, "{}", m.text);
    assert_eq!(
        m.get(
            "turnd_allocations",
            &[("transport", "udp"), ("family", "ipv4")]
        ),
        24.0
    );
    assert_eq!(m.get("turnd_channels", &[]), 24.0);
    assert_eq!(
        m.get(
            "turnd_relayed_packets_total",
            &[("direction", "client_to_peer")]
        ),
        24.0
    );
    assert_eq!(
        m.get(
            "turnd_relayed_packets_total",
            &[("direction", "peer_to_client")]
        ),
        24.0
    );
    // One pool for every worker: 100 ports, 24 taken.
    assert_eq!(
        m.get("turnd_relay_ports_free", &[("relay_ip", "127.0.0.1")]),
        76.0
    );

    // The admin API lists all 24 with distinct ids, and deletes on any worker.
    let list = allocations_listed(admin);
    assert_eq!(list.len(), 24, "{list:?}");
    let ids: HashSet<u64> = list.iter().filter_map(|a| a["id"].as_u64()).collect();
    assert_eq!(
        ids.len(),
        24,
        "allocation ids repeat across workers: {list:?}"
    );
    let auth = format!("Bearer {TOKEN}");
    for c in clients.iter_mut().take(8) {
        let me = c.local_addr().to_string();
        let id = list
            .iter()
            .find(|a| a["client"] == me.as_str())
            .and_then(|a| a["id"].as_u64())
            .expect("client listed");
        let d = http(
            admin,
            "DELETE",
            &format!("/api/allocations/{id}"),
            &[("Authorization", &auth)],
        );
        assert_eq!(d.status, 204, "delete {id}: {d:?}");
        c.refresh(Some(600)).expect_error(437);
    }
    assert_eq!(allocations_listed(admin).len(), 16);
    let status = http_get_bearer(admin, "/api/status", TOKEN).json();
    assert_eq!(status["allocations"], 16, "{status}");
    assert_eq!(status["workers"], 4, "{status}");

    // SIGTERM: every worker's allocations are closed and the process exits.
    server.signal("TERM");
    let st = server.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}");
    assert!(
        server.log().contains("allocations_closed=16"),
        "{}",
        server.log()
    );
}

#[test]
fn quotas_and_failure_limits_count_across_workers() {
    let mut server =
        relay_server(1, &["--user-quota", "3", "--auth-failures-per-minute", "4"]).start();
    let addr = server.udp();
    // Ten sockets of one user: exactly three allocations, whichever workers
    // the sockets are hashed to.
    let mut granted = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let mut c = Client::new(addr, USER, PASSWORD);
        let r = c.allocate_with(&[Attr::transport_udp()]);
        if r.is_success() {
            granted.push(c);
        } else {
            assert_eq!(r.error_code(), Some(486), "{r:?}");
            refused += 1;
        }
    }
    assert_eq!((granted.len(), refused), (3, 7), "{}", server.log());
    // Releasing one on its worker frees quota for a socket on any worker.
    granted[0].refresh(Some(0)).expect_success();
    let mut again = 0;
    for _ in 0..4 {
        let mut c = Client::new(addr, USER, PASSWORD);
        if c.allocate_with(&[Attr::transport_udp()]).is_success() {
            again += 1;
            granted.push(c);
        }
    }
    assert_eq!(again, 1);

    // Wrong passwords from 127.0.0.2, each from a new port (spread over
    // workers): the 4-per-minute budget is one budget for the address.
    let mut answered = 0;
    for _ in 0..8 {
        let mut bad = Client::new_on("127.0.0.2", addr, USER, "wrong");
        bad.fetch_nonce();
        let (_tid, b) = bad.build_request(Method::ALLOCATE, &[Attr::transport_udp()], true);
        bad.send_raw(&b);
        if bad.recv_raw(Duration::from_millis(500)).is_some() {
            answered += 1;
        }
    }
    assert_eq!(
        answered, 4,
        "wrong-password answers to one address over 4 workers"
    );
    assert!(server.is_running());
}

#[test]
fn a_reservation_token_is_claimed_from_any_worker_and_sighup_reaches_all() {
    let dir = TempDir::new("workers-reload");
    let file = dir.join("turnd.toml");
    std::fs::write(&file, "user = [\"carol:one\"]\n").unwrap();
    let file_s = file.to_string_lossy().into_owned();
    let mut server = relay_server(2, &["--config", &file_s]).start();
    let addr = server.udp();

    // EVEN-PORT with the R bit on one socket, then Allocates with its
    // RESERVATION-TOKEN from other sockets: each must get port + 1 (the
    // first new socket claims it; later ones find it taken).
    let mut first = Client::new(addr, USER, PASSWORD);
    let r = first.allocate_with(&[
        Attr::transport_udp(),
        Attr::Raw(AttributeType::EVEN_PORT, vec![0x80]),
    ]);
    r.expect_success();
    let relay = r
        .xor_addr(AttributeType::XOR_RELAYED_ADDRESS)
        .expect("relayed address");
    assert_eq!(relay.port() % 2, 0);
    let token = r
        .get(AttributeType::RESERVATION_TOKEN)
        .expect("RESERVATION-TOKEN");
    let mut second = Client::new(addr, USER, PASSWORD);
    let r2 = second.allocate_with(&[
        Attr::transport_udp(),
        Attr::Raw(AttributeType::RESERVATION_TOKEN, token.clone()),
    ]);
    r2.expect_success();
    assert_eq!(
        r2.xor_addr(AttributeType::XOR_RELAYED_ADDRESS),
        Some(SocketAddr::new(relay.ip(), relay.port() + 1))
    );
    let mut third = Client::new(addr, USER, PASSWORD);
    third
        .allocate_with(&[
            Attr::transport_udp(),
            Attr::Raw(AttributeType::RESERVATION_TOKEN, token.clone()),
        ])
        .expect_error(508);

    // SIGHUP with a new user: every worker knows him (ten sockets, spread).
    std::fs::write(&file, "user = [\"carol:one\", \"dave:two\"]\n").unwrap();
    server.signal("HUP");
    assert!(server.wait_for_log("configuration reloaded", 1, Duration::from_secs(5)));
    for i in 0..10 {
        let mut d = Client::new(addr, "dave", "two");
        let r = d.allocate_with(&[Attr::transport_udp()]);
        assert!(r.is_success(), "dave #{i} after SIGHUP: {r:?}");
    }
}

#[test]
fn a_second_server_cannot_join_the_port_group() {
    let mut a = relay_server(3, &[]).start();
    let port = a.udp().port().to_string();
    let mut b = relay_server(4, &[]).set("--listening-port", &port).spawn();
    let st = b.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| !s.success()),
        "a second turnd on udp port {port} did not fail: {st:?}"
    );
    assert!(b.log().contains("Address already in use"), "{}", b.log());
    assert!(a.is_running());
}
