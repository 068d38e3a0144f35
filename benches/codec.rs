//! Codec benches: STUN parse, MESSAGE-INTEGRITY check, ChannelData decode and
//! response encoding, one message per iteration.
//!
//! Run: `cargo bench --bench codec`.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use turnd::stun::{
    long_term_key, write_channel_data_header, AttributeType, ChannelData, Class, Message,
    MessageType, MessageWriter, Method, CHANNEL_DATA_HEADER_LEN, PROTOCOL_UDP,
};

const USERNAME: &str = "alice";
const REALM: &str = "turnd.example.org";
const PASSWORD: &str = "correct horse battery staple";
/// A nonce of the server's shape: 24 lowercase hex characters.
const NONCE: &[u8; 24] = b"0000002a9f86d081884c7d65";

/// An authenticated Allocate request as a browser sends it after the 401:
/// REQUESTED-TRANSPORT, LIFETIME, USERNAME, REALM, NONCE, MESSAGE-INTEGRITY,
/// FINGERPRINT.
fn authenticated_allocate(key: &[u8; 16]) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        [0x5a; 12],
    )
    .expect("header fits");
    w.u32(
        AttributeType::REQUESTED_TRANSPORT,
        u32::from(PROTOCOL_UDP) << 24,
    )
    .expect("fits");
    w.u32(AttributeType::LIFETIME, 600).expect("fits");
    w.attribute(AttributeType::USERNAME, USERNAME.as_bytes())
        .expect("fits");
    w.attribute(AttributeType::REALM, REALM.as_bytes())
        .expect("fits");
    w.attribute(AttributeType::NONCE, NONCE).expect("fits");
    w.message_integrity(key).expect("fits");
    w.fingerprint().expect("fits");
    let n = w.finish();
    buf[..n].to_vec()
}

fn stun_parse(c: &mut Criterion) {
    let key = long_term_key(USERNAME, REALM, PASSWORD);
    let req = authenticated_allocate(&key);
    // Setup checks: the message is what we think it is.
    let m = Message::parse(&req).expect("request parses");
    assert!(m.has_fingerprint());
    assert!(m.check_integrity(&key));
    assert!(!m.check_integrity(&[0u8; 16]));
    assert_eq!(m.get_str(AttributeType::USERNAME), Some(USERNAME));

    let mut g = c.benchmark_group("stun");
    g.throughput(Throughput::Elements(1));
    g.bench_with_input(
        BenchmarkId::new("parse", format!("allocate_{}B", req.len())),
        &req[..],
        |b, req| b.iter(|| Message::parse(black_box(req)).is_ok()),
    );
    g.bench_with_input(
        BenchmarkId::new("parse_check_integrity", format!("allocate_{}B", req.len())),
        &req[..],
        |b, req| {
            b.iter(|| {
                Message::parse(black_box(req)).is_ok_and(|m| m.check_integrity(black_box(&key)))
            })
        },
    );
    g.finish();
}

fn channel_data_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_data");
    g.throughput(Throughput::Elements(1));
    for payload in [100usize, 1200] {
        let mut buf = vec![0xabu8; CHANNEL_DATA_HEADER_LEN + payload];
        write_channel_data_header(&mut buf, 0x4001, payload);
        let cd = ChannelData::parse(&buf).expect("channel data parses");
        assert_eq!(cd.data().len(), payload);
        g.bench_with_input(BenchmarkId::new("parse", payload), &buf[..], |b, buf| {
            b.iter(|| ChannelData::parse(black_box(buf)).map(|cd| cd.data().len()))
        });
    }
    g.finish();
}

fn encode_binding_success(c: &mut Criterion) {
    let mut g = c.benchmark_group("stun_encode");
    g.throughput(Throughput::Elements(1));
    let tid = [0x42u8; 12];
    let t = MessageType::new(Method::BINDING, Class::Success);
    let clients: [(&str, SocketAddr); 2] = [
        ("v4", "192.0.2.1:32853".parse().expect("addr")),
        (
            "v6",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .expect("addr"),
        ),
    ];
    for (name, client) in clients {
        let mut out = [0u8; 1500];
        let encode = |out: &mut [u8], client: SocketAddr| {
            let mut w = MessageWriter::new(out, t, tid).expect("header fits");
            w.xor_address(AttributeType::XOR_MAPPED_ADDRESS, client)
                .expect("fits");
            w.fingerprint().expect("fits");
            w.finish()
        };
        let n = encode(&mut out, client);
        let m = Message::parse(&out[..n]).expect("response parses");
        assert!(m.has_fingerprint());
        assert_eq!(
            m.get_xor_address(AttributeType::XOR_MAPPED_ADDRESS),
            Some(Ok(client))
        );
        g.bench_function(
            BenchmarkId::new("binding_success_xor_mapped_fingerprint", name),
            |b| b.iter(|| encode(black_box(&mut out), black_box(client))),
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    stun_parse,
    channel_data_parse,
    encode_binding_success
);
criterion_main!(benches);
