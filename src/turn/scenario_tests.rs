//! Scenario tests of the state machine with a fake clock and a fake relay IO:
//! no sockets, faster than real time.

#![allow(clippy::disallowed_methods)] // tests pick an arbitrary epoch

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::auth::Credentials;
use crate::stun::*;

#[derive(Default)]
struct FakeIo {
    open: HashSet<SocketAddr>,
    busy: HashSet<SocketAddr>,
    opened: usize,
    connects: Vec<(SocketAddr, SocketAddr, u32)>,
    closed_tcp: Vec<u32>,
}

impl RelayIo for FakeIo {
    fn open(&mut self, relay: SocketAddr) -> io::Result<()> {
        if self.busy.contains(&relay) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        assert!(self.open.insert(relay), "relay {relay} opened twice");
        self.opened += 1;
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
        self.connects.push((relay, peer, id));
    }
    fn close_tcp(&mut self, id: u32) {
        self.closed_tcp.push(id);
    }
}

const REALM: &str = "test.example";

struct Harness {
    server: Server,
    io: FakeIo,
    now: Instant,
    out: Vec<u8>,
    next_tid: u8,
}

struct Client {
    ft: FiveTuple,
    user: &'static str,
    key: [u8; 16],
    nonce: Vec<u8>,
}

fn ft(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::from(([198, 51, 100, 7], port)),
        server: "203.0.113.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

/// A reply decoded: (class, error code if any, the raw bytes).
struct Answer {
    bytes: Vec<u8>,
}

impl Answer {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("server replies parse")
    }
    fn class(&self) -> Class {
        self.msg().class()
    }
    fn code(&self) -> Option<u16> {
        self.msg()
            .get(AttributeType::ERROR_CODE)
            .map(|v| decode_error_code(v).unwrap().0 .0)
    }
}

impl Harness {
    fn new(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut credentials = Credentials::new();
        credentials.add_user("alice", REALM, "secret");
        credentials.add_user("bob", REALM, "hunter2");
        let mut config = ServerConfig {
            realm: REALM.into(),
            credentials,
            relay_ips: vec!["203.0.113.1".parse().unwrap()],
            min_port: 50000,
            max_port: 50999,
            ..ServerConfig::default()
        };
        tweak(&mut config);
        let now = Instant::now();
        Harness {
            server: Server::new(config, now, 1_700_000_000, [7; 32]),
            io: FakeIo::default(),
            now,
            out: vec![0; 70_000],
            next_tid: 0,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        self.server.handle_timeout(now, &mut self.io);
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid = self.next_tid.wrapping_add(1);
        [self.next_tid; 12]
    }

    fn input(&mut self, ft: FiveTuple, bytes: &[u8]) -> Transmit {
        let now = self.now;
        self.server
            .handle_client_input(now, ft, bytes, &mut self.out, &mut self.io)
    }

    fn request_raw(&mut self, ft: FiveTuple, bytes: &[u8]) -> Option<Answer> {
        match self.input(ft, bytes) {
            Transmit::Reply { to, len } => {
                assert_eq!(to, ft);
                Some(Answer {
                    bytes: self.out[..len].to_vec(),
                })
            }
            Transmit::None => None,
            other => panic!("unexpected transmit {other:?}"),
        }
    }

    /// Builds a request; `body` adds attributes; when `auth` is given the
    /// request carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
    fn build(
        &mut self,
        method: Method,
        tid: TransactionId,
        auth: Option<&Client>,
        body: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), tid).unwrap();
        body(&mut w);
        if let Some(c) = auth {
            w.attribute(AttributeType::USERNAME, c.user.as_bytes())
                .unwrap();
            w.attribute(AttributeType::REALM, REALM.as_bytes()).unwrap();
            w.attribute(AttributeType::NONCE, &c.nonce).unwrap();
            w.message_integrity(&c.key).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn request(
        &mut self,
        c: &Client,
        method: Method,
        body: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Answer {
        let tid = self.tid();
        let b = self.build(method, tid, Some(c), body);
        self.request_raw(c.ft, &b).expect("a reply")
    }

    /// The 401 dance: returns a client holding a valid nonce.
    fn client(&mut self, port: u16, user: &'static str, password: &str) -> Client {
        let f = ft(port);
        let tid = self.tid();
        let b = self.build(Method::ALLOCATE, tid, None, |w| {
            w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
        });
        let a = self.request_raw(f, &b).unwrap();
        assert_eq!(a.code(), Some(401));
        assert_eq!(a.msg().get_str(AttributeType::REALM), Some(REALM));
        let nonce = a.msg().get(AttributeType::NONCE).unwrap().to_vec();
        Client {
            ft: f,
            user,
            key: long_term_key(user, REALM, password),
            nonce,
        }
    }

    fn allocate(&mut self, c: &Client) -> Answer {
        self.request(c, Method::ALLOCATE, |w| {
            w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
        })
    }

    fn relay_of(&self, c: &Client) -> SocketAddr {
        self.server.allocation(&c.ft).expect("allocation").relay
    }

    fn permit(&mut self, c: &Client, peer: SocketAddr) -> Answer {
        self.request(c, Method::CREATE_PERMISSION, |w| {
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
                .unwrap()
        })
    }

    fn bind(&mut self, c: &Client, channel: u16, peer: SocketAddr) -> Answer {
        self.request(c, Method::CHANNEL_BIND, |w| {
            w.u32(AttributeType::CHANNEL_NUMBER, (channel as u32) << 16)
                .unwrap();
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
                .unwrap();
        })
    }

    fn channel_data(&mut self, c: &Client, channel: u16, payload: &[u8]) -> Transmit {
        let mut b = vec![0u8; 4 + payload.len()];
        write_channel_data_header(&mut b, channel, payload.len());
        b[4..].copy_from_slice(payload);
        self.input(c.ft, &b)
    }

    fn peer_sends(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
    ) -> (Transmit, Vec<u8>) {
        let mut buf = vec![0u8; 4 + payload.len()];
        buf[4..].copy_from_slice(payload);
        let now = self.now;
        let t =
            self.server
                .handle_peer_input(now, relay, peer, &mut buf, payload.len(), &mut self.out);
        let bytes = match &t {
            Transmit::ToClient { range, .. } => buf[range.clone()].to_vec(),
            Transmit::Reply { len, .. } => self.out[..*len].to_vec(),
            _ => vec![],
        };
        (t, bytes)
    }
}

fn peer() -> SocketAddr {
    "192.0.2.10:6000".parse().unwrap()
}

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
fn allocate_refresh_and_expiry() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.allocate(&c);
    assert_eq!(a.class(), Class::Success);
    assert!(a.msg().check_integrity(&c.key));
    assert_eq!(a.msg().get_u32(AttributeType::LIFETIME), Some(600));
    let relay = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert!((50000..=50999).contains(&relay.port()));
    assert!(h.io.open.contains(&relay));

    // Requested 5000 s is capped at 3600 s; 10 s is raised to the default 600 s.
    let r = h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 5000).unwrap()
    });
    assert_eq!(r.msg().get_u32(AttributeType::LIFETIME), Some(3600));
    let r = h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 10).unwrap()
    });
    assert_eq!(r.msg().get_u32(AttributeType::LIFETIME), Some(600));

    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocation_count(), 0, "expired after 600 s");
    assert!(h.io.open.is_empty(), "relay socket closed");
    assert_eq!(
        h.server.free_ports("203.0.113.1".parse().unwrap()),
        1000,
        "port returned"
    );
}

#[test]
fn refresh_zero_deletes_and_then_437() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let r = h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(r.class(), Class::Success);
    assert_eq!(r.msg().get_u32(AttributeType::LIFETIME), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    let r = h.request(&c, Method::REFRESH, |_| {});
    assert_eq!(r.code(), Some(437));
}

#[test]
fn retransmitted_allocate_gets_same_answer_and_one_allocation() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let b = h.build(Method::ALLOCATE, [42; 12], Some(&c), |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap()
    });
    let first = h.request_raw(c.ft, &b).unwrap();
    let second = h.request_raw(c.ft, &b).unwrap();
    assert_eq!(first.bytes, second.bytes);
    assert_eq!(h.io.opened, 1);
    assert_eq!(h.server.allocation_count(), 1);
    // A new transaction for an existing allocation is a mismatch.
    assert_eq!(h.allocate(&c).code(), Some(437));
    // After the transaction lifetime the cache is gone: a late retransmission is a mismatch too.
    h.advance(TRANSACTION_LIFETIME + Duration::from_secs(1));
    assert_eq!(h.request_raw(c.ft, &b).unwrap().code(), Some(437));
}

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

#[test]
fn even_port_reservation_token() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
    });
    let relay = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relay.port() % 2, 0);
    let token = a
        .msg()
        .get(AttributeType::RESERVATION_TOKEN)
        .unwrap()
        .to_vec();
    assert_eq!(token.len(), 8);
    let d = h.client(2, "alice", "secret");
    let b = h.request(&d, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &token)
            .unwrap();
    });
    let relay2 = b
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relay2.port(), relay.port() + 1);
    // A token is used once.
    let e = h.client(3, "alice", "secret");
    let again = h.request(&e, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &token)
            .unwrap();
    });
    assert_eq!(again.code(), Some(508));
}

#[test]
fn unused_reservation_returns_port_after_30_s() {
    let mut h = Harness::new(|c| {
        c.min_port = 50000;
        c.max_port = 50001;
    });
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    let ip = "203.0.113.1".parse().unwrap();
    assert_eq!(h.server.free_ports(ip), 0);
    h.advance(RESERVATION_LIFETIME + Duration::from_secs(1));
    assert_eq!(h.server.free_ports(ip), 1);
}

#[test]
fn user_and_total_quota_486() {
    let mut h = Harness::new(|c| {
        c.user_quota = 1;
        c.total_quota = 2;
    });
    let a = h.client(1, "alice", "secret");
    assert_eq!(h.allocate(&a).class(), Class::Success);
    let a2 = h.client(2, "alice", "secret");
    assert_eq!(h.allocate(&a2).code(), Some(486));
    let b = h.client(3, "bob", "hunter2");
    assert_eq!(h.allocate(&b).class(), Class::Success);
    let b2 = h.client(4, "bob", "hunter2");
    assert_eq!(h.allocate(&b2).code(), Some(486), "total quota");
    // Deleting one frees the user's quota.
    h.request(&a, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(h.allocate(&a2).class(), Class::Success);
}

#[test]
fn port_exhaustion_is_508_and_busy_ports_are_skipped() {
    let mut h = Harness::new(|c| {
        c.min_port = 50000;
        c.max_port = 50002;
    });
    h.io.busy.insert("203.0.113.1:50001".parse().unwrap());
    let mut relays = HashSet::new();
    for port in 1..=2 {
        let c = h.client(port, "alice", "secret");
        assert_eq!(h.allocate(&c).class(), Class::Success);
        relays.insert(h.relay_of(&c).port());
    }
    assert_eq!(relays, HashSet::from([50000, 50002]));
    let c = h.client(3, "alice", "secret");
    assert_eq!(h.allocate(&c).code(), Some(508));
}

#[test]
fn permissions_channels_and_relaying() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let relay = h.relay_of(&c);

    // No permission yet: peer data is dropped, Send is dropped.
    assert_eq!(h.peer_sends(relay, peer(), b"hi").0, Transmit::None);
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);

    // Peer to client without a channel: Data indication.
    let (t, bytes) = h.peer_sends(relay, peer(), b"hello");
    assert!(matches!(t, Transmit::Reply { to, .. } if to == c.ft));
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
        Transmit::ToPeer {
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
        Transmit::ToPeer {
            relay,
            peer: peer(),
            range: 4..7
        }
    );
    let (t, bytes) = h.peer_sends(relay, peer(), b"xyz");
    assert_eq!(
        t,
        Transmit::ToClient {
            to: c.ft,
            range: 0..7
        }
    );
    assert_eq!(bytes, [0x40, 0x01, 0, 3, b'x', b'y', b'z']);
    // Unbound channel and another client's 5-tuple are dropped.
    assert_eq!(h.channel_data(&c, 0x4002, b"abc"), Transmit::None);
    let other = Client {
        ft: ft(99),
        user: "alice",
        key: c.key,
        nonce: c.nonce.clone(),
    };
    assert_eq!(h.channel_data(&other, 0x4001, b"abc"), Transmit::None);
    // A peer on another port of the same IP has the permission but no channel: Data indication.
    let (t, _) = h.peer_sends(relay, "192.0.2.10:6001".parse().unwrap(), b"q");
    assert!(matches!(t, Transmit::Reply { .. }));
}

#[test]
fn channel_rebinding_rules() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let p2: SocketAddr = "192.0.2.11:6000".parse().unwrap();
    assert_eq!(h.bind(&c, 0x4000, peer()).class(), Class::Success);
    assert_eq!(
        h.bind(&c, 0x4000, peer()).class(),
        Class::Success,
        "refresh of the same binding"
    );
    assert_eq!(
        h.bind(&c, 0x4000, p2).code(),
        Some(400),
        "channel bound to another peer"
    );
    assert_eq!(
        h.bind(&c, 0x4001, peer()).code(),
        Some(400),
        "peer bound to another channel"
    );
    assert_eq!(h.bind(&c, 0x3FFF, p2).code(), Some(400));
    assert_eq!(h.bind(&c, 0x8000, p2).code(), Some(400));
    assert_eq!(h.bind(&c, 0x4FFF, p2).class(), Class::Success);
    // Family mismatch: an IPv6 peer on an IPv4 relay.
    assert_eq!(
        h.bind(&c, 0x4002, "[2001:db8::1]:5".parse().unwrap())
            .code(),
        Some(443)
    );
}

#[test]
fn permission_and_channel_expiry() {
    let mut h = Harness::new(|_| {});
    let mut c = h.client(1, "alice", "secret");
    let a = h.allocate(&c);
    assert_eq!(a.class(), Class::Success);
    h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 3600).unwrap()
    });
    let relay = h.relay_of(&c);
    h.bind(&c, 0x4000, peer());
    // Permission 300 s, channel 600 s.
    h.advance(Duration::from_secs(299));
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"x"),
        Transmit::ToPeer { .. }
    ));
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        Transmit::None,
        "permission expired"
    );
    assert_eq!(h.peer_sends(relay, peer(), b"x").0, Transmit::None);
    // Refresh the permission: the channel (still bound) works again.
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"x"),
        Transmit::ToPeer { .. }
    ));
    h.advance(Duration::from_secs(300));
    // The nonce is older than 600 s now: take a fresh one as a client would after 438.
    c.nonce = h.client(1, "alice", "secret").nonce;
    assert_eq!(h.permit(&c, peer()).class(), Class::Success);
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        Transmit::None,
        "channel expired after 600 s"
    );
    assert!(h.server.allocation(&c.ft).unwrap().channels.is_empty());
    // Once expired the number can be bound again.
    assert_eq!(
        h.bind(&c, 0x4000, "192.0.2.12:1".parse().unwrap()).class(),
        Class::Success
    );
}

#[test]
fn peer_policy_on_every_path() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    for bad in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "172.16.0.1:9",
        "192.168.1.1:9",
        "100.64.0.1:9",
        "169.254.169.254:80",
        "0.0.0.0:9",
        "224.0.0.1:9",
        "255.255.255.255:9",
    ] {
        let p: SocketAddr = bad.parse().unwrap();
        assert_eq!(h.permit(&c, p).code(), Some(403), "CreatePermission {bad}");
        assert_eq!(h.bind(&c, 0x4000, p).code(), Some(403), "ChannelBind {bad}");
    }
    // One bad address among good ones rejects the whole request and installs nothing.
    let r = h.request(&c, Method::CREATE_PERMISSION, |w| {
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
            .unwrap();
        w.xor_address(
            AttributeType::XOR_PEER_ADDRESS,
            "10.1.1.1:1".parse().unwrap(),
        )
        .unwrap();
    });
    assert_eq!(r.code(), Some(403));
    assert!(h.server.allocation(&c.ft).unwrap().permissions.is_empty());
    // Send to a denied peer is dropped.
    let tid = h.tid();
    let mut buf = vec![0u8; 200];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::SEND, Class::Indication),
        tid,
    )
    .unwrap();
    w.xor_address(
        AttributeType::XOR_PEER_ADDRESS,
        "127.0.0.1:9".parse().unwrap(),
    )
    .unwrap();
    w.attribute(AttributeType::DATA, b"x").unwrap();
    let n = w.finish();
    assert_eq!(h.input(c.ft, &buf[..n]), Transmit::None);
}

#[test]
fn ipv6_relay_and_mapped_forms_of_denied_peers() {
    let mut h = Harness::new(|c| c.relay_ips.push("2001:db8::1".parse().unwrap()));
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::REQUESTED_ADDRESS_FAMILY, 0x02 << 24)
            .unwrap();
    });
    let relay = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert!(relay.is_ipv6());
    for bad in [
        "[::1]:9",
        "[::ffff:127.0.0.1]:9",
        "[::ffff:169.254.169.254]:80",
        "[64:ff9b::a00:1]:9",
        "[2002:c0a8:101::1]:9",
        "[::10.0.0.1]:9",
        "[fe80::1]:9",
        "[fd00::1]:9",
        "[ff02::1]:9",
        "[::]:9",
    ] {
        assert_eq!(
            h.permit(&c, bad.parse().unwrap()).code(),
            Some(403),
            "{bad}"
        );
    }
    assert_eq!(
        h.permit(&c, "[2001:db8:5::1]:9".parse().unwrap()).class(),
        Class::Success
    );
    assert_eq!(
        h.permit(&c, peer()).code(),
        Some(443),
        "IPv4 peer on an IPv6 relay"
    );
}

#[test]
fn allow_loopback_and_allowed_peer_ip() {
    let mut h = Harness::new(|c| {
        c.policy.allow_loopback = true;
        c.policy.allowed.push("10.9.0.0/16".parse().unwrap());
    });
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    assert_eq!(
        h.permit(&c, "127.0.0.1:9".parse().unwrap()).class(),
        Class::Success
    );
    assert_eq!(
        h.permit(&c, "10.9.1.1:9".parse().unwrap()).class(),
        Class::Success
    );
    assert_eq!(
        h.permit(&c, "10.8.1.1:9".parse().unwrap()).code(),
        Some(403)
    );
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
        Transmit::ToPeer { .. }
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
                Transmit::ToPeer { .. }
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
                Transmit::ToPeer { .. }
            )
        })
        .count();
    assert_eq!(more, 10, "10 kB refilled in 100 ms");
}

#[test]
fn reconfigure_keeps_allocations_and_revokes_denied_peers() {
    let mut h = Harness::new(|c| c.policy.allowed.push("10.9.0.0/16".parse().unwrap()));
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let internal: SocketAddr = "10.9.0.5:9".parse().unwrap();
    assert_eq!(h.bind(&c, 0x4000, internal).class(), Class::Success);
    assert_eq!(h.bind(&c, 0x4001, peer()).class(), Class::Success);
    let mut fresh = h.server.config().clone();
    fresh.policy.allowed.clear();
    fresh.credentials = Credentials::new();
    fresh.credentials.add_user("alice", REALM, "rotated");
    let now = h.now;
    h.server.reconfigure(now, fresh);
    assert_eq!(
        h.server.allocation_count(),
        1,
        "allocations survive a reload"
    );
    assert!(
        matches!(h.channel_data(&c, 0x4001, b"x"), Transmit::ToPeer { .. }),
        "allowed peer keeps flowing"
    );
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        Transmit::None,
        "newly denied peer is cut"
    );
    assert_eq!(
        h.request(&c, Method::REFRESH, |_| {}).code(),
        Some(401),
        "old password no longer works"
    );
}

#[test]
fn dual_allocation_and_address_error_code() {
    let mut h = Harness::new(|c| c.relay_ips.push("2001:db8::1".parse().unwrap()));
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::ADDITIONAL_ADDRESS_FAMILY, 0x02 << 24)
            .unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    let relays: Vec<SocketAddr> = a
        .msg()
        .attributes()
        .filter(|(t, _)| *t == AttributeType::XOR_RELAYED_ADDRESS)
        .map(|(_, v)| decode_xor_address(v, &a.msg().transaction_id()).unwrap())
        .collect();
    assert_eq!(relays.len(), 2);
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6());
    // Peers of both families are reachable, each through its own relay.
    let v6peer: SocketAddr = "[2001:db8:9::1]:7".parse().unwrap();
    assert_eq!(h.bind(&c, 0x4000, peer()).class(), Class::Success);
    assert_eq!(h.bind(&c, 0x4001, v6peer).class(), Class::Success);
    assert_eq!(
        h.channel_data(&c, 0x4001, b"x"),
        Transmit::ToPeer {
            relay: relays[1],
            peer: v6peer,
            range: 4..5
        }
    );
    assert_eq!(
        h.channel_data(&c, 0x4000, b"x"),
        Transmit::ToPeer {
            relay: relays[0],
            peer: peer(),
            range: 4..5
        }
    );
    // Deleting closes both relay sockets.
    h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert!(h.io.open.is_empty());

    // Without an IPv6 relay address: the IPv4 half stands, ADDRESS-ERROR-CODE says 440.
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::ADDITIONAL_ADDRESS_FAMILY, 0x02 << 24)
            .unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    assert_eq!(
        a.msg().get(AttributeType::ADDRESS_ERROR_CODE),
        Some(&[2, 0, 4, 40][..])
    );
    // Both family attributes at once, or an IPv4 additional family: 400.
    let d = h.client(2, "alice", "secret");
    let bad = h.request(&d, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::ADDITIONAL_ADDRESS_FAMILY, 0x01 << 24)
            .unwrap();
    });
    assert_eq!(bad.code(), Some(400));
}

#[test]
fn external_ip_is_advertised() {
    let mut h = Harness::new(|c| {
        c.external_ips
            .push((None, "198.51.100.200".parse().unwrap()))
    });
    let c = h.client(1, "alice", "secret");
    let a = h.allocate(&c);
    let advertised = a
        .msg()
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    let bound = h.relay_of(&c);
    assert_eq!(
        advertised.ip(),
        "198.51.100.200".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(advertised.port(), bound.port());
    assert_eq!(
        bound.ip(),
        "203.0.113.1".parse::<std::net::IpAddr>().unwrap()
    );
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

#[test]
fn tcp_relay_connect_attempt_and_bind() {
    let mut h = Harness::new(|_| {});
    // RFC 6062 needs a TCP or TLS client connection.
    let tcp_ft = FiveTuple {
        transport: Transport::Tcp,
        ..ft(1)
    };
    let tid = h.tid();
    let b = h.build(Method::ALLOCATE, tid, None, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
    });
    let nonce = h
        .request_raw(tcp_ft, &b)
        .unwrap()
        .msg()
        .get(AttributeType::NONCE)
        .unwrap()
        .to_vec();
    let c = Client {
        ft: tcp_ft,
        user: "alice",
        key: long_term_key("alice", REALM, "secret"),
        nonce,
    };
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
    });
    assert_eq!(a.class(), Class::Success);
    let relay = h.relay_of(&c);
    assert!(h.server.allocation(&c.ft).unwrap().tcp_relay);

    // Connect: no answer until the shell reports the TCP outcome.
    let tid = h.tid();
    let b = h.build(Method::CONNECT, tid, Some(&c), |w| {
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
            .unwrap()
    });
    assert_eq!(h.input(c.ft, &b), Transmit::None);
    let (r, p, id) = h.io.connects[0];
    assert_eq!((r, p), (relay, peer()));
    let again = h.request(&c, Method::CONNECT, |w| {
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer())
            .unwrap()
    });
    assert_eq!(again.code(), Some(446), "a second Connect to the same peer");
    let now = h.now;
    let t = h
        .server
        .handle_tcp_connect_result(now, id, true, &mut h.out, &mut h.io);
    let Transmit::Reply { to, len } = t else {
        panic!("{t:?}")
    };
    assert_eq!(to, c.ft);
    let resp = Message::parse(&h.out[..len]).unwrap();
    assert_eq!(
        (resp.method(), resp.class()),
        (Method::CONNECT, Class::Success)
    );
    assert_eq!(resp.transaction_id(), tid);
    assert_eq!(resp.get_u32(AttributeType::CONNECTION_ID), Some(id));
    assert!(resp.check_integrity(&c.key));

    // ConnectionBind on a new connection by the same user binds it, once.
    let data_ft = FiveTuple {
        transport: Transport::Tcp,
        ..ft(2)
    };
    let data = Client {
        ft: data_ft,
        user: "alice",
        key: c.key,
        nonce: h.client(2, "alice", "secret").nonce,
    };
    let bound = h.request(&data, Method::CONNECTION_BIND, |w| {
        w.u32(AttributeType::CONNECTION_ID, id).unwrap()
    });
    assert_eq!(bound.class(), Class::Success);
    assert_eq!(h.server.take_connection_bind(&data.ft), Some(id));
    assert_eq!(h.server.take_connection_bind(&data.ft), None);
    let data2 = Client {
        ft: FiveTuple {
            transport: Transport::Tcp,
            ..ft(3)
        },
        user: "alice",
        key: c.key,
        nonce: h.client(3, "alice", "secret").nonce,
    };
    let twice = h.request(&data2, Method::CONNECTION_BIND, |w| {
        w.u32(AttributeType::CONNECTION_ID, id).unwrap()
    });
    assert_eq!(twice.code(), Some(400));

    // An incoming peer connection needs a permission.
    let now = h.now;
    assert!(h
        .server
        .handle_peer_connection(now, relay, "192.0.2.99:5555".parse().unwrap(), &mut h.out)
        .is_none());
    let (id2, t) = h
        .server
        .handle_peer_connection(now, relay, "192.0.2.10:7777".parse().unwrap(), &mut h.out)
        .unwrap();
    let Transmit::Reply { len, .. } = t else {
        panic!("{t:?}")
    };
    let ind = Message::parse(&h.out[..len]).unwrap();
    assert_eq!(ind.method(), Method::CONNECTION_ATTEMPT);
    assert_eq!(ind.get_u32(AttributeType::CONNECTION_ID), Some(id2));
    h.advance(TCP_CONNECTION_BIND_TIMEOUT + Duration::from_secs(1));
    assert!(
        h.io.closed_tcp.contains(&id2),
        "not bound within 30 s: closed"
    );

    // Over UDP, a TCP relay is a bad request.
    let u = h.client(9, "alice", "secret");
    let r = h.request(&u, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
    });
    assert_eq!(r.code(), Some(400));
}

#[test]
fn refreshes_do_not_pile_up_timers_and_shorter_lifetimes_still_expire() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::LIFETIME, 3600).unwrap();
    });
    assert_eq!(a.msg().get_u32(AttributeType::LIFETIME), Some(3600));
    h.bind(&c, 0x4000, peer());
    let before = h.server.scheduled_timers();
    for _ in 0..2000 {
        h.permit(&c, peer());
        h.bind(&c, 0x4000, peer());
        h.request(&c, Method::REFRESH, |w| {
            w.u32(AttributeType::LIFETIME, 3600).unwrap()
        });
    }
    // Cached answers hold one timer each (40 s); entity timers do not grow.
    let cached = 3 * 2000;
    assert!(
        h.server.scheduled_timers() <= before + cached + 2,
        "{} timers",
        h.server.scheduled_timers()
    );
    h.advance(TRANSACTION_LIFETIME + Duration::from_secs(1));
    assert!(
        h.server.scheduled_timers() <= 4,
        "{} timers after the cache emptied",
        h.server.scheduled_timers()
    );
    // Refreshed at 41 s, the permission outlives its first timer (300 s) by
    // a re-armed one, and then expires at 341 s.
    h.permit(&c, peer());
    h.advance(Duration::from_secs(279));
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"x"),
        Transmit::ToPeer { .. }
    ));
    h.advance(Duration::from_secs(25));
    assert!(
        h.server.allocation(&c.ft).unwrap().permissions.is_empty(),
        "expired at 341 s"
    );
    assert_eq!(h.channel_data(&c, 0x4000, b"x"), Transmit::None);
    // A shorter lifetime takes effect: 600 s, not the 3600 s granted first.
    let mut c = c;
    c.nonce = h.client(1, "alice", "secret").nonce;
    h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 600).unwrap()
    });
    h.advance(Duration::from_secs(601));
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.io.open.is_empty());
}

#[test]
fn several_relay_addresses_share_the_allocations() {
    let mut h = Harness::new(|c| {
        c.relay_ips = vec![
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        ];
        c.min_port = 50000;
        c.max_port = 50001;
    });
    let mut ips = HashSet::new();
    for port in 1..=4 {
        let c = h.client(port, "alice", "secret");
        assert_eq!(h.allocate(&c).class(), Class::Success, "allocation {port}");
        ips.insert(h.relay_of(&c).ip());
    }
    assert_eq!(ips.len(), 2, "both relay addresses used");
    let c = h.client(5, "alice", "secret");
    assert_eq!(h.allocate(&c).code(), Some(508), "2 addresses x 2 ports");
}

/// Two workers of one process: same seed and epoch, one [`SharedState`].
fn sharded_pair(tweak: impl Fn(&mut ServerConfig)) -> (Harness, Harness) {
    let mut a = Harness::new(&tweak);
    let config = a.server.config().clone();
    let shared = SharedState::new(&config);
    let mut b = Harness::new(&tweak);
    b.now = a.now;
    b.server = Server::new(config, a.now, 1_700_000_000, [7; 32]);
    a.server.set_shard(0, 2, &shared);
    b.server.set_shard(1, 2, &shared);
    (a, b)
}

#[test]
fn workers_share_nonces_quotas_ports_and_reservations() {
    let (mut w0, mut w1) = sharded_pair(|c| c.user_quota = 3);
    let free = w0.server.free_ports("203.0.113.1".parse().unwrap());
    // A nonce from worker 0 is accepted by worker 1 (same key and epoch).
    let c = w0.client(1, "alice", "secret");
    assert_eq!(w1.allocate(&c).class(), Class::Success);
    let d = w0.client(2, "alice", "secret");
    assert_eq!(w0.allocate(&d).class(), Class::Success);
    let ids = (
        w1.server.allocation(&c.ft).unwrap().id,
        w0.server.allocation(&d.ft).unwrap().id,
    );
    assert_ne!(ids.0, ids.1, "allocation ids must be unique per process");
    // Both took ports from the one pool.
    assert_eq!(
        w1.server.free_ports("203.0.113.1".parse().unwrap()),
        free - 2
    );
    // EVEN-PORT R on worker 0; the token is claimed on worker 1. That makes
    // three allocations of alice: the quota is reached on both workers.
    let e = w0.client(3, "alice", "secret");
    let a = w0.request(&e, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(a.class(), Class::Success);
    let relay = w0.relay_of(&e);
    let token = a
        .msg()
        .get(AttributeType::RESERVATION_TOKEN)
        .unwrap()
        .to_vec();
    let f = w1.client(4, "alice", "secret");
    let over = w1.allocate(&f);
    assert_eq!(over.code(), Some(486), "user quota counts both workers");
    // Free one of alice's on worker 1; worker 1 can now claim the token.
    let r = w1.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 0).unwrap()
    });
    assert_eq!(r.class(), Class::Success);
    let b = w1.request(&f, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &token)
            .unwrap();
    });
    assert_eq!(b.class(), Class::Success, "token claimed on another worker");
    assert_eq!(w1.relay_of(&f).port(), relay.port() + 1);
    // Worker 0's reservation timer finds the token claimed and frees nothing.
    let before = w0.server.free_ports(relay.ip());
    w0.advance(Duration::from_secs(31));
    assert_eq!(w0.server.free_ports(relay.ip()), before);
}

#[test]
fn shard_splits_only_the_bandwidth_capacity() {
    let c = ServerConfig {
        bps_capacity: 1_000_001,
        min_port: 50000,
        max_port: 50999,
        ..ServerConfig::default()
    };
    let s = c.shard(4);
    assert_eq!(s.bps_capacity, 250_001);
    assert_eq!((s.min_port, s.max_port), (50000, 50999));
    assert_eq!(c.shard(1).bps_capacity, 1_000_001);
}
