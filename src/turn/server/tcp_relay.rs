//! TCP relays (RFC 6062): Connect, ConnectionAttempt and ConnectionBind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use tracing::{debug, info};

use super::*;
use crate::stun::{
    AttributeType, Class, ErrorCode, MessageType, MessageWriter, Method, TransactionId,
};
use crate::turn::allocation::{FiveTuple, Transport};
use crate::turn::policy::OwnAddressPath;
use crate::turn::request::{ConnectRequest, ConnectionBindRequest};
use crate::untrusted::LogSafe;

/// RFC 6062: a TCP connection between a TCP relay and a peer.
#[derive(Clone, Debug)]
pub(super) struct TcpConnection {
    pub(super) control: FiveTuple,
    pub(super) allocation_id: u64,
    pub(super) peer: SocketAddr,
    pub(super) state: TcpConnectionState,
    pub(super) expires: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TcpConnectionState {
    /// The server is connecting to the peer for a Connect request.
    Connecting {
        tid: TransactionId,
        fingerprint: bool,
        sha256: bool,
    },
    /// Connected, waiting for the client's ConnectionBind (30 s).
    Ready,
    /// Piped to the client data connection `data`.
    Bound { data: FiveTuple },
}

/// RFC 6062 section 5.2/5.3: a connection waits 30 s for its ConnectionBind.
pub const TCP_CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most TCP relay connections one allocation may have pending or open.
pub const MAX_TCP_CONNECTIONS: usize = 64;

impl Server {
    /// Connect (RFC 6062 section 5.2): the server connects from the TCP relay
    /// to the peer; the answer comes when the shell reports the outcome. The
    /// 5-tuple has an allocation (`handle_request` answered 437 otherwise).
    pub(super) fn connect(
        &mut self,
        q: &Request<'_, '_>,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> ClientOutput {
        let Request { now, ft, auth, .. } = *q;
        let Some((tcp_relay, alloc_id, relay)) = self
            .allocations
            .get(&ft)
            .map(|a| (a.tcp_relay, a.id, a.relay))
        else {
            // Unreachable: `handle_request` answered 437.
            return ClientOutput::None;
        };
        if !tcp_relay {
            return self.error(q, out, ErrorCode::BAD_REQUEST);
        }
        let ConnectRequest { peer } = match ConnectRequest::parse(&q.tx.msg) {
            Ok(request) => request,
            Err(code) => return self.error(q, out, code),
        };
        if peer.is_ipv4() != relay.is_ipv4() {
            return self.error(q, out, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        if !self.config.policy.is_allowed(peer.ip()) {
            info!(user = %LogSafe(&auth.username), client = %ft.client, peer = %peer.ip(), "peer address not allowed: 403");
            return self.error(q, out, ErrorCode::FORBIDDEN);
        }
        if let Err(code) = self.admit_own_address(q, peer, OwnAddressPath::Connect) {
            return self.error(q, out, code);
        }
        let mine = self
            .tcp_connections
            .values()
            .filter(|c| c.allocation_id == alloc_id);
        let mut count = 0;
        for c in mine {
            if c.peer == peer {
                return self.error(q, out, ErrorCode::CONNECTION_ALREADY_EXISTS);
            }
            count += 1;
        }
        if count >= MAX_TCP_CONNECTIONS {
            return self.error(q, out, ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let state = TcpConnectionState::Connecting {
            tid: q.tx.msg.transaction_id(),
            fingerprint: q.tx.fingerprint,
            sha256: q.tx.sha256,
        };
        let id = self.new_tcp_connection(now, ft, alloc_id, peer, state);
        let mut perm_timer_needed = true;
        if let Some(a) = self.allocations.get_mut(&ft) {
            let perm = now + self.config.permission_lifetime;
            if a.permissions.insert(peer.ip(), perm).is_some() {
                perm_timer_needed = false;
            }
        }
        if perm_timer_needed {
            let perm = now + self.config.permission_lifetime;
            self.arm_allocation_timer(ft, perm);
        }
        debug!(client = %ft.client, %peer, connection_id = id, "connecting to peer over tcp");
        io.connect_tcp(relay, peer, id);
        ClientOutput::None
    }

    /// Records a TCP relay connection of allocation `allocation_id` (whose
    /// control connection is `control`) to `peer` under a fresh random id,
    /// due to be bound within [`TCP_CONNECTION_BIND_TIMEOUT`]; returns the id.
    fn new_tcp_connection(
        &mut self,
        now: Instant,
        control: FiveTuple,
        allocation_id: u64,
        peer: SocketAddr,
        state: TcpConnectionState,
    ) -> u32 {
        let id = loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.tcp_connections.contains_key(&id) {
                break id;
            }
        };
        self.tcp_connections.insert(
            id,
            TcpConnection {
                control,
                allocation_id,
                peer,
                state,
                expires: now + TCP_CONNECTION_BIND_TIMEOUT,
            },
        );
        id
    }

    /// The shell's TCP connection to a peer for a Connect finished (`ok`) or
    /// failed. Returns the Connect response (success with CONNECTION-ID, or
    /// 447) for the control connection.
    pub fn handle_tcp_connect_result(
        &mut self,
        now: Instant,
        id: u32,
        ok: bool,
        out: &mut [u8],
        io: &mut impl RelayIo,
    ) -> Option<Reply> {
        let Some(c) = self.tcp_connections.get_mut(&id) else {
            io.close_tcp(id);
            return None;
        };
        let TcpConnectionState::Connecting {
            tid,
            fingerprint,
            sha256,
        } = c.state
        else {
            return None;
        };
        let ft = c.control;
        let Some(key) = self
            .allocations
            .get(&ft)
            .filter(|a| a.id == c.allocation_id)
            .map(|a| a.key)
        else {
            self.tcp_connections.remove(&id);
            io.close_tcp(id);
            return None;
        };
        let expires = now + TCP_CONNECTION_BIND_TIMEOUT;
        if ok {
            c.state = TcpConnectionState::Ready;
            c.expires = expires;
            self.push_timer(expires, TimerKind::TcpConnection { id });
        } else {
            self.tcp_connections.remove(&id);
            io.close_tcp(id);
        }
        let phrases = self.config.reason_phrases;
        let class = if ok { Class::Success } else { Class::Error };
        let written = (|| {
            let mut w =
                MessageWriter::new(out, MessageType::new(Method::CONNECT, class), tid).ok()?;
            if ok {
                w.connection_id(id).ok()?;
            } else {
                w.error_code_with_reason(ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE, phrases)
                    .ok()?;
            }
            if sha256 {
                w.message_integrity_sha256(key.as_bytes()).ok()?;
            } else {
                w.message_integrity(key.as_bytes()).ok()?;
            }
            if fingerprint {
                w.fingerprint().ok()?;
            }
            Some(w.finish())
        })();
        written.map(|len| Reply { to: ft, len })
    }

    /// A peer connected to the TCP relay `relay` (RFC 6062 section 5.3).
    /// Returns the connection id and the ConnectionAttempt indication written
    /// into `out` for the client, or `None` when the peer has no permission
    /// (the shell closes the connection).
    pub fn handle_peer_connection(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        out: &mut [u8],
    ) -> Option<ConnectionAttempt> {
        let ft = *self.by_relay.get(&relay)?;
        let a = self.allocations.get(&ft)?;
        if !a.tcp_relay || !a.has_permission(peer.ip(), now) {
            debug!(%relay, %peer, "tcp connection from a peer without permission: closed");
            return None;
        }
        if !self.own.permits(peer) {
            self.stats.own_address_refused.peer_connection += 1;
            debug!(%relay, %peer, "tcp connection from an address of this host: closed");
            return None;
        }
        let alloc_id = a.id;
        if self
            .tcp_connections
            .values()
            .filter(|c| c.allocation_id == alloc_id)
            .count()
            >= MAX_TCP_CONNECTIONS
        {
            return None;
        }
        let id = self.new_tcp_connection(now, ft, alloc_id, peer, TcpConnectionState::Ready);
        self.push_timer(
            now + TCP_CONNECTION_BIND_TIMEOUT,
            TimerKind::TcpConnection { id },
        );
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let len = (|| {
            let mut w = MessageWriter::new(
                out,
                MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication),
                tid,
            )
            .ok()?;
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer).ok()?;
            w.connection_id(id).ok()?;
            Some(w.finish())
        })()?;
        debug!(client = %ft.client, %peer, connection_id = id, "tcp connection attempt from peer");
        Some(ConnectionAttempt {
            connection_id: id,
            to: ft,
            len,
        })
    }

    /// ConnectionBind (RFC 6062 section 5.4) on a new client connection: on
    /// success the shell pipes that connection to the peer's
    /// ([`ClientOutput::ConnectionBound`]).
    pub(super) fn connection_bind(&mut self, q: &Request<'_, '_>, out: &mut [u8]) -> ClientOutput {
        let Request { now, ft, auth, .. } = *q;
        let bound_here = TcpConnectionState::Bound { data: ft };
        if ft.transport == Transport::Udp
            || self.allocations.contains_key(&ft)
            || self.tcp_connections.values().any(|c| c.state == bound_here)
        {
            return self.error(q, out, ErrorCode::BAD_REQUEST);
        }
        let ConnectionBindRequest { connection_id: id } =
            match ConnectionBindRequest::parse(&q.tx.msg) {
                Ok(request) => request,
                Err(code) => return self.error(q, out, code),
            };
        let Some(c) = self
            .tcp_connections
            .get(&id)
            .filter(|c| c.state == TcpConnectionState::Ready && c.expires > now)
        else {
            return self.error(q, out, ErrorCode::BAD_REQUEST);
        };
        let owner = self
            .allocations
            .get(&c.control)
            .filter(|a| a.id == c.allocation_id)
            .map(|a| a.username.clone());
        match owner {
            Some(u) if u == auth.username => {}
            Some(_) => return self.error(q, out, ErrorCode::WRONG_CREDENTIALS),
            None => return self.error(q, out, ErrorCode::BAD_REQUEST),
        }
        match self.success(q, out, |_, _| Ok(())) {
            ClientOutput::Reply { to, len } => {
                if let Some(c) = self.tcp_connections.get_mut(&id) {
                    c.state = bound_here;
                }
                debug!(client = %ft.client, connection_id = id, "tcp relay connection bound");
                ClientOutput::ConnectionBound {
                    to,
                    len,
                    connection_id: id,
                }
            }
            other => other,
        }
    }

    /// Accounts `bytes` that an RFC 6062 pipe (a bound TCP relay
    /// connection `id`, section 5.4) is about to forward: towards the peer
    /// when `to_peer`, else towards the client. Call it once per chunk read,
    /// before writing the chunk on.
    ///
    /// Returns true when the chunk may go now: it is then counted in
    /// [`Stats`] (one packet per chunk) and in the allocation's byte
    /// counters, which feed the per-user totals. Returns false when
    /// `max-bps` or `bps-capacity` has not `bytes` left: nothing is taken or
    /// counted, and the shell holds the chunk (reading no more from that
    /// side) and asks again a little later; TCP is throttled, never dropped.
    /// A chunk larger than a bucket's burst (at least 64 KiB) is never
    /// allowed, so the shell reads less than that at a time.
    /// An unknown `id` or a gone allocation is allowed and not counted
    /// (the shell is about to cut that pipe).
    pub fn account_tcp_pipe(&mut self, now: Instant, id: u32, to_peer: bool, bytes: usize) -> bool {
        let Some(c) = self.tcp_connections.get(&id) else {
            return true;
        };
        let Some(alloc) = self
            .allocations
            .relaying_mut(&c.control)
            .filter(|a| a.id == c.allocation_id)
        else {
            return true;
        };
        let n = bytes as u64;
        let bucket = if to_peer {
            &mut alloc.bandwidth_to_peer
        } else {
            &mut alloc.bandwidth_to_client
        };
        let fits = bucket.as_mut().is_none_or(|b| b.has(n, now))
            && self.capacity.as_mut().is_none_or(|b| b.has(n, now));
        if !fits {
            return false;
        }
        if let Some(b) = bucket {
            b.take(n, now);
        }
        if let Some(b) = &mut self.capacity {
            b.take(n, now);
        }
        if to_peer {
            alloc.packets_to_peer += 1;
            alloc.bytes_to_peer += n;
            self.stats.packets_to_peer += 1;
            self.stats.bytes_to_peer += n;
        } else {
            alloc.packets_to_client += 1;
            alloc.bytes_to_client += n;
            self.stats.packets_to_client += 1;
            self.stats.bytes_to_client += n;
        }
        true
    }
}
