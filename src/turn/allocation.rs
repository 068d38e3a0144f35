//! Allocation state: the relayed transport address, its permissions and
//! channel bindings. See RFC 8656, sections 2.2, 9 and 12.

use std::collections::HashMap;

/// Hash map of the relay path: aHash with per-process random keys (fast and
/// resistant to collision flooding, unlike SipHash's speed or Fx's weakness).
pub type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::stun::ChannelNumber;
use std::time::Instant;

/// Transport protocol between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP (RFC 8656).
    Udp,
    /// TCP (RFC 8656, section 3.1).
    Tcp,
    /// TLS over TCP (RFC 8656, section 3.1).
    Tls,
}

/// The 5-tuple that names an allocation: client address, server address
/// (the listener the client reached) and transport. See RFC 8656, section 2.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// The client's address as seen by the server (its server-reflexive address).
    pub client: SocketAddr,
    /// The server's listening address the client sent to.
    pub server: SocketAddr,
    /// The transport between them.
    pub transport: Transport,
}

/// A channel binding: channel number to peer transport address. See RFC 8656, section 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelBinding {
    /// Channel number, 0x4000-0x7FFF (see [`crate::stun::MAX_CHANNEL`]).
    pub number: ChannelNumber,
    /// The peer transport address.
    pub peer: SocketAddr,
    /// When the binding lapses unless refreshed by another ChannelBind.
    pub expires: Instant,
}

/// One allocation on the server. See RFC 8656, section 2.2 and 7.
#[derive(Clone, Debug)]
pub struct Allocation {
    /// Unique for the server's lifetime; stale timers compare it.
    pub id: u64,
    /// The client side of the allocation.
    pub five_tuple: FiveTuple,
    /// The relayed transport address (bound by the IO shell).
    pub relay: SocketAddr,
    /// The second relayed address of a dual allocation (IPv6 next to IPv4,
    /// RFC 8656 section 7.2 ADDITIONAL-ADDRESS-FAMILY).
    pub additional_relay: Option<SocketAddr>,
    /// A TCP relay (RFC 6062): peers connect over TCP, no UDP datagrams.
    pub tcp_relay: bool,
    /// The username that created it; later requests must use the same (else 441).
    pub username: Arc<str>,
    /// The long-term key of that user, for MESSAGE-INTEGRITY on responses.
    pub key: crate::auth::Key,
    /// When the allocation expires unless refreshed.
    pub expires: Instant,
    /// When its one timer is due: at most the earliest of `expires` and the
    /// expiries of its permissions and channel bindings. Refreshes that move
    /// a deadline later push no timer; the due timer expires what is due and
    /// re-arms at the next deadline. So an allocation keeps one timer in the
    /// deadline heap however many permissions and channels it has and however
    /// often they are refreshed.
    pub timer_at: Instant,
    /// When it was created.
    pub created: Instant,
    /// Installed permissions: peer IP (port ignored) to when it lapses unless
    /// refreshed (CreatePermission or ChannelBind). See RFC 8656, section 9.
    pub permissions: FastMap<IpAddr, Instant>,
    /// Channel bindings by number.
    pub channels: FastMap<ChannelNumber, ChannelBinding>,
    /// Channel numbers by peer transport address.
    pub channel_by_peer: FastMap<SocketAddr, ChannelNumber>,
    /// Packets relayed from client to peers.
    pub packets_to_peer: u64,
    /// Packets relayed from peers to the client.
    pub packets_to_client: u64,
    /// Bytes relayed from client to peers.
    pub bytes_to_peer: u64,
    /// Bytes relayed from peers to the client.
    pub bytes_to_client: u64,
    /// `max-bps` bucket for client-to-peer bytes, when limited.
    pub bandwidth_to_peer: Option<super::TokenBucket>,
    /// `max-bps` bucket for peer-to-client bytes, when limited.
    pub bandwidth_to_client: Option<super::TokenBucket>,
}

impl Allocation {
    /// The relayed address of the peer's family, if the allocation has one.
    #[inline]
    pub fn relay_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        if self.relay.is_ipv4() == peer.is_ipv4() {
            Some(self.relay)
        } else {
            self.additional_relay
                .filter(|r| r.is_ipv4() == peer.is_ipv4())
        }
    }

    /// True when `peer` has a permission valid at `now`.
    #[inline]
    pub fn has_permission(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions.get(&peer).is_some_and(|&e| e > now)
    }

    /// The channel bound to `peer` and valid at `now`.
    #[inline]
    pub fn channel_for(&self, peer: SocketAddr, now: Instant) -> Option<ChannelNumber> {
        self.channel_binding_for(peer, now).map(|c| c.number)
    }

    /// The channel binding of `peer` valid at `now` (number and expiry).
    /// See RFC 8656, section 12.
    #[inline]
    pub fn channel_binding_for(&self, peer: SocketAddr, now: Instant) -> Option<&ChannelBinding> {
        let n = *self.channel_by_peer.get(&peer)?;
        self.channels.get(&n).filter(|c| c.expires > now)
    }
}
