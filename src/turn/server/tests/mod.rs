//! Scenario tests of the state machine with a fake clock and a fake relay IO:
//! no sockets, faster than real time. One file per concern, as the server's;
//! the harness is here.

#![allow(clippy::disallowed_methods)] // tests pick an arbitrary epoch

pub(super) use std::collections::HashSet;
pub(super) use std::io;
pub(super) use std::net::SocketAddr;
pub(super) use std::time::{Duration, Instant};

pub(super) use crate::auth::Credentials;
pub(super) use crate::stun::*;
pub(super) use crate::turn::*;

mod allocate;
mod authenticate;
mod fast_path;
mod own_address;
mod peer_route;
mod permission;
mod relay;
mod request;
mod shed;
mod tcp_relay;
mod timers;
mod workers;

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
    /// The TCP relay connection a successful ConnectionBind bound.
    connection_bound: Option<u32>,
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

    fn input(&mut self, ft: FiveTuple, bytes: &[u8]) -> ClientOutput {
        let now = self.now;
        self.server
            .handle_client_input(now, ft, bytes, &mut self.out, &mut self.io)
    }

    fn request_raw(&mut self, ft: FiveTuple, bytes: &[u8]) -> Option<Answer> {
        match self.input(ft, bytes) {
            ClientOutput::Reply { to, len } => {
                assert_eq!(to, ft);
                Some(Answer {
                    bytes: self.out[..len].to_vec(),
                    connection_bound: None,
                })
            }
            ClientOutput::ConnectionBound {
                to,
                len,
                connection_id,
            } => {
                assert_eq!(to, ft);
                Some(Answer {
                    bytes: self.out[..len].to_vec(),
                    connection_bound: Some(connection_id),
                })
            }
            ClientOutput::None => None,
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

    /// A client on a TCP connection (port `port`) holding an RFC 6062 TCP
    /// relay allocation.
    fn tcp_relay_client(&mut self, port: u16) -> Client {
        let tcp_ft = FiveTuple {
            transport: Transport::Tcp,
            ..ft(port)
        };
        let tid = self.tid();
        let b = self.build(Method::ALLOCATE, tid, None, |w| {
            w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
        });
        let challenge = self.request_raw(tcp_ft, &b).unwrap();
        let c = Client {
            ft: tcp_ft,
            user: "alice",
            key: long_term_key("alice", REALM, "secret"),
            nonce: challenge.msg().get(AttributeType::NONCE).unwrap().to_vec(),
        };
        let a = self.request(&c, Method::ALLOCATE, |w| {
            w.u32(AttributeType::REQUESTED_TRANSPORT, 6 << 24).unwrap()
        });
        assert_eq!(a.class(), Class::Success);
        assert!(self.server.allocation(&c.ft).unwrap().tcp_relay);
        c
    }

    /// A Send indication from `c` to `peer` carrying `data`.
    fn send_indication(&mut self, c: &Client, peer: SocketAddr, data: &[u8]) -> ClientOutput {
        let tid = self.tid();
        let mut buf = vec![0u8; 200 + data.len()];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::SEND, Class::Indication),
            tid,
        )
        .unwrap();
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
            .unwrap();
        w.attribute(AttributeType::DATA, data).unwrap();
        let n = w.finish();
        self.input(c.ft, &buf[..n])
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

    fn channel_data(&mut self, c: &Client, channel: u16, payload: &[u8]) -> ClientOutput {
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
    ) -> (PeerOutput, Vec<u8>) {
        let mut buf = vec![0u8; 4 + payload.len()];
        buf[4..].copy_from_slice(payload);
        let now = self.now;
        let t =
            self.server
                .handle_peer_input(now, relay, peer, &mut buf, payload.len(), &mut self.out);
        let bytes = match &t {
            PeerOutput::ChannelData { range, .. } => buf[range.clone()].to_vec(),
            PeerOutput::DataIndication { len, .. } => self.out[..*len].to_vec(),
            PeerOutput::None => vec![],
        };
        (t, bytes)
    }
}

fn peer() -> SocketAddr {
    "192.0.2.10:6000".parse().unwrap()
}
