//! Issue 10: turnd is not a reflector. Every answer to a request that did
//! not authenticate (Binding, 400, 401, 420, 438, malformed requests) comes
//! out of one per-source budget (`unauth-rate` 50/s, `unauth-burst` 100), so
//! a flood of any mix of malformed and well-formed requests from one source,
//! or from many addresses of one IPv6 /64, draws at most the burst plus the
//! rate in answers, and fewer bytes than it sent.
//!
//! The figures are printed (`cargo test --test reflection -- --nocapture`).
//! The IPv6 floods add addresses of 2001:db8:fN::/64 to loopback, so they
//! need root in a private network namespace (the suite runs in
//! `unshare --net`).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use support::*;

/// The defaults of `unauth-rate` (answers per second) and `unauth-burst`.
const RATE: f64 = 50.0;
const BURST: f64 = 100.0;
/// Requests per flood.
const FLOOD: usize = 1000;

/// A well-formed unauthenticated Allocate (28 bytes: header and
/// REQUESTED-TRANSPORT), answered 401 with REALM, NONCE and
/// PASSWORD-ALGORITHMS.
fn well_formed(i: usize) -> Vec<u8> {
    let mut tid = [7u8; 12];
    tid[..8].copy_from_slice(&(i as u64).to_be_bytes());
    unauthenticated_allocate(tid)
}

/// A twenty-byte Allocate header declaring 4 bytes of attributes: truncated,
/// answered 400.
fn malformed(i: usize) -> Vec<u8> {
    let mut b = well_formed(i);
    b.truncate(20);
    b[2..4].copy_from_slice(&4u16.to_be_bytes());
    b
}

#[derive(Debug)]
struct Figures {
    requests: usize,
    bytes_in: usize,
    answers: usize,
    bytes_out: usize,
    /// Seconds from the first request sent to the last.
    sending: f64,
}

/// Sends [`FLOOD`] requests (`request(i)`) round-robin from `sources` to
/// `server` as fast as it can, then counts what comes back until 500 ms
/// pass in silence.
fn flood(server: SocketAddr, sources: &[UdpSocket], request: impl Fn(usize) -> Vec<u8>) -> Figures {
    let mut f = Figures {
        requests: FLOOD,
        bytes_in: 0,
        answers: 0,
        bytes_out: 0,
        sending: 0.0,
    };
    let start = Instant::now();
    for i in 0..FLOOD {
        let b = request(i);
        f.bytes_in += b.len();
        sources[i % sources.len()].send_to(&b, server).unwrap();
    }
    f.sending = start.elapsed().as_secs_f64();
    let mut buf = [0u8; 2048];
    for s in sources {
        s.set_nonblocking(true).unwrap();
    }
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) {
        let mut got = false;
        for s in sources {
            while let Ok(n) = s.recv(&mut buf) {
                f.answers += 1;
                f.bytes_out += n;
                got = true;
            }
        }
        if got {
            quiet_since = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    f
}

/// At most the burst plus the rate over the flood (and one more for the
/// clock's grain), and fewer bytes out than in.
#[track_caller]
fn check(what: &str, f: &Figures) {
    println!(
        "{what}: {} requests, {} bytes in; {} answers, {} bytes out ({:.2}x); sent in {:.3} s",
        f.requests,
        f.bytes_in,
        f.answers,
        f.bytes_out,
        f.bytes_out as f64 / f.bytes_in as f64,
        f.sending
    );
    let most = (BURST + RATE * (f.sending + 0.1)).ceil() as usize + 1;
    assert!(
        f.answers <= most,
        "{what}: {} answers, at most {most} allowed",
        f.answers
    );
    assert!(f.answers >= BURST as usize, "{what}: the burst is answered");
    assert!(f.bytes_out < f.bytes_in, "{what}: {f:?}");
}

fn connected(ip: &str, server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    s.connect(server).unwrap();
    s
}

type Kind = (&'static str, fn(usize) -> Vec<u8>);

const KINDS: [Kind; 3] = [
    ("well-formed", well_formed),
    ("malformed", malformed),
    ("mixed", |i| {
        if i % 2 == 0 {
            malformed(i)
        } else {
            well_formed(i)
        }
    }),
];

#[test]
fn floods_from_one_source_draw_the_burst_and_fewer_bytes() {
    let (min, max) = relay_ports(Suite::Reflection, 0);
    let server = TestServer::start(min, max, &[]);
    // Each kind from a fresh source, so each starts with a full budget.
    for (n, (what, request)) in KINDS.iter().enumerate() {
        let source = connected(&format!("127.0.0.{}", n + 2), server.addr);
        let f = flood(server.addr, &[source], *request);
        check(&format!("one IPv4 source, {what}"), &f);
    }
}

/// Sixteen addresses in each of three /64s (2001:db8:f1::/64 ...), on
/// loopback, while the test runs.
static ADDRESSES: netns::SharedSetup = netns::SharedSetup::new(
    || {
        netns::assert_private_namespace("ownaddr");
        for_each_address(|a| netns::ip(&format!("-6 addr add {a}/128 dev lo nodad")));
    },
    || for_each_address(|a| netns::ip_quiet(&format!("-6 addr del {a}/128 dev lo"))),
);

/// Address `host` (1..=16) of /64 number `net` (1..=3).
fn address(net: usize, host: usize) -> String {
    format!("2001:db8:f{net}::{host:x}")
}

fn for_each_address(f: impl Fn(String)) {
    for net in 1..=3 {
        for host in 1..=16 {
            f(address(net, host));
        }
    }
}

#[test]
fn floods_from_one_ipv6_64_draw_the_burst_and_fewer_bytes() {
    let _net = ADDRESSES.enter();
    let (min, max) = relay_ports(Suite::Reflection, 1);
    let server = Turnd::standard(min, max)
        .set("--listening-ip", "::1")
        .set("--relay-ip", "::1")
        .start();
    for (n, (what, request)) in KINDS.iter().enumerate() {
        let sources: Vec<UdpSocket> = (1..=16)
            .map(|host| connected(&address(n + 1, host), server.addr))
            .collect();
        let f = flood(server.addr, &sources, *request);
        check(&format!("16 addresses of one IPv6 /64, {what}"), &f);
    }
}
