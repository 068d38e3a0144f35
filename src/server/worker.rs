//! Relay workers: per-core sharding of the UDP relay.
//!
//! With `relay-threads = N` (default: one per CPU the process may run on)
//! the process runs N UDP workers, `turnd-worker-0` to `turnd-worker-N-1`,
//! each on its own thread with its own event loop (see `udp.rs`; no async
//! runtime) and its own:
//!
//! - one UDP listener socket per listening address, bound with
//!   `SO_REUSEPORT` to the same address and port as the other workers': the
//!   kernel hashes each client's 4-tuple to one socket of the group, so
//!   every datagram of a client reaches the worker that holds its
//!   allocation;
//! - a [`Server`] core (the allocations created on it) and their relay
//!   sockets, so peer datagrams arrive on the worker too. Ports come from
//!   pools shared by all workers (taken once per allocation, under a lock).
//!
//! The main thread runs tokio: TCP and TLS clients (with a core of their
//! own, the last shard, and their relays, RFC 6062 included), HTTP,
//! signals and the user database.
//!
//! From receiving a datagram to sending it on, a worker takes no lock, makes
//! no channel hop and wakes no other thread. What is shared stays off that
//! path: the [`SharedState`] (allocation quotas and per-source-IP limits: one
//! mutex lock per request, none per relayed packet), and a bounded control
//! channel per worker, with an eventfd that wakes its loop, that the main
//! thread uses for reloads, draining, admin deletes, metrics snapshots and
//! shutdown.
//!
//! All cores are created from the same seed and epoch, so a nonce issued by
//! one is valid on every other (nonces are bound to the client's IP address,
//! and one client IP may be hashed to several workers by its ports).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::auth::Credentials;
use crate::stun::Method;
use crate::sys::EventFd;
use crate::turn::{
    AuthFailure, EndedUserBytes, Server, ServerConfig, SharedState, Stats, Transport,
};

/// How long the main thread waits for a worker's answer before going on
/// without it (a metrics scrape, an admin call).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Messages a worker's control channel holds; a sender waits (at most
/// [`ANSWER_TIMEOUT`] for snapshots and deletes) while it is full. The HTTP
/// listeners' connection caps keep snapshot requests far below it.
const CONTROL_QUEUE: usize = 64;

/// A worker's control channel stayed full for [`ANSWER_TIMEOUT`]: the
/// request was not queued (HTTP answers 503).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Busy;

/// A message from the main thread to a worker.
pub(super) enum Control {
    /// SIGHUP: the reloaded configuration, already sharded for this worker;
    /// answers with (allocations, permissions and channels revoked).
    Reconfigure(Box<ServerConfig>, oneshot::Sender<(usize, usize)>),
    /// The user database changed.
    Credentials(Box<Credentials>),
    /// SIGTERM with `drain-timeout`: refuse new allocations.
    Drain,
    /// A snapshot for metrics and the admin API; with the allocation list
    /// when true (the admin API's list), else the counts only.
    View(bool, oneshot::Sender<CoreView>),
    /// Admin API: end the allocation with this id, if it is here.
    Delete(u64, oneshot::Sender<bool>),
    /// The fleet's shared nonce key (read from Redis).
    NonceKey([u8; 20]),
    /// A fleet-wide revocation: end every allocation of this username;
    /// answers with how many there were.
    RevokeUser(Arc<str>, oneshot::Sender<usize>),
    /// Close every allocation and end the thread; answers with the counters.
    Stop(oneshot::Sender<Stats>),
}

/// One allocation as the admin API and metrics see it.
#[derive(Clone, Debug)]
pub(super) struct AllocationView {
    pub id: u64,
    pub user: Arc<str>,
    pub client: SocketAddr,
    pub transport: Transport,
    /// The relay address as advertised (XOR-RELAYED-ADDRESS).
    pub relay: SocketAddr,
    pub additional_relay: Option<SocketAddr>,
    pub tcp_relay: bool,
    pub created: Instant,
    pub expires: Instant,
    pub bytes_to_peer: u64,
    pub bytes_to_client: u64,
    pub packets_to_peer: u64,
    pub packets_to_client: u64,
    pub permissions: usize,
    pub channels: usize,
}

/// What the HTTP handlers read of one worker, or of all of them merged.
#[derive(Debug, Default)]
pub(super) struct CoreView {
    pub stats: Stats,
    pub draining: bool,
    /// Every live allocation; empty unless asked for (see [`CoreView::of`]).
    pub allocations: Vec<AllocationView>,
    /// Live allocations by (client transport, relay address is IPv4).
    pub allocation_counts: HashMap<(Transport, bool), usize>,
    /// Live permissions, summed over the allocations.
    pub permissions: usize,
    /// Live channel bindings, summed over the allocations.
    pub channels: usize,
    /// (method, result code, count).
    pub requests: HashMap<(Method, u16), u64>,
    pub auth_failures: HashMap<AuthFailure, u64>,
    pub ports_free: HashMap<IpAddr, usize>,
    /// Bytes per user of live allocations (with `prometheus-username-labels`).
    pub user_bytes: HashMap<Arc<str>, (u64, u64)>,
    /// Per-user totals of allocations that ended since the last snapshot,
    /// handed over by the core (which then forgets them).
    pub ended_user_bytes: EndedUserBytes,
    /// Open TCP and TLS client connections.
    pub connections: usize,
    /// Workers that answered.
    pub workers: usize,
}

impl CoreView {
    /// A snapshot of one worker: counters and per-allocation counts in one
    /// pass over its allocations, the list of them only when `detail`, and
    /// the ended users' byte totals taken from the core. O(live
    /// allocations) plus O(users ended since the last snapshot).
    pub fn of(core: &mut Server, connections: usize, detail: bool) -> CoreView {
        let mut allocations = Vec::new();
        let mut allocation_counts: HashMap<(Transport, bool), usize> = HashMap::new();
        let (mut permissions, mut channels) = (0, 0);
        for a in core.allocations() {
            *allocation_counts
                .entry((a.five_tuple.transport, a.relay.is_ipv4()))
                .or_insert(0) += 1;
            permissions += a.permissions.len();
            channels += a.channels.len();
            if detail {
                allocations.push(AllocationView {
                    id: a.id,
                    user: a.username.clone(),
                    client: a.five_tuple.client,
                    transport: a.five_tuple.transport,
                    relay: core.advertised(a.relay),
                    additional_relay: a.additional_relay.map(|r| core.advertised(r)),
                    tcp_relay: a.tcp_relay,
                    created: a.created,
                    expires: a.expires,
                    bytes_to_peer: a.bytes_to_peer,
                    bytes_to_client: a.bytes_to_client,
                    packets_to_peer: a.packets_to_peer,
                    packets_to_client: a.packets_to_client,
                    permissions: a.permissions.len(),
                    channels: a.channels.len(),
                });
            }
        }
        CoreView {
            stats: core.stats(),
            draining: core.is_draining(),
            allocations,
            allocation_counts,
            permissions,
            channels,
            requests: core.request_counts().map(|(m, c, n)| ((m, c), n)).collect(),
            auth_failures: core.auth_failure_counts().collect(),
            ports_free: core.relay_ports_free().into_iter().collect(),
            user_bytes: core.live_user_bytes(),
            ended_user_bytes: core.take_ended_user_bytes(),
            connections,
            workers: 1,
        }
    }

    /// Live allocations in all.
    pub fn allocation_total(&self) -> usize {
        self.allocation_counts.values().sum()
    }

    /// Adds another worker's snapshot to this one.
    pub fn merge(&mut self, other: CoreView) {
        self.stats += other.stats;
        self.draining |= other.draining;
        self.allocations.extend(other.allocations);
        for (k, n) in other.allocation_counts {
            *self.allocation_counts.entry(k).or_insert(0) += n;
        }
        self.permissions += other.permissions;
        self.channels += other.channels;
        for (k, n) in other.requests {
            *self.requests.entry(k).or_insert(0) += n;
        }
        for (k, n) in other.auth_failures {
            *self.auth_failures.entry(k).or_insert(0) += n;
        }
        // Relay ports are one pool for all workers: every view has the same.
        let _ = other.ports_free;
        for (k, (a, b)) in other.user_bytes {
            let e = self.user_bytes.entry(k).or_insert((0, 0));
            e.0 += a;
            e.1 += b;
        }
        let ended = other.ended_user_bytes;
        for (k, (a, b)) in ended.users {
            let e = self.ended_user_bytes.users.entry(k).or_insert((0, 0));
            e.0 += a;
            e.1 += b;
        }
        self.ended_user_bytes.other.0 += ended.other.0;
        self.ended_user_bytes.other.1 += ended.other.1;
        self.ended_user_bytes.other_allocations += ended.other_allocations;
        self.connections += other.connections;
        self.workers += other.workers;
    }
}

/// Everything a worker thread starts from.
pub(super) struct WorkerSetup {
    pub index: usize,
    pub count: usize,
    /// Its UDP listener sockets (its members of the SO_REUSEPORT groups).
    pub sockets: Vec<StdUdpSocket>,
    /// The core's configuration, sharded for this worker.
    pub config: ServerConfig,
    pub epoch: Instant,
    pub unix_now: u64,
    pub seed: [u8; 32],
    pub shared: SharedState,
    /// A fleet's shared nonce key, when Redis gave one at start.
    pub nonce_key: Option<[u8; 20]>,
    /// The XDP fast path, when `xdp` is on.
    pub fast_path: Option<Arc<super::xdp::FastPath>>,
}

struct Remote {
    index: usize,
    tx: mpsc::Sender<Control>,
    /// Made readable after each message: the worker's loop sleeps in epoll.
    wake: Arc<EventFd>,
    thread: RefCell<Option<std::thread::JoinHandle<()>>>,
}

/// The main thread's handles on the UDP workers.
#[derive(Default)]
pub(super) struct Workers {
    remote: Vec<Remote>,
}

impl Workers {
    /// Starts a worker thread.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(&mut self, setup: WorkerSetup) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let wake = Arc::new(EventFd::new()?);
        let index = setup.index;
        let worker_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name(format!("turnd-worker-{index}"))
            .spawn(move || {
                let span = tracing::info_span!("worker", n = index);
                let _entered = span.enter();
                super::udp::run(setup, rx, worker_wake);
            })?;
        self.remote.push(Remote {
            index,
            tx,
            wake,
            thread: RefCell::new(Some(thread)),
        });
        Ok(())
    }

    /// Resolves with the index of the first UDP worker whose thread has
    /// ended (its control channel closed) although it was not stopped;
    /// looks every 500 ms. Never resolves without worker threads.
    pub async fn first_gone(&self) -> usize {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Some(r) = self.remote.iter().find(|r| r.tx.is_closed()) {
                return r.index;
            }
        }
    }

    /// UDP workers.
    pub fn count(&self) -> usize {
        self.remote.len()
    }

    /// Shares of `bps-capacity`: one per UDP worker (the main thread's core
    /// gets one too), at least one.
    pub fn shares(&self) -> usize {
        self.remote.len().max(1)
    }

    /// Sends `make(index)` to every UDP worker, waiting
    /// while a worker's control channel is full (these messages must
    /// arrive).
    pub async fn broadcast(&self, make: impl Fn(usize) -> Control) {
        for r in &self.remote {
            if r.tx.send(make(r.index)).await.is_err() {
                warn!(worker = r.index, "worker is gone");
            }
            r.wake.wake();
        }
    }

    /// Sends `make(index, reply)` to every UDP worker and collects the
    /// replies of those that answer within [`ANSWER_TIMEOUT`]; `what` names
    /// the request in the warning about a worker that did not.
    ///
    /// # Errors
    /// [`Busy`] when `impatient` and a worker's control channel stayed
    /// full for [`ANSWER_TIMEOUT`] (the others got the request and their
    /// answers are dropped). Without `impatient` it waits for room.
    async fn ask_all<T>(
        &self,
        make: impl Fn(usize, oneshot::Sender<T>) -> Control,
        what: &str,
        impatient: bool,
    ) -> Result<Vec<T>, Busy> {
        let mut waiting = Vec::with_capacity(self.remote.len());
        for r in &self.remote {
            let (tx, rx) = oneshot::channel();
            let send = async {
                let sent = r.tx.send(make(r.index, tx)).await;
                r.wake.wake();
                sent
            };
            let sent = if impatient {
                match tokio::time::timeout(ANSWER_TIMEOUT, send).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        warn!(
                            worker = r.index,
                            "worker's control channel is full: {what} refused"
                        );
                        return Err(Busy);
                    }
                }
            } else {
                send.await
            };
            if sent.is_ok() {
                waiting.push((r.index, rx));
            }
        }
        let mut out = Vec::with_capacity(waiting.len());
        for (index, rx) in waiting {
            match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                Ok(Ok(v)) => out.push(v),
                _ => warn!(worker = index, "worker did not answer {what}"),
            }
        }
        Ok(out)
    }

    /// Applies a reloaded configuration on the UDP workers; returns the sum of
    /// their (allocations, revoked permissions and channels).
    pub async fn reconfigure(&self, config: &ServerConfig) -> (usize, usize) {
        let n = self.shares();
        let make = |_, tx| Control::Reconfigure(Box::new(config.shard(n)), tx);
        self.ask_all(make, "the reload", false)
            .await
            .unwrap_or_default()
            .into_iter()
            .fold((0, 0), |s, (a, r)| (s.0 + a, s.1 + r))
    }

    /// Snapshots of the UDP workers (those that answer in time), with the
    /// allocation list when `detail`.
    ///
    /// # Errors
    /// [`Busy`] when a worker's control channel stayed full.
    pub async fn views(&self, detail: bool) -> Result<Vec<CoreView>, Busy> {
        self.ask_all(
            |_, tx| Control::View(detail, tx),
            "a snapshot request",
            true,
        )
        .await
    }

    /// Ends every allocation of `user` on every UDP worker; returns how
    /// many ended (workers that do not answer in time count none).
    pub async fn revoke_user(&self, user: &str) -> usize {
        let user: Arc<str> = user.into();
        self.ask_all(
            |_, tx| Control::RevokeUser(user.clone(), tx),
            "a revocation",
            false,
        )
        .await
        .map_or(0, |n| n.into_iter().sum())
    }

    /// Ends allocation `id` on whichever UDP worker holds it.
    pub async fn delete(&self, id: u64) -> bool {
        for r in &self.remote {
            let (tx, rx) = oneshot::channel();
            match tokio::time::timeout(ANSWER_TIMEOUT, r.tx.send(Control::Delete(id, tx))).await {
                Ok(Ok(())) => r.wake.wake(),
                _ => continue,
            }
            if let Ok(Ok(true)) = tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                return true;
            }
        }
        false
    }

    /// Stops the UDP workers: each closes its allocations; returns the sum of
    /// their counters.
    pub async fn stop(&self) -> Stats {
        let mut total = Stats::default();
        let stats = self.ask_all(|_, tx| Control::Stop(tx), "stop", false).await;
        for s in stats.unwrap_or_default() {
            total += s;
        }
        for r in &self.remote {
            if let Some(t) = r.thread.borrow_mut().take() {
                if t.join().is_err() {
                    error!(worker = r.index, "worker thread panicked");
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // an arbitrary instant for the views

    use super::*;

    fn allocation(id: u64, user: &str, now: Instant) -> AllocationView {
        AllocationView {
            id,
            user: user.into(),
            client: SocketAddr::from(([192, 0, 2, 1], 40000 + id as u16)),
            transport: Transport::Udp,
            relay: SocketAddr::from(([198, 51, 100, 1], 50000 + id as u16)),
            additional_relay: None,
            tcp_relay: false,
            created: now,
            expires: now,
            bytes_to_peer: 0,
            bytes_to_client: 0,
            packets_to_peer: 0,
            packets_to_client: 0,
            permissions: 0,
            channels: 0,
        }
    }

    fn view(
        now: Instant,
        id: u64,
        packets_to_peer: u64,
        draining: bool,
        ports_free: usize,
    ) -> CoreView {
        let ip: IpAddr = [198, 51, 100, 1].into();
        CoreView {
            stats: Stats {
                packets_to_peer,
                ..Stats::default()
            },
            draining,
            allocations: vec![allocation(id, "alice", now)],
            allocation_counts: [((Transport::Udp, true), 1)].into(),
            permissions: 2,
            channels: 1,
            requests: [((Method::ALLOCATE, 200), 2), ((Method::REFRESH, 200), 1)].into(),
            auth_failures: [(AuthFailure::IntegrityMismatch, 1)].into(),
            ports_free: [(ip, ports_free)].into(),
            user_bytes: [(Arc::from("alice"), (10, 20))].into(),
            ended_user_bytes: EndedUserBytes {
                users: [(Arc::from("carol"), (1, 1))].into(),
                other: (5, 6),
                other_allocations: 1,
            },
            connections: 1,
            workers: 1,
        }
    }

    #[test]
    fn merge_adds_counters_and_keeps_one_port_pool() {
        let now = Instant::now();
        let mut all = view(now, 1, 5, false, 100);
        let mut other = view(now, 2, 7, true, 100);
        other.requests.insert((Method::CHANNEL_BIND, 400), 3);
        other.auth_failures.insert(AuthFailure::UnknownUser, 4);
        other.user_bytes.insert(Arc::from("bob"), (1, 2));
        all.merge(other);

        assert_eq!(all.stats.packets_to_peer, 12);
        assert!(
            all.draining,
            "one draining worker makes the process draining"
        );
        let ids: Vec<u64> = all.allocations.iter().map(|a| a.id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(all.requests[&(Method::ALLOCATE, 200)], 4);
        assert_eq!(all.requests[&(Method::REFRESH, 200)], 2);
        assert_eq!(all.requests[&(Method::CHANNEL_BIND, 400)], 3);
        assert_eq!(all.auth_failures[&AuthFailure::IntegrityMismatch], 2);
        assert_eq!(all.auth_failures[&AuthFailure::UnknownUser], 4);
        // The relay port pool is shared: not counted twice.
        assert_eq!(all.ports_free.values().sum::<usize>(), 100);
        assert_eq!(all.user_bytes[&Arc::from("alice")], (20, 40));
        assert_eq!(all.user_bytes[&Arc::from("bob")], (1, 2));
        assert_eq!(all.allocation_total(), 2);
        assert_eq!((all.permissions, all.channels), (4, 2));
        assert_eq!(all.ended_user_bytes.users[&Arc::from("carol")], (2, 2));
        assert_eq!(all.ended_user_bytes.other, (10, 12));
        assert_eq!(all.ended_user_bytes.other_allocations, 2);
        assert_eq!((all.connections, all.workers), (2, 2));
    }
}
