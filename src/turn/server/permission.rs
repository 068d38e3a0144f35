//! CreatePermission and ChannelBind (RFC 8656 sections 9 and 11), and the
//! expiry of permissions and channel bindings (through the allocation's one
//! timer, see `timers.rs`).

use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, info};

use super::*;
use crate::stun::ErrorCode;
use crate::turn::allocation::{Allocation, ChannelBinding, FiveTuple};
use crate::turn::policy::OwnAddressPath;
use crate::turn::request::{ChannelBindRequest, CreatePermissionRequest};
use crate::untrusted::LogSafe;

impl Server {
    fn relay_family_matches(&self, ft: &FiveTuple, peer: SocketAddr) -> bool {
        self.allocations
            .get(ft)
            .is_some_and(|a| a.relay_for(peer).is_some())
    }

    /// 443 when the allocation has no relay of `peer`'s family, 403 when the
    /// peer policy denies it or it is an address of this host (RFC 8656
    /// sections 9.2 and 11.2). For CreatePermission (`path`) only the IP
    /// address counts (permissions are per address, section 9), elsewhere
    /// the port too (see [`OwnAddresses`]).
    fn admit_peer(
        &mut self,
        q: &Request<'_, '_>,
        peer: SocketAddr,
        path: OwnAddressPath,
    ) -> Result<(), ErrorCode> {
        let Request { ft, auth, .. } = *q;
        if !self.relay_family_matches(&ft, peer) {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        if !self.config.policy.is_allowed(peer.ip()) {
            info!(user = %LogSafe(&auth.username), client = %ft.client, peer = %peer.ip(), "peer address not allowed: 403");
            return Err(ErrorCode::FORBIDDEN);
        }
        self.admit_own_address(q, peer, path)
    }

    /// 403 (counted and logged) when `peer` is an address of this host that
    /// `path` may not reach (see [`OwnAddresses`]).
    pub(super) fn admit_own_address(
        &mut self,
        q: &Request<'_, '_>,
        peer: SocketAddr,
        path: OwnAddressPath,
    ) -> Result<(), ErrorCode> {
        let Request { ft, auth, .. } = *q;
        let ok = if path == OwnAddressPath::CreatePermission {
            self.own.permits_ip(peer.ip())
        } else {
            self.own.permits(peer)
        };
        if ok {
            return Ok(());
        }
        self.stats.own_address_refused.count(path);
        info!(user = %LogSafe(&auth.username), client = %ft.client, %peer, ?path, "peer is an address of this host: 403");
        Err(ErrorCode::FORBIDDEN)
    }

    /// CreatePermission. See RFC 8656, section 9. The 5-tuple has an
    /// allocation (`handle_request` answered 437 otherwise).
    pub(super) fn create_permission(
        &mut self,
        q: &Request<'_, '_>,
        out: &mut [u8],
    ) -> ClientOutput {
        let Request { now, ft, auth, .. } = *q;
        let parsed = CreatePermissionRequest::parse(&q.tx.msg, |peer| {
            self.admit_peer(q, peer, OwnAddressPath::CreatePermission)
        });
        let request = match parsed {
            Ok(request) => request,
            Err(code) => return self.error(q, out, code),
        };
        let peers = request.peers();
        let lifetime = self.config.permission_lifetime;
        let Some(a) = self.allocations.get_mut(&ft) else {
            return ClientOutput::None;
        };
        let new = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(p))
            .count();
        if a.permissions.len() + new > MAX_PERMISSIONS {
            return self.error(q, out, ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let expires = now + lifetime;
        // Permissions expire through the allocation's one timer; a refreshed
        // one needs nothing (the timer re-arms at the next deadline when due).
        for peer in peers {
            a.permissions.insert(*peer, expires);
        }
        debug!(user = %LogSafe(&auth.username), client = %ft.client, ?peers, "permissions installed");
        self.arm_allocation_timer(ft, expires);
        self.success(q, out, |_, _| Ok(()))
    }

    /// ChannelBind. See RFC 8656, section 11. The 5-tuple has an allocation
    /// (`handle_request` answered 437 otherwise).
    pub(super) fn channel_bind(&mut self, q: &Request<'_, '_>, out: &mut [u8]) -> ClientOutput {
        let Request { now, ft, auth, .. } = *q;
        let parsed = ChannelBindRequest::parse(&q.tx.msg).and_then(|bind| {
            self.admit_peer(q, bind.peer, OwnAddressPath::ChannelBind)
                .map(|()| bind)
        });
        let ChannelBindRequest {
            channel: number,
            peer,
        } = match parsed {
            Ok(request) => request,
            Err(code) => {
                debug!(client = %ft.client, %code, "channel bind refused");
                return self.error(q, out, code);
            }
        };
        let channel_lifetime = self.config.channel_lifetime;
        let permission_lifetime = self.config.permission_lifetime;
        let Some(a) = self.allocations.get_mut(&ft) else {
            return ClientOutput::None;
        };
        // RFC 8656 section 11.2: the number must be unbound or bound to this
        // peer, and the peer unbound or bound to this number.
        let number_ok = a.channels.get(&number).is_none_or(|c| c.peer == peer);
        let peer_ok = a.channel_by_peer.get(&peer).is_none_or(|&n| n == number);
        if a.channels.len() >= MAX_CHANNELS && !a.channels.contains_key(&number) {
            return self.error(q, out, ErrorCode::INSUFFICIENT_CAPACITY);
        }
        if !number_ok || !peer_ok {
            debug!(client = %ft.client, channel = %number, %peer, number_ok, peer_ok, "channel rebinding rule violated: 400");
            return self.error(q, out, ErrorCode::BAD_REQUEST);
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
        debug!(user = %LogSafe(&auth.username), client = %ft.client, channel = %number, %peer, "channel bound");
        self.arm_allocation_timer(ft, expires.min(perm_expires));
        self.success(q, out, |_, _| Ok(()))
    }
}

/// Removes the permissions and channel bindings of `a` that lapsed at `now`
/// and returns the allocation's next deadline: the earliest of its own
/// expiry and those of what is left.
pub(super) fn expire_permissions_and_channels(a: &mut Allocation, now: Instant) -> Instant {
    let client = a.five_tuple.client;
    a.permissions.retain(|peer, e| {
        let keep = *e > now;
        if !keep {
            debug!(%client, %peer, "permission expired");
        }
        keep
    });
    a.channels.retain(|number, c| {
        let keep = c.expires > now;
        if !keep {
            debug!(%client, channel = %number, peer = %c.peer, "channel binding expired");
        }
        keep
    });
    let channels = &a.channels;
    a.channel_by_peer.retain(|_, n| channels.contains_key(n));
    a.permissions
        .values()
        .copied()
        .chain(a.channels.values().map(|c| c.expires))
        .fold(a.expires, Instant::min)
}

/// Removes the permissions and channel bindings of `a` to peers `allowed`
/// now denies (a reloaded peer policy; called with the port for a channel's
/// peer, without for a permission's address); returns how many went.
pub(super) fn revoke_denied_peers(
    a: &mut Allocation,
    allowed: impl Fn(std::net::IpAddr, Option<u16>) -> bool,
) -> usize {
    let before = a.permissions.len() + a.channels.len();
    a.permissions.retain(|ip, _| allowed(*ip, None));
    a.channels
        .retain(|_, c| allowed(c.peer.ip(), Some(c.peer.port())));
    let channels = &a.channels;
    a.channel_by_peer.retain(|_, n| channels.contains_key(n));
    before - a.permissions.len() - a.channels.len()
}
