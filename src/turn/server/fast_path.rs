//! What the kernel fast path (XDP, issue 15) may relay, and what it relayed.
//!
//! The core stays the authority: [`Server::fast_path_entries`] lists the
//! channel bindings (RFC 8656 section 12) that the kernel may relay right
//! now, each with the instant its right to do so ends; the shell writes them
//! into the kernel's maps and deletes what is no longer listed. What the
//! kernel relayed comes back through [`Server::credit_fast_path`] into the
//! allocation's counters, the user totals and the `max-bps` /
//! `bps-capacity` buckets. An allocation whose bucket is empty is left out of
//! the list, so its traffic comes back to user space, which drops what is
//! over the limit exactly as without the fast path.
//!
//! Sans-IO like the rest of the core: time comes in as an argument.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::Server;
use crate::turn::allocation::{FiveTuple, Transport};

/// Highest channel number the fast path relays: RFC 8656 section 12 uses
/// 0x4000 through 0x4FFF (the kernel program checks the first nibble).
pub const FAST_PATH_MAX_CHANNEL: u16 = 0x4FFF;

/// Packets and application-data bytes (the ChannelData length client to
/// peer, the UDP payload peer to client) relayed in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelRelayed {
    /// Packets relayed client to peer (ChannelData stripped to UDP).
    pub packets_to_peer: u64,
    /// Application-data bytes relayed client to peer.
    pub bytes_to_peer: u64,
    /// Packets relayed peer to client (UDP framed as ChannelData).
    pub packets_to_client: u64,
    /// Application-data bytes relayed peer to client.
    pub bytes_to_client: u64,
}

impl KernelRelayed {
    /// What `later` counted beyond `self` (counters only grow; a counter
    /// that went back counts from zero).
    pub fn delta(&self, later: &KernelRelayed) -> KernelRelayed {
        let d = |a: u64, b: u64| b.checked_sub(a).unwrap_or(b);
        KernelRelayed {
            packets_to_peer: d(self.packets_to_peer, later.packets_to_peer),
            bytes_to_peer: d(self.bytes_to_peer, later.bytes_to_peer),
            packets_to_client: d(self.packets_to_client, later.packets_to_client),
            bytes_to_client: d(self.bytes_to_client, later.bytes_to_client),
        }
    }

    /// True when nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == KernelRelayed::default()
    }
}

impl std::ops::AddAssign for KernelRelayed {
    fn add_assign(&mut self, o: KernelRelayed) {
        self.packets_to_peer += o.packets_to_peer;
        self.bytes_to_peer += o.bytes_to_peer;
        self.packets_to_client += o.packets_to_client;
        self.bytes_to_client += o.bytes_to_client;
    }
}

/// One channel binding the kernel may relay, both ways:
///
/// - client to peer: ChannelData with `channel` from `five_tuple.client` to
///   `five_tuple.server` leaves as UDP from `relay` to `peer`;
/// - peer to client: UDP from `peer` to `relay` leaves as ChannelData with
///   `channel` from `five_tuple.server` to `five_tuple.client`.
///
/// Only UDP clients of UDP relays, with the client, the relayed address and
/// the peer in one address family and no wildcard address among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastPathEntry {
    /// The allocation's 5-tuple (client and listening address; UDP).
    pub five_tuple: FiveTuple,
    /// The allocation's id ([`crate::turn::Allocation::id`]).
    pub allocation: u64,
    /// Its username, for the user totals when it ends before its last count.
    pub user: Arc<str>,
    /// Channel number, 0x4000-0x4FFF.
    pub channel: u16,
    /// The relayed transport address of the peer's family.
    pub relay: SocketAddr,
    /// The peer transport address bound to the channel.
    pub peer: SocketAddr,
    /// When the kernel must stop: the earliest of the channel binding's,
    /// the permission's and the allocation's expiry.
    pub deadline: Instant,
}

impl Server {
    /// Appends to `out` every channel binding the kernel fast path may relay
    /// at `now` (see [`FastPathEntry`]): a live UDP allocation, a live
    /// channel with a live permission for its peer, and neither the
    /// allocation's `max-bps` buckets nor the server's `bps-capacity` bucket
    /// empty. O(channel bindings).
    pub fn fast_path_entries(&mut self, now: Instant, out: &mut Vec<FastPathEntry>) {
        if let Some(c) = &mut self.capacity {
            if c.is_empty(now) {
                return;
            }
        }
        for a in self.allocations.values_mut() {
            let ft = a.five_tuple;
            if ft.transport != Transport::Udp
                || a.tcp_relay
                || a.expires <= now
                || ft.server.ip().is_unspecified()
            {
                continue;
            }
            if a.bandwidth_to_peer
                .as_mut()
                .is_some_and(|b| b.is_empty(now))
                || a.bandwidth_to_client
                    .as_mut()
                    .is_some_and(|b| b.is_empty(now))
            {
                continue;
            }
            for ch in a.channels.values() {
                if ch.expires <= now || ch.number.get() > FAST_PATH_MAX_CHANNEL {
                    continue;
                }
                let Some(&permission) = a.permissions.get(&ch.peer.ip()) else {
                    continue;
                };
                if permission <= now {
                    continue;
                }
                let Some(relay) = a.relay_for(ch.peer) else {
                    continue;
                };
                if relay.is_ipv4() != ft.client.is_ipv4()
                    || relay.ip().is_unspecified()
                    || ft.client.is_ipv4() != ft.server.is_ipv4()
                {
                    continue;
                }
                out.push(FastPathEntry {
                    five_tuple: ft,
                    allocation: a.id,
                    user: a.username.clone(),
                    channel: ch.number.get(),
                    relay,
                    peer: ch.peer,
                    deadline: ch.expires.min(permission).min(a.expires),
                });
            }
        }
    }

    /// Adds what the kernel relayed for allocation `allocation` (5-tuple
    /// `five_tuple`, user `user`) since the last call: to the core's
    /// counters ([`super::Stats::kernel`] and the totals), the allocation's
    /// counters and `max-bps` buckets (which may go into debt: the bytes
    /// were already sent), and `bps-capacity`. When the allocation has
    /// ended, its bytes go to the user's ended totals.
    pub fn credit_fast_path(
        &mut self,
        now: Instant,
        five_tuple: &FiveTuple,
        allocation: u64,
        user: &Arc<str>,
        relayed: KernelRelayed,
    ) {
        if relayed.is_zero() {
            return;
        }
        self.stats.kernel += relayed;
        self.stats.packets_to_peer += relayed.packets_to_peer;
        self.stats.bytes_to_peer += relayed.bytes_to_peer;
        self.stats.packets_to_client += relayed.packets_to_client;
        self.stats.bytes_to_client += relayed.bytes_to_client;
        if let Some(c) = &mut self.capacity {
            c.consume(relayed.bytes_to_peer + relayed.bytes_to_client, now);
        }
        match self
            .allocations
            .get_mut(five_tuple)
            .filter(|a| a.id == allocation)
        {
            Some(a) => {
                a.packets_to_peer += relayed.packets_to_peer;
                a.bytes_to_peer += relayed.bytes_to_peer;
                a.packets_to_client += relayed.packets_to_client;
                a.bytes_to_client += relayed.bytes_to_client;
                if let Some(b) = &mut a.bandwidth_to_peer {
                    b.consume(relayed.bytes_to_peer, now);
                }
                if let Some(b) = &mut a.bandwidth_to_client {
                    b.consume(relayed.bytes_to_client, now);
                }
            }
            None => {
                self.ended_user_bytes
                    .add(user, relayed.bytes_to_peer, relayed.bytes_to_client);
            }
        }
    }
}
