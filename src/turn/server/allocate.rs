//! Allocate and Refresh (RFC 8656 sections 7.2 and 7.3): relay binding,
//! lifetimes, and the end of an allocation.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;
use tracing::{debug, info};

use super::*;
use crate::stun::{AddressFamily, AttributeType, ErrorCode};
use crate::turn::allocation::{Allocation, FastMap, FiveTuple, Transport};
use crate::turn::limits::{bandwidth_burst, TokenBucket};
use crate::turn::request::{AllocateRequest, RefreshRequest};
use crate::untrusted::LogSafe;

/// Why an allocation ended, for logs: [`AllocationEnd::as_str`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllocationEnd {
    /// Its lifetime ran out without a Refresh (RFC 8656 section 7).
    Expired,
    /// The client sent a Refresh with LIFETIME 0 (RFC 8656 section 7.3).
    Refreshed,
    /// The client's TCP or TLS connection closed (RFC 8656 section 3.1).
    ConnectionClosed,
    /// Deleted through the admin API.
    AdminDeleted,
    /// The server shut down.
    Shutdown,
}

impl AllocationEnd {
    /// Short snake_case name for logs and metric labels: `expired`,
    /// `refresh_lifetime_zero`, `connection_closed`, `admin_deleted`,
    /// `shutdown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AllocationEnd::Expired => "expired",
            AllocationEnd::Refreshed => "refresh_lifetime_zero",
            AllocationEnd::ConnectionClosed => "connection_closed",
            AllocationEnd::AdminDeleted => "admin_deleted",
            AllocationEnd::Shutdown => "shutdown",
        }
    }
}

/// Why a node turns an Allocate away to lighten its load (load shedding,
/// issue 13): the client is sent to another node of the fleet with 300 Try
/// Alternate and ALTERNATE-SERVER (RFC 8489 section 10) when an
/// `alternate-server` of its transport and address family is configured.
/// [`ShedReason::as_str`] names it in logs and in the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShedReason {
    /// The node is draining (SIGTERM with `drain-timeout`). Without an
    /// alternate: 508 Insufficient Capacity.
    Draining,
    /// The node holds `max-allocations` allocations (all workers, as the
    /// shared [`QuotaLedger`](crate::turn::QuotaLedger) counts them).
    /// Without an alternate: 508 Insufficient Capacity, not 486 Allocation
    /// Quota Reached: RFC 8656 section 7.2 gives 486 to a quota the server
    /// defines "based on the username" (turnd's `user-quota`, and coturn's
    /// `total-quota`, kept as 486 for compatibility), while this limit is
    /// the node's capacity, which 508 names ("the server is unable to carry
    /// out the request due to some capacity limit being reached", RFC 8656
    /// section 19); a client or an operator reading 486 would look for a
    /// user over quota.
    MaxAllocations,
    /// Fewer than [`RELAY_PORTS_LOW_PERCENT`](crate::turn::ports::RELAY_PORTS_LOW_PERCENT)
    /// % of the relay ports of the requested relayed address family are
    /// free. Only with an alternate: without one the node goes on
    /// allocating its last ports (508 once none is left, as before).
    RelayPortsLow,
}

impl ShedReason {
    /// Short snake_case name for logs and metric labels: `draining`,
    /// `max_allocations`, `relay_ports_low`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ShedReason::Draining => "draining",
            ShedReason::MaxAllocations => "max_allocations",
            ShedReason::RelayPortsLow => "relay_ports_low",
        }
    }
}

/// Allocate requests shed (see [`ShedReason`]), by reason: each was answered
/// 300 Try Alternate, or 508 when no alternate server fits (the code is
/// counted in the request counters too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocationSheds {
    /// While draining.
    pub draining: u64,
    /// At `max-allocations`.
    pub max_allocations: u64,
    /// With the relay ports of the family nearly exhausted.
    pub relay_ports_low: u64,
}

impl AllocationSheds {
    /// Counts one Allocate shed for `reason`.
    pub fn count(&mut self, reason: ShedReason) {
        *match reason {
            ShedReason::Draining => &mut self.draining,
            ShedReason::MaxAllocations => &mut self.max_allocations,
            ShedReason::RelayPortsLow => &mut self.relay_ports_low,
        } += 1;
    }

    /// Every reason with its count, in the order of [`ShedReason`].
    pub fn by_reason(&self) -> [(ShedReason, u64); 3] {
        [
            (ShedReason::Draining, self.draining),
            (ShedReason::MaxAllocations, self.max_allocations),
            (ShedReason::RelayPortsLow, self.relay_ports_low),
        ]
    }
}

impl std::ops::AddAssign for AllocationSheds {
    /// Adds another worker's counts.
    fn add_assign(&mut self, o: AllocationSheds) {
        self.draining += o.draining;
        self.max_allocations += o.max_allocations;
        self.relay_ports_low += o.relay_ports_low;
    }
}

/// Quota slots an Allocate takes (RFC 8656 section 7.2, 486): one for the
/// allocation and, with the EVEN-PORT R bit, one for the reserved port
/// until it is claimed or lapses; none when it claims a RESERVATION-TOKEN,
/// whose reservation hands its slot on.
fn quota_slots(request: &AllocateRequest) -> u32 {
    match (request.reservation_token, request.even_port) {
        (Some(_), _) => 0,
        (None, Some(true)) => 2,
        (None, _) => 1,
    }
}

impl Server {
    pub(super) fn lifetime(&self, requested: Option<u32>) -> Duration {
        // RFC 8656 section 7.2: min(requested, max), but never below the default.
        let req = requested.map_or(self.config.default_lifetime, |s| {
            Duration::from_secs(s.into())
        });
        req.min(self.config.max_lifetime)
            .max(self.config.default_lifetime.min(self.config.max_lifetime))
    }

    /// The alternate servers for a client on `ft` (RFC 8489 section 10):
    /// `tls-alternate-server` for TLS clients, else `alternate-server`, of
    /// the client's address family (it cannot reach the other), this node
    /// itself left out (an address of this host on the port the client came
    /// to), so one list can be shipped to every node of a fleet.
    fn alternates(&self, ft: FiveTuple) -> impl Iterator<Item = SocketAddr> + '_ {
        let list = match ft.transport {
            Transport::Tls => &self.config.tls_alternate_servers,
            Transport::Udp | Transport::Tcp => &self.config.alternate_servers,
        };
        let c = &self.config;
        let is_self = move |a: &SocketAddr| {
            a.port() == ft.server.port()
                && (a.ip() == ft.server.ip()
                    || c.host_ips.contains(&a.ip())
                    || c.relay_ips.contains(&a.ip())
                    || c.external_ips.iter().any(|(_, public)| *public == a.ip()))
        };
        list.iter()
            .copied()
            .filter(move |a| a.is_ipv4() == ft.client.is_ipv4() && !is_self(a))
    }

    /// The next of [`Server::alternates`] for a client on `ft`, round robin;
    /// None when none fits.
    fn alternate_for(&mut self, ft: FiveTuple) -> Option<SocketAddr> {
        let fits = self.alternates(ft).count();
        if fits == 0 {
            return None;
        }
        self.alternate_next = self.alternate_next.wrapping_add(1);
        let next = self.alternate_next % fits;
        self.alternates(ft).nth(next)
    }

    /// Whether this node sheds `request`, an Allocate from `ft` (see
    /// [`ShedReason`]), first reason first: draining, then `max-allocations`
    /// counted with the quota slots the request would take (2 with the
    /// EVEN-PORT R bit; a RESERVATION-TOKEN claim holds its slot and port
    /// already and is only shed while draining), then the ports of the
    /// requested relayed address family, which only shed to an alternate
    /// (so they are not looked at, nor their lock taken, when the client
    /// has none). `None`: serve it here.
    ///
    /// `max-allocations` is read before the quota slots are taken, so
    /// workers that create allocations at the same instant may pass it by
    /// one each; it is a load threshold, not a quota.
    fn shed_reason(&self, ft: FiveTuple, request: &AllocateRequest) -> Option<ShedReason> {
        if self.draining {
            return Some(ShedReason::Draining);
        }
        if request.reservation_token.is_some() {
            return None;
        }
        let max = self.config.max_allocations as usize;
        if max > 0 && self.quota.total() + quota_slots(request) as usize > max {
            return Some(ShedReason::MaxAllocations);
        }
        let relay_v6 = request.family == Some(AddressFamily::V6);
        (self.alternates(ft).next().is_some() && self.ports.nearly_exhausted(relay_v6))
            .then_some(ShedReason::RelayPortsLow)
    }

    /// Sheds an Allocate for `reason` (see [`ShedReason`]): 300 Try
    /// Alternate with ALTERNATE-SERVER when an alternate of the client's
    /// transport and family is configured, else 508, or `None` (serve it)
    /// for [`ShedReason::RelayPortsLow`] without an alternate. `key` signs
    /// the answer (MESSAGE-INTEGRITY) when the request was authenticated;
    /// without it the answer is a bare 300, as coturn's and libwebrtc's own
    /// test server's are. Counted in [`Stats::allocations_shed`] and logged.
    fn shed(
        &mut self,
        reason: ShedReason,
        ft: FiveTuple,
        out: &mut [u8],
        tx: &Transaction<'_>,
        key: Option<&Key>,
    ) -> Option<ClientOutput> {
        let alternate = self.alternate_for(ft);
        if alternate.is_none() && reason == ShedReason::RelayPortsLow {
            return None;
        }
        self.stats.allocations_shed.count(reason);
        let answer = match alternate {
            Some(alternate) => {
                info!(client = %ft.client, reason = reason.as_str(), %alternate, authenticated = key.is_some(), "allocate shed: 300 try alternate");
                self.error_with(ft, out, tx, ErrorCode::TRY_ALTERNATE, key, |w, _| {
                    w.address(AttributeType::ALTERNATE_SERVER, alternate)
                })
            }
            None => {
                info!(client = %ft.client, reason = reason.as_str(), "allocate shed: 508, no alternate server of the client's family");
                self.error_with(
                    ft,
                    out,
                    tx,
                    ErrorCode::INSUFFICIENT_CAPACITY,
                    key,
                    |_, _| Ok(()),
                )
            }
        };
        Some(answer)
    }

    /// An Allocate without MESSAGE-INTEGRITY on a node that sheds (see
    /// [`Server::shed_reason`]) with an alternate server for the client:
    /// answered at once with an unauthenticated 300 Try Alternate instead of
    /// the 401 challenge. A client that follows the 401 with credentials
    /// and gets an authenticated 300 would carry this node's REALM and
    /// NONCE to the alternate, which did not issue that nonce; libwebrtc
    /// (Chromium) then fails the allocation, since it handles neither 438
    /// nor a second 401 to an Allocate (`TurnAllocateRequest::
    /// OnErrorResponse`). Redirecting the first, credential-less Allocate
    /// is what coturn does and what libwebrtc's own redirecting test
    /// server does. The answer counts against the per-source budget of
    /// unauthenticated answers, as a 401 would. `None` when this node does
    /// not shed it to an alternate: authentication goes on as usual.
    pub(super) fn shed_before_challenge(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        tx: &Transaction<'_>,
        out: &mut [u8],
    ) -> Option<ClientOutput> {
        let msg = &tx.msg;
        if msg.method() != Method::ALLOCATE
            || msg.has_integrity()
            || msg.has_integrity_sha256()
            || self.alternates(ft).next().is_none()
            || self.allocations.contains_key(&ft)
        {
            return None;
        }
        let request = AllocateRequest::parse(msg, ft.transport).ok()?;
        let reason = self.shed_reason(ft, &request)?;
        if !self.allow_unauthenticated(now, ft, false) {
            return Some(ClientOutput::None);
        }
        self.shed(reason, ft, out, tx, None)
    }

    /// Allocate. See RFC 8656, section 7.2. The 5-tuple has no allocation
    /// yet (`handle_request` answered 437 otherwise).
    pub(super) fn allocate(
        &mut self,
        q: &Request<'_, '_>,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> ClientOutput {
        let Request { now, ft, auth, .. } = *q;
        let request = match AllocateRequest::parse(&q.tx.msg, ft.transport) {
            Ok(request) => request,
            Err(code) => return self.error(q, out, code),
        };
        // A node draining or over its load sends clients on to another
        // node of the fleet, told which one when one is configured for
        // their transport and address family (RFC 8489 section 10), else
        // leaves them to try the next one they know (508).
        let shed = self.shed_reason(ft, &request);
        if let Some(answer) =
            shed.and_then(|reason| self.shed(reason, ft, out, q.tx, Some(&q.auth.key)))
        {
            return answer;
        }
        let AllocateRequest {
            tcp_relay,
            even_port,
            reservation_token,
            family,
            dual,
            lifetime: requested_lifetime,
        } = request;
        // Quota slots (see `quota_slots`); a claimed reservation hands its
        // slot on.
        let (user_quota, total_quota) = (self.config.user_quota, self.config.total_quota);
        let mut held: u32 = quota_slots(&request);
        if !self
            .quota
            .try_acquire_many(&auth.username, held, user_quota, total_quota)
        {
            info!(client = %ft.client, user = %LogSafe(&auth.username), "allocation quota reached: 486");
            return self.error(q, out, ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        // Every failure from here on gives the slots held back.
        let quota = self.quota.clone();
        let give_back = |user: &str, held: u32| (0..held).for_each(|_| quota.release(user));

        let mut new_token = None;
        let relay = if let Some(t) = reservation_token {
            let Some((reserved, owner)) = self.ports.claim_reservation(&t, now) else {
                return self.error(q, out, ErrorCode::INSUFFICIENT_CAPACITY);
            };
            if owner != auth.username {
                // Another user's reservation: its slot moves to this user.
                let moved = self
                    .quota
                    .try_acquire(&auth.username, user_quota, total_quota);
                self.quota.release(&owner);
                if !moved {
                    self.ports.release(reserved);
                    info!(client = %ft.client, user = %LogSafe(&auth.username), "allocation quota reached: 486");
                    return self.error(q, out, ErrorCode::ALLOCATION_QUOTA_REACHED);
                }
            }
            held = 1;
            if let Err(e) = io.open(reserved) {
                debug!(relay = %reserved, error = %e, "reserved relay port could not be bound");
                self.ports.release(reserved);
                give_back(&auth.username, held);
                return self.error(q, out, ErrorCode::INSUFFICIENT_CAPACITY);
            }
            reserved
        } else {
            let want_v6 = family == Some(AddressFamily::V6);
            match self.bind_relay_family(want_v6, even_port, tcp_relay, io) {
                Ok((addr, reserved)) => {
                    match reserved {
                        Some(next) => {
                            let mut t = [0u8; 8];
                            self.rng.fill_bytes(&mut t);
                            let expires = now + RESERVATION_LIFETIME;
                            self.ports.reserve(t, next, expires, auth.username.clone());
                            self.push_timer(expires, TimerKind::Reservation { token: t });
                            new_token = Some(t);
                        }
                        None => give_back(&auth.username, held - 1),
                    }
                    addr
                }
                Err(code) => {
                    if code == ErrorCode::INSUFFICIENT_CAPACITY {
                        info!(client = %ft.client, user = %LogSafe(&auth.username), ipv6 = want_v6, "no relay port left: 508");
                    }
                    give_back(&auth.username, held);
                    return self.error(q, out, code);
                }
            }
        };

        // The IPv6 half of a dual allocation: its failure is reported in
        // ADDRESS-ERROR-CODE while the IPv4 half stands.
        let mut additional_relay = None;
        let mut additional_error = None;
        if dual {
            match self.bind_relay_family(true, None, false, io) {
                Ok((addr, _)) => additional_relay = Some(addr),
                Err(code) => additional_error = Some(code),
            }
        }
        let lifetime = self.lifetime(requested_lifetime);
        let id = self.next_id;
        self.next_id += self.id_step;
        let expires = now + lifetime;
        self.allocations.insert(Allocation {
            id,
            five_tuple: ft,
            relay,
            additional_relay,
            tcp_relay,
            username: auth.username.clone(),
            key: auth.key,
            expires,
            timer_at: expires,
            created: now,
            permissions: FastMap::default(),
            channels: FastMap::default(),
            channel_by_peer: FastMap::default(),
            packets_to_peer: 0,
            packets_to_client: 0,
            bytes_to_peer: 0,
            bytes_to_client: 0,
            bandwidth_to_peer: self.allocation_bucket(now),
            bandwidth_to_client: self.allocation_bucket(now),
        });
        self.by_relay.insert(relay, ft);
        if let Some(r) = additional_relay {
            self.by_relay.insert(r, ft);
        }
        self.push_timer(expires, TimerKind::Allocation { ft, id });
        self.stats.allocations_created += 1;
        info!(user = %LogSafe(&auth.username), client = %ft.client, relay = %relay, lifetime_s = lifetime.as_secs(), "allocation created");
        let advertised = self.advertised(relay);
        let advertised_additional = additional_relay.map(|a| self.advertised(a));
        self.success(q, out, |w, _| {
            w.xor_address(AttributeType::XOR_RELAYED_ADDRESS, advertised)?;
            if let Some(a) = advertised_additional {
                w.xor_address(AttributeType::XOR_RELAYED_ADDRESS, a)?;
            }
            if let Some(code) = additional_error {
                w.address_error_code(AddressFamily::V6, code)?;
            }
            w.lifetime(lifetime.as_secs() as u32)?;
            if let Some(t) = new_token {
                w.reservation_token(&t)?;
            }
            w.xor_address(AttributeType::XOR_MAPPED_ADDRESS, ft.client)
        })
    }

    /// Binds a relay port on one of the relay addresses of a family (the one
    /// with the most free ports first, so several `relay-ip`s share the load).
    ///
    /// # Errors
    /// 440 when the family has no relay address, 508 when no port is left.
    pub(super) fn bind_relay_family(
        &mut self,
        v6: bool,
        even_port: Option<bool>,
        tcp: bool,
        io: &mut impl RelayIo,
    ) -> Result<(SocketAddr, Option<SocketAddr>), ErrorCode> {
        let mut candidates: Vec<(usize, IpAddr)> = self
            .config
            .relay_ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| (self.free_ports(*ip), *ip))
            .collect();
        if candidates.is_empty() {
            return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, ip) in candidates {
            if let Some(placed) = self.bind_relay(ip, even_port, tcp, io) {
                return Ok(placed);
            }
        }
        Err(ErrorCode::INSUFFICIENT_CAPACITY)
    }

    /// Picks a free port on `ip` and binds it; a few tries when a port is
    /// already used by another program (`AddrInUse`), none after any other
    /// error (EMFILE: the caller answers 508). Returns the address and, for the
    /// EVEN-PORT R bit, the reserved next address.
    pub(super) fn bind_relay(
        &mut self,
        ip: IpAddr,
        even_port: Option<bool>,
        tcp: bool,
        io: &mut impl RelayIo,
    ) -> Option<(SocketAddr, Option<SocketAddr>)> {
        // Ports another program holds are skipped, then returned to the pool
        // once this allocation is placed (they may be free again later).
        let mut busy: Vec<SocketAddr> = Vec::new();
        let mut placed = None;
        for _ in 0..16 {
            let port = self.ports.take(ip, even_port, &mut self.rng);
            let Some(port) = port else { break };
            let addr = SocketAddr::new(ip, port);
            let reserved = (even_port == Some(true)).then(|| SocketAddr::new(ip, port + 1));
            let opened = if tcp {
                io.open_tcp(addr)
            } else {
                io.open(addr)
            };
            match opened {
                Ok(()) => {
                    placed = Some((addr, reserved));
                    break;
                }
                Err(e) => {
                    busy.push(addr);
                    if let Some(next) = reserved {
                        self.ports.release(next);
                    }
                    // Out of descriptors or memory: another port won't help.
                    if e.kind() != std::io::ErrorKind::AddrInUse {
                        info!(relay = %addr, error = %e, "cannot open a relay socket");
                        break;
                    }
                    debug!(relay = %addr, error = %e, "relay port busy, trying another");
                }
            }
        }
        for addr in busy {
            self.ports.release(addr);
        }
        placed
    }

    /// The address clients are told for relay address `relay`: its
    /// `external-ip` when the host is behind 1:1 NAT, else itself.
    pub fn advertised(&self, relay: SocketAddr) -> SocketAddr {
        let ip = relay.ip();
        let public =
            self.config
                .external_ips
                .iter()
                .find(|(private, _)| *private == Some(ip))
                .or_else(|| {
                    self.config.external_ips.iter().find(|(private, public)| {
                        private.is_none() && public.is_ipv4() == ip.is_ipv4()
                    })
                })
                .map(|(_, public)| *public);
        SocketAddr::new(public.unwrap_or(ip), relay.port())
    }

    pub(super) fn allocation_bucket(&self, now: Instant) -> Option<TokenBucket> {
        let bps = self.config.max_bps;
        (bps > 0).then(|| TokenBucket::new(bps as f64, bandwidth_burst(bps), now))
    }

    pub(super) fn delete_allocation(
        &mut self,
        ft: FiveTuple,
        io: &mut impl RelayIo,
        why: AllocationEnd,
    ) {
        let Some(mut a) = self.allocations.remove(&ft) else {
            return;
        };
        let kernel = io.end_fast_path(a.id);
        if !kernel.is_zero() {
            self.count_kernel_relayed(kernel);
            super::fast_path::count_on_allocation(&mut a, kernel);
        }
        if self.config.user_byte_totals {
            self.ended_user_bytes
                .add(&a.username, a.bytes_to_peer, a.bytes_to_client);
        }
        let ids: Vec<u32> = self
            .tcp_connections
            .iter()
            .filter(|(_, c)| c.allocation_id == a.id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.tcp_connections.remove(&id);
            io.close_tcp(id);
        }
        for relay in std::iter::once(a.relay).chain(a.additional_relay) {
            self.by_relay.remove(&relay);
            self.ports.release(relay);
            io.close(relay);
        }
        self.quota.release(&a.username);
        info!(
            user = %LogSafe(&a.username), client = %ft.client, relay = %a.relay, reason = why.as_str(),
            packets_to_peer = a.packets_to_peer, packets_to_client = a.packets_to_client,
            "allocation deleted"
        );
    }

    /// Refresh. See RFC 8656, section 7.3. The 5-tuple has an allocation
    /// (`handle_request` answered 437 otherwise).
    pub(super) fn refresh(
        &mut self,
        q: &Request<'_, '_>,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> ClientOutput {
        let Request { now, ft, auth, .. } = *q;
        let request = match RefreshRequest::parse(&q.tx.msg) {
            Ok(request) => request,
            Err(code) => return self.error(q, out, code),
        };
        let granted = if request.deletes() {
            self.delete_allocation(ft, io, AllocationEnd::Refreshed);
            self.stats.allocations_deleted += 1;
            0
        } else {
            let lifetime = self.lifetime(request.lifetime);
            let expires = now + lifetime;
            let Some(a) = self.allocations.get_mut(&ft) else {
                return ClientOutput::None;
            };
            a.expires = expires;
            let id = a.id;
            info!(user = %LogSafe(&auth.username), client = %ft.client, relay = %a.relay, lifetime_s = lifetime.as_secs(), "allocation refreshed");
            // Only a shorter lifetime needs an earlier timer (see `timer_at`).
            if expires < a.timer_at {
                a.timer_at = expires;
                self.push_timer(expires, TimerKind::Allocation { ft, id });
            }
            lifetime.as_secs() as u32
        };
        self.success(q, out, |w, _| w.lifetime(granted))
    }
}
