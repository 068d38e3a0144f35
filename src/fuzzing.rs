//! The bodies of the fuzz targets in `fuzz/`: one plain function per
//! target, each taking the fuzzer's bytes and panicking when an invariant
//! breaks. The targets in `fuzz/fuzz_targets/` are one-line calls of these,
//! and `cargo test` replays the committed corpus (`fuzz/corpus/<target>/`)
//! and the crash regressions (`fuzz/regressions/<target>/`) through the same
//! functions, so a regression fails without the fuzzer.
//!
//! Built only with the `fuzzing` feature (the fuzz crate enables it) and in
//! the crate's own tests: the production binary carries none of it.
//!
//! What each target asserts is in `fuzz/README.md` and on each function.

#![allow(clippy::disallowed_methods)] // the state-machine target picks an arbitrary epoch

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use hmac::{Hmac, Mac};

use crate::auth::{Credentials, Key, PasswordAlgorithm, PASSWORD_ALGORITHMS_VALUE};
use crate::stun::{
    decode_address, decode_error_code, decode_xor_address, stream_frame_len,
    write_channel_data_header, AddressFamily, AttributeType, ChannelData, ChannelDataError,
    ChannelNumber, Class, DecodeError, ErrorCode, FrameError, Message, MessageType, MessageWriter,
    Method, CHANNEL_DATA_HEADER_LEN, FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE, MAX_STREAM_FRAME,
};
use crate::turn::request::{
    AllocateRequest, ChannelBindRequest, ConnectRequest, ConnectionBindRequest,
    CreatePermissionRequest, RefreshRequest, SendIndication,
};
use crate::turn::{
    ClientOutput, FiveTuple, PeerOutput, RelayIo, Server, ServerConfig, SharedState, Transport,
    MAX_CHANNELS, MAX_PERMISSIONS, MIN_OUT_BUFFER,
};

// ---------------------------------------------------------------------------
// STUN message parser, MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT
// ---------------------------------------------------------------------------

/// The key the codec targets check MESSAGE-INTEGRITY and
/// MESSAGE-INTEGRITY-SHA256 with (any bytes do; HMAC takes any key length).
const FUZZ_KEY: &[u8] = b"turnd-fuzz-key";

/// `stun_message`: [`Message::parse`] on arbitrary bytes, then every
/// accessor and request decoder on what parsed.
///
/// Asserts: no panic; a parsed message is exactly `20 + length` bytes and
/// parses again to the same view; its attributes lie inside it; the
/// MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT checks agree
/// with an independent computation here (RFC 8489, sections 14.5-14.7):
/// the HMAC is recomputed over the bytes before the attribute with the
/// length adjusted, written into a copy, and the copy must check; a
/// message refused only for its FINGERPRINT's CRC must parse once the CRC
/// is corrected.
pub fn stun_message(data: &[u8]) {
    let msg = match Message::parse(data) {
        Ok(msg) => msg,
        Err(DecodeError::FingerprintMismatch) => {
            // Correct the CRC independently: the message must then parse.
            let fixed = with_fixed_fingerprint(data);
            let msg = Message::parse(&fixed).expect("a corrected FINGERPRINT parses");
            assert!(msg.has_fingerprint());
            return;
        }
        Err(_) => return,
    };
    let bytes = msg.as_bytes();
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    assert_eq!(bytes.len(), HEADER_LEN + len);
    assert_eq!(bytes, &data[..bytes.len()]);
    let again = Message::parse(bytes).expect("a parsed message parses again");
    assert_eq!(again.message_type(), msg.message_type());
    assert_eq!(again.transaction_id(), msg.transaction_id());
    assert!(again.attributes().eq(msg.attributes()));
    assert_eq!(
        msg.message_type(),
        MessageType::from_u16(u16::from_be_bytes([data[0], data[1]]))
    );
    assert_eq!(
        msg.message_type().to_u16() & 0x3FFF,
        u16::from_be_bytes([data[0], data[1]])
    );
    assert!(msg.unknown_attributes().len() <= crate::stun::MAX_UNKNOWN);

    let tid = msg.transaction_id();
    for (t, v) in msg.attributes() {
        let start = v.as_ptr() as usize - bytes.as_ptr() as usize;
        assert!(start + v.len() <= bytes.len());
        assert!(msg.get(t).is_some());
        match t {
            AttributeType::XOR_MAPPED_ADDRESS
            | AttributeType::XOR_PEER_ADDRESS
            | AttributeType::XOR_RELAYED_ADDRESS => {
                let _ = decode_xor_address(v, &tid);
            }
            AttributeType::MAPPED_ADDRESS | AttributeType::ALTERNATE_SERVER => {
                let _ = decode_address(v);
            }
            AttributeType::ERROR_CODE => {
                if let Ok((code, _)) = decode_error_code(v) {
                    assert!(code.0 < 1000);
                }
            }
            _ => {}
        }
    }
    let _ = msg.get_str(AttributeType::USERNAME);
    let _ = msg.get_u32(AttributeType::LIFETIME);
    let _ = msg.requested_transport();
    let _ = msg.dont_fragment();
    let _ = msg.even_port();
    let _ = msg.reservation_token();
    let _ = msg.requested_address_family();
    let _ = msg.additional_address_family();
    let _ = msg.lifetime();
    let _ = msg.channel_number();
    let _ = msg.password_algorithm();
    let _ = msg.connection_id();
    for transport in [Transport::Udp, Transport::Tcp] {
        let _ = AllocateRequest::parse(&msg, transport);
    }
    let _ = RefreshRequest::parse(&msg).map(|r| r.deletes());
    let _ = CreatePermissionRequest::parse(&msg, |_| Ok(())).map(|r| r.peers().len());
    let _ = ChannelBindRequest::parse(&msg);
    let _ = SendIndication::parse(&msg);
    let _ = ConnectRequest::parse(&msg);
    let _ = ConnectionBindRequest::parse(&msg);

    // MESSAGE-INTEGRITY (HMAC-SHA1): compute it independently and check.
    // One after MESSAGE-INTEGRITY-SHA256 is ignored (RFC 8489, section 14.6).
    let sha256_at = first_attribute(bytes, AttributeType::MESSAGE_INTEGRITY_SHA256);
    let mi_at = first_attribute(bytes, AttributeType::MESSAGE_INTEGRITY)
        .filter(|&o| sha256_at.is_none_or(|s| o < s));
    if let Some(off) = mi_at {
        assert!(msg.has_integrity());
        let mut signed = bytes.to_vec();
        let tag = hmac_over::<Hmac<sha1::Sha1>>(&signed, off, 20);
        signed[off + 4..off + 24].copy_from_slice(&tag[..20]);
        let m = Message::parse(&signed);
        if let Ok(m) = m {
            assert!(
                m.check_integrity(FUZZ_KEY),
                "independent HMAC-SHA1 must check"
            );
            assert!(!m.check_integrity(b"another key"));
        } else {
            // Only a FINGERPRINT over the old bytes may now mismatch.
            assert_eq!(m.err(), Some(DecodeError::FingerprintMismatch));
        }
        assert_eq!(
            msg.check_integrity(FUZZ_KEY),
            bytes[off + 4..off + 24] == tag[..20]
        );
    } else {
        assert!(!msg.has_integrity());
        assert!(!msg.check_integrity(FUZZ_KEY));
    }
    // MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256 truncated to 16-32 bytes), when
    // it is not hidden behind MESSAGE-INTEGRITY.
    if msg.has_integrity_sha256() {
        let off = first_attribute(bytes, AttributeType::MESSAGE_INTEGRITY_SHA256)
            .expect("the parser saw it");
        let l = u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]) as usize;
        assert!((16..=32).contains(&l) && l % 4 == 0);
        let mut signed = bytes.to_vec();
        let tag = hmac_over::<Hmac<sha2::Sha256>>(&signed, off, l);
        signed[off + 4..off + 4 + l].copy_from_slice(&tag[..l]);
        if let Ok(m) = Message::parse(&signed) {
            assert!(
                m.check_integrity_sha256(FUZZ_KEY),
                "independent HMAC-SHA256 must check"
            );
        }
        assert_eq!(
            msg.check_integrity_sha256(FUZZ_KEY),
            bytes[off + 4..off + 4 + l] == tag[..l]
        );
    } else {
        assert!(!msg.check_integrity_sha256(FUZZ_KEY));
    }
    // Visibility (RFC 8489, sections 14.5-14.7): attributes after
    // MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 are ignored.
    let mut visible = Vec::new();
    for o in attribute_offsets(bytes) {
        let t = u16::from_be_bytes([bytes[o], bytes[o + 1]]);
        if t == AttributeType::MESSAGE_INTEGRITY.0 || t == AttributeType::MESSAGE_INTEGRITY_SHA256.0
        {
            break;
        }
        if t != AttributeType::FINGERPRINT.0 {
            visible.push(t);
        }
    }
    let seen: Vec<u16> = msg
        .attributes()
        .map(|(t, _)| t.0)
        .filter(|&t| !is_trailer(t))
        .collect();
    assert_eq!(seen, visible, "visible attributes");
    // FINGERPRINT: present exactly when the last attribute is one, and
    // then its CRC is right.
    let last = attribute_offsets(bytes).last().copied();
    let fp_last = last.is_some_and(|o| {
        u16::from_be_bytes([bytes[o], bytes[o + 1]]) == AttributeType::FINGERPRINT.0
    });
    assert_eq!(msg.has_fingerprint(), fp_last);
    if fp_last {
        assert_eq!(with_fixed_fingerprint(bytes), bytes);
    }
}

/// Offsets of every attribute header of a message that parsed.
fn attribute_offsets(msg: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = HEADER_LEN;
    while off + 4 <= msg.len() {
        out.push(off);
        let l = u16::from_be_bytes([msg[off + 2], msg[off + 3]]) as usize;
        off += 4 + ((l + 3) & !3);
    }
    out
}

/// Offset of the first attribute of type `t` in a message that parsed.
fn first_attribute(msg: &[u8], t: AttributeType) -> Option<usize> {
    attribute_offsets(msg)
        .into_iter()
        .find(|&o| u16::from_be_bytes([msg[o], msg[o + 1]]) == t.0)
}

/// HMAC `M` with [`FUZZ_KEY`] as RFC 8489 section 14.5 defines it: over the
/// message up to the attribute at `off`, the header length counting up to
/// the end of that attribute (`value_len` bytes of value).
fn hmac_over<M: Mac + hmac::digest::KeyInit>(msg: &[u8], off: usize, value_len: usize) -> Vec<u8> {
    let mut prefix = msg[..off].to_vec();
    let len = (off + 4 + value_len - HEADER_LEN) as u16;
    prefix[2..4].copy_from_slice(&len.to_be_bytes());
    let mut mac = <M as Mac>::new_from_slice(FUZZ_KEY).expect("any key length");
    mac.update(&prefix);
    mac.finalize().into_bytes().to_vec()
}

/// `data`'s message with its last attribute's (FINGERPRINT's) CRC set as
/// RFC 8489 section 14.7 says: CRC-32 of the message before it, the length
/// counting it, xored with 0x5354554e. Computed from the whole prefix, not
/// the codec's streaming way.
fn with_fixed_fingerprint(data: &[u8]) -> Vec<u8> {
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let mut fixed = data[..HEADER_LEN + len].to_vec();
    let off = fixed.len() - 8;
    let crc = crc32fast::hash(&fixed[..off]) ^ FINGERPRINT_XOR;
    fixed[off + 4..off + 8].copy_from_slice(&crc.to_be_bytes());
    fixed
}

// ---------------------------------------------------------------------------
// ChannelData
// ---------------------------------------------------------------------------

/// `channel_data`: [`ChannelData::parse`] on arbitrary bytes.
///
/// Asserts: no panic; a parsed message's channel is in 0x4000-0x7FFF and
/// its data is exactly the header's length, right after the header
/// (RFC 8656, section 12.4); a refused one is refused for the reason its
/// bytes give; writing the header back gives the same bytes; where the
/// stream framer frames a ChannelData message, that frame parses.
pub fn channel_data(data: &[u8]) {
    match ChannelData::parse(data) {
        Ok(cd) => {
            let number = u16::from_be_bytes([data[0], data[1]]);
            let len = u16::from_be_bytes([data[2], data[3]]) as usize;
            assert_eq!(cd.channel(), number);
            assert!((0x4000..=0x7FFF).contains(&cd.channel()));
            assert_eq!(cd.channel_number(), ChannelNumber::new(number).unwrap());
            assert_eq!(
                cd.data(),
                &data[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len]
            );
            let mut header = [0u8; 4];
            write_channel_data_header(&mut header, cd.channel(), cd.data().len());
            assert_eq!(header, data[..4]);
        }
        Err(ChannelDataError::Truncated { need, got }) => {
            assert_eq!(got, data.len());
            assert!(need > got);
            assert!(
                data.len() < 4
                    || ChannelNumber::new(u16::from_be_bytes([data[0], data[1]])).is_some()
            );
        }
        Err(ChannelDataError::BadChannel(n)) => {
            assert_eq!(n, u16::from_be_bytes([data[0], data[1]]));
            assert!(ChannelNumber::new(n).is_none());
        }
    }
    if let Ok(Some(n)) = stream_frame_len(data) {
        if data[0] >> 6 == 1 {
            let cd = ChannelData::parse(&data[..n]).expect("a framed ChannelData parses");
            assert!(CHANNEL_DATA_HEADER_LEN + cd.data().len() <= n);
            assert!(n - (CHANNEL_DATA_HEADER_LEN + cd.data().len()) < 4);
        }
    }
}

// ---------------------------------------------------------------------------
// The TCP/TLS stream framer
// ---------------------------------------------------------------------------

/// A stream reader as the TCP/TLS shell runs one: bytes are appended as
/// they come; whole frames ([`stream_frame_len`], RFC 8656 section 12.5)
/// are split off the front until one is incomplete or the stream is not
/// TURN (then the connection closes).
#[derive(Debug, Default)]
struct StreamFramer {
    buf: Vec<u8>,
    frames: Vec<Vec<u8>>,
    error: Option<FrameError>,
}

impl StreamFramer {
    fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match stream_frame_len(&self.buf) {
                Ok(Some(n)) => {
                    assert!(n <= self.buf.len());
                    assert!(n <= MAX_STREAM_FRAME, "frame of {n} bytes");
                    assert!(n >= 4);
                    self.frames.push(self.buf.drain(..n).collect());
                }
                Ok(None) => {
                    if let Ok(Some(_)) | Err(_) = stream_frame_len(&self.buf[..0]) {
                        unreachable!("an empty buffer needs more bytes");
                    }
                    return;
                }
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
    }
}

/// `stream_framer`: a byte stream split into arbitrary chunks.
///
/// Input layout: one byte `n`, then `n` chunk sizes (bytes, used in turn,
/// 0 meaning 1), then the stream. Asserts: no panic; the frames (and the
/// bytes left over, and the framing error that closes the connection)
/// are the same whether the stream comes in those chunks, one byte at a
/// time, or all at once; every frame is at most [`MAX_STREAM_FRAME`] bytes;
/// a STUN frame is never refused by [`Message::parse`] as truncated and a
/// ChannelData frame always parses.
pub fn stream_framer(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    let mut whole = StreamFramer::default();
    whole.push(stream);

    let mut chunked = StreamFramer::default();
    let mut off = 0;
    let mut i = 0;
    while off < stream.len() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .map_or(stream.len(), |&s| s.max(1) as usize);
        let end = (off + size).min(stream.len());
        chunked.push(&stream[off..end]);
        off = end;
        i += 1;
    }
    let mut bytewise = StreamFramer::default();
    if stream.len() <= 1024 {
        for b in stream {
            bytewise.push(std::slice::from_ref(b));
        }
        assert_eq!(bytewise.frames, whole.frames);
        assert_eq!(bytewise.error, whole.error);
    }
    assert_eq!(chunked.frames, whole.frames);
    assert_eq!(chunked.error, whole.error);
    if whole.error.is_none() {
        assert_eq!(chunked.buf, whole.buf);
    }
    let framed: usize = whole.frames.iter().map(Vec::len).sum();
    assert_eq!(&stream[..framed], whole.frames.concat().as_slice());
    for f in &whole.frames {
        match f[0] >> 6 {
            0 => assert!(!matches!(
                Message::parse(f),
                Err(DecodeError::Truncated { .. })
            )),
            1 => {
                ChannelData::parse(f).expect("a framed ChannelData parses");
            }
            _ => unreachable!("the framer refuses other first bits"),
        }
    }
}

// ---------------------------------------------------------------------------
// MessageWriter round trip
// ---------------------------------------------------------------------------

/// One attribute the round-trip target writes.
#[derive(Arbitrary, Debug)]
enum WriteOp {
    Raw(u16, Vec<u8>),
    U32(u16, u32),
    XorAddress(u16, ArbAddr),
    Address(u16, ArbAddr),
    ErrorCode(u16, bool),
    UnknownAttributes(Vec<u16>),
    RequestedTransport(u8),
    EvenPort(bool),
    ReservationToken([u8; 8]),
    RequestedAddressFamily(bool),
    Lifetime(u32),
    ChannelNumber(u16),
    ConnectionId(u32),
}

/// A socket address built from fuzzer bytes.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum ArbAddr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl ArbAddr {
    fn get(self) -> SocketAddr {
        match self {
            ArbAddr::V4(ip, port) => SocketAddr::new(Ipv4Addr::from(ip).into(), port),
            ArbAddr::V6(ip, port) => SocketAddr::new(Ipv6Addr::from(ip).into(), port),
        }
    }
}

/// Input of the round-trip target.
#[derive(Arbitrary, Debug)]
struct WriterInput {
    message_type: u16,
    tid: [u8; 12],
    buffer_len: u16,
    ops: Vec<WriteOp>,
    integrity: Option<Vec<u8>>,
    integrity_sha256: Option<Vec<u8>>,
    fingerprint: bool,
}

/// The attribute types a raw write may not use: the ones whose position
/// and value the writer's own methods own.
fn is_trailer(t: u16) -> bool {
    t == AttributeType::MESSAGE_INTEGRITY.0
        || t == AttributeType::MESSAGE_INTEGRITY_SHA256.0
        || t == AttributeType::FINGERPRINT.0
}

/// `writer_roundtrip`: whatever [`MessageWriter`] writes parses back.
///
/// Input: a structured sequence (`arbitrary`) of attribute writes, then
/// optional MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT,
/// into a buffer of fuzzer-chosen size. Asserts: every write either fits or
/// fails with `BufferFull` leaving the message as it was; the result parses
/// with the same type and transaction ID and exactly the attributes
/// written, in order, each decoding to the value written (addresses,
/// ERROR-CODE, LIFETIME...); the integrity attributes check with their key
/// (RFC 8489, sections 14.5 and 14.6) and FINGERPRINT is seen (14.7).
pub fn writer_roundtrip(data: &[u8]) {
    let Ok(input) = WriterInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let t = MessageType::from_u16(input.message_type & 0x3FFF);
    let mut buf = vec![0u8; input.buffer_len as usize % 2048 + 1];
    let Ok(mut w) = MessageWriter::new(&mut buf, t, input.tid) else {
        assert!(input.buffer_len as usize % 2048 + 1 < HEADER_LEN);
        return;
    };
    // What was written: its type and what it must read back as.
    let mut written: Vec<(u16, Expect)> = Vec::new();
    for op in &input.ops {
        let before = written.len();
        let r = match op {
            WriteOp::Raw(t, v) if !is_trailer(*t) => w
                .attribute(AttributeType(*t), v)
                .map(|_| (*t, Expect::Bytes(v.clone()))),
            WriteOp::Raw(..) => continue,
            WriteOp::U32(t, v) if !is_trailer(*t) => w
                .u32(AttributeType(*t), *v)
                .map(|_| (*t, Expect::Bytes(v.to_be_bytes().to_vec()))),
            WriteOp::U32(..) => continue,
            WriteOp::XorAddress(t, a) if !is_trailer(*t) => {
                let addr = a.get();
                w.xor_address(AttributeType(*t), addr)
                    .map(|_| (*t, Expect::Address(addr, true)))
            }
            WriteOp::Address(t, a) if !is_trailer(*t) => {
                let addr = a.get();
                w.address(AttributeType(*t), addr)
                    .map(|_| (*t, Expect::Address(addr, false)))
            }
            WriteOp::XorAddress(..) | WriteOp::Address(..) => continue,
            WriteOp::ErrorCode(code, reason) => {
                let code = ErrorCode(300 + code % 300);
                w.error_code_with_reason(code, *reason)
                    .map(|_| (AttributeType::ERROR_CODE.0, Expect::ErrorCode(code)))
            }
            WriteOp::UnknownAttributes(types) => {
                let v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
                w.unknown_attributes(types)
                    .map(|_| (AttributeType::UNKNOWN_ATTRIBUTES.0, Expect::Bytes(v)))
            }
            WriteOp::RequestedTransport(p) => w.requested_transport(*p).map(|_| {
                (
                    AttributeType::REQUESTED_TRANSPORT.0,
                    Expect::Bytes(vec![*p, 0, 0, 0]),
                )
            }),
            WriteOp::EvenPort(r) => w.even_port(*r).map(|_| {
                (
                    AttributeType::EVEN_PORT.0,
                    Expect::Bytes(vec![if *r { 0x80 } else { 0 }]),
                )
            }),
            WriteOp::ReservationToken(tok) => w.reservation_token(tok).map(|_| {
                (
                    AttributeType::RESERVATION_TOKEN.0,
                    Expect::Bytes(tok.to_vec()),
                )
            }),
            WriteOp::RequestedAddressFamily(v6) => {
                let (f, n) = if *v6 {
                    (AddressFamily::V6, 2)
                } else {
                    (AddressFamily::V4, 1)
                };
                w.requested_address_family(f).map(|_| {
                    (
                        AttributeType::REQUESTED_ADDRESS_FAMILY.0,
                        Expect::Bytes(vec![n, 0, 0, 0]),
                    )
                })
            }
            WriteOp::Lifetime(s) => w.lifetime(*s).map(|_| {
                (
                    AttributeType::LIFETIME.0,
                    Expect::Bytes(s.to_be_bytes().to_vec()),
                )
            }),
            WriteOp::ChannelNumber(n) => match ChannelNumber::new(*n) {
                Some(c) => w.channel_number(c).map(|_| {
                    (
                        AttributeType::CHANNEL_NUMBER.0,
                        Expect::Bytes([n.to_be_bytes(), [0, 0]].concat()),
                    )
                }),
                None => continue,
            },
            WriteOp::ConnectionId(id) => w.connection_id(*id).map(|_| {
                (
                    AttributeType::CONNECTION_ID.0,
                    Expect::Bytes(id.to_be_bytes().to_vec()),
                )
            }),
        };
        match r {
            Ok(entry) => written.push(entry),
            Err(_) => assert_eq!(written.len(), before),
        }
    }
    let mut mi_key = None;
    if let Some(k) = &input.integrity {
        if w.message_integrity(k).is_ok() {
            mi_key = Some(k.clone());
        }
    }
    let mut sha_key = None;
    if let Some(k) = &input.integrity_sha256 {
        if w.message_integrity_sha256(k).is_ok() {
            sha_key = Some(k.clone());
        }
    }
    let fingerprint = input.fingerprint && w.fingerprint().is_ok();
    let n = w.finish();
    let bytes = &buf[..n];
    let msg = Message::parse(bytes).expect("what the writer writes parses");
    assert_eq!(msg.as_bytes().len(), n);
    assert_eq!(msg.message_type(), t);
    assert_eq!(msg.transaction_id(), input.tid);
    assert_eq!(
        u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        MAGIC_COOKIE
    );
    // MESSAGE-INTEGRITY(-SHA256) are visible attributes too; compared below.
    let seen: Vec<(AttributeType, &[u8])> =
        msg.attributes().filter(|(t, _)| !is_trailer(t.0)).collect();
    assert_eq!(seen.len(), written.len(), "attributes written and parsed");
    let tid = input.tid;
    for ((t, v), (wt, want)) in seen.iter().zip(&written) {
        assert_eq!(t.0, *wt);
        match want {
            Expect::Bytes(b) => assert_eq!(v, &b.as_slice()),
            Expect::Address(addr, true) => assert_eq!(decode_xor_address(v, &tid), Ok(*addr)),
            Expect::Address(addr, false) => assert_eq!(decode_address(v), Ok(*addr)),
            Expect::ErrorCode(code) => {
                let (got, _) = decode_error_code(v).expect("ERROR-CODE decodes");
                assert_eq!(got, *code);
            }
        }
    }
    assert_eq!(msg.has_integrity(), mi_key.is_some());
    if let Some(k) = &mi_key {
        assert!(msg.check_integrity(k));
    }
    assert_eq!(msg.has_integrity_sha256(), sha_key.is_some());
    if let Some(k) = &sha_key {
        // Hidden behind MESSAGE-INTEGRITY when both are there: then only
        // the parser's record of it is checked.
        assert!(msg.check_integrity_sha256(k));
    }
    assert_eq!(msg.has_fingerprint(), fingerprint);
    // The independent checks of the parser target hold for it too.
    stun_message(bytes);
}

/// What a written attribute must read back as.
#[derive(Debug)]
enum Expect {
    /// Exactly these value bytes.
    Bytes(Vec<u8>),
    /// This address, XOR-encoded (true) or plain.
    Address(SocketAddr, bool),
    /// This error code (the reason phrase is the writer's).
    ErrorCode(ErrorCode),
}

// ---------------------------------------------------------------------------
// The sans-IO Server driven by a structured sequence
// ---------------------------------------------------------------------------

/// The realm of the state-machine target.
const REALM: &str = "fuzz.example";
/// The REST API shared secret of the state-machine target.
const REST_SECRET: &str = "rest-secret";
/// Lowest relay port of the state-machine target: a small range, so
/// allocations run out of ports.
const MIN_PORT: u16 = 50_000;
/// Highest relay port of the state-machine target (16 ports).
const MAX_PORT: u16 = 50_015;
/// Unix time at the state-machine target's epoch (seconds).
const UNIX_EPOCH_SECS: u64 = 1_700_000_000;
/// Steps of one state-machine run at most.
const MAX_STEPS: usize = 200;
/// Size of the `out` buffer passed to the server: every Data indication fits.
const OUT_LEN: usize = 65_600;

fn relay_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))
}

fn relay_v6() -> IpAddr {
    "2001:db8::1".parse().expect("address")
}

/// The 5-tuples clients use: UDP over IPv4 (two ports of one host) and
/// IPv6, two TCP connections of one host (a control and a data connection
/// for RFC 6062), and TLS.
fn five_tuple(i: u8) -> FiveTuple {
    let v4 = |host: u8, port: u16, transport| FiveTuple {
        client: SocketAddr::new(Ipv4Addr::new(198, 51, 100, host).into(), port),
        server: SocketAddr::new(relay_v4(), 3478),
        transport,
    };
    match i % 6 {
        0 => v4(7, 40_000, Transport::Udp),
        1 => v4(7, 40_001, Transport::Udp),
        2 => FiveTuple {
            client: "[2001:db8:1::7]:40002".parse().expect("address"),
            server: SocketAddr::new(relay_v6(), 3478),
            transport: Transport::Udp,
        },
        3 => v4(8, 40_003, Transport::Tcp),
        4 => v4(8, 40_004, Transport::Tcp),
        _ => v4(9, 40_005, Transport::Tls),
    }
}

/// A peer the fuzzer names: a fixed list (public, denied, this host's own
/// addresses, IPv4-mapped) or the relayed address of a live allocation.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum PeerChoice {
    Listed(u8),
    Relay(u8),
    Any(ArbAddr),
}

/// A channel number the fuzzer names: one bound on the allocation, or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum ChannelChoice {
    Bound(u8),
    Any(u16),
}

/// Who signs a request.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Signer {
    /// Not signed (the first step of the 401 dance, or a Binding).
    None,
    /// alice, MD5 key and MESSAGE-INTEGRITY.
    Alice,
    /// bob, MD5 key and MESSAGE-INTEGRITY.
    Bob,
    /// alice with PASSWORD-ALGORITHM SHA-256 and MESSAGE-INTEGRITY-SHA256.
    AliceSha256,
    /// alice named by USERHASH (RFC 8489, section 14.4).
    AliceUserhash,
    /// alice with a wrong password.
    WrongPassword,
    /// A TURN REST API user whose credential expires `offset` seconds
    /// after the epoch.
    Rest(i16),
}

/// The methods of a signed request.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum ReqMethod {
    Binding,
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
    Connect,
    ConnectionBind,
    Other(u16),
}

/// A request built from fuzzer-chosen fields.
#[derive(Arbitrary, Debug)]
struct Req {
    tuple: u8,
    method: ReqMethod,
    signer: Signer,
    /// REQUESTED-TRANSPORT: 0 UDP, 1 TCP, 2 none, else that protocol.
    transport: u8,
    lifetime: Option<u32>,
    peers: Vec<PeerChoice>,
    channel: ChannelChoice,
    even_port: Option<bool>,
    /// RESERVATION-TOKEN: the last one seen, or these bytes.
    token: Option<Option<[u8; 8]>>,
    family: Option<u8>,
    additional_family: Option<u8>,
    dont_fragment: bool,
    /// CONNECTION-ID: one seen (by index), or any.
    connection_id: Option<Result<u8, u32>>,
    extra: Option<(u16, Vec<u8>)>,
    fingerprint: bool,
}

/// One step of the state-machine target.
#[derive(Arbitrary, Debug)]
enum Action {
    /// Raw bytes from a client.
    Raw { tuple: u8, bytes: Vec<u8> },
    /// A request built from fields, signed as chosen (a 401 or 438 answer's
    /// NONCE is taken and the request sent once more).
    Request(Req),
    /// A Send indication.
    Send {
        tuple: u8,
        peer: PeerChoice,
        len: u16,
        dont_fragment: bool,
    },
    /// A ChannelData message (over streams padded to 4 bytes, or not).
    ChannelData {
        tuple: u8,
        channel: ChannelChoice,
        len: u16,
        padding: u8,
    },
    /// A datagram from a peer to a relayed address.
    Peer {
        relay: u8,
        peer: PeerChoice,
        len: u16,
    },
    /// A peer's TCP connection to a TCP relay (RFC 6062 section 5.3).
    PeerConnection { relay: u8, peer: PeerChoice },
    /// The outcome of a Connect's connection attempt (RFC 6062 section 5.2).
    ConnectResult { which: u8, ok: bool },
    /// A TCP relay connection closed.
    TcpConnectionClosed { which: u8 },
    /// A client's TCP/TLS connection closed.
    ConnectionClosed { tuple: u8 },
    /// The last client input once more (a retransmission).
    Retransmit,
    /// The clock moves on.
    Advance { secs: u16, millis: u16 },
    /// The admin API deletes an allocation.
    DeleteById { which: u8 },
    /// Tables are compacted.
    Compact,
    /// Graceful shutdown starts.
    Drain,
}

/// The state-machine target's settings.
#[derive(Arbitrary, Debug)]
struct Setup {
    user_quota: u8,
    total_quota: u8,
    max_bps: u16,
    fingerprint: bool,
    reason_phrases: bool,
    /// Keep the per-source limits of unauthenticated answers and failures.
    limits: bool,
    /// Ports whose number is below `MIN_PORT + busy % 4` cannot be bound.
    busy: u8,
    software: bool,
}

/// The fake relay IO: records the relay addresses open, refusing to open
/// one twice or close one that is not open (each relay port opened is
/// closed exactly once), and the TCP connections asked for.
#[derive(Debug, Default)]
struct FakeIo {
    open: HashSet<SocketAddr>,
    /// Ports below this cannot be bound (another program holds them).
    busy_below: u16,
    connects: Vec<u32>,
    closed_tcp: HashSet<u32>,
}

impl RelayIo for FakeIo {
    fn open(&mut self, relay: SocketAddr) -> io::Result<()> {
        assert!(
            (MIN_PORT..=MAX_PORT).contains(&relay.port()),
            "relay port {relay} outside the range"
        );
        if relay.port() < self.busy_below {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        assert!(self.open.insert(relay), "relay {relay} opened twice");
        Ok(())
    }
    fn close(&mut self, relay: SocketAddr) {
        assert!(
            self.open.remove(&relay),
            "relay {relay} closed but not open"
        );
    }
    fn open_tcp(&mut self, relay: SocketAddr) -> io::Result<()> {
        self.open(relay)
    }
    fn connect_tcp(&mut self, relay: SocketAddr, peer: SocketAddr, id: u32) {
        let _ = (relay, peer);
        self.connects.push(id);
    }
    fn close_tcp(&mut self, id: u32) {
        self.closed_tcp.insert(id);
    }
}

/// The state-machine target's world: the server, its shared state (quota
/// ledger, port pools), the fake IO, the clock and what clients learned.
struct World {
    server: Server,
    shared: SharedState,
    io: FakeIo,
    epoch: Instant,
    now: Instant,
    out: Vec<u8>,
    /// NONCE last answered to each 5-tuple.
    nonces: HashMap<u8, Vec<u8>>,
    /// RESERVATION-TOKEN last answered.
    token: Option<[u8; 8]>,
    /// CONNECTION-IDs seen (Connect answers, ConnectionAttempts, connects).
    connection_ids: Vec<u32>,
    last_input: Option<(FiveTuple, Vec<u8>)>,
    tid: u32,
    /// Inputs handed to the server so far (the timer bound counts them).
    inputs: usize,
}

impl World {
    fn new(setup: &Setup) -> World {
        let mut credentials = Credentials::new();
        credentials.add_user("alice", REALM, "secret");
        credentials.add_user("bob", REALM, "hunter2");
        credentials.set_rest_secrets(vec![REST_SECRET.to_owned()], ':');
        let config = ServerConfig {
            realm: REALM.into(),
            credentials,
            relay_ips: vec![relay_v4(), relay_v6()],
            min_port: MIN_PORT,
            max_port: MAX_PORT,
            user_quota: u32::from(setup.user_quota % 4),
            total_quota: u32::from(setup.total_quota % 6),
            max_bps: if setup.max_bps < 0x8000 {
                0
            } else {
                u64::from(setup.max_bps)
            },
            fingerprint: setup.fingerprint,
            reason_phrases: setup.reason_phrases,
            software: setup.software.then(|| "turnd-fuzz".to_owned()),
            unauth_rate: if setup.limits { 50 } else { 0 },
            auth_failures_per_minute: if setup.limits { 10 } else { 0 },
            host_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))],
            ..ServerConfig::default()
        };
        let now = Instant::now();
        let shared = SharedState::new(&config);
        let mut server = Server::new(config, now, UNIX_EPOCH_SECS, [7; 32]);
        server.set_shard(0, 1, &shared);
        World {
            server,
            shared,
            io: FakeIo {
                busy_below: MIN_PORT + u16::from(setup.busy % 4),
                ..FakeIo::default()
            },
            epoch: now,
            now,
            out: vec![0; OUT_LEN],
            nonces: HashMap::new(),
            token: None,
            connection_ids: Vec::new(),
            last_input: None,
            tid: 0,
            inputs: 0,
        }
    }

    /// Relayed addresses of the live allocations, in a stable order.
    fn relays(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .server
            .allocations()
            .flat_map(|a| std::iter::once(a.relay).chain(a.additional_relay))
            .collect();
        v.sort();
        v
    }

    fn peer(&self, c: PeerChoice) -> SocketAddr {
        match c {
            PeerChoice::Listed(i) => {
                const LISTED: [&str; 10] = [
                    "192.0.2.10:6000",
                    "192.0.2.10:6001",
                    "8.8.8.8:53",
                    "[2001:4860::8888]:443",
                    "10.0.0.1:9",
                    "127.0.0.1:9",
                    "203.0.113.1:50003",
                    "203.0.113.1:3478",
                    "[::ffff:8.8.8.8]:53",
                    "192.0.2.99:7",
                ];
                LISTED[i as usize % LISTED.len()].parse().expect("address")
            }
            PeerChoice::Relay(i) => {
                let relays = self.relays();
                if relays.is_empty() {
                    SocketAddr::new(relay_v4(), MIN_PORT + u16::from(i % 16))
                } else {
                    relays[i as usize % relays.len()]
                }
            }
            PeerChoice::Any(a) => a.get(),
        }
    }

    fn channel(&self, tuple: u8, c: ChannelChoice) -> u16 {
        match c {
            ChannelChoice::Any(n) => n,
            ChannelChoice::Bound(i) => {
                let mut bound: Vec<u16> = self
                    .server
                    .allocation(&five_tuple(tuple))
                    .map(|a| a.channels.keys().map(|c| c.get()).collect())
                    .unwrap_or_default();
                bound.sort_unstable();
                if bound.is_empty() {
                    0x4000 + u16::from(i)
                } else {
                    bound[i as usize % bound.len()]
                }
            }
        }
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        let mut t = [0x5A; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    /// The credentials a signer uses: username, password and algorithm.
    fn credentials(signer: Signer) -> Option<(String, String, PasswordAlgorithm, bool)> {
        let md5 = PasswordAlgorithm::Md5;
        Some(match signer {
            Signer::None => return None,
            Signer::Alice => ("alice".into(), "secret".into(), md5, false),
            Signer::Bob => ("bob".into(), "hunter2".into(), md5, false),
            Signer::AliceSha256 => (
                "alice".into(),
                "secret".into(),
                PasswordAlgorithm::Sha256,
                false,
            ),
            Signer::AliceUserhash => ("alice".into(), "secret".into(), md5, true),
            Signer::WrongPassword => ("alice".into(), "wrong".into(), md5, false),
            Signer::Rest(offset) => {
                let expiry = UNIX_EPOCH_SECS.saturating_add_signed(i64::from(offset));
                let name = crate::auth::rest_username(expiry, ':', "carol");
                let password = crate::auth::rest_password(REST_SECRET, &name);
                (name, password, md5, false)
            }
        })
    }

    /// Encodes `r` with transaction ID `tid`; returns the bytes and the key
    /// it was signed with.
    fn build(&self, r: &Req, tid: [u8; 12]) -> (Vec<u8>, Option<Key>) {
        let method = match r.method {
            ReqMethod::Binding => Method::BINDING,
            ReqMethod::Allocate => Method::ALLOCATE,
            ReqMethod::Refresh => Method::REFRESH,
            ReqMethod::CreatePermission => Method::CREATE_PERMISSION,
            ReqMethod::ChannelBind => Method::CHANNEL_BIND,
            ReqMethod::Connect => Method::CONNECT,
            ReqMethod::ConnectionBind => Method::CONNECTION_BIND,
            ReqMethod::Other(m) => Method(m & 0xFFF),
        };
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), tid)
            .expect("20 bytes fit");
        // Attributes that do not fit are left out: the request is still sent.
        if let ReqMethod::Allocate = r.method {
            match r.transport {
                0 => {
                    let _ = w.requested_transport(crate::stun::PROTOCOL_UDP);
                }
                1 => {
                    let _ = w.requested_transport(crate::stun::PROTOCOL_TCP);
                }
                2 => {}
                p => {
                    let _ = w.requested_transport(p);
                }
            }
            if let Some(reserve) = r.even_port {
                let _ = w.even_port(reserve);
            }
            match r.token {
                Some(None) => {
                    if let Some(t) = self.token {
                        let _ = w.reservation_token(&t);
                    }
                }
                Some(Some(t)) => {
                    let _ = w.reservation_token(&t);
                }
                None => {}
            }
            if let Some(f) = r.family {
                let _ = w.attribute(AttributeType::REQUESTED_ADDRESS_FAMILY, &[f % 4, 0, 0, 0]);
            }
            if let Some(f) = r.additional_family {
                let _ = w.attribute(AttributeType::ADDITIONAL_ADDRESS_FAMILY, &[f % 4, 0, 0, 0]);
            }
            if r.dont_fragment {
                let _ = w.attribute(AttributeType::DONT_FRAGMENT, &[]);
            }
        }
        if let Some(l) = r.lifetime {
            let _ = w.lifetime(l);
        }
        if matches!(r.method, ReqMethod::ChannelBind) {
            let n = self.channel(r.tuple, r.channel);
            let _ = w.u32(AttributeType::CHANNEL_NUMBER, u32::from(n) << 16);
        }
        for p in r.peers.iter().take(4) {
            let _ = w.xor_address(AttributeType::XOR_PEER_ADDRESS, self.peer(*p));
        }
        if let Some(id) = r.connection_id {
            let id = match id {
                Ok(i) if !self.connection_ids.is_empty() => {
                    self.connection_ids[i as usize % self.connection_ids.len()]
                }
                Ok(i) => u32::from(i),
                Err(id) => id,
            };
            let _ = w.connection_id(id);
        }
        if let Some((t, v)) = &r.extra {
            if !is_trailer(*t) {
                let _ = w.attribute(AttributeType(*t), v);
            }
        }
        let mut key = None;
        if let Some((name, password, algorithm, userhash)) = World::credentials(r.signer) {
            if userhash {
                let _ = w.attribute(
                    AttributeType::USERHASH,
                    &crate::auth::userhash(&name, REALM),
                );
            } else {
                let _ = w.attribute(AttributeType::USERNAME, name.as_bytes());
            }
            let _ = w.attribute(AttributeType::REALM, REALM.as_bytes());
            let nonce = self.nonces.get(&(r.tuple % 6)).cloned().unwrap_or_default();
            let _ = w.attribute(AttributeType::NONCE, &nonce);
            let k = Key::derive(algorithm, &name, REALM, &password);
            match algorithm {
                PasswordAlgorithm::Md5 => {
                    let _ = w.message_integrity(k.as_bytes());
                }
                PasswordAlgorithm::Sha256 => {
                    let _ = w.attribute(
                        AttributeType::PASSWORD_ALGORITHMS,
                        &PASSWORD_ALGORITHMS_VALUE,
                    );
                    let _ = w.attribute(AttributeType::PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
                    let _ = w.message_integrity_sha256(k.as_bytes());
                }
            }
            key = Some(k);
        }
        if r.fingerprint {
            let _ = w.fingerprint();
        }
        let n = w.finish();
        buf.truncate(n);
        (buf, key)
    }

    /// Hands client bytes to the server and checks its answer.
    fn client_input(&mut self, tuple: u8, bytes: &[u8], key: Option<Key>) -> Option<Vec<u8>> {
        let ft = five_tuple(tuple);
        self.inputs += 1;
        self.last_input = Some((ft, bytes.to_vec()));
        let output =
            self.server
                .handle_client_input(self.now, ft, bytes, &mut self.out, &mut self.io);
        match output {
            ClientOutput::None => None,
            ClientOutput::Reply { to, len } | ClientOutput::ConnectionBound { to, len, .. } => {
                assert_eq!(to, ft, "answer to another 5-tuple");
                if let ClientOutput::ConnectionBound { connection_id, .. } = output {
                    assert_ne!(ft.transport, Transport::Udp, "ConnectionBind over UDP");
                    self.connection_ids.retain(|&id| id != connection_id);
                }
                assert!(len <= MIN_OUT_BUFFER, "answer of {len} bytes");
                let answer = self.out[..len].to_vec();
                self.check_answer(bytes, &answer, key);
                Some(answer)
            }
            ClientOutput::ToPeer { relay, peer, range } => {
                assert!(range.start <= range.end && range.end <= bytes.len());
                let a = self
                    .server
                    .allocation(&ft)
                    .expect("relayed for an allocation");
                assert_eq!(
                    a.relay_for(peer),
                    Some(relay),
                    "relayed from the wrong address"
                );
                assert!(
                    a.has_permission(peer.ip(), self.now),
                    "relayed without permission"
                );
                assert!(self.server.config().policy.is_allowed(peer.ip()));
                assert!(!a.tcp_relay, "datagram relayed from a TCP relay");
                None
            }
        }
    }

    /// Checks a STUN answer to `request`: it parses, answers the request's
    /// transaction and method, and a success to a signed request is signed
    /// with the same key (RFC 8489, section 9.2.4).
    fn check_answer(&mut self, request: &[u8], answer: &[u8], key: Option<Key>) {
        let msg = Message::parse(answer).expect("answers parse");
        let req = Message::parse(request).expect("only STUN requests are answered");
        assert_eq!(req.class(), Class::Request, "answer to a {:?}", req.class());
        assert_eq!(msg.transaction_id(), req.transaction_id());
        assert_eq!(msg.method(), req.method());
        assert!(matches!(msg.class(), Class::Success | Class::Error));
        if let Some(n) = msg.get(AttributeType::NONCE) {
            if let Some(i) = (0..6).find(|&i| five_tuple(i) == self.last_input.as_ref().unwrap().0)
            {
                self.nonces.insert(i, n.to_vec());
            }
        }
        if let Some(Ok(t)) = msg.reservation_token() {
            self.token = Some(t);
        }
        if let Some(id) = msg.connection_id() {
            self.connection_ids.push(id);
        }
        if let (Some(key), Class::Success) = (key, msg.class()) {
            if msg.method() != Method::BINDING {
                assert!(
                    msg.check_integrity(key.as_bytes())
                        || msg.check_integrity_sha256(key.as_bytes()),
                    "success to a signed request is not signed"
                );
            }
        }
    }

    fn request(&mut self, r: &Req) {
        let tid = self.next_tid();
        let (bytes, key) = self.build(r, tid);
        let answer = self.client_input(r.tuple, &bytes, key);
        // The 401/438 answer carries a fresh NONCE: sign again with it.
        let retry = answer.as_deref().and_then(|a| {
            let m = Message::parse(a).ok()?;
            let code = decode_error_code(m.get(AttributeType::ERROR_CODE)?).ok()?.0;
            (key.is_some()
                && (code == ErrorCode::UNAUTHENTICATED || code == ErrorCode::STALE_NONCE))
                .then_some(())
        });
        if retry.is_some() {
            let tid = self.next_tid();
            let (bytes, key) = self.build(r, tid);
            self.client_input(r.tuple, &bytes, key);
        }
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Raw { tuple, bytes } => {
                self.client_input(tuple, &bytes, None);
            }
            Action::Request(r) => self.request(&r),
            Action::Send {
                tuple,
                peer,
                len,
                dont_fragment,
            } => {
                let tid = self.next_tid();
                let mut buf = vec![0u8; 200 + (len as usize & 0x7FF)];
                let mut w = MessageWriter::new(
                    &mut buf,
                    MessageType::new(Method::SEND, Class::Indication),
                    tid,
                )
                .expect("fits");
                w.xor_address(AttributeType::XOR_PEER_ADDRESS, self.peer(peer))
                    .expect("fits");
                if dont_fragment {
                    w.attribute(AttributeType::DONT_FRAGMENT, &[])
                        .expect("fits");
                }
                w.attribute(AttributeType::DATA, &vec![0xDA; len as usize & 0x7FF])
                    .expect("fits");
                let n = w.finish();
                buf.truncate(n);
                self.client_input(tuple, &buf, None);
            }
            Action::ChannelData {
                tuple,
                channel,
                len,
                padding,
            } => {
                let len = len as usize & 0x7FF;
                let n = self.channel(tuple, channel);
                let mut b = vec![0xCD; 4 + len + (padding % 4) as usize];
                write_channel_data_header(&mut b, n, len);
                self.client_input(tuple, &b, None);
            }
            Action::Peer { relay, peer, len } => {
                let relays = self.relays();
                let relay = if relays.is_empty() || relay as usize >= 2 * relays.len() {
                    SocketAddr::new(relay_v4(), MIN_PORT + u16::from(relay % 16))
                } else {
                    relays[relay as usize % relays.len()]
                };
                let peer = self.peer(peer);
                let len = if len >= 0xFF00 {
                    0xFFFF
                } else {
                    len as usize & 0x7FF
                };
                self.peer_input(relay, peer, len);
            }
            Action::PeerConnection { relay, peer } => {
                let relays = self.relays();
                let Some(&relay) = relays.get(relay as usize % relays.len().max(1)) else {
                    return;
                };
                let peer = self.peer(peer);
                if let Some(attempt) =
                    self.server
                        .handle_peer_connection(self.now, relay, peer, &mut self.out)
                {
                    let a = self.server.allocation(&attempt.to).expect("its allocation");
                    assert!(a.tcp_relay);
                    assert!(attempt.len <= MIN_OUT_BUFFER);
                    let m = Message::parse(&self.out[..attempt.len]).expect("indication parses");
                    assert_eq!(m.method(), Method::CONNECTION_ATTEMPT);
                    assert_eq!(m.class(), Class::Indication);
                    assert_eq!(m.connection_id(), Some(attempt.connection_id));
                    self.connection_ids.push(attempt.connection_id);
                }
            }
            Action::ConnectResult { which, ok } => {
                let Some(&id) = self
                    .io
                    .connects
                    .get(which as usize % self.io.connects.len().max(1))
                else {
                    return;
                };
                if let Some(reply) = self.server.handle_tcp_connect_result(
                    self.now,
                    id,
                    ok,
                    &mut self.out,
                    &mut self.io,
                ) {
                    assert!(reply.len <= MIN_OUT_BUFFER);
                    let m = Message::parse(&self.out[..reply.len]).expect("answer parses");
                    assert_eq!(m.method(), Method::CONNECT);
                    if ok {
                        assert_eq!(m.class(), Class::Success);
                        self.connection_ids.push(id);
                    }
                    assert!(self.server.allocation(&reply.to).is_some());
                }
            }
            Action::TcpConnectionClosed { which } => {
                if let Some(&id) = self
                    .connection_ids
                    .get(which as usize % self.connection_ids.len().max(1))
                {
                    self.server.handle_tcp_connection_closed(id);
                }
            }
            Action::ConnectionClosed { tuple } => {
                let ft = five_tuple(tuple);
                if ft.transport != Transport::Udp {
                    self.server.handle_connection_closed(ft, &mut self.io);
                }
            }
            Action::Retransmit => {
                if let Some((ft, bytes)) = self.last_input.clone() {
                    let tuple = (0..6).find(|&i| five_tuple(i) == ft).expect("known");
                    self.client_input(tuple, &bytes, None);
                }
            }
            Action::Advance { secs, millis } => {
                self.now += Duration::from_secs(u64::from(secs % 4000))
                    + Duration::from_millis(u64::from(millis % 1000));
            }
            Action::DeleteById { which } => {
                let mut ids: Vec<u64> = self.server.allocations().map(|a| a.id).collect();
                ids.sort_unstable();
                let id = ids
                    .get(which as usize % ids.len().max(1))
                    .copied()
                    .unwrap_or(u64::from(which));
                let existed = ids.contains(&id);
                assert_eq!(
                    self.server.delete_allocation_by_id(id, &mut self.io),
                    existed
                );
            }
            Action::Compact => {
                self.server.compact();
            }
            Action::Drain => self.server.start_draining(),
        }
    }

    /// A peer datagram of `len` bytes; checks what the server makes of it.
    fn peer_input(&mut self, relay: SocketAddr, peer: SocketAddr, len: usize) {
        let mut buf = vec![0xEE; CHANNEL_DATA_HEADER_LEN + len + 3];
        let owner = self
            .server
            .allocations()
            .find(|a| a.relay == relay || a.additional_relay == Some(relay))
            .map(|a| (a.five_tuple, a.has_permission(peer.ip(), self.now)));
        let output =
            self.server
                .handle_peer_input(self.now, relay, peer, &mut buf, len, &mut self.out);
        match output {
            PeerOutput::None => {}
            PeerOutput::ChannelData { to, range } => {
                let (ft, permitted) = owner.expect("relayed for an allocation");
                assert_eq!(to, ft);
                assert!(permitted, "relayed to the client without permission");
                assert!(range.end <= buf.len());
                let cd = ChannelData::parse(&buf[range.clone()]).expect("ChannelData parses");
                assert_eq!(cd.data().len(), len);
                assert!(cd.data().iter().all(|&b| b == 0xEE));
                if to.transport != Transport::Udp {
                    assert_eq!(range.len() % 4, 0, "unpadded ChannelData over a stream");
                }
            }
            PeerOutput::DataIndication { to, len: n } => {
                let (ft, permitted) = owner.expect("relayed for an allocation");
                assert_eq!(to, ft);
                assert!(permitted, "relayed to the client without permission");
                assert!(n <= len + 100, "Data indication of {n} bytes for {len}");
                let m = Message::parse(&self.out[..n]).expect("Data indication parses");
                assert_eq!(m.method(), Method::DATA);
                assert_eq!(m.class(), Class::Indication);
                assert_eq!(m.get(AttributeType::DATA).map(<[u8]>::len), Some(len));
                let from = m.get_xor_address(AttributeType::XOR_PEER_ADDRESS);
                assert_eq!(from, Some(Ok(peer)));
            }
        }
    }

    /// Lets due timers run, as the shell does when `poll_timeout` passes.
    fn timers(&mut self) {
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now, &mut self.io);
        }
        if let Some(t) = self.server.poll_timeout() {
            assert!(t > self.now, "a due timer left after handle_timeout");
        }
    }

    /// The invariants, after every step.
    fn check(&self) {
        let s = &self.server;
        let now = self.now;
        let config = s.config();
        // Relay sockets open are exactly the live allocations' relayed
        // addresses: every one opened is closed once, when its allocation
        // ends, and none twice.
        let mut relays = HashSet::new();
        let mut per_user: BTreeMap<String, u32> = BTreeMap::new();
        let mut ids = HashSet::new();
        for a in s.allocations() {
            assert!(ids.insert(a.id), "allocation id {} twice", a.id);
            assert_eq!(s.allocation(&a.five_tuple).map(|b| b.id), Some(a.id));
            for r in std::iter::once(a.relay).chain(a.additional_relay) {
                assert!(relays.insert(r), "relay {r} in two allocations");
            }
            if let Some(r) = a.additional_relay {
                assert!(r.is_ipv6() && a.relay.is_ipv4(), "dual allocation families");
            }
            *per_user.entry(a.username.to_string()).or_default() += 1;
            // Timers: the allocation's one timer is due no later than its
            // expiry and the expiries of its permissions and channels, and
            // nothing in it is past due.
            assert!(a.timer_at > now, "allocation timer past due");
            assert!(a.timer_at <= a.expires);
            assert!(
                a.expires <= now + config.max_lifetime,
                "lifetime beyond the maximum"
            );
            assert!(a.permissions.len() <= MAX_PERMISSIONS);
            assert!(a.channels.len() <= MAX_CHANNELS);
            for (ip, &e) in &a.permissions {
                assert!(a.timer_at <= e, "permission for {ip} outlives the timer");
                assert!(e <= now + config.permission_lifetime);
            }
            assert_eq!(a.channels.len(), a.channel_by_peer.len());
            for (n, c) in &a.channels {
                assert_eq!(*n, c.number);
                assert_eq!(a.channel_by_peer.get(&c.peer), Some(n));
                assert!(a.timer_at <= c.expires, "channel outlives the timer");
                assert!(c.expires <= now + config.channel_lifetime);
                assert!(
                    a.relay_for(c.peer).is_some(),
                    "channel to a peer of no relay family"
                );
            }
            if a.tcp_relay {
                assert_ne!(a.five_tuple.transport, Transport::Udp);
            }
        }
        assert_eq!(
            relays, self.io.open,
            "relay sockets open vs. live allocations"
        );
        assert_eq!(s.allocation_count(), ids.len());
        // Quotas: each user's count is their live allocations plus the
        // EVEN-PORT reservations they hold.
        let reservations = self.shared.ports.reservations();
        for (_, owner) in &reservations {
            *per_user.entry(owner.to_string()).or_default() += 1;
        }
        for (user, n) in &per_user {
            assert_eq!(
                self.shared.quota.user_count(user),
                *n,
                "quota count of {user}"
            );
        }
        assert_eq!(
            self.shared.quota.total(),
            s.allocation_count() + reservations.len(),
            "total quota count"
        );
        if config.user_quota > 0 {
            assert!(per_user.values().all(|&n| n <= config.user_quota));
        }
        if config.total_quota > 0 {
            assert!(self.shared.quota.total() <= config.total_quota as usize);
        }
        // Ports: free + in use + reserved = the range, per relay address.
        let range = usize::from(MAX_PORT - MIN_PORT) + 1;
        for ip in [relay_v4(), relay_v6()] {
            let used = relays.iter().filter(|r| r.ip() == ip).count();
            let reserved = reservations.iter().filter(|(r, _)| r.ip() == ip).count();
            assert_eq!(s.free_ports(ip) + used + reserved, range, "ports of {ip}");
        }
        // Counters: every allocation created is live, expired or deleted.
        let st = s.stats();
        assert_eq!(
            st.allocations_created,
            s.allocation_count() as u64 + st.allocations_expired + st.allocations_deleted,
            "allocations created vs. live, expired and deleted"
        );
        // Timers are bounded: a few per input.
        assert!(
            s.scheduled_timers() <= 4 * self.inputs + 1,
            "{} timers after {} inputs",
            s.scheduled_timers(),
            self.inputs
        );
        assert!(now >= self.epoch);
    }

    /// Ends the run: every allocation deleted, every relay socket closed,
    /// and once every deadline has passed, no timer, reservation or quota
    /// slot is left.
    fn finish(mut self) {
        self.server.close_all(&mut self.io);
        assert!(
            self.io.open.is_empty(),
            "relay sockets left open: {:?}",
            self.io.open
        );
        assert_eq!(self.server.allocation_count(), 0);
        self.now += Duration::from_secs(2 * 3600 + 60);
        self.server.handle_timeout(self.now, &mut self.io);
        assert_eq!(
            self.server.scheduled_timers(),
            0,
            "timers left with nothing to expire"
        );
        assert!(self.shared.ports.reservations().is_empty());
        assert_eq!(self.shared.quota.total(), 0, "quota slots left");
        let range = usize::from(MAX_PORT - MIN_PORT) + 1;
        assert_eq!(self.server.free_ports(relay_v4()), range);
        assert_eq!(self.server.free_ports(relay_v6()), range);
    }
}

/// `server_sequence`: the sans-IO [`Server`] driven by a structured
/// sequence (`arbitrary`) of at most 200 steps over six 5-tuples (UDP over
/// IPv4 and IPv6, TCP, TLS): raw client bytes, requests built from
/// fuzzer-chosen fields and signed with valid (or wrong) long-term, SHA-256,
/// USERHASH or REST credentials (a 401/438 answer's NONCE is used for one
/// retry), Send indications, ChannelData, peer datagrams and TCP
/// connections, RFC 6062 connection outcomes, connection closes,
/// retransmissions, admin deletes, drain, and clock advances.
///
/// After every step (see `World::check`): no panic; the relay sockets open
/// are exactly the live allocations' relayed addresses (each opened once,
/// closed once); per-user and total quota counts equal live allocations
/// plus EVEN-PORT reservations; free + used + reserved ports fill the range;
/// allocation counters add up; every answer parses, answers its request,
/// is at most [`MIN_OUT_BUFFER`] bytes and, to a signed request's success,
/// is signed; relayed data goes only from the allocation's relay to a
/// permitted peer and back to the allocation's client; no timer is left
/// due after `handle_timeout`, no permission or channel outlives its
/// allocation's timer, timers stay a few per input; and at the end, after
/// `close_all` and every deadline, no socket, timer, reservation or quota
/// slot is left.
pub fn server_sequence(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let mut world = World::new(&setup);
    world.check();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(action) = Action::arbitrary(&mut u) else {
            break;
        };
        world.step(action);
        world.timers();
        world.check();
    }
    world.finish();
}

// ---------------------------------------------------------------------------
// Configuration readers
// ---------------------------------------------------------------------------

/// `coturn_conf`: [`crate::coturn_conf::parse`] on arbitrary text (bytes
/// that are not UTF-8 are skipped: the file reader refuses them first).
///
/// Asserts: no panic; what parses converts to TOML
/// ([`crate::coturn_conf::to_toml`], what `turnd convert-config` prints)
/// that is valid TOML and reads back as exactly the table
/// [`crate::coturn_conf::split_supported`] keeps; loading the text as a `*.conf` file
/// ([`crate::config::Config::from_file_text`]) gives a configuration or an
/// error, never a panic.
pub fn coturn_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(conf) = crate::coturn_conf::parse(text) {
        let toml_text = crate::coturn_conf::to_toml(&conf, crate::config::TOML_KEYS);
        let table = match toml_text.parse::<toml::Table>() {
            Ok(table) => table,
            Err(e) => panic!("convert-config printed invalid TOML: {e}\n{toml_text}"),
        };
        // `to_toml`'s promise: it reads back as exactly what
        // `split_supported` keeps.
        let (kept, _) = crate::coturn_conf::split_supported(&conf, crate::config::TOML_KEYS);
        assert_eq!(table, kept, "convert-config output reads back differently");
    }
    if let Ok(config) = crate::config::Config::from_file_text("fuzz.conf", text, true) {
        let _ = config.server_config();
    }
}

/// `toml_config`: the TOML config loader
/// ([`crate::config::Config::from_file_text`]) on arbitrary text.
///
/// Asserts: no panic; a configuration that loads gives the core's settings
/// ([`crate::config::Config::server_config`]) and those build a
/// [`Server`] that answers a Binding request.
pub fn toml_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = crate::config::Config::from_file_text("fuzz.toml", text, false) else {
        return;
    };
    let mut sc = config.server_config();
    if sc.relay_ips.is_empty() {
        sc.relay_ips = vec![relay_v4()];
    }
    let now = Instant::now();
    let mut server = Server::new(sc, now, UNIX_EPOCH_SECS, [1; 32]);
    let mut req = [0u8; 20];
    let n = MessageWriter::new(
        &mut req,
        MessageType::new(Method::BINDING, Class::Request),
        [3; 12],
    )
    .expect("fits")
    .finish();
    let mut out = vec![0u8; MIN_OUT_BUFFER];
    let ft = five_tuple(0);
    let _ = server.handle_client_input(now, ft, &req[..n], &mut out, &mut FakeIo::default());
    let _ = server.poll_timeout();
}

#[cfg(test)]
mod tests {
    //! Replays the committed corpus and crash regressions of every target
    //! through the functions the targets call.

    use std::path::PathBuf;

    type Target = fn(&[u8]);

    const TARGETS: &[(&str, Target)] = &[
        ("stun_message", super::stun_message),
        ("channel_data", super::channel_data),
        ("stream_framer", super::stream_framer),
        ("server_sequence", super::server_sequence),
        ("coturn_conf", super::coturn_conf),
        ("toml_config", super::toml_config),
        ("writer_roundtrip", super::writer_roundtrip),
    ];

    /// Files of `dir` (sorted); fails when it is missing or empty.
    fn files(dir: &PathBuf) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("corpus directory {} missing: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        assert!(!v.is_empty(), "corpus directory {} is empty", dir.display());
        v.sort();
        v
    }

    fn replay(kind: &str, required: bool) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(kind);
        for (name, target) in TARGETS {
            let dir = root.join(name);
            if !required && !dir.exists() {
                continue;
            }
            for f in files(&dir) {
                let data = std::fs::read(&f).expect("corpus file");
                eprintln!("{kind}/{name}/{}", f.file_name().unwrap().to_string_lossy());
                target(&data);
            }
        }
    }

    /// Every target's minimised corpus (`fuzz/corpus/<target>/`) runs
    /// through its body without a failed check.
    #[test]
    fn corpus_replays() {
        replay("corpus", true);
    }

    /// Every crash the fuzzers found (`fuzz/regressions/<target>/`) stays
    /// fixed.
    #[test]
    fn regressions_replay() {
        replay("regressions", false);
    }
}
