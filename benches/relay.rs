//! Relay benches: the sans-IO core's per-packet step, without sockets.
//!
//! A fake [`RelayIo`] that always succeeds stands in for the relay sockets. For
//! N allocations (N in 1 and 10,000, each from its own client 5-tuple) the
//! setup runs the real request path: Allocate (401), authenticated Allocate,
//! ChannelBind (which also installs the permission). Then:
//!
//! - `relay/client_to_peer_channel_data_200B/N`: `handle_client_input` with a
//!   200-byte ChannelData message, allocations visited in a shuffled order;
//! - `relay/peer_to_client_channel_200B/N`: `handle_peer_input` from the bound
//!   peer (ChannelData header written into the headroom);
//! - `relay/peer_to_client_data_indication_200B/1`: `handle_peer_input` from a
//!   peer with a permission but no channel (Data indication written to `out`);
//! - `relay/*_4_peers/1000`: 1,000 allocations with 4 peers each, see
//!   [`many_peers_benches`];
//! - `allocate/...`: request throughput, see [`allocate_benches`].
//!
//! The clock is never read by the core: every call gets the same `now`, so
//! nothing expires while the bench runs. Run: `cargo bench --bench relay`.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use turnd::auth::Credentials;
use turnd::stun::{
    decode_error_code, long_term_key, write_channel_data_header, AttributeType, BufferFull, Class,
    ErrorCode, Message, MessageType, MessageWriter, Method, CHANNEL_DATA_HEADER_LEN, PROTOCOL_UDP,
};
use turnd::turn::{
    ClientOutput, FiveTuple, PeerOutput, PeerPolicy, RelayIo, Server, ServerConfig, Transport,
};

const USERNAME: &str = "alice";
const REALM: &str = "bench.turnd";
const PASSWORD: &str = "correct horse battery staple";
const CHANNEL: u16 = 0x4000;
/// The Unix time the server is told it starts at (seconds).
const UNIX_NOW: u64 = 1_700_000_000;
const PAYLOAD: usize = 200;
/// Large enough for any Data indication (see `MIN_OUT_BUFFER` in the core).
const OUT_LEN: usize = 65_600;

/// Relay sockets that always bind and never fail.
struct NullRelayIo;

impl RelayIo for NullRelayIo {
    fn open(&mut self, _relay: SocketAddr) -> io::Result<()> {
        Ok(())
    }
    fn close(&mut self, _relay: SocketAddr) {}
}

/// The client 5-tuple of allocation `i`: IP 127.a.b.c (never 127.0.0.0) and a
/// port that varies too.
fn client_tuple(i: u32) -> FiveTuple {
    let n = i + 1;
    let ip = Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8);
    let port = 1024 + ((i.wrapping_mul(7919)) % 60_000) as u16;
    FiveTuple {
        client: SocketAddr::new(IpAddr::V4(ip), port),
        server: "127.0.0.1:3478".parse().expect("addr"),
        transport: Transport::Udp,
    }
}

/// The channel-bound peer of allocation `i`.
fn bound_peer(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        20_000 + (i % 40_000) as u16,
    )
}

/// A peer on the same IP as [`bound_peer`] (so it has the permission
/// ChannelBind installed) but another port (so no channel).
fn unbound_peer(i: u32) -> SocketAddr {
    SocketAddr::new(bound_peer(i).ip(), 10_000)
}

/// A server with one user and a fake relay, plus the client-side state to talk to it.
struct Harness {
    server: Server,
    io: NullRelayIo,
    now: Instant,
    key: [u8; 16],
    out: Vec<u8>,
    next_tid: u64,
}

impl Harness {
    /// A server with the default config (rate limits included) except for
    /// realm, user, relay address, port range and loopback peers.
    fn new() -> Self {
        Self::with_config(|_| {})
    }

    fn with_config(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut credentials = Credentials::new();
        credentials.add_user(USERNAME, REALM, PASSWORD);
        let mut config = ServerConfig {
            realm: REALM.into(),
            credentials,
            relay_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            min_port: 1024,
            max_port: 65535,
            policy: PeerPolicy {
                allow_loopback: true,
                ..PeerPolicy::default()
            },
            ..ServerConfig::default()
        };
        tweak(&mut config);
        let now = Instant::now();
        Harness {
            server: Server::new(config, now, UNIX_NOW, [7; 32]),
            io: NullRelayIo,
            now,
            key: long_term_key(USERNAME, REALM, PASSWORD),
            out: vec![0; OUT_LEN],
            next_tid: 1,
        }
    }

    fn tid(&mut self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        self.next_tid += 1;
        t
    }

    /// Encodes a request as a client does: `body`, then (with `nonce`)
    /// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY, then FINGERPRINT.
    fn request(
        &mut self,
        method: Method,
        nonce: Option<&[u8]>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), BufferFull>,
    ) -> Vec<u8> {
        let tid = self.tid();
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), tid)
            .expect("header fits");
        body(&mut w).expect("body fits");
        if let Some(nonce) = nonce {
            w.attribute(AttributeType::USERNAME, USERNAME.as_bytes())
                .expect("fits");
            w.attribute(AttributeType::REALM, REALM.as_bytes())
                .expect("fits");
            w.attribute(AttributeType::NONCE, nonce).expect("fits");
            w.message_integrity(&self.key).expect("fits");
        }
        w.fingerprint().expect("fits");
        let n = w.finish();
        buf[..n].to_vec()
    }

    fn allocate_request(&mut self, nonce: Option<&[u8]>) -> Vec<u8> {
        self.request(Method::ALLOCATE, nonce, |w| {
            w.u32(
                AttributeType::REQUESTED_TRANSPORT,
                u32::from(PROTOCOL_UDP) << 24,
            )?;
            w.u32(AttributeType::LIFETIME, 600)
        })
    }

    fn refresh_delete_request(&mut self, nonce: &[u8]) -> Vec<u8> {
        self.request(Method::REFRESH, Some(nonce), |w| {
            w.u32(AttributeType::LIFETIME, 0)
        })
    }

    /// Sends `req` from `ft` and returns the reply, panicking unless one came.
    fn send(&mut self, ft: FiveTuple, req: &[u8]) -> Vec<u8> {
        match self
            .server
            .handle_client_input(self.now, ft, req, &mut self.out, &mut self.io)
        {
            ClientOutput::Reply { to, len } => {
                assert_eq!(to, ft, "reply goes back to the requester");
                self.out[..len].to_vec()
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// The 401 dance's first half: an Allocate without credentials; returns the NONCE.
    fn challenge(&mut self, ft: FiveTuple) -> Vec<u8> {
        let req = self.allocate_request(None);
        let reply = self.send(ft, &req);
        let m = Message::parse(&reply).expect("401 parses");
        assert_eq!(m.class(), Class::Error);
        let (code, _) = decode_error_code(m.get(AttributeType::ERROR_CODE).expect("error code"))
            .expect("error code decodes");
        assert_eq!(code, ErrorCode::UNAUTHENTICATED);
        assert_eq!(m.get_str(AttributeType::REALM), Some(REALM));
        let nonce = m.get(AttributeType::NONCE).expect("401 carries a nonce");
        assert!(!nonce.is_empty() && nonce.len() < 128);
        nonce.to_vec()
    }

    /// Checks a success response to `method` and its MESSAGE-INTEGRITY.
    fn expect_success(&self, reply: &[u8], method: Method) {
        let m = Message::parse(reply).expect("response parses");
        if m.class() != Class::Success {
            let code = m
                .get(AttributeType::ERROR_CODE)
                .and_then(|v| decode_error_code(v).ok());
            panic!("{method:?} failed: {code:?}");
        }
        assert_eq!(m.method(), method);
        assert!(m.check_integrity(&self.key), "response integrity");
    }

    /// Allocate (401, then authenticated) for client `i`. Returns the
    /// relayed address and the nonce.
    fn allocate(&mut self, i: u32) -> (SocketAddr, Vec<u8>) {
        let ft = client_tuple(i);
        let nonce = self.challenge(ft);
        let req = self.allocate_request(Some(&nonce));
        let reply = self.send(ft, &req);
        self.expect_success(&reply, Method::ALLOCATE);
        let relay = Message::parse(&reply)
            .expect("parses")
            .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
            .expect("relayed address present")
            .expect("relayed address decodes");
        (relay, nonce)
    }

    /// ChannelBind `channel` to `peer` for client `i` (with its `nonce`).
    fn bind(&mut self, i: u32, nonce: &[u8], channel: u16, peer: SocketAddr) {
        let req = self.request(Method::CHANNEL_BIND, Some(nonce), |w| {
            w.u32(AttributeType::CHANNEL_NUMBER, u32::from(channel) << 16)?;
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
        });
        let reply = self.send(client_tuple(i), &req);
        self.expect_success(&reply, Method::CHANNEL_BIND);
    }

    /// Allocate (401, then authenticated) and ChannelBind `CHANNEL` to
    /// `bound_peer(i)` for client `i`. Returns the relayed address.
    fn allocate_and_bind(&mut self, i: u32) -> SocketAddr {
        let (relay, nonce) = self.allocate(i);
        self.bind(i, &nonce, CHANNEL, bound_peer(i));
        relay
    }
}

/// A server with `n` allocations, each with a channel; returns the relayed addresses.
fn setup(n: u32) -> (Harness, Vec<SocketAddr>) {
    let mut h = Harness::new();
    let relays: Vec<SocketAddr> = (0..n).map(|i| h.allocate_and_bind(i)).collect();
    assert_eq!(h.server.allocation_count(), n as usize);
    (h, relays)
}

/// Allocation indices in a fixed shuffled order, so consecutive packets hit
/// different allocations without the bench paying for an RNG.
fn visit_order(n: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(42));
    order
}

fn relay_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    for n in [1u32, 10_000] {
        let (mut h, relays) = setup(n);
        let order = visit_order(n);
        let now = h.now;

        // (a) Client to peer: one 200-byte ChannelData message from the client.
        let mut packet = vec![0xa5u8; CHANNEL_DATA_HEADER_LEN + PAYLOAD];
        write_channel_data_header(&mut packet, CHANNEL, PAYLOAD);
        let targets: Vec<ClientDatagram<'_>> = order
            .iter()
            .map(|&i| {
                (
                    client_tuple(i),
                    &packet[..],
                    relays[i as usize],
                    bound_peer(i),
                )
            })
            .collect();
        bench_client_datagrams(
            &mut g,
            BenchmarkId::new("client_to_peer_channel_data_200B", n),
            &mut h,
            &targets,
        );

        // (b) Peer to client over the bound channel: header into the headroom.
        let mut buf = vec![0x5au8; CHANNEL_DATA_HEADER_LEN + PAYLOAD];
        let from_peer: Vec<PeerDatagram> = order
            .iter()
            .map(|&i| {
                (
                    relays[i as usize],
                    bound_peer(i),
                    client_tuple(i),
                    Some(CHANNEL),
                )
            })
            .collect();
        bench_peer_datagrams(
            &mut g,
            BenchmarkId::new("peer_to_client_channel_200B", n),
            &mut h,
            &from_peer,
            &mut buf,
        );

        // (c) Peer to client without a channel: a Data indication into `out`.
        if n == 1 {
            let (relay, peer) = (relays[0], unbound_peer(0));
            let t = h
                .server
                .handle_peer_input(now, relay, peer, &mut buf, PAYLOAD, &mut h.out);
            let PeerOutput::DataIndication { to, len } = t else {
                panic!("expected a Data indication, got {t:?}");
            };
            assert_eq!(to, client_tuple(0));
            let m = Message::parse(&h.out[..len]).expect("data indication parses");
            assert_eq!(m.method(), Method::DATA);
            assert_eq!(m.class(), Class::Indication);
            assert_eq!(
                m.get_xor_address(AttributeType::XOR_PEER_ADDRESS),
                Some(Ok(peer))
            );
            assert_eq!(m.get(AttributeType::DATA).map(<[u8]>::len), Some(PAYLOAD));
            g.bench_function(
                BenchmarkId::new("peer_to_client_data_indication_200B", n),
                |b| {
                    b.iter(|| {
                        h.server.handle_peer_input(
                            now,
                            black_box(relay),
                            black_box(peer),
                            black_box(&mut buf),
                            PAYLOAD,
                            &mut h.out,
                        )
                    })
                },
            );
        }
    }
    many_peers_benches(&mut g);
    g.finish();
}

/// Peers per allocation in the many-peers benches.
const PEERS: u32 = 4;

/// Peer `k` of allocation `i` with a channel (`CHANNEL + k`): IP 127.0.0.(10+k).
fn many_bound_peer(i: u32, k: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + k as u8)),
        20_000 + (i % 40_000) as u16,
    )
}

/// A peer on the IP of [`many_bound_peer`] (so it has the permission) but
/// another port (so no channel).
fn many_unbound_peer(i: u32, k: u32) -> SocketAddr {
    SocketAddr::new(many_bound_peer(i, k).ip(), 10_000 + k as u16)
}

/// Where lookups matter: 1,000 allocations with [`PEERS`] peers each, each
/// bound to its own channel, datagrams in a shuffled order over all
/// (allocation, peer) pairs.
///
/// - `relay/peer_to_client_channel_200B_4_peers/1000`: ChannelData to the client;
/// - `relay/peer_to_client_data_indication_200B_4_peers/1000`: from another
///   port of each peer's IP (permission, no channel): Data indications;
/// - `relay/client_to_peer_channel_data_200B_4_peers/1000`: ChannelData from
///   the clients on each of their channels.
fn many_peers_benches(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let n = 1_000u32;
    let mut h = Harness::new();
    let mut relays = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (relay, nonce) = h.allocate(i);
        for k in 0..PEERS {
            h.bind(i, &nonce, CHANNEL + k as u16, many_bound_peer(i, k));
        }
        relays.push(relay);
    }
    let mut pairs: Vec<(u32, u32)> = (0..n)
        .flat_map(|i| (0..PEERS).map(move |k| (i, k)))
        .collect();
    pairs.shuffle(&mut StdRng::seed_from_u64(43));
    let mut buf = vec![0x5au8; CHANNEL_DATA_HEADER_LEN + PAYLOAD];

    for (name, unbound) in [
        ("peer_to_client_channel_200B_4_peers", false),
        ("peer_to_client_data_indication_200B_4_peers", true),
    ] {
        let targets: Vec<PeerDatagram> = pairs
            .iter()
            .map(|&(i, k)| {
                let relay = relays[i as usize];
                match unbound {
                    false => (
                        relay,
                        many_bound_peer(i, k),
                        client_tuple(i),
                        Some(CHANNEL + k as u16),
                    ),
                    true => (relay, many_unbound_peer(i, k), client_tuple(i), None),
                }
            })
            .collect();
        bench_peer_datagrams(g, BenchmarkId::new(name, n), &mut h, &targets, &mut buf);
    }

    let packets: Vec<(FiveTuple, Vec<u8>)> = pairs
        .iter()
        .map(|&(i, k)| {
            let mut p = vec![0xa5u8; CHANNEL_DATA_HEADER_LEN + PAYLOAD];
            write_channel_data_header(&mut p, CHANNEL + k as u16, PAYLOAD);
            (client_tuple(i), p)
        })
        .collect();
    let targets: Vec<ClientDatagram<'_>> = pairs
        .iter()
        .zip(&packets)
        .map(|(&(i, k), (ft, p))| (*ft, &p[..], relays[i as usize], many_bound_peer(i, k)))
        .collect();
    bench_client_datagrams(
        g,
        BenchmarkId::new("client_to_peer_channel_data_200B_4_peers", n),
        &mut h,
        &targets,
    );
}

/// A client datagram and where it must go: (client 5-tuple, ChannelData
/// message, relayed address, peer).
type ClientDatagram<'a> = (FiveTuple, &'a [u8], SocketAddr, SocketAddr);

/// Checks that each of `targets` is relayed to its peer, then times
/// `handle_client_input` for them in turn.
fn bench_client_datagrams(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    h: &mut Harness,
    targets: &[ClientDatagram<'_>],
) {
    let now = h.now;
    for &(ft, packet, relay, peer) in targets {
        let t = h
            .server
            .handle_client_input(now, ft, packet, &mut h.out, &mut h.io);
        assert_eq!(
            t,
            ClientOutput::ToPeer {
                relay,
                peer,
                range: CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + PAYLOAD,
            },
            "client-to-peer setup check"
        );
    }
    bench_round_robin(g, id, targets, |&(ft, packet, _, _)| {
        h.server
            .handle_client_input(now, black_box(ft), black_box(packet), &mut h.out, &mut h.io)
    });
}

/// Times `step` over `targets`, one per iteration, in turn.
fn bench_round_robin<T, R>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    targets: &[T],
    mut step: impl FnMut(&T) -> R,
) {
    g.bench_function(id, |b| {
        let mut j = 0;
        b.iter(|| {
            let t = &targets[j];
            j += 1;
            if j == targets.len() {
                j = 0;
            }
            step(t)
        })
    });
}

/// A peer datagram and what must become of it: (relayed address, peer,
/// client 5-tuple, channel number when ChannelData, else a Data indication).
type PeerDatagram = (SocketAddr, SocketAddr, FiveTuple, Option<u16>);

/// Checks that each of `targets` reaches its client as it should, then
/// times `handle_peer_input` for them in turn.
fn bench_peer_datagrams(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    h: &mut Harness,
    targets: &[PeerDatagram],
    buf: &mut [u8],
) {
    let now = h.now;
    for &(relay, peer, to, channel) in targets {
        let t = h
            .server
            .handle_peer_input(now, relay, peer, buf, PAYLOAD, &mut h.out);
        if let Some(channel) = channel {
            assert_eq!(
                t,
                PeerOutput::ChannelData {
                    to,
                    range: 0..CHANNEL_DATA_HEADER_LEN + PAYLOAD,
                },
                "peer-to-client (channel) setup check"
            );
            let cd = turnd::stun::ChannelData::parse(buf).expect("header written");
            assert_eq!((cd.channel(), cd.data().len()), (channel, PAYLOAD));
        } else {
            let PeerOutput::DataIndication { to: got, .. } = t else {
                panic!("expected a Data indication, got {t:?}");
            };
            assert_eq!(got, to);
        }
    }
    bench_round_robin(g, id, targets, |&(relay, peer, _, _)| {
        h.server.handle_peer_input(
            now,
            black_box(relay),
            black_box(peer),
            black_box(&mut *buf),
            PAYLOAD,
            &mut h.out,
        )
    });
}

/// Requests per iteration in one fresh server for the allocate bench: keeps the
/// core's response cache (40 s, capped at 65,536) and timer heap from growing
/// without bound, as they would not in a server whose clock moves.
const ALLOCATE_CHUNK: u64 = 5_000;

/// Request-path throughput.
///
/// - `allocate/authenticated_allocate_then_refresh_delete`: one element is an
///   authenticated Allocate (nonce check, HMAC check, port pick, relay open,
///   success with MESSAGE-INTEGRITY and FINGERPRINT, response cached) followed by
///   a Refresh with LIFETIME 0 that deletes it (same checks again), so the
///   port pool never runs dry. Requests are encoded beforehand, outside the timing.
/// - `allocate/unauthenticated_401_challenge`: an Allocate without
///   credentials answered with 401, REALM and a fresh NONCE (limiter off).
/// - `allocate/unauthenticated_rate_limited_drop`: the same request once the
///   source's budget for unauthenticated answers is spent: dropped.
fn allocate_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("authenticated_allocate_then_refresh_delete", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(ALLOCATE_CHUNK);
                left -= chunk;
                let mut h = Harness::new();
                let ft = client_tuple(0);
                let nonce = h.challenge(ft);
                let reqs: Vec<(Vec<u8>, Vec<u8>)> = (0..chunk)
                    .map(|_| {
                        (
                            h.allocate_request(Some(&nonce)),
                            h.refresh_delete_request(&nonce),
                        )
                    })
                    .collect();
                let (now, server, io) = (h.now, &mut h.server, &mut h.io);
                let out = &mut h.out[..];
                let start = Instant::now();
                for (alloc, delete) in &reqs {
                    let _ =
                        black_box(server.handle_client_input(now, ft, black_box(alloc), out, io));
                    let _ =
                        black_box(server.handle_client_input(now, ft, black_box(delete), out, io));
                }
                total += start.elapsed();
                // Check (untimed) that every request took the real path: each
                // has a fresh transaction ID, so none came from the
                // retransmission cache, and the counters only move on success.
                let s = h.server.stats();
                assert_eq!(s.allocations_created, chunk, "every allocate succeeded");
                assert_eq!(s.allocations_deleted, chunk, "every refresh deleted");
                assert_eq!(s.auth_failures, 0);
                assert_eq!(h.server.allocation_count(), 0);
                let n = Message::parse(&h.out)
                    .expect("last reply parses")
                    .as_bytes()
                    .len();
                let last = h.out[..n].to_vec();
                h.expect_success(&last, Method::REFRESH);
            }
            total
        })
    });

    // The 401 path itself: the per-source limit on unauthenticated answers is
    // off, since `now` never moves and its budget would never refill.
    let mut h = Harness::with_config(|c| c.unauth_rate = 0);
    let ft = client_tuple(0);
    let req = h.allocate_request(None);
    for _ in 0..1_000 {
        h.challenge(ft); // many answers, all 401 with a nonce
    }
    g.bench_function("unauthenticated_401_challenge", |b| {
        b.iter(|| {
            h.server
                .handle_client_input(h.now, ft, black_box(&req), &mut h.out, &mut h.io)
        })
    });

    // A flood of unauthenticated Allocates from one source once its budget is
    // spent (default limits): parse, limiter check, drop.
    let mut h = Harness::new();
    let req = h.allocate_request(None);
    h.challenge(ft);
    let limited = |h: &mut Harness| {
        h.server
            .handle_client_input(h.now, ft, &req, &mut h.out, &mut h.io)
    };
    while limited(&mut h) != ClientOutput::None {}
    let before = h.server.stats().rate_limited;
    assert_eq!(limited(&mut h), ClientOutput::None);
    assert_eq!(
        h.server.stats().rate_limited,
        before + 1,
        "dropped by the limiter"
    );
    g.bench_function("unauthenticated_rate_limited_drop", |b| {
        b.iter(|| {
            h.server
                .handle_client_input(h.now, ft, black_box(&req), &mut h.out, &mut h.io)
        })
    });
    g.finish();
}

/// Allocates for client `i` (IPv6 relay when `v6`) and binds `CHANNEL` to
/// `peer`; returns the relayed address.
fn allocate_family_and_bind(h: &mut Harness, i: u32, v6: bool, peer: SocketAddr) -> SocketAddr {
    let ft = client_tuple(i);
    let nonce = h.challenge(ft);
    let req = h.request(Method::ALLOCATE, Some(&nonce), |w| {
        w.u32(
            AttributeType::REQUESTED_TRANSPORT,
            u32::from(PROTOCOL_UDP) << 24,
        )?;
        w.u32(AttributeType::LIFETIME, 600)?;
        if v6 {
            w.u32(AttributeType::REQUESTED_ADDRESS_FAMILY, 0x02 << 24)?;
        }
        Ok(())
    });
    let reply = h.send(ft, &req);
    h.expect_success(&reply, Method::ALLOCATE);
    let relay = Message::parse(&reply)
        .expect("parses")
        .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
        .expect("relayed address present")
        .expect("relayed address decodes");
    let req = h.request(Method::CHANNEL_BIND, Some(&nonce), |w| {
        w.u32(AttributeType::CHANNEL_NUMBER, u32::from(CHANNEL) << 16)?;
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
    });
    let reply = h.send(ft, &req);
    h.expect_success(&reply, Method::CHANNEL_BIND);
    relay
}

/// Issue 5's state benches: the permission and channel check of a peer
/// datagram with 1, 1,000 and 100,000 allocations (IPv4 relays up to 60,000,
/// then IPv6: one relay address per family has 64,512 ports), and the expiry
/// of 1,000 allocations at once through the deadline heap.
fn state_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("state");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for n in [1u32, 1_000, 100_000] {
        let mut h = Harness::with_config(|c| {
            c.relay_ips.push(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
            // 100,000 client addresses at one frozen instant would fill the
            // unauthenticated-answer limiter's table (65,536 sources).
            c.unauth_rate = 0;
        });
        let mut targets = Vec::with_capacity(n as usize);
        for i in 0..n {
            let v6 = i >= 60_000;
            let peer = if v6 {
                SocketAddr::new(
                    "2001:db8::2".parse().expect("addr"),
                    20_000 + (i % 40_000) as u16,
                )
            } else {
                bound_peer(i)
            };
            let relay = allocate_family_and_bind(&mut h, i, v6, peer);
            targets.push((relay, peer));
        }
        let mut order = visit_order(n);
        order.truncate(100_000);
        let now = h.now;
        let mut buf = vec![0xa5u8; CHANNEL_DATA_HEADER_LEN + PAYLOAD + 3];
        for &i in &order {
            let (relay, peer) = targets[i as usize];
            let t = h
                .server
                .handle_peer_input(now, relay, peer, &mut buf, PAYLOAD, &mut h.out);
            assert!(
                matches!(t, PeerOutput::ChannelData { .. }),
                "permission and channel found: {t:?}"
            );
        }
        g.bench_function(
            BenchmarkId::new("peer_datagram_permission_and_channel_check", n),
            |b| {
                let mut k = 0;
                b.iter(|| {
                    let (relay, peer) = targets[order[k] as usize];
                    k += 1;
                    if k == order.len() {
                        k = 0;
                    }
                    h.server.handle_peer_input(
                        now,
                        black_box(relay),
                        black_box(peer),
                        &mut buf,
                        PAYLOAD,
                        &mut h.out,
                    )
                })
            },
        );
    }
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("expire_1000_allocations", |b| {
        b.iter_batched(
            || {
                let mut h = Harness::new();
                for i in 0..1_000 {
                    let ft = client_tuple(i);
                    let nonce = h.challenge(ft);
                    let req = h.allocate_request(Some(&nonce));
                    let reply = h.send(ft, &req);
                    h.expect_success(&reply, Method::ALLOCATE);
                }
                h
            },
            |mut h| {
                let later = h.now + std::time::Duration::from_secs(601);
                h.server.handle_timeout(later, &mut h.io);
                assert_eq!(h.server.allocation_count(), 0);
                h
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, relay_benches, allocate_benches, state_benches);
criterion_main!(benches);
