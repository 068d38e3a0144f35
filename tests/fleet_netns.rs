//! Issue 13, section 5: three nodes and one Redis, each node in its own
//! network namespace. The test makes three namespaces joined by a bridge
//! in its own namespace (documentation addresses: 192.0.2.0/24 cut into
//! /28s, one per test, and 2001:db8::/32), runs one turnd in each
//! (`ip netns exec`) and one `redis-server` on the bridge, and shows over
//! that link, with clients and peers on the bridge's address:
//!
//! - a user added in Redis authenticates on all three nodes (IPv4 and
//!   IPv6), and deleting it refuses it on all three within a second;
//! - a per-user quota of 2 holds across the nodes;
//! - with Redis stopped every node keeps relaying and authenticating the
//!   users it knew, and with Redis back the quota holds again;
//! - node C's admin API lists the allocations of A and B, and a revocation
//!   from C ends them on both;
//! - node A draining keeps relaying its allocations and answers a new
//!   Allocate with 300 Try Alternate naming node B, where the client
//!   allocates (after a fresh nonce: B does not take A's, see the test).
//!
//! The times changes take to reach the nodes are printed (`propagation`).
//! The Chromium parts (a call across two nodes, draining) are in
//! `tests/browser/fleet.test.mjs`.
//!
//! Needs root, `ip` and `redis-server` inside a private network namespace
//! (the suite runs in `unshare --net`); fails, never skips, without them.
//! Relay ports: `Suite::FleetNetns` (one slot per node).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "fleet-netns-admin-token-0123456789";
/// The longest a test waits for a change to reach every node (a bound).
const PROPAGATION: Duration = Duration::from_secs(5);
/// What issue 13 asks of a deletion: refused everywhere within a second.
const DELETION_BOUND: Duration = Duration::from_secs(1);
/// The nodes' names, in the order of [`Fleet::nodes`].
const NAMES: [&str; 3] = ["a", "b", "c"];
/// Redis's port on the bridge address.
const REDIS_PORT: u16 = 6379;
/// Every node listens on the default TURN port, alone in its namespace.
const TURN_PORT: u16 = 3478;

/// Three turnd nodes, each alone in a network namespace on one bridge, and
/// a `redis-server` on the bridge's own address. Fields drop in order:
/// the nodes, Redis, then the namespaces.
struct Fleet {
    nodes: Vec<TestServer>,
    /// Each node's UDP listener on IPv4 and IPv6.
    udp4: Vec<SocketAddr>,
    udp6: Vec<SocketAddr>,
    redis: RedisServer,
    /// The bridge's IPv4 and IPv6 addresses (clients and peers bind them).
    here4: String,
    here6: String,
    _net: netns::Bridged,
}

impl Fleet {
    /// Fleet number `k` (1..=5, one per test: its /28 of 192.0.2.0/24,
    /// 2001:db8:k::/64, relay port slots `3(k-1)..3k`), every node started
    /// with `extra`. Each node names the next one (a to b, b to c, c to
    /// a) as its `alternate-server`.
    fn start(k: u16, extra: &[&str]) -> Fleet {
        assert!((1..=5).contains(&k));
        let v4 = |h: u16| format!("192.0.2.{}", 16 * k + h);
        let v6 = |h: u16| format!("2001:db8:{k}::{h}");
        let hosts: Vec<[String; 2]> = (2..5)
            .map(|h| [format!("{}/28", v4(h)), format!("{}/64", v6(h))])
            .collect();
        let hosts: Vec<Vec<&str>> = hosts
            .iter()
            .map(|h| h.iter().map(String::as_str).collect())
            .collect();
        let hosts: Vec<&[&str]> = hosts.iter().map(Vec::as_slice).collect();
        let tag = char::from_digit(u32::from(k), 16).unwrap();
        let net = netns::Bridged::new(
            tag,
            &[&format!("{}/28", v4(1)), &format!("{}/64", v6(1))],
            &hosts,
        );
        let redis = RedisServer::start_at(&v4(1), REDIS_PORT);
        let mut nodes = Vec::new();
        let (mut udp4, mut udp6) = (Vec::new(), Vec::new());
        for (i, ns) in net.namespaces.iter().enumerate() {
            let (ip4, ip6) = (v4(2 + i as u16), v6(2 + i as u16));
            let (min, max) = relay_ports(Suite::FleetNetns, 3 * (k - 1) + i as u16);
            let mut n = Turnd::standard(min, max)
                .in_netns(ns)
                .set("--listening-ip", &ip4)
                .set("--relay-ip", &ip4)
                .set("--listening-port", TURN_PORT.to_string())
                .args(["--listening-ip", &ip6])
                .args(["--alternate-server", &v4(2 + (i as u16 + 1) % 3)])
                .args(["--server-name", NAMES[i], "--redis-userdb", &redis.url()])
                .args(["--allowed-peer-ip", "192.0.2.0/24"])
                .args(["--auth-failures-per-minute", "0"])
                .args([
                    "--admin-token",
                    TOKEN,
                    "--admin-listen",
                    &format!("{ip4}:0"),
                ])
                .args(extra)
                .start();
            udp4.push(listening(&mut n, &ip4));
            udp6.push(listening(&mut n, &format!("[{ip6}]")));
            nodes.push(n);
        }
        Fleet {
            nodes,
            udp4,
            udp6,
            here4: v4(1),
            here6: v6(1),
            redis,
            _net: net,
        }
    }

    /// `turnd user --redis-userdb URL --realm REALM args...`, run here.
    #[track_caller]
    fn user_cli(&self, args: &[&str]) -> String {
        let url = self.redis.url();
        let mut all = vec!["user", "--redis-userdb", &url, "--realm", REALM];
        all.extend_from_slice(args);
        run_turnd_ok(&all)
    }

    /// A client on the bridge's IPv4 address, for node `i`.
    fn client(&self, i: usize, user: &str, password: &str) -> Client {
        Client::new_on(&self.here4, self.udp4[i], user, password)
    }

    /// One Allocate as `user` on node `i`; the client keeps the
    /// allocation. The error code, or None when granted.
    fn try_allocate(&self, i: usize, user: &str, password: &str) -> (Client, Option<u16>) {
        let mut c = self.client(i, user, password);
        let r = c.allocate_with(&[Attr::transport_udp()]);
        let code = r.error_code();
        if code.is_none() {
            Client::allocated(r);
        }
        (c, code)
    }

    /// A granted allocation on node `i`, and its relayed address.
    #[track_caller]
    fn allocation(&self, i: usize, user: &str, password: &str) -> (Client, SocketAddr) {
        let mut c = self.client(i, user, password);
        let relay = c.allocate().relay;
        assert_eq!(relay, SocketAddr::new(self.udp4[i].ip(), relay.port()));
        (c, relay)
    }

    /// True when `user` can allocate on node `i` (over IPv6 when `v6`); the
    /// allocation is deleted again. False on 401.
    #[track_caller]
    fn allocates(&self, i: usize, v6: bool, user: &str, password: &str) -> bool {
        let (here, server) = match v6 {
            false => (&self.here4, self.udp4[i]),
            true => (&self.here6, self.udp6[i]),
        };
        allocates_on(here, server, user, password)
    }

    /// Waits (see [`propagates`]) until an Allocate as `user` gets 486 on
    /// every node of `nodes`. A node reads the others' counts within a tick
    /// of a change; an Allocate inside that window may still be granted
    /// (the race the README states): it is given back, and counted.
    #[track_caller]
    fn quota_reached(&self, what: &str, nodes: &[usize], user: &str, password: &str) {
        let mut early = 0;
        propagates(what, || {
            nodes.iter().fold(true, |refused, &i| {
                let (mut c, e) = self.try_allocate(i, user, password);
                if e.is_none() {
                    early += 1;
                    c.refresh(Some(0)).expect_success();
                }
                refused && e == Some(486)
            })
        });
        println!("{what}: granted inside the propagation window: {early}");
    }

    /// Node `i`'s admin API.
    fn admin(&mut self, i: usize) -> SocketAddr {
        self.nodes[i].admin()
    }
}

/// Waits until `cond` holds, printing how long that took; panics after
/// [`PROPAGATION`]. The time.
#[track_caller]
fn propagates(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    assert!(
        wait_until(PROPAGATION, &mut cond),
        "{what}: not seen within {PROPAGATION:?}"
    );
    let took = t.elapsed();
    println!("propagation: {what}: {} ms", took.as_millis());
    took
}

/// Polls every node with `seen(i)` until it held on each (once held, a
/// node is not asked again); prints and returns each node's time, panics
/// after [`PROPAGATION`].
#[track_caller]
fn per_node(what: &str, mut seen: impl FnMut(usize) -> bool) -> [Duration; 3] {
    let t = Instant::now();
    let mut at: [Option<Duration>; 3] = [None; 3];
    wait_until(PROPAGATION, || {
        for (i, a) in at.iter_mut().enumerate() {
            if a.is_none() && seen(i) {
                *a = Some(t.elapsed());
            }
        }
        at.iter().all(Option::is_some)
    });
    let at = at.map(|a| a.unwrap_or_else(|| panic!("{what}: not on every node ({at:?})")));
    let ms: Vec<String> = (0..3)
        .map(|i| format!("{} {} ms", NAMES[i], at[i].as_millis()))
        .collect();
    println!("propagation: {what}: {}", ms.join(", "));
    at
}

/// `c` (allocated, relayed address `relay`) and `peer` exchange a
/// datagram each way through the relay: a Data indication out, a plain
/// datagram back.
#[track_caller]
fn relays(c: &mut Client, relay: SocketAddr, peer: &Peer, tag: &str) {
    c.create_permission(&[peer.addr()]).expect_success();
    let out = format!("{tag}: client to peer");
    c.send_indication(peer.addr(), out.as_bytes());
    let (from, got) = peer.recv(RESPONSE_TIMEOUT).unwrap_or_else(|| {
        panic!("{tag}: nothing reached the peer through {relay}");
    });
    assert_eq!((from, got.as_slice()), (relay, out.as_bytes()), "{tag}");
    let back = format!("{tag}: peer to client");
    peer.send_to(back.as_bytes(), relay);
    let (p, data) = c.expect_data(RESPONSE_TIMEOUT);
    assert_eq!(
        (p, data.as_slice()),
        (peer.addr(), back.as_bytes()),
        "{tag}"
    );
}

/// The fleet-wide allocation list from the admin API at `admin`.
fn fleet_list(admin: SocketAddr) -> Vec<serde_json::Value> {
    let r = http_get_bearer(admin, "/api/fleet/allocations", TOKEN);
    assert_eq!(r.status, 200, "{r:?}");
    r.json().as_array().expect("a JSON array").clone()
}

#[test]
fn a_user_added_in_redis_authenticates_on_all_three_nodes_and_deleting_it_refuses_it_within_a_second(
) {
    let f = Fleet::start(1, &[]);
    for i in 0..NAMES.len() {
        assert!(!f.allocates(i, false, "bob", "pw-bob"));
    }
    f.user_cli(&["add", "bob", "pw-bob"]);
    per_node("user added, authenticates (IPv4)", |i| {
        f.allocates(i, false, "bob", "pw-bob")
    });
    for (i, name) in NAMES.iter().enumerate() {
        assert!(f.allocates(i, true, "bob", "pw-bob"), "{} over IPv6", name);
        assert!(!f.allocates(i, false, "bob", "wrong"));
    }

    f.user_cli(&["delete", "bob"]);
    let at = per_node("user deleted, refused", |i| {
        !f.allocates(i, false, "bob", "pw-bob")
    });
    // Refused for good, on both families.
    for i in 0..NAMES.len() {
        assert!(!f.allocates(i, false, "bob", "pw-bob"));
        assert!(!f.allocates(i, true, "bob", "pw-bob"));
    }
    let slowest = at.into_iter().max().unwrap();
    assert!(
        slowest < DELETION_BOUND,
        "a deleted user was still accepted after {slowest:?} (issue 13: within a second)"
    );
    // The configuration's own user was never in Redis and stays.
    for i in 0..NAMES.len() {
        assert!(f.allocates(i, false, USER, PASSWORD));
    }
}

#[test]
fn a_user_quota_of_two_holds_across_the_three_nodes() {
    let f = Fleet::start(2, &["--user-quota", "2"]);
    let (_on_a, e) = f.try_allocate(0, USER, PASSWORD);
    assert_eq!(e, None);
    let (mut on_b, e) = f.try_allocate(1, USER, PASSWORD);
    assert_eq!(e, None);
    f.quota_reached(
        "the third allocation is refused on every node",
        &[0, 1, 2],
        USER,
        PASSWORD,
    );
    for _ in 0..3 {
        for (i, name) in NAMES.iter().enumerate() {
            let (_c, e) = f.try_allocate(i, USER, PASSWORD);
            assert_eq!(e, Some(486), "over the fleet-wide quota on {}", name);
        }
    }
    // One ends on b: c can grant one again, and then nobody can.
    on_b.refresh(Some(0)).expect_success();
    let mut held = None;
    propagates("a slot freed on b is usable on c", || {
        let (c, e) = f.try_allocate(2, USER, PASSWORD);
        held = e.is_none().then_some(c);
        held.is_some()
    });
    propagates("full again, refused on b", || {
        f.try_allocate(1, USER, PASSWORD).1 == Some(486)
    });
}

#[test]
fn with_redis_stopped_every_node_relays_and_authenticates_and_restarted_the_quota_recovers() {
    let mut f = Fleet::start(3, &["--user-quota", "2"]);
    let peer = Peer::bind(&f.here4);
    f.user_cli(&["add", "gina", "pw-gina"]);
    per_node("gina known", |i| f.allocates(i, false, "gina", "pw-gina"));
    // A call on every node: gina's on a, alice's on b and c.
    let mut calls = [
        f.allocation(0, "gina", "pw-gina"),
        f.allocation(1, USER, PASSWORD),
        f.allocation(2, USER, PASSWORD),
    ];
    for (i, (c, relay)) in calls.iter_mut().enumerate() {
        relays(c, *relay, &peer, &format!("{} before", NAMES[i]));
    }
    let admins: Vec<SocketAddr> = (0..3).map(|i| f.admin(i)).collect();
    for a in &admins {
        let r = http_get_bearer(*a, "/readyz", TOKEN);
        assert!(r.body.contains("redis: reachable"), "{r:?}");
    }

    f.redis.stop();
    per_node("Redis stopped, /readyz says unreachable", |i| {
        let r = http_get_bearer(admins[i], "/readyz", TOKEN);
        r.status == 200 && r.body.contains("redis: unreachable")
    });
    for (i, (c, relay)) in calls.iter_mut().enumerate() {
        relays(c, *relay, &peer, &format!("{} without Redis", NAMES[i]));
        c.refresh(Some(600)).expect_success();
    }
    for (i, name) in NAMES.iter().enumerate() {
        assert!(
            f.allocates(i, false, "gina", "pw-gina"),
            "{}: a user read before Redis went away authenticates",
            name
        );
    }
    // gina's second, on b: her quota is full once Redis counts again.
    let (mut g2, e) = f.try_allocate(1, "gina", "pw-gina");
    assert_eq!(e, None);

    // Redis comes back empty: the users are written again, as an operator
    // restoring it would, and every node republishes its counts.
    f.redis.restart();
    f.user_cli(&["add", "gina", "pw-gina"]);
    propagates("a and b republish gina's counts", || {
        f.redis.cli(&["HGET", "turnd/node/a/users", "gina"]).trim() == "1"
            && f.redis.cli(&["HGET", "turnd/node/b/users", "gina"]).trim() == "1"
    });
    f.quota_reached(
        "the quota holds again: gina refused on c",
        &[2],
        "gina",
        "pw-gina",
    );
    for a in &admins {
        let r = http_get_bearer(*a, "/readyz", TOKEN);
        assert!(r.body.contains("redis: reachable"), "{r:?}");
    }
    g2.refresh(Some(0)).expect_success();
    propagates("a slot freed on b is usable on c", || {
        let (mut c, e) = f.try_allocate(2, "gina", "pw-gina");
        if e.is_none() {
            c.refresh(Some(0)).expect_success();
        }
        e.is_none()
    });
    for (i, (c, relay)) in calls.iter_mut().enumerate() {
        relays(
            c,
            *relay,
            &peer,
            &format!("{} after Redis is back", NAMES[i]),
        );
    }
}

#[test]
fn node_c_lists_the_allocations_of_a_and_b_and_a_revocation_from_c_ends_them_on_both() {
    let mut f = Fleet::start(4, &[]);
    let peer = Peer::bind(&f.here4);
    let admin_c = f.admin(2);
    f.user_cli(&["add", "frank", "pw-frank"]);
    per_node("frank known", |i| {
        f.allocates(i, false, "frank", "pw-frank")
    });
    let (mut fa, relay_a) = f.allocation(0, "frank", "pw-frank");
    let (mut fb, relay_b) = f.allocation(1, "frank", "pw-frank");
    let (mut keep, relay_keep) = f.allocation(0, USER, PASSWORD);
    relays(&mut fa, relay_a, &peer, "frank on a");
    relays(&mut fb, relay_b, &peer, "frank on b");
    relays(&mut keep, relay_keep, &peer, "alice on a");

    let mut list = Vec::new();
    propagates("node c's admin API lists a's and b's allocations", || {
        list = fleet_list(admin_c);
        list.len() == 3
    });
    let mut seen: Vec<(String, String, String)> = list
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("node"), s("user"), s("client"))
        })
        .collect();
    seen.sort();
    let want =
        |n: &str, u: &str, c: &Client| (n.to_owned(), u.to_owned(), c.local_addr().to_string());
    let mut expected = vec![
        want("a", "frank", &fa),
        want("a", USER, &keep),
        want("b", "frank", &fb),
    ];
    expected.sort();
    assert_eq!(seen, expected, "{list:?}");

    // Revoked for 60 s from node c.
    let auth = format!("Bearer {TOKEN}");
    let target = "/api/fleet/users/frank?seconds=60";
    let r = http(admin_c, "DELETE", target, &[("Authorization", &auth)]);
    assert_eq!(r.status, 202, "{r:?}");
    propagates("frank's allocations on a and b end", || {
        let l = fleet_list(admin_c);
        l.len() == 1 && l[0]["user"] == USER
    });
    for (n, c) in [(0, &mut fa), (1, &mut fb)] {
        // The name is refused, and the relay carries nothing more.
        c.refresh(Some(600)).expect_error(401);
        assert!(!f.allocates(n, false, "frank", "pw-frank"));
    }
    peer.send_to(b"after the revocation", relay_a);
    peer.send_to(b"after the revocation", relay_b);
    fa.expect_silence(SILENCE);
    fb.expect_silence(SILENCE);
    fa.send_indication(peer.addr(), b"after the revocation");
    fb.send_indication(peer.addr(), b"after the revocation");
    peer.expect_silence(SILENCE);
    for n in &f.nodes[..2] {
        assert!(n.log().contains("revoked"), "{}", n.log());
    }
    // alice's allocation on a was not touched.
    keep.refresh(Some(600)).expect_success();
    relays(&mut keep, relay_keep, &peer, "alice on a, after");
}

#[test]
fn node_a_draining_keeps_relaying_and_sends_a_new_client_to_node_b() {
    let f = Fleet::start(5, &["--drain-timeout", "60"]);
    let peer = Peer::bind(&f.here4);
    let (mut call, relay) = f.allocation(0, USER, PASSWORD);
    relays(&mut call, relay, &peer, "a before draining");
    // A client that holds a nonce of A's, as Chromium does when A answers
    // its signed Allocate.
    let mut late = f.client(0, USER, PASSWORD);
    late.fetch_nonce();

    f.nodes[0].signal("TERM");
    assert!(
        f.nodes[0].wait_for_log("draining: no new allocations", 1, PROPAGATION),
        "{}",
        f.nodes[0].log()
    );
    relays(&mut call, relay, &peer, "a draining");
    call.refresh(Some(600)).expect_success();
    relays(&mut call, relay, &peer, "a draining, refreshed");

    let r = late.allocate_with(&[Attr::transport_udp()]);
    r.expect_error(300);
    assert!(
        r.integrity_ok(&late.key()),
        "the 300 carries MESSAGE-INTEGRITY"
    );
    let alternate = r
        .get(turnd::stun::AttributeType::ALTERNATE_SERVER)
        .map(|v| turnd::stun::decode_address(&v));
    assert_eq!(alternate, Some(Ok(f.udp4[1])), "ALTERNATE-SERVER names b");

    // The client goes to b with what it has, as Chromium does: A's nonce.
    // The fleet shares one nonce key (turnd/nonce-key in Redis), so b
    // takes it: no 438, which libwebrtc would not retry for an Allocate.
    late.server = f.udp4[1];
    let first = late.signed_once(turnd::stun::Method::ALLOCATE, &[Attr::transport_udp()]);
    assert_eq!(
        first.error_code(),
        None,
        "b must accept the nonce a issued: {first:?}"
    );
    let on_b = Client::allocated(first);
    assert_eq!(on_b.relay.ip(), f.udp4[1].ip(), "relayed on b");
    relays(&mut late, on_b.relay, &peer, "redirected to b");
    // a is still draining, its call still flows.
    relays(&mut call, relay, &peer, "a still draining");
}
