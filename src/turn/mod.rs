//! TURN (RFC 8656): the allocation manager, its state and the peer policy.
//!
//! Everything here is sans-IO: time comes in as an argument, randomness from
//! a seeded RNG, and socket work goes out as output values
//! ([`ClientOutput`], [`PeerOutput`]) or through the [`RelayIo`] trait.
//! Requests are decoded into the typed values of [`request`] before a
//! handler decides on them.

mod allocation;
mod limits;
mod policy;
mod ports;
mod quota;
pub mod request;
mod server;

pub use allocation::{Allocation, ChannelBinding, FastMap, FiveTuple, Transport};
pub use limits::{SharedLimiter, SourceLimiter, TokenBucket};
pub use policy::{
    embedded_ipv4, ClientPolicy, IpRange, IpRangeError, OwnAddressPath, OwnAddresses, PeerPolicy,
};
pub use ports::RelayPorts;
pub use quota::QuotaLedger;
pub use server::{
    AllocationEnd, AllocationSheds, AuthFailure, ClientOutput, ConnectionAttempt, EndedUserBytes,
    FastPathEntry, KernelRelayed, OwnAddressRefusals, PeerOutput, RelayIo, Reply, Server,
    ServerConfig, SharedState, ShedReason, Stats, CHANNEL_LIFETIME, DEFAULT_ALLOCATION_LIFETIME,
    ENDED_USERS_CAP, MAX_ALLOCATION_LIFETIME, MAX_CACHED_RESPONSES, MAX_CHANNELS, MAX_PEER_ROUTES,
    MAX_PERMISSIONS, MAX_TCP_CONNECTIONS, MIN_OUT_BUFFER, PERMISSION_LIFETIME,
    RESERVATION_LIFETIME, TCP_CONNECTION_BIND_TIMEOUT, TRANSACTION_LIFETIME,
};
