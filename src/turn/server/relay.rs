//! The relay hot path: ChannelData and Send indications to peers, peer
//! datagrams to clients (RFC 8656 sections 10 and 12), bandwidth limits.
//! No allocation, no lock.

use std::net::SocketAddr;
use std::time::Instant;

use rand::RngCore;
use tracing::trace;

use super::*;
use crate::stun::{
    write_channel_data_header, AttributeType, ChannelData, ChannelNumber, Class, Message,
    MessageType, MessageWriter, Method, CHANNEL_DATA_HEADER_LEN,
};
use crate::turn::allocation::{FiveTuple, Transport};
use crate::turn::limits::TokenBucket;
use crate::turn::request::SendIndication;

impl Server {
    /// The client-to-peer hot path: one ChannelData message.
    #[inline]
    pub(super) fn handle_channel_data(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        input: &[u8],
    ) -> ClientOutput {
        let routed = (|| {
            let cd = ChannelData::parse(input).ok()?;
            let alloc = self.allocations.relaying_mut(&ft)?;
            // A TCP relay (RFC 6062) has no UDP socket to send from. An
            // allocation past its lifetime relays nothing, even before the
            // timer deletes it.
            if alloc.tcp_relay || alloc.expires <= now {
                return None;
            }
            let ch = *alloc.channels.get(&cd.channel_number())?;
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
                ClientOutput::ToPeer {
                    relay,
                    peer,
                    range: CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len,
                }
            }
            None => {
                self.stats.dropped_from_client += 1;
                ClientOutput::None
            }
        }
    }

    /// Handles a datagram from `peer` arriving on relay address `relay`.
    ///
    /// `buf[4..4 + len]` holds the datagram; `buf[0..4]` is headroom where the
    /// ChannelData header is written when a channel is bound, so no copy is
    /// made. Otherwise a Data indication is written into `out`. Datagrams
    /// without a permission, or after the allocation's lifetime, are dropped
    /// (RFC 8656, section 10).
    ///
    /// One hash lookup, keyed by (`relay`, `peer`), when the peer sent
    /// before and nothing changed since (see `table.rs`); else the slow path
    /// makes that route.
    #[inline]
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut [u8],
    ) -> PeerOutput {
        if buf.len() < CHANNEL_DATA_HEADER_LEN + len || len > 0xFFFF {
            self.stats.dropped_from_peer += 1;
            return PeerOutput::None;
        }
        let (alloc, channel) = match self.allocations.route(relay, peer, now) {
            Some(routed) => routed,
            None => {
                let Some((slot, channel)) = self.route_peer(now, relay, peer) else {
                    return PeerOutput::None;
                };
                let Some(alloc) = self.allocations.relaying_at(slot) else {
                    self.stats.dropped_from_peer += 1;
                    return PeerOutput::None;
                };
                (alloc, channel)
            }
        };
        let ft = alloc.five_tuple;
        if !within_bandwidth(&mut alloc.bandwidth_to_client, &mut self.capacity, len, now) {
            self.stats.dropped_bandwidth += 1;
            self.stats.dropped_from_peer += 1;
            return PeerOutput::None;
        }
        alloc.bytes_to_client += len as u64;
        if let Some(channel) = channel {
            alloc.packets_to_client += 1;
            self.stats.packets_to_client += 1;
            self.stats.bytes_to_client += len as u64;
            write_channel_data_header(buf, channel.get(), len);
            // Over TCP and TLS, ChannelData is padded to 4 bytes (RFC 8656 section 12.5).
            let mut end = CHANNEL_DATA_HEADER_LEN + len;
            if ft.transport != Transport::Udp {
                let padded = (end + 3) & !3;
                if buf.len() < padded {
                    self.stats.dropped_from_peer += 1;
                    return PeerOutput::None;
                }
                buf[end..padded].fill(0);
                end = padded;
            }
            trace!(target: "turnd::packet", %relay, %peer, len, "channel data to client");
            return PeerOutput::ChannelData {
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
                PeerOutput::DataIndication { to: ft, len: n }
            }
            None => {
                self.stats.dropped_from_peer += 1;
                PeerOutput::None
            }
        }
    }

    /// The slow path of [`Server::handle_peer_input`]: the allocation of
    /// `relay`, the permission of `peer`'s IP address (RFC 8656 section 9),
    /// the own-address check and the channel bound to `peer` (section 12),
    /// each looked up; then the route that lets the next datagram skip all
    /// that. None (counted as dropped) when the datagram may not be relayed.
    #[inline(never)]
    fn route_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
    ) -> Option<(u32, Option<ChannelNumber>)> {
        let permitted = self
            .by_relay
            .get(&relay)
            .and_then(|ft| self.allocations.slot_of(ft))
            .and_then(|(slot, a)| {
                let permission = *a.permissions.get(&peer.ip())?;
                (permission > now && a.expires > now).then_some((slot, a, permission))
            });
        let Some((slot, a, permission)) = permitted else {
            self.stats.dropped_from_peer += 1;
            return None;
        };
        // From an address of this host only another relayed address may
        // send (a binary search in a few addresses; see `OwnAddresses`).
        // Routes are made only for peers it lets through, and all go when
        // it changes (`reconfigure`).
        if !self.own.permits(peer) {
            self.stats.own_address_refused.peer_datagram += 1;
            self.stats.dropped_from_peer += 1;
            return None;
        }
        let mut until = permission.min(a.expires);
        let channel = a.channel_binding_for(peer, now).map(|c| {
            until = until.min(c.expires);
            c.number
        });
        self.allocations
            .add_route(relay, peer, slot, until, channel);
        Some((slot, channel))
    }

    /// Send indication. See RFC 8656, section 10.2. Dropped silently when
    /// anything is missing or the peer is not allowed.
    pub(super) fn handle_send(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: Message<'_>,
        input: &[u8],
    ) -> ClientOutput {
        let routed = (|| {
            let a = self.allocations.relaying_mut(&ft)?;
            // A TCP relay (RFC 6062) has no UDP socket to send from: its
            // peers are reached by Connect and ConnectionBind. An
            // allocation past its lifetime relays nothing.
            if a.tcp_relay || a.expires <= now {
                return None;
            }
            let SendIndication { peer, data } = SendIndication::parse(&msg).ok()?;
            if !self.config.policy.is_allowed(peer.ip()) || !a.has_permission(peer.ip(), now) {
                return None;
            }
            if !self.own.permits(peer) {
                self.stats.own_address_refused.send += 1;
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
                ClientOutput::ToPeer { relay, peer, range }
            }
            None => {
                self.stats.dropped_from_client += 1;
                ClientOutput::None
            }
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
