//! Every expiry goes through one ordered deadline heap: allocations (with
//! their permissions and channel bindings), EVEN-PORT reservations, cached
//! answers and unbound RFC 6062 connections.

use std::cmp::{Ordering, Reverse};
use std::time::Instant;

use tracing::debug;

use super::permission::expire_permissions_and_channels;
use super::*;
use crate::stun::TransactionId;
use crate::turn::allocation::FiveTuple;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TimerKind {
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
pub(super) struct Timer {
    pub(super) at: Instant,
    pub(super) seq: u64,
    pub(super) kind: TimerKind,
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

impl Server {
    /// The earliest deadline at which [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.0.at)
    }

    pub(super) fn push_timer(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(Timer {
            at,
            seq: self.timer_seq,
            kind,
        }));
    }

    /// Arms the allocation's one timer for `at` when that is earlier than the
    /// one armed (`Allocation::timer_at`). Permissions and channel bindings
    /// expire through it, so an allocation holds one deadline in the heap
    /// however many of them it has and however often they are refreshed.
    pub(super) fn arm_allocation_timer(&mut self, ft: FiveTuple, at: Instant) {
        let Some(a) = self.allocations.get_mut(&ft) else {
            return;
        };
        if at < a.timer_at {
            a.timer_at = at;
            let id = a.id;
            self.push_timer(at, TimerKind::Allocation { ft, id });
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
                        self.delete_allocation(ft, io, AllocationEnd::Expired);
                        continue;
                    }
                    if t.at != a.timer_at {
                        // Superseded by an earlier one that re-armed since.
                        continue;
                    }
                    // Due: expire permissions and channel bindings, then
                    // re-arm at the next deadline of the allocation.
                    let next = expire_permissions_and_channels(a, now);
                    a.timer_at = next;
                    // Routes to what expired go (the rest are remade).
                    self.allocations.clear_routes(&ft);
                    self.push_timer(next, TimerKind::Allocation { ft, id });
                }
                TimerKind::Reservation { token } => {
                    // Gone when an Allocate (on any worker) claimed it;
                    // lapsed, it gives its owner's quota slot back.
                    if let Some(owner) = self.ports.expire_reservation(&token, now) {
                        self.quota.release(&owner);
                    }
                }
                TimerKind::TcpConnection { id } => {
                    if self.tcp_connections.get(&id).is_some_and(|c| {
                        !matches!(c.state, TcpConnectionState::Bound { .. }) && c.expires <= now
                    }) {
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
}
