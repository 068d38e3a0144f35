//! The allocation table: allocations by 5-tuple, each in a slot, and the
//! peer routes that make a peer datagram (RFC 8656 section 10.3, and 12.4
//! with a channel) one hash lookup: (relayed address, peer transport
//! address) to the allocation's slot and the channel bound to that peer.
//!
//! A [`PeerRoute`] caches what the slow path (`Server::route_peer`: relay
//! address to 5-tuple, 5-tuple to allocation, permission, own-address
//! check, channel) decided. It is used only while both hold:
//! - the allocation in its slot has the version the route was made at.
//!   Every mutable access to an allocation ([`AllocationTable::get_mut`],
//!   [`AllocationTable::values_mut`]) gives it a new version, so
//!   CreatePermission, ChannelBind, Refresh, the expiry timer and a
//!   reconfiguration invalidate all its routes at once. Versions come from
//!   one counter, so a slot (or relay port) reused by another allocation
//!   never matches an old route;
//! - `now` is before the route's `until`: the earliest of the permission's,
//!   the allocation's and the channel's expiry. So an expiry takes effect
//!   at its instant, before the timer has run.
//!
//! Otherwise the datagram takes the slow path, which makes the route anew.
//! Memory stays bounded: routes are made only for peers that have a
//! permission (and that the own-address check lets through), at most
//! [`MAX_PEER_ROUTES`] per allocation, and they go with the allocation,
//! when its timer expires permissions or channels, on reconfiguration, and
//! (lazily) when its first route after a version change is made.

use std::net::SocketAddr;
use std::time::Instant;

use crate::stun::ChannelNumber;
use crate::turn::allocation::{Allocation, FastMap, FiveTuple};

/// Most peer routes one allocation holds. Permissions are per peer IP
/// address, any port (RFC 8656 section 9), so a peer may send from any
/// number of ports: datagrams from peers beyond this take the slow path
/// (relayed all the same, with the lookups of a route's making: relayed
/// address, 5-tuple, permission, channel).
pub const MAX_PEER_ROUTES: usize = 256;

/// Where a datagram from one peer to one relayed address goes: the slot of
/// the allocation and, when the peer has a channel binding, its number
/// (ChannelData, RFC 8656 section 12.4) rather than a Data indication
/// (section 10.3). Valid while the allocation keeps `version` and until
/// `until`.
#[derive(Clone, Copy, Debug)]
struct PeerRoute {
    slot: u32,
    version: u64,
    /// The earliest of the permission's, the allocation's and (with a
    /// channel) the channel binding's expiry.
    until: Instant,
    channel: Option<ChannelNumber>,
}

/// One allocation and the bookkeeping of its routes.
#[derive(Debug)]
struct Slot {
    allocation: Allocation,
    /// Changes with every mutable access to the allocation.
    version: u64,
    /// The version the routes in `routes` were made at; when it differs
    /// from `version`, they are stale and removed before the next is made.
    routes_version: u64,
    /// The keys of this allocation's routes in [`AllocationTable::routes`].
    routes: Vec<(SocketAddr, SocketAddr)>,
}

/// Allocations by 5-tuple, in slots, and their peer routes. See the module
/// doc.
#[derive(Debug, Default)]
pub(super) struct AllocationTable {
    index: FastMap<FiveTuple, u32>,
    slots: Slots,
    /// (relayed address, peer) to where its datagrams go.
    routes: FastMap<(SocketAddr, SocketAddr), PeerRoute>,
    /// The last version handed out.
    versions: u64,
}

impl AllocationTable {
    /// Number of allocations.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Number of peer routes (bounded by [`MAX_PEER_ROUTES`] per allocation).
    pub(super) fn route_count(&self) -> usize {
        self.routes.len()
    }

    pub(super) fn contains_key(&self, ft: &FiveTuple) -> bool {
        self.index.contains_key(ft)
    }

    /// The allocation of `ft`.
    pub(super) fn get(&self, ft: &FiveTuple) -> Option<&Allocation> {
        let slot = *self.index.get(ft)?;
        self.at(slot)
    }

    /// The allocation of `ft`, to change: its peer routes are invalidated.
    pub(super) fn get_mut(&mut self, ft: &FiveTuple) -> Option<&mut Allocation> {
        let slot = *self.index.get(ft)?;
        let s = self.slots.get_mut(slot)?;
        self.versions += 1;
        s.version = self.versions;
        Some(&mut s.allocation)
    }

    /// The allocation of `ft` for the relay paths, which change counters
    /// and bandwidth buckets only: its peer routes stay valid, so
    /// permissions, channels and lifetimes must not change through it (use
    /// [`AllocationTable::get_mut`]).
    #[inline]
    pub(super) fn relaying_mut(&mut self, ft: &FiveTuple) -> Option<&mut Allocation> {
        let slot = *self.index.get(ft)?;
        self.relaying_at(slot)
    }

    /// The allocation in `slot`, as [`AllocationTable::relaying_mut`].
    #[inline]
    pub(super) fn relaying_at(&mut self, slot: u32) -> Option<&mut Allocation> {
        Some(&mut self.slots.get_mut(slot)?.allocation)
    }

    fn at(&self, slot: u32) -> Option<&Allocation> {
        Some(&self.slots.get(slot)?.allocation)
    }

    /// Adds `a` under its 5-tuple (replacing any allocation there).
    pub(super) fn insert(&mut self, a: Allocation) {
        let ft = a.five_tuple;
        self.remove(&ft);
        self.versions += 1;
        let s = Slot {
            allocation: a,
            version: self.versions,
            routes_version: self.versions,
            routes: Vec::new(),
        };
        let slot = self.slots.insert(s);
        self.index.insert(ft, slot);
    }

    /// Removes the allocation of `ft` and its peer routes.
    pub(super) fn remove(&mut self, ft: &FiveTuple) -> Option<Allocation> {
        let slot = self.index.remove(ft)?;
        let s = self.slots.take(slot)?;
        for key in &s.routes {
            self.routes.remove(key);
        }
        Some(s.allocation)
    }

    /// Every allocation.
    pub(super) fn values(&self) -> impl Iterator<Item = &Allocation> {
        self.slots.iter().map(|s| &s.allocation)
    }

    /// Every allocation, to change: all peer routes are invalidated.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Allocation> {
        let versions = &mut self.versions;
        self.slots.iter_mut().map(move |s| {
            *versions += 1;
            s.version = *versions;
            &mut s.allocation
        })
    }

    /// The 5-tuples of every allocation.
    pub(super) fn keys(&self) -> impl Iterator<Item = &FiveTuple> {
        self.index.keys()
    }

    /// Removes the peer routes of the allocation of `ft` (its permissions or
    /// channels went).
    pub(super) fn clear_routes(&mut self, ft: &FiveTuple) {
        let Some(s) = self.index.get(ft).and_then(|&i| self.slots.get_mut(i)) else {
            return;
        };
        for key in s.routes.drain(..) {
            self.routes.remove(&key);
        }
    }

    /// Removes every peer route (the own-address set or the peer policy
    /// changed).
    pub(super) fn clear_all_routes(&mut self) {
        self.routes.clear();
        for s in self.slots.iter_mut() {
            s.routes.clear();
        }
    }

    /// The hot path: the allocation a datagram from `peer` to `relay` goes
    /// to and the channel bound to `peer`, when a valid route says so; None
    /// sends the caller to the slow path.
    #[inline]
    pub(super) fn route(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<(&mut Allocation, Option<ChannelNumber>)> {
        let r = *self.routes.get(&(relay, peer))?;
        if now >= r.until {
            return None;
        }
        let s = self.slots.get_mut(r.slot)?;
        if s.version != r.version {
            return None;
        }
        Some((&mut s.allocation, r.channel))
    }

    /// The slot of the allocation of `ft`, and the allocation: the slow
    /// path's lookup, whose slot goes into the route it makes.
    pub(super) fn slot_of(&self, ft: &FiveTuple) -> Option<(u32, &Allocation)> {
        let slot = *self.index.get(ft)?;
        Some((slot, self.at(slot)?))
    }

    /// Makes the route of datagrams from `peer` to `relay` (what the slow
    /// path decided for the allocation in `slot`: `channel`, valid until
    /// `until`). Stale routes of the allocation go first; when it already
    /// has [`MAX_PEER_ROUTES`], none is made.
    pub(super) fn add_route(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        slot: u32,
        until: Instant,
        channel: Option<ChannelNumber>,
    ) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.routes_version != s.version {
            for key in s.routes.drain(..) {
                self.routes.remove(&key);
            }
            s.routes_version = s.version;
        }
        let route = PeerRoute {
            slot,
            version: s.version,
            until,
            channel,
        };
        // A relayed address belongs to one allocation at a time and its
        // routes go with it, so a route there is this allocation's own.
        if let Some(r) = self.routes.get_mut(&(relay, peer)) {
            *r = route;
        } else if s.routes.len() < MAX_PEER_ROUTES {
            self.routes.insert((relay, peer), route);
            s.routes.push((relay, peer));
        }
    }

    /// Gives back the memory of the index, the slots and the routes when
    /// they are sparse (see `Server::compact`); returns how many tables
    /// were shrunk.
    pub(super) fn compact(&mut self) -> usize {
        let mut n = 0;
        if super::sparse(self.index.len(), self.index.capacity()) {
            self.index.shrink_to_fit();
            n += 1;
        }
        if super::sparse(self.routes.len(), self.routes.capacity()) {
            self.routes.shrink_to_fit();
            n += 1;
        }
        if self.slots.compact() {
            n += 1;
        }
        n
    }
}

/// The slots: one vector of boxed slots. A box is allocated where the
/// allocation's own tables are (when it is created), so an allocation and
/// its permissions and channels share pages, and the vector of pointers
/// stays small (8 bytes a slot) however far it grows.
#[derive(Debug, Default)]
struct Slots {
    slots: Vec<Option<Box<Slot>>>,
    /// Empty slots, reused last-freed first.
    free: Vec<u32>,
}

impl Slots {
    #[inline]
    fn get(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize)?.as_deref()
    }

    #[inline]
    fn get_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize)?.as_deref_mut()
    }

    /// Puts `s` in a free slot and returns its index.
    fn insert(&mut self, s: Slot) -> u32 {
        let s = Some(Box::new(s));
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                i
            }
            None => {
                self.slots.push(s);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Empties slot `i`.
    fn take(&mut self, i: u32) -> Option<Slot> {
        let s = self.slots.get_mut(i as usize)?.take()?;
        self.free.push(i);
        Some(*s)
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten().map(|s| &**s)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().flatten().map(|s| &mut **s)
    }

    /// Drops the empty slots after the last in use and gives back the
    /// room when it is sparse; true when it was.
    fn compact(&mut self) -> bool {
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        let end = self.slots.len() as u32;
        self.free.retain(|&i| i < end);
        if !super::sparse(self.slots.len(), self.slots.capacity()) {
            return false;
        }
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
        true
    }
}
