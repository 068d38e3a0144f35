//! The sans-IO TURN server: Binding handler and allocation manager.
//!
//! Feed it what arrives ([`Server::handle_client_input`] for the listener,
//! [`Server::handle_peer_input`] for relay sockets) with the current time; it
//! answers with a [`Transmit`] that the IO shell performs. Call
//! [`Server::poll_timeout`] after every `handle_*` and [`Server::handle_timeout`]
//! when that deadline passes.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tracing::{debug, info, trace};

use super::allocation::{Allocation, ChannelBinding, FastMap, FiveTuple, Transport};
use super::limits::{bandwidth_burst, SharedLimiter, SourceLimiter, TokenBucket};
use super::policy::PeerPolicy;
use super::ports::{RelayPorts, Reservation};
use super::quota::QuotaLedger;
use crate::auth::{
    Credentials, Key, LookupFailure, NonceCheck, NonceIssuer, PasswordAlgorithm,
    PASSWORD_ALGORITHMS_VALUE,
};
use crate::stun::{
    write_channel_data_header, AttributeType, ChannelData, Class, ErrorCode, Message, MessageType,
    MessageWriter, Method, TransactionId, CHANNEL_DATA_HEADER_LEN, MAGIC_COOKIE, MAX_CHANNEL,
    MIN_CHANNEL, PROTOCOL_TCP, PROTOCOL_UDP,
};

/// RFC 8656 section 7.2: default allocation lifetime, 600 s.
pub const DEFAULT_ALLOCATION_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 section 7.2: recommended maximum allocation lifetime, 3600 s.
pub const MAX_ALLOCATION_LIFETIME: Duration = Duration::from_secs(3600);
/// RFC 8656 section 9: permissions last 300 s.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 section 12: channel bindings last 600 s.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 section 7.2: an EVEN-PORT R-bit reservation is kept about 30 s.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// RFC 8489 section 6.3.4: responses are kept for retransmissions for 40 s (Ti).
pub const TRANSACTION_LIFETIME: Duration = Duration::from_secs(40);
/// Most permissions one allocation may hold (more get 508).
pub const MAX_PERMISSIONS: usize = 1024;
/// Most channel bindings one allocation may hold (more get 508).
pub const MAX_CHANNELS: usize = 4096;
/// Most cached responses kept for retransmission detection.
pub const MAX_CACHED_RESPONSES: usize = 65_536;
/// Smallest `out` buffer callers must pass (bytes): any reply except a Data
/// indication fits.
pub const MIN_OUT_BUFFER: usize = 1500;

/// Settings of the core. Times are durations; ports inclusive.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The long-term credential realm (REALM attribute).
    pub realm: String,
    /// Static users and their keys.
    pub credentials: Credentials,
    /// Relay addresses; an allocation takes a port on the address of its family with the most free ports.
    pub relay_ips: Vec<IpAddr>,
    /// Lowest relay port.
    pub min_port: u16,
    /// Highest relay port.
    pub max_port: u16,
    /// Which peers may be reached.
    pub policy: PeerPolicy,
    /// Allocation lifetime when the client asks for none or less (600 s).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted (3600 s).
    pub max_lifetime: Duration,
    /// Permission lifetime (300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (600 s).
    pub channel_lifetime: Duration,
    /// Nonce validity (600 s) before 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// Concurrent allocations per username; 0 is unlimited (486 when reached).
    pub user_quota: u32,
    /// Concurrent allocations in all; 0 is unlimited (486 when reached).
    pub total_quota: u32,
    /// Add FINGERPRINT to every response (else only when the request had one).
    pub fingerprint: bool,
    /// SOFTWARE attribute for responses; `None` sends none.
    pub software: Option<String>,
    /// Put the RFC reason phrase in ERROR-CODE (else an empty phrase, which
    /// keeps answers to unauthenticated requests small).
    pub reason_phrases: bool,
    /// Add MAPPED-ADDRESS to Binding responses for RFC 3489-era clients
    /// (coturn's `stun-backward-compatibility`).
    pub mapped_address: bool,
    /// Answers to unauthenticated requests (Binding, 401, 438, 400) per
    /// second per source IP; 0 disables the limit.
    pub unauth_rate: u64,
    /// Burst of `unauth_rate` (answers).
    pub unauth_burst: u64,
    /// Failed authentications per minute per source IP before that source
    /// gets no answers until its budget refills; 0 disables.
    pub auth_failures_per_minute: u64,
    /// Most source addresses tracked by each rate limiter.
    pub max_tracked_sources: usize,
    /// Bytes per second per allocation and direction; 0 is unlimited.
    /// Excess datagrams are dropped and counted.
    pub max_bps: u64,
    /// Bytes per second for the whole server (both directions); 0 is unlimited.
    pub bps_capacity: u64,
    /// `external-ip`: (relay address or `None` for any of the family, public
    /// address) pairs; XOR-RELAYED-ADDRESS carries the public address.
    pub external_ips: Vec<(Option<IpAddr>, IpAddr)>,
    /// Ignore STUN Binding requests (coturn's `no-stun`).
    pub no_stun: bool,
    /// Ignore every TURN request (coturn's `stun-only`).
    pub stun_only: bool,
}

/// What the workers of one process share: allocation quotas, the relay port
/// pools with their EVEN-PORT reservations, and the per-source-IP limiters (`unauth-rate`, `auth-failures-per-minute`). None
/// of it is on the relay path. Clone it into each worker's
/// [`Server::set_shard`].
#[derive(Clone, Debug)]
pub struct SharedState {
    /// Live allocations per user and in all.
    pub quota: QuotaLedger,
    /// Relay port pools and EVEN-PORT reservations.
    pub ports: RelayPorts,
    /// Answers to unauthenticated requests, per source IP.
    pub unauth: SharedLimiter,
    /// Failed authentications, per source IP.
    pub failures: SharedLimiter,
}

impl SharedState {
    /// Empty counters with the limits of `config`.
    pub fn new(config: &ServerConfig) -> Self {
        let f = config.auth_failures_per_minute;
        SharedState {
            quota: QuotaLedger::new(),
            ports: RelayPorts::new(&config.relay_ips, config.min_port, config.max_port),
            unauth: SharedLimiter::new(SourceLimiter::new(
                config.unauth_rate as f64,
                config.unauth_burst,
                config.max_tracked_sources,
            )),
            failures: SharedLimiter::new(SourceLimiter::new(
                f as f64 / 60.0,
                f,
                config.max_tracked_sources,
            )),
        }
    }
}

impl ServerConfig {
    /// The configuration each of `count` workers runs with: an equal share
    /// of `bps_capacity` (bytes per second, rounded up). Everything else
    /// applies to every worker as is; quotas, relay ports and per-source
    /// limits are shared through a [`SharedState`].
    pub fn shard(&self, count: usize) -> ServerConfig {
        let mut c = self.clone();
        if c.bps_capacity > 0 {
            c.bps_capacity = c.bps_capacity.div_ceil(count.max(1) as u64);
        }
        c
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "turnd".into(),
            credentials: Credentials::new(),
            relay_ips: vec![],
            min_port: 49152,
            max_port: 65535,
            policy: PeerPolicy::default(),
            default_lifetime: DEFAULT_ALLOCATION_LIFETIME,
            max_lifetime: MAX_ALLOCATION_LIFETIME,
            permission_lifetime: PERMISSION_LIFETIME,
            channel_lifetime: CHANNEL_LIFETIME,
            nonce_lifetime: crate::auth::DEFAULT_NONCE_LIFETIME,
            user_quota: 0,
            total_quota: 0,
            fingerprint: false,
            software: None,
            reason_phrases: false,
            mapped_address: false,
            unauth_rate: 50,
            unauth_burst: 100,
            auth_failures_per_minute: 10,
            max_tracked_sources: 65_536,
            max_bps: 0,
            bps_capacity: 0,
            external_ips: Vec::new(),
            no_stun: false,
            stun_only: false,
        }
    }
}

/// Relay sockets, owned by the IO shell. The core asks for one when it
/// creates an allocation and gives it back when the allocation ends.
pub trait RelayIo {
    /// Binds a UDP socket on `relay` and starts reading it.
    ///
    /// # Errors
    /// The bind error; the core then tries another port.
    fn open(&mut self, relay: SocketAddr) -> io::Result<()>;
    /// Closes the socket (UDP or TCP listener) bound on `relay`.
    fn close(&mut self, relay: SocketAddr);
    /// Binds a TCP listener on `relay` for an RFC 6062 TCP relay; incoming
    /// peer connections go to [`Server::handle_peer_connection`].
    ///
    /// # Errors
    /// The bind error; the core then tries another port.
    fn open_tcp(&mut self, relay: SocketAddr) -> io::Result<()> {
        let _ = relay;
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Starts a TCP connection from `relay` to `peer` for connection `id`;
    /// the outcome goes to [`Server::handle_tcp_connect_result`].
    fn connect_tcp(&mut self, relay: SocketAddr, peer: SocketAddr, id: u32) {
        let _ = (relay, peer, id);
    }
    /// Closes TCP relay connection `id` (pending or piped).
    fn close_tcp(&mut self, id: u32) {
        let _ = id;
    }
}

/// What the IO shell must send after a `handle_*` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Nothing.
    None,
    /// Send `out[..len]` to the client of `to`, from `to.server`.
    Reply {
        /// The client's 5-tuple.
        to: FiveTuple,
        /// Length of the reply in the `out` buffer.
        len: usize,
    },
    /// Send `input[range]` from relay socket `relay` to `peer`.
    ToPeer {
        /// The allocation's relayed transport address.
        relay: SocketAddr,
        /// Destination peer.
        peer: SocketAddr,
        /// Application data within the input buffer.
        range: Range<usize>,
    },
    /// Send `input[range]` (a ChannelData message whose header was written
    /// into the 4 bytes of headroom) to the client of `to`.
    ToClient {
        /// The client's 5-tuple.
        to: FiveTuple,
        /// The ChannelData message within the input buffer.
        range: Range<usize>,
    },
}

/// Counters of the core (packets, bytes, messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets relayed client to peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client to peer.
    pub bytes_to_peer: u64,
    /// Packets relayed peer to client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer to client.
    pub bytes_to_client: u64,
    /// Client datagrams dropped (malformed, no allocation, no channel, no permission).
    pub dropped_from_client: u64,
    /// Peer datagrams dropped (no permission, unknown relay, too large).
    pub dropped_from_peer: u64,
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that expired.
    pub allocations_expired: u64,
    /// Allocations deleted by the client (Refresh with LIFETIME 0).
    pub allocations_deleted: u64,
    /// Requests that failed authentication (wrong password, unknown user).
    pub auth_failures: u64,
    /// Requests dropped by a per-source rate limit.
    pub rate_limited: u64,
    /// Datagrams dropped by `max-bps` or `bps-capacity`.
    pub dropped_bandwidth: u64,
}

impl std::ops::AddAssign for Stats {
    /// Adds another worker's counters.
    fn add_assign(&mut self, o: Stats) {
        self.packets_to_peer += o.packets_to_peer;
        self.bytes_to_peer += o.bytes_to_peer;
        self.packets_to_client += o.packets_to_client;
        self.bytes_to_client += o.bytes_to_client;
        self.dropped_from_client += o.dropped_from_client;
        self.dropped_from_peer += o.dropped_from_peer;
        self.allocations_created += o.allocations_created;
        self.allocations_expired += o.allocations_expired;
        self.allocations_deleted += o.allocations_deleted;
        self.auth_failures += o.auth_failures;
        self.rate_limited += o.rate_limited;
        self.dropped_bandwidth += o.dropped_bandwidth;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    /// The allocation's one deadline: its own expiry or the earliest of its
    /// permissions and channel bindings (see `Allocation::timer_at`).
    Allocation {
        ft: FiveTuple,
        id: u64,
    },
    Reservation {
        token: [u8; 8],
    },
    Transaction {
        ft: FiveTuple,
        tid: TransactionId,
    },
    TcpConnection {
        id: u32,
    },
}

#[derive(Clone, Copy, Debug)]
struct Timer {
    at: Instant,
    seq: u64,
    kind: TimerKind,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Clone, Debug)]
struct CachedResponse {
    bytes: Vec<u8>,
    expires: Instant,
}

/// RFC 6062: a TCP connection between a TCP relay and a peer.
#[derive(Clone, Debug)]
struct TcpConnection {
    control: FiveTuple,
    allocation_id: u64,
    peer: SocketAddr,
    state: TcpConnectionState,
    expires: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpConnectionState {
    /// The server is connecting to the peer for a Connect request.
    Connecting {
        tid: TransactionId,
        fingerprint: bool,
        sha256: bool,
    },
    /// Connected, waiting for the client's ConnectionBind (30 s).
    Ready,
    /// Piped to a client data connection.
    Bound,
}

/// RFC 6062 section 5.2/5.3: a connection waits 30 s for its ConnectionBind.
pub const TCP_CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most TCP relay connections one allocation may have pending or open.
pub const MAX_TCP_CONNECTIONS: usize = 64;

struct Authenticated {
    username: Arc<str>,
    key: Key,
}

/// Everything a request handler needs to answer.
struct Reply<'m> {
    msg: Message<'m>,
    fingerprint: bool,
    /// Answer with MESSAGE-INTEGRITY-SHA256 (the request had it) instead of MESSAGE-INTEGRITY.
    sha256: bool,
}

/// The TURN server state machine. See the module doc for the call protocol.
pub struct Server {
    config: ServerConfig,
    epoch: Instant,
    rng: StdRng,
    nonces: NonceIssuer,
    /// Boxed: the table's slots stay small (a key and a pointer), so its
    /// power-of-two growth wastes little memory at scale.
    allocations: FastMap<FiveTuple, Box<Allocation>>,
    by_relay: FastMap<SocketAddr, FiveTuple>,
    /// Relay port pools and reservations (shared by the workers).
    ports: RelayPorts,
    responses: HashMap<(FiveTuple, TransactionId), CachedResponse>,
    quota: QuotaLedger,
    /// Allocation ids step by the number of workers so they are unique per process.
    id_step: u64,
    timers: BinaryHeap<Reverse<Timer>>,
    timer_seq: u64,
    next_id: u64,
    stats: Stats,
    unix_epoch: u64,
    unauth: SharedLimiter,
    failures: SharedLimiter,
    capacity: Option<TokenBucket>,
    key_scratch: Vec<Key>,
    tcp_connections: HashMap<u32, TcpConnection>,
    connection_binds: HashMap<FiveTuple, u32>,
    draining: bool,
    requests: HashMap<(Method, u16), u64>,
    auth_failure_reasons: HashMap<&'static str, u64>,
    ended_user_bytes: HashMap<Arc<str>, (u64, u64)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("allocations", &self.allocations.len())
            .finish()
    }
}

impl Server {
    /// Creates a server. `now` is its epoch (nonce times count from it);
    /// `seed` feeds the RNG for nonce keys, relay ports and reservation tokens
    /// (pass OS randomness in production, a constant in tests).
    ///
    /// `unix_now` is the Unix time (seconds) at `now`, for the expiry of TURN
    /// REST API usernames.
    pub fn new(config: ServerConfig, now: Instant, unix_now: u64, seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut nonce_key = [0u8; 20];
        rng.fill_bytes(&mut nonce_key);
        let shared = SharedState::new(&config);
        Server {
            unix_epoch: unix_now,
            unauth: shared.unauth,
            failures: shared.failures,
            capacity: (config.bps_capacity > 0).then(|| {
                TokenBucket::new(
                    config.bps_capacity as f64,
                    bandwidth_burst(config.bps_capacity),
                    now,
                )
            }),
            key_scratch: Vec::new(),
            tcp_connections: HashMap::new(),
            connection_binds: HashMap::new(),
            draining: false,
            requests: HashMap::new(),
            auth_failure_reasons: HashMap::new(),
            ended_user_bytes: HashMap::new(),
            nonces: NonceIssuer::new(nonce_key, config.nonce_lifetime),
            config,
            epoch: now,
            rng,
            allocations: FastMap::default(),
            by_relay: FastMap::default(),
            ports: shared.ports,
            responses: HashMap::new(),
            quota: shared.quota,
            id_step: 1,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            next_id: 1,
            stats: Stats::default(),
        }
    }

    /// Makes this server worker `index` of `count` (0-based) in one process:
    /// allocation ids become unique across the workers (`index + 1`, stepping
    /// by `count`), quotas and per-source-IP limits are counted in `shared`
    /// (the same for every worker), and the RNG
    /// for relay ports and reservation tokens differs per worker. The nonce
    /// key stays the one derived from the seed, so workers created with the
    /// same seed and epoch accept each other's nonces. Call it before the
    /// first request.
    pub fn set_shard(&mut self, index: usize, count: usize, shared: &SharedState) {
        let count = count.max(1) as u64;
        self.id_step = count;
        self.next_id = index as u64 % count + 1;
        self.quota = shared.quota.clone();
        self.ports = shared.ports.clone();
        self.unauth = shared.unauth.clone();
        self.failures = shared.failures.clone();
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        for (b, i) in s.iter_mut().zip((index as u64).to_le_bytes()) {
            *b ^= i;
        }
        self.rng = StdRng::from_seed(s);
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The allocation of a 5-tuple.
    pub fn allocation(&self, ft: &FiveTuple) -> Option<&Allocation> {
        self.allocations.get(ft).map(|a| &**a)
    }

    /// Relay ports still free on `ip`.
    pub fn free_ports(&self, ip: IpAddr) -> usize {
        self.ports.free(ip)
    }

    /// Deadlines scheduled (allocations, permissions, channels, cached
    /// answers, reservations, TCP connections): at most a few per entity,
    /// however often clients refresh.
    pub fn scheduled_timers(&self) -> usize {
        self.timers.len()
    }

    /// The earliest deadline at which [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.0.at)
    }

    fn push_timer(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(Timer {
            at,
            seq: self.timer_seq,
            kind,
        }));
    }

    fn now_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Handles bytes from a client: a STUN message or a ChannelData message.
    ///
    /// Replies are written into `out` (at least [`MIN_OUT_BUFFER`] bytes;
    /// 65,600 lets every Data indication fit). Relay sockets are opened and
    /// closed through `io`. Never panics on any input.
    pub fn handle_client_input(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        input: &[u8],
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        match input.first().map(|b| b >> 6) {
            Some(0) => self.handle_stun(now, ft, input, out, io),
            Some(1) => self.handle_channel_data(now, ft, input),
            _ => {
                self.stats.dropped_from_client += 1;
                Transmit::None
            }
        }
    }

    /// The client-to-peer hot path: one ChannelData message.
    #[inline]
    fn handle_channel_data(&mut self, now: Instant, ft: FiveTuple, input: &[u8]) -> Transmit {
        let routed = (|| {
            let cd = ChannelData::parse(input).ok()?;
            let alloc = self.allocations.get_mut(&ft)?;
            let ch = *alloc.channels.get(&cd.channel())?;
            if ch.expires <= now || !alloc.has_permission(ch.peer.ip(), now) {
                return None;
            }
            let len = cd.data().len();
            if !within_bandwidth(&mut alloc.bandwidth_to_peer, &mut self.capacity, len, now) {
                self.stats.dropped_bandwidth += 1;
                return None;
            }
            alloc.packets_to_peer += 1;
            alloc.bytes_to_peer += len as u64;
            Some((alloc.relay_for(ch.peer)?, ch.peer, len))
        })();
        match routed {
            Some((relay, peer, len)) => {
                self.stats.packets_to_peer += 1;
                self.stats.bytes_to_peer += len as u64;
                trace!(target: "turnd::packet", %relay, %peer, len, "channel data to peer");
                Transmit::ToPeer {
                    relay,
                    peer,
                    range: CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len,
                }
            }
            None => {
                self.stats.dropped_from_client += 1;
                Transmit::None
            }
        }
    }

    /// Handles a datagram from `peer` arriving on relay address `relay`.
    ///
    /// `buf[4..4 + len]` holds the datagram; `buf[0..4]` is headroom where the
    /// ChannelData header is written when a channel is bound, so no copy is
    /// made. Otherwise a Data indication is written into `out`. Datagrams
    /// without a permission are dropped (RFC 8656, section 10).
    #[inline]
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut [u8],
    ) -> Transmit {
        let Some(ft) = self.by_relay.get(&relay).copied() else {
            self.stats.dropped_from_peer += 1;
            return Transmit::None;
        };
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            self.stats.dropped_from_peer += 1;
            return Transmit::None;
        };
        if !alloc.has_permission(peer.ip(), now)
            || buf.len() < CHANNEL_DATA_HEADER_LEN + len
            || len > 0xFFFF
        {
            self.stats.dropped_from_peer += 1;
            return Transmit::None;
        }
        if !within_bandwidth(&mut alloc.bandwidth_to_client, &mut self.capacity, len, now) {
            self.stats.dropped_bandwidth += 1;
            self.stats.dropped_from_peer += 1;
            return Transmit::None;
        }
        alloc.bytes_to_client += len as u64;
        if let Some(channel) = alloc.channel_for(peer, now) {
            alloc.packets_to_client += 1;
            self.stats.packets_to_client += 1;
            self.stats.bytes_to_client += len as u64;
            write_channel_data_header(buf, channel, len);
            // Over TCP and TLS, ChannelData is padded to 4 bytes (RFC 8656 section 12.5).
            let mut end = CHANNEL_DATA_HEADER_LEN + len;
            if ft.transport != Transport::Udp {
                let padded = (end + 3) & !3;
                if buf.len() < padded {
                    self.stats.dropped_from_peer += 1;
                    return Transmit::None;
                }
                buf[end..padded].fill(0);
                end = padded;
            }
            trace!(target: "turnd::packet", %relay, %peer, len, "channel data to client");
            return Transmit::ToClient {
                to: ft,
                range: 0..end,
            };
        }
        alloc.packets_to_client += 1;
        let data = &buf[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len];
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let written = (|| {
            let mut w =
                MessageWriter::new(out, MessageType::new(Method::DATA, Class::Indication), tid)
                    .ok()?;
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer).ok()?;
            w.attribute(AttributeType::DATA, data).ok()?;
            Some(w.finish())
        })();
        match written {
            Some(n) => {
                self.stats.packets_to_client += 1;
                self.stats.bytes_to_client += len as u64;
                trace!(target: "turnd::packet", %relay, %peer, len, "data indication to client");
                Transmit::Reply { to: ft, len: n }
            }
            None => {
                self.stats.dropped_from_peer += 1;
                Transmit::None
            }
        }
    }

    fn handle_stun(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        input: &[u8],
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        let msg = match Message::parse(input) {
            Ok(m) => m,
            Err(e) => {
                trace!(target: "turnd::packet", client = %ft.client, error = %e, "undecodable stun message");
                return self.reply_to_malformed(ft, input, out, e);
            }
        };
        match msg.class() {
            Class::Request => self.handle_request(now, ft, msg, out, io),
            Class::Indication if msg.method() == Method::SEND => {
                self.handle_send(now, ft, msg, input)
            }
            _ => {
                self.stats.dropped_from_client += 1;
                Transmit::None
            }
        }
    }

    /// A request whose header is sound but whose attributes are not gets 400;
    /// anything else (including a FINGERPRINT mismatch) is dropped silently.
    fn reply_to_malformed(
        &mut self,
        ft: FiveTuple,
        input: &[u8],
        out: &mut [u8],
        e: crate::stun::DecodeError,
    ) -> Transmit {
        use crate::stun::DecodeError as D;
        self.stats.dropped_from_client += 1;
        let header_ok = input.len() >= 20
            && input[0] & 0xC0 == 0
            && u32::from_be_bytes([input[4], input[5], input[6], input[7]]) == MAGIC_COOKIE;
        let t = MessageType::from_u16(u16::from_be_bytes([
            input.first().copied().unwrap_or(0xff),
            input.get(1).copied().unwrap_or(0),
        ]));
        let answerable = matches!(
            e,
            D::AttributeOverrun { .. }
                | D::BadFingerprint
                | D::BadMessageIntegrity
                | D::Truncated { .. }
        );
        if !header_ok || t.class != Class::Request || !answerable {
            return Transmit::None;
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&input[8..20]);
        let written = (|| {
            let mut w =
                MessageWriter::new(out, MessageType::new(t.method, Class::Error), tid).ok()?;
            w.error_code(ErrorCode::BAD_REQUEST).ok()?;
            if self.config.fingerprint {
                w.fingerprint().ok()?;
            }
            Some(w.finish())
        })();
        written.map_or(Transmit::None, |len| Transmit::Reply { to: ft, len })
    }

    fn handle_request(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: Message<'_>,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        let t = self.answer_request(now, ft, msg, out, io);
        if let Transmit::Reply { len, .. } = t {
            self.count_answer(msg.method(), &out[..len]);
        }
        t
    }

    fn answer_request(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: Message<'_>,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        let r = Reply {
            msg,
            fingerprint: self.config.fingerprint || msg.has_fingerprint(),
            sha256: msg.has_integrity_sha256(),
        };
        if !msg.unknown_attributes().is_empty() {
            if !self.allow_unauthenticated(ft.client.ip(), now) {
                return Transmit::None;
            }
            let unknown = msg.unknown_attributes();
            debug!(client = %ft.client, ?unknown, "request with unknown comprehension-required attributes");
            let phrases = self.config.reason_phrases;
            return self.finish(ft, out, &r, Class::Error, None, |w| {
                w.error_code_with_reason(ErrorCode::UNKNOWN_ATTRIBUTE, phrases)?;
                w.unknown_attributes(unknown)
            });
        }
        if (msg.method() == Method::BINDING && self.config.no_stun)
            || (msg.method() != Method::BINDING && self.config.stun_only)
        {
            return Transmit::None;
        }
        match msg.method() {
            Method::BINDING => {
                // RFC 8489 section 7.3.1: no state, XOR-MAPPED-ADDRESS only
                // (and MAPPED-ADDRESS for RFC 3489-era clients when asked).
                if !self.allow_unauthenticated(ft.client.ip(), now) {
                    return Transmit::None;
                }
                let mapped = self.config.mapped_address;
                return self.finish(ft, out, &r, Class::Success, None, |w| {
                    if mapped {
                        w.address(AttributeType::MAPPED_ADDRESS, ft.client)?;
                    }
                    w.xor_address(AttributeType::XOR_MAPPED_ADDRESS, ft.client)
                });
            }
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND
            | Method::CONNECT
            | Method::CONNECTION_BIND => {}
            _ => return self.unauthenticated_error(now, ft, out, &r, ErrorCode::BAD_REQUEST),
        }
        // A retransmission gets the very same answer (RFC 8489 section 6.3.4).
        if let Some(cached) = self.responses.get(&(ft, msg.transaction_id())) {
            let n = cached.bytes.len();
            if n <= out.len() {
                out[..n].copy_from_slice(&cached.bytes);
                debug!(client = %ft.client, method = ?msg.method(), "retransmitted request answered from cache");
                return Transmit::Reply { to: ft, len: n };
            }
        }
        let auth = match self.authenticate(now, ft, &r, out) {
            Ok(a) => a,
            Err(t) => return t,
        };
        let t = match msg.method() {
            Method::ALLOCATE => self.allocate(now, ft, &r, &auth, out, io),
            Method::REFRESH => self.refresh(now, ft, &r, &auth, out, io),
            Method::CREATE_PERMISSION => self.create_permission(now, ft, &r, &auth, out),
            Method::CONNECT => self.connect(now, ft, &r, &auth, out, io),
            Method::CONNECTION_BIND => self.connection_bind(now, ft, &r, &auth, out),
            _ => self.channel_bind(now, ft, &r, &auth, out),
        };
        if let Transmit::Reply { len, .. } = t {
            if self.responses.len() < MAX_CACHED_RESPONSES {
                let tid = msg.transaction_id();
                let expires = now + TRANSACTION_LIFETIME;
                self.responses.insert(
                    (ft, tid),
                    CachedResponse {
                        bytes: out[..len].to_vec(),
                        expires,
                    },
                );
                self.push_timer(expires, TimerKind::Transaction { ft, tid });
            }
        }
        t
    }

    /// Writes a response of `class` with the attributes `body` adds, then
    /// MESSAGE-INTEGRITY (when `key`) and FINGERPRINT (when due).
    fn finish(
        &self,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        class: Class,
        key: Option<&Key>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), crate::stun::BufferFull>,
    ) -> Transmit {
        let written = (|| {
            let mut w = MessageWriter::new(
                out,
                MessageType::new(r.msg.method(), class),
                r.msg.transaction_id(),
            )
            .ok()?;
            body(&mut w).ok()?;
            if let Some(s) = &self.config.software {
                w.attribute(AttributeType::SOFTWARE, s.as_bytes()).ok()?;
            }
            match key {
                Some(k) if r.sha256 => w.message_integrity_sha256(k.as_bytes()).ok()?,
                Some(k) => w.message_integrity(k.as_bytes()).ok()?,
                None => {}
            }
            if r.fingerprint {
                w.fingerprint().ok()?;
            }
            Some(w.finish())
        })();
        written.map_or(Transmit::None, |len| Transmit::Reply { to: ft, len })
    }

    fn error(
        &self,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        code: ErrorCode,
        key: Option<&Key>,
    ) -> Transmit {
        let phrases = self.config.reason_phrases;
        self.finish(ft, out, r, Class::Error, key, |w| {
            w.error_code_with_reason(code, phrases)
        })
    }

    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS, rate
    /// limited per source (turnd must not be a reflector).
    fn challenge(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        code: ErrorCode,
    ) -> Transmit {
        if !self.allow_unauthenticated(ft.client.ip(), now) {
            return Transmit::None;
        }
        let nonce = self.nonces.issue(self.now_secs(now), ft.client);
        let phrases = self.config.reason_phrases;
        self.finish(ft, out, r, Class::Error, None, |w| {
            w.error_code_with_reason(code, phrases)?;
            w.attribute(AttributeType::REALM, self.config.realm.as_bytes())?;
            w.attribute(AttributeType::NONCE, &nonce)?;
            w.attribute(
                AttributeType::PASSWORD_ALGORITHMS,
                &PASSWORD_ALGORITHMS_VALUE,
            )
        })
    }

    /// Long-term credential check. See RFC 8489, section 9.2.4.
    fn authenticate(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        out: &mut [u8],
    ) -> Result<Authenticated, Transmit> {
        let msg = &r.msg;
        let ip = ft.client.ip();
        if !msg.has_integrity() && !msg.has_integrity_sha256() {
            return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
        }
        // Repeated failures from one source: no answers until its budget
        // refills. A 5-tuple that holds an allocation is exempt: its user is
        // proven, and requests there cannot try other usernames (441).
        if !self.allocations.contains_key(&ft) && self.failures.is_blocked(ip, now) {
            self.stats.rate_limited += 1;
            debug!(client = %ft.client, "too many authentication failures from this address: dropped");
            return Err(Transmit::None);
        }
        let (Some(realm), Some(nonce)) = (
            msg.get_str(AttributeType::REALM),
            msg.get(AttributeType::NONCE),
        ) else {
            return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST));
        };
        match self.nonces.check(nonce, self.now_secs(now), ft.client) {
            NonceCheck::Valid => {}
            check => {
                debug!(client = %ft.client, ?check, "nonce not valid: 438");
                return Err(self.challenge(now, ft, out, r, ErrorCode::STALE_NONCE));
            }
        }
        // RFC 8489 section 9.2.4: PASSWORD-ALGORITHMS must echo ours, and
        // PASSWORD-ALGORITHM pick one of them; neither means MD5.
        let algorithm = match (
            msg.get(AttributeType::PASSWORD_ALGORITHMS),
            msg.get(AttributeType::PASSWORD_ALGORITHM),
        ) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(offered), Some(&[a, b, _, _])) if offered == PASSWORD_ALGORITHMS_VALUE => {
                match PasswordAlgorithm::from_number(u16::from_be_bytes([a, b])) {
                    Some(alg) => alg,
                    None => {
                        return Err(self.unauthenticated_error(
                            now,
                            ft,
                            out,
                            r,
                            ErrorCode::BAD_REQUEST,
                        ))
                    }
                }
            }
            _ => return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST)),
        };
        let username: String = match (
            msg.get_str(AttributeType::USERNAME),
            msg.get(AttributeType::USERHASH),
        ) {
            (Some(u), _) => u.to_owned(),
            (None, Some(h)) => match self.config.credentials.username_for_userhash(h) {
                Some(u) => u.to_owned(),
                None => String::new(),
            },
            (None, None) => {
                return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST))
            }
        };
        let failure = |this: &mut Self, why: &'static str| {
            this.stats.auth_failures += 1;
            *this.auth_failure_reasons.entry(why).or_insert(0) += 1;
            this.failures.record(ip, now);
            info!(client = %ft.client, user = %username, reason = why, "auth failure");
        };
        if realm != self.config.realm {
            failure(self, "wrong realm");
            return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
        }
        let mut keys = std::mem::take(&mut self.key_scratch);
        keys.clear();
        let unix_now = self.unix_now(now);
        let looked_up = self
            .config
            .credentials
            .keys(&username, realm, algorithm, unix_now, &mut keys);
        let matched = keys.iter().copied().find(|k| {
            if msg.has_integrity_sha256() {
                msg.check_integrity_sha256(k.as_bytes())
            } else {
                msg.check_integrity(k.as_bytes())
            }
        });
        self.key_scratch = keys;
        let key = match (looked_up, matched) {
            (Ok(()), Some(k)) => k,
            (Ok(()), None) => {
                failure(self, "message-integrity mismatch (wrong password)");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
            (Err(LookupFailure::Expired), _) => {
                failure(self, "rest credentials expired");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
            (Err(LookupFailure::NoKeyForAlgorithm), _) => {
                failure(self, "no key for the requested password algorithm");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
            (Err(LookupFailure::UnknownUser), _) => {
                failure(self, "unknown user");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
        };
        // The allocation's owner must keep using the same username (441).
        if let Some(a) = self.allocations.get(&ft) {
            if *a.username != *username {
                info!(client = %ft.client, user = %username, owner = %a.username, "auth failure: wrong credentials for allocation");
                return Err(self.error(ft, out, r, ErrorCode::WRONG_CREDENTIALS, Some(&key)));
            }
            return Ok(Authenticated {
                username: a.username.clone(),
                key,
            });
        }
        Ok(Authenticated {
            username: Arc::from(username.as_str()),
            key,
        })
    }

    /// Takes a token from the per-source budget of unauthenticated answers;
    /// false (counted as rate limited) when the source has none left.
    fn allow_unauthenticated(&mut self, ip: IpAddr, now: Instant) -> bool {
        let allowed = self.unauth.allow(ip, now);
        if !allowed {
            self.stats.rate_limited += 1;
        }
        allowed
    }

    /// An error answer to a request that did not authenticate: rate limited
    /// per source like every unauthenticated answer.
    fn unauthenticated_error(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        code: ErrorCode,
    ) -> Transmit {
        if !self.allow_unauthenticated(ft.client.ip(), now) {
            return Transmit::None;
        }
        self.error(ft, out, r, code, None)
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }

    fn lifetime(&self, requested: Option<u32>) -> Duration {
        // RFC 8656 section 7.2: min(requested, max), but never below the default.
        let req = requested.map_or(self.config.default_lifetime, |s| {
            Duration::from_secs(s.into())
        });
        req.min(self.config.max_lifetime)
            .max(self.config.default_lifetime.min(self.config.max_lifetime))
    }

    /// Allocate. See RFC 8656, section 7.2.
    fn allocate(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        auth: &Authenticated,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        let msg = &r.msg;
        let key = Some(&auth.key);
        if self.allocations.contains_key(&ft) {
            return self.error(ft, out, r, ErrorCode::ALLOCATION_MISMATCH, key);
        }
        if self.draining {
            // Shutting down: clients move on to another server of the fleet.
            return self.error(ft, out, r, ErrorCode::INSUFFICIENT_CAPACITY, key);
        }
        let tcp_relay = match msg.get(AttributeType::REQUESTED_TRANSPORT) {
            Some(v) if v.len() == 4 && v[0] == PROTOCOL_UDP => false,
            // RFC 6062 section 5.1: TCP relays only for clients over TCP or TLS.
            Some(v) if v.len() == 4 && v[0] == PROTOCOL_TCP && ft.transport != Transport::Udp => {
                true
            }
            Some(v) if v.len() == 4 && v[0] == PROTOCOL_TCP => {
                return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key)
            }
            Some(v) if v.len() == 4 => {
                return self.error(ft, out, r, ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL, key)
            }
            _ => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        };
        if msg
            .get(AttributeType::DONT_FRAGMENT)
            .is_some_and(|v| !v.is_empty())
        {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        let even_port = match msg.get(AttributeType::EVEN_PORT) {
            None => None,
            Some([b]) => Some(b & 0x80 != 0),
            Some(_) => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        };
        let token = match msg.get(AttributeType::RESERVATION_TOKEN) {
            None => None,
            Some(v) => match <[u8; 8]>::try_from(v) {
                Ok(t) => Some(t),
                Err(_) => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
            },
        };
        let family = match msg.get(AttributeType::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(&[1, _, _, _]) => Some(false),
            Some(&[2, _, _, _]) => Some(true),
            Some(v) if v.len() == 4 => {
                return self.error(ft, out, r, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED, key)
            }
            Some(_) => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        };
        // RFC 8656 section 7.2: ADDITIONAL-ADDRESS-FAMILY asks for an IPv6
        // relay next to the IPv4 one; it excludes REQUESTED-ADDRESS-FAMILY.
        let dual = match msg.get(AttributeType::ADDITIONAL_ADDRESS_FAMILY) {
            None => false,
            Some(&[2, _, _, _]) if family.is_none() => true,
            Some(_) => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        };
        if token.is_some() && (even_port.is_some() || family.is_some() || dual) {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        if tcp_relay && (token.is_some() || even_port.is_some() || dual) {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        if !self.quota.try_acquire(
            &auth.username,
            self.config.user_quota,
            self.config.total_quota,
        ) {
            info!(client = %ft.client, user = %auth.username, "allocation quota reached: 486");
            return self.error(ft, out, r, ErrorCode::ALLOCATION_QUOTA_REACHED, key);
        }
        // Every failure from here on gives the quota back.
        let quota = self.quota.clone();
        let give_back = |user: &str| quota.release(user);

        let mut new_token = None;
        let relay = if let Some(t) = token {
            let claimed = self.ports.lock().reservations.remove(&t);
            match claimed {
                Some(res) if res.expires > now => match io.open(res.relay) {
                    Ok(()) => res.relay,
                    Err(e) => {
                        debug!(relay = %res.relay, error = %e, "reserved relay port could not be bound");
                        self.release_port(res.relay);
                        give_back(&auth.username);
                        return self.error(ft, out, r, ErrorCode::INSUFFICIENT_CAPACITY, key);
                    }
                },
                Some(res) => {
                    self.release_port(res.relay);
                    give_back(&auth.username);
                    return self.error(ft, out, r, ErrorCode::INSUFFICIENT_CAPACITY, key);
                }
                None => {
                    give_back(&auth.username);
                    return self.error(ft, out, r, ErrorCode::INSUFFICIENT_CAPACITY, key);
                }
            }
        } else {
            let want_v6 = family.unwrap_or(false);
            match self.bind_relay_family(want_v6, even_port, tcp_relay, io) {
                Ok((addr, reserved)) => {
                    if let Some(next) = reserved {
                        let mut t = [0u8; 8];
                        self.rng.fill_bytes(&mut t);
                        let expires = now + RESERVATION_LIFETIME;
                        self.ports.lock().reservations.insert(
                            t,
                            Reservation {
                                relay: next,
                                expires,
                            },
                        );
                        self.push_timer(expires, TimerKind::Reservation { token: t });
                        new_token = Some(t);
                    }
                    addr
                }
                Err(code) => {
                    if code == ErrorCode::INSUFFICIENT_CAPACITY {
                        info!(client = %ft.client, user = %auth.username, ipv6 = want_v6, "no relay port left: 508");
                    }
                    give_back(&auth.username);
                    return self.error(ft, out, r, code, key);
                }
            }
        };

        // The IPv6 half of a dual allocation: its failure is reported in
        // ADDRESS-ERROR-CODE while the IPv4 half stands.
        let mut additional_relay = None;
        let mut additional_error = None;
        if dual {
            match self.bind_relay_family(true, None, false, io) {
                Ok((addr, _)) => additional_relay = Some(addr),
                Err(code) => additional_error = Some(code),
            }
        }
        let lifetime = self.lifetime(msg.get_u32(AttributeType::LIFETIME));
        let id = self.next_id;
        self.next_id += self.id_step;
        let expires = now + lifetime;
        self.allocations.insert(
            ft,
            Box::new(Allocation {
                id,
                five_tuple: ft,
                relay,
                additional_relay,
                tcp_relay,
                username: auth.username.clone(),
                key: auth.key,
                expires,
                timer_at: expires,
                created: now,
                permissions: FastMap::default(),
                channels: FastMap::default(),
                channel_by_peer: FastMap::default(),
                packets_to_peer: 0,
                packets_to_client: 0,
                bytes_to_peer: 0,
                bytes_to_client: 0,
                bandwidth_to_peer: self.allocation_bucket(now),
                bandwidth_to_client: self.allocation_bucket(now),
            }),
        );
        self.by_relay.insert(relay, ft);
        if let Some(r) = additional_relay {
            self.by_relay.insert(r, ft);
        }
        self.push_timer(expires, TimerKind::Allocation { ft, id });
        self.stats.allocations_created += 1;
        info!(user = %auth.username, client = %ft.client, relay = %relay, lifetime_s = lifetime.as_secs(), "allocation created");
        let advertised = self.advertised(relay);
        let advertised_additional = additional_relay.map(|a| self.advertised(a));
        self.finish(ft, out, r, Class::Success, key, |w| {
            w.xor_address(AttributeType::XOR_RELAYED_ADDRESS, advertised)?;
            if let Some(a) = advertised_additional {
                w.xor_address(AttributeType::XOR_RELAYED_ADDRESS, a)?;
            }
            if let Some(code) = additional_error {
                // Family (1 byte), reserved (1), class (1), number (1). RFC 8656 section 18.12.
                w.attribute(
                    AttributeType::ADDRESS_ERROR_CODE,
                    &[0x02, 0, (code.0 / 100) as u8, (code.0 % 100) as u8],
                )?;
            }
            w.u32(AttributeType::LIFETIME, lifetime.as_secs() as u32)?;
            if let Some(t) = new_token {
                w.attribute(AttributeType::RESERVATION_TOKEN, &t)?;
            }
            w.xor_address(AttributeType::XOR_MAPPED_ADDRESS, ft.client)
        })
    }

    /// Binds a relay port on one of the relay addresses of a family (the one
    /// with the most free ports first, so several `relay-ip`s share the load).
    ///
    /// # Errors
    /// 440 when the family has no relay address, 508 when no port is left.
    fn bind_relay_family(
        &mut self,
        v6: bool,
        even_port: Option<bool>,
        tcp: bool,
        io: &mut impl RelayIo,
    ) -> Result<(SocketAddr, Option<SocketAddr>), ErrorCode> {
        let mut candidates: Vec<(usize, IpAddr)> = self
            .config
            .relay_ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| (self.free_ports(*ip), *ip))
            .collect();
        if candidates.is_empty() {
            return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, ip) in candidates {
            if let Some(placed) = self.bind_relay(ip, even_port, tcp, io) {
                return Ok(placed);
            }
        }
        Err(ErrorCode::INSUFFICIENT_CAPACITY)
    }

    /// Picks a free port on `ip` and binds it; a few tries when a port is
    /// already used by another program. Returns the address and, for the
    /// EVEN-PORT R bit, the reserved next address.
    fn bind_relay(
        &mut self,
        ip: IpAddr,
        even_port: Option<bool>,
        tcp: bool,
        io: &mut impl RelayIo,
    ) -> Option<(SocketAddr, Option<SocketAddr>)> {
        // Ports another program holds are skipped, then returned to the pool
        // once this allocation is placed (they may be free again later).
        let mut busy: Vec<SocketAddr> = Vec::new();
        let mut placed = None;
        for _ in 0..16 {
            let port = {
                let mut ports = self.ports.lock();
                let Some(pool) = ports.pools.get_mut(&ip) else {
                    break;
                };
                match even_port {
                    Some(reserve) => pool.take_random_even(&mut self.rng, reserve),
                    None => pool.take_random(&mut self.rng),
                }
            };
            let Some(port) = port else { break };
            let addr = SocketAddr::new(ip, port);
            let reserved = (even_port == Some(true)).then(|| SocketAddr::new(ip, port + 1));
            let opened = if tcp {
                io.open_tcp(addr)
            } else {
                io.open(addr)
            };
            match opened {
                Ok(()) => {
                    placed = Some((addr, reserved));
                    break;
                }
                Err(e) => {
                    debug!(relay = %addr, error = %e, "relay port busy, trying another");
                    busy.push(addr);
                    if let Some(next) = reserved {
                        self.release_port(next);
                    }
                }
            }
        }
        for addr in busy {
            self.release_port(addr);
        }
        placed
    }

    /// The address clients are told for relay address `relay`: its
    /// `external-ip` when the host is behind 1:1 NAT, else itself.
    pub fn advertised(&self, relay: SocketAddr) -> SocketAddr {
        let ip = relay.ip();
        let public =
            self.config
                .external_ips
                .iter()
                .find(|(private, _)| *private == Some(ip))
                .or_else(|| {
                    self.config.external_ips.iter().find(|(private, public)| {
                        private.is_none() && public.is_ipv4() == ip.is_ipv4()
                    })
                })
                .map(|(_, public)| *public);
        SocketAddr::new(public.unwrap_or(ip), relay.port())
    }

    fn allocation_bucket(&self, now: Instant) -> Option<TokenBucket> {
        let bps = self.config.max_bps;
        (bps > 0).then(|| TokenBucket::new(bps as f64, bandwidth_burst(bps), now))
    }

    fn release_port(&mut self, addr: SocketAddr) {
        self.ports.put(addr);
    }

    fn delete_allocation(&mut self, ft: FiveTuple, io: &mut impl RelayIo, why: &'static str) {
        let Some(a) = self.allocations.remove(&ft) else {
            return;
        };
        let e = self
            .ended_user_bytes
            .entry(a.username.clone())
            .or_insert((0, 0));
        e.0 += a.bytes_to_peer;
        e.1 += a.bytes_to_client;
        let ids: Vec<u32> = self
            .tcp_connections
            .iter()
            .filter(|(_, c)| c.allocation_id == a.id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.tcp_connections.remove(&id);
            io.close_tcp(id);
        }
        for relay in std::iter::once(a.relay).chain(a.additional_relay) {
            self.by_relay.remove(&relay);
            self.release_port(relay);
            io.close(relay);
        }
        self.quota.release(&a.username);
        info!(
            user = %a.username, client = %ft.client, relay = %a.relay, reason = why,
            packets_to_peer = a.packets_to_peer, packets_to_client = a.packets_to_client,
            "allocation deleted"
        );
    }

    /// Refresh. See RFC 8656, section 7.3.
    fn refresh(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        auth: &Authenticated,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        let key = Some(&auth.key);
        if !self.allocations.contains_key(&ft) {
            return self.error(ft, out, r, ErrorCode::ALLOCATION_MISMATCH, key);
        }
        let requested = r.msg.get_u32(AttributeType::LIFETIME);
        let granted = if requested == Some(0) {
            self.delete_allocation(ft, io, "refresh with lifetime 0");
            self.stats.allocations_deleted += 1;
            0
        } else {
            let lifetime = self.lifetime(requested);
            let expires = now + lifetime;
            let Some(a) = self.allocations.get_mut(&ft) else {
                return Transmit::None;
            };
            a.expires = expires;
            let id = a.id;
            info!(user = %auth.username, client = %ft.client, relay = %a.relay, lifetime_s = lifetime.as_secs(), "allocation refreshed");
            // Only a shorter lifetime needs an earlier timer (see `timer_at`).
            if expires < a.timer_at {
                a.timer_at = expires;
                self.push_timer(expires, TimerKind::Allocation { ft, id });
            }
            lifetime.as_secs() as u32
        };
        self.finish(ft, out, r, Class::Success, key, |w| {
            w.u32(AttributeType::LIFETIME, granted)
        })
    }

    /// Arms the allocation's one timer for `at` when that is earlier than the
    /// one armed (`Allocation::timer_at`). Permissions and channel bindings
    /// expire through it, so an allocation holds one deadline in the heap
    /// however many of them it has and however often they are refreshed.
    fn arm_allocation_timer(&mut self, ft: FiveTuple, at: Instant) {
        let Some(a) = self.allocations.get_mut(&ft) else {
            return;
        };
        if at < a.timer_at {
            a.timer_at = at;
            let id = a.id;
            self.push_timer(at, TimerKind::Allocation { ft, id });
        }
    }

    fn relay_family_matches(&self, ft: &FiveTuple, peer: SocketAddr) -> bool {
        self.allocations
            .get(ft)
            .is_some_and(|a| a.relay_for(peer).is_some())
    }

    /// CreatePermission. See RFC 8656, section 9.
    fn create_permission(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Transmit {
        let key = Some(&auth.key);
        if !self.allocations.contains_key(&ft) {
            return self.error(ft, out, r, ErrorCode::ALLOCATION_MISMATCH, key);
        }
        let tid = r.msg.transaction_id();
        let mut peers: [Option<IpAddr>; 16] = [None; 16];
        let mut count = 0;
        for (t, v) in r.msg.attributes() {
            if t != AttributeType::XOR_PEER_ADDRESS {
                continue;
            }
            let Ok(peer) = crate::stun::decode_xor_address(v, &tid) else {
                return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
            };
            if !self.relay_family_matches(&ft, peer) {
                return self.error(ft, out, r, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, key);
            }
            if !self.config.policy.is_allowed(peer.ip()) {
                info!(user = %auth.username, client = %ft.client, peer = %peer.ip(), "peer address not allowed: 403");
                return self.error(ft, out, r, ErrorCode::FORBIDDEN, key);
            }
            if count == peers.len() {
                return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
            }
            peers[count] = Some(peer.ip());
            count += 1;
        }
        if count == 0 {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        let lifetime = self.config.permission_lifetime;
        let Some(a) = self.allocations.get_mut(&ft) else {
            return Transmit::None;
        };
        let new = peers[..count]
            .iter()
            .flatten()
            .filter(|p| !a.permissions.contains_key(p))
            .count();
        if a.permissions.len() + new > MAX_PERMISSIONS {
            return self.error(ft, out, r, ErrorCode::INSUFFICIENT_CAPACITY, key);
        }
        let expires = now + lifetime;
        // Permissions expire through the allocation's one timer; a refreshed
        // one needs nothing (the timer re-arms at the next deadline when due).
        for peer in peers[..count].iter().flatten() {
            a.permissions.insert(*peer, expires);
        }
        debug!(user = %auth.username, client = %ft.client, peers = ?peers[..count].iter().flatten().collect::<Vec<_>>(), "permissions installed");
        self.arm_allocation_timer(ft, expires);
        self.finish(ft, out, r, Class::Success, key, |_| Ok(()))
    }

    /// ChannelBind. See RFC 8656, section 11.
    fn channel_bind(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Transmit {
        let key = Some(&auth.key);
        if !self.allocations.contains_key(&ft) {
            return self.error(ft, out, r, ErrorCode::ALLOCATION_MISMATCH, key);
        }
        let number = match r.msg.get(AttributeType::CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        };
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&number) {
            debug!(client = %ft.client, channel = number, "channel number outside 0x4000-0x7fff: 400");
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        let peer = match r.msg.get_xor_address(AttributeType::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        };
        if !self.relay_family_matches(&ft, peer) {
            return self.error(ft, out, r, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, key);
        }
        if !self.config.policy.is_allowed(peer.ip()) {
            info!(user = %auth.username, client = %ft.client, peer = %peer.ip(), "peer address not allowed: 403");
            return self.error(ft, out, r, ErrorCode::FORBIDDEN, key);
        }
        let channel_lifetime = self.config.channel_lifetime;
        let permission_lifetime = self.config.permission_lifetime;
        let Some(a) = self.allocations.get_mut(&ft) else {
            return Transmit::None;
        };
        // RFC 8656 section 11.2: the number must be unbound or bound to this
        // peer, and the peer unbound or bound to this number.
        let number_ok = a.channels.get(&number).is_none_or(|c| c.peer == peer);
        let peer_ok = a.channel_by_peer.get(&peer).is_none_or(|&n| n == number);
        if a.channels.len() >= MAX_CHANNELS && !a.channels.contains_key(&number) {
            return self.error(ft, out, r, ErrorCode::INSUFFICIENT_CAPACITY, key);
        }
        if !number_ok || !peer_ok {
            debug!(client = %ft.client, channel = number, %peer, number_ok, peer_ok, "channel rebinding rule violated: 400");
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        let expires = now + channel_lifetime;
        let perm_expires = now + permission_lifetime;
        a.channels.insert(
            number,
            ChannelBinding {
                number,
                peer,
                expires,
            },
        );
        a.channel_by_peer.insert(peer, number);
        a.permissions.insert(peer.ip(), perm_expires);
        debug!(user = %auth.username, client = %ft.client, channel = number, %peer, "channel bound");
        self.arm_allocation_timer(ft, expires.min(perm_expires));
        self.finish(ft, out, r, Class::Success, key, |_| Ok(()))
    }

    /// Send indication. See RFC 8656, section 10.2. Dropped silently when
    /// anything is missing or the peer is not allowed.
    fn handle_send(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: Message<'_>,
        input: &[u8],
    ) -> Transmit {
        let routed = (|| {
            let a = self.allocations.get_mut(&ft)?;
            let peer = msg.get_xor_address(AttributeType::XOR_PEER_ADDRESS)?.ok()?;
            let data = msg.get(AttributeType::DATA)?;
            if !self.config.policy.is_allowed(peer.ip()) || !a.has_permission(peer.ip(), now) {
                return None;
            }
            if !within_bandwidth(
                &mut a.bandwidth_to_peer,
                &mut self.capacity,
                data.len(),
                now,
            ) {
                self.stats.dropped_bandwidth += 1;
                return None;
            }
            a.packets_to_peer += 1;
            a.bytes_to_peer += data.len() as u64;
            let start = data.as_ptr() as usize - input.as_ptr() as usize;
            Some((a.relay_for(peer)?, peer, start..start + data.len()))
        })();
        match routed {
            Some((relay, peer, range)) => {
                self.stats.packets_to_peer += 1;
                self.stats.bytes_to_peer += range.len() as u64;
                trace!(target: "turnd::packet", %relay, %peer, len = range.len(), "send indication to peer");
                Transmit::ToPeer { relay, peer, range }
            }
            None => {
                self.stats.dropped_from_client += 1;
                Transmit::None
            }
        }
    }

    /// Expires allocations, permissions, channels, reservations and cached
    /// responses whose deadline is at or before `now`. Closes relay sockets
    /// through `io`.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut impl RelayIo) {
        while let Some(Reverse(t)) = self.timers.peek().copied() {
            if t.at > now {
                break;
            }
            self.timers.pop();
            match t.kind {
                TimerKind::Allocation { ft, id } => {
                    let Some(a) = self.allocations.get_mut(&ft).filter(|a| a.id == id) else {
                        continue;
                    };
                    if a.expires <= now {
                        self.stats.allocations_expired += 1;
                        self.delete_allocation(ft, io, "expired");
                        continue;
                    }
                    if t.at != a.timer_at {
                        // Superseded by an earlier one that re-armed since.
                        continue;
                    }
                    // Due: expire permissions and channel bindings, then
                    // re-arm at the next deadline of the allocation.
                    a.permissions.retain(|peer, e| {
                        let keep = *e > now;
                        if !keep {
                            debug!(client = %ft.client, %peer, "permission expired");
                        }
                        keep
                    });
                    a.channels.retain(|number, c| {
                        let keep = c.expires > now;
                        if !keep {
                            debug!(client = %ft.client, channel = number, peer = %c.peer, "channel binding expired");
                        }
                        keep
                    });
                    let channels = &a.channels;
                    a.channel_by_peer.retain(|_, n| channels.contains_key(n));
                    let next = a
                        .permissions
                        .values()
                        .copied()
                        .chain(a.channels.values().map(|c| c.expires))
                        .fold(a.expires, Instant::min);
                    a.timer_at = next;
                    self.push_timer(next, TimerKind::Allocation { ft, id });
                }
                TimerKind::Reservation { token } => {
                    // Gone when an Allocate (on any worker) claimed it.
                    let lapsed = {
                        let mut ports = self.ports.lock();
                        match ports.reservations.get(&token) {
                            Some(r) if r.expires <= now => ports.reservations.remove(&token),
                            _ => None,
                        }
                    };
                    if let Some(res) = lapsed {
                        self.release_port(res.relay);
                    }
                }
                TimerKind::TcpConnection { id } => {
                    if self
                        .tcp_connections
                        .get(&id)
                        .is_some_and(|c| c.state != TcpConnectionState::Bound && c.expires <= now)
                    {
                        self.tcp_connections.remove(&id);
                        io.close_tcp(id);
                        debug!(
                            connection_id = id,
                            "tcp relay connection not bound within 30 s: closed"
                        );
                    }
                }
                TimerKind::Transaction { ft, tid } => {
                    if self
                        .responses
                        .get(&(ft, tid))
                        .is_some_and(|c| c.expires <= now)
                    {
                        self.responses.remove(&(ft, tid));
                    }
                }
            }
        }
    }

    /// Connect (RFC 6062 section 5.2): the server connects from the TCP relay
    /// to the peer; the answer comes when the shell reports the outcome.
    fn connect(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        auth: &Authenticated,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        let key = Some(&auth.key);
        let Some(a) = self.allocations.get(&ft) else {
            return self.error(ft, out, r, ErrorCode::ALLOCATION_MISMATCH, key);
        };
        if !a.tcp_relay {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        let (alloc_id, relay) = (a.id, a.relay);
        let peer = match r.msg.get_xor_address(AttributeType::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        };
        if peer.is_ipv4() != relay.is_ipv4() {
            return self.error(ft, out, r, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, key);
        }
        if !self.config.policy.is_allowed(peer.ip()) {
            info!(user = %auth.username, client = %ft.client, peer = %peer.ip(), "peer address not allowed: 403");
            return self.error(ft, out, r, ErrorCode::FORBIDDEN, key);
        }
        let mine = self
            .tcp_connections
            .values()
            .filter(|c| c.allocation_id == alloc_id);
        let mut count = 0;
        for c in mine {
            if c.peer == peer {
                return self.error(ft, out, r, ErrorCode::CONNECTION_ALREADY_EXISTS, key);
            }
            count += 1;
        }
        if count >= MAX_TCP_CONNECTIONS {
            return self.error(ft, out, r, ErrorCode::INSUFFICIENT_CAPACITY, key);
        }
        let id = self.new_connection_id();
        let expires = now + TCP_CONNECTION_BIND_TIMEOUT;
        self.tcp_connections.insert(
            id,
            TcpConnection {
                control: ft,
                allocation_id: alloc_id,
                peer,
                state: TcpConnectionState::Connecting {
                    tid: r.msg.transaction_id(),
                    fingerprint: r.fingerprint,
                    sha256: r.sha256,
                },
                expires,
            },
        );
        let mut perm_timer_needed = true;
        if let Some(a) = self.allocations.get_mut(&ft) {
            let perm = now + self.config.permission_lifetime;
            if a.permissions.insert(peer.ip(), perm).is_some() {
                perm_timer_needed = false;
            }
        }
        if perm_timer_needed {
            let perm = now + self.config.permission_lifetime;
            self.arm_allocation_timer(ft, perm);
        }
        debug!(client = %ft.client, %peer, connection_id = id, "connecting to peer over tcp");
        io.connect_tcp(relay, peer, id);
        Transmit::None
    }

    fn new_connection_id(&mut self) -> u32 {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.tcp_connections.contains_key(&id) {
                return id;
            }
        }
    }

    /// The shell's TCP connection to a peer for a Connect finished (`ok`) or
    /// failed. Returns the Connect response (success with CONNECTION-ID, or
    /// 447) for the control connection.
    pub fn handle_tcp_connect_result(
        &mut self,
        now: Instant,
        id: u32,
        ok: bool,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Transmit {
        let Some(c) = self.tcp_connections.get_mut(&id) else {
            io.close_tcp(id);
            return Transmit::None;
        };
        let TcpConnectionState::Connecting {
            tid,
            fingerprint,
            sha256,
        } = c.state
        else {
            return Transmit::None;
        };
        let ft = c.control;
        let Some(key) = self
            .allocations
            .get(&ft)
            .filter(|a| a.id == c.allocation_id)
            .map(|a| a.key)
        else {
            self.tcp_connections.remove(&id);
            io.close_tcp(id);
            return Transmit::None;
        };
        let expires = now + TCP_CONNECTION_BIND_TIMEOUT;
        if ok {
            c.state = TcpConnectionState::Ready;
            c.expires = expires;
            self.push_timer(expires, TimerKind::TcpConnection { id });
        } else {
            self.tcp_connections.remove(&id);
            io.close_tcp(id);
        }
        let phrases = self.config.reason_phrases;
        let class = if ok { Class::Success } else { Class::Error };
        let written = (|| {
            let mut w =
                MessageWriter::new(out, MessageType::new(Method::CONNECT, class), tid).ok()?;
            if ok {
                w.u32(AttributeType::CONNECTION_ID, id).ok()?;
            } else {
                w.error_code_with_reason(ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE, phrases)
                    .ok()?;
            }
            if sha256 {
                w.message_integrity_sha256(key.as_bytes()).ok()?;
            } else {
                w.message_integrity(key.as_bytes()).ok()?;
            }
            if fingerprint {
                w.fingerprint().ok()?;
            }
            Some(w.finish())
        })();
        written.map_or(Transmit::None, |len| Transmit::Reply { to: ft, len })
    }

    /// A peer connected to the TCP relay `relay` (RFC 6062 section 5.3).
    /// Returns the connection id and the ConnectionAttempt indication for the
    /// client, or `None` when the peer has no permission (the shell closes
    /// the connection).
    pub fn handle_peer_connection(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        out: &mut [u8],
    ) -> Option<(u32, Transmit)> {
        let ft = *self.by_relay.get(&relay)?;
        let a = self.allocations.get(&ft)?;
        if !a.tcp_relay || !a.has_permission(peer.ip(), now) {
            debug!(%relay, %peer, "tcp connection from a peer without permission: closed");
            return None;
        }
        let alloc_id = a.id;
        if self
            .tcp_connections
            .values()
            .filter(|c| c.allocation_id == alloc_id)
            .count()
            >= MAX_TCP_CONNECTIONS
        {
            return None;
        }
        let id = self.new_connection_id();
        let expires = now + TCP_CONNECTION_BIND_TIMEOUT;
        self.tcp_connections.insert(
            id,
            TcpConnection {
                control: ft,
                allocation_id: alloc_id,
                peer,
                state: TcpConnectionState::Ready,
                expires,
            },
        );
        self.push_timer(expires, TimerKind::TcpConnection { id });
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let len = (|| {
            let mut w = MessageWriter::new(
                out,
                MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication),
                tid,
            )
            .ok()?;
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer).ok()?;
            w.u32(AttributeType::CONNECTION_ID, id).ok()?;
            Some(w.finish())
        })()?;
        debug!(client = %ft.client, %peer, connection_id = id, "tcp connection attempt from peer");
        Some((id, Transmit::Reply { to: ft, len }))
    }

    /// ConnectionBind (RFC 6062 section 5.4) on a new client connection.
    fn connection_bind(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        auth: &Authenticated,
        out: &mut [u8],
    ) -> Transmit {
        let key = Some(&auth.key);
        if ft.transport == Transport::Udp
            || self.allocations.contains_key(&ft)
            || self.connection_binds.contains_key(&ft)
        {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        }
        let Some(id) = r.msg.get_u32(AttributeType::CONNECTION_ID) else {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        };
        let Some(c) = self
            .tcp_connections
            .get(&id)
            .filter(|c| c.state == TcpConnectionState::Ready && c.expires > now)
        else {
            return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key);
        };
        let owner = self
            .allocations
            .get(&c.control)
            .filter(|a| a.id == c.allocation_id)
            .map(|a| a.username.clone());
        match owner {
            Some(u) if u == auth.username => {}
            Some(_) => return self.error(ft, out, r, ErrorCode::WRONG_CREDENTIALS, key),
            None => return self.error(ft, out, r, ErrorCode::BAD_REQUEST, key),
        }
        if let Some(c) = self.tcp_connections.get_mut(&id) {
            c.state = TcpConnectionState::Bound;
        }
        self.connection_binds.insert(ft, id);
        debug!(client = %ft.client, connection_id = id, "tcp relay connection bound");
        self.finish(ft, out, r, Class::Success, key, |_| Ok(()))
    }

    /// After a reply on a stream: `Some(id)` when that connection just bound
    /// TCP relay connection `id`; the shell then pipes raw bytes between it
    /// and the peer. Each binding is handed out once.
    pub fn take_connection_bind(&mut self, ft: &FiveTuple) -> Option<u32> {
        self.connection_binds.remove(ft)
    }

    /// TCP relay connection `id` ended (either side closed).
    pub fn handle_tcp_connection_closed(&mut self, id: u32) {
        self.tcp_connections.remove(&id);
    }

    /// The client's TCP or TLS connection of `ft` closed: its allocation goes
    /// with it (RFC 8656 section 3.1: the 5-tuple is the connection).
    pub fn handle_connection_closed(&mut self, ft: FiveTuple, io: &mut impl RelayIo) {
        if self.allocations.contains_key(&ft) {
            self.stats.allocations_deleted += 1;
            self.delete_allocation(ft, io, "client connection closed");
        }
    }

    /// Replaces the credentials (users and REST secrets) without touching
    /// allocations: a user database changed, or a reload.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.config.credentials = credentials;
    }

    /// Applies a reloaded configuration (SIGHUP) while every allocation keeps
    /// relaying: credentials, peer policy, quotas, lifetimes for new grants,
    /// nonce lifetime, rate and bandwidth limits. Relay addresses and the port
    /// range are kept as they were (they need a restart). Permissions and
    /// channels to peers the new policy denies are removed at once; returns
    /// how many were.
    pub fn reconfigure(&mut self, now: Instant, mut config: ServerConfig) -> usize {
        config.relay_ips = self.config.relay_ips.clone();
        config.min_port = self.config.min_port;
        config.max_port = self.config.max_port;
        self.nonces.set_lifetime(config.nonce_lifetime);
        self.unauth
            .set_rate(config.unauth_rate as f64, config.unauth_burst);
        let f = config.auth_failures_per_minute;
        self.failures.set_rate(f as f64 / 60.0, f);
        self.capacity = (config.bps_capacity > 0).then(|| {
            TokenBucket::new(
                config.bps_capacity as f64,
                bandwidth_burst(config.bps_capacity),
                now,
            )
        });
        self.config = config;
        let bucket = self.allocation_bucket(now);
        let mut revoked = 0usize;
        for a in self.allocations.values_mut() {
            a.bandwidth_to_peer = bucket;
            a.bandwidth_to_client = bucket;
            let policy = &self.config.policy;
            let before = a.permissions.len() + a.channels.len();
            a.permissions.retain(|ip, _| policy.is_allowed(*ip));
            a.channels.retain(|_, c| policy.is_allowed(c.peer.ip()));
            let channels = &a.channels;
            a.channel_by_peer.retain(|_, n| channels.contains_key(n));
            revoked += before - a.permissions.len() - a.channels.len();
        }
        debug!(
            allocations = self.allocations.len(),
            revoked, "core reconfigured"
        );
        revoked
    }

    fn count_answer(&mut self, method: Method, reply: &[u8]) {
        let code = match Message::parse(reply) {
            Ok(m) if m.class() == Class::Success => 200,
            Ok(m) => m
                .get(AttributeType::ERROR_CODE)
                .and_then(|v| crate::stun::decode_error_code(v).ok())
                .map_or(500, |(c, _)| c.0),
            Err(_) => 500,
        };
        *self.requests.entry((method, code)).or_insert(0) += 1;
    }

    /// Answers sent, by request method and result code (200 for success).
    pub fn request_counts(&self) -> impl Iterator<Item = (Method, u16, u64)> + '_ {
        self.requests.iter().map(|((m, c), n)| (*m, *c, *n))
    }

    /// Authentication failures by reason.
    pub fn auth_failure_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.auth_failure_reasons.iter().map(|(r, n)| (*r, *n))
    }

    /// Bytes relayed per user (client to peer, peer to client), live and
    /// ended allocations together.
    pub fn user_bytes(&self) -> HashMap<Arc<str>, (u64, u64)> {
        let mut m = self.ended_user_bytes.clone();
        for a in self.allocations.values() {
            let e = m.entry(a.username.clone()).or_insert((0, 0));
            e.0 += a.bytes_to_peer;
            e.1 += a.bytes_to_client;
        }
        m
    }

    /// Every live allocation.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values().map(|a| &**a)
    }

    /// Deletes the allocation with `id` (admin API). False when none has it.
    pub fn delete_allocation_by_id(&mut self, id: u64, io: &mut impl RelayIo) -> bool {
        let Some(ft) = self
            .allocations
            .values()
            .find(|a| a.id == id)
            .map(|a| a.five_tuple)
        else {
            return false;
        };
        self.stats.allocations_deleted += 1;
        self.delete_allocation(ft, io, "deleted by the admin API");
        true
    }

    /// Relay addresses and the ports still free on each (in the pools all
    /// workers share).
    pub fn relay_ports_free(&self) -> Vec<(IpAddr, usize)> {
        let ports = self.ports.lock();
        ports.pools.iter().map(|(ip, p)| (*ip, p.free())).collect()
    }

    /// Stops granting new allocations (508) while existing ones keep
    /// relaying and refreshing: the first step of a graceful shutdown.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Gives back the memory of tables that emptied: each table holding
    /// less than a quarter of its capacity is shrunk to fit. Hash tables
    /// never shrink on their own, so after a peak (a burst of allocations
    /// that ended) they would keep its size. O(entries); call it now and
    /// then (the shell does when many allocations ended), not per packet.
    /// Returns the number of tables shrunk.
    pub fn compact(&mut self) -> usize {
        fn sparse(len: usize, cap: usize) -> bool {
            cap > 64 && len < cap / 4
        }
        let mut n = 0;
        if sparse(self.allocations.len(), self.allocations.capacity()) {
            self.allocations.shrink_to_fit();
            n += 1;
        }
        if sparse(self.by_relay.len(), self.by_relay.capacity()) {
            self.by_relay.shrink_to_fit();
            n += 1;
        }
        if sparse(self.responses.len(), self.responses.capacity()) {
            self.responses.shrink_to_fit();
            n += 1;
        }
        if sparse(self.timers.len(), self.timers.capacity()) {
            self.timers.shrink_to_fit();
            n += 1;
        }
        n
    }

    /// True after [`Server::start_draining`].
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Deletes every allocation (shutdown), closing relay sockets through `io`.
    pub fn close_all(&mut self, io: &mut impl RelayIo) {
        let all: Vec<FiveTuple> = self.allocations.keys().copied().collect();
        for ft in all {
            self.delete_allocation(ft, io, "server shutdown");
        }
    }
}

/// Takes `len` bytes from the allocation's and the server's bandwidth
/// buckets, when they exist; false (nothing taken) when either is short.
#[inline]
fn within_bandwidth(
    allocation: &mut Option<TokenBucket>,
    server: &mut Option<TokenBucket>,
    len: usize,
    now: Instant,
) -> bool {
    if allocation.is_none() && server.is_none() {
        return true;
    }
    let len = len as u64;
    if let Some(a) = allocation {
        if !a.take(len, now) {
            return false;
        }
    }
    if let Some(s) = server {
        if !s.take(len, now) {
            return false;
        }
    }
    true
}
