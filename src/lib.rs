//! turnd: a STUN/TURN relay server.
//!
//! The crate is a sans-IO protocol core and a thin tokio shell around it:
//!
//! - [`stun`]: the STUN codec (RFC 8489 / RFC 5389) with TURN's attributes
//!   (RFC 8656) and ChannelData: a checked zero-copy [`stun::Message`] view and
//!   a [`stun::MessageWriter`] that encodes into a caller's buffer.
//! - [`auth`]: long-term credentials (key MD5(username:realm:password),
//!   computed once per user) and stateless nonces.
//! - [`turn`]: the [`turn::Server`] state machine: Binding answers, the
//!   allocation manager with its [`turn::Allocation`]s (their permissions and
//!   [`turn::ChannelBinding`]s) keyed by [`turn::FiveTuple`], requests decoded
//!   into typed values ([`turn::request`]) before a handler decides, the
//!   relay port pool, one ordered deadline heap for every expiry, and the
//!   secure-by-default [`turn::PeerPolicy`].
//! - [`config`]: the TOML file and command line.
//! - [`server`]: the IO shell: UDP listener, relay sockets, timers, signals.
//!
//! The core takes the time as an argument and never reads a clock; it never
//! touches a socket: each entry point returns its own output type, a routing
//! decision into the buffer its caller passed ([`turn::ClientOutput`] for
//! client bytes: send this answer, or these bytes from that relay port to
//! that peer; [`turn::PeerOutput`] for peer datagrams: send this ChannelData
//! message framed in place, or this Data indication), and it asks the shell
//! to open and close relay sockets through [`turn::RelayIo`]. The core does
//! not resolve names, read files, or keep time itself.
//!
//! `unsafe` is denied everywhere but in [`sys`]: `recvmmsg`/`sendmmsg`
//! batches and the open-file limit, documented there; and aya's `Pod`
//! marker on the XDP map layouts (`server/xdp.rs`, feature `xdp`).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod coturn_conf;
pub mod fleet;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod probe;
pub mod server;
pub mod stun;
pub mod sys;
pub mod turn;
pub mod untrusted;
pub mod userdb;
