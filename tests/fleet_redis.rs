//! A fleet on one Redis (`redis-userdb`, `redis-statsdb`), with a real
//! `redis-server` and several turnd processes on loopback: users and REST
//! secrets from coturn's Redis schema reach every node, `user-quota` holds
//! across nodes, the allocation registry lists every node's allocations
//! from any node's admin API, a revocation ends them everywhere, and a
//! Redis that goes away leaves every node serving what it last read.
//!
//! The time a change takes to reach the nodes is printed (`propagation`);
//! the tests wait for it at most [`PROPAGATION`], a bound, not a target.
//!
//! Relay ports: `Suite::FleetRedis` in `support::ports`.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "fleet-admin-token-0123456789";
/// The longest the tests wait for a change to reach every node.
const PROPAGATION: Duration = Duration::from_secs(5);

/// A node of the fleet: the standard arguments (static user alice), relay
/// ports of `slot`, node name `name`, the user database in `redis`. The
/// tests poll with users not yet known (401s) from one address: the
/// per-source limit of failed authentications is off.
fn node(slot: u16, name: &str, redis: &str, extra: &[&str]) -> TestServer {
    let (min, max) = relay_ports(Suite::FleetRedis, slot);
    Turnd::standard(min, max)
        .args(["--server-name", name, "--redis-userdb", redis])
        .args(["--auth-failures-per-minute", "0"])
        .args(["--admin-token", TOKEN, "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .start()
}

/// `turnd user|secret --redis-userdb URL --realm REALM args...`
#[track_caller]
fn admin_cli(kind: &str, redis: &str, args: &[&str]) -> String {
    let mut all = vec![kind, "--redis-userdb", redis, "--realm", REALM];
    all.extend_from_slice(args);
    run_turnd_ok(&all)
}

/// Waits until `cond` holds, printing how long that took; panics after
/// [`PROPAGATION`].
#[track_caller]
fn propagates(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    assert!(
        wait_until(PROPAGATION, &mut cond),
        "{what}: not seen within {PROPAGATION:?}"
    );
    println!("propagation: {what}: {} ms", t.elapsed().as_millis());
}

/// One Allocate as `user`; the client keeps the allocation. The error
/// code, or None when granted.
fn try_allocate(server: SocketAddr, user: &str, password: &str) -> (Client, Option<u16>) {
    let mut c = Client::new(server, user, password);
    let r = c.allocate_with(&[Attr::transport_udp()]);
    let code = r.error_code();
    if code.is_none() {
        Client::allocated(r);
    }
    (c, code)
}

fn fleet_list(admin: SocketAddr) -> Vec<serde_json::Value> {
    let r = http_get_bearer(admin, "/api/fleet/allocations", TOKEN);
    assert_eq!(r.status, 200, "{r:?}");
    r.json().as_array().expect("a JSON array").clone()
}

#[test]
fn users_and_secrets_in_redis_reach_every_node_and_deleting_refuses_them_everywhere() {
    let redis = RedisServer::start();
    // Node a reads the URL form, node b coturn's connection string.
    let mut a = node(0, "a", &redis.url(), &[]);
    let mut b = node(1, "b", &redis.coturn_string(), &[]);
    let (ua, ub) = (a.udp(), b.udp());
    assert!(!allocates(ua, "bob", "pw-bob"));

    admin_cli("user", &redis.url(), &["add", "bob", "pw-bob"]);
    // coturn's schema exactly: the hex MD5 key under the realm.
    let key = redis.cli(&["GET", &format!("turn/realm/{REALM}/user/bob/key")]);
    assert_eq!(key.trim().len(), 32, "hex MD5 key expected: {key:?}");
    propagates("user added with turnd user add, on both nodes", || {
        allocates(ua, "bob", "pw-bob") && allocates(ub, "bob", "pw-bob")
    });
    assert!(!allocates(ua, "bob", "wrong"));
    let listed = admin_cli("user", &redis.url(), &["list"]);
    assert_eq!(listed.trim(), "bob");

    // Written by another tool (redis-cli, as coturn's turnadmin would):
    // a clear password, which coturn's schema allows.
    redis.cli(&[
        "SET",
        &format!("turn/realm/{REALM}/user/carol/password"),
        "pw-carol",
    ]);
    propagates("user set by redis-cli, on both nodes", || {
        allocates(ua, "carol", "pw-carol") && allocates(ub, "carol", "pw-carol")
    });
    // Another realm's user is not this realm's.
    redis.cli(&["SET", "turn/realm/other.example/user/dave/password", "pw"]);
    thread_sleep(Duration::from_millis(300));
    assert!(!allocates(ua, "dave", "pw"));

    admin_cli("user", &redis.url(), &["delete", "bob"]);
    propagates("user deleted, refused on both nodes", || {
        !allocates(ua, "bob", "pw-bob") && !allocates(ub, "bob", "pw-bob")
    });
    redis.cli(&["DEL", &format!("turn/realm/{REALM}/user/carol/password")]);
    propagates("user deleted by redis-cli, refused on both nodes", || {
        !allocates(ua, "carol", "pw-carol") && !allocates(ub, "carol", "pw-carol")
    });
    // The configuration's own user was never in Redis and stays.
    assert!(allocates(ua, USER, PASSWORD));

    // A REST secret added in Redis works on both nodes.
    let mut ra = node(2, "ra", &redis.url(), &["--use-auth-secret"]);
    let mut rb = node(3, "rb", &redis.coturn_string(), &["--use-auth-secret"]);
    let (rua, rub) = (ra.udp(), rb.udp());
    admin_cli("secret", &redis.url(), &["add", "fleet-secret"]);
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let rest_user = format!("{expiry}:erin");
    let rest_pw = rest_password("fleet-secret", &rest_user);
    propagates("REST secret, on both nodes", || {
        allocates(rua, &rest_user, &rest_pw) && allocates(rub, &rest_user, &rest_pw)
    });
    admin_cli("secret", &redis.url(), &["delete", "fleet-secret"]);
    propagates("REST secret deleted, refused on both nodes", || {
        !allocates(rua, &rest_user, &rest_pw) && !allocates(rub, &rest_user, &rest_pw)
    });
    drop((a, b, ra, rb));
}

#[test]
fn user_quota_holds_across_nodes() {
    let redis = RedisServer::start();
    let q = ["--user-quota", "2"];
    // Keys under turnd/node/ that are no counts (written by hand, or by a
    // broken node) are skipped; they never end a node's Redis session.
    redis.cli(&["HSET", "turnd/node/junk/users", USER, "lots"]);
    redis.cli(&["SET", "turnd/node/string/users", "not a hash"]);
    redis.cli(&["SET", "turnd/node/string/allocations", "not a hash"]);
    let mut a = node(4, "qa", &redis.url(), &q);
    let mut b = node(5, "qb", &redis.url(), &q);
    let (ua, ub) = (a.udp(), b.udp());
    let (_c1, e1) = try_allocate(ua, USER, PASSWORD);
    assert_eq!(e1, None);
    let (mut c2, e2) = try_allocate(ub, USER, PASSWORD);
    assert_eq!(e2, None);
    // The counts reach Redis and the other node.
    propagates("per-node counts in Redis", || {
        redis.cli(&["HGET", "turnd/node/qa/users", USER]).trim() == "1"
            && redis.cli(&["HGET", "turnd/node/qb/users", USER]).trim() == "1"
    });
    // A node reads the other's counts within a tick (100 ms) of the event;
    // an Allocate inside that window may still be granted (the race the
    // README states), and is given back here.
    let mut early = 0;
    propagates("the third allocation is refused on both nodes", || {
        let mut refused = true;
        for u in [ua, ub] {
            let (mut c, e) = try_allocate(u, USER, PASSWORD);
            if e.is_none() {
                early += 1;
                c.refresh(Some(0)).expect_success();
            }
            refused &= e == Some(486);
        }
        refused
    });
    println!("granted inside the propagation window: {early}");
    for _ in 0..5 {
        for u in [ua, ub] {
            let (_c, e) = try_allocate(u, USER, PASSWORD);
            assert_eq!(e, Some(486), "over the fleet-wide quota on {u}");
        }
    }
    let mut held = Vec::new();
    // The junk keys did not end either node's session.
    for n in [&mut a, &mut b] {
        let r = http_get_bearer(n.admin(), "/readyz", TOKEN);
        assert!(r.body.contains("redis: reachable"), "{r:?}");
        assert!(!n.log().contains("Redis unreachable"), "{}", n.log());
    }
    // Another user is not limited by alice's count.
    admin_cli("user", &redis.url(), &["add", "bob", "pw-bob"]);
    propagates("bob known", || allocates(ua, "bob", "pw-bob"));
    // One of alice's ends on b: a can grant one again.
    c2.refresh(Some(0)).expect_success();
    propagates("a freed slot on b is usable on a", || {
        let (c, e) = try_allocate(ua, USER, PASSWORD);
        if e.is_none() {
            held.push((c, e));
        }
        e.is_none()
    });
}

#[test]
fn any_node_lists_the_fleet_and_a_revocation_ends_allocations_everywhere() {
    let redis = RedisServer::start();
    let mut a = node(6, "ra-1", &redis.url(), &[]);
    let mut b = node(7, "rb-1", &redis.url(), &[]);
    let mut c = node(8, "rc-1", &redis.url(), &[]);
    let (ua, ub, admin_c) = (a.udp(), b.udp(), c.admin());
    admin_cli("user", &redis.url(), &["add", "frank", "pw-frank"]);
    propagates("frank known on a and b", || {
        allocates(ua, "frank", "pw-frank") && allocates(ub, "frank", "pw-frank")
    });
    let (mut fa, e) = try_allocate(ua, "frank", "pw-frank");
    assert_eq!(e, None);
    let (mut fb, e) = try_allocate(ub, "frank", "pw-frank");
    assert_eq!(e, None);
    let (mut keep, e) = try_allocate(ua, USER, PASSWORD);
    assert_eq!(e, None);
    let mut list = Vec::new();
    propagates("node c's admin API lists a's and b's allocations", || {
        list = fleet_list(admin_c);
        list.len() == 3
    });
    let nodes: Vec<&str> = list.iter().map(|e| e["node"].as_str().unwrap()).collect();
    assert_eq!(
        nodes.iter().filter(|n| **n == "ra-1").count(),
        2,
        "{list:?}"
    );
    assert_eq!(
        nodes.iter().filter(|n| **n == "rb-1").count(),
        1,
        "{list:?}"
    );
    let f_on_b = list
        .iter()
        .find(|e| e["node"] == "rb-1")
        .expect("b's allocation");
    assert_eq!(f_on_b["user"], "frank");
    assert_eq!(f_on_b["client"], fb.local_addr().to_string());
    assert_eq!(f_on_b["transport"], "udp");
    // coturn's statsdb status keys are there too.
    let status = redis.cli(&[
        "--scan",
        "--pattern",
        &format!("turn/realm/{REALM}/user/frank/allocation/*/status"),
    ]);
    assert_eq!(status.lines().count(), 2, "{status}");
    let v = redis.cli(&["GET", status.lines().next().unwrap()]);
    assert!(v.starts_with("new lifetime="), "{v}");

    // Revoke frank from node c: both allocations end, the name is refused.
    let r = http(
        admin_c,
        "DELETE",
        "/api/fleet/users/frank?seconds=60",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(r.status, 202, "{r:?}");
    propagates("frank's allocations on a and b end", || {
        let l = fleet_list(admin_c);
        l.iter().all(|e| e["user"] != "frank") && l.len() == 1
    });
    // A revoked name fails authentication first (401), whatever its
    // allocation; the allocations are gone from the registry above.
    fa.refresh(Some(600)).expect_error(401);
    fb.refresh(Some(600)).expect_error(401);
    assert!(
        !allocates(ua, "frank", "pw-frank"),
        "a revoked name is refused"
    );
    // alice's allocation on a was not touched.
    keep.refresh(Some(600)).expect_success();
    assert!(a.log().contains("revoked"), "{}", a.log());

    // Revoking from the command line works the same (a REST-style name).
    let (_k2, e) = try_allocate(ub, USER, PASSWORD);
    assert_eq!(e, None);
    admin_cli("user", &redis.url(), &["revoke", USER, "--seconds", "30"]);
    propagates("alice's allocations on a and b end", || {
        fleet_list(admin_c).is_empty()
    });
    keep.refresh(Some(600)).expect_error(401);
    drop((a, b, c));
}

#[test]
fn redis_down_keeps_every_node_serving_and_the_quota_recovers() {
    let mut redis = RedisServer::start();
    let q = ["--user-quota", "2"];
    let mut a = node(9, "da", &redis.url(), &q);
    let mut b = node(10, "db", &redis.url(), &q);
    let (ua, ub) = (a.udp(), b.udp());
    let metrics_a = a.admin();
    admin_cli("user", &redis.url(), &["add", "gina", "pw-gina"]);
    propagates("gina known", || {
        allocates(ua, "gina", "pw-gina") && allocates(ub, "gina", "pw-gina")
    });
    let (mut g1, e) = try_allocate(ua, "gina", "pw-gina");
    assert_eq!(e, None);
    let r = http_get_bearer(metrics_a, "/readyz", TOKEN);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("redis: reachable"), "{r:?}");

    redis.stop();
    propagates("a says Redis is unreachable", || {
        let r = http_get_bearer(metrics_a, "/readyz", TOKEN);
        r.status == 200 && r.body.contains("redis: unreachable")
    });
    assert!(
        a.wait_for_log("Redis unreachable", 1, PROPAGATION),
        "{}",
        a.log()
    );
    // Known users keep authenticating and allocations keep refreshing.
    g1.refresh(Some(600)).expect_success();
    let (mut g2, e) = try_allocate(ub, "gina", "pw-gina");
    assert_eq!(e, None, "a user read before Redis went away allocates");
    assert!(allocates(ua, USER, PASSWORD));

    // Redis comes back empty: the users are written again (as an operator
    // restoring it would) and every node republishes its counts.
    redis.restart();
    admin_cli("user", &redis.url(), &["add", "gina", "pw-gina"]);
    propagates("both nodes republish their counts", || {
        redis.cli(&["HGET", "turnd/node/da/users", "gina"]).trim() == "1"
            && redis.cli(&["HGET", "turnd/node/db/users", "gina"]).trim() == "1"
    });
    propagates("the fleet quota holds again", || {
        let (_c, e) = try_allocate(ua, "gina", "pw-gina");
        e == Some(486)
    });
    let r = http_get_bearer(metrics_a, "/readyz", TOKEN);
    assert!(r.body.contains("redis: reachable"), "{r:?}");
    g2.refresh(Some(0)).expect_success();
    g1.refresh(Some(0)).expect_success();
    drop((a, b));
}

#[test]
fn a_bad_redis_option_fails_at_start_and_an_unreachable_redis_does_not() {
    let out = run_turnd(&[
        "--realm",
        REALM,
        "--user",
        "alice:secret",
        "--redis-userdb",
        "ip=127.0.0.1 colour=blue",
    ]);
    assert!(!out.status.is_some_and(|s| s.success()), "{out:?}");
    assert!(
        out.stderr.contains("redis-userdb") && out.stderr.contains("colour"),
        "{}",
        out.stderr
    );
    let out = run_turnd(&[
        "--server-name",
        "a/b",
        "--realm",
        REALM,
        "--user",
        "alice:secret",
    ]);
    assert!(!out.status.is_some_and(|s| s.success()), "{out:?}");
    assert!(out.stderr.contains("server-name"), "{}", out.stderr);

    // Nothing listens on this port: the node starts, serves its own users
    // and says where Redis stands.
    let port = free_port();
    let mut n = node(11, "lonely", &format!("redis://127.0.0.1:{port}/0"), &[]);
    let u = n.udp();
    assert!(allocates(u, USER, PASSWORD));
    let r = http_get_bearer(n.admin(), "/readyz", TOKEN);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("redis: unreachable"), "{r:?}");
    let r = http_get_bearer(n.admin(), "/api/fleet/allocations", TOKEN);
    assert_eq!(r.status, 503, "{r:?}");
}

fn thread_sleep(d: Duration) {
    std::thread::sleep(d);
}

/// The TURN REST API password: base64(HMAC-SHA1(secret, username)).
fn rest_password(secret: &str, username: &str) -> String {
    turnd::auth::rest_password(secret, username)
}
