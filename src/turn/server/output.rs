//! What the entry points ask the IO shell to do: one output type per entry
//! point, so an output can only point into the buffer its caller passed.

use std::net::SocketAddr;
use std::ops::Range;

use crate::turn::allocation::FiveTuple;

/// What the shell does after [`Server::handle_client_input`](super::Server::handle_client_input).
///
/// Ranges point into the `input` the client's bytes came in; lengths count
/// from the start of the `out` buffer passed with them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum ClientOutput {
    /// Nothing to send (the input was dropped or consumed).
    None,
    /// Send `out[..len]` (a STUN response) to the client of `to`, from
    /// `to.server` (RFC 8489 section 6.3).
    Reply {
        /// The client's 5-tuple.
        to: FiveTuple,
        /// Length of the answer at the start of `out`.
        len: usize,
    },
    /// Send `input[range]` (application data of a ChannelData message or a
    /// Send indication) from relay socket `relay` to `peer` (RFC 8656
    /// sections 10.2 and 12.6).
    ToPeer {
        /// The allocation's relayed transport address of the peer's family.
        relay: SocketAddr,
        /// Destination peer.
        peer: SocketAddr,
        /// The application data within `input`.
        range: Range<usize>,
    },
    /// Send `out[..len]` (the ConnectionBind success response) on the
    /// client connection `to`, then pipe raw bytes between that connection
    /// and TCP relay connection `connection_id` (RFC 6062 section 5.4).
    /// Only over TCP and TLS.
    ConnectionBound {
        /// The client's data connection.
        to: FiveTuple,
        /// Length of the success response at the start of `out`.
        len: usize,
        /// The TCP relay connection (CONNECTION-ID) now bound to `to`.
        connection_id: u32,
    },
}

/// What the shell does after [`Server::handle_peer_input`](super::Server::handle_peer_input).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum PeerOutput {
    /// Nothing to send (no permission, unknown relay, over the bandwidth).
    None,
    /// Send `buf[range]` to the client of `to`: a ChannelData message whose
    /// 4-byte header was written into the headroom before the datagram, padded
    /// to 4 bytes over TCP and TLS (RFC 8656 sections 12.5 and 12.6).
    ChannelData {
        /// The client's 5-tuple.
        to: FiveTuple,
        /// The ChannelData message within `buf`.
        range: Range<usize>,
    },
    /// Send `out[..len]`, a Data indication carrying the datagram (no
    /// channel is bound to the peer), to the client of `to` (RFC 8656
    /// section 10.3).
    DataIndication {
        /// The client's 5-tuple.
        to: FiveTuple,
        /// Length of the indication at the start of `out`.
        len: usize,
    },
}

/// A message written at the start of `out` for the client of `to`: the
/// answer of [`Server::handle_tcp_connect_result`](super::Server::handle_tcp_connect_result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The client's 5-tuple (its control connection).
    pub to: FiveTuple,
    /// Length of the message at the start of `out`.
    pub len: usize,
}

/// A peer's TCP connection to a TCP relay was accepted (RFC 6062 section
/// 5.3): the shell keeps it as connection `connection_id` and sends
/// `out[..len]`, the ConnectionAttempt indication, to the client of `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionAttempt {
    /// The id the client's ConnectionBind will name (CONNECTION-ID).
    pub connection_id: u32,
    /// The allocation's control connection.
    pub to: FiveTuple,
    /// Length of the ConnectionAttempt indication at the start of `out`.
    pub len: usize,
}
