//! The sans-IO TURN server: Binding handler and allocation manager.
//!
//! Feed it what arrives ([`Server::handle_client_input`] for the listener,
//! [`Server::handle_peer_input`] for relay sockets) with the current time; it
//! answers with a [`ClientOutput`] or a [`PeerOutput`] that the IO shell
//! performs. Call [`Server::poll_timeout`] after every `handle_*` and
//! [`Server::handle_timeout`] when that deadline passes.
//!
//! One file per concern: `mod.rs` (the [`Server`], construction, dispatch,
//! getters), `relay.rs` (the hot path), `authenticate.rs`, `allocate.rs`
//! (Allocate, Refresh, the end of an allocation), `permission.rs`
//! (CreatePermission, ChannelBind and their expiry), `tcp_relay.rs` (RFC
//! 6062), `timers.rs` (the deadline heap), `table.rs` (allocations in
//! slots and the peer routes of the hot path), `response.rs` (writing and
//! counting answers), `output.rs` and `config.rs`.

mod allocate;
mod authenticate;
mod config;
mod fast_path;
mod output;
mod permission;
mod relay;
mod response;
mod table;
mod tcp_relay;
mod timers;

#[cfg(test)]
mod tests;

pub use allocate::{AllocationEnd, AllocationSheds, ShedReason};
pub use authenticate::AuthFailure;
use authenticate::*;
pub use config::{ServerConfig, SharedState};
pub use fast_path::{FastPathEntry, KernelRelayed};
pub use output::{ClientOutput, ConnectionAttempt, PeerOutput, Reply};
use response::*;
use table::AllocationTable;
pub use table::MAX_PEER_ROUTES;
use tcp_relay::*;
pub use tcp_relay::{MAX_TCP_CONNECTIONS, TCP_CONNECTION_BIND_TIMEOUT};
use timers::*;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tracing::{debug, trace};

use crate::auth::{Credentials, Key, NonceIssuer};
use crate::stun::{AttributeType, Class, ErrorCode, Message, Method, TransactionId};
use crate::turn::allocation::{Allocation, FastMap, FiveTuple};
use crate::turn::limits::{bandwidth_burst, SharedLimiter, TokenBucket};
use crate::turn::policy::{OwnAddressPath, OwnAddresses};
use crate::turn::ports::RelayPorts;
use crate::turn::quota::QuotaLedger;

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
    /// STUN messages dropped unanswered because the client's address is not
    /// allowed (`allowed-client-ip`, `denied-client-ip`).
    pub denied_clients: u64,
    /// Datagrams dropped by `max-bps` or `bps-capacity`.
    pub dropped_bandwidth: u64,
    /// The part of the relayed packets and bytes above that the XDP fast
    /// path relayed in the kernel (see [`Server::credit_fast_path`]).
    pub kernel: KernelRelayed,
    /// Allocate requests shed to another node or refused for load, by
    /// reason (see [`ShedReason`]).
    pub allocations_shed: AllocationSheds,
    /// Requests, datagrams and connections refused because the peer is an
    /// address of this host (see [`OwnAddresses`]), by path.
    pub own_address_refused: OwnAddressRefusals,
}

/// Own-address refusals (see [`OwnAddresses`]) by path: requests answered
/// 403, indications, datagrams and peer connections dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnAddressRefusals {
    /// CreatePermission answered 403 (RFC 8656 section 9).
    pub create_permission: u64,
    /// ChannelBind answered 403 (RFC 8656 section 11).
    pub channel_bind: u64,
    /// Send indications dropped (RFC 8656 section 10.2).
    pub send: u64,
    /// Connect answered 403 (RFC 6062 section 5.2).
    pub connect: u64,
    /// Peer datagrams dropped (RFC 8656 section 10.3).
    pub peer_datagram: u64,
    /// Incoming RFC 6062 peer connections refused (section 5.3).
    pub peer_connection: u64,
}

impl OwnAddressRefusals {
    /// Counts one refusal on `path`.
    pub fn count(&mut self, path: OwnAddressPath) {
        *match path {
            OwnAddressPath::CreatePermission => &mut self.create_permission,
            OwnAddressPath::ChannelBind => &mut self.channel_bind,
            OwnAddressPath::Send => &mut self.send,
            OwnAddressPath::Connect => &mut self.connect,
            OwnAddressPath::PeerDatagram => &mut self.peer_datagram,
            OwnAddressPath::PeerConnection => &mut self.peer_connection,
        } += 1;
    }
}

impl std::ops::AddAssign for OwnAddressRefusals {
    /// Adds another worker's counts.
    fn add_assign(&mut self, o: OwnAddressRefusals) {
        self.create_permission += o.create_permission;
        self.channel_bind += o.channel_bind;
        self.send += o.send;
        self.connect += o.connect;
        self.peer_datagram += o.peer_datagram;
        self.peer_connection += o.peer_connection;
    }
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
        self.denied_clients += o.denied_clients;
        self.dropped_bandwidth += o.dropped_bandwidth;
        self.kernel += o.kernel;
        self.allocations_shed += o.allocations_shed;
        self.own_address_refused += o.own_address_refused;
    }
}

/// The TURN server state machine. See the module doc for the call protocol.
pub struct Server {
    config: ServerConfig,
    /// This host's addresses, denied as peers (from `config`).
    own: OwnAddresses,
    epoch: Instant,
    rng: StdRng,
    nonces: NonceIssuer,
    /// Allocations by 5-tuple and the peer routes of the relay hot path
    /// (see `table.rs`).
    allocations: AllocationTable,
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
    draining: bool,
    /// Round-robin position in the alternate servers (see
    /// [`ServerConfig::alternate_servers`]).
    alternate_next: usize,
    requests: HashMap<(Method, u16), u64>,
    auth_failure_reasons: HashMap<AuthFailure, u64>,
    ended_user_bytes: EndedUserBytes,
}

/// Most users whose ended allocations' byte totals one core keeps between
/// two calls of [`Server::take_ended_user_bytes`]; the bytes of more go to
/// [`EndedUserBytes::other`]. REST usernames are unique per credential, so
/// without a cap this would grow with every user ever seen.
pub const ENDED_USERS_CAP: usize = 10_000;

/// Per-user byte totals of allocations that ended since the last
/// [`Server::take_ended_user_bytes`]; at most [`ENDED_USERS_CAP`] users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndedUserBytes {
    /// Payload bytes (client to peer, peer to client) per user.
    pub users: HashMap<Arc<str>, (u64, u64)>,
    /// Payload bytes (client to peer, peer to client) of allocations whose
    /// user did not fit under the cap.
    pub other: (u64, u64),
    /// How many ended allocations were added to `other`.
    pub other_allocations: u64,
}

impl EndedUserBytes {
    /// Adds an ended allocation's bytes to its user, or to `other` when the
    /// table is full and the user is not in it.
    pub fn add(&mut self, user: &Arc<str>, to_peer: u64, to_client: u64) {
        if self.users.len() >= ENDED_USERS_CAP && !self.users.contains_key(user) {
            self.other.0 += to_peer;
            self.other.1 += to_client;
            self.other_allocations += 1;
            return;
        }
        let e = self.users.entry(user.clone()).or_insert((0, 0));
        e.0 += to_peer;
        e.1 += to_client;
    }
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
            draining: false,
            alternate_next: 0,
            requests: HashMap::new(),
            auth_failure_reasons: HashMap::new(),
            ended_user_bytes: EndedUserBytes::default(),
            nonces: NonceIssuer::new(nonce_key, config.nonce_lifetime),
            own: config.own_addresses(),
            config,
            epoch: now,
            rng,
            allocations: AllocationTable::default(),
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

    /// This host's addresses as the peer policy sees them (from
    /// [`ServerConfig::own_addresses`]).
    pub fn own_addresses(&self) -> &OwnAddresses {
        &self.own
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
        self.allocations.get(ft)
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

    /// Unix seconds at `now`: nonce times, so that the nodes of a fleet
    /// sharing a nonce key ([`Server::set_nonce_key`]) read each other's.
    pub(super) fn now_secs(&self, now: Instant) -> u64 {
        self.unix_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Issues nonces with `key` from now on (a fleet's shared key, so a
    /// client sent to another node by 300, or by DNS, keeps its nonce);
    /// nonces issued before stay valid for their lifetime.
    pub fn set_nonce_key(&mut self, key: [u8; 20]) {
        self.nonces.set_key(key);
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
    ) -> ClientOutput {
        match input.first().map(|b| b >> 6) {
            // A client the client policy refuses gets no answer at all,
            // Binding included. (ChannelData needs an allocation, which it
            // cannot have made.)
            Some(0) if !self.config.client_policy.admits(ft.client.ip()) => {
                self.stats.denied_clients += 1;
                ClientOutput::None
            }
            Some(0) => self.handle_stun(now, ft, input, out, io),
            Some(1) => self.handle_channel_data(now, ft, input),
            _ => {
                self.stats.dropped_from_client += 1;
                ClientOutput::None
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
    ) -> ClientOutput {
        let msg = match Message::parse(input) {
            Ok(m) => m,
            Err(e) => {
                trace!(target: "turnd::packet", client = %ft.client, error = %e, "undecodable stun message");
                return self.reply_to_malformed(now, ft, input, out, e);
            }
        };
        match msg.class() {
            Class::Request => self.handle_request(now, ft, msg, out, io),
            Class::Indication if msg.method() == Method::SEND => {
                self.handle_send(now, ft, msg, input)
            }
            _ => {
                self.stats.dropped_from_client += 1;
                ClientOutput::None
            }
        }
    }

    /// Answers a request: unknown attributes, Binding, then (authenticated)
    /// the TURN methods. Every answer is counted by result code as it is
    /// written (see `response.rs`).
    fn handle_request(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: Message<'_>,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> ClientOutput {
        let mut r = Transaction {
            msg,
            fingerprint: self.config.fingerprint || msg.has_fingerprint(),
            sha256: msg.has_integrity_sha256(),
            cache_until: None,
        };
        if !msg.unknown_attributes().is_empty() {
            if !self.allow_unauthenticated(
                now,
                ft,
                r.msg.has_integrity() || r.msg.has_integrity_sha256(),
            ) {
                return ClientOutput::None;
            }
            let unknown = msg.unknown_attributes();
            debug!(client = %ft.client, ?unknown, "request with unknown comprehension-required attributes");
            return self.error_with(ft, out, &r, ErrorCode::UNKNOWN_ATTRIBUTE, None, |w, _| {
                w.unknown_attributes(unknown)
            });
        }
        if (msg.method() == Method::BINDING && self.config.no_stun)
            || (msg.method() != Method::BINDING && self.config.stun_only)
        {
            return ClientOutput::None;
        }
        match msg.method() {
            Method::BINDING => {
                // RFC 8489 section 7.3.1: no state, XOR-MAPPED-ADDRESS only
                // (and MAPPED-ADDRESS for RFC 3489-era clients when asked).
                if !self.allow_unauthenticated(now, ft, false) {
                    return ClientOutput::None;
                }
                return self.respond(ft, out, &r, None, None, |w, config| {
                    if config.mapped_address {
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
        if let Some(answer) = self.cached_answer(ft, &msg, out) {
            debug!(client = %ft.client, method = ?msg.method(), "retransmitted request answered from cache");
            return answer;
        }
        // A node shedding load redirects a credential-less Allocate before
        // challenging it (see `shed_before_challenge`).
        if let Some(answer) = self.shed_before_challenge(now, ft, &r, out) {
            return answer;
        }
        let auth = match self.authenticate(now, ft, &r, out) {
            Ok(a) => a,
            Err(t) => return t,
        };
        // From here on each answer is kept for retransmissions.
        r.cache_until = Some(now + TRANSACTION_LIFETIME);
        let q = Request {
            now,
            ft,
            tx: &r,
            auth: &auth,
        };
        // 437 when the 5-tuple's allocation is not as the method needs:
        // Allocate makes one (RFC 8656 section 7.2); Refresh,
        // CreatePermission, ChannelBind and Connect act on it (sections 7.3,
        // 9.2, 11.2; RFC 6062 section 5.2). ConnectionBind comes on a new
        // connection and checks its own (RFC 6062 section 5.4).
        let has_allocation = self.allocations.contains_key(&ft);
        let mismatch = match msg.method() {
            Method::ALLOCATE => has_allocation,
            Method::CONNECTION_BIND => false,
            _ => !has_allocation,
        };
        if mismatch {
            return self.error(&q, out, ErrorCode::ALLOCATION_MISMATCH);
        }
        match msg.method() {
            Method::ALLOCATE => self.allocate(&q, out, io),
            Method::REFRESH => self.refresh(&q, out, io),
            Method::CREATE_PERMISSION => self.create_permission(&q, out),
            Method::CONNECT => self.connect(&q, out, io),
            Method::CONNECTION_BIND => self.connection_bind(&q, out),
            _ => self.channel_bind(&q, out),
        }
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
            self.delete_allocation(ft, io, AllocationEnd::ConnectionClosed);
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
        self.unauth.set_ipv6_prefix(config.ipv6_source_prefix);
        self.failures.set_ipv6_prefix(config.ipv6_source_prefix);
        self.capacity = (config.bps_capacity > 0).then(|| {
            TokenBucket::new(
                config.bps_capacity as f64,
                bandwidth_burst(config.bps_capacity),
                now,
            )
        });
        self.own = config.own_addresses();
        self.config = config;
        let bucket = self.allocation_bucket(now);
        let mut revoked = 0usize;
        for a in self.allocations.values_mut() {
            a.bandwidth_to_peer = bucket;
            a.bandwidth_to_client = bucket;
            let (policy, own) = (&self.config.policy, &self.own);
            revoked += permission::revoke_denied_peers(a, |ip, port| {
                policy.is_allowed(ip)
                    && port.map_or_else(
                        || own.permits_ip(ip),
                        |p| own.permits(SocketAddr::new(ip, p)),
                    )
            });
        }
        // The own addresses and the peer policy may have changed: every
        // peer route is made anew by the slow path.
        self.allocations.clear_all_routes();
        debug!(
            allocations = self.allocations.len(),
            revoked, "core reconfigured"
        );
        revoked
    }

    /// Answers sent, by request method and result code (200 for success).
    pub fn request_counts(&self) -> impl Iterator<Item = (Method, u16, u64)> + '_ {
        self.requests.iter().map(|((m, c), n)| (*m, *c, *n))
    }

    /// Authentication failures by reason.
    pub fn auth_failure_counts(&self) -> impl Iterator<Item = (AuthFailure, u64)> + '_ {
        self.auth_failure_reasons.iter().map(|(r, n)| (*r, *n))
    }

    /// Bytes relayed per user (client to peer, peer to client): live
    /// allocations and those that ended since the last
    /// [`Server::take_ended_user_bytes`] together (users beyond
    /// [`ENDED_USERS_CAP`] left out). Empty unless
    /// [`ServerConfig::user_byte_totals`]. O(live allocations).
    pub fn user_bytes(&self) -> HashMap<Arc<str>, (u64, u64)> {
        let mut m = self.live_user_bytes();
        for (u, (to_peer, to_client)) in &self.ended_user_bytes.users {
            let e = m.entry(u.clone()).or_insert((0, 0));
            e.0 += to_peer;
            e.1 += to_client;
        }
        m
    }

    /// Bytes relayed per user (client to peer, peer to client) by live
    /// allocations only. Empty unless [`ServerConfig::user_byte_totals`].
    /// O(live allocations).
    pub fn live_user_bytes(&self) -> HashMap<Arc<str>, (u64, u64)> {
        let mut m: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        if !self.config.user_byte_totals {
            return m;
        }
        for a in self.allocations.values() {
            let e = m.entry(a.username.clone()).or_insert((0, 0));
            e.0 += a.bytes_to_peer;
            e.1 += a.bytes_to_client;
        }
        m
    }

    /// Hands out the per-user byte totals of allocations that ended since
    /// the last call and forgets them: the caller (the shell's metrics)
    /// keeps the cumulative table. Call it with every snapshot.
    pub fn take_ended_user_bytes(&mut self) -> EndedUserBytes {
        let taken = std::mem::take(&mut self.ended_user_bytes);
        if taken.users.capacity() > 64 {
            // A fresh table: the old one's capacity goes with it.
            self.ended_user_bytes.users = HashMap::new();
        }
        taken
    }

    /// Every live allocation.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
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
        self.delete_allocation(ft, io, AllocationEnd::AdminDeleted);
        true
    }

    /// Deletes every allocation of `user` (a fleet-wide revocation);
    /// returns how many there were.
    pub fn delete_allocations_of_user(&mut self, user: &str, io: &mut impl RelayIo) -> usize {
        let doomed: Vec<FiveTuple> = self
            .allocations
            .values()
            .filter(|a| &*a.username == user)
            .map(|a| a.five_tuple)
            .collect();
        for ft in &doomed {
            self.stats.allocations_deleted += 1;
            self.delete_allocation(*ft, io, AllocationEnd::AdminDeleted);
        }
        doomed.len()
    }

    /// Relay addresses and the ports still free on each (in the pools all
    /// workers share).
    pub fn relay_ports_free(&self) -> Vec<(IpAddr, usize)> {
        self.ports.free_by_ip()
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
        let mut n = self.allocations.compact();
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

    /// Number of peer routes (see [`MAX_PEER_ROUTES`]): for tests and
    /// memory checks.
    pub fn peer_route_count(&self) -> usize {
        self.allocations.route_count()
    }

    /// True after [`Server::start_draining`].
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Deletes every allocation (shutdown), closing relay sockets through `io`.
    pub fn close_all(&mut self, io: &mut impl RelayIo) {
        let all: Vec<FiveTuple> = self.allocations.keys().copied().collect();
        for ft in all {
            self.delete_allocation(ft, io, AllocationEnd::Shutdown);
        }
    }
}

/// True when a table holding `len` entries in room for `cap` is worth
/// shrinking (see [`Server::compact`]).
fn sparse(len: usize, cap: usize) -> bool {
    cap > 64 && len < cap / 4
}
