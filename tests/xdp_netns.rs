//! Issue 15's proof of the XDP fast path over real sockets: three network
//! namespaces the test makes itself (`support::xdp::XdpNet`: client --veth--
//! relay --veth-- peer, documentation addresses only), turnd alone in the
//! relay namespace with `xdp = "generic"` or `"native"` on its two veths,
//! listening and relay addresses set to those veths' addresses and
//! forwarding on; TX checksum offload off on the client's and the peer's
//! veth (and GRO on there for native mode), as the README's XDP section
//! asks of local senders. Each test runs in both XDP modes, most over IPv4
//! and IPv6:
//!
//! - `detached_after_*`: nothing is left on the interfaces once turnd ends,
//!   by SIGTERM or SIGKILL (BPF links);
//! - `relay_*`: the crate's own client allocates and binds a channel, 2,000
//!   ChannelData of 1 to 1,400 bytes (odd and even lengths, patterned) reach
//!   the peer byte for byte, 2,000 datagrams of the peer reach the client as
//!   ChannelData on the right channel, nothing is duplicated; then
//!   `/metrics`: all relayed traffic (`turnd_relayed_*_total`) equals what
//!   the peer and the client received, the kernel's part
//!   (`turnd_xdp_relayed_packets_total`) is most of it in both directions,
//!   and the admin API's allocation counts the kernel's bytes too;
//!   `relay_many_*` does the same with 8 allocations at once (channels
//!   0x4000 to 0x7FFF, spread over the workers), and `hairpin_*` with both
//!   clients on this server (each channel bound to the other's relayed
//!   address: the kernel's hairpin);
//! - `uclient_*`: coturn's `turnutils_uclient` (channels) against
//!   `turnutils_peer` loses nothing, the totals equal what it sent and got
//!   back, and the kernel relays both ways (uclient picks its channels at
//!   random up to 0x7FFF, RFC 5766's range, which the fast path takes as
//!   turnd does);
//! - `channel_expiry_*`: with `channel-lifetime = 3` the peer receives
//!   nothing sent later than a second after the channel's expiry (the
//!   kernel entry's deadline is exact, the spec says), the kernel passes
//!   what comes later (`expired` or `no_entry`), and the peer's datagrams
//!   then reach the client as Data indications (user space), never as
//!   ChannelData;
//! - `admin_delete_*`: `DELETE /api/allocations/{id}` stops the kernel
//!   relaying within a second;
//! - `max_bps_*`: an allocation sent at four times its `max-bps` for three
//!   seconds (after a second that empties its bucket) delivers about the
//!   limit, as in user space (`max_bps_user_space` is that reference, run
//!   the same way with `xdp` off);
//! - `refused_*`: `xdp` with a wildcard listening or relay address fails at
//!   start naming `xdp`, and with forwarding off naming `forwarding`.
//!
//! The figures (kernel share, expiry overrun, rates) are printed.
//!
//! Needs root, iproute2, ethtool and coturn's turnutils, inside a private
//! network namespace (the suite runs in `unshare --net`; the named
//! namespaces carry this process's ID); fails, never skips, without them.
//! turnd is alone in its namespace, so its ports (3478, relay ports
//! 50000-50199) are its own.

#![cfg(feature = "xdp")]
#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::xdp::{
    attach_pass_program, in_netns, ns_command, tool, Family, NsChild, XdpNet, CLIENT_IF,
    RELAY_CLIENT_IF, RELAY_PEER_IF, V4, V6,
};
use support::*;
use turnd::stun::AttributeType;

/// turnd's listening port, alone in the relay namespace.
const LISTEN_PORT: u16 = 3478;
/// Its relay ports (alone in its namespace: shared with no other test).
const MIN_PORT: u16 = 50_000;
const MAX_PORT: u16 = 50_199;
/// The admin API's token.
const TOKEN: &str = "xdp-netns-admin-token-0123456789";
/// The channel the tests bind.
const CH: u16 = 0x4000;
/// How long the kernel side may take to show a change: the spec's sync
/// tick is 100 ms; this is a bound, not an expectation.
const SYNC: Duration = Duration::from_secs(2);
/// What issue 15 asks of an expiry or a deletion: no kernel relaying
/// after it "within the same second".
const STOP_BOUND: Duration = Duration::from_secs(1);
/// ChannelData per direction in the `relay_*` tests.
const RELAY_COUNT: usize = 2000;
/// Sent before the sender waits for them all (bounded in flight).
const WINDOW: usize = 16;
/// The smallest share of the `relay_*` traffic the kernel must carry once
/// its entry exists ("most packets after the first ones").
const KERNEL_SHARE: f64 = 0.9;
/// Longest one uclient run may take (about 5 s here).
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// uclient's sessions (`-m`, `-n` datagrams each): each sends on one
/// channel it picks at random in 0x4000 to 0x7FFF (RFC 5766's range), all
/// of which the fast path takes.
const UCLIENT_SESSIONS: &str = "10";
/// turnutils_peer's port in the peer namespace.
const UCLIENT_PEER_PORT: u16 = 3480;

/// The `xdp` setting a test runs turnd with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No `xdp` option at all: the user-space reference.
    Off,
    Generic,
    Native,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Generic => "generic",
            Mode::Native => "native",
        }
    }

    fn xdp(self) -> bool {
        self != Mode::Off
    }
}

/// A relay direction, as the metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToPeer,
    ToClient,
}

/// The value of `name{direction=...}` for `d`. The spec names the
/// directions `to_peer`/`to_client`; turnd's existing relay metrics say
/// `client_to_peer`/`peer_to_client`: either is read, one must be there.
#[track_caller]
fn by_dir(m: &Metrics, name: &str, d: Dir) -> f64 {
    let labels: [&str; 2] = match d {
        Dir::ToPeer => ["to_peer", "client_to_peer"],
        Dir::ToClient => ["to_client", "peer_to_client"],
    };
    labels
        .iter()
        .find_map(|l| m.value(name, &[("direction", l)]))
        .unwrap_or_else(|| {
            panic!(
                "no sample {name}{{direction={labels:?}}} in /metrics:\n{}",
                m.text
            )
        })
}

/// `turnd_xdp_passed_packets_total{reason}` (0 when that reason has no sample).
fn passed(m: &Metrics, reason: &str) -> f64 {
    m.value("turnd_xdp_passed_packets_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

/// Every `turnd_xdp_*` sample of a page, for messages.
fn xdp_lines(m: &Metrics) -> String {
    m.samples
        .iter()
        .filter(|s| s.name.starts_with("turnd_xdp_") || s.name.starts_with("turnd_relayed_"))
        .map(|s| s.line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Data `i` of a pattern run: lengths 1 to 1,400 (the first few fixed:
/// the smallest, odd and even, 255/256, near the MTU), bytes from `i`, the
/// offset and `salt` (so both directions differ).
fn pattern(i: usize, salt: u8) -> Vec<u8> {
    const FIXED: [usize; 12] = [1, 2, 3, 4, 5, 7, 8, 255, 256, 1000, 1399, 1400];
    let len = FIXED.get(i).copied().unwrap_or(1 + (i * 997) % 1400);
    (0..len)
        .map(|j| (i.wrapping_mul(131) ^ j.wrapping_mul(7)).wrapping_add(usize::from(salt)) as u8)
        .collect()
}

/// turnd in the relay namespace of its own [`XdpNet`]. Fields drop in
/// order: the server, then the namespaces.
struct Rig {
    server: TestServer,
    mode: Mode,
    fam: Family,
    /// The listening address of the family under test.
    listen: SocketAddr,
    /// `/metrics` and the admin API, on 127.0.0.1 of the relay namespace.
    prom: SocketAddr,
    admin: SocketAddr,
    net: XdpNet,
}

/// An allocation with channel [`CH`] bound to a peer, after one datagram
/// each way (through user space: that resolves the relay's neighbours).
struct Bound {
    client: Client,
    peer: Peer,
    relay: SocketAddr,
    /// The channel bound.
    channel: u16,
    /// When the client had the ChannelBind's success response: the
    /// channel's expiry is at most its lifetime after this.
    bound_at: Instant,
    /// Packets and payload bytes of the warm-up, per direction.
    warm_to_peer: (u64, u64),
    warm_to_client: (u64, u64),
}

const WARM_TO_PEER: &[u8] = b"warm-up to the peer";
const WARM_TO_CLIENT: &[u8] = b"warm-up to the client";

impl Rig {
    /// Panics when turnd's log shows a panic.
    #[track_caller]
    fn assert_no_panic(&self) {
        assert!(
            !self.server.log().contains("panicked"),
            "turnd panicked:\n{}",
            self.server.log()
        );
    }

    /// A fresh network `tag` and turnd in its relay namespace: listening
    /// and relay addresses of both families, `xdp` as `mode` says, metrics
    /// and admin API, then `extra`. With XDP on, checks that it is attached
    /// to both veths in that mode.
    #[track_caller]
    fn start(tag: &str, mode: Mode, fam: Family, extra: &[&str]) -> Rig {
        let net = XdpNet::new(tag, true, mode == Mode::Native);
        let mut t = Turnd::standard(MIN_PORT, MAX_PORT)
            .in_netns(&net.relay)
            .set("--listening-ip", V4.listen)
            .set("--relay-ip", V4.relay)
            .set("--listening-port", LISTEN_PORT.to_string())
            .args(["--listening-ip", V6.listen, "--relay-ip", V6.relay])
            .args(PROMETHEUS)
            .args(["--admin-token", TOKEN, "--admin-listen", "127.0.0.1:0"]);
        if mode.xdp() {
            t = t.args(["--xdp", mode.name()]);
        }
        let mut server = t.args(extra).start();
        let listen = listening(&mut server, &Family::host(fam.listen));
        let prom = server.prometheus();
        let admin = server.admin();
        let rig = Rig {
            server,
            mode,
            fam,
            listen,
            prom,
            admin,
            net,
        };
        if mode.xdp() {
            let m = rig.metrics();
            for dev in [RELAY_CLIENT_IF, RELAY_PEER_IF] {
                assert_eq!(
                    m.value(
                        "turnd_xdp_attached",
                        &[("interface", dev), ("mode", mode.name())]
                    ),
                    Some(1.0),
                    "turnd_xdp_attached{{interface={dev},mode={}}} is not 1:\n{}",
                    mode.name(),
                    xdp_lines(&m)
                );
            }
        }
        rig
    }

    /// `/metrics`, scraped from inside the relay namespace.
    #[track_caller]
    fn metrics(&self) -> Metrics {
        let a = self.prom;
        in_netns(&self.net.relay, move || scrape_metrics(a))
    }

    /// `/metrics` once all relayed traffic (`turnd_relayed_packets_total`,
    /// which takes in the kernel's counts on the next read-back) is
    /// `to_peer` and `to_client` packets: a base for deltas that no late
    /// count of what came before moves. Panics after [`SYNC`].
    #[track_caller]
    fn metrics_at(&self, to_peer: u64, to_client: u64) -> Metrics {
        let want = [to_peer, to_client];
        let total = |m: &Metrics| {
            [Dir::ToPeer, Dir::ToClient].map(|d| by_dir(m, "turnd_relayed_packets_total", d) as u64)
        };
        let mut m = self.metrics();
        wait_until(SYNC, || {
            m = self.metrics();
            total(&m) == want
        });
        assert_eq!(
            total(&m),
            want,
            "turnd_relayed_packets_total (to peer, to client) after the warm-up:\n{}",
            xdp_lines(&m)
        );
        m
    }

    /// The admin API's allocation list.
    #[track_caller]
    fn allocations(&self) -> Vec<serde_json::Value> {
        let a = self.admin;
        let r = in_netns(&self.net.relay, move || {
            http_get_bearer(a, "/api/allocations", TOKEN)
        });
        assert_eq!(r.status, 200, "{r:?}");
        r.json().as_array().expect("a JSON array").clone()
    }

    /// The admin API's entry for the allocation of `client`.
    #[track_caller]
    fn allocation_of(&self, client: SocketAddr) -> serde_json::Value {
        let l = self.allocations();
        l.iter()
            .find(|e| e["client"] == client.to_string())
            .unwrap_or_else(|| panic!("no allocation of {client} in {l:?}"))
            .clone()
    }

    /// `DELETE /api/allocations/{id}`: its status.
    #[track_caller]
    fn delete_allocation(&self, id: u64) -> u16 {
        let a = self.admin;
        in_netns(&self.net.relay, move || {
            let auth = format!("Bearer {TOKEN}");
            http(
                a,
                "DELETE",
                &format!("/api/allocations/{id}"),
                &[("Authorization", &auth)],
            )
            .status
        })
    }

    /// A client in the client namespace on its address of the family.
    fn client(&self) -> Client {
        let (ip, server) = (self.fam.client, self.listen);
        in_netns(&self.net.client, move || {
            Client::new_on(ip, server, USER, PASSWORD)
        })
    }

    /// A UDP peer in the peer namespace on its address of the family.
    fn peer(&self) -> Peer {
        let ip = self.fam.peer;
        in_netns(&self.net.peer, move || Peer::bind(ip))
    }

    /// A UDP allocation of the family under test; its relayed address,
    /// checked to be turnd's relay address.
    #[track_caller]
    fn allocate(&self, c: &mut Client) -> SocketAddr {
        let mut attrs = vec![Attr::transport_udp()];
        if self.fam.v6 {
            attrs.push(Attr::Raw(
                AttributeType::REQUESTED_ADDRESS_FAMILY,
                vec![2, 0, 0, 0],
            ));
        }
        let relay = Client::allocated(c.allocate_with(&attrs)).relay;
        assert_eq!(relay.ip(), Family::addr(self.fam.relay), "relay {relay}");
        assert!(
            (MIN_PORT..=MAX_PORT).contains(&relay.port()),
            "relay {relay}"
        );
        relay
    }

    /// An allocation with channel [`CH`] bound to a fresh peer, one
    /// datagram relayed each way, and (XDP on) the kernel entry written.
    #[track_caller]
    fn bound(&self) -> Bound {
        self.bound_with(CH, 1)
    }

    /// An allocation with `channel` bound to a fresh peer, one datagram
    /// relayed each way, and (XDP on) at least `entries` kernel entries.
    #[track_caller]
    fn bound_with(&self, channel: u16, entries: usize) -> Bound {
        let mut client = self.client();
        let relay = self.allocate(&mut client);
        let peer = self.peer();
        client.channel_bind(channel, peer.addr()).expect_success();
        let bound_at = Instant::now();
        client.channel_data(channel, WARM_TO_PEER);
        let (from, d) = peer
            .recv(RESPONSE_TIMEOUT)
            .unwrap_or_else(|| panic!("the warm-up ChannelData never reached the peer"));
        assert_eq!((from, d.as_slice()), (relay, WARM_TO_PEER));
        peer.send_to(WARM_TO_CLIENT, relay);
        let (ch, d) = client.expect_channel_data(RESPONSE_TIMEOUT);
        assert_eq!((ch, d.as_slice()), (channel, WARM_TO_CLIENT));
        self.wait_entries(|n| n >= entries as f64, &format!("at least {entries}"));
        Bound {
            client,
            peer,
            relay,
            channel,
            bound_at,
            warm_to_peer: (1, WARM_TO_PEER.len() as u64),
            warm_to_client: (1, WARM_TO_CLIENT.len() as u64),
        }
    }

    /// With XDP on, waits (at most [`SYNC`]) until `turnd_xdp_entries`
    /// satisfies `ok`; panics with the page and the relay's neighbours.
    #[track_caller]
    fn wait_entries(&self, ok: impl Fn(f64) -> bool, what: &str) {
        if !self.mode.xdp() {
            return;
        }
        let mut last = None;
        let seen = wait_until(SYNC, || {
            let m = self.metrics();
            let v = m.value("turnd_xdp_entries", &[]);
            last = Some(m);
            v.is_some_and(&ok)
        });
        if !seen {
            let m = last.expect("scraped");
            panic!(
                "turnd_xdp_entries not {what} within {SYNC:?}:\n{}\nneighbours in the relay namespace:\n{}",
                xdp_lines(&m),
                self.net.relay_ip_output("neigh")
            );
        }
    }
}

/// A datagram received, with its source.
type Datagram = (SocketAddr, Vec<u8>);

/// Receives on a clone of a socket on its own thread until
/// [`Collector::finish`] (60 s at most): every datagram with its source.
struct Collector {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Datagram>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Collector {
    fn start(sock: &UdpSocket) -> Collector {
        let sock = sock.try_clone().expect("clone the peer socket");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, got) = (stop.clone(), got.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        got.lock().unwrap().push((from, buf[..n].to_vec()));
                    }
                }
            })
        };
        Collector {
            stop,
            got,
            thread: Some(thread),
        }
    }

    /// Waits for stragglers (200 ms), stops and gives what came.
    fn finish(mut self) -> Vec<Datagram> {
        thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A timed datagram: the send time (µs after `t0`), then zeros up to
/// `size` bytes (at least 8).
fn stamped(t0: Instant, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(8)];
    v[..8].copy_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
    v
}

/// The send time of a [`stamped`] datagram, after `t0`.
#[track_caller]
fn stamp(d: &[u8]) -> Duration {
    let b: [u8; 8] = d
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("not a stamped datagram: {d:02x?}"));
    Duration::from_micros(u64::from_be_bytes(b))
}

/// Sends stamped ChannelData of `size` bytes on [`CH`] every `every` until
/// `until` (on a schedule, so the average rate holds); the send times.
fn stream(c: &Client, t0: Instant, every: Duration, until: Instant, size: usize) -> Vec<Duration> {
    let mut sent = Vec::new();
    let start = Instant::now();
    let mut k: u32 = 0;
    loop {
        let at = start + every * k;
        if at >= until {
            return sent;
        }
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let d = stamped(t0, size);
        sent.push(stamp(&d));
        c.channel_data(CH, &d);
        k += 1;
    }
}

/// Milliseconds, for messages.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------
// 1. Relay both ways; counters equal what was received.

#[track_caller]
fn relay_both_ways(tag: &str, mode: Mode, fam: Family) {
    let rig = Rig::start(tag, mode, fam, &[]);
    let mut b = rig.bound();
    let m0 = rig.metrics_at(1, 1);

    let mut bytes_to_peer = 0u64;
    for start in (0..RELAY_COUNT).step_by(WINDOW) {
        let idx = start..(start + WINDOW).min(RELAY_COUNT);
        let mut sent: Vec<Vec<u8>> = idx.clone().map(|i| pattern(i, 0)).collect();
        for d in &sent {
            b.client.channel_data(CH, d);
        }
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            match b.peer.recv(RESPONSE_TIMEOUT) {
                Some((from, d)) => {
                    assert_eq!(from, b.relay, "client -> peer: datagram not from the relay");
                    got.push(d);
                }
                None => panic!(
                    "client -> peer, ChannelData {idx:?}: {} of {} arrived within {RESPONSE_TIMEOUT:?}\n{}",
                    got.len(),
                    sent.len(),
                    xdp_lines(&rig.metrics())
                ),
            }
        }
        sent.sort();
        got.sort();
        if sent != got {
            let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
            panic!(
                "client -> peer, ChannelData {idx:?}: the peer received other bytes: sent lengths {:?}, received {:?}",
                lens(&sent),
                lens(&got)
            );
        }
        bytes_to_peer += sent.iter().map(|d| d.len() as u64).sum::<u64>();
    }
    b.peer.expect_silence(SILENCE);

    let mut bytes_to_client = 0u64;
    for start in (0..RELAY_COUNT).step_by(WINDOW) {
        let idx = start..(start + WINDOW).min(RELAY_COUNT);
        let mut sent: Vec<Vec<u8>> = idx.clone().map(|i| pattern(i, 0x5a)).collect();
        for d in &sent {
            b.peer.send_to(d, b.relay);
        }
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            match b.client.recv(RESPONSE_TIMEOUT) {
                Some(Incoming::Channel { channel, data }) => {
                    assert_eq!(channel, CH, "peer -> client: ChannelData on another channel");
                    got.push(data);
                }
                other => panic!(
                    "peer -> client, datagrams {idx:?}: after {} of {}, expected ChannelData, got {other:?}\n{}",
                    got.len(),
                    sent.len(),
                    xdp_lines(&rig.metrics())
                ),
            }
        }
        sent.sort();
        got.sort();
        if sent != got {
            let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
            panic!(
                "peer -> client, datagrams {idx:?}: the client received other bytes: sent lengths {:?}, received {:?}",
                lens(&sent),
                lens(&got)
            );
        }
        bytes_to_client += sent.iter().map(|d| d.len() as u64).sum::<u64>();
    }
    b.client.expect_silence(SILENCE);

    // All relayed traffic is what the peer and the client received (the
    // kernel's part is read back on the sync tick: wait for it).
    let n = RELAY_COUNT as u64;
    let want = [
        (
            Dir::ToPeer,
            b.warm_to_peer.0 + n,
            b.warm_to_peer.1 + bytes_to_peer,
        ),
        (
            Dir::ToClient,
            b.warm_to_client.0 + n,
            b.warm_to_client.1 + bytes_to_client,
        ),
    ];
    let totals = |m: &Metrics| {
        want.map(|(d, _, _)| {
            (
                by_dir(m, "turnd_relayed_packets_total", d) as u64,
                by_dir(m, "turnd_relayed_bytes_total", d) as u64,
            )
        })
    };
    let mut m = rig.metrics();
    wait_until(SYNC, || {
        m = rig.metrics();
        totals(&m) == want.map(|(_, p, b)| (p, b))
    });
    for ((d, p, bytes), (got_p, got_b)) in want.iter().zip(totals(&m)) {
        assert_eq!(
            (got_p, got_b),
            (*p, *bytes),
            "{d:?}: turnd_relayed_packets/bytes_total vs what was received (after {SYNC:?}):\n{}",
            xdp_lines(&m)
        );
    }

    // The kernel's part: most of it once the entry existed.
    let mut shares = Vec::new();
    if mode.xdp() {
        for (d, _, _) in want {
            let k = by_dir(&m, "turnd_xdp_relayed_packets_total", d)
                - by_dir(&m0, "turnd_xdp_relayed_packets_total", d);
            let kb = by_dir(&m, "turnd_xdp_relayed_bytes_total", d)
                - by_dir(&m0, "turnd_xdp_relayed_bytes_total", d);
            let main_bytes = match d {
                Dir::ToPeer => bytes_to_peer,
                Dir::ToClient => bytes_to_client,
            } as f64;
            assert!(
                k >= KERNEL_SHARE * n as f64 && k <= n as f64,
                "{d:?}: the kernel relayed {k} of the {n} ChannelData sent after its entry existed (want at least {}):\n{}",
                KERNEL_SHARE * n as f64,
                xdp_lines(&m)
            );
            assert!(
                kb > 0.0 && kb <= main_bytes,
                "{d:?}: kernel bytes {kb} vs {main_bytes} relayed:\n{}",
                xdp_lines(&m)
            );
            shares.push(format!("{d:?} {k}/{n} packets, {kb}/{main_bytes} bytes"));
        }
    }

    // The allocation's own counters (admin API) include the kernel's bytes.
    let client_addr = b.client.local_addr();
    let want_alloc = (want[0].2, want[1].2);
    let mut e = rig.allocation_of(client_addr);
    let counts = |e: &serde_json::Value| {
        (
            e["bytes_to_peer"].as_u64().unwrap_or(0),
            e["bytes_to_client"].as_u64().unwrap_or(0),
        )
    };
    wait_until(SYNC, || {
        e = rig.allocation_of(client_addr);
        counts(&e) == want_alloc
    });
    assert_eq!(
        counts(&e),
        want_alloc,
        "admin API bytes_to_peer/bytes_to_client vs what was received: {e}"
    );
    rig.assert_no_panic();
    println!(
        "relay {} {}: kernel share after the entry: {}",
        mode.name(),
        fam.name(),
        shares.join("; ")
    );
}

#[test]
fn relay_generic_v4() {
    relay_both_ways("rg4", Mode::Generic, V4);
}

#[test]
fn relay_generic_v6() {
    relay_both_ways("rg6", Mode::Generic, V6);
}

#[test]
fn relay_native_v4() {
    relay_both_ways("rn4", Mode::Native, V4);
}

#[test]
fn relay_native_v6() {
    relay_both_ways("rn6", Mode::Native, V6);
}

/// The same in user space (xdp off): the rig itself is sound.
#[test]
fn relay_user_space_v4() {
    relay_both_ways("ro4", Mode::Off, V4);
}

/// Allocations at once in `relay_many_*` (spread over turnd's workers).
const MANY: usize = 8;
/// Datagrams per allocation and direction there.
const MANY_COUNT: usize = 200;

/// [`MANY`] allocations at once, each with its own client, peer and
/// channel (0x4000 up to 0x7FFF, RFC 5766's range, which turnd and the
/// fast path take), relayed
/// in turn both ways: every datagram arrives, the totals equal what was
/// received and the kernel carried most of it (every worker's allocations
/// reached the kernel's maps).
#[track_caller]
fn relay_many(tag: &str, mode: Mode, fam: Family) {
    let rig = Rig::start(tag, mode, fam, &[]);
    let mut bs: Vec<Bound> = (0..MANY)
        .map(|i| {
            let channel = 0x4000 + (i as u32 * 0x3FFF / (MANY as u32 - 1)) as u16;
            rig.bound_with(channel, i + 1)
        })
        .collect();
    assert_eq!(bs.last().map(|b| b.channel), Some(0x7FFF));
    let m0 = rig.metrics_at(MANY as u64, MANY as u64);
    let mut bytes = [0u64; 2];
    for i in 0..MANY_COUNT {
        for (k, b) in bs.iter_mut().enumerate() {
            let d = pattern(i * MANY + k, k as u8);
            b.client.channel_data(b.channel, &d);
            let got = b.peer.recv(RESPONSE_TIMEOUT);
            assert_eq!(
                got.as_ref().map(|(f, g)| (*f, g.len(), g == &d)),
                Some((b.relay, d.len(), true)),
                "allocation {k}, datagram {i} to the peer"
            );
            bytes[0] += d.len() as u64;
            b.peer.send_to(&d, b.relay);
            match b.client.recv(RESPONSE_TIMEOUT) {
                Some(Incoming::Channel { channel, data }) => {
                    assert_eq!(
                        (channel, data == d),
                        (b.channel, true),
                        "allocation {k}, datagram {i} to the client"
                    )
                }
                other => panic!("allocation {k}, datagram {i} to the client: {other:?}"),
            }
            bytes[1] += d.len() as u64;
        }
    }
    let n = (MANY * MANY_COUNT) as u64;
    let warm = MANY as u64;
    let want = [
        (
            Dir::ToPeer,
            warm + n,
            warm * WARM_TO_PEER.len() as u64 + bytes[0],
        ),
        (
            Dir::ToClient,
            warm + n,
            warm * WARM_TO_CLIENT.len() as u64 + bytes[1],
        ),
    ];
    let totals = |m: &Metrics| {
        want.map(|(d, _, _)| {
            (
                by_dir(m, "turnd_relayed_packets_total", d) as u64,
                by_dir(m, "turnd_relayed_bytes_total", d) as u64,
            )
        })
    };
    let mut m = rig.metrics();
    wait_until(SYNC, || {
        m = rig.metrics();
        totals(&m) == want.map(|(_, p, b)| (p, b))
    });
    assert_eq!(
        totals(&m),
        want.map(|(_, p, b)| (p, b)),
        "turnd_relayed_packets/bytes_total (to peer, to client) vs what was received:\n{}",
        xdp_lines(&m)
    );
    let mut shares = Vec::new();
    if mode.xdp() {
        for (d, _, _) in want {
            let k = by_dir(&m, "turnd_xdp_relayed_packets_total", d)
                - by_dir(&m0, "turnd_xdp_relayed_packets_total", d);
            assert!(
                k >= KERNEL_SHARE * n as f64 && k <= n as f64,
                "{d:?}: the kernel relayed {k} of the {n} datagrams of {MANY} allocations (want at least {}):\n{}",
                KERNEL_SHARE * n as f64,
                xdp_lines(&m)
            );
            shares.push(format!("{d:?} {k}/{n}"));
        }
    }
    rig.assert_no_panic();
    println!(
        "relay many {} {}: {MANY} allocations, kernel share {}",
        mode.name(),
        fam.name(),
        shares.join("; ")
    );
}

#[test]
fn relay_many_generic_v4() {
    relay_many("mg4", Mode::Generic, V4);
}

#[test]
fn relay_many_native_v6() {
    relay_many("mn6", Mode::Native, V6);
}

/// Datagrams per direction in the `hairpin_*` tests.
const HAIRPIN_COUNT: usize = 500;

/// Sends `n` pattern datagrams (salted `salt`) as ChannelData from `from`
/// on `from_ch`, [`WINDOW`] at a time, and checks that `to` receives each
/// as ChannelData on `to_ch` (within a window, in any order); the payload
/// bytes.
#[track_caller]
fn client_to_client(
    what: &str,
    from: &Client,
    from_ch: u16,
    to: &mut Client,
    to_ch: u16,
    n: usize,
    salt: u8,
) -> u64 {
    let mut bytes = 0;
    for start in (0..n).step_by(WINDOW) {
        let idx = start..(start + WINDOW).min(n);
        let mut sent: Vec<Vec<u8>> = idx.clone().map(|i| pattern(i, salt)).collect();
        for d in &sent {
            from.channel_data(from_ch, d);
        }
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            match to.recv(RESPONSE_TIMEOUT) {
                Some(Incoming::Channel { channel, data }) => {
                    assert_eq!(channel, to_ch, "{what}: ChannelData on another channel");
                    got.push(data);
                }
                other => panic!(
                    "{what}, datagrams {idx:?}: after {} of {}, expected ChannelData, got {other:?}",
                    got.len(),
                    sent.len()
                ),
            }
        }
        sent.sort();
        got.sort();
        assert!(
            sent == got,
            "{what}, datagrams {idx:?}: other bytes arrived"
        );
        bytes += sent.iter().map(|d| d.len() as u64).sum::<u64>();
    }
    bytes
}

/// Both parties of a call on this server (forced relay): client A's
/// channel is bound to B's relayed address and B's to A's. The kernel
/// relays ChannelData to ChannelData (its hairpin, out of the interface it
/// came in on), counted as A's client-to-peer and B's peer-to-client
/// packet as user space counts it. In native mode the client's veth runs a
/// pass-everything XDP program (see [`attach_pass_program`]).
#[track_caller]
fn hairpin(tag: &str, mode: Mode, fam: Family) {
    const CA: u16 = 0x4001;
    const CB: u16 = 0x4abc;
    let rig = Rig::start(tag, mode, fam, &[]);
    let tmp = TempDir::new("xdp-pass");
    if mode == Mode::Native {
        attach_pass_program(&rig.net.client, CLIENT_IF, &tmp.path);
    }
    let mut a = rig.client();
    let ra = rig.allocate(&mut a);
    let mut b = rig.client();
    let rb = rig.allocate(&mut b);
    a.channel_bind(CA, rb).expect_success();
    b.channel_bind(CB, ra).expect_success();
    let warm = client_to_client("warm-up A to B", &a, CA, &mut b, CB, 1, 1)
        + client_to_client("warm-up B to A", &b, CB, &mut a, CA, 1, 2);
    rig.wait_entries(|n| n >= 2.0, "at least 2");
    let m0 = rig.metrics_at(2, 2);
    let n = HAIRPIN_COUNT;
    let bytes = client_to_client("A to B", &a, CA, &mut b, CB, n, 3)
        + client_to_client("B to A", &b, CB, &mut a, CA, n, 4);
    a.expect_silence(SILENCE);
    b.expect_silence(SILENCE);
    let packets = 2 * (n as u64 + 1);
    let want = [(packets, warm + bytes); 2];
    let totals = |m: &Metrics| {
        [Dir::ToPeer, Dir::ToClient].map(|d| {
            (
                by_dir(m, "turnd_relayed_packets_total", d) as u64,
                by_dir(m, "turnd_relayed_bytes_total", d) as u64,
            )
        })
    };
    let mut m = rig.metrics();
    wait_until(SYNC, || {
        m = rig.metrics();
        totals(&m) == want
    });
    assert_eq!(
        totals(&m),
        want,
        "turnd_relayed_packets/bytes_total (to peer, to client) vs what the clients received:\n{}",
        xdp_lines(&m)
    );
    let mut kernel = String::from("xdp off");
    if mode.xdp() {
        let main = 2.0 * n as f64;
        let hair = ["hairpin_tx", "hairpin_redirect"]
            .iter()
            .map(|p| {
                m.value("turnd_xdp_sent_packets_total", &[("path", p)])
                    .unwrap_or(0.0)
                    - m0.value("turnd_xdp_sent_packets_total", &[("path", p)])
                        .unwrap_or(0.0)
            })
            .sum::<f64>();
        let k = [Dir::ToPeer, Dir::ToClient].map(|d| {
            by_dir(&m, "turnd_xdp_relayed_packets_total", d)
                - by_dir(&m0, "turnd_xdp_relayed_packets_total", d)
        });
        assert!(
            hair >= KERNEL_SHARE * main && k.iter().all(|k| *k >= KERNEL_SHARE * main),
            "the kernel hairpinned {hair} of {main} datagrams (relayed {k:?} to peer, to client):\n{}",
            xdp_lines(&m)
        );
        kernel = format!("kernel hairpinned {hair} of {main}");
    }
    rig.assert_no_panic();
    println!("hairpin {} {}: {kernel}", mode.name(), fam.name());
    drop(tmp);
}

#[test]
fn hairpin_generic_v4() {
    hairpin("hg4", Mode::Generic, V4);
}

#[test]
fn hairpin_generic_v6() {
    hairpin("hg6", Mode::Generic, V6);
}

#[test]
fn hairpin_native_v4() {
    hairpin("hn4", Mode::Native, V4);
}

// ---------------------------------------------------------------------------
// 2. coturn's turnutils_uclient through the fast path.

#[track_caller]
fn uclient(tag: &str, mode: Mode, fam: Family) {
    let rig = Rig::start(tag, mode, fam, &[]);
    let port = UCLIENT_PEER_PORT.to_string();
    let _peer = NsChild::spawn(
        &rig.net.peer,
        &tool("turnutils_peer"),
        &["-L", fam.peer, "-p", &port],
    );
    let peer_ip = fam.peer;
    let echoes = in_netns(&rig.net.peer, move || {
        let s = UdpSocket::bind((peer_ip, 0)).expect("bind in the peer namespace");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let _ = s.send_to(b"ping", (peer_ip, UCLIENT_PEER_PORT));
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if &buf[..n] == b"ping" {
                    return true;
                }
            }
        }
        false
    });
    assert!(echoes, "turnutils_peer never echoed on {peer_ip}");
    let m0 = rig.metrics();
    let mut cmd = ns_command(&rig.net.client, &tool("turnutils_uclient"));
    if fam.v6 {
        cmd.arg("-x"); // an IPv6 relayed address
    }
    let turn_port = LISTEN_PORT.to_string();
    cmd.args([
        "-u",
        USER,
        "-w",
        PASSWORD,
        "-e",
        fam.peer,
        "-r",
        &port,
        "-p",
        &turn_port,
        "-n",
        "200",
        "-m",
        UCLIENT_SESSIONS,
        "-l",
        "170",
        fam.listen,
    ]);
    let (s, tail, elapsed) = run_uclient(&mut cmd, UCLIENT_TIMEOUT, "uclient");
    assert!(s.sent > 0, "uclient sent nothing: {s:?}\n{tail}");
    assert_eq!(s.lost, 0, "uclient lost packets: {s:?}\n{tail}");
    assert_eq!(s.received, s.sent, "uclient: {s:?}\n{tail}");

    // The kernel relayed both ways (read back on the sync tick).
    let delta = |m: &Metrics, name: &str, d: Dir| by_dir(m, name, d) - by_dir(&m0, name, d);
    let mut m = rig.metrics();
    if mode.xdp() {
        wait_until(SYNC, || {
            m = rig.metrics();
            delta(&m, "turnd_xdp_relayed_packets_total", Dir::ToPeer) > 0.0
                && delta(&m, "turnd_xdp_relayed_packets_total", Dir::ToClient) > 0.0
        });
        for d in [Dir::ToPeer, Dir::ToClient] {
            assert!(
                delta(&m, "turnd_xdp_relayed_packets_total", d) > 0.0,
                "{d:?}: the kernel relayed nothing of uclient's traffic ({s:?}):\n{}",
                xdp_lines(&m)
            );
        }
    }
    // All relayed traffic (user space and kernel) is what uclient sent and
    // got back.
    let want = [(Dir::ToPeer, s.sent), (Dir::ToClient, s.received)];
    let all = |m: &Metrics| want.map(|(d, _)| delta(m, "turnd_relayed_packets_total", d) as u64);
    wait_until(SYNC, || {
        m = rig.metrics();
        all(&m) == want.map(|(_, n)| n)
    });
    assert_eq!(
        all(&m),
        want.map(|(_, n)| n),
        "turnd_relayed_packets_total grew by {:?} (to peer, to client), uclient sent {} and received {}:\n{}",
        all(&m),
        s.sent,
        s.received,
        xdp_lines(&m)
    );
    rig.assert_no_panic();
    let kernel = if mode.xdp() {
        format!(
            "kernel to peer {}, to client {}",
            delta(&m, "turnd_xdp_relayed_packets_total", Dir::ToPeer),
            delta(&m, "turnd_xdp_relayed_packets_total", Dir::ToClient)
        )
    } else {
        "xdp off".to_owned()
    };
    println!(
        "uclient {} {}: {s:?} in {:?}; {kernel}; all to peer {}, to client {}\n{}",
        mode.name(),
        fam.name(),
        elapsed,
        delta(&m, "turnd_relayed_packets_total", Dir::ToPeer),
        delta(&m, "turnd_relayed_packets_total", Dir::ToClient),
        xdp_lines(&m)
    );
}

#[test]
fn uclient_generic_v4() {
    uclient("ug4", Mode::Generic, V4);
}

#[test]
fn uclient_native_v4() {
    uclient("un4", Mode::Native, V4);
}

#[test]
fn uclient_generic_v6() {
    uclient("ug6", Mode::Generic, V6);
}

#[test]
fn uclient_native_v6() {
    uclient("un6", Mode::Native, V6);
}

// ---------------------------------------------------------------------------
// 3. Expiry and revocation stop the kernel within the second.

/// `channel-lifetime` of the expiry tests (the minimum is 1 s; 3 s leaves
/// the kernel time to take over first).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(3);
/// Interval of the timed streams.
const EVERY: Duration = Duration::from_millis(2);

/// Checks a timed stream around a cut-off at `cut` (µs stamps after the
/// same `t0`): every datagram the peer received came from the relay, none
/// was sent later than `cut + STOP_BOUND`, and at least 90 % of those sent
/// before `cut - margin` arrived. The last send time received.
#[track_caller]
fn check_cut(
    what: &str,
    relay: SocketAddr,
    sent: &[Duration],
    got: &[Datagram],
    cut: Duration,
    margin: Duration,
) -> Duration {
    let stamps: Vec<Duration> = got
        .iter()
        .map(|(from, d)| {
            assert_eq!(
                *from, relay,
                "{what}: datagram at the peer not from the relay"
            );
            stamp(d)
        })
        .collect();
    let last = stamps.iter().copied().max().unwrap_or_default();
    let late: Vec<&Duration> = stamps.iter().filter(|s| **s > cut + STOP_BOUND).collect();
    assert!(
        late.is_empty(),
        "{what}: the peer received {} datagrams sent more than {STOP_BOUND:?} after the cut-off at {}; the last sent {} after it",
        late.len(),
        ms(cut),
        ms(last.saturating_sub(cut))
    );
    let before = cut.saturating_sub(margin);
    let sent_before = sent.iter().filter(|s| **s < before).count();
    let got_before = stamps.iter().filter(|s| **s < before).count();
    assert!(
        sent_before > 0 && got_before * 10 >= sent_before * 9,
        "{what}: of {sent_before} datagrams sent before the cut-off, {got_before} arrived"
    );
    last
}

#[track_caller]
fn channel_expiry(tag: &str, mode: Mode, fam: Family) {
    let secs = CHANNEL_LIFETIME.as_secs().to_string();
    let rig = Rig::start(tag, mode, fam, &["--channel-lifetime", &secs]);
    let mut b = rig.bound();
    let m0 = rig.metrics_at(1, 1);
    // The server's expiry is at most CHANNEL_LIFETIME after `bound_at`.
    let t0 = b.bound_at;
    let expiry = t0 + CHANNEL_LIFETIME;
    let col = Collector::start(&b.peer.sock);
    let sent = stream(
        &b.client,
        t0,
        EVERY,
        expiry + STOP_BOUND + Duration::from_millis(500),
        100,
    );
    let got = col.finish();
    let m1 = rig.metrics();
    let last = check_cut(
        "channel expiry",
        b.relay,
        &sent,
        &got,
        CHANNEL_LIFETIME,
        Duration::from_millis(300),
    );
    println!(
        "channel expiry {} {}: {} of {} relayed; the last one sent {} after the channel's latest expiry (negative: before)",
        mode.name(),
        fam.name(),
        got.len(),
        sent.len(),
        if last >= CHANNEL_LIFETIME {
            ms(last - CHANNEL_LIFETIME)
        } else {
            format!("-{}", ms(CHANNEL_LIFETIME - last))
        }
    );
    if mode.xdp() {
        let k = by_dir(&m1, "turnd_xdp_relayed_packets_total", Dir::ToPeer)
            - by_dir(&m0, "turnd_xdp_relayed_packets_total", Dir::ToPeer);
        assert!(
            k * 2.0 >= got.len() as f64,
            "the kernel relayed {k} of the {} datagrams relayed before the expiry:\n{}",
            got.len(),
            xdp_lines(&m1)
        );
        let passed_after = passed(&m1, "expired") + passed(&m1, "no_entry")
            - passed(&m0, "expired")
            - passed(&m0, "no_entry");
        assert!(
            passed_after > 0.0,
            "nothing passed as `expired` or `no_entry` after the expiry:\n{}",
            xdp_lines(&m1)
        );
        rig.wait_entries(|n| n == 0.0, "0 after the expiry");
    }
    // The permission lives on (300 s): the peer's datagrams now reach the
    // client from user space as Data indications, never as ChannelData.
    for i in 0..5u8 {
        b.peer.send_to(&[b'x', i], b.relay);
    }
    for i in 0..5 {
        match b.client.recv(RESPONSE_TIMEOUT) {
            Some(Incoming::Data { peer, .. }) => assert_eq!(peer, b.peer.addr()),
            other => panic!("after the channel expired, datagram {i} of the peer came as {other:?}, not a Data indication"),
        }
    }
}

#[test]
fn channel_expiry_generic_v4() {
    channel_expiry("eg4", Mode::Generic, V4);
}

#[test]
fn channel_expiry_native_v4() {
    channel_expiry("en4", Mode::Native, V4);
}

#[test]
fn channel_expiry_generic_v6() {
    channel_expiry("eg6", Mode::Generic, V6);
}

#[test]
fn channel_expiry_native_v6() {
    channel_expiry("en6", Mode::Native, V6);
}

#[track_caller]
fn admin_delete(tag: &str, mode: Mode, fam: Family) {
    let rig = Rig::start(tag, mode, fam, &[]);
    let mut b = rig.bound();
    let id = rig.allocation_of(b.client.local_addr())["id"]
        .as_u64()
        .expect("a numeric allocation id");
    let m0 = rig.metrics_at(1, 1);
    let col = Collector::start(&b.peer.sock);
    let t0 = Instant::now();
    let mut sent = stream(&b.client, t0, EVERY, t0 + Duration::from_millis(600), 100);
    let status = rig.delete_allocation(id);
    let cut = t0.elapsed();
    assert_eq!(status, 204, "DELETE /api/allocations/{id}");
    sent.extend(stream(
        &b.client,
        t0,
        EVERY,
        Instant::now() + STOP_BOUND + Duration::from_millis(500),
        100,
    ));
    let got = col.finish();
    let m1 = rig.metrics();
    let last = check_cut("admin delete", b.relay, &sent, &got, cut, Duration::ZERO);
    println!(
        "admin delete {} {}: {} of {} relayed; the last one sent {} after the DELETE answered",
        mode.name(),
        fam.name(),
        got.len(),
        sent.len(),
        if last >= cut {
            ms(last - cut)
        } else {
            format!("-{}", ms(cut - last))
        }
    );
    if mode.xdp() {
        let k = by_dir(&m1, "turnd_xdp_relayed_packets_total", Dir::ToPeer)
            - by_dir(&m0, "turnd_xdp_relayed_packets_total", Dir::ToPeer);
        let before = got.iter().filter(|(_, d)| stamp(d) < cut).count();
        assert!(
            k * 2.0 >= before as f64,
            "the kernel relayed {k} of the {before} datagrams relayed before the DELETE:\n{}",
            xdp_lines(&m1)
        );
        rig.wait_entries(|n| n == 0.0, "0 after the DELETE");
    }
    // Nor is anything relayed to the client any more.
    for i in 0..5u8 {
        b.peer.send_to(&[b'y', i], b.relay);
    }
    b.client.expect_silence(SILENCE);
}

#[test]
fn admin_delete_generic_v4() {
    admin_delete("dg4", Mode::Generic, V4);
}

#[test]
fn admin_delete_native_v4() {
    admin_delete("dn4", Mode::Native, V4);
}

#[test]
fn admin_delete_generic_v6() {
    admin_delete("dg6", Mode::Generic, V6);
}

#[test]
fn admin_delete_native_v6() {
    admin_delete("dn6", Mode::Native, V6);
}

// ---------------------------------------------------------------------------
// 4. max-bps holds with the fast path.

/// `max-bps` of those tests: above the bucket's smallest burst (64 KiB), so
/// the burst is one second's worth.
const MAX_BPS: u64 = 100_000;

#[track_caller]
fn max_bps(tag: &str, mode: Mode, fam: Family) {
    let limit = MAX_BPS.to_string();
    let rig = Rig::start(tag, mode, fam, &["--max-bps", &limit]);
    let b = rig.bound();
    let m0 = rig.metrics_at(1, 1);
    let size: usize = 1000;
    // Four times the limit: 400 datagrams of 1,000 bytes a second.
    let every = Duration::from_secs_f64(size as f64 / (4 * MAX_BPS) as f64);
    let drain = Duration::from_secs(1);
    let window = Duration::from_secs(3);
    let col = Collector::start(&b.peer.sock);
    let t0 = Instant::now();
    let sent = stream(&b.client, t0, every, t0 + drain + window, size);
    let got = col.finish();
    let m1 = rig.metrics();
    let in_window = |s: &Duration| *s >= drain && *s < drain + window;
    let sent_bytes = sent.iter().filter(|s| in_window(s)).count() as f64 * size as f64;
    let got_bytes = got
        .iter()
        .filter(|(_, d)| in_window(&stamp(d)))
        .map(|(_, d)| d.len() as f64)
        .sum::<f64>();
    let allowed = MAX_BPS as f64 * window.as_secs_f64();
    let kernel = if mode.xdp() {
        by_dir(&m1, "turnd_xdp_relayed_packets_total", Dir::ToPeer)
            - by_dir(&m0, "turnd_xdp_relayed_packets_total", Dir::ToPeer)
    } else {
        0.0
    };
    let dropped = m1
        .value("turnd_dropped_packets_total", &[("reason", "bandwidth")])
        .unwrap_or(0.0)
        - m0.value("turnd_dropped_packets_total", &[("reason", "bandwidth")])
            .unwrap_or(0.0);
    println!(
        "max-bps {} {}: over {window:?} sent {sent_bytes} bytes, the peer received {got_bytes} ({:.2} x the limit's {allowed}); in all {} datagrams received of {}, kernel {kernel}, dropped for bandwidth {dropped}",
        mode.name(),
        fam.name(),
        got_bytes / allowed,
        got.len(),
        sent.len()
    );
    assert!(
        sent_bytes >= 3.0 * allowed,
        "the client sent only {sent_bytes} bytes in {window:?} (want about 4 x {allowed})"
    );
    assert!(
        got_bytes >= 0.5 * allowed && got_bytes <= 1.5 * allowed,
        "with max-bps {MAX_BPS} the peer received {got_bytes} bytes in {window:?} (want 0.5 to 1.5 x {allowed}):\n{}",
        xdp_lines(&m1)
    );
    assert!(dropped > 0.0, "nothing dropped for bandwidth:\n{}", m1.text);
    if mode.xdp() {
        assert!(
            kernel > 0.0,
            "the kernel relayed nothing for the allocation under its limit:\n{}",
            xdp_lines(&m1)
        );
    }
}

#[test]
fn max_bps_generic_v4() {
    max_bps("bg4", Mode::Generic, V4);
}

#[test]
fn max_bps_native_v4() {
    max_bps("bn4", Mode::Native, V4);
}

/// The reference: the same in user space.
#[test]
fn max_bps_user_space() {
    max_bps("bo4", Mode::Off, V4);
}

// ---------------------------------------------------------------------------
// 5. Start errors.

/// turnd with `--xdp MODE`, the given listening and relay addresses, in the
/// relay namespace of a fresh net (`forwarding` as given) must exit with an
/// error whose text holds `needle`.
#[track_caller]
fn refused(tag: &str, mode: Mode, forwarding: bool, listen: &str, relay: &str, needle: &str) {
    let net = XdpNet::new(tag, forwarding, mode == Mode::Native);
    let mut s = Turnd::standard(MIN_PORT, MAX_PORT)
        .in_netns(&net.relay)
        .set("--listening-ip", listen)
        .set("--relay-ip", relay)
        .args(["--xdp", mode.name()])
        .spawn();
    let st = s.wait_exit(COMMAND_TIMEOUT);
    let output = || format!("stdout {:?}\nstderr:\n{}", s.stdout_lines(), s.log());
    assert!(
        st.is_some_and(|st| !st.success()),
        "turnd --xdp {} --listening-ip {listen} --relay-ip {relay} (forwarding {forwarding}) did not fail at start ({st:?}):\n{}",
        mode.name(),
        output()
    );
    // Its last words may still be in the pipe readers.
    wait_until(Duration::from_secs(1), || {
        output().to_lowercase().contains(needle)
    });
    let text = output();
    assert!(
        text.to_lowercase().contains(needle),
        "turnd --xdp {} --listening-ip {listen} --relay-ip {relay} (forwarding {forwarding}) failed without naming `{needle}`:\n{text}",
        mode.name()
    );
    println!(
        "refused ({}, listening {listen}, relay {relay}, forwarding {forwarding}): {}",
        mode.name(),
        s.log().lines().last().unwrap_or_default()
    );
    drop(s);
}

#[test]
fn refused_wildcard_generic() {
    refused("wg", Mode::Generic, true, "0.0.0.0", V4.relay, "xdp");
    refused("wg", Mode::Generic, true, "::", V6.relay, "xdp");
}

#[test]
fn refused_wildcard_native() {
    refused("wn", Mode::Native, true, "0.0.0.0", V4.relay, "xdp");
}

#[test]
fn refused_forwarding_off_generic() {
    refused(
        "fg",
        Mode::Generic,
        false,
        V4.listen,
        V4.relay,
        "forwarding",
    );
}

#[test]
fn refused_forwarding_off_native() {
    refused("fn", Mode::Native, false, V4.listen, V4.relay, "forwarding");
}

#[test]
fn uclient_summary_parser() {
    let sample = "\
2: : start_mclient: msz=10, tot_send_msgs=65, tot_recv_msgs=65, tot_send_bytes ~ 11050, tot_recv_bytes ~ 11050
10: : start_mclient: tot_send_msgs=2000, tot_recv_msgs=1990
10: : Total lost packets 10 (0.500000%), total send dropped 0 (0.000000%)
";
    let s = parse_uclient_summary(sample).unwrap();
    assert_eq!((s.lost, s.sent, s.received), (10, 2000, 1990));
    assert!(parse_uclient_summary("nothing useful").is_none());
}

/// The program is attached through BPF links, so nothing is left on the
/// interfaces once turnd ends, whether by SIGTERM or by SIGKILL (a crash:
/// no cleanup code runs).
#[track_caller]
fn detaches(tag: &str, mode: Mode, sig: &str) {
    let mut rig = Rig::start(tag, mode, V4, &[]);
    let net = &rig.net;
    let attached = || net.relay_ip_output("link show").matches("prog/xdp").count();
    assert_eq!(
        attached(),
        2,
        "turnd_xdp on both veths before SIG{sig}:\n{}",
        net.relay_ip_output("link show")
    );
    rig.server.signal(sig);
    assert!(
        rig.server.wait_exit(Duration::from_secs(10)).is_some(),
        "turnd did not exit on SIG{sig}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || attached() == 0),
        "an XDP program is left on the interfaces after SIG{sig}:\n{}",
        net.relay_ip_output("link show")
    );
}

#[test]
fn detached_after_sigkill_generic() {
    detaches("dkg", Mode::Generic, "KILL");
}

#[test]
fn detached_after_sigkill_native() {
    detaches("dkn", Mode::Native, "KILL");
}

#[test]
fn detached_after_sigterm_generic() {
    detaches("dtg", Mode::Generic, "TERM");
}
