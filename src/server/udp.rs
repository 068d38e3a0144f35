//! A UDP relay worker: one thread, one level-triggered epoll loop, no async
//! runtime.
//!
//! The worker owns its [`Server`] core, its members of the UDP listener
//! `SO_REUSEPORT` groups and the relay sockets of the allocations made on
//! it, all registered with one [`Epoll`]:
//!
//! ```text
//!   token 0..L          listener sockets   -> Server::handle_client_input
//!   token RELAY_BASE+s  relay socket slot s -> Server::handle_peer_input
//!   token WAKE          eventfd             -> the control queue (main thread)
//! ```
//!
//! Each wake-up reads one `recvmmsg` batch from each ready socket, hands
//! every datagram to the core and sends what it answers straight away
//! (`sendto`, or one `sendmmsg` for ChannelData framed in place towards the
//! clients of one listener). A socket with more queued than one batch stays
//! ready and is read again after the others (level-triggered: a flooded
//! socket cannot starve the rest). Between wake-ups the thread sleeps in
//! `epoll_pwait2` until the core's [`Server::poll_timeout`] (at most
//! [`MAX_SLEEP`]); there is no task, waker, timer wheel or signal future on
//! the relay path.
//!
//! The main thread (tokio: TCP, TLS, HTTP, signals, the user database)
//! reaches the worker through a bounded control channel and an [`EventFd`]
//! that it makes readable after each message (see `worker.rs`).

#![allow(clippy::disallowed_methods)] // the shell is where the clock is read

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::worker::{Control, CoreView, WorkerSetup};
use super::{bind_udp, fault, OUT_BUFFER, RECV_BUFFER};
use crate::sys::{Epoll, EventFd, RecvBatch, SendBatch, EPOLL_IN};
use crate::turn::{
    ClientOutput, FastMap, FiveTuple, KernelRelayed, PeerOutput, RelayIo, Server, Transport,
};

/// Datagrams one `recvmmsg` takes from a UDP listener socket.
const LISTENER_BATCH: usize = 32;
/// Datagrams one `recvmmsg` takes from a relay socket (one allocation's peers).
const RELAY_BATCH: usize = 16;
/// Longest the loop sleeps without a timer of the core being due: timeouts
/// are checked at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Events one `epoll_pwait2` returns at most; more ready sockets are
/// returned by the next call.
const EVENTS: usize = 256;
/// The eventfd's token.
const WAKE: u64 = u64::MAX;
/// Relay socket slot `s` has token `RELAY_BASE + s`; listeners have their
/// index (below it).
const RELAY_BASE: u64 = 1 << 32;
/// Allocations that must have ended since the last trim before the heap is
/// trimmed again (checked every [`TRIM_INTERVAL`]).
pub(super) const TRIM_AFTER_ENDED: usize = 1024;
/// How often a worker looks for memory to give back.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// A ChannelData message framed in place in a relay batch, waiting to go
/// to its UDP client: (client, batch slot, the message within the slot).
type PendingToClient = (FiveTuple, usize, Range<usize>);

/// Application data from a client (ChannelData or Send) in a listener
/// batch, waiting to go to its peer: (relay address, peer, batch slot, the
/// data within the slot's datagram).
type PendingToPeer = (SocketAddr, SocketAddr, usize, Range<usize>);

/// The worker's sockets, as the core's [`RelayIo`] sees them.
struct UdpIo {
    ep: Epoll,
    /// (local address, socket); the index is the token.
    listeners: Vec<(SocketAddr, StdUdpSocket)>,
    /// Relay sockets by slot (token `RELAY_BASE + slot`); `None`: free.
    relays: Vec<Option<(SocketAddr, StdUdpSocket)>>,
    /// Free slots of `relays`.
    free: Vec<usize>,
    /// Slot of each relay address.
    by_addr: FastMap<SocketAddr, usize>,
    /// `sendmmsg` headers, reused.
    send_batch: SendBatch,
    /// This worker's entries in the XDP fast path's maps, when `xdp` is on.
    fast_path: Option<super::xdp::FastPathSync>,
}

/// Sends one datagram now; a full kernel buffer drops it, as UDP would
/// (also the main thread's relay sockets: a socket that tokio has not yet
/// seen writable would refuse `try_send_to`).
pub(super) fn send_udp(socket: &StdUdpSocket, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_to(bytes, &to.into())
}

impl UdpIo {
    fn listener(&self, local: SocketAddr) -> Option<&StdUdpSocket> {
        self.listeners
            .iter()
            .find(|(a, _)| *a == local)
            .map(|(_, s)| s)
    }

    fn send_to_client(&self, to: &FiveTuple, bytes: &[u8]) {
        // Only UDP clients reach a UDP worker.
        if to.transport != Transport::Udp {
            return;
        }
        if let Some(s) = self.listener(to.server) {
            if let Err(e) = send_udp(s, bytes, to.client) {
                debug!(target: "turnd::packet", client = %to.client, error = %e, "send to client failed");
            }
        }
    }

    /// Sends the client data waiting in `batch` slots to its peers: one
    /// `sendmmsg` per run of datagrams leaving from the same relay socket (a
    /// client sending fast: a screen share, a file), a plain `sendto` for a
    /// single one.
    fn flush_to_peer(&mut self, batch: &RecvBatch, pending: &mut Vec<PendingToPeer>) {
        let data = |k: usize, range: &Range<usize>| {
            &batch.slot(k)[crate::sys::HEADROOM + range.start..crate::sys::HEADROOM + range.end]
        };
        for run in runs_by(pending, |p| p.0) {
            let run = &pending[run];
            let relay = run[0].0;
            let Some(w) = self
                .by_addr
                .get(&relay)
                .and_then(|&s| self.relays[s].as_ref())
            else {
                continue;
            };
            if let [(_, peer, k, range)] = run {
                if let Err(e) = send_udp(&w.1, data(*k, range), *peer) {
                    debug!(target: "turnd::packet", %relay, %peer, error = %e, "send to peer failed");
                }
            } else {
                let msgs = run
                    .iter()
                    .map(|(_, peer, k, range)| (data(*k, range), *peer));
                self.send_batch.send(w.1.as_fd(), msgs);
            }
        }
        pending.clear();
    }

    /// Sends the ChannelData messages framed in `batch` slots to their UDP
    /// clients: one `sendmmsg` per run of messages leaving from the same
    /// listener socket, a plain `sendto` for a single message.
    fn flush_to_client(&mut self, batch: &RecvBatch, pending: &mut Vec<PendingToClient>) {
        for run in runs_by(pending, |p| p.0.server) {
            let run = &pending[run];
            let Some(i) = self
                .listeners
                .iter()
                .position(|(a, _)| *a == run[0].0.server)
            else {
                continue;
            };
            let s = &self.listeners[i].1;
            if let [(to, k, range)] = run {
                if let Err(e) = send_udp(s, &batch.slot(*k)[range.clone()], to.client) {
                    debug!(target: "turnd::packet", client = %to.client, error = %e, "send to client failed");
                }
            } else {
                let msgs = run
                    .iter()
                    .map(|(to, k, range)| (&batch.slot(*k)[range.clone()], to.client));
                self.send_batch.send(s.as_fd(), msgs);
            }
        }
        pending.clear();
    }
}

impl RelayIo for UdpIo {
    fn open(&mut self, relay: SocketAddr) -> io::Result<()> {
        let socket = bind_udp(relay, None, false)?;
        let slot = self.free.pop().unwrap_or(self.relays.len());
        self.ep
            .add(socket.as_raw_fd(), RELAY_BASE + slot as u64, EPOLL_IN)?;
        if slot == self.relays.len() {
            self.relays.push(None);
        }
        self.relays[slot] = Some((relay, socket));
        self.by_addr.insert(relay, slot);
        Ok(())
    }

    fn close(&mut self, relay: SocketAddr) {
        let Some(slot) = self.by_addr.remove(&relay) else {
            return;
        };
        if let Some((_, s)) = self.relays[slot].take() {
            let _ = self.ep.delete(s.as_raw_fd());
            // Dropped here: the port is free to bind again at once.
        }
        self.free.push(slot);
    }
    fn end_fast_path(&mut self, allocation: u64) -> KernelRelayed {
        match &mut self.fast_path {
            Some(fp) => fp.end_allocation(allocation),
            None => KernelRelayed::default(),
        }
    }
    // RFC 6062 TCP relays need a TCP client connection: never asked of a
    // UDP worker (the trait's defaults refuse them).
}

/// The runs of consecutive `pending` messages that leave from the same
/// socket (`key`: the listener or the relay address), as index ranges, in
/// order: each run is one `sendmmsg`.
fn runs_by<'a, T, K: PartialEq>(
    pending: &'a [T],
    key: impl Fn(&T) -> K + 'a,
) -> impl Iterator<Item = Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = key(pending.get(start)?);
        let end = pending[start..]
            .iter()
            .position(|p| key(p) != first)
            .map_or(pending.len(), |k| start + k);
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// One UDP worker: its core, its sockets and its buffers.
struct UdpWorker {
    index: usize,
    core: Server,
    io: UdpIo,
    control: mpsc::Receiver<Control>,
    wake: Arc<EventFd>,
    listener_batch: RecvBatch,
    /// Receive batch of every relay socket (each slot has headroom for the
    /// ChannelData header).
    relay_batch: RecvBatch,
    /// Replies and Data indications.
    out: Vec<u8>,
    /// ChannelData framed in `relay_batch`, waiting for one `sendmmsg`.
    pending: Vec<PendingToClient>,
    /// Client data in `listener_batch`, waiting for one `sendmmsg` per
    /// relay socket.
    to_peer: Vec<PendingToPeer>,
}

/// Runs worker `setup.index` on this thread until the main thread sends
/// [`Control::Stop`] or drops its end of the control channel.
///
/// `wake` must be made readable after every message put in `control`.
pub(super) fn run(setup: WorkerSetup, control: mpsc::Receiver<Control>, wake: Arc<EventFd>) {
    if fault::ends_worker(setup.index) {
        warn!("TURND_FAULT_INJECT: this worker ends now");
        return;
    }
    let mut worker = match UdpWorker::new(setup, control, wake) {
        Ok(w) => w,
        Err(e) => {
            error!(error = %e, "cannot start the worker's event loop");
            return;
        }
    };
    debug!(
        min_port = worker.core.config().min_port,
        max_port = worker.core.config().max_port,
        listeners = worker.io.listeners.len(),
        "worker started"
    );
    if let Err(e) = worker.run() {
        error!(error = %e, "worker's event loop failed");
    }
}

impl UdpWorker {
    fn new(
        setup: WorkerSetup,
        control: mpsc::Receiver<Control>,
        wake: Arc<EventFd>,
    ) -> io::Result<Self> {
        let mut core = Server::new(setup.config, setup.epoch, setup.unix_now, setup.seed);
        if let Some(key) = setup.nonce_key {
            core.set_nonce_key(key);
        }
        core.set_shard(setup.index, setup.count, &setup.shared);
        let ep = Epoll::new(EVENTS)?;
        ep.add(wake.raw_fd(), WAKE, EPOLL_IN)?;
        let mut listeners = Vec::new();
        for s in setup.sockets {
            let local = s.local_addr()?;
            ep.add(s.as_raw_fd(), listeners.len() as u64, EPOLL_IN)?;
            listeners.push((local, s));
        }
        Ok(UdpWorker {
            index: setup.index,
            core,
            io: UdpIo {
                ep,
                listeners,
                relays: Vec::new(),
                free: Vec::new(),
                by_addr: FastMap::default(),
                send_batch: SendBatch::default(),
                fast_path: setup.fast_path.map(super::xdp::FastPathSync::new),
            },
            control,
            wake,
            listener_batch: RecvBatch::new(LISTENER_BATCH, RECV_BUFFER),
            relay_batch: RecvBatch::new(RELAY_BATCH, RECV_BUFFER),
            out: vec![0u8; OUT_BUFFER],
            pending: Vec::with_capacity(RELAY_BATCH),
            to_peer: Vec::with_capacity(LISTENER_BATCH),
        })
    }

    /// The loop: sleep until a socket is ready or a timer is due, then
    /// serve what is ready. Returns when stopped.
    fn run(&mut self) -> io::Result<()> {
        // Memory comes back after a peak: every TRIM_INTERVAL, sparse tables
        // of the core are shrunk, and when that freed something or many
        // allocations ended, the allocator is asked to return free pages.
        let mut peak = 0usize;
        let mut last_trim = Instant::now();
        let mut next_tick = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_tick {
                self.core.handle_timeout(now, &mut self.io);
                if let Some(fp) = &mut self.io.fast_path {
                    if now >= fp.next_sync() {
                        fp.sync(&mut self.core, now);
                    }
                }
                let count = self.core.allocation_count();
                peak = peak.max(count);
                if now.duration_since(last_trim) >= TRIM_INTERVAL {
                    let shrunk = self.core.compact();
                    if shrunk > 0 || peak >= count + TRIM_AFTER_ENDED {
                        crate::sys::trim_heap();
                        debug!(peak, count, shrunk, "allocations ended: memory returned");
                        peak = count;
                    }
                    last_trim = now;
                }
                next_tick = self
                    .core
                    .poll_timeout()
                    .map_or(now + MAX_SLEEP, |t| t.min(now + MAX_SLEEP));
                if let Some(fp) = &self.io.fast_path {
                    next_tick = next_tick.min(fp.next_sync());
                }
            }
            let ready = self
                .io
                .ep
                .wait(Some(next_tick.saturating_duration_since(now)))?;
            let now = Instant::now();
            for e in 0..ready {
                let (token, _) = self.io.ep.event(e);
                if token == WAKE {
                    if self.on_control() {
                        return Ok(());
                    }
                } else if token >= RELAY_BASE {
                    self.on_relay((token - RELAY_BASE) as usize, now);
                } else {
                    self.on_listener(token as usize, now);
                }
            }
            // A request may have brought a timer forward (a new allocation,
            // permission or channel): look again before sleeping.
            if let Some(t) = self.core.poll_timeout() {
                next_tick = next_tick.min(t);
            }
        }
    }

    /// Reads one batch from listener `i` and serves each datagram.
    fn on_listener(&mut self, i: usize, now: Instant) {
        let Some((local, socket)) = self.io.listeners.get(i) else {
            return;
        };
        let local = *local;
        let n = match self.listener_batch.recv(socket.as_fd()) {
            Ok(n) => n,
            Err(e) => {
                debug!(%local, error = %e, "listener receive error");
                return;
            }
        };
        if n > 0 {
            fault::on_datagram(self.index);
        }
        for k in 0..n {
            let first = self
                .listener_batch
                .datagram(k)
                .and_then(|(_, d)| d.first().copied());
            // ChannelData (first two bits 01, RFC 8656 section 12) waits to
            // leave in one `sendmmsg` with the batch's other data for the
            // same relay; anything else may change state (a Refresh to 0
            // closes a relay socket), so what waits leaves first.
            if first.is_none_or(|b| b & 0xC0 != 0x40) && !self.to_peer.is_empty() {
                self.io
                    .flush_to_peer(&self.listener_batch, &mut self.to_peer);
            }
            let Some((from, len, slot)) = self.listener_batch.slot_mut(k) else {
                continue;
            };
            let data = &slot[crate::sys::HEADROOM..crate::sys::HEADROOM + len];
            let ft = FiveTuple {
                client: from,
                server: local,
                transport: Transport::Udp,
            };
            let output = self
                .core
                .handle_client_input(now, ft, data, &mut self.out, &mut self.io);
            match output {
                ClientOutput::None => {}
                ClientOutput::Reply { to, len } => self.io.send_to_client(&to, &self.out[..len]),
                ClientOutput::ToPeer { relay, peer, range } => {
                    self.to_peer.push((relay, peer, k, range));
                }
                // Only a stream asks for it (RFC 6062 ConnectionBind).
                ClientOutput::ConnectionBound { to, len, .. } => {
                    self.io.send_to_client(&to, &self.out[..len]);
                }
            }
        }
        if !self.to_peer.is_empty() {
            self.io
                .flush_to_peer(&self.listener_batch, &mut self.to_peer);
        }
    }

    /// Reads one batch from relay socket `slot` and relays each datagram
    /// the core lets through to its client.
    fn on_relay(&mut self, slot: usize, now: Instant) {
        // A slot closed earlier in this round of events is gone (or holds
        // a new socket, which a read of nothing queued leaves alone).
        let Some(Some((relay, socket))) = self.io.relays.get(slot) else {
            return;
        };
        let relay = *relay;
        let n = match self.relay_batch.recv(socket.as_fd()) {
            Ok(n) => n,
            Err(e) => {
                // ICMP errors of earlier sends (port unreachable) land here.
                debug!(%relay, error = %e, "relay socket receive error");
                return;
            }
        };
        for k in 0..n {
            let Some((peer, len, buf)) = self.relay_batch.slot_mut(k) else {
                continue;
            };
            match self
                .core
                .handle_peer_input(now, relay, peer, buf, len, &mut self.out)
            {
                PeerOutput::ChannelData { to, range } => self.pending.push((to, k, range)),
                PeerOutput::DataIndication { to, len } => {
                    // Whatever was framed before it leaves first, in order.
                    self.io
                        .flush_to_client(&self.relay_batch, &mut self.pending);
                    self.io.send_to_client(&to, &self.out[..len]);
                }
                PeerOutput::None => {}
            }
        }
        self.io
            .flush_to_client(&self.relay_batch, &mut self.pending);
    }

    /// Brings the XDP fast path's maps up to date now (when it is on).
    fn sync_fast_path(&mut self) {
        if let Some(fp) = &mut self.io.fast_path {
            fp.sync(&mut self.core, Instant::now());
        }
    }

    /// Takes this worker's entries out of the XDP fast path's maps,
    /// crediting their last counts.
    fn clear_fast_path(&mut self) {
        if let Some(fp) = &mut self.io.fast_path {
            fp.clear(&mut self.core, Instant::now());
        }
    }

    /// Serves the control queue; true when told to stop (or when the main
    /// thread is gone).
    fn on_control(&mut self) -> bool {
        self.wake.reset();
        loop {
            let c = match self.control.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.core.close_all(&mut self.io);
                    self.clear_fast_path();
                    return true;
                }
            };
            match c {
                Control::Reconfigure(cfg, reply) => {
                    let revoked = self.core.reconfigure(Instant::now(), *cfg);
                    // A reload may have revoked permissions: the kernel
                    // stops relaying those channels now. (Deletes and
                    // revocations end allocations, which takes their
                    // entries out at once: `RelayIo::end_fast_path`.)
                    self.sync_fast_path();
                    let _ = reply.send((self.core.allocation_count(), revoked));
                }
                Control::Credentials(c) => self.core.set_credentials(*c),
                Control::Drain => self.core.start_draining(),
                Control::View(detail, reply) => {
                    let _ = reply.send(CoreView::of(&mut self.core, 0, detail));
                }
                Control::Delete(id, reply) => {
                    let deleted = self.core.delete_allocation_by_id(id, &mut self.io);
                    let _ = reply.send(deleted);
                }
                Control::NonceKey(key) => self.core.set_nonce_key(key),
                Control::RevokeUser(user, reply) => {
                    let ended = self.core.delete_allocations_of_user(&user, &mut self.io);
                    let _ = reply.send(ended);
                }
                Control::Stop(reply) => {
                    self.core.close_all(&mut self.io);
                    self.clear_fast_path();
                    let _ = reply.send(self.core.stats());
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(client_port: u16, server: &str) -> FiveTuple {
        FiveTuple {
            client: SocketAddr::from(([192, 0, 2, 1], client_port)),
            server: server.parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    #[test]
    fn runs_by_listener_groups_consecutive_messages_of_one_listener() {
        let (a, b) = ("198.51.100.1:3478", "198.51.100.2:3478");
        let pending: Vec<PendingToClient> = vec![
            (to(1, a), 0, 0..10),
            (to(2, a), 1, 0..10),
            (to(3, b), 2, 0..10),
            (to(4, a), 3, 0..10),
            (to(5, a), 4, 0..10),
            (to(6, a), 5, 0..10),
        ];
        let runs: Vec<_> = runs_by(&pending, |p| p.0.server).collect();
        // Order is kept: a listener seen again later starts a new run.
        assert_eq!(runs, [0..2, 2..3, 3..6]);
    }

    #[test]
    fn runs_by_listener_of_one_or_none() {
        assert_eq!(
            runs_by(&[] as &[PendingToClient], |p| p.0.server).count(),
            0
        );
        let one = [(to(1, "198.51.100.1:3478"), 7, 0..4)];
        let runs: Vec<_> = runs_by(&one, |p| p.0.server).collect();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0], 0..1);
    }
}
