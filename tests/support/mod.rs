//! Shared helpers of the integration tests, one module per concern:
//!
//! - [`process`]: the one way to start `turnd` (the [`Turnd`] builder:
//!   arguments, environment, which listeners to wait for) and the running
//!   [`TestServer`]; other commands run with a timeout; bounded polling;
//!   free ports and temporary directories.
//! - [`client`]: a synchronous STUN/TURN client over UDP ([`Client`]) built
//!   on the crate's own codec, and UDP peers.
//! - [`stream`]: the same client over TCP or TLS ([`StreamClient`]).
//! - [`http`]: a plain HTTP/1.1 client and a Prometheus text parser.
//! - [`cert`]: self-signed test certificates and a pinning TLS client config.
//! - [`netns`]: interfaces and addresses in the test's own network
//!   namespace (`ip`), only when it is private, and named namespaces joined
//!   to it by a bridge ([`netns::Bridged`], for a fleet of nodes).
//! - [`ports`]: the relay port ranges of every test file, from one table.
//! - [`redis`]: a real `redis-server` for the fleet tests.
//! - [`uclient`]: coturn's `turnutils_uclient`, run and its summary read.
//! - [`xdp`]: the XDP tests' three namespaces.
//!
//! Every loop here is bounded and every wait has a timeout: a test that hangs
//! is a failed test, with the server's log printed.

#![allow(dead_code)] // each test file uses a part of it
#![allow(unused_imports)] // likewise for the re-exports below
#![allow(clippy::disallowed_methods)] // real-time helpers: they read the clock

use std::time::Duration;

pub mod cert;
pub mod client;
pub mod http;
pub mod netns;
pub mod ports;
pub mod process;
pub mod redis;
pub mod stream;
pub mod uclient;
pub mod xdp;

pub use cert::*;
pub use client::*;
pub use http::*;
pub use ports::*;
pub use process::*;
pub use redis::*;
pub use stream::*;
pub use uclient::*;

/// The test realm every server is started with.
pub const REALM: &str = "test.example";
/// The default user every server is started with.
pub const USER: &str = "alice";
/// Its password.
pub const PASSWORD: &str = "secret";

/// How long a [`TestServer`] may take to print its listening address.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for one response (retransmissions included).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the tests wait to be sure that nothing arrives.
pub const SILENCE: Duration = Duration::from_millis(400);
