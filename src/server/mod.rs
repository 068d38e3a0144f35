//! The IO shell around the sans-IO [`Server`]: UDP workers, TCP and TLS
//! clients, the timers, HTTP and signals.
//!
//! UDP clients are served by the UDP workers (see `worker.rs` and
//! `udp.rs`): one thread each, a plain epoll loop, no async runtime. The
//! main thread runs a tokio current-thread runtime with a `LocalSet` for
//! everything else: TCP and TLS clients with a core of their own (in an
//! `Rc<RefCell<_>>` that each task borrows for the length of one `handle_*`
//! call, never across an `.await`) and their relay sockets, HTTP, signals,
//! reloads and the user database.
//! UDP sends go straight to the kernel: a full socket buffer drops the
//! datagram, as UDP would, instead of stalling every other flow.

#![allow(clippy::disallowed_methods)] // the shell is where the clock is read

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};

pub mod fault;
mod fleet;
mod http;
pub mod logging;
mod proxy;
mod stream;
mod tls;
mod udp;
mod worker;
mod xdp;
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::{Cli, Config};

pub mod notify;
use crate::turn::{ClientOutput, FiveTuple, PeerOutput, RelayIo, Server, SharedState};

/// Largest datagram received from a client or a peer (bytes; above the
/// largest UDP payload, 65,527).
const RECV_BUFFER: usize = 65_536;
/// Datagrams one `recvmmsg` takes from a relay socket (one allocation's peers).
const RELAY_BATCH: usize = 16;
/// Output buffer for replies and Data indications (bytes).
const OUT_BUFFER: usize = 65_600;
/// How often the user database is polled for changes.
const USERDB_POLL: Duration = Duration::from_secs(1);
/// Longest the main thread's timer task sleeps between checks.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening socket could not be bound.
    #[error("cannot listen on {proto} {addr}: {source}{hint}")]
    Listen {
        /// udp, tcp or tls.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
        /// A hint for common causes.
        hint: &'static str,
    },
    /// No relay address could be derived.
    #[error("no relay address: {0}")]
    NoRelayAddress(String),
    /// No user is configured: every Allocate would fail.
    #[error(
        "no users configured: add `user = [\"name:password\"]` to the file or --user NAME:PASSWORD, or set static-auth-secret or userdb"
    )]
    NoUsers,
    /// The TLS certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// The XDP fast path could not start (`xdp`): why, and what to do.
    #[error("option `xdp`: {0}")]
    Xdp(String),
    /// The user database could not be opened or read.
    #[error("user database: {0}")]
    UserDb(String),
    /// Runtime failure.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Binds a UDP socket; `reuse_port` sets `SO_REUSEPORT` first, to join a
/// group of sockets on one address (one per worker).
fn bind_udp(addr: SocketAddr, buffer: Option<usize>, reuse_port: bool) -> io::Result<StdUdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if let Some(b) = buffer {
        let _ = s.set_recv_buffer_size(b);
        let _ = s.set_send_buffer_size(b);
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Binds `count` UDP listener sockets on `addr`, one per worker: alone when
/// `count` is 1, else as an `SO_REUSEPORT` group. A group is preceded by a
/// probe bind without `SO_REUSEPORT`, so an address that another process
/// (another turnd, coturn) holds fails with "address in use" instead of being
/// silently shared; with port 0 the probe also picks the port.
fn bind_udp_group(addr: SocketAddr, buffer: usize, count: usize) -> io::Result<Vec<StdUdpSocket>> {
    if count <= 1 {
        return Ok(vec![bind_udp(addr, Some(buffer), false)?]);
    }
    let addr = bind_udp(addr, None, false)?.local_addr()?;
    (0..count)
        .map(|_| bind_udp(addr, Some(buffer), true))
        .collect()
}

/// UDP workers to run: `relay-threads`, or `cpus`, the CPUs this process
/// may run on (`available_parallelism`: its affinity mask, so `taskset` and
/// systemd's `CPUAffinity` count). None when UDP is off: TCP and TLS are
/// served by the main thread.
fn worker_count(config: &Config, cpus: usize) -> usize {
    let n = match config.relay_threads {
        0 => cpus,
        n => n,
    };
    if config.udp {
        n.max(1)
    } else {
        0
    }
}

/// The address of the interface that routes to the public internet, found
/// with a UDP `connect` (which sends nothing).
fn default_route_ip(v6: bool) -> Option<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            "[2001:db8::1]:9".parse().ok()?,
        )
    } else {
        (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            "192.0.2.1:9".parse().ok()?,
        )
    };
    let s = StdUdpSocket::bind(bind).ok()?;
    s.connect(probe).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The addresses UDP listens on: an unspecified address (0.0.0.0, ::) is
/// replaced by every address of that family on the host's interfaces (IPv6
/// link-local excepted), so each reply leaves from the address the client
/// sent to, as on a multi-homed host it must. Kept as is when the interfaces
/// cannot be listed or `port` is 0 (an ephemeral port per address would differ).
fn udp_listening_ips(configured: &[IpAddr], port: u16) -> Vec<IpAddr> {
    let interfaces = if port == 0 {
        None
    } else {
        if_addrs::get_if_addrs().ok()
    };
    let mut out = Vec::new();
    for ip in configured {
        let expanded: Vec<IpAddr> = match (&interfaces, ip.is_unspecified()) {
            (Some(ifs), true) => ifs
                .iter()
                .map(|i| i.ip())
                .filter(|a| a.is_ipv4() == ip.is_ipv4())
                .filter(|a| !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
                .collect(),
            _ => vec![*ip],
        };
        let expanded = if expanded.is_empty() {
            vec![*ip]
        } else {
            expanded
        };
        for a in expanded {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// The addresses of this host the core must refuse as peers (besides the
/// relay and `external-ip` addresses it knows): every address of the host's
/// interfaces, read now (at start and on SIGHUP), and the listening
/// addresses. See `OwnAddresses` in the core.
fn host_ips(config: &Config) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.iter().map(|i| i.ip()).collect(),
        Err(e) => {
            warn!(error = %e, "cannot list the host's interface addresses: only listening, relay and external addresses are refused as peers");
            Vec::new()
        }
    };
    ips.extend(
        config
            .listening_ips
            .iter()
            .filter(|ip| !ip.is_unspecified()),
    );
    ips.sort_unstable();
    ips.dedup();
    ips
}

/// Fills in relay addresses when none are configured: the specific listening
/// addresses, else the default route's interface address.
///
/// # Errors
/// [`StartError::NoRelayAddress`] when none can be found.
pub fn resolve_relay_ips(config: &mut Config) -> Result<(), StartError> {
    if !config.relay_ips.is_empty() {
        return Ok(());
    }
    for ip in &config.listening_ips {
        if !ip.is_unspecified() {
            config.relay_ips.push(*ip);
        } else if let Some(r) = default_route_ip(ip.is_ipv6()) {
            info!(relay_ip = %r, "relay-ip not set: using the default route's address");
            config.relay_ips.push(r);
        }
    }
    if config.relay_ips.is_empty() {
        return Err(StartError::NoRelayAddress(
            "set `relay-ip` (the listening address is unspecified and there is no default route)"
                .into(),
        ));
    }
    Ok(())
}

/// A nonblocking UDP socket registered with the worker's reactor.
type UdpFd = AsyncFd<StdUdpSocket>;

struct RelaySocket {
    /// The only strong reference: dropping it closes the socket at once (the
    /// reader task holds a `Weak`), so a freed port can be bound again.
    socket: Option<Rc<UdpFd>>,
    /// The listener of a TCP relay (RFC 6062), held the same way.
    #[allow(dead_code)] // held, not read: dropping it closes the listener
    listener: Option<Rc<tokio::net::TcpListener>>,
    task: JoinHandle<()>,
}

/// Sockets and connections owned by the main thread's shell: TCP and TLS
/// clients and the relays of their allocations.
struct Shell {
    relays: RefCell<HashMap<SocketAddr, RelaySocket>>,
    conns: RefCell<HashMap<FiveTuple, Rc<stream::StreamConn>>>,
    limits: stream::StreamLimits,
    /// Output buffer of every TCP/TLS connection (replies), shared like
    /// `relay_out`; sized on first use.
    stream_out: RefCell<Vec<u8>>,
    /// `max-connections` and `max-connections-per-ip` (for metrics).
    gate: std::cell::OnceCell<std::sync::Arc<stream::ConnectionGate>>,
    /// Receive batch of every relay task (each slot has headroom for the
    /// ChannelData header and room for padding over streams), shared: a task
    /// holds it only inside one poll and the synchronous handling after it,
    /// never across an await, so an allocation costs no buffer of its own.
    relay_batch: RefCell<crate::sys::RecvBatch>,
    /// Output buffer of every relay task (Data indications).
    relay_out: RefCell<Vec<u8>>,
    /// RFC 6062 peer connections waiting for their ConnectionBind.
    tcp_pending: RefCell<HashMap<u32, tokio::net::TcpStream>>,
    /// RFC 6062 connects in progress.
    tcp_connecting: RefCell<HashMap<u32, JoinHandle<()>>>,
    /// RFC 6062 connections being piped: notify to cut them.
    tcp_piped: RefCell<HashMap<u32, Rc<tokio::sync::Notify>>>,
}

impl Shell {
    /// Queues `bytes` on the client's TCP or TLS connection (every client
    /// of the main thread's core has one).
    fn send_to_client(&self, to: &FiveTuple, bytes: &[u8]) {
        if let Some(c) = self.conns.borrow().get(to) {
            c.queue(bytes);
        }
    }

    fn send_to_peer(&self, relay: SocketAddr, peer: SocketAddr, bytes: &[u8]) {
        let relays = self.relays.borrow();
        if let Some(r) = relays.get(&relay) {
            let Some(socket) = &r.socket else { return };
            if let Err(e) = udp::send_udp(socket.get_ref(), bytes, peer) {
                debug!(target: "turnd::packet", %relay, %peer, error = %e, "send to peer failed");
            }
        }
    }

    /// Performs what [`Server::handle_client_input`] asked for: `input` is
    /// the bytes given to it, `out` its answer buffer. Returns the TCP relay
    /// connection to pipe the client's connection to after a successful
    /// ConnectionBind (RFC 6062 section 5.4).
    fn perform(&self, output: ClientOutput, input: &[u8], out: &[u8]) -> Option<u32> {
        match output {
            ClientOutput::None => None,
            ClientOutput::Reply { to, len } => {
                self.send_to_client(&to, &out[..len]);
                None
            }
            ClientOutput::ToPeer { relay, peer, range } => {
                self.send_to_peer(relay, peer, &input[range]);
                None
            }
            ClientOutput::ConnectionBound {
                to,
                len,
                connection_id,
            } => {
                self.send_to_client(&to, &out[..len]);
                Some(connection_id)
            }
        }
    }
}

/// [`RelayIo`] for the shell: binds relay sockets and spawns their readers.
struct ShellIo<'a> {
    shell: &'a Rc<Shell>,
    core: &'a Rc<RefCell<Server>>,
}

impl RelayIo for ShellIo<'_> {
    fn open(&mut self, relay: SocketAddr) -> io::Result<()> {
        let std = bind_udp(relay, None, false)?;
        let socket = Rc::new(crate::sys::register_udp(std)?);
        let task = tokio::task::spawn_local(relay_task(
            relay,
            Rc::downgrade(&socket),
            self.shell.clone(),
            self.core.clone(),
        ));
        self.shell.relays.borrow_mut().insert(
            relay,
            RelaySocket {
                socket: Some(socket),
                listener: None,
                task,
            },
        );
        Ok(())
    }

    fn close(&mut self, relay: SocketAddr) {
        if let Some(r) = self.shell.relays.borrow_mut().remove(&relay) {
            r.task.abort();
        }
    }

    fn open_tcp(&mut self, relay: SocketAddr) -> io::Result<()> {
        let listener = Rc::new(stream::bind_tcp_relay(relay)?);
        let task = tokio::task::spawn_local(stream::tcp_relay_accept(
            relay,
            Rc::downgrade(&listener),
            self.shell.clone(),
            self.core.clone(),
        ));
        self.shell.relays.borrow_mut().insert(
            relay,
            RelaySocket {
                socket: None,
                listener: Some(listener),
                task,
            },
        );
        Ok(())
    }

    fn connect_tcp(&mut self, relay: SocketAddr, peer: SocketAddr, id: u32) {
        let task = tokio::task::spawn_local(stream::tcp_relay_connect(
            relay,
            peer,
            id,
            self.shell.clone(),
            self.core.clone(),
        ));
        self.shell.tcp_connecting.borrow_mut().insert(id, task);
    }

    fn close_tcp(&mut self, id: u32) {
        self.shell.tcp_pending.borrow_mut().remove(&id);
        if let Some(t) = self.shell.tcp_connecting.borrow_mut().remove(&id) {
            t.abort();
        }
        if let Some(n) = self.shell.tcp_piped.borrow_mut().remove(&id) {
            n.notify_one();
        }
    }
}

async fn relay_task(
    relay: SocketAddr,
    socket: std::rc::Weak<UdpFd>,
    shell: Rc<Shell>,
    core: Rc<RefCell<Server>>,
) {
    use std::os::fd::AsFd;
    use std::task::{ready, Poll};
    loop {
        // One `recvmmsg` per wake-up into the shell's batch. A short batch
        // means the socket's queue is empty: readiness is cleared without the
        // extra read that would return EAGAIN (tokio's epoll is
        // edge-triggered, so a datagram arriving later wakes the task again).
        let received = std::future::poll_fn(|cx| {
            // Upgrade only while polling: the shell's map owns the socket.
            let Some(socket) = socket.upgrade() else {
                return Poll::Ready(None);
            };
            loop {
                let mut guard = match ready!(socket.poll_read_ready(cx)) {
                    Ok(g) => g,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                };
                let mut batch = shell.relay_batch.borrow_mut();
                match batch.recv(socket.get_ref().as_fd()) {
                    Ok(0) => guard.clear_ready(),
                    Ok(n) => {
                        if n < batch.capacity() {
                            guard.clear_ready();
                        }
                        return Poll::Ready(Some(Ok(n)));
                    }
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
        })
        .await;
        let n = match received {
            None => return,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                debug!(%relay, error = %e, "relay socket receive error");
                continue;
            }
        };
        let now = Instant::now();
        let mut batch = shell.relay_batch.borrow_mut();
        let mut out = shell.relay_out.borrow_mut();
        for i in 0..n {
            let Some((peer, len, slot)) = batch.slot_mut(i) else {
                continue;
            };
            let output = core
                .borrow_mut()
                .handle_peer_input(now, relay, peer, slot, len, &mut out);
            match output {
                PeerOutput::ChannelData { to, range } => shell.send_to_client(&to, &slot[range]),
                PeerOutput::DataIndication { to, len } => shell.send_to_client(&to, &out[..len]),
                PeerOutput::None => {}
            }
        }
    }
}

use udp::{TRIM_AFTER_ENDED, TRIM_INTERVAL};

/// The main thread's core's timers (the UDP workers' loops run their own).
async fn timer_task(shell: Rc<Shell>, core: Rc<RefCell<Server>>) {
    // Memory comes back after a peak: every TRIM_INTERVAL, sparse tables of
    // the core are shrunk, and when that freed something or many allocations
    // ended, the allocator is asked to return its free pages.
    let mut peak = 0usize;
    let mut last_trim = Instant::now();
    loop {
        let count = core.borrow().allocation_count();
        peak = peak.max(count);
        if last_trim.elapsed() >= TRIM_INTERVAL {
            // Tables left sparse by ended allocations or expired cached
            // responses (40 s after the last request) are shrunk first.
            let shrunk = core.borrow_mut().compact();
            if shrunk > 0 || peak >= count + TRIM_AFTER_ENDED {
                crate::sys::trim_heap();
                debug!(peak, count, shrunk, "allocations ended: memory returned");
                peak = count;
            }
            last_trim = Instant::now();
        }
        let now = Instant::now();
        let next = core
            .borrow()
            .poll_timeout()
            .map_or(now + MAX_TIMER_SLEEP, |t| t.min(now + MAX_TIMER_SLEEP));
        tokio::time::sleep_until(next.into()).await;
        let mut io = ShellIo {
            shell: &shell,
            core: &core,
        };
        core.borrow_mut().handle_timeout(Instant::now(), &mut io);
    }
}

/// The main thread's shell.
fn new_shell(limits: stream::StreamLimits) -> Rc<Shell> {
    Rc::new(Shell {
        relays: RefCell::new(HashMap::new()),
        conns: RefCell::new(HashMap::new()),
        stream_out: RefCell::new(Vec::new()),
        gate: std::cell::OnceCell::new(),
        relay_batch: RefCell::new(crate::sys::RecvBatch::new(RELAY_BATCH, RECV_BUFFER)),
        relay_out: RefCell::new(vec![0u8; OUT_BUFFER]),
        tcp_pending: RefCell::new(HashMap::new()),
        tcp_connecting: RefCell::new(HashMap::new()),
        tcp_piped: RefCell::new(HashMap::new()),
        limits,
    })
}

/// Binds every listener and runs the server until SIGINT or SIGTERM.
///
/// Prints `turnd: listening on udp ADDR` on stdout for each listener once bound
/// (tests and scripts read the port from it when `listening-port` is 0).
/// Must be called inside a `tokio::task::LocalSet`.
///
/// # Errors
/// [`StartError`] when a listener cannot be bound or no relay address exists.
pub async fn run(cli: Cli, mut config: Config) -> Result<(), StartError> {
    fault::arm();
    resolve_relay_ips(&mut config)?;
    if config.users.is_empty()
        && !config.use_auth_secret
        && config.userdb.is_none()
        && config.redis_userdb.is_none()
    {
        return Err(StartError::NoUsers);
    }
    // The fleet's users are read before anything is served, waiting a few
    // seconds at most: a Redis that is down leaves the node serving the
    // configuration's users until it is back.
    let redis_userdb = config.redis_userdb.as_ref();
    let fleet_status = match config.redis_statsdb.as_ref().or(redis_userdb) {
        None => None,
        Some(stats) => {
            let (rows, nonce_key) = fleet::initial_read(redis_userdb, stats, &config.realm).await;
            let status = fleet::FleetStatus::new(
                config.server_name.clone(),
                config.realm.clone(),
                redis_userdb.is_some(),
                rows,
            );
            status.nonce_key.set(nonce_key);
            Some(Rc::new(status))
        }
    };
    let mut userdb = match &config.userdb {
        Some(path) => Some(UserDbWatch::open(path)?),
        None => None,
    };
    let listen_error = |addr: SocketAddr, proto: &'static str| {
        move |source: io::Error| {
            let hint = match source.kind() {
                io::ErrorKind::AddrInUse => {
                    " (another process, perhaps another TURN server, uses this port)"
                }
                io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
                io::ErrorKind::AddrNotAvailable => " (this host has no such address)",
                _ => "",
            };
            StartError::Listen {
                proto,
                addr,
                source,
                hint,
            }
        }
    };
    // UDP first: with listening-port 0 the TCP listener takes the port UDP got.
    // Every allocation holds a relay socket: lift the soft limit of open
    // files (often 1024) to the hard limit (systemd's LimitNOFILE).
    match crate::sys::raise_nofile_limit() {
        Ok((old, new)) if new > old => debug!(old, new, "open-file limit raised"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers_wanted = worker_count(&config, cpus);
    if workers_wanted > cpus {
        warn!(
            workers = workers_wanted,
            cpus, "relay-threads is more than the CPUs this process may use: workers share cores"
        );
    }
    // The UDP listening addresses, and each worker's members of their
    // SO_REUSEPORT groups.
    let mut udp_locals = Vec::new();
    let mut worker_sockets: Vec<Vec<StdUdpSocket>> =
        (0..workers_wanted).map(|_| Vec::new()).collect();
    let mut add_group = |group: Vec<StdUdpSocket>| -> io::Result<SocketAddr> {
        let local = group
            .first()
            .ok_or_else(|| io::Error::other("empty socket group"))?
            .local_addr()?;
        for (i, s) in group.into_iter().enumerate() {
            worker_sockets[i].push(s);
        }
        Ok(local)
    };
    let mut tcp_listeners = Vec::new();
    let mut tls_listeners = Vec::new();
    let udp_ips = udp_listening_ips(&config.listening_ips, config.listening_port);
    if config.udp {
        for ip in udp_ips
            .iter()
            .filter(|ip| !config.listening_ips.contains(ip))
        {
            let addr = SocketAddr::new(*ip, config.listening_port);
            let group = bind_udp_group(addr, config.socket_buffer, workers_wanted)
                .map_err(listen_error(addr, "udp"))?;
            udp_locals.push(add_group(group)?);
        }
    }
    for ip in &config.listening_ips {
        let udp_here = config.udp && udp_ips.contains(ip);
        // With port 0 the TCP listener takes the port UDP got; another
        // program may hold that TCP port, so a few fresh pairs are tried.
        let tries = if config.listening_port == 0 && udp_here && config.tcp {
            16
        } else {
            1
        };
        for attempt in 1..=tries {
            let mut port = config.listening_port;
            let mut udp = None;
            if udp_here {
                let addr = SocketAddr::new(*ip, port);
                let group = bind_udp_group(addr, config.socket_buffer, workers_wanted)
                    .map_err(listen_error(addr, "udp"))?;
                port = group[0].local_addr()?.port();
                udp = Some(group);
            }
            if config.tcp {
                let addr = SocketAddr::new(*ip, port);
                match stream::bind_tcp_std(addr) {
                    Ok(l) => tcp_listeners.push(l),
                    Err(e) if attempt < tries && e.kind() == io::ErrorKind::AddrInUse => continue,
                    Err(e) => return Err(listen_error(addr, "tcp")(e)),
                }
            }
            if let Some(group) = udp {
                udp_locals.push(add_group(group)?);
            }
            break;
        }
        if config.tls {
            for p in &config.tls_listening_ports {
                let addr = SocketAddr::new(*ip, *p);
                tls_listeners.push(stream::bind_tcp_std(addr).map_err(listen_error(addr, "tls"))?);
            }
        }
    }
    let metrics_listener = match config.prometheus {
        Some(addr) => {
            Some(stream::bind_tcp(addr).map_err(listen_error(addr, "http (prometheus)"))?)
        }
        None => None,
    };
    let admin_listener = match &config.admin_token {
        Some(_) => Some(
            stream::bind_tcp(config.admin_listen)
                .map_err(listen_error(config.admin_listen, "http (admin)"))?,
        ),
        None => None,
    };
    let cert = match (&config.cert, &config.pkey) {
        (Some(c), Some(k)) if config.tls => {
            Some(tls::ReloadableCert::load(c, k).map_err(|e| StartError::Tls(e.to_string()))?)
        }
        _ => None,
    };
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let mut server_config = config.server_config();
    server_config.host_ips = host_ips(&config);
    if let Some(db) = &mut userdb {
        server_config.credentials = db.credentials(&config)?;
    }
    if let Some(rows) = fleet_status.as_ref().and_then(|f| f.rows.borrow().clone()) {
        server_config.credentials = fleet::credentials_of(&config, &rows);
    }
    let limits = stream::StreamLimits {
        idle_timeout: config.stream_idle_timeout,
        handshake_timeout: config.tls_handshake_timeout,
        max_per_ip: config.max_connections_per_ip,
        auth_timeout: config.stream_auth_timeout,
        max_total: config.max_connections,
    };
    let (epoch, unix_epoch) = (Instant::now(), unix_now());
    let shared = SharedState::new(&server_config);
    // Cores: one per UDP worker, and the main thread's (TCP and TLS), the
    // last. `bps-capacity` is split over the UDP workers; the main thread's
    // core gets a worker's share too.
    let cores = workers_wanted + 1;
    let shares = workers_wanted.max(1);
    let mut workers = worker::Workers::default();
    let nonce_key = fleet_status.as_ref().and_then(|f| f.nonce_key.get());
    let fast_path = xdp::FastPath::start(&config)?;
    for (index, sockets) in worker_sockets.into_iter().enumerate() {
        workers.spawn(worker::WorkerSetup {
            index,
            count: cores,
            sockets,
            config: server_config.shard(shares),
            epoch,
            unix_now: unix_epoch,
            seed,
            shared: shared.clone(),
            nonce_key,
            fast_path: fast_path.clone(),
        })?;
    }
    let workers = Rc::new(workers);
    let mut core = Server::new(server_config.shard(shares), epoch, unix_epoch, seed);
    core.set_shard(workers_wanted, cores, &shared);
    if let Some(key) = nonce_key {
        core.set_nonce_key(key);
    }
    let core = Rc::new(RefCell::new(core));
    let shell = new_shell(limits);
    udp_locals.sort();
    for local in &udp_locals {
        println!("turnd: listening on udp {local}");
        info!(%local, "listening on udp");
    }
    let mut stream_listeners = Vec::new();
    // With TLS configured, the TCP listeners serve TLS too (by first byte).
    let acceptor = cert.as_ref().map(|cert| tls::acceptor(cert.clone()));
    for l in tcp_listeners {
        let local = l.local_addr()?;
        stream_listeners.push((l, stream::ListenerKind::Tcp(acceptor.clone())));
        println!("turnd: listening on tcp {local}");
        info!(%local, "listening on tcp");
    }
    if let Some(acceptor) = &acceptor {
        for l in tls_listeners {
            let local = l.local_addr()?;
            stream_listeners.push((l, stream::ListenerKind::Tls(acceptor.clone())));
            println!("turnd: listening on tls {local}");
            info!(%local, "listening on tls");
        }
    }
    if !stream_listeners.is_empty() {
        let gate = std::sync::Arc::new(stream::ConnectionGate::new(
            limits.max_total,
            limits.max_per_ip,
        ));
        let _ = shell.gate.set(gate.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let proxy = config.proxy_protocol.then(|| {
            std::sync::Arc::new(proxy::TrustedProxies::new(
                config.proxy_protocol_trusted.clone(),
            ))
        });
        stream::spawn_acceptor(stream_listeners, gate, limits, proxy, tx)?;
        tokio::task::spawn_local(stream::serve_accepted(rx, shell.clone(), core.clone()));
    }
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    info!(
        relay_ips = ?config.relay_ips, min_port = config.min_port, max_port = config.max_port,
        workers = workers.count(), realm = %config.realm, users = config.users.len(), allow_loopback_peers = config.policy.allow_loopback,
        "turnd started"
    );
    if config.policy.allow_loopback && config.listening_ips.iter().any(|ip| !ip.is_loopback()) {
        warn!("allow-loopback-peers is on while listening on a non-loopback address: clients can relay into this host's loopback services");
    }
    let timers = tokio::task::spawn_local(timer_task(shell.clone(), core.clone()));
    if let Err(e) = notify::notify("READY=1") {
        warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }

    let pidfile = config.pidfile.clone();
    let config = Rc::new(RefCell::new(config));
    let http_state = Rc::new(http::HttpState {
        core: core.clone(),
        shell: shell.clone(),
        config: config.clone(),
        workers: workers.clone(),
        udp_listeners: udp_locals,
        started: Instant::now(),
        user_totals: RefCell::new(http::UserTotals::new(http::USER_TOTALS_CAP)),
        gather_lock: tokio::sync::Mutex::new(()),
        fleet: fleet_status.clone(),
        fast_path,
    });
    if let Some(status) = &fleet_status {
        let c = config.borrow();
        let userdb = c.redis_userdb.clone();
        let statsdb = c.redis_statsdb.clone().or(userdb.clone());
        if let Some(statsdb) = statsdb {
            tokio::task::spawn_local(fleet::run(
                status.clone(),
                userdb,
                statsdb,
                http_state.clone(),
                shared.quota.clone(),
            ));
        }
    }
    if let Some(l) = metrics_listener {
        let local = l.local_addr()?;
        tokio::task::spawn_local(http::serve(l, http_state.clone(), http::metrics));
        println!("turnd: listening on prometheus http://{local}/metrics");
        info!(%local, "prometheus metrics on /metrics");
    }
    if let Some(l) = admin_listener {
        let local = l.local_addr()?;
        tokio::task::spawn_local(http::serve(l, http_state.clone(), http::admin));
        println!("turnd: listening on admin http://{local}/");
        info!(%local, "admin API and status page");
    }
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    if let Some(db) = userdb {
        tokio::task::spawn_local(userdb_task(
            db,
            config.clone(),
            core.clone(),
            workers.clone(),
        ));
    }
    if let Some(p) = &pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            warn!(path = %p.display(), error = %e, "cannot write pidfile");
        }
    }
    if let Some(interval) = watchdog_interval() {
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let _ = notify::notify("WATCHDOG=1");
            }
        });
    }
    let drain = wait_for_shutdown(
        &cli,
        &config,
        &core,
        &workers,
        cert.as_deref(),
        fleet_status.as_deref(),
    )
    .await?;
    let _ = notify::notify("STOPPING=1");
    if !drain.is_zero() {
        core.borrow_mut().start_draining();
        workers.broadcast(|_| worker::Control::Drain).await;
        // The ledger counts every worker's allocations.
        let count = shared.quota.total();
        info!(
            allocations = count,
            drain_timeout_s = drain.as_secs(),
            "draining: no new allocations; existing ones keep relaying"
        );
        let deadline = tokio::time::Instant::now() + drain;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            if shared.quota.total() == 0 {
                info!("draining: every allocation has ended");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => { info!("draining: timeout reached"); break; }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = term.recv() => { info!("second signal: stopping now"); break; }
                _ = int.recv() => { info!("second signal: stopping now"); break; }
            }
        }
    }
    if let Some(p) = &pidfile {
        let _ = std::fs::remove_file(p);
    }
    timers.abort();
    let mut io = ShellIo {
        shell: &shell,
        core: &core,
    };
    let count = shared.quota.total();
    core.borrow_mut().close_all(&mut io);
    let mut stats = core.borrow().stats();
    stats += workers.stop().await;
    info!(allocations_closed = count, ?stats, "turnd stopped");
    Ok(())
}

/// Half of systemd's `WatchdogSec` (from `WATCHDOG_USEC`), when it applies to
/// this process.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Users `(name, long-term key)` and REST secrets, as read from the user
/// database.
type UserDbRows = (Vec<(String, [u8; 16])>, Vec<String>);

/// The user database as the server polls it: the path, the connection
/// (none after a failed poll), the identity (device, inode) of the file it
/// was opened on, and the last `data_version` seen.
struct UserDbWatch {
    path: std::path::PathBuf,
    db: Option<crate::userdb::UserDb>,
    identity: Option<(u64, u64)>,
    version: Option<u64>,
}

/// (device, inode) of the regular file at `path`.
fn file_identity(path: &std::path::Path) -> Result<(u64, u64), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !m.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    Ok((m.dev(), m.ino()))
}

impl UserDbWatch {
    fn open(path: &std::path::Path) -> Result<Self, StartError> {
        let identity = file_identity(path).ok();
        let db = crate::userdb::UserDb::open_existing(path)
            .map_err(|e| StartError::UserDb(e.to_string()))?;
        Ok(UserDbWatch {
            path: path.to_owned(),
            db: Some(db),
            identity,
            version: None,
        })
    }

    /// Credentials from the config plus the database's users and secrets.
    fn credentials(&mut self, config: &Config) -> Result<crate::auth::Credentials, StartError> {
        let (users, secrets) = self
            .read(&config.realm, config.use_auth_secret)
            .map_err(StartError::UserDb)?;
        info!(users = users.len(), secrets = secrets.len(), path = %self.path.display(), "user database loaded");
        Ok(config.credentials(&users, &secrets))
    }

    /// Reads the users of `realm` (and the secrets, when `secrets`) and
    /// notes the `data_version` they were read at.
    fn read(&mut self, realm: &str, secrets: bool) -> Result<UserDbRows, String> {
        let db = self.db.as_ref().ok_or("user database not open")?;
        let e = |e: crate::userdb::UserDbError| e.to_string();
        let version = db.data_version().map_err(e)?;
        let users = db.users(realm).map_err(e)?;
        let secrets = if secrets {
            db.secrets(realm).map_err(e)?
        } else {
            Vec::new()
        };
        self.version = Some(version);
        Ok((users, secrets))
    }

    /// One poll, blocking (SQLite waits up to its busy timeout, 2 s, for a
    /// lock): `Ok(None)` when nothing changed, `Ok(Some(rows))` when the
    /// file changed (another connection committed, or another file now
    /// stands at the path), `Err` (naming the file) when it cannot be read
    /// (missing, not a regular file, not a database, locked). After an
    /// error the connection is dropped: the next poll opens the file anew
    /// and reads it whole.
    fn poll(&mut self, realm: &str, secrets: bool) -> Result<Option<UserDbRows>, String> {
        let polled = self.poll_once(realm, secrets);
        if polled.is_err() {
            self.db = None;
            self.version = None;
        }
        polled
    }

    fn poll_once(&mut self, realm: &str, secrets: bool) -> Result<Option<UserDbRows>, String> {
        let identity = file_identity(&self.path)?;
        if self.db.is_none() || self.identity != Some(identity) {
            let db = crate::userdb::UserDb::open_existing(&self.path).map_err(|e| e.to_string())?;
            self.db = Some(db);
            self.identity = Some(identity);
            self.version = None;
        }
        let db = self.db.as_ref().ok_or("user database not open")?;
        let version = db.data_version().map_err(|e| e.to_string())?;
        if Some(version) == self.version {
            return Ok(None);
        }
        self.read(realm, secrets).map(Some)
    }
}

/// Polls the user database once a second, on a blocking thread (never on
/// the worker's), and swaps the credentials in when it changed (`turnd
/// user add` from another process, a new file put in place). While it
/// cannot be read (locked, deleted, garbage, a directory), the last users
/// read stay in force: one warning when that starts, one info line when it
/// is readable again.
async fn userdb_task(
    mut db: UserDbWatch,
    config: Rc<RefCell<Config>>,
    core: Rc<RefCell<Server>>,
    workers: Rc<worker::Workers>,
) {
    let mut tick = tokio::time::interval(USERDB_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let path = db.path.clone();
    let mut failing = false;
    loop {
        tick.tick().await;
        let (realm, secrets) = {
            let c = config.borrow();
            (c.realm.clone(), c.use_auth_secret)
        };
        let polled = tokio::task::spawn_blocking(move || {
            let r = db.poll(&realm, secrets);
            (db, r)
        })
        .await;
        let Ok((back, result)) = polled else {
            error!(path = %path.display(), "user database poll failed; no more polls");
            return;
        };
        db = back;
        match result {
            Ok(None) => {}
            Ok(Some((users, secrets))) => {
                info!(users = users.len(), secrets = secrets.len(), path = %path.display(), "user database loaded");
                let c = config.borrow().credentials(&users, &secrets);
                workers
                    .broadcast(|_| worker::Control::Credentials(Box::new(c.clone())))
                    .await;
                core.borrow_mut().set_credentials(c);
            }
            Err(e) => {
                if !failing {
                    warn!(path = %path.display(), error = %e, "user database unreadable: keeping the last users read until it is fixed");
                }
                failing = true;
                continue;
            }
        }
        if failing {
            info!(path = %path.display(), "user database readable again");
            failing = false;
        }
    }
}

/// SIGHUP: re-reads the configuration (and the user database, on a
/// blocking thread) and applies it while allocations keep relaying. A bad
/// file is logged and ignored.
async fn reload(
    cli: &Cli,
    config: &Rc<RefCell<Config>>,
    core: &Rc<RefCell<Server>>,
    workers: &Rc<worker::Workers>,
    fleet: Option<&fleet::FleetStatus>,
) {
    let mut fresh = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "SIGHUP: configuration not reloaded");
            return;
        }
    };
    {
        let old = config.borrow();
        fresh.relay_ips = old.relay_ips.clone();
        if fresh.listening_ips != old.listening_ips || fresh.listening_port != old.listening_port {
            warn!(
                "SIGHUP: listening addresses changed in the file; they take effect at the next restart"
            );
        }
        if fresh.proxy_protocol != old.proxy_protocol
            || fresh.proxy_protocol_trusted != old.proxy_protocol_trusted
        {
            warn!("SIGHUP: proxy-protocol options changed in the file; they take effect at the next restart");
        }
    }
    let mut server_config = fresh.server_config();
    server_config.host_ips = host_ips(&fresh);
    if let Some(path) = fresh.userdb.clone() {
        let (realm, secrets) = (fresh.realm.clone(), fresh.use_auth_secret);
        // Off this thread (the main thread): a locked database is waited for up to
        // SQLite's busy timeout.
        let read = tokio::task::spawn_blocking(move || {
            let mut db = UserDbWatch::open(&path).map_err(|e| e.to_string())?;
            db.read(&realm, secrets)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match read {
            Ok((users, secrets)) => {
                info!(
                    users = users.len(),
                    secrets = secrets.len(),
                    "user database loaded"
                );
                server_config.credentials = fresh.credentials(&users, &secrets);
            }
            Err(e) => {
                error!(error = %e, "SIGHUP: user database unreadable; configuration not reloaded");
                return;
            }
        }
    }
    if fresh.redis_userdb.is_some() {
        // Never waits on Redis: the users last read from it.
        if let Some(rows) = fleet.and_then(|f| f.rows.borrow().clone()) {
            server_config.credentials = fleet::credentials_of(&fresh, &rows);
        }
    }
    if let Some(f) = fleet {
        f.realm.replace(fresh.realm.clone());
    }
    // Relay addresses and port ranges stay as started.
    let n = workers.count();
    let revoked = core
        .borrow_mut()
        .reconfigure(Instant::now(), server_config.shard(workers.shares()));
    let allocations = core.borrow().allocation_count();
    *config.borrow_mut() = fresh;
    let workers = workers.clone();
    tokio::task::spawn_local(async move {
        let (a, r) = workers.reconfigure(&server_config).await;
        info!(
            allocations = allocations + a,
            revoked = revoked + r,
            workers = n,
            "configuration reloaded"
        );
    });
}

async fn wait_for_shutdown(
    cli: &Cli,
    config: &Rc<RefCell<Config>>,
    core: &Rc<RefCell<Server>>,
    workers: &Rc<worker::Workers>,
    cert: Option<&tls::ReloadableCert>,
    fleet: Option<&fleet::FleetStatus>,
) -> io::Result<Duration> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(config.borrow().drain_timeout); }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(Duration::ZERO); }
            n = workers.first_gone() => {
                // Never half-alive: its clients' datagrams would go unserved.
                return Err(io::Error::other(format!("relay worker {n} stopped unexpectedly")));
            }
            _ = hup.recv() => {
                info!("SIGHUP: reloading configuration");
                if let Some(Err(e)) = logging::reopen_log_file() {
                    error!(error = %e, "SIGHUP: log file not reopened");
                }
                reload(cli, config, core, workers, fleet).await;
                if let Some(cert) = cert {
                    match cert.reload() {
                        Ok(()) => info!("SIGHUP: TLS certificate reloaded; existing connections keep theirs"),
                        Err(e) => error!(error = %e, "SIGHUP: TLS certificate not reloaded; the old one stays in force"),
                    }
                }
            }
        }
    }
}
