//! Long-term credentials, REST credentials, nonces and the limits on
//! unauthenticated answers and failures.

use super::*;

#[test]
fn auth_failures() {
    let mut h = Harness::new(|_| {});
    let mut c = h.client(1, "alice", "wrong");
    assert_eq!(h.allocate(&c).code(), Some(401));
    c.user = "mallory";
    assert_eq!(h.allocate(&c).code(), Some(401));
    // Missing USERNAME with MESSAGE-INTEGRITY is a bad request.
    let tid = h.tid();
    let mut buf = vec![0u8; 200];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    )
    .unwrap();
    w.message_integrity(&c.key).unwrap();
    let n = w.finish();
    assert_eq!(h.request_raw(c.ft, &buf[..n]).unwrap().code(), Some(400));
    assert_eq!(h.server.stats().auth_failures, 2);
    // A nonce issued to another client IP address is not accepted.
    let good = h.client(2, "alice", "secret");
    let stolen = Client {
        ft: FiveTuple {
            client: "198.51.100.8:3".parse().unwrap(),
            ..ft(3)
        },
        user: "alice",
        key: good.key,
        nonce: good.nonce.clone(),
    };
    assert_eq!(h.allocate(&stolen).code(), Some(438));
}

#[test]
fn stale_nonce_gets_438_with_a_new_nonce() {
    let mut h = Harness::new(|_| {});
    let mut c = h.client(1, "alice", "secret");
    h.advance(Duration::from_secs(601));
    let a = h.allocate(&c);
    assert_eq!(a.code(), Some(438));
    // RFC 8489 section 9.2.4: a 438 carries REALM and a fresh NONCE.
    assert_eq!(
        a.msg().get(AttributeType::REALM),
        Some(h.server.config().realm.as_bytes())
    );
    let fresh = a.msg().get(AttributeType::NONCE).unwrap().to_vec();
    assert_ne!(fresh, c.nonce);
    c.nonce = fresh;
    assert_eq!(h.allocate(&c).class(), Class::Success);
}

#[test]
fn wrong_user_on_existing_allocation_is_441() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let mut b = h.client(1, "bob", "hunter2");
    b.ft = c.ft;
    assert_eq!(h.request(&b, Method::REFRESH, |_| {}).code(), Some(441));
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn rest_api_credentials_rotate_and_expire() {
    let mut h = Harness::new(|c| {
        c.credentials
            .set_rest_secrets(vec!["old-secret".into(), "new-secret".into()], ':')
    });
    // Server unix time is 1_700_000_000 at the harness epoch.
    for secret in ["old-secret", "new-secret"] {
        let user = leak(format!("1700000100:app-{secret}"));
        let c = h.client(
            if secret == "old-secret" { 1 } else { 2 },
            user,
            &crate::auth::rest_password(secret, user),
        );
        assert_eq!(h.allocate(&c).class(), Class::Success, "{secret}");
    }
    // Wrong secret.
    let user = leak("1700000100:mallory".into());
    let c = h.client(3, user, &crate::auth::rest_password("guess", user));
    assert_eq!(h.allocate(&c).code(), Some(401));
    // Expired username: 401, even with the right password.
    let user = leak("1699999999:late".into());
    let c = h.client(4, user, &crate::auth::rest_password("new-secret", user));
    assert_eq!(h.allocate(&c).code(), Some(401));
    // Valid now, replayed after expiry (the nonce is renewed, the username is not).
    let user = leak("1700000100:replay".into());
    let mut c = h.client(5, user, &crate::auth::rest_password("new-secret", user));
    h.advance(Duration::from_secs(101));
    c.nonce = h.client(5, user, "x").nonce;
    assert_eq!(h.allocate(&c).code(), Some(401));
}

#[test]
fn hashed_static_key_authenticates() {
    let key = long_term_key("carol", REALM, "pw");
    let mut h = Harness::new(|c| c.credentials.add_key("carol", REALM, key));
    let c = h.client(1, "carol", "pw");
    assert_eq!(h.allocate(&c).class(), Class::Success);
}

#[test]
fn sha256_password_algorithm_and_userhash() {
    use crate::auth::{userhash, Key, PasswordAlgorithm, PASSWORD_ALGORITHMS_VALUE};
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    // The 401 offers both algorithms and the nonce carries the security features.
    assert!(c.nonce.starts_with(b"obMatJos2wAAA"));
    let key = Key::derive(PasswordAlgorithm::Sha256, "alice", REALM, "secret");
    let build = |h: &mut Harness, by_hash: bool, algs: &[u8], alg: u16| {
        let tid = h.tid();
        let mut buf = vec![0u8; 400];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::ALLOCATE, Class::Request),
            tid,
        )
        .unwrap();
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        if by_hash {
            w.attribute(AttributeType::USERHASH, &userhash("alice", REALM))
                .unwrap();
        } else {
            w.attribute(AttributeType::USERNAME, b"alice").unwrap();
        }
        w.attribute(AttributeType::REALM, REALM.as_bytes()).unwrap();
        w.attribute(AttributeType::NONCE, &c.nonce).unwrap();
        w.attribute(AttributeType::PASSWORD_ALGORITHMS, algs)
            .unwrap();
        w.u32(AttributeType::PASSWORD_ALGORITHM, (alg as u32) << 16)
            .unwrap();
        w.message_integrity_sha256(key.as_bytes()).unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    };
    // A downgraded PASSWORD-ALGORITHMS list (not what the server sent) is a 400.
    let b = build(&mut h, false, &[0, 1, 0, 0], 2);
    assert_eq!(h.request_raw(c.ft, &b).unwrap().code(), Some(400));
    let b = build(&mut h, true, &PASSWORD_ALGORITHMS_VALUE, 2);
    let a = h.request_raw(c.ft, &b).unwrap();
    assert_eq!(a.class(), Class::Success);
    assert!(
        a.msg().check_integrity_sha256(key.as_bytes()),
        "answered with MESSAGE-INTEGRITY-SHA256"
    );
    assert!(!a.msg().has_integrity());
    assert_eq!(&*h.server.allocation(&c.ft).unwrap().username, "alice");
}

#[test]
fn unauthenticated_flood_is_limited_per_source() {
    let mut h = Harness::new(|c| {
        c.unauth_rate = 10;
        c.unauth_burst = 20;
    });
    let flood = ft(1);
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, None, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    let answered = (0..1000)
        .filter(|_| h.request_raw(flood, &b).is_some())
        .count();
    assert_eq!(answered, 20, "only the burst is answered");
    // Another source still gets its 401 and allocates.
    let other = FiveTuple {
        client: "198.51.100.99:5000".parse().unwrap(),
        ..ft(2)
    };
    let a = h
        .request_raw(other, &b)
        .expect("another source is answered");
    let nonce = a.msg().get(AttributeType::NONCE).unwrap().to_vec();
    let c = Client {
        ft: other,
        user: "alice",
        key: long_term_key("alice", REALM, "secret"),
        nonce,
    };
    assert_eq!(h.allocate(&c).class(), Class::Success);
    // Refill: after a second the flooding source gets answers again.
    h.advance(Duration::from_secs(1));
    assert!(h.request_raw(flood, &b).is_some());
    assert!(h.server.stats().rate_limited >= 980);
}

#[test]
fn repeated_wrong_passwords_are_cut_off() {
    let mut h = Harness::new(|c| c.auth_failures_per_minute = 5);
    let bad = h.client(1, "alice", "wrong");
    for _ in 0..5 {
        assert_eq!(h.allocate(&bad).code(), Some(401));
    }
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, Some(&bad), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    assert!(
        h.request_raw(bad.ft, &b).is_none(),
        "sixth failure in a minute: no answer"
    );
    // Even the right password from that address waits for the budget to refill.
    let mut good = h.client(2, "alice", "secret");
    good.ft = bad.ft;
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, Some(&good), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    assert!(h.request_raw(good.ft, &b).is_none());
    h.advance(Duration::from_secs(13));
    good.nonce = h.client(1, "alice", "secret").nonce;
    assert_eq!(h.allocate(&good).class(), Class::Success);
}

#[test]
fn failure_block_spares_existing_allocations() {
    let mut h = Harness::new(|c| c.auth_failures_per_minute = 2);
    let good = h.client(1, "alice", "secret");
    assert_eq!(h.allocate(&good).class(), Class::Success);
    let bad = h.client(2, "alice", "wrong");
    assert_eq!(h.allocate(&bad).code(), Some(401));
    assert_eq!(h.allocate(&bad).code(), Some(401));
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, Some(&bad), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    assert!(
        h.request_raw(bad.ft, &b).is_none(),
        "the address is blocked for new logins"
    );
    // The allocation already held from that address keeps refreshing.
    assert_eq!(
        h.request(&good, Method::REFRESH, |_| {}).class(),
        Class::Success
    );
}

/// Issue 10: 300 twenty-byte Allocate headers declaring 4 bytes of
/// attributes drew 256 answers (twice their size) past the budget that
/// 300 well-formed unauthenticated Allocates could not pass.
#[test]
fn malformed_and_mixed_floods_share_the_unauthenticated_budget() {
    let mut h = Harness::new(|_| {});
    let malformed = {
        let tid = h.tid();
        let mut b = h.build(Method::ALLOCATE, tid, None, |_| {});
        b[2..4].copy_from_slice(&4u16.to_be_bytes());
        b
    };
    assert_eq!(malformed.len(), 20);
    let tid = h.tid();
    let well_formed = h.build(Method::ALLOCATE, tid, None, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    // From one source at one instant: at most the burst (100) is answered.
    let flood = |h: &mut Harness, port: u16, mix: &dyn Fn(usize) -> bool| {
        let source = FiveTuple {
            client: SocketAddr::new([198, 51, 100, port as u8].into(), port),
            ..ft(port)
        };
        let (mut answers, mut bytes_in, mut bytes_out) = (0, 0, 0);
        for i in 0..300 {
            let b = if mix(i) { &malformed } else { &well_formed };
            bytes_in += b.len();
            if let Some(a) = h.request_raw(source, b) {
                answers += 1;
                bytes_out += a.bytes.len();
                if mix(i) {
                    assert_eq!(a.code(), Some(400));
                    assert_eq!(a.bytes.len(), 28, "no reason phrase by default");
                }
            }
        }
        (answers, bytes_in, bytes_out)
    };
    let (answers, bytes_in, bytes_out) = flood(&mut h, 1, &|_| true);
    assert_eq!(answers, 100, "malformed");
    assert!(bytes_out < bytes_in, "{bytes_out} bytes out, {bytes_in} in");
    let (answers, _, _) = flood(&mut h, 2, &|i| i % 2 == 0);
    assert_eq!(answers, 100, "mixed");
    let (answers, _, _) = flood(&mut h, 3, &|_| false);
    assert_eq!(answers, 100, "well-formed");
    // Reason phrases only when asked for.
    let mut h = Harness::new(|c| c.reason_phrases = true);
    let a = h.request_raw(ft(1), &malformed).unwrap();
    assert_eq!(a.bytes.len(), 40);
}

/// Issue 10: a spoofer at 50 packets/s empties the unauthenticated budget
/// of a carrier-grade NAT's address; the allocations behind it must still
/// get their 438 Stale Nonce challenges (and any signed request's answer).
#[test]
fn allocations_keep_their_challenges_when_their_address_is_flooded() {
    let mut h = Harness::new(|c| c.nonce_lifetime = Duration::from_secs(60));
    let mut held = h.client(1, "alice", "secret");
    assert_eq!(h.allocate(&held).class(), Class::Success);
    h.advance(Duration::from_secs(61));
    // The spoofer, from the same address (another port), empties the budget.
    let tid = h.tid();
    let b = h.build(Method::BINDING, tid, None, |_| {});
    let spoofed = (0..200)
        .filter(|_| h.request_raw(ft(9), &b).is_some())
        .count();
    assert_eq!(spoofed, 100);
    assert!(h.request_raw(held.ft, &b).is_none(), "unsigned: not spared");
    // A signed Refresh with a stale nonce from the allocation: 438, then
    // Refresh with the new nonce succeeds.
    let a = h.request(&held, Method::REFRESH, |_| {});
    assert_eq!(a.code(), Some(438));
    let stale = std::mem::replace(
        &mut held.nonce,
        a.msg().get(AttributeType::NONCE).unwrap().to_vec(),
    );
    assert_eq!(
        h.request(&held, Method::REFRESH, |_| {}).class(),
        Class::Success
    );
    // A signed request with a stale nonce from a 5-tuple without an
    // allocation is not spared.
    let other = Client {
        ft: ft(3),
        user: "alice",
        key: held.key,
        nonce: stale,
    };
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, Some(&other), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    assert!(h.request_raw(other.ft, &b).is_none());
}

#[test]
fn ipv6_sources_share_a_budget_by_prefix() {
    let v6 = |n: u16, prefix_bits_vary_at: u8| -> FiveTuple {
        let mut s = [0x2001, 0xdb8, 0, 0, 0, 0, 0, n];
        if prefix_bits_vary_at == 48 {
            s[3] = n;
        }
        FiveTuple {
            client: SocketAddr::new(std::net::Ipv6Addr::from(s).into(), 4000),
            ..ft(1)
        }
    };
    let tid = [1; 12];
    for (prefix, burst_answers) in [(64u8, 10usize), (128, 40)] {
        let mut h = Harness::new(|c| {
            c.unauth_burst = 10;
            c.ipv6_source_prefix = prefix;
        });
        let b = h.build(Method::BINDING, tid, None, |_| {});
        let answered = (0..40)
            .filter(|&i| h.request_raw(v6(i, 0), &b).is_some())
            .count();
        assert_eq!(answered, burst_answers, "/{prefix}");
    }
    // Live reload changes the prefix: /48 keys 2001:db8:0::/48 as one source.
    let mut h = Harness::new(|c| c.unauth_burst = 10);
    let b = h.build(Method::BINDING, tid, None, |_| {});
    let answered = (0..40)
        .filter(|&i| h.request_raw(v6(i, 48), &b).is_some())
        .count();
    assert_eq!(answered, 40, "a /64 each");
    let mut config = h.server.config().clone();
    config.ipv6_source_prefix = 48;
    let now = h.now;
    h.server.reconfigure(now, config);
    let answered = (0..40)
        .filter(|&i| h.request_raw(v6(i, 48), &b).is_some())
        .count();
    assert_eq!(answered, 10, "one /48");
}

/// RFC 8489 section 14.3: USERNAME goes through the OpaqueString profile;
/// one it refuses gets 400, out of the unauthenticated budget.
#[test]
fn username_refused_by_opaque_string_is_400() {
    let mut h = Harness::new(|c| c.unauth_burst = 5);
    let mut c = h.client(1, "alice", "secret");
    for user in ["alice\n", "al\u{7}ice", "alice\u{202e}", "\u{2028}"] {
        c.user = user;
        assert_eq!(h.allocate(&c).code(), Some(400), "{user:?}");
    }
    assert_eq!(h.server.stats().auth_failures, 0);
    // The burst (5: the 401 and four 400s) is spent.
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, Some(&c), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    assert!(h.request_raw(c.ft, &b).is_none());
}
