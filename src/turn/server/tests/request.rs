//! Requests in general: Binding, malformed input, attribute validation.

use super::*;

#[test]
fn binding_creates_no_state_and_mirrors_fingerprint() {
    let mut h = Harness::new(|_| {});
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        [1; 12],
    )
    .unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    let a = h.request_raw(ft(1), &buf[..n]).unwrap();
    assert_eq!(a.class(), Class::Success);
    assert!(a.msg().has_fingerprint());
    assert_eq!(
        a.msg().get_xor_address(AttributeType::XOR_MAPPED_ADDRESS),
        Some(Ok(ft(1).client))
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_timeout(), None, "binding leaves no timer");
}

#[test]
fn malformed_input_never_panics_and_never_harms_others() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    h.bind(&c, 0x4000, peer());
    let mut rng_state = 0x1234_5678u32;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        rng_state
    };
    let attacker = ft(666);
    for i in 0..5000 {
        let len = (next() % 120) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && b.len() >= 20 {
            // Make it look like STUN so the deeper parser runs.
            b[0] &= 0x3F;
            b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            let l = (b.len() - 20) as u16 & !3;
            b[2..4].copy_from_slice(&l.to_be_bytes());
        }
        let _ = h.input(attacker, &b);
        let _ = h.input(c.ft, &b);
    }
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"still fine"),
        ClientOutput::ToPeer { .. }
    ));
}

#[test]
fn truncated_attribute_in_request_gets_400() {
    let mut h = Harness::new(|_| {});
    let mut buf = [0u8; 28];
    let w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        [3; 12],
    )
    .unwrap();
    w.finish();
    buf[2..4].copy_from_slice(&8u16.to_be_bytes());
    buf[20..24].copy_from_slice(&[0x00, 0x06, 0x00, 0x40]); // USERNAME claiming 64 bytes
    let a = h.request_raw(ft(1), &buf).unwrap();
    assert_eq!(a.code(), Some(400));
}

#[test]
fn attributes_after_integrity_change_nothing() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let mut b = h.build(Method::ALLOCATE, [77; 12], Some(&c), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    // Append USERNAME=bob and LIFETIME=0 after MESSAGE-INTEGRITY; fix the length.
    b.extend_from_slice(&[0x00, 0x06, 0x00, 0x03, b'b', b'o', b'b', 0]);
    b.extend_from_slice(&[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 0]);
    let l = (b.len() - 20) as u16;
    b[2..4].copy_from_slice(&l.to_be_bytes());
    let a = h.request_raw(c.ft, &b).unwrap();
    assert_eq!(a.class(), Class::Success);
    assert_eq!(a.msg().get_u32(AttributeType::LIFETIME), Some(600));
    assert_eq!(&*h.server.allocation(&c.ft).unwrap().username, "alice");
}

#[test]
fn request_validation_errors() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    assert_eq!(
        h.request(&c, Method::ALLOCATE, |_| {}).code(),
        Some(400),
        "no REQUESTED-TRANSPORT"
    );
    // RFC 6062 section 5.1: a TCP relay needs a TCP or TLS client connection.
    let tcp = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
    });
    assert_eq!(tcp.code(), Some(400));
    let sctp = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 132 << 24)
            .unwrap()
    });
    assert_eq!(sctp.code(), Some(442));
    let v6 = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::REQUESTED_ADDRESS_FAMILY, 0x02 << 24)
            .unwrap();
    });
    assert_eq!(v6.code(), Some(440), "no IPv6 relay address");
    let bad_family = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::REQUESTED_ADDRESS_FAMILY, 0x07 << 24)
            .unwrap();
    });
    assert_eq!(bad_family.code(), Some(440));
    let token_and_even = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &[1; 8])
            .unwrap();
    });
    assert_eq!(token_and_even.code(), Some(400));
    let unknown_token = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &[1; 8])
            .unwrap();
    });
    assert_eq!(unknown_token.code(), Some(508));
    // Before any allocation exists, CreatePermission and ChannelBind are mismatches.
    assert_eq!(h.permit(&c, peer()).code(), Some(437));
    assert_eq!(h.bind(&c, 0x4000, peer()).code(), Some(437));
    // An unknown comprehension-required attribute: 420 listing it.
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.attribute(AttributeType(0x7777), b"?").unwrap()
    });
    assert_eq!(a.code(), Some(420));
    assert_eq!(
        a.msg().get(AttributeType::UNKNOWN_ATTRIBUTES),
        Some(&[0x77, 0x77][..])
    );
    // DONT-FRAGMENT is accepted.
    let ok = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::DONT_FRAGMENT, &[]).unwrap();
    });
    assert_eq!(ok.class(), Class::Success);
}
