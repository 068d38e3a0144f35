//! Differential target: turnd's STUN codec against stun-rs, an independent
//! codec from crates.io. On bytes both accept, the message type, the
//! transaction ID, which attributes are visible, and the value of every
//! attribute both understand must agree. Disagreements found and how they
//! were decided are in fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stun_rs::{MessageClass, MessageDecoder, StunAttribute};
use turnd::stun::{
    decode_address, decode_error_code, decode_xor_address, AttributeType, Class, Message,
};

/// Attribute types whose place both codecs treat specially: compared by
/// presence, not in the list of attributes.
fn is_trailer(t: u16) -> bool {
    t == AttributeType::MESSAGE_INTEGRITY.0
        || t == AttributeType::MESSAGE_INTEGRITY_SHA256.0
        || t == AttributeType::FINGERPRINT.0
}

fuzz_target!(|data: &[u8]| {
    let Ok(ours) = Message::parse(data) else {
        return;
    };
    let Ok((theirs, _)) = MessageDecoder::default().decode(data) else {
        return;
    };
    assert_eq!(ours.method().0, theirs.method().as_u16(), "method");
    let class = match theirs.class() {
        MessageClass::Request => Class::Request,
        MessageClass::Indication => Class::Indication,
        MessageClass::SuccessResponse => Class::Success,
        MessageClass::ErrorResponse => Class::Error,
    };
    assert_eq!(ours.class(), class, "class");
    assert_eq!(
        &ours.transaction_id(),
        theirs.transaction_id().as_bytes(),
        "transaction id"
    );

    // Which attributes are visible (RFC 8489 sections 14.5-14.7: after
    // MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
    // count, after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT).
    let our_types: Vec<u16> = ours
        .attributes()
        .map(|(t, _)| t.0)
        .filter(|&t| !is_trailer(t))
        .collect();
    let their_types: Vec<u16> = theirs
        .attributes()
        .iter()
        .map(|a| a.attribute_type().as_u16())
        .filter(|&t| !is_trailer(t))
        .collect();
    assert_eq!(our_types, their_types, "visible attributes");
    let has = |t: AttributeType| {
        theirs
            .attributes()
            .iter()
            .any(|a| a.attribute_type().as_u16() == t.0)
    };
    assert_eq!(
        ours.has_integrity(),
        has(AttributeType::MESSAGE_INTEGRITY),
        "MESSAGE-INTEGRITY"
    );
    assert_eq!(
        ours.has_fingerprint(),
        has(AttributeType::FINGERPRINT),
        "FINGERPRINT"
    );

    let tid = ours.transaction_id();
    let mut our_values = ours.attributes().filter(|(t, _)| !is_trailer(t.0));
    let mut seen = std::collections::HashSet::new();
    for attr in theirs.attributes() {
        if is_trailer(attr.attribute_type().as_u16()) {
            continue;
        }
        let (t, v) = our_values.next().expect("same number of attributes");
        // turnd's typed accessors read the first attribute of a type.
        let first = seen.insert(t.0);
        // LIFETIME, CHANNEL-NUMBER and REQUESTED-TRANSPORT are 4 bytes (RFC
        // 8656 sections 18.2, 18.1, 18.7); stun-rs reads the first bytes of
        // a longer value, turnd refuses it (a 400). Compare 4-byte ones only
        // (README: disagreements).
        let fixed4 = [
            AttributeType::LIFETIME.0,
            AttributeType::CHANNEL_NUMBER.0,
            AttributeType::REQUESTED_TRANSPORT.0,
        ];
        if fixed4.contains(&t.0) && v.len() != 4 {
            if first {
                match t {
                    AttributeType::LIFETIME => assert_eq!(ours.get_u32(t), None),
                    AttributeType::CHANNEL_NUMBER => {
                        assert!(ours.channel_number().unwrap().is_err())
                    }
                    _ => assert!(ours.requested_transport().unwrap().is_err()),
                }
            }
            continue;
        }
        // Address attributes are 8 bytes for IPv4 and 20 for IPv6 (RFC
        // 8489 sections 14.1, 14.2); stun-rs reads the start of a longer
        // value, turnd refuses it. Compare exact lengths only.
        let address = [
            AttributeType::XOR_MAPPED_ADDRESS.0,
            AttributeType::XOR_PEER_ADDRESS.0,
            AttributeType::XOR_RELAYED_ADDRESS.0,
            AttributeType::MAPPED_ADDRESS.0,
            AttributeType::ALTERNATE_SERVER.0,
        ];
        if address.contains(&t.0) {
            let exact = v.len() >= 2 && matches!((v[1], v.len()), (1, 8) | (2, 20));
            if !exact {
                assert!(decode_address(v).is_err() && decode_xor_address(v, &tid).is_err());
                continue;
            }
        }
        match attr {
            // stun-rs applies the OpaqueString profile (RFC 8265) when it
            // decodes USERNAME and REALM; turnd's codec returns the bytes
            // and its authentication prepares them (RFC 8489 sections 14.3,
            // 14.9). They may differ only where preparation changes
            // something, which takes a non-ASCII character.
            StunAttribute::UserName(a) => {
                let ours = std::str::from_utf8(v).expect("USERNAME both accept is UTF-8");
                assert!(a.as_str() == ours || !ours.is_ascii(), "USERNAME");
            }
            StunAttribute::Realm(a) => {
                let ours = std::str::from_utf8(v).expect("REALM both accept is UTF-8");
                assert!(a.as_str() == ours || !ours.is_ascii(), "REALM");
            }
            StunAttribute::Nonce(a) => assert_eq!(Ok(a.as_str()), std::str::from_utf8(v), "NONCE"),
            StunAttribute::Software(a) => {
                assert_eq!(Ok(a.as_str()), std::str::from_utf8(v), "SOFTWARE")
            }
            StunAttribute::XorMappedAddress(a) => {
                assert_eq!(
                    decode_xor_address(v, &tid),
                    Ok(*a.socket_address()),
                    "XOR-MAPPED-ADDRESS"
                )
            }
            StunAttribute::XorPeerAddress(a) => {
                assert_eq!(
                    decode_xor_address(v, &tid),
                    Ok(*a.socket_address()),
                    "XOR-PEER-ADDRESS"
                )
            }
            StunAttribute::XorRelayedAddress(a) => assert_eq!(
                decode_xor_address(v, &tid),
                Ok(*a.socket_address()),
                "XOR-RELAYED-ADDRESS"
            ),
            StunAttribute::MappedAddress(a) => {
                assert_eq!(decode_address(v), Ok(*a.socket_address()), "MAPPED-ADDRESS")
            }
            StunAttribute::AlternateServer(a) => {
                assert_eq!(
                    decode_address(v),
                    Ok(*a.socket_address()),
                    "ALTERNATE-SERVER"
                )
            }
            StunAttribute::ErrorCode(a) => {
                let (code, reason) = decode_error_code(v).expect("ERROR-CODE both accept");
                assert_eq!(code.0, a.error_code().error_code(), "ERROR-CODE code");
                assert_eq!(reason, a.error_code().reason(), "ERROR-CODE reason");
            }
            StunAttribute::LifeTime(a) if first => {
                assert_eq!(ours.get_u32(t), Some(a.as_u32()), "LIFETIME")
            }
            StunAttribute::ChannelNumber(a) if first => {
                // turnd refuses numbers outside 0x4000-0x7FFF when it
                // decodes (ChannelBind then answers 400, RFC 8656 section
                // 11.2); stun-rs decodes any 16-bit number. Compare the
                // number itself then (README: disagreements).
                match ours.channel_number().expect("present") {
                    Ok(c) => assert_eq!(c.get(), a.number(), "CHANNEL-NUMBER"),
                    Err(_) => {
                        assert_eq!(
                            u16::from_be_bytes([v[0], v[1]]),
                            a.number(),
                            "CHANNEL-NUMBER"
                        );
                        assert!(!(0x4000..=0x7FFF).contains(&a.number()));
                    }
                }
            }
            StunAttribute::RequestedTrasport(a) if first => {
                let p = ours.requested_transport().expect("present");
                assert_eq!(p.ok(), Some(a.protocol().as_u8()), "REQUESTED-TRANSPORT")
            }
            StunAttribute::Data(a) => assert_eq!(a.as_bytes(), v, "DATA"),
            _ => {}
        }
    }
});
