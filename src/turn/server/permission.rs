//! CreatePermission and ChannelBind (RFC 8656 sections 9 and 11).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tracing::{debug, info};

use super::*;
use crate::stun::{AttributeType, Class, ErrorCode, MAX_CHANNEL, MIN_CHANNEL};
use crate::turn::allocation::{ChannelBinding, FiveTuple};

impl Server {
    pub(super) fn relay_family_matches(&self, ft: &FiveTuple, peer: SocketAddr) -> bool {
        self.allocations
            .get(ft)
            .is_some_and(|a| a.relay_for(peer).is_some())
    }

    /// CreatePermission. See RFC 8656, section 9.
    pub(super) fn create_permission(
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
    pub(super) fn channel_bind(
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
}
