//! STUN codec (RFC 8489, wire compatible with RFC 5389) with the TURN
//! attributes of RFC 8656, and ChannelData framing.
//!
//! Parsing is zero-copy and checked once ([`Message::parse`]); encoding writes
//! into a caller's buffer ([`MessageWriter`]). Nothing here allocates.

mod attributes;
mod channel_data;
mod message;
mod types;

pub use attributes::{AddressFamily, ChannelNumber};
pub use channel_data::*;
pub use message::*;
pub use types::*;
