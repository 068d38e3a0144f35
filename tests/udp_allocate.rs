//! TURN Allocate and Refresh over UDP against the real turnd binary
//! (RFC 8656 sections 7.1-7.3, RFC 8489 section 9.2 long-term credentials).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::time::Duration;

use support::*;
use turnd::stun::{long_term_key, AttributeType, Class, Method};

#[test]
fn unauthenticated_allocate_is_challenged_with_realm_and_nonce() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 0);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    let r = c.request_unsigned(Method::ALLOCATE, &[Attr::transport_udp()]);
    r.expect_error(401);
    assert_eq!(r.method(), Method::ALLOCATE);
    assert_eq!(r.msg().get_str(AttributeType::REALM), Some(REALM));
    let nonce = r.get(AttributeType::NONCE).expect("401 carries NONCE");
    assert!(
        !nonce.is_empty() && nonce.len() <= 763,
        "NONCE length {}",
        nonce.len()
    );
    // A challenge is not integrity-protected (the client has no key yet).
    assert!(r.get(AttributeType::MESSAGE_INTEGRITY).is_none());
    // No allocation was made: a signed Refresh finds none (437).
    assert!(c.learn_nonce(&r));
    c.refresh(Some(600)).expect_error(437);
}

#[test]
fn allocate_succeeds_with_relay_in_range_lifetime_and_integrity() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 1);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    let a = c.allocate();
    server.assert_relay_in_range(a.relay);
    assert_eq!(a.lifetime, 600, "default lifetime");
    assert_eq!(a.mapped, c.local_addr(), "XOR-MAPPED-ADDRESS");
    assert_eq!(a.response.method(), Method::ALLOCATE);
    let key = long_term_key(USER, REALM, PASSWORD);
    assert!(
        a.response.integrity_ok(&key),
        "MESSAGE-INTEGRITY with alice's key"
    );
    assert!(!a
        .response
        .integrity_ok(&long_term_key(USER, REALM, "other")));

    // The relay port is really bound by turnd: binding it ourselves fails.
    assert!(
        std::net::UdpSocket::bind(a.relay).is_err(),
        "relay address {} is not bound",
        a.relay
    );

    // A second client gets a different relay address.
    let mut c2 = server.client();
    let a2 = c2.allocate();
    server.assert_relay_in_range(a2.relay);
    assert_ne!(a.relay, a2.relay);
}

#[test]
fn requested_lifetime_is_capped_at_3600() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 2);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    let r = c.allocate_with(&[Attr::transport_udp(), Attr::lifetime(5000)]);
    assert_eq!(Client::allocated(r).lifetime, 3600);
    // Refresh follows the same rule; a short request gets the default.
    let r = c.refresh(Some(5000));
    r.expect_success();
    assert_eq!(r.u32(AttributeType::LIFETIME), Some(3600));
    let r = c.refresh(Some(1200));
    assert_eq!(r.expect_success().u32(AttributeType::LIFETIME), Some(1200));
    let r = c.refresh(None);
    assert_eq!(r.expect_success().u32(AttributeType::LIFETIME), Some(600));
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 3);
    let server = TestServer::start(min, max, &[]);
    for (user, pass) in [(USER, "wrong"), ("mallory", PASSWORD), ("mallory", "x")] {
        let mut c = Client::new(server.addr, user, pass);
        let r = c.allocate_with(&[Attr::transport_udp()]);
        r.expect_error(401);
        assert_eq!(r.msg().get_str(AttributeType::REALM), Some(REALM), "{user}");
        assert!(r.get(AttributeType::NONCE).is_some(), "{user}");
        assert!(r.get(AttributeType::XOR_RELAYED_ADDRESS).is_none());
        // Nothing was allocated for that 5-tuple: the right password now works.
        c.set_credentials(USER, PASSWORD);
        let a = c.allocate();
        server.assert_relay_in_range(a.relay);
    }
    // A wrong realm is refused too.
    let mut c = server.client();
    c.fetch_nonce();
    c.credentials.realm = Some("other.example".into());
    c.signed_once(Method::ALLOCATE, &[Attr::transport_udp()])
        .expect_error(401);
}

#[test]
fn retransmitted_allocate_gets_identical_answer_and_no_second_allocation() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 4);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.fetch_nonce();
    let (tid, req) = c.build_request(Method::ALLOCATE, &[Attr::transport_udp()], true);
    let first = c.transact(&req, tid);
    let a = Client::allocated(first.clone());
    server.assert_relay_in_range(a.relay);
    // The very same datagram again (a retransmission).
    let second = c.transact(&req, tid);
    assert_eq!(
        first.bytes, second.bytes,
        "retransmission must get the same bytes"
    );
    // And once more. How long the answer stays cached is checked with a fake
    // clock in src/turn/scenario_tests.rs
    // (retransmitted_allocate_gets_same_answer_and_one_allocation).
    let third = c.transact(&req, tid);
    assert_eq!(first.bytes, third.bytes);
    // A new transaction on the same 5-tuple: the allocation exists, 437.
    let r = c.signed_once(Method::ALLOCATE, &[Attr::transport_udp()]);
    r.expect_error(437);
    assert!(
        r.integrity_ok(&c.key()),
        "437 to an authenticated request carries MESSAGE-INTEGRITY"
    );
    // Exactly one allocation: after deleting it, Refresh finds nothing.
    c.refresh(Some(0)).expect_success();
    c.refresh(Some(600)).expect_error(437);
}

#[test]
fn missing_requested_transport_is_400() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 5);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.allocate_with(&[]).expect_error(400);
    c.allocate_with(&[Attr::lifetime(600)]).expect_error(400);
    // Nothing was allocated.
    c.allocate();
}

#[test]
fn requested_transport_other_than_udp_over_udp() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 6);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    // RFC 6062 section 5.1: a TCP relay over a UDP client connection is a bad request.
    let r = c.allocate_with(&[Attr::transport(6)]);
    r.expect_error(400);
    assert!(r.integrity_ok(&c.key()));
    // Any other protocol is not supported: 442.
    let r = c.allocate_with(&[Attr::transport(132)]);
    r.expect_error(442);
    assert!(r.integrity_ok(&c.key()));
    c.allocate();
}

#[test]
fn requested_address_family_ipv6_without_ipv6_relay_is_440() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 7);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    let family = |f: u8| Attr::Raw(AttributeType::REQUESTED_ADDRESS_FAMILY, vec![f, 0, 0, 0]);
    c.allocate_with(&[Attr::transport_udp(), family(0x02)])
        .expect_error(440);
    // Asking for IPv4 explicitly works.
    let r = c.allocate_with(&[Attr::transport_udp(), family(0x01)]);
    let a = Client::allocated(r);
    assert!(a.relay.is_ipv4());
}

#[test]
fn refresh_with_lifetime_zero_deletes_the_allocation() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 8);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    let a = c.allocate();
    let r = c.refresh(Some(0));
    r.expect_success();
    assert_eq!(r.u32(AttributeType::LIFETIME), Some(0));
    c.refresh(Some(600)).expect_error(437);
    // The relay socket was closed: the port can be bound again.
    let freed = wait_until(Duration::from_secs(1), || {
        std::net::UdpSocket::bind(a.relay).is_ok()
    });
    assert!(
        freed,
        "relay address {} still bound after deletion",
        a.relay
    );
    // A new allocation on the same 5-tuple is possible.
    c.allocate();
}

#[test]
fn other_user_refreshing_from_the_same_five_tuple_gets_441() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 9);
    let server = TestServer::start(min, max, &["--user", "bob:hunter2"]);
    let mut c = server.client();
    c.allocate();
    c.set_credentials("bob", "hunter2");
    let r = c.refresh(Some(600));
    r.expect_error(441);
    // Bob cannot delete alice's allocation either.
    c.refresh(Some(0)).expect_error(441);
    // Alice still can refresh it.
    c.set_credentials(USER, PASSWORD);
    c.refresh(Some(600)).expect_success();
    // Bob on his own socket is fine.
    let mut b = Client::new(server.addr, "bob", "hunter2");
    b.allocate();
}

#[test]
fn even_port_with_r_bit_reserves_the_next_port_for_the_token() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 10);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    let r = c.allocate_with(&[
        Attr::transport_udp(),
        Attr::Raw(AttributeType::EVEN_PORT, vec![0x80]),
    ]);
    let token = r
        .get(AttributeType::RESERVATION_TOKEN)
        .expect("RESERVATION-TOKEN for EVEN-PORT with R");
    assert_eq!(token.len(), 8);
    let a = Client::allocated(r);
    server.assert_relay_in_range(a.relay);
    assert_eq!(a.relay.port() % 2, 0, "even port, got {}", a.relay);

    let mut c2 = server.client();
    let r2 = c2.allocate_with(&[
        Attr::transport_udp(),
        Attr::Raw(AttributeType::RESERVATION_TOKEN, token.clone()),
    ]);
    assert!(r2.get(AttributeType::RESERVATION_TOKEN).is_none());
    let a2 = Client::allocated(r2);
    assert_eq!(a2.relay.ip(), a.relay.ip());
    assert_eq!(a2.relay.port(), a.relay.port() + 1, "reserved port");

    // The token is used up: a third client cannot use it again (508).
    let mut c3 = server.client();
    c3.allocate_with(&[
        Attr::transport_udp(),
        Attr::Raw(AttributeType::RESERVATION_TOKEN, token),
    ])
    .expect_error(508);
    // EVEN-PORT without R: an even port, no token.
    let r = c3.allocate_with(&[
        Attr::transport_udp(),
        Attr::Raw(AttributeType::EVEN_PORT, vec![0x00]),
    ]);
    assert!(r.get(AttributeType::RESERVATION_TOKEN).is_none());
    assert_eq!(Client::allocated(r).relay.port() % 2, 0);
}

#[test]
fn user_quota_one_refuses_a_second_allocation_with_486() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 11);
    let server = TestServer::start(min, max, &["--user-quota", "1"]);
    let mut c1 = server.client();
    c1.allocate();
    let mut c2 = server.client();
    let r = c2.allocate_with(&[Attr::transport_udp()]);
    r.expect_error(486);
    assert!(r.integrity_ok(&c2.key()));
    // Freeing the first makes room.
    c1.refresh(Some(0)).expect_success();
    c2.allocate();
}

#[test]
fn exhausted_port_range_gives_508() {
    let (min, _) = relay_ports(Suite::UdpAllocate, 12);
    let server = TestServer::start(min, min + 1, &[]);
    let mut c1 = server.client();
    let mut c2 = server.client();
    let mut c3 = server.client();
    let a1 = c1.allocate();
    let a2 = c2.allocate();
    let mut ports = [a1.relay.port(), a2.relay.port()];
    ports.sort();
    assert_eq!(ports, [min, min + 1]);
    let r = c3.allocate_with(&[Attr::transport_udp()]);
    r.expect_error(508);
    // The port comes back as soon as an allocation is deleted (see also
    // port_freed_by_refresh_is_reusable_at_once).
    c1.refresh(Some(0)).expect_success();
    let a3 = c3.allocate();
    assert_eq!(a3.relay, a1.relay);
    c1.allocate_with(&[Attr::transport_udp()]).expect_error(508);
}

#[test]
fn port_freed_by_refresh_is_reusable_at_once() {
    // RFC 8656 section 7.3: Refresh with LIFETIME 0 deletes the allocation
    // and frees its relayed address. On a two-port range, ten rounds of
    // delete-then-allocate by another client: rounds 0-4 allocate right after
    // the Refresh success, rounds 5-9 send the Allocate right behind the
    // Refresh (the server handles them in that order). That order holds
    // only within one worker: with several, the two clients' 5-tuples may be
    // hashed to different workers, which run concurrently, so the server
    // runs one worker here (workers.rs covers sharing the port pool).
    let (min, _) = relay_ports(Suite::UdpAllocate, 16);
    let server = TestServer::start(min, min + 1, &["--relay-threads", "1"]);
    let (mut holder, mut waiting) = (server.client(), server.client());
    holder.allocate();
    server.client().allocate();
    waiting.fetch_nonce();
    for round in 0..10 {
        let r = if round < 5 {
            holder.refresh(Some(0)).expect_success();
            waiting.allocate_with(&[Attr::transport_udp()])
        } else {
            let (rt, refresh) = holder.build_request(Method::REFRESH, &[Attr::lifetime(0)], true);
            let (at, alloc) =
                waiting.build_request(Method::ALLOCATE, &[Attr::transport_udp()], true);
            holder.start_request(&refresh);
            waiting.start_request(&alloc);
            holder.finish_request(&refresh, rt).expect_success();
            waiting.finish_request(&alloc, at)
        };
        assert!(
            r.is_success(),
            "round {round}: a port was freed by Refresh(0) but Allocate got {r:?}"
        );
        std::mem::swap(&mut holder, &mut waiting);
    }
}

#[test]
fn freed_relay_port_stays_in_the_pool() {
    // One-port range. Each round the owner deletes its allocation while
    // another client's Allocate arrives right behind the Refresh (both sent
    // before either answer is read; the racer's result is not judged here,
    // see port_freed_by_refresh_is_reusable_at_once). Once both answers are
    // in, the port must be allocatable again: whatever happened, it must not
    // be lost.
    let (min, _) = relay_ports(Suite::UdpAllocate, 15);
    let server = TestServer::start(min, min, &[]);
    let mut c = server.client();
    let mut racer = server.client();
    racer.fetch_nonce();
    for round in 0..5 {
        let r = c.allocate_with(&[Attr::transport_udp()]);
        assert!(
            r.is_success(),
            "round {round}: the only relay port was lost: {r:?}"
        );
        assert_eq!(Client::allocated(r).relay.port(), min);
        let (rt, refresh) = c.build_request(Method::REFRESH, &[Attr::lifetime(0)], true);
        let (at, alloc) = racer.build_request(Method::ALLOCATE, &[Attr::transport_udp()], true);
        c.start_request(&refresh);
        racer.start_request(&alloc);
        c.finish_request(&refresh, rt).expect_success();
        if racer.finish_request(&alloc, at).is_success() {
            racer.refresh(Some(0)).expect_success();
        }
    }
}

#[test]
fn allocate_is_a_request_only_method() {
    // An Allocate indication is ignored (no response, no allocation).
    let (min, max) = relay_ports(Suite::UdpAllocate, 14);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.fetch_nonce();
    let b = build(
        Method::ALLOCATE,
        Class::Indication,
        new_tid(),
        &[Attr::transport_udp()],
        None,
        false,
    );
    c.send_raw(&b);
    c.expect_silence(SILENCE);
    c.refresh(Some(600)).expect_error(437);
}

#[test]
fn signed_request_without_username_is_400() {
    // RFC 8489 section 9.2.4: MESSAGE-INTEGRITY present but USERNAME, REALM
    // or NONCE missing: 400 Bad Request.
    let (min, max) = relay_ports(Suite::UdpAllocate, 17);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.fetch_nonce();
    let nonce = c.credentials.nonce.clone().unwrap();
    let key = c.key();
    for missing in ["USERNAME", "REALM", "NONCE"] {
        let mut attrs = vec![Attr::transport_udp()];
        if missing != "USERNAME" {
            attrs.push(Attr::Raw(AttributeType::USERNAME, USER.as_bytes().to_vec()));
        }
        if missing != "REALM" {
            attrs.push(Attr::Raw(AttributeType::REALM, REALM.as_bytes().to_vec()));
        }
        if missing != "NONCE" {
            attrs.push(Attr::Raw(AttributeType::NONCE, nonce.clone()));
        }
        let tid = new_tid();
        let mut b = build(Method::ALLOCATE, Class::Request, tid, &attrs, None, false);
        append_integrity(&mut b, &key);
        let r = c.transact(&b, tid);
        assert_eq!(r.error_code(), Some(400), "without {missing}: {r:?}");
    }
    // Nothing was allocated.
    c.refresh(Some(600)).expect_error(437);
}

#[test]
fn unknown_nonce_gets_438_with_a_fresh_one() {
    let (min, max) = relay_ports(Suite::UdpAllocate, 18);
    let server = TestServer::start(min, max, &[]);
    let mut c = server.client();
    c.fetch_nonce();
    let good = c.credentials.nonce.clone().unwrap();
    for forged in [b"not-a-nonce-of-ours".to_vec(), {
        let mut f = good.clone();
        let last = f.len() - 1;
        f[last] = if f[last] == b'0' { b'1' } else { b'0' };
        f
    }] {
        c.credentials.nonce = Some(forged);
        let r = c.signed_once(Method::ALLOCATE, &[Attr::transport_udp()]);
        r.expect_error(438);
        assert!(c.learn_nonce(&r), "438 carries REALM and NONCE: {r:?}");
    }
    // A nonce issued for another client IP address is not valid here either
    // (nonces are bound to the IP, not the port: RFC 6062 data connections
    // reuse the control connection's nonce from a new port).
    let mut other = Client::new_on("127.0.0.2", server.addr, USER, PASSWORD);
    other.fetch_nonce();
    c.credentials.nonce = other.credentials.nonce.clone();
    c.signed_once(Method::ALLOCATE, &[Attr::transport_udp()])
        .expect_error(438);
    // The fresh nonce works.
    c.fetch_nonce();
    c.allocate();
}

/// Re-encodes `msg` through the crate's writer with MESSAGE-INTEGRITY
/// (HMAC-SHA1 with `key`) appended.
fn append_integrity(msg: &mut Vec<u8>, key: &[u8]) {
    let m = turnd::stun::Message::parse(msg).unwrap();
    let mut out = vec![0u8; msg.len() + 24];
    let mut w =
        turnd::stun::MessageWriter::new(&mut out, m.message_type(), m.transaction_id()).unwrap();
    for (at, v) in m.attributes() {
        w.attribute(at, v).unwrap();
    }
    w.message_integrity(key).unwrap();
    let n = w.finish();
    out.truncate(n);
    *msg = out;
}
