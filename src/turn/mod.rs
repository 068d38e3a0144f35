//! TURN (RFC 8656): the allocation manager, its state and the peer policy.
//!
//! Everything here is sans-IO: time comes in as an argument, randomness from
//! a seeded RNG, and socket work goes out as [`Transmit`] values or through
//! the [`RelayIo`] trait.

mod allocation;
mod limits;
mod policy;
mod ports;
mod quota;
mod server;

pub use allocation::*;
pub use limits::*;
pub use policy::*;
pub use ports::*;
pub use quota::*;
pub use server::*;

#[cfg(test)]
mod scenario_tests;
