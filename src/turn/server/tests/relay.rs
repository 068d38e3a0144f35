//! The relay path in both directions and its bandwidth limits.

use super::*;

#[test]
fn permissions_channels_and_relaying() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let relay = h.relay_of(&c);

    // No permission yet: peer data is dropped, Send is dropped.
    assert_eq!(h.peer_sends(relay, peer(), b"hi").0, PeerOutput::None);
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);

    // Peer to client without a channel: Data indication.
    let (t, bytes) = h.peer_sends(relay, peer(), b"hello");
    assert!(matches!(t, PeerOutput::DataIndication { to, .. } if to == c.ft));
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.method(), Method::DATA);
    assert_eq!(m.class(), Class::Indication);
    assert_eq!(
        m.get_xor_address(AttributeType::XOR_PEER_ADDRESS),
        Some(Ok(peer()))
    );
    assert_eq!(m.get(AttributeType::DATA), Some(&b"hello"[..]));

    // Client to peer with a Send indication.
    let tid = h.tid();
    let mut buf = vec![0u8; 200];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::SEND, Class::Indication),
        tid,
    )
    .unwrap();
    w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
        .unwrap();
    w.attribute(AttributeType::DATA, b"payload").unwrap();
    let n = w.finish();
    match h.input(c.ft, &buf[..n]) {
        ClientOutput::ToPeer {
            relay: r,
            peer: p,
            range,
        } => {
            assert_eq!((r, p), (relay, peer()));
            assert_eq!(&buf[range], b"payload");
        }
        other => panic!("{other:?}"),
    }

    // Channel: both directions.
    assert_eq!(h.bind(&c, 0x4001, peer()).class(), Class::Success);
    assert_eq!(
        h.channel_data(&c, 0x4001, b"abc"),
        ClientOutput::ToPeer {
            relay,
            peer: peer(),
            range: 4..7
        }
    );
    let (t, bytes) = h.peer_sends(relay, peer(), b"xyz");
    assert_eq!(
        t,
        PeerOutput::ChannelData {
            to: c.ft,
            range: 0..7
        }
    );
    assert_eq!(bytes, [0x40, 0x01, 0, 3, b'x', b'y', b'z']);
    // Unbound channel and another client's 5-tuple are dropped.
    assert_eq!(h.channel_data(&c, 0x4002, b"abc"), ClientOutput::None);
    let other = Client {
        ft: ft(99),
        user: "alice",
        key: c.key,
        nonce: c.nonce.clone(),
    };
    assert_eq!(h.channel_data(&other, 0x4001, b"abc"), ClientOutput::None);
    // A peer on another port of the same IP has the permission but no channel: Data indication.
    let (t, _) = h.peer_sends(relay, "192.0.2.10:6001".parse().unwrap(), b"q");
    assert!(matches!(t, PeerOutput::DataIndication { .. }));
}

#[test]
fn max_bps_drops_excess_and_counts_it() {
    let mut h = Harness::new(|c| c.max_bps = 100_000);
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    h.bind(&c, 0x4000, peer());
    let payload = vec![0u8; 1000];
    let sent = (0..1000)
        .filter(|_| {
            matches!(
                h.channel_data(&c, 0x4000, &payload),
                ClientOutput::ToPeer { .. }
            )
        })
        .count();
    // Burst is max(100 kB, 64 KiB) = 100 kB: 100 datagrams of 1000 bytes.
    assert_eq!(sent, 100);
    assert_eq!(h.server.stats().dropped_bandwidth, 900);
    h.advance(Duration::from_millis(100));
    let more = (0..100)
        .filter(|_| {
            matches!(
                h.channel_data(&c, 0x4000, &payload),
                ClientOutput::ToPeer { .. }
            )
        })
        .count();
    assert_eq!(more, 10, "10 kB refilled in 100 ms");
}
