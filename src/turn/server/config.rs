//! The core's settings ([`ServerConfig`]) and what the workers of one
//! process share ([`SharedState`]).

use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::auth::Credentials;
use crate::turn::limits::{SharedLimiter, SourceLimiter, DEFAULT_IPV6_SOURCE_PREFIX};
use crate::turn::policy::{ClientPolicy, OwnAddresses, PeerPolicy};
use crate::turn::ports::RelayPorts;
use crate::turn::quota::QuotaLedger;

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
    /// `max-allocations`: allocations on this node (every worker, EVEN-PORT
    /// reservations included, as counted by the shared [`QuotaLedger`])
    /// from which Allocate is shed: 300 Try Alternate with an alternate
    /// server of the client's family, else 508 Insufficient Capacity (see
    /// [`ShedReason::MaxAllocations`]); 0 is no limit.
    pub max_allocations: u32,
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
    /// Answers to requests that did not authenticate (Binding, 400, 401,
    /// 420, 438, and 400 to malformed requests) per second per source IP
    /// (IPv6 sources by `ipv6_source_prefix`); 0 disables the limit. Signed
    /// requests on a 5-tuple that holds an allocation are spared.
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
    /// Which clients are served at all (`allowed-client-ip`,
    /// `denied-client-ip`).
    pub client_policy: ClientPolicy,
    /// Other nodes for UDP and TCP clients (`alternate-server`): while
    /// draining, Allocate is answered 300 Try Alternate with one of them of
    /// the client's address family in ALTERNATE-SERVER (RFC 8489 section
    /// 10, RFC 8656 section 7.2), round robin; 508 when none fits.
    pub alternate_servers: Vec<SocketAddr>,
    /// The same for TLS clients (`tls-alternate-server`).
    pub tls_alternate_servers: Vec<SocketAddr>,
    /// Ignore STUN Binding requests (coturn's `no-stun`).
    pub no_stun: bool,
    /// Ignore every TURN request (coturn's `stun-only`).
    pub stun_only: bool,
    /// Keep per-user byte totals of ended allocations until the next
    /// [`Server::take_ended_user_bytes`] (`prometheus-username-labels`);
    /// when false, [`Server::user_bytes`] is empty and nothing is kept.
    pub user_byte_totals: bool,
    /// Addresses of this host besides `relay_ips` and `external_ips`: its
    /// interfaces' addresses and its listening addresses, gathered by the IO
    /// shell at start and on reload. Every address of the host is denied as
    /// a peer (see [`OwnAddresses`]).
    pub host_ips: Vec<IpAddr>,
    /// Prefix length (bits, 0..=128) by which IPv6 sources share one budget
    /// in the per-source limiters (`ipv6-source-prefix`, default 64: one
    /// /64, what one host or one customer usually gets).
    pub ipv6_source_prefix: u8,
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
            unauth: SharedLimiter::new(
                SourceLimiter::new(
                    config.unauth_rate as f64,
                    config.unauth_burst,
                    config.max_tracked_sources,
                )
                .with_ipv6_prefix(config.ipv6_source_prefix),
            ),
            failures: SharedLimiter::new(
                SourceLimiter::new(f as f64 / 60.0, f, config.max_tracked_sources)
                    .with_ipv6_prefix(config.ipv6_source_prefix),
            ),
        }
    }
}

impl ServerConfig {
    /// The addresses of this host a peer may not be (see [`OwnAddresses`]):
    /// `host_ips`, the relay addresses and both parts of each `external-ip`;
    /// relay addresses and the public addresses they are advertised as are
    /// open on `min_port..=max_port`.
    pub fn own_addresses(&self) -> OwnAddresses {
        let relay = self.relay_ips.iter().copied().chain(
            self.external_ips
                .iter()
                .filter(|(private, public)| {
                    private.map_or_else(
                        || {
                            self.relay_ips
                                .iter()
                                .any(|r| r.is_ipv4() == public.is_ipv4())
                        },
                        |p| self.relay_ips.contains(&p),
                    )
                })
                .map(|(_, public)| *public),
        );
        let host = self.host_ips.iter().copied().chain(
            self.external_ips
                .iter()
                .flat_map(|(p, q)| p.iter().copied().chain([*q])),
        );
        OwnAddresses::new(host, relay, self.min_port, self.max_port, &self.policy)
    }

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
            max_allocations: 0,
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
            client_policy: ClientPolicy::default(),
            alternate_servers: Vec::new(),
            tls_alternate_servers: Vec::new(),
            no_stun: false,
            stun_only: false,
            user_byte_totals: true,
            host_ips: Vec::new(),
            ipv6_source_prefix: DEFAULT_IPV6_SOURCE_PREFIX,
        }
    }
}
