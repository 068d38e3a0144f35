//! Credentials beyond plain static users, against the real turnd binary:
//! the TURN REST API (shared secrets, rotation, expiry; draft-uberti-behave-
//! turn-rest-00 as coturn implements it), coturn-style `0x` MD5 keys, and the
//! RFC 8489 security features on the wire (PASSWORD-ALGORITHMS negotiation,
//! USERHASH, MESSAGE-INTEGRITY-SHA256, the `obMatJos2` nonce cookie).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::*;
use turnd::auth::{rest_password, userhash, Key, PasswordAlgorithm, PASSWORD_ALGORITHMS_VALUE};
use turnd::stun::{
    long_term_key, AttributeType, Class, MessageType, MessageWriter, Method, PROTOCOL_UDP,
};

/// `turnd credentials --secret S --user U --ttl T`: (username, password),
/// after checking the iceServers snippet carries both.
fn mint(secret: &str, user: &str, ttl: u64) -> (String, String) {
    let ttl_s = ttl.to_string();
    let out = run_turnd_ok(&[
        "credentials",
        "--secret",
        secret,
        "--user",
        user,
        "--ttl",
        &ttl_s,
    ]);
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no `{name}` line in turnd credentials output:\n{out}"))
    };
    let username = field("username:");
    let password = field("password:");
    // Username is "<expiry>:<user>" with the expiry about now + ttl.
    let (expiry, uid) = username
        .split_once(':')
        .unwrap_or_else(|| panic!("REST username {username:?} has no ':'"));
    assert_eq!(uid, user, "user id part of {username:?}");
    let expiry: u64 = expiry.parse().expect("expiry is a unix time");
    let now = unix_now();
    assert!(
        expiry >= now + ttl - 5 && expiry <= now + ttl + 5,
        "expiry {expiry} not about now ({now}) + {ttl}"
    );
    // The documented derivation: base64(HMAC-SHA1(secret, username)).
    assert_eq!(password, rest_password(secret, &username), "REST password");

    // The iceServers snippet: a JSON line with the same username and credential.
    let json_line = out
        .lines()
        .find(|l| l.contains("iceServers") && l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no iceServers JSON line in:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(json_line)
        .unwrap_or_else(|e| panic!("iceServers snippet is not JSON ({e}): {json_line}"));
    let server = &v["iceServers"][0];
    assert_eq!(
        server["username"],
        username.as_str(),
        "snippet: {json_line}"
    );
    assert_eq!(
        server["credential"],
        password.as_str(),
        "snippet: {json_line}"
    );
    let urls = server["urls"].to_string();
    assert!(urls.contains("turn:"), "snippet urls: {json_line}");
    (username, password)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// turnd with the REST secrets s1 and s2, on the relay ports of `slot`.
fn two_secrets(slot: u16) -> TestServer {
    let (min, max) = relay_ports(Suite::AuthRestSecret, slot);
    TestServer::start(
        min,
        max,
        &["--static-auth-secret", "s1", "--static-auth-secret", "s2"],
    )
}

#[test]
fn rest_credentials_minted_by_turnd_allocate() {
    let server = two_secrets(0);
    let (username, password) = mint("s2", "bob", 3600);
    let mut c = Client::new(server.addr, &username, &password);
    let a = c.allocate();
    server.assert_relay_in_range(a.relay);
    // The response is signed with the REST key (Client::request checks it);
    // check it does not verify with a wrong one.
    assert!(!a
        .response
        .integrity_ok(&long_term_key(&username, REALM, "not-the-password")));
    // Static users keep working beside the REST API.
    server.client().allocate();
}

#[test]
fn rest_secret_rotation_accepts_every_configured_secret() {
    let server = two_secrets(1);
    for secret in ["s1", "s2"] {
        let (username, password) = mint(secret, "bob", 3600);
        let mut c = Client::new(server.addr, &username, &password);
        let a = c.allocate();
        server.assert_relay_in_range(a.relay);
    }
}

#[test]
fn rest_expired_username_is_rejected_with_401() {
    let server = two_secrets(2);
    // Correct HMAC, but the expiry is in the past.
    let username = format!("{}:bob", unix_now() - 60);
    let password = rest_password("s2", &username);
    let mut c = Client::new(server.addr, &username, &password);
    let r = c.allocate_with(&[Attr::transport_udp()]);
    r.expect_error(401);
    assert!(
        r.get(AttributeType::NONCE).is_some(),
        "401 carries a NONCE: {r:?}"
    );
    // Control: the same shape with a future expiry works.
    let username = format!("{}:bob", unix_now() + 600);
    let password = rest_password("s2", &username);
    Client::new(server.addr, &username, &password).allocate();
}

#[test]
fn rest_username_signed_with_unknown_secret_is_rejected_with_401() {
    let server = two_secrets(3);
    let (username, password) = mint("not-a-configured-secret", "bob", 3600);
    let mut c = Client::new(server.addr, &username, &password);
    c.allocate_with(&[Attr::transport_udp()]).expect_error(401);
    // Control: the right secret on the same socket (same nonce) works.
    c.set_credentials(&username, &rest_password("s1", &username));
    c.allocate();
}

#[test]
fn user_given_as_md5_key_from_hash_key_allocates() {
    let (min, max) = relay_ports(Suite::AuthRestSecret, 4);
    let key = run_turnd_ok(&[
        "hash-key",
        "--user",
        "carol",
        "--realm",
        REALM,
        "--password",
        "pw",
    ]);
    let key = key.trim();
    assert!(
        key.starts_with("0x") && key.len() == 34,
        "hash-key printed {key:?}"
    );
    assert_eq!(
        key,
        format!(
            "0x{}",
            turnd::auth::to_hex(&long_term_key("carol", REALM, "pw"))
        )
    );
    let user = format!("carol:{key}");
    let server = TestServer::start(min, max, &["--user", &user]);
    let a = Client::new(server.addr, "carol", "pw").allocate();
    server.assert_relay_in_range(a.relay);
    // The key is not a password: "carol" with the hex string as password fails.
    Client::new(server.addr, "carol", key)
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(401);
    Client::new(server.addr, "carol", "wrong")
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(401);
}

/// How an RFC 8489 request names its user.
enum Who<'a> {
    Username(&'a str),
    Userhash([u8; 32]),
}

/// A request signed RFC 8489 style: `attrs`, then USERNAME or USERHASH,
/// REALM, NONCE, PASSWORD-ALGORITHMS (`algorithms`), PASSWORD-ALGORITHM
/// (`algorithm`, IANA number) and MESSAGE-INTEGRITY-SHA256 with `key`.
fn build_sha256(
    method: Method,
    attrs: &[Attr],
    who: &Who<'_>,
    nonce: &[u8],
    algorithms: &[u8],
    algorithm: u16,
    key: &Key,
) -> (turnd::stun::TransactionId, Vec<u8>) {
    let tid = new_tid();
    let mut buf = vec![0u8; 2048];
    let mut w =
        MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), tid).unwrap();
    for a in attrs {
        match a {
            Attr::Raw(t, v) => w.attribute(*t, v).unwrap(),
            Attr::U32(t, v) => w.u32(*t, *v).unwrap(),
            Attr::XorAddr(t, v) => w.xor_address(*t, *v).unwrap(),
        }
    }
    match who {
        Who::Username(u) => w.attribute(AttributeType::USERNAME, u.as_bytes()).unwrap(),
        Who::Userhash(h) => w.attribute(AttributeType::USERHASH, h).unwrap(),
    }
    w.attribute(AttributeType::REALM, REALM.as_bytes()).unwrap();
    w.attribute(AttributeType::NONCE, nonce).unwrap();
    w.attribute(AttributeType::PASSWORD_ALGORITHMS, algorithms)
        .unwrap();
    let a = algorithm.to_be_bytes();
    // PASSWORD-ALGORITHM: algorithm (2 bytes), parameters length 0 (2 bytes).
    w.attribute(AttributeType::PASSWORD_ALGORITHM, &[a[0], a[1], 0, 0])
        .unwrap();
    w.message_integrity_sha256(key.as_bytes()).unwrap();
    let n = w.finish();
    buf.truncate(n);
    (tid, buf)
}

#[test]
fn rfc8489_sha256_userhash_and_message_integrity_sha256_over_the_wire() {
    let (min, max) = relay_ports(Suite::AuthRestSecret, 5);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();

    // The challenge advertises the RFC 8489 security features.
    let r = c.request_unsigned(Method::ALLOCATE, &[Attr::transport_udp()]);
    r.expect_error(401);
    let nonce = r.get(AttributeType::NONCE).expect("401 carries NONCE");
    assert!(
        nonce.starts_with(b"obMatJos2"),
        "NONCE {:?} lacks the RFC 8489 cookie",
        String::from_utf8_lossy(&nonce)
    );
    let algorithms = r
        .get(AttributeType::PASSWORD_ALGORITHMS)
        .expect("401 carries PASSWORD-ALGORITHMS");
    // Each entry: algorithm (2), parameters length (2), parameters (padded).
    let mut offered = Vec::new();
    let mut i = 0;
    while i + 4 <= algorithms.len() {
        let alg = u16::from_be_bytes([algorithms[i], algorithms[i + 1]]);
        let plen = u16::from_be_bytes([algorithms[i + 2], algorithms[i + 3]]) as usize;
        offered.push(alg);
        i += 4 + plen.div_ceil(4) * 4;
    }
    assert_eq!(i, algorithms.len(), "PASSWORD-ALGORITHMS {algorithms:02x?}");
    assert!(offered.contains(&2), "SHA-256 (2) not offered: {offered:?}");
    assert_eq!(algorithms, PASSWORD_ALGORITHMS_VALUE);
    assert!(c.learn_nonce(&r));

    let key = Key::derive(PasswordAlgorithm::Sha256, USER, REALM, PASSWORD);
    let transport = [Attr::transport(PROTOCOL_UDP)];
    let hash = Who::Userhash(userhash(USER, REALM));

    // PASSWORD-ALGORITHMS that does not echo the server's list: 400
    // (RFC 8489 section 9.2.4, downgrade protection).
    let (tid, b) = build_sha256(
        Method::ALLOCATE,
        &transport,
        &hash,
        &nonce,
        &[0, 2, 0, 0],
        2,
        &key,
    );
    c.transact(&b, tid).expect_error(400);

    // A wrong SHA-256 key: 401.
    let bad = Key::derive(PasswordAlgorithm::Sha256, USER, REALM, "wrong");
    let (tid, b) = build_sha256(
        Method::ALLOCATE,
        &transport,
        &hash,
        &nonce,
        &algorithms,
        2,
        &bad,
    );
    c.transact(&b, tid).expect_error(401);

    // The real thing: USERHASH, SHA-256, MESSAGE-INTEGRITY-SHA256.
    let (tid, b) = build_sha256(
        Method::ALLOCATE,
        &transport,
        &hash,
        &nonce,
        &algorithms,
        2,
        &key,
    );
    let r = c.transact(&b, tid);
    let a = Client::allocated(r.clone());
    server.assert_relay_in_range(a.relay);
    assert!(
        r.msg().check_integrity_sha256(key.as_bytes()),
        "Allocate success without a valid MESSAGE-INTEGRITY-SHA256: {r:?}"
    );
    assert!(
        !r.msg().check_integrity_sha256(bad.as_bytes()),
        "MESSAGE-INTEGRITY-SHA256 verifies with a wrong key"
    );
    assert!(
        r.get(AttributeType::MESSAGE_INTEGRITY).is_none(),
        "SHA-256 request answered with MESSAGE-INTEGRITY (SHA-1): {r:?}"
    );

    // Later requests on the allocation with USERNAME and SHA-256 work too.
    let peer: std::net::SocketAddr = "198.51.100.7:5000".parse().unwrap();
    let (tid, b) = build_sha256(
        Method::CREATE_PERMISSION,
        &[Attr::peer(peer)],
        &Who::Username(USER),
        &nonce,
        &algorithms,
        2,
        &key,
    );
    let r = c.transact(&b, tid);
    r.expect_success();
    assert!(r.msg().check_integrity_sha256(key.as_bytes()), "{r:?}");

    // A SHA-1 client (no PASSWORD-ALGORITHM) keeps working on another socket.
    server.client().allocate();
}

/// `TURND_STATIC_AUTH_SECRET` gives the secret without putting it in the
/// process's arguments (a Kubernetes Secret as an environment variable).
#[test]
fn the_secret_can_come_from_the_environment() {
    let (min, max) = relay_ports(Suite::AuthRestSecret, 6);
    let server = Turnd::standard(min, max)
        .env("TURND_STATIC_AUTH_SECRET", "from-env")
        .start();
    assert!(
        !std::fs::read_to_string(format!("/proc/{}/cmdline", server.pid()))
            .unwrap_or_default()
            .contains("from-env"),
        "the secret is not in the arguments"
    );
    let (username, password) = mint("from-env", "bob", 3600);
    let mut c = Client::new(server.addr, &username, &password);
    server.assert_relay_in_range(c.allocate().relay);
    let (username, password) = mint("another", "bob", 3600);
    assert!(!allocates(server.addr, &username, &password));
}
