//! STUN Binding over UDP against the real turnd binary (RFC 8489).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::time::Duration;

use support::*;
use turnd::stun::{AttributeType, Class, Message, Method};

/// turnd with the standard arguments, this file's relay ports (no
/// allocation is made here) and `extra`.
fn start(extra: &[&str]) -> TestServer {
    let (min, max) = relay_ports(Suite::UdpBinding, 0);
    TestServer::start(min, max, extra)
}

fn binding(fingerprint: bool, attrs: &[Attr]) -> (turnd::stun::TransactionId, Vec<u8>) {
    let tid = new_tid();
    (
        tid,
        build(
            Method::BINDING,
            Class::Request,
            tid,
            attrs,
            None,
            fingerprint,
        ),
    )
}

#[test]
fn binding_returns_the_clients_address_as_xor_mapped_address() {
    let server = start(&[]);
    let mut c = server.client();
    let (tid, req) = binding(false, &[]);
    let r = c.transact(&req, tid);
    r.expect_success();
    assert_eq!(r.method(), Method::BINDING);
    assert_eq!(r.tid(), tid);
    assert_eq!(
        r.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
        Some(c.local_addr()),
        "XOR-MAPPED-ADDRESS must be the client's own address"
    );
    // Binding needs no credentials: no challenge, no integrity.
    assert!(r.get(AttributeType::MESSAGE_INTEGRITY).is_none());
    // Without FINGERPRINT in the request and without --fingerprint, none in the answer.
    assert!(!r.msg().has_fingerprint());

    // A second client gets its own address, not the first one's.
    let mut c2 = server.client();
    let (tid, req) = binding(false, &[]);
    let r2 = c2.transact(&req, tid);
    assert_eq!(
        r2.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
        Some(c2.local_addr())
    );
    assert_ne!(c.local_addr(), c2.local_addr());
}

#[test]
fn fingerprint_in_request_gets_a_valid_fingerprint_in_response() {
    let server = start(&[]);
    let mut c = server.client();
    let (tid, req) = binding(true, &[]);
    let r = c.transact(&req, tid);
    r.expect_success();
    // Response::new parsed it with Message::parse, which verifies the CRC;
    // check again explicitly and check that FINGERPRINT is the last attribute.
    let m = Message::parse(&r.bytes).expect("parses with a valid FINGERPRINT");
    assert!(m.has_fingerprint(), "response lacks FINGERPRINT: {r:?}");
    let n = r.bytes.len();
    assert_eq!(
        u16::from_be_bytes([r.bytes[n - 8], r.bytes[n - 7]]),
        AttributeType::FINGERPRINT.0
    );
    let crc = crc32(&r.bytes[..n - 8]) ^ 0x5354_554E;
    assert_eq!(
        u32::from_be_bytes(r.bytes[n - 4..].try_into().unwrap()),
        crc,
        "FINGERPRINT value"
    );
    assert_eq!(
        r.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
        Some(c.local_addr())
    );
}

#[test]
fn fingerprint_flag_adds_fingerprint_to_every_response() {
    let server = start(&["--fingerprint"]);
    let mut c = server.client();
    let (tid, req) = binding(false, &[]);
    let r = c.transact(&req, tid);
    r.expect_success();
    assert!(r.msg().has_fingerprint(), "--fingerprint: {r:?}");
    // Error responses too (a 401 challenge).
    let r = c.request_unsigned(Method::ALLOCATE, &[Attr::transport_udp()]);
    r.expect_error(401);
    assert!(r.msg().has_fingerprint(), "--fingerprint on 401: {r:?}");
}

#[test]
fn unknown_comprehension_required_attribute_gets_420_listing_it() {
    let server = start(&[]);
    let mut c = server.client();
    let (tid, req) = binding(
        false,
        &[
            Attr::Raw(AttributeType(0x7777), b"abc".to_vec()),
            // Comprehension-optional unknown attributes are ignored, not listed.
            Attr::Raw(AttributeType(0xC0DE), b"ignored".to_vec()),
        ],
    );
    let r = c.transact(&req, tid);
    r.expect_error(420);
    assert_eq!(r.method(), Method::BINDING);
    let unknown = r
        .get(AttributeType::UNKNOWN_ATTRIBUTES)
        .expect("420 must carry UNKNOWN-ATTRIBUTES");
    let listed: Vec<u16> = unknown
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(listed, vec![0x7777], "UNKNOWN-ATTRIBUTES");

    // The same on a TURN method, before any authentication.
    let r = c.request_unsigned(
        Method::ALLOCATE,
        &[
            Attr::transport_udp(),
            Attr::Raw(AttributeType(0x7001), vec![]),
        ],
    );
    r.expect_error(420);
    assert_eq!(
        r.get(AttributeType::UNKNOWN_ATTRIBUTES),
        Some(vec![0x70, 0x01])
    );
}

#[test]
fn garbage_gets_no_reply_and_the_server_keeps_answering() {
    let mut server = start(&[]);
    let mut c = server.client();

    let (_, valid) = binding(false, &[]);
    let mut garbage: Vec<(&str, Vec<u8>)> = vec![
        ("empty datagram", vec![]),
        ("one byte", vec![0]),
        ("truncated header (10 bytes)", valid[..10].to_vec()),
        ("truncated header (19 bytes)", valid[..19].to_vec()),
    ];
    let mut bad_cookie = valid.clone();
    bad_cookie[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    garbage.push(("bad magic cookie", bad_cookie));
    let mut top_bits = valid.clone();
    top_bits[0] |= 0xC0;
    garbage.push(("first two bits set", top_bits));
    let mut unaligned = valid.clone();
    unaligned.extend_from_slice(&[0, 0]);
    unaligned[3] = 2;
    garbage.push(("length not a multiple of 4", unaligned));
    // A request whose FINGERPRINT does not match is not STUN: discarded.
    let tid = new_tid();
    let mut bad_fp = build(Method::BINDING, Class::Request, tid, &[], None, true);
    let n = bad_fp.len();
    bad_fp[n - 1] ^= 0xff;
    garbage.push(("FINGERPRINT mismatch", bad_fp));
    // Indications are never answered.
    garbage.push((
        "Binding indication",
        build(
            Method::BINDING,
            Class::Indication,
            new_tid(),
            &[],
            None,
            false,
        ),
    ));
    // Responses sent to the server are not answered either.
    garbage.push((
        "Binding success response",
        build(Method::BINDING, Class::Success, new_tid(), &[], None, false),
    ));
    // ChannelData without an allocation.
    garbage.push((
        "ChannelData without allocation",
        channel_data_bytes(0x4000, b"hi"),
    ));
    // Random bytes with a deterministic generator (never a valid cookie).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in [4usize, 20, 28, 100, 548, 1400] {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        if v.len() >= 8 {
            v[4] = 0; // never the magic cookie 0x2112A442
        }
        garbage.push(("random bytes", v));
    }

    for (what, bytes) in &garbage {
        c.send_raw(bytes);
        if let Some(reply) = c.recv_raw(Duration::from_millis(150)) {
            panic!("{what}: expected no reply, got {reply:02x?}");
        }
    }
    // Nothing late either.
    c.expect_silence(SILENCE);

    // Still alive and answering the same client.
    assert!(server.is_running(), "turnd exited after garbage");
    let (tid, req) = binding(false, &[]);
    let r = c.transact(&req, tid);
    r.expect_success();
    assert_eq!(
        r.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
        Some(c.local_addr())
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// CRC-32 (IEEE), bitwise; independent of the server's implementation.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// `allowed-client-ip` and `denied-client-ip`: a refused client gets no
/// answer at all (not even to Binding, nor a 401 to Allocate); the others
/// are served as usual.
#[test]
fn refused_clients_get_no_answer() {
    let server = start(&[
        "--allowed-client-ip",
        "127.0.0.0/29",
        "--denied-client-ip",
        "127.0.0.2",
    ]);
    let mut ok = Client::new_on("127.0.0.1", server.addr, USER, PASSWORD);
    ok.binding();
    for ip in ["127.0.0.2", "127.0.0.9"] {
        let mut c = Client::new_on(ip, server.addr, USER, PASSWORD);
        let (_, req) = binding(false, &[]);
        c.send_raw(&req);
        c.send_raw(&unauthenticated_allocate(new_tid()));
        assert!(
            c.recv_raw(SILENCE).is_none(),
            "{ip} is refused: no answer expected"
        );
    }
    // The allowed client is still served afterwards.
    ok.binding();
}
