//! The load generator: one socket (or TCP/TLS connection) per allocation,
//! UDP echo peers, the setup state machines (401 dance, Allocate,
//! ChannelBind, Refresh 0) and the paced traffic loop, all on one thread
//! around one epoll instance.
//!
//! Cost per round trip on the generator's side: one `send` on the client
//! socket, one `recvmmsg` per readable client socket (it drains every
//! datagram waiting), and on the echo sockets one `recvmmsg` + one `sendmmsg`
//! per batch of up to 64 datagrams; one `epoll_pwait2` per wake-up.
//!
//! Pacing of `--rate` ([`Pacing`]): `burst` sends everything due within
//! `tick_us` together and catches up with bursts of up to 2 ms worth;
//! `even` gives every send its own due time (`i / rate`), sends at most one
//! datagram per wake-up (`epoll_pwait2` with a nanosecond timeout, 1 ns timer
//! slack), lets late sends go out one at a time, each after an `epoll_pwait2`
//! with a zero timeout that serves what arrived, and counts sends more than
//! 20 ms late as given up. Both record the achieved gaps between consecutive
//! sends and (even) how late each send was, to verify the pacing.
//!
//! `one_way`: the echo sockets become sinks: they count what arrives (by the
//! send time and sequence number in the payload) and answer nothing; one-way
//! delay replaces the round-trip time.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use turnd::stun::{long_term_key, write_channel_data_header, ChannelData, TransactionId};

use crate::procstat::{self, Sample};
use crate::proto::{self, Auth, Reply, CHANNEL};
use crate::report::Histogram;
use crate::stream::{self, StreamConn};
use turnd::sys::{self, Epoll, RecvBatch, SendBatch, EPOLL_IN, EPOLL_OUT};

/// How the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// How `--rate` spreads the sends in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pacing {
    /// Each send at its own due time, one datagram per send, no catch-up bursts.
    Even,
    /// Sends due within `tick_us` leave together; catch-up bursts of up to 2 ms worth.
    Burst,
}

impl Pacing {
    pub fn name(self) -> &'static str {
        match self {
            Pacing::Even => "even",
            Pacing::Burst => "burst",
        }
    }
}

/// What the engine is set up with.
pub struct Config {
    pub server: SocketAddr,
    pub user: String,
    pub password: String,
    pub bare: bool,
    pub transport: Transport,
    pub allocations: usize,
    pub size: usize,
    /// Mixed sizes: allocation i sends `size + (i * 389) % (size_max - size + 1)`
    /// payload bytes (each flow its own size, spread over size..=size_max).
    pub size_max: Option<usize>,
    pub echo_sockets: usize,
    /// Client sockets spread over 127.0.0.1..=127.0.0.N (loopback servers).
    pub client_ips: u8,
    pub setup_concurrency: usize,
    pub server_pid: Option<u32>,
    /// The peers are sinks: traffic goes one way, client -> server -> peer.
    pub one_way: bool,
    /// Address the client sockets (and the own echo sockets) bind to
    /// (None: the loopback server's address, else 127.0.0.1).
    pub local_ip: Option<IpAddr>,
    /// An external echo peer every allocation binds its channel to (None:
    /// the generator's own echo sockets).
    pub peer: Option<SocketAddr>,
    /// Other processes of the generator (an external echo peer): their
    /// utime + stime over the window is reported beside the generator's.
    pub gen_pids: Vec<u32>,
    /// Kernel threads (ksoftirqd/N) whose CPU over the window is reported:
    /// softirq work (veth, XDP) that overflowed to them.
    pub kthread_pids: Vec<u32>,
}

/// Where a setup run should bring every client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Allocated (authenticated Allocate succeeded).
    Allocated,
    /// Allocated and the channel bound to the echo peer (bare: relay socket made).
    Bound,
    /// Released (Refresh LIFETIME 0; bare: FREE).
    Released,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Probe,
    Auth,
    Bind,
    Allocated,
    Ready,
    Refresh,
    Released,
    BareBind,
    Failed(u16),
}

impl Phase {
    fn waiting(self) -> bool {
        matches!(
            self,
            Phase::Probe | Phase::Auth | Phase::Bind | Phase::Refresh | Phase::BareBind
        )
    }
}

enum Link {
    Udp(UdpSocket),
    Stream(Box<StreamConn>),
}

impl Link {
    fn fd(&self) -> i32 {
        match self {
            Link::Udp(s) => s.as_raw_fd(),
            Link::Stream(s) => s.fd(),
        }
    }
}

struct Client {
    link: Link,
    phase: Phase,
    tid: TransactionId,
    req: Vec<u8>,
    sent_at: Instant,
    tries: u32,
    nonce: Vec<u8>,
    relay: Option<SocketAddr>,
    peer: SocketAddr,
    /// The traffic frame (ChannelData header, or none for bare, then the payload).
    frame: Vec<u8>,
    inflight: u32,
    last_rx_ns: u64,
}

/// Token offset of the echo sockets in epoll (clients use their index).
const ECHO_BASE: u64 = 1 << 40;
/// Datagrams per recvmmsg/sendmmsg batch.
const BATCH: usize = 64;
/// Largest datagram handled.
const MAX_DGRAM: usize = 2048;
/// UDP retransmission timeout for setup requests, and the number of tries.
const RTO: Duration = Duration::from_millis(300);
const MAX_TRIES: u32 = 8;
/// Payload marker after the timestamp and the client index.
const MAGIC: &[u8; 4] = b"TBNC";
/// The smallest payload: timestamp (8), client index (4), marker (4).
pub const MIN_SIZE: usize = 16;
/// The smallest one-way payload: the above, then a sequence number (8).
pub const MIN_SIZE_ONE_WAY: usize = 24;
/// Even pacing: a send due more than this long ago is given up (ns).
const EVEN_GIVE_UP_NS: u64 = 20_000_000;
/// Unit of the gap histogram (ns): 0.1 µs buckets.
pub const GAP_UNIT_NS: u64 = 100;

/// How many clients a setup run brought where asked, and why others failed.
#[derive(Debug, Default)]
pub struct SetupReport {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// Error code (0: timeout or I/O error) and how many clients got it.
    pub codes: BTreeMap<u16, usize>,
}

/// The offered load.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Round trips per second in total, spread round-robin over allocations.
    Rate(f64),
    /// This many round trips in flight per allocation.
    Window(u32),
}

/// Timing of a traffic run (all in seconds).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: f64,
    pub duration: f64,
    pub drain: f64,
    /// Shortest sleep between paced sends (µs): sends due within it go out together (burst).
    pub tick_us: u64,
    pub pacing: Pacing,
}

/// What a traffic run measured.
pub struct TrafficReport {
    pub allocations: usize,
    pub window_s: f64,
    pub sent: u64,
    pub received: u64,
    /// Round trips completed (answer received) while the window was open.
    pub received_in_window: u64,
    pub send_errors: u64,
    /// Sends the generator could not make on time (it fell behind).
    pub skipped: u64,
    pub hist: Histogram,
    /// Gaps between consecutive sends inside the window (units of [`GAP_UNIT_NS`]).
    pub gaps: Histogram,
    /// How late each send in the window left after its due time (µs; even pacing).
    pub late: Histogram,
    /// One-way: datagrams that arrived out of sequence order (behind the highest seen).
    pub reordered: u64,
    pub server_start: Sample,
    pub server_end: Sample,
    pub cpu_wall_s: f64,
    pub gen_cpu: Duration,
    /// utime + stime of `gen_pids` over the window.
    pub gen_extra_cpu: Duration,
    /// utime + stime of `kthread_pids` over the window.
    pub kthread_cpu: Duration,
    /// The whole host's CPU (/proc/stat) over the window.
    pub host: Option<procstat::Host>,
}

/// Clients, echo peers and the epoll instance around them.
pub struct Engine {
    cfg: Config,
    ep: Epoll,
    clients: Vec<Client>,
    echoes: Vec<UdpSocket>,
    realm: String,
    key: [u8; 16],
    hdr_len: usize,
    codes: BTreeMap<u16, usize>,
    frames: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    stats: Counters,
    hist: Option<Histogram>,
}

#[derive(Default)]
struct Counters {
    window: bool,
    warm_ns: u64,
    meas_ns: u64,
    sent: u64,
    sent_window: u64,
    cohort_rx: u64,
    wall_rx: u64,
    send_errors: u64,
    window_mode: bool,
    /// Sequence number of the next one-way send, and the next one expected at the sink.
    seq: u64,
    seq_expected: u64,
    reordered: u64,
}

fn bind_udp(ip: IpAddr, buffer: usize) -> io::Result<UdpSocket> {
    bind_udp_at(SocketAddr::new(ip, 0), buffer)
}

/// A non-blocking UDP socket bound to `addr` with SO_RCVBUF/SO_SNDBUF
/// `buffer` bytes (best effort).
pub(crate) fn bind_udp_at(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn ns_since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

impl Engine {
    /// Opens the echo sockets and one socket or connection per allocation.
    pub fn new(cfg: Config) -> io::Result<Self> {
        let limit = sys::raise_nofile_limit().map_or(1024, |(_, new)| new);
        let need = cfg.allocations as u64 + cfg.echo_sockets as u64 + 32;
        if need > limit {
            return Err(io::Error::other(format!(
                "{} allocations need {need} open files, the limit is {limit} (ulimit -n)",
                cfg.allocations
            )));
        }
        let local_ip = match cfg.local_ip {
            Some(ip) => ip,
            None if cfg.server.ip().is_loopback() => cfg.server.ip(),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let ep = Epoll::new(1024)?;
        let mut echoes = Vec::new();
        for j in 0..cfg.echo_sockets.max(1) {
            let s = bind_udp(local_ip, 4 << 20)?;
            ep.add(s.as_raw_fd(), ECHO_BASE + j as u64, EPOLL_IN)?;
            echoes.push(s);
        }
        let echo_addrs: Vec<SocketAddr> = match cfg.peer {
            Some(p) => vec![p],
            None => echoes
                .iter()
                .map(UdpSocket::local_addr)
                .collect::<io::Result<_>>()?,
        };
        let tls = match cfg.transport {
            Transport::Tls => Some(stream::insecure_tls_config()?),
            _ => None,
        };
        let hdr_len = if cfg.bare { 0 } else { 4 };
        let size_of = |i: usize| match cfg.size_max {
            Some(m) if m > cfg.size => cfg.size + (i * 389) % (m - cfg.size + 1),
            _ => cfg.size,
        };
        let pad_of = |size: usize| {
            if cfg.transport == Transport::Udp || cfg.bare {
                0
            } else {
                (4 - size % 4) % 4
            }
        };
        let mut clients = Vec::with_capacity(cfg.allocations);
        for i in 0..cfg.allocations {
            let link = match (cfg.transport, cfg.bare) {
                (Transport::Udp, _) | (_, true) => {
                    let ip = match local_ip {
                        IpAddr::V4(v4) if v4.is_loopback() && cfg.client_ips > 1 => IpAddr::V4(
                            Ipv4Addr::new(127, 0, 0, 1 + (i % cfg.client_ips as usize) as u8),
                        ),
                        other => other,
                    };
                    let s = bind_udp(ip, 1 << 20)?;
                    if !cfg.bare {
                        s.connect(cfg.server)?;
                    }
                    Link::Udp(s)
                }
                (_, false) => {
                    Link::Stream(Box::new(StreamConn::connect(cfg.server, tls.as_ref())?))
                }
            };
            ep.add(link.fd(), i as u64, EPOLL_IN)?;
            let size = size_of(i);
            let mut frame = vec![0xA5u8; hdr_len + size + pad_of(size)];
            if !cfg.bare {
                write_channel_data_header(&mut frame, CHANNEL, size);
            }
            frame[hdr_len + 8..hdr_len + 12].copy_from_slice(&(i as u32).to_le_bytes());
            frame[hdr_len + 12..hdr_len + 16].copy_from_slice(MAGIC);
            clients.push(Client {
                link,
                phase: Phase::Idle,
                tid: [0; 12],
                req: Vec::new(),
                sent_at: Instant::now(),
                tries: 0,
                nonce: Vec::new(),
                relay: None,
                peer: echo_addrs[i % echo_addrs.len()],
                frame,
                inflight: 0,
                last_rx_ns: 0,
            });
        }
        Ok(Engine {
            cfg,
            ep,
            clients,
            echoes,
            realm: String::new(),
            key: [0; 16],
            hdr_len,
            codes: BTreeMap::new(),
            frames: Vec::new(),
            bounds: Vec::new(),
            stats: Counters::default(),
            hist: None,
        })
    }

    // ---- setup ---------------------------------------------------------

    fn send_req(&mut self, i: usize, now: Instant) {
        let server = self.cfg.server;
        let c = &mut self.clients[i];
        c.sent_at = now;
        c.tries += 1;
        let ok = match &mut c.link {
            Link::Udp(s) => {
                let r = if c.phase == Phase::BareBind {
                    s.send_to(&c.req, server)
                } else {
                    s.send(&c.req)
                };
                // A refused datagram is retransmitted like a lost one.
                r.is_ok() || matches!(r, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Link::Stream(s) => {
                let ok = s.send(&c.req).is_ok();
                if ok && s.pending() && !s.watching_out {
                    s.watching_out = true;
                    let _ = self.ep.modify(s.fd(), i as u64, EPOLL_IN | EPOLL_OUT);
                }
                ok
            }
        };
        if !ok {
            c.phase = Phase::Failed(0);
        }
    }

    /// Builds and sends the request of `phase` for client `i`.
    fn start_phase(&mut self, i: usize, phase: Phase, now: Instant) {
        let tid: TransactionId = rand::random();
        let mut buf = [0u8; 512];
        let c = &mut self.clients[i];
        c.tid = tid;
        c.phase = phase;
        c.tries = 0;
        let auth = Auth {
            user: &self.cfg.user,
            realm: &self.realm,
            nonce: &c.nonce,
            key: &self.key,
        };
        let n = match phase {
            Phase::Probe => proto::allocate_probe(&mut buf, tid),
            Phase::Auth => proto::allocate(&mut buf, tid, &auth),
            Phase::Bind => proto::channel_bind(&mut buf, tid, &auth, c.peer),
            Phase::Refresh => proto::release(&mut buf, tid, &auth),
            Phase::BareBind => {
                let t = format!("BIND {}", c.peer);
                buf[..t.len()].copy_from_slice(t.as_bytes());
                Ok(t.len())
            }
            _ => return,
        };
        match n {
            Ok(n) => {
                c.req.clear();
                c.req.extend_from_slice(&buf[..n]);
                self.send_req(i, now);
            }
            Err(_) => c.phase = Phase::Failed(0),
        }
    }

    /// Starts client `i` towards `target`; false when there is nothing to do.
    fn start(&mut self, i: usize, target: Target, now: Instant) -> bool {
        let bare = self.cfg.bare;
        let c = &mut self.clients[i];
        match target {
            Target::Allocated | Target::Bound => {
                if c.phase != Phase::Idle {
                    return false;
                }
                let p = if bare { Phase::BareBind } else { Phase::Probe };
                self.start_phase(i, p, now);
            }
            Target::Released => {
                if !matches!(c.phase, Phase::Ready | Phase::Allocated) {
                    return false;
                }
                if bare {
                    // Best effort, no answer: the forwarder closes the relay socket.
                    if let (Link::Udp(s), Some(relay)) = (&c.link, c.relay) {
                        let _ =
                            s.send_to(format!("FREE {}", relay.port()).as_bytes(), self.cfg.server);
                    }
                    c.phase = Phase::Released;
                    return false;
                }
                self.start_phase(i, Phase::Refresh, now);
            }
        }
        self.clients[i].phase.waiting()
    }

    fn learn_realm(&mut self, realm: &str) {
        if self.realm != realm {
            self.realm = realm.to_string();
            self.key = long_term_key(&self.cfg.user, realm, &self.cfg.password);
        }
    }

    /// A STUN message (or the forwarder's text answer) for client `i`.
    fn on_setup_msg(&mut self, i: usize, bytes: &[u8], target: Target, now: Instant) {
        let phase = self.clients[i].phase;
        if phase == Phase::BareBind {
            let port = std::str::from_utf8(bytes)
                .ok()
                .and_then(|t| t.strip_prefix("OK "))
                .and_then(|p| p.trim().parse::<u16>().ok());
            if let Some(port) = port {
                let relay = SocketAddr::new(self.cfg.server.ip(), port);
                let c = &mut self.clients[i];
                if let Link::Udp(s) = &c.link {
                    if s.connect(relay).is_err() {
                        c.phase = Phase::Failed(0);
                        return;
                    }
                }
                c.relay = Some(relay);
                c.phase = Phase::Ready;
            }
            return;
        }
        if !phase.waiting() {
            return;
        }
        let Some(reply) = proto::reply(bytes, &self.clients[i].tid) else {
            return;
        };
        match (phase, reply) {
            (
                Phase::Probe,
                Reply::Error {
                    code: 401,
                    realm: Some(realm),
                    nonce: Some(nonce),
                },
            ) => {
                self.learn_realm(&realm);
                self.clients[i].nonce = nonce;
                self.start_phase(i, Phase::Auth, now);
            }
            (
                Phase::Auth | Phase::Bind | Phase::Refresh,
                Reply::Error {
                    code: 438,
                    realm,
                    nonce: Some(nonce),
                },
            ) if self.clients[i].tries < MAX_TRIES => {
                if let Some(r) = realm {
                    self.learn_realm(&r);
                }
                self.clients[i].nonce = nonce;
                self.start_phase(i, phase, now);
            }
            (Phase::Auth, Reply::Success { relay }) => {
                self.clients[i].relay = relay;
                if target == Target::Bound {
                    self.start_phase(i, Phase::Bind, now);
                } else {
                    self.clients[i].phase = Phase::Allocated;
                }
            }
            (Phase::Bind, Reply::Success { .. }) => self.clients[i].phase = Phase::Ready,
            (Phase::Refresh, Reply::Success { .. } | Reply::Error { code: 437, .. }) => {
                self.clients[i].phase = Phase::Released;
            }
            (_, Reply::Error { code, .. }) => self.clients[i].phase = Phase::Failed(code),
            (_, Reply::Success { .. }) => self.clients[i].phase = Phase::Failed(0),
        }
    }

    /// Brings every client to `target`, `concurrency` transactions at a time.
    pub fn setup(&mut self, target: Target, deadline: Duration) -> io::Result<SetupReport> {
        let t0 = Instant::now();
        let n = self.clients.len();
        let concurrency = self.cfg.setup_concurrency.max(1);
        let mut batch = RecvBatch::new(16, MAX_DGRAM);
        let mut next = 0;
        let mut waiting = 0usize;
        let mut last_scan = t0;
        self.codes.clear();
        loop {
            let now = Instant::now();
            while waiting < concurrency && next < n {
                if self.start(next, target, now) {
                    waiting += 1;
                }
                next += 1;
            }
            if waiting == 0 && next >= n {
                break;
            }
            if now - t0 > deadline {
                for c in &mut self.clients {
                    if c.phase.waiting() {
                        c.phase = Phase::Failed(0);
                    }
                }
                break;
            }
            let k = self.ep.wait(Some(Duration::from_millis(10)))?;
            let now = Instant::now();
            for e in 0..k {
                let (tok, flags) = self.ep.event(e);
                if tok >= ECHO_BASE {
                    let s = &self.echoes[(tok - ECHO_BASE) as usize];
                    while batch.recv(s.as_fd()).unwrap_or(0) == batch.capacity() {}
                    continue;
                }
                let i = tok as usize;
                let was = self.clients[i].phase.waiting();
                self.on_readable(i, flags, &mut batch, Some(target), now, 0);
                if was && !self.clients[i].phase.waiting() {
                    waiting -= 1;
                }
            }
            if now - last_scan >= Duration::from_millis(20) {
                last_scan = now;
                for i in 0..next {
                    let c = &mut self.clients[i];
                    if !c.phase.waiting() {
                        continue;
                    }
                    let udp = matches!(c.link, Link::Udp(_));
                    let timeout = if udp { RTO } else { Duration::from_secs(5) };
                    if now - c.sent_at < timeout {
                        continue;
                    }
                    if udp && c.tries < MAX_TRIES {
                        self.send_req(i, now);
                    } else {
                        c.phase = Phase::Failed(0);
                    }
                    if !self.clients[i].phase.waiting() {
                        waiting -= 1;
                    }
                }
            }
        }
        let mut rep = SetupReport {
            elapsed: t0.elapsed(),
            ..SetupReport::default()
        };
        for c in &self.clients {
            match (target, c.phase) {
                (Target::Released, Phase::Released) => rep.ok += 1,
                (Target::Allocated, Phase::Allocated | Phase::Ready) => rep.ok += 1,
                (Target::Bound, Phase::Ready) => rep.ok += 1,
                (_, Phase::Failed(code)) => {
                    rep.failed += 1;
                    *rep.codes.entry(code).or_default() += 1;
                }
                _ => {}
            }
        }
        Ok(rep)
    }

    // ---- receiving -----------------------------------------------------

    /// Client `i`'s socket is readable (or writable): handles what arrived.
    /// `target` is the setup target (None during traffic); `now_ns` the
    /// traffic clock.
    fn on_readable(
        &mut self,
        i: usize,
        flags: u32,
        batch: &mut RecvBatch,
        target: Option<Target>,
        now: Instant,
        now_ns: u64,
    ) {
        let c = &mut self.clients[i];
        match &mut c.link {
            Link::Udp(_) => {
                // Re-borrowed each round: `on_message` needs `self`.
                while let Link::Udp(s) = &self.clients[i].link {
                    let k = batch.recv(s.as_fd()).unwrap_or(0);
                    for m in 0..k {
                        if let Some((_, bytes)) = batch.datagram(m) {
                            self.on_message(i, bytes, target, now, now_ns);
                        }
                    }
                    if k < batch.capacity() {
                        break;
                    }
                }
            }
            Link::Stream(s) => {
                if flags & EPOLL_OUT != 0 {
                    let _ = s.flush();
                }
                let open = s.read_available().unwrap_or(false);
                let mut frames = std::mem::take(&mut self.frames);
                let mut bounds = std::mem::take(&mut self.bounds);
                let framed = match &mut self.clients[i].link {
                    Link::Stream(s) => s.take_frames(&mut frames, &mut bounds).is_ok(),
                    Link::Udp(_) => true,
                };
                for &(a, b) in &bounds {
                    self.on_message(i, &frames[a..b], target, now, now_ns);
                }
                self.frames = frames;
                self.bounds = bounds;
                let c = &mut self.clients[i];
                if !open || !framed {
                    let _ = self.ep.delete(c.link.fd());
                    if c.phase.waiting() || c.phase == Phase::Ready {
                        c.phase = Phase::Failed(0);
                    }
                    return;
                }
                if let Link::Stream(s) = &mut c.link {
                    if s.watching_out && !s.pending() {
                        s.watching_out = false;
                        let _ = self.ep.modify(s.fd(), i as u64, EPOLL_IN);
                    }
                }
            }
        }
    }

    fn on_message(
        &mut self,
        i: usize,
        bytes: &[u8],
        target: Option<Target>,
        now: Instant,
        now_ns: u64,
    ) {
        let traffic = if self.cfg.bare {
            self.clients[i].phase == Phase::Ready
        } else {
            bytes.first().is_some_and(|b| b & 0xC0 == 0x40)
        };
        if traffic {
            let payload = if self.cfg.bare {
                bytes
            } else {
                match ChannelData::parse(bytes) {
                    Ok(cd) => cd.data(),
                    Err(_) => return,
                }
            };
            if target.is_none() {
                self.on_payload(i, payload, now_ns);
            }
            return;
        }
        let t = target.unwrap_or(Target::Bound);
        self.on_setup_msg(i, bytes, t, now);
    }

    /// A round trip came back on client `i`.
    #[inline]
    fn on_payload(&mut self, i: usize, p: &[u8], now_ns: u64) {
        if p.len() < MIN_SIZE || &p[12..16] != MAGIC {
            return;
        }
        let ts = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let st = &mut self.stats;
        if ts >= st.warm_ns && ts < st.meas_ns {
            st.cohort_rx += 1;
            self.hist_record(now_ns.saturating_sub(ts) / 1000);
        }
        let st = &mut self.stats;
        if st.window {
            st.wall_rx += 1;
        }
        let window_mode = st.window_mode;
        let sending = now_ns < st.meas_ns;
        let c = &mut self.clients[i];
        c.inflight = c.inflight.saturating_sub(1);
        c.last_rx_ns = now_ns;
        if window_mode && sending {
            self.send_data(i, now_ns);
        }
    }

    /// A one-way datagram arrived at a sink peer.
    #[inline]
    fn on_sink(&mut self, p: &[u8], now_ns: u64) {
        if p.len() < MIN_SIZE_ONE_WAY || &p[12..16] != MAGIC {
            return;
        }
        let ts = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(p[16..24].try_into().expect("8 bytes"));
        let st = &mut self.stats;
        if seq < st.seq_expected {
            st.reordered += 1;
        } else {
            st.seq_expected = seq + 1;
        }
        if st.window {
            st.wall_rx += 1;
        }
        if ts >= st.warm_ns && ts < st.meas_ns {
            st.cohort_rx += 1;
            self.hist_record(now_ns.saturating_sub(ts) / 1000);
        }
    }

    fn hist_record(&mut self, us: u64) {
        if let Some(h) = &mut self.hist {
            h.record(us);
        }
    }

    // ---- traffic -------------------------------------------------------

    /// Sends one round trip's first leg on client `i`, stamped `now_ns`.
    #[inline]
    fn send_data(&mut self, i: usize, now_ns: u64) {
        let off = self.hdr_len;
        let c = &mut self.clients[i];
        c.frame[off..off + 8].copy_from_slice(&now_ns.to_le_bytes());
        if self.cfg.one_way {
            let seq = self.stats.seq;
            self.stats.seq += 1;
            c.frame[off + 16..off + 24].copy_from_slice(&seq.to_le_bytes());
        }
        let ok = match &mut c.link {
            Link::Udp(s) => s.send(&c.frame).is_ok(),
            Link::Stream(s) => {
                let ok = s.send(&c.frame).is_ok();
                if ok && s.pending() && !s.watching_out {
                    s.watching_out = true;
                    let _ = self.ep.modify(s.fd(), i as u64, EPOLL_IN | EPOLL_OUT);
                }
                ok
            }
        };
        c.inflight += 1;
        let st = &mut self.stats;
        st.sent += 1;
        if now_ns >= st.warm_ns && now_ns < st.meas_ns {
            st.sent_window += 1;
        }
        if !ok {
            st.send_errors += 1;
        }
    }

    /// Runs the load on every ready client: `timing.warmup` seconds, then
    /// the measured window of `timing.duration` seconds, then up to
    /// `timing.drain` seconds for the window's last answers.
    pub fn traffic(&mut self, load: Load, timing: Timing) -> io::Result<TrafficReport> {
        sys::tight_timer_slack();
        let ready: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].phase == Phase::Ready)
            .collect();
        if ready.is_empty() {
            return Err(io::Error::other("no allocation is ready"));
        }
        let warm_ns = (timing.warmup * 1e9) as u64;
        let meas_ns = warm_ns + (timing.duration * 1e9) as u64;
        let drain_end = meas_ns + (timing.drain * 1e9) as u64;
        let tick_ns = timing.tick_us * 1000;
        self.stats = Counters {
            warm_ns,
            meas_ns,
            window_mode: matches!(load, Load::Window(_)),
            ..Counters::default()
        };
        self.hist = Some(Histogram::new());
        let mut gaps = Histogram::new();
        let mut late = Histogram::new();
        let mut last_send_ns: Option<u64> = None;
        let one_way = self.cfg.one_way;
        let mut batch = RecvBatch::new(BATCH, MAX_DGRAM);
        let mut echo_out = SendBatch::default();
        let pid = self.cfg.server_pid;
        let mut server_start = Sample::default();
        let mut server_end = Sample::default();
        let (mut gen_start, mut gen_cpu) = (Duration::ZERO, Duration::ZERO);
        let (mut extra_start, mut gen_extra_cpu) = (Duration::ZERO, Duration::ZERO);
        let (mut host_start, mut host) = (None, None);
        let gen_pids = self.cfg.gen_pids.clone();
        let kthread_pids = self.cfg.kthread_pids.clone();
        let (mut kthread_start, mut kthread_cpu) = (Duration::ZERO, Duration::ZERO);
        let (mut win_start_ns, mut win_end_ns) = (0u64, 0u64);
        let (mut started, mut ended) = (false, false);
        let mut scheduled = 0u64;
        let mut skipped = 0u64;
        let mut rr = 0usize;
        let mut last_check = 0u64;
        let t0 = Instant::now();
        if let Load::Window(w) = load {
            for &i in &ready {
                for _ in 0..w {
                    self.send_data(i, 0);
                }
                self.clients[i].last_rx_ns = 0;
            }
        }
        loop {
            let now_ns = ns_since(t0);
            if !started && now_ns >= warm_ns {
                started = true;
                self.stats.window = true;
                server_start = procstat::sample(pid);
                gen_start = sys::self_cpu();
                extra_start = procstat::cpu_sum(&gen_pids);
                kthread_start = procstat::cpu_sum(&kthread_pids);
                host_start = procstat::host();
                win_start_ns = ns_since(t0);
            }
            if !ended && now_ns >= meas_ns {
                ended = true;
                self.stats.window = false;
                server_end = procstat::sample(pid);
                gen_cpu = sys::self_cpu().saturating_sub(gen_start);
                gen_extra_cpu = procstat::cpu_sum(&gen_pids).saturating_sub(extra_start);
                kthread_cpu = procstat::cpu_sum(&kthread_pids).saturating_sub(kthread_start);
                host = match (host_start, procstat::host()) {
                    (Some(s), Some(e)) => Some(e.since(&s)),
                    _ => None,
                };
                win_end_ns = ns_since(t0);
            }
            if now_ns >= drain_end || (ended && self.stats.cohort_rx >= self.stats.sent_window) {
                break;
            }
            let mut wake = drain_end;
            if now_ns < meas_ns {
                wake = wake.min(if started { meas_ns } else { warm_ns });
                match load {
                    Load::Rate(rate) if timing.pacing == Pacing::Burst => {
                        // Late (descheduled): catch up at most 2 ms worth per
                        // wake-up; more than 50 ms behind, give the backlog up.
                        let target = (now_ns as f64 * rate / 1e9) as u64;
                        let max_burst = ((rate * 0.002) as u64).max(32);
                        let give_up = ((rate * 0.05) as u64).max(max_burst);
                        if target.saturating_sub(scheduled) > give_up {
                            skipped += target - scheduled - give_up;
                            scheduled = target - give_up;
                        }
                        let mut burst = 0;
                        while scheduled < target && burst < max_burst {
                            let t = ns_since(t0);
                            note_gap(&mut gaps, &mut last_send_ns, t, warm_ns, meas_ns);
                            self.send_data(ready[rr], t);
                            rr = (rr + 1) % ready.len();
                            scheduled += 1;
                            burst += 1;
                        }
                        let next_due = ((scheduled + 1) as f64 * 1e9 / rate) as u64;
                        wake = wake.min(next_due.max(now_ns + tick_ns));
                    }
                    Load::Rate(rate) => {
                        // Even: send number k is due at k / rate. At most one
                        // send per pass; a late one goes out now and the next
                        // pass (zero timeout when it is due too) serves what
                        // arrived first. More than 20 ms late: given up.
                        let interval = 1e9 / rate;
                        let due_of = |k: u64| (k as f64 * interval) as u64;
                        if now_ns > EVEN_GIVE_UP_NS {
                            let first =
                                ((now_ns - EVEN_GIVE_UP_NS) as f64 / interval).ceil() as u64;
                            if first > scheduled {
                                skipped += first - scheduled;
                                scheduled = first;
                            }
                        }
                        let due = due_of(scheduled);
                        if due <= now_ns {
                            let t = ns_since(t0);
                            note_gap(&mut gaps, &mut last_send_ns, t, warm_ns, meas_ns);
                            if t >= warm_ns && t < meas_ns {
                                late.record(t.saturating_sub(due) / 1000);
                            }
                            self.send_data(ready[rr], t);
                            rr = (rr + 1) % ready.len();
                            scheduled += 1;
                        }
                        wake = wake.min(due_of(scheduled));
                    }
                    Load::Window(w) => {
                        // A window emptied by losses is refilled after 200 ms of silence.
                        if now_ns - last_check > 50_000_000 {
                            last_check = now_ns;
                            for &i in &ready {
                                let c = &self.clients[i];
                                if c.inflight < w
                                    && now_ns.saturating_sub(c.last_rx_ns) > 200_000_000
                                {
                                    for _ in c.inflight..w {
                                        self.send_data(i, now_ns);
                                    }
                                    self.clients[i].last_rx_ns = now_ns;
                                }
                            }
                        }
                        wake = wake.min(now_ns + 50_000_000);
                    }
                }
            }
            let timeout = Duration::from_nanos(wake.saturating_sub(ns_since(t0)));
            let k = self.ep.wait(Some(timeout))?;
            let now_ns = ns_since(t0);
            let now = Instant::now();
            for e in 0..k {
                let (tok, flags) = self.ep.event(e);
                if tok >= ECHO_BASE && one_way {
                    // Sinks: the echo sockets are lent out while `on_sink` needs `self`.
                    let echoes = std::mem::take(&mut self.echoes);
                    let fd = echoes[(tok - ECHO_BASE) as usize].as_fd();
                    loop {
                        let n = batch.recv(fd).unwrap_or(0);
                        for m in 0..n {
                            if let Some((_, bytes)) = batch.datagram(m) {
                                self.on_sink(bytes, now_ns);
                            }
                        }
                        if n < batch.capacity() {
                            break;
                        }
                    }
                    self.echoes = echoes;
                } else if tok >= ECHO_BASE {
                    let fd = self.echoes[(tok - ECHO_BASE) as usize].as_fd();
                    loop {
                        let n = batch.recv(fd).unwrap_or(0);
                        if n > 0 {
                            let back = (0..n).filter_map(|m| batch.datagram(m));
                            echo_out.send(fd, back.map(|(from, bytes)| (bytes, from)));
                        }
                        if n < batch.capacity() {
                            break;
                        }
                    }
                } else {
                    self.on_readable(tok as usize, flags, &mut batch, None, now, now_ns);
                }
            }
        }
        if !ended {
            server_end = procstat::sample(pid);
            gen_cpu = sys::self_cpu().saturating_sub(gen_start);
            gen_extra_cpu = procstat::cpu_sum(&gen_pids).saturating_sub(extra_start);
            kthread_cpu = procstat::cpu_sum(&kthread_pids).saturating_sub(kthread_start);
            host = match (host_start, procstat::host()) {
                (Some(s), Some(e)) => Some(e.since(&s)),
                _ => None,
            };
            win_end_ns = ns_since(t0);
        }
        let st = &self.stats;
        Ok(TrafficReport {
            allocations: ready.len(),
            window_s: timing.duration,
            sent: st.sent_window,
            received: st.cohort_rx,
            received_in_window: st.wall_rx,
            send_errors: st.send_errors,
            skipped,
            hist: self.hist.take().unwrap_or_default(),
            gaps,
            late,
            reordered: st.reordered,
            server_start,
            server_end,
            cpu_wall_s: (win_end_ns.saturating_sub(win_start_ns)) as f64 / 1e9,
            gen_cpu,
            gen_extra_cpu,
            kthread_cpu,
            host,
        })
    }
}

/// Records the gap since the previous send when `t` is inside the window.
#[inline]
fn note_gap(gaps: &mut Histogram, last: &mut Option<u64>, t: u64, warm_ns: u64, meas_ns: u64) {
    if t >= warm_ns && t < meas_ns {
        if let Some(prev) = *last {
            gaps.record(t.saturating_sub(prev) / GAP_UNIT_NS);
        }
    }
    *last = Some(t);
}
