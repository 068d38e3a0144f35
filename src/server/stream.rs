//! STUN/TURN over TCP and TLS (RFC 8656 section 3.1): one task per
//! connection reads frames (STUN messages and padded ChannelData, RFC 8656
//! section 12.5) into the core; a second task writes what the core and the
//! relay sockets queue for the client.
//!
//! Where it runs: a dedicated acceptor thread (`turnd-accept`, its own
//! current-thread runtime, no UDP socket) accepts on every TCP and TLS
//! listener, applies `max-connections` and `max-connections-per-ip` (a
//! refused connection is closed before anything is read from it; see
//! [`ConnectionGate`]), runs the TLS handshakes and reads until the
//! connection holds its first complete frame, so a client that trickles
//! bytes or stays silent never wakes the main thread. The connection and what
//! was read are then handed to the main thread over a channel: its socket
//! leaves the acceptor's reactor (`into_std`) and joins the main thread's
//! (`from_std`), for TLS inside the same `TlsStream` ([`MovableTcp`]), so
//! rustls state is kept. The main thread then reads frames into its core,
//! which holds the TCP/TLS allocations (UDP clients are on the UDP workers'
//! cores) and shares the process's quotas, ports and limiters. The
//! CPU-heavy, attacker-paced part of a connection stays off the main
//! thread, and no TCP or TLS work ever runs on a UDP worker.
//!
//! Behind a load balancer (`proxy-protocol`), the acceptor first closes
//! connections from sources outside `proxy-protocol-trusted`, then reads
//! the PROXY header ([`super::proxy`]) within `tls-handshake-timeout`; the
//! client address it names is the connection's from then on (the 5-tuple,
//! so XOR-MAPPED-ADDRESS, nonces, client lists, logs and metrics), and the
//! connection limits are applied to it. With TLS configured, a connection
//! to a plain TCP listener whose first byte opens a TLS handshake record is
//! served as TLS ([`ListenerKind::Tcp`]).
//!
//! A connection is the allocation's 5-tuple: closing it deletes the
//! allocation. Garbage or an oversized frame closes that connection only.
//! Before it has an allocation (or, as an RFC 6062 data connection, a
//! successful ConnectionBind), a connection must get one within
//! `stream-auth-timeout` of its accept, handshake included, however it
//! trickles bytes, and is also closed after `stream-idle-timeout` of silence;
//! until then it reads at most [`PREAUTH_READ_CHUNK`] bytes at a time and
//! answers through the worker's shared output buffer, so it costs a few KiB.
//! TLS handshakes must finish within `tls-handshake-timeout`. What waits to
//! be written to a slow client is capped at [`MAX_PENDING_BYTES`] (beyond,
//! relayed datagrams for it are dropped, as UDP would be), so a slow or
//! hostile client never stalls anyone else. RFC 6062 pipes count their bytes
//! in the core's statistics and are throttled by `max-bps` and
//! `bps-capacity` ([`Server::account_tcp_pipe`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::proxy::{read_header as read_proxy_header, ProxySource, TrustedProxies};
use super::{Shell, ShellIo, OUT_BUFFER};
use crate::stun::stream_frame_len;
use crate::turn::{FiveTuple, Server, Transport};

/// Most bytes queued for one client before relayed data for it is dropped.
pub const MAX_PENDING_BYTES: usize = 512 * 1024;
/// Bytes read from a stream at a time (and the chunk an RFC 6062 pipe
/// accounts at once: below the smallest bandwidth burst, 64 KiB).
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read at a time from a connection that has no allocation yet: a
/// STUN request is a few hundred bytes, and a connection that never
/// authenticates should hold no more than this.
const PREAUTH_READ_CHUNK: usize = 1024;
/// How long an RFC 6062 pipe over its bandwidth budget waits before asking
/// again.
const PIPE_THROTTLE_WAIT: Duration = Duration::from_millis(10);

/// Limits of stream connections.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Close a connection without an allocation after this long without data.
    pub idle_timeout: Duration,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Concurrent connections per source IP address.
    pub max_per_ip: u32,
    /// A connection must get an allocation (or bind as an RFC 6062 data
    /// connection) within this long of its accept (`stream-auth-timeout`).
    pub auth_timeout: Duration,
    /// Concurrent connections in all (`max-connections`).
    pub max_total: u32,
}

/// The write side of one client connection, shared with relay tasks.
#[derive(Debug, Default)]
pub(super) struct StreamConn {
    pending: RefCell<Vec<u8>>,
    /// End offsets of the frames in `pending`: each is written on its own
    /// (one TLS record per STUN or ChannelData message; some clients, such
    /// as coturn's uclient over TLS, read one message per record).
    ends: RefCell<Vec<usize>>,
    wake: Notify,
    closed: Cell<bool>,
    /// Stop writing after the pending bytes and give the write half back
    /// (RFC 6062 ConnectionBind turns the connection into a raw pipe).
    handover: Cell<bool>,
    dropped: Cell<u64>,
}

impl StreamConn {
    /// Queues `bytes` for the client; drops them (counted) when the client
    /// is not reading fast enough.
    pub(super) fn queue(&self, bytes: &[u8]) {
        if self.closed.get() {
            return;
        }
        let mut p = self.pending.borrow_mut();
        if p.len() + bytes.len() > MAX_PENDING_BYTES {
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        p.extend_from_slice(bytes);
        self.ends.borrow_mut().push(p.len());
        drop(p);
        self.wake.notify_one();
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.notify_one();
    }
}

async fn writer<W: AsyncWrite + Unpin>(mut w: W, conn: Rc<StreamConn>) -> Option<W> {
    let mut chunk = Vec::new();
    let mut ends = Vec::new();
    loop {
        if conn.pending.borrow().is_empty() {
            if conn.handover.get() && !conn.closed.get() {
                return Some(w);
            }
            if conn.closed.get() {
                break;
            }
            conn.wake.notified().await;
            continue;
        }
        std::mem::swap(&mut *conn.pending.borrow_mut(), &mut chunk);
        std::mem::swap(&mut *conn.ends.borrow_mut(), &mut ends);
        let mut start = 0;
        let mut failed = None;
        for &end in &ends {
            if let Err(e) = w.write_all(&chunk[start..end]).await {
                failed = Some(e);
                break;
            }
            start = end;
        }
        if failed.is_none() {
            failed = w.flush().await.err();
        }
        if let Some(e) = failed {
            debug!(error = %e, "write to client failed");
            conn.closed.set(true);
            break;
        }
        chunk.clear();
        ends.clear();
    }
    let _ = w.shutdown().await;
    None
}

/// Why [`ConnectionGate::admit`] refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// `max-connections` connections are open.
    Total,
    /// `max-connections-per-ip` connections are open from this address.
    PerIp,
}

/// The connection limits shared by the acceptor thread (which admits) and
/// the main thread (where a connection ends): `max-connections` in all and
/// `max-connections-per-ip`, with counters of what was refused.
#[derive(Debug)]
pub(super) struct ConnectionGate {
    max_total: usize,
    max_per_ip: u32,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    open: AtomicUsize,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    refused_denied: AtomicU64,
}

impl ConnectionGate {
    /// A gate for at most `max_total` connections, `max_per_ip` per address.
    pub(super) fn new(max_total: u32, max_per_ip: u32) -> Self {
        ConnectionGate {
            max_total: max_total as usize,
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            refused_total: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_denied: AtomicU64::new(0),
        }
    }

    /// Counts a new connection from `ip`: a permit that releases it when
    /// dropped.
    ///
    /// # Errors
    /// [`Refused`] (and counts it) when either limit is reached.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        self.admit_unattributed()?.attribute(ip)
    }

    /// Counts a new connection whose client is not known yet (its PROXY
    /// header is still to come) against `max-connections` only; the permit
    /// is given its client with [`ConnectionPermit::attribute`].
    ///
    /// # Errors
    /// [`Refused::Total`] (and counts it) when `max-connections` are open.
    pub(super) fn admit_unattributed(self: &Arc<Self>) -> Result<ConnectionPermit, Refused> {
        let _m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max_total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            gate: self.clone(),
            ip: None,
        })
    }

    fn release(&self, ip: Option<IpAddr>) {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = ip {
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections admitted and not yet ended (handshakes included).
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at accept: (by `max-connections`, by
    /// `max-connections-per-ip`).
    /// Counts a connection closed because `allowed-client-ip` /
    /// `denied-client-ip` refuse its client.
    pub(super) fn refuse_denied(&self) {
        self.refused_denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed by the client allow and deny lists.
    pub(super) fn refused_denied(&self) -> u64 {
        self.refused_denied.load(Ordering::Relaxed)
    }

    pub(super) fn refused(&self) -> (u64, u64) {
        (
            self.refused_total.load(Ordering::Relaxed),
            self.refused_per_ip.load(Ordering::Relaxed),
        )
    }
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub(super) struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    /// The client it counts for under `max-connections-per-ip`; `None`
    /// while a PROXY header is awaited.
    ip: Option<IpAddr>,
}

impl ConnectionPermit {
    /// Counts this connection for client `ip` under
    /// `max-connections-per-ip` (once; a permit that has its client already
    /// is returned as it is).
    ///
    /// # Errors
    /// [`Refused::PerIp`] (and counts it, and gives the place back) when
    /// `ip` has its `max-connections-per-ip` open.
    pub(super) fn attribute(mut self, ip: IpAddr) -> Result<Self, Refused> {
        if self.ip.is_some() {
            return Ok(self);
        }
        let gate = self.gate.clone();
        let mut m = gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= gate.max_per_ip {
            if *n == 0 {
                m.remove(&ip);
            }
            gate.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            drop(m);
            return Err(Refused::PerIp);
        }
        *n += 1;
        self.ip = Some(ip);
        Ok(self)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.gate.release(self.ip);
    }
}

/// A TCP stream that can leave the runtime it was accepted on: the TLS
/// handshake runs over it on the acceptor thread, then [`detach`] takes the
/// socket off that thread's reactor and, on the main thread, [`attach`]
/// registers it with the main thread's, inside the same `TlsStream` (whose rustls state,
/// including any data read past the handshake, comes along).
///
/// [`detach`]: MovableTcp::detach
/// [`attach`]: MovableTcp::attach
#[derive(Debug)]
pub(super) enum MovableTcp {
    /// Registered with the current thread's reactor.
    Registered(TcpStream),
    /// Between runtimes.
    Detached(std::net::TcpStream),
    /// A failed move left nothing.
    Gone,
}

impl MovableTcp {
    /// Deregisters the socket from this thread's reactor.
    fn detach(&mut self) -> io::Result<()> {
        match std::mem::replace(self, MovableTcp::Gone) {
            MovableTcp::Registered(s) => *self = MovableTcp::Detached(s.into_std()?),
            other => *self = other,
        }
        Ok(())
    }

    /// Registers the socket with this thread's reactor (call inside it).
    fn attach(&mut self) -> io::Result<()> {
        match std::mem::replace(self, MovableTcp::Gone) {
            MovableTcp::Detached(s) => *self = MovableTcp::Registered(TcpStream::from_std(s)?),
            other => *self = other,
        }
        Ok(())
    }

    fn registered(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self {
            MovableTcp::Registered(s) => Ok(Pin::new(s)),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for MovableTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().registered() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for MovableTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().registered() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().registered() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().registered() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// A connection the acceptor thread admitted (for TLS, handshook) and read
/// a first complete frame from, on its way to the main thread.
pub(super) struct Accepted {
    stream: Handed,
    /// What was read: one complete frame, maybe the start of the next.
    first: BytesMut,
    /// The client: the connection's source, or the one its PROXY header
    /// names.
    peer: SocketAddr,
    server: SocketAddr,
    /// `stream-auth-timeout` after the accept.
    deadline: Instant,
    permit: ConnectionPermit,
}

enum Handed {
    Tcp(MovableTcp),
    Tls(Box<tokio_rustls::server::TlsStream<MovableTcp>>),
}

/// What a stream listener speaks.
#[derive(Clone)]
pub(super) enum ListenerKind {
    /// STUN/TURN over TCP. With a TLS acceptor (TLS is configured), a
    /// connection whose first byte opens a TLS handshake record is served
    /// as TLS on the same port ([`starts_with_tls`]), as coturn does.
    Tcp(Option<TlsAcceptor>),
    /// STUN/TURN over TLS only (`tls-listening-port`).
    Tls(TlsAcceptor),
}

/// The first byte of a TLS handshake record: content type 22. See RFC
/// 8446, section 5.1 (and RFC 5246, section 6.2.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Starts the acceptor thread, `turnd-accept`, with its own current-thread
/// runtime: it accepts on every TCP and TLS listener, reads the PROXY
/// header when `proxy` is `Some` (see [`super::proxy`]), applies
/// `max-connections` and `max-connections-per-ip` (a refused connection is
/// closed before any read, or, behind a load balancer, right after its
/// PROXY header), runs the TLS handshakes, reads each connection's first
/// complete frame, and sends the connection on `to_worker`. So neither
/// accepting nor a handshake (CPU work, and a slow client's round trips)
/// ever runs on a UDP worker thread.
///
/// # Errors
/// When the thread or its runtime cannot be started.
pub(super) fn spawn_acceptor(
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    gate: Arc<ConnectionGate>,
    limits: StreamLimits,
    proxy: Option<Arc<TrustedProxies>>,
    to_worker: mpsc::UnboundedSender<Accepted>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("turnd-accept".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for (listener, kind) in listeners {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let acceptor = Acceptor {
                                kind,
                                gate: gate.clone(),
                                limits,
                                proxy: proxy.clone(),
                                to_worker: to_worker.clone(),
                            };
                            tasks.spawn(accept_loop(l, acceptor));
                        }
                        Err(e) => warn!(error = %e, "cannot register a tcp listener"),
                    }
                }
                drop(to_worker);
                while tasks.join_next().await.is_some() {}
            });
        })?;
    Ok(())
}

/// How long an accept loop sleeps after a failed `accept`.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// An accept loop logs its failures at most this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How an accept loop weathers a failed `accept` (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM, ...): the loop sleeps [`ACCEPT_BACKOFF`] instead of spinning on
/// a listener that stays readable, and this logs one warning per
/// [`ACCEPT_LOG_EVERY`] at most, with the failures since the last one, and
/// one info line when an accept works again ([`AcceptFailures::on_success`]).
///
/// With a spare descriptor ([`AcceptFailures::with_spare`]), when
/// descriptors ran out (EMFILE, ENFILE) it also sheds the oldest pending
/// connection: it closes the spare, accepts and closes that connection at
/// once, then opens the spare again. The client sees its connection closed
/// instead of waiting unserved in the backlog.
pub(super) struct AcceptFailures {
    /// Which listener, for the log.
    what: &'static str,
    /// `/dev/null`, held to be given up for one accept.
    spare: Option<std::fs::File>,
    /// Failed accepts since the last warning.
    failures: u64,
    /// Connections shed since the last warning.
    shed: u64,
    last_log: Option<Instant>,
}

impl AcceptFailures {
    /// Back-off and rate-limited logging only (an RFC 6062 relay listener:
    /// one per allocation, so no spare descriptor each).
    pub(super) fn new(what: &'static str) -> Self {
        AcceptFailures {
            what,
            spare: None,
            failures: 0,
            shed: 0,
            last_log: None,
        }
    }

    /// [`AcceptFailures::new`] holding one spare descriptor to shed pending
    /// connections with when descriptors run out.
    pub(super) fn with_spare(what: &'static str) -> Self {
        AcceptFailures {
            spare: open_spare(),
            ..Self::new(what)
        }
    }

    /// After a successful accept: ends a run of failures, with one info
    /// line counting those not yet logged.
    pub(super) fn on_success(&mut self, local: Option<SocketAddr>) {
        if self.last_log.is_some() {
            info!(
                listener = self.what,
                ?local,
                failures = self.failures,
                shed = self.shed,
                "accept works again (failures and shed connections since the last warning)"
            );
            self.last_log = None;
            self.failures = 0;
            self.shed = 0;
        }
    }

    /// Handles `accept`'s error `e` on `listener` (at `local`): sheds a
    /// pending connection when descriptors ran out and a spare is held,
    /// logs when [`ACCEPT_LOG_EVERY`] has passed since the last warning.
    /// The caller then sleeps [`ACCEPT_BACKOFF`].
    pub(super) fn on_error(
        &mut self,
        listener: &TcpListener,
        local: Option<SocketAddr>,
        e: io::Error,
    ) {
        self.failures += 1;
        let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if out_of_fds {
            if let Some(spare) = self.spare.take() {
                drop(spare);
                // Non-blocking: WouldBlock when the backlog is empty.
                if let Ok((conn, _)) = socket2::SockRef::from(listener).accept() {
                    drop(conn);
                    self.shed += 1;
                }
                self.spare = open_spare();
            }
        }
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY)
        {
            warn!(
                listener = self.what,
                ?local,
                error = %e,
                failures = self.failures,
                shed = self.shed,
                "accept failed: backing off (logged at most every {} s; `shed` connections were closed unserved)",
                ACCEPT_LOG_EVERY.as_secs()
            );
            self.last_log = Some(now);
            self.failures = 0;
            self.shed = 0;
        }
    }
}

/// The spare descriptor of [`AcceptFailures`]: `/dev/null`, read-only.
fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// What one accept loop needs to prepare its connections.
#[derive(Clone)]
struct Acceptor {
    kind: ListenerKind,
    gate: Arc<ConnectionGate>,
    limits: StreamLimits,
    /// `proxy-protocol-trusted`, when `proxy-protocol` is on.
    proxy: Option<Arc<TrustedProxies>>,
    to_worker: mpsc::UnboundedSender<Accepted>,
}

/// Accepts TCP (or TLS) connections on `listener` until the main thread is
/// gone. Runs on the acceptor thread.
async fn accept_loop(listener: TcpListener, acceptor: Acceptor) {
    let local = listener.local_addr().ok();
    let what = match acceptor.kind {
        ListenerKind::Tcp(_) => "tcp",
        ListenerKind::Tls(_) => "tls",
    };
    let mut failures = AcceptFailures::with_spare(what);
    while !acceptor.to_worker.is_closed() {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                failures.on_error(&listener, local, e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        failures.on_success(local);
        let deadline = Instant::now() + acceptor.limits.auth_timeout;
        // Behind a load balancer `max-connections-per-ip` counts the client
        // its PROXY header names, once read; without, the source, before
        // any read.
        let admitted = match &acceptor.proxy {
            Some(trusted) if !trusted.trusts(peer.ip()) => {
                debug!(%peer, "proxy-protocol: source outside proxy-protocol-trusted: closed");
                continue;
            }
            Some(_) => acceptor.gate.admit_unattributed(),
            None => acceptor.gate.admit(peer.ip()),
        };
        let permit = match admitted {
            Ok(p) => p,
            Err(refused) => {
                log_refused(peer, refused);
                continue;
            }
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match prepare(stream, peer, server, deadline, permit, &acceptor).await {
                Ok(accepted) => {
                    let _ = acceptor.to_worker.send(accepted);
                }
                Err(reason) => debug!(%peer, %reason, "connection closed before its first request"),
            }
        });
    }
}

/// Logs (at debug) a connection from `peer` that a limit refused.
fn log_refused(peer: SocketAddr, refused: Refused) {
    match refused {
        Refused::Total => debug!(%peer, "max-connections reached: refused"),
        Refused::PerIp => debug!(%peer, "too many connections from this address: refused"),
    }
}

/// Readies a connection accepted from `via` for the main thread: its PROXY
/// header (when `proxy-protocol` is on) and the client's
/// `max-connections-per-ip`, TLS detection on a plain TCP listener, the
/// TLS handshake, and its first complete frame.
///
/// # Errors
/// Why the connection is closed unanswered: a missing, malformed or late
/// PROXY header, a connection limit, a failed or late handshake, or what
/// [`until_first_frame`] says.
async fn prepare(
    mut stream: TcpStream,
    via: SocketAddr,
    server: SocketAddr,
    deadline: Instant,
    permit: ConnectionPermit,
    acceptor: &Acceptor,
) -> Result<Accepted, String> {
    let limits = acceptor.limits;
    let handshake_limit = limits.handshake_timeout.min(limits.auth_timeout);
    let (peer, permit) = match acceptor.proxy {
        None => (via, permit),
        Some(_) => {
            let header = tokio::time::timeout(handshake_limit, read_proxy_header(&mut stream));
            let peer = match header.await {
                Ok(Ok(ProxySource::Client(client))) => {
                    debug!(%client, %via, "proxy-protocol: client address from the PROXY header");
                    client
                }
                Ok(Ok(ProxySource::Local)) => via,
                Ok(Err(e)) => return Err(format!("proxy-protocol: {e}")),
                Err(_) => {
                    return Err(
                        "proxy-protocol: no PROXY header within tls-handshake-timeout".into(),
                    )
                }
            };
            match permit.attribute(peer.ip()) {
                Ok(permit) => (peer, permit),
                Err(refused) => {
                    log_refused(peer, refused);
                    return Err("refused by max-connections-per-ip".into());
                }
            }
        }
    };
    let tls = match &acceptor.kind {
        ListenerKind::Tls(a) => Some(a.clone()),
        ListenerKind::Tcp(None) => None,
        ListenerKind::Tcp(Some(a)) => starts_with_tls(&stream, deadline, limits.idle_timeout)
            .await?
            .then(|| a.clone()),
    };
    let stream = MovableTcp::Registered(stream);
    let ready = match tls {
        None => until_first_frame(stream, deadline, limits.idle_timeout)
            .await
            .map(|(mut s, first)| s.detach().map(|()| (Handed::Tcp(s), first)))?,
        Some(tls) => match tokio::time::timeout(handshake_limit, tls.accept(stream)).await {
            Ok(Ok(tls_stream)) => until_first_frame(tls_stream, deadline, limits.idle_timeout)
                .await
                .map(|(mut s, first)| {
                    s.get_mut()
                        .0
                        .detach()
                        .map(|()| (Handed::Tls(Box::new(s)), first))
                })?,
            Ok(Err(e)) => return Err(format!("tls handshake failed: {e}")),
            Err(_) => return Err("tls handshake timed out".into()),
        },
    };
    let (handed, first) = ready.map_err(|e| format!("cannot hand the connection over: {e}"))?;
    Ok(Accepted {
        stream: handed,
        first,
        peer,
        server,
        deadline,
        permit,
    })
}

/// Waits (within `deadline`, without a silence of `idle`) for the first
/// byte of a connection to a plain TCP listener and says whether it opens
/// a TLS handshake record. Unambiguous: a STUN message starts with the bits
/// 00 and ChannelData with 01 (RFC 8656, section 12), so neither starts
/// with 0x16. Nothing is consumed.
///
/// # Errors
/// The connection closed, failed or stayed silent.
async fn starts_with_tls(
    stream: &TcpStream,
    deadline: Instant,
    idle: Duration,
) -> Result<bool, String> {
    let mut first = [0u8; 1];
    let limit = (Instant::now() + idle).min(deadline);
    match tokio::time::timeout_at(limit.into(), stream.peek(&mut first)).await {
        Ok(Ok(0)) => Err("closed by client".into()),
        Ok(Ok(_)) => Ok(first[0] == TLS_HANDSHAKE_RECORD),
        Ok(Err(e)) => Err(format!("read error: {e}")),
        Err(_) if Instant::now() >= deadline => {
            Err("no allocation within stream-auth-timeout".into())
        }
        Err(_) => Err("idle without an allocation".into()),
    }
}

/// Reads from a new connection until it holds one complete frame (a STUN
/// message or ChannelData), within `deadline` and without a silence of
/// `idle`, on the acceptor thread: a client that trickles bytes or sends
/// nothing never costs a UDP worker anything. Returns the stream and what
/// was read.
///
/// # Errors
/// Why the connection is to be closed: it closed, failed, sent bytes that
/// are no frame, or ran out of time.
async fn until_first_frame<S: AsyncRead + Unpin>(
    mut stream: S,
    deadline: Instant,
    idle: Duration,
) -> Result<(S, BytesMut), String> {
    let mut buf = BytesMut::new();
    loop {
        match stream_frame_len(&buf) {
            Ok(Some(_)) => return Ok((stream, buf)),
            Ok(None) => {}
            Err(e) => return Err(format!("protocol error: {e}")),
        }
        if buf.capacity() - buf.len() < PREAUTH_READ_CHUNK {
            buf.reserve(PREAUTH_READ_CHUNK);
        }
        let limit = (Instant::now() + idle).min(deadline);
        match tokio::time::timeout_at(limit.into(), stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed by client".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("read error: {e}")),
            Err(_) if Instant::now() >= deadline => {
                return Err("no allocation within stream-auth-timeout".into())
            }
            Err(_) => return Err("idle without an allocation".into()),
        }
    }
}

/// The main thread's side of the acceptor: serves each connection it hands over
/// until the acceptor thread is gone.
pub(super) async fn serve_accepted(
    mut from_acceptor: mpsc::UnboundedReceiver<Accepted>,
    shell: Rc<Shell>,
    core: Rc<RefCell<Server>>,
) {
    while let Some(a) = from_acceptor.recv().await {
        let shell = shell.clone();
        let core = core.clone();
        tokio::task::spawn_local(async move {
            let Accepted {
                stream,
                first,
                peer,
                server,
                deadline,
                permit,
            } = a;
            let transport = match &stream {
                Handed::Tcp(_) => Transport::Tcp,
                Handed::Tls(_) => Transport::Tls,
            };
            let ft = FiveTuple {
                client: peer,
                server,
                transport,
            };
            // Behind a load balancer two connections could claim one client
            // address: the second must not take the first's 5-tuple.
            if shell.conns.borrow().contains_key(&ft) || core.borrow().allocation(&ft).is_some() {
                debug!(client = %peer, "a connection with this 5-tuple is open: closed");
                return;
            }
            // A client the allow and deny lists refuse gets nothing, not
            // even an open connection (the lists may change on SIGHUP, so
            // they are read here, from the core's configuration).
            if !core.borrow().config().client_policy.admits(peer.ip()) {
                if let Some(gate) = shell.gate.get() {
                    gate.refuse_denied();
                }
                debug!(client = %peer, "client refused by allowed-client-ip/denied-client-ip: closed");
                return;
            }
            let moved = match stream {
                Handed::Tcp(mut s) => match s.attach() {
                    Ok(()) => {
                        serve(s, ft, first, deadline, &shell, &core).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Handed::Tls(mut s) => match s.get_mut().0.attach() {
                    Ok(()) => {
                        serve(*s, ft, first, deadline, &shell, &core).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = moved {
                debug!(%peer, error = %e, "cannot take the connection over");
            }
            drop(permit);
        });
    }
}

/// Serves one client connection, starting with the bytes `first` read on
/// the acceptor thread, until it closes, then deletes its
/// allocation. Until the connection has an allocation (or is bound as an
/// RFC 6062 data connection) it must get one by `deadline` and may not be
/// silent for `stream-idle-timeout`; until then it reads a little at a time
/// into a small buffer and writes its answers through the worker's shared
/// output buffer, so a connection that never authenticates costs little.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    ft: FiveTuple,
    first: BytesMut,
    deadline: Instant,
    shell: &Rc<Shell>,
    core: &Rc<RefCell<Server>>,
) {
    let (mut reader, write_half) = tokio::io::split(stream);
    let conn = Rc::new(StreamConn::default());
    shell.conns.borrow_mut().insert(ft, conn.clone());
    let writer_task = tokio::task::spawn_local(writer(write_half, conn.clone()));
    debug!(client = %ft.client, transport = ?ft.transport, "connection opened");

    let mut buf = first;
    let mut authenticated = false;
    let reason: String = 'conn: loop {
        loop {
            match stream_frame_len(&buf) {
                Ok(Some(n)) => {
                    let frame = buf.split_to(n);
                    let bound = {
                        let mut out = shell.stream_out.borrow_mut();
                        if out.len() < OUT_BUFFER {
                            out.resize(OUT_BUFFER, 0);
                        }
                        let output = {
                            let mut io = ShellIo { shell, core };
                            core.borrow_mut().handle_client_input(
                                Instant::now(),
                                ft,
                                &frame,
                                &mut out,
                                &mut io,
                            )
                        };
                        shell.perform(output, &frame, &out)
                    };
                    if let Some(id) = bound {
                        // RFC 6062 section 5.4: from now on raw bytes to and from the peer.
                        shell.conns.borrow_mut().remove(&ft);
                        conn.handover.set(true);
                        conn.wake.notify_one();
                        let write_half = writer_task.await.ok().flatten();
                        let peer_stream = shell.tcp_pending.borrow_mut().remove(&id);
                        match (write_half, peer_stream) {
                            (Some(w), Some(peer)) => {
                                let client = reader.unsplit(w);
                                pipe(id, client, peer, buf, shell, core).await;
                            }
                            _ => debug!(
                                connection_id = id,
                                "tcp relay connection gone before it could be piped"
                            ),
                        }
                        core.borrow_mut().handle_tcp_connection_closed(id);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn format!("protocol error: {e}"),
            }
        }
        if conn.closed.get() {
            break "write failed".into();
        }
        let has_allocation = core.borrow().allocation(&ft).is_some();
        authenticated |= has_allocation;
        // Small reads until authenticated: a frame is read in pieces.
        let chunk = if authenticated {
            READ_CHUNK
        } else {
            PREAUTH_READ_CHUNK
        };
        if buf.capacity() - buf.len() < chunk {
            buf.reserve(chunk);
        }
        let read = reader.read_buf(&mut buf);
        let result = if has_allocation {
            Ok(read.await)
        } else {
            let idle = Instant::now() + shell.limits.idle_timeout;
            let limit = if authenticated {
                idle
            } else {
                idle.min(deadline)
            };
            tokio::time::timeout_at(limit.into(), read)
                .await
                .map_err(|_| Instant::now() >= deadline && !authenticated)
        };
        match result {
            Ok(Ok(0)) => break "closed by client".into(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break format!("read error: {e}"),
            Err(true) => break "no allocation within stream-auth-timeout".into(),
            Err(false) => break "idle without an allocation".into(),
        }
    };

    shell.conns.borrow_mut().remove(&ft);
    conn.close();
    {
        let mut io = ShellIo { shell, core };
        core.borrow_mut().handle_connection_closed(ft, &mut io);
    }
    let _ = writer_task.await;
    let dropped = conn.dropped.get();
    if dropped > 0 {
        info!(client = %ft.client, dropped, "slow client: relayed datagrams dropped");
    }
    debug!(client = %ft.client, transport = ?ft.transport, %reason, "connection closed");
}

/// Pipes raw bytes between a client data connection and its peer (RFC 6062)
/// until both sides have closed, either fails, or the allocation goes.
/// Back-pressure, not loss: a side that does not read stops the other
/// side's reads, and so does `max-bps` or `bps-capacity` (each chunk is
/// accounted with [`Server::account_tcp_pipe`] before it is written; over
/// budget, the chunk waits and nothing more is read from that side).
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
    id: u32,
    client: S,
    peer: TcpStream,
    leftover: BytesMut,
    shell: &Rc<Shell>,
    core: &Rc<RefCell<Server>>,
) {
    let cut = Rc::new(Notify::new());
    shell.tcp_piped.borrow_mut().insert(id, cut.clone());
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut peer_read, mut peer_write) = peer.into_split();
    let up = pipe_half(id, true, &mut client_read, &mut peer_write, leftover, core);
    let down = pipe_half(
        id,
        false,
        &mut peer_read,
        &mut client_write,
        BytesMut::new(),
        core,
    );
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => {
            debug!(connection_id = id, result = ?r, "tcp relay connection ended");
        }
        _ = cut.notified() => debug!(connection_id = id, "tcp relay connection cut: allocation gone"),
    }
    shell.tcp_piped.borrow_mut().remove(&id);
}

/// One direction of an RFC 6062 pipe: `first` (bytes the client sent after
/// its ConnectionBind), then everything `from` sends, to `to`, accounted
/// and throttled chunk by chunk; at the end of `from`, shuts `to` down.
/// Returns the bytes moved.
async fn pipe_half<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    id: u32,
    to_peer: bool,
    from: &mut R,
    to: &mut W,
    first: BytesMut,
    core: &Rc<RefCell<Server>>,
) -> io::Result<u64> {
    let mut moved = 0u64;
    let mut buf = first;
    loop {
        while !buf.is_empty() {
            let n = buf.len().min(READ_CHUNK);
            while !core
                .borrow_mut()
                .account_tcp_pipe(Instant::now(), id, to_peer, n)
            {
                tokio::time::sleep(PIPE_THROTTLE_WAIT).await;
            }
            to.write_all(&buf[..n]).await?;
            let _ = buf.split_to(n);
            moved += n as u64;
        }
        buf.clear();
        if buf.capacity() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let mut limited = (&mut *from).take(READ_CHUNK as u64);
        if limited.read_buf(&mut buf).await? == 0 {
            to.shutdown().await?;
            return Ok(moved);
        }
    }
}

/// Binds the listener of an RFC 6062 TCP relay. `SO_REUSEPORT` lets the
/// server's outgoing connections for Connect use the same address.
pub(super) fn bind_tcp_relay(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    TcpListener::from_std(s.into())
}

/// Accepts peer connections on a TCP relay; each becomes a ConnectionAttempt
/// for the client, or is closed when the peer has no permission.
pub(super) async fn tcp_relay_accept(
    relay: SocketAddr,
    listener: std::rc::Weak<TcpListener>,
    shell: Rc<Shell>,
    core: Rc<RefCell<Server>>,
) {
    let mut out = vec![0u8; 512];
    let mut failures = AcceptFailures::new("tcp relay");
    loop {
        let accepted = std::future::poll_fn(|cx| match listener.upgrade() {
            None => std::task::Poll::Ready(None),
            Some(l) => l.poll_accept(cx).map(Some),
        })
        .await;
        let (stream, peer) = match accepted {
            None => return,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                let Some(l) = listener.upgrade() else { return };
                failures.on_error(&l, Some(relay), e);
                drop(l);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        failures.on_success(Some(relay));
        let attempt =
            core.borrow_mut()
                .handle_peer_connection(Instant::now(), relay, peer, &mut out);
        if let Some(a) = attempt {
            shell
                .tcp_pending
                .borrow_mut()
                .insert(a.connection_id, stream);
            shell.send_to_client(&a.to, &out[..a.len]);
        }
    }
}

/// Connects from a TCP relay to a peer for a Connect request (30 s at most)
/// and reports the outcome to the core.
pub(super) async fn tcp_relay_connect(
    relay: SocketAddr,
    peer: SocketAddr,
    id: u32,
    shell: Rc<Shell>,
    core: Rc<RefCell<Server>>,
) {
    let attempt = async {
        let socket = if relay.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(relay)?;
        socket.connect(peer).await
    };
    let result = tokio::time::timeout(Duration::from_secs(30), attempt).await;
    shell.tcp_connecting.borrow_mut().remove(&id);
    let ok = match result {
        Ok(Ok(stream)) => {
            shell.tcp_pending.borrow_mut().insert(id, stream);
            true
        }
        Ok(Err(e)) => {
            debug!(%relay, %peer, error = %e, "tcp connect to peer failed");
            false
        }
        Err(_) => {
            debug!(%relay, %peer, "tcp connect to peer timed out");
            false
        }
    };
    let mut out = vec![0u8; 512];
    let reply = {
        let mut io = ShellIo {
            shell: &shell,
            core: &core,
        };
        core.borrow_mut()
            .handle_tcp_connect_result(Instant::now(), id, ok, &mut out, &mut io)
    };
    if let Some(r) = reply {
        shell.send_to_client(&r.to, &out[..r.len]);
    }
}

/// Binds a TCP listener with `SO_REUSEADDR` (restarts while old connections
/// linger in TIME_WAIT).
pub(super) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_tcp_std(addr)?)
}

/// [`bind_tcp`], not yet registered with any runtime (for the acceptor
/// thread).
pub(super) fn bind_tcp_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
