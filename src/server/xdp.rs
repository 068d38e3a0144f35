//! The XDP fast path's shell (issue 15; `xdp = "generic" | "native"`).
//!
//! `xdp/turnd_xdp.c` relays the two steady-state cases of a channel binding
//! in the kernel, before the socket layer: ChannelData from a client to its
//! peer (header stripped) and UDP from a peer to its client (header
//! prepended). Everything else is passed to the stack unchanged and reaches
//! the workers as before. The program reads two hash maps that this module
//! fills; the core decides what goes in them
//! ([`Server::fast_path_entries`]) and is told what the kernel relayed
//! ([`Server::credit_fast_path`]).
//!
//! - [`FastPath`]: the loaded program, attached to every interface that
//!   carries a listening or relay address (or those of `xdp-interfaces`)
//!   through a BPF link, so the kernel detaches it when the process ends,
//!   crash included; the maps; the per-binding statistics slots.
//! - [`FastPathSync`]: one per UDP worker. Every [`SYNC_INTERVAL`] it lists
//!   the worker's entries, writes new and changed ones, deletes those no
//!   longer listed (channel or permission gone, allocation ended or over
//!   `max-bps`), and reads the kernel's counters back: every tick for
//!   entries under a bandwidth limit, every [`READ_INTERVAL`] for the rest,
//!   and once more when an entry is deleted.
//!
//! Map layouts are those of `xdp/turnd_xdp.h`, mirrored here with
//! `#[repr(C)]` and size asserts. Each entry carries a deadline (the
//! earliest expiry of channel, permission and allocation) in
//! `CLOCK_MONOTONIC` nanoseconds, which the program checks per packet: an
//! expiry stops kernel relaying at the instant, a deletion within
//! [`SYNC_INTERVAL`].

#![allow(clippy::disallowed_methods)] // the shell reads the clock

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::StartError;
use crate::config::{Config, XdpMode};
use crate::turn::{FastPathEntry, KernelRelayed, Server};

/// How often a worker brings the kernel maps up to date.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// How often a worker reads the counters of entries without a bandwidth
/// limit (for metrics, user totals and the admin API).
const READ_INTERVAL: Duration = Duration::from_secs(1);

/// The program's outcome counters (`enum turnd_counter` in `turnd_xdp.h`),
/// in index order: (metric family suffix, label value).
pub(super) const COUNTERS: [(&str, &str); 16] = [
    ("passed", "not_udp"),
    ("passed", "no_entry"),
    ("passed", "expired"),
    ("passed", "bad_len"),
    ("passed", "ttl"),
    ("passed", "bad_entry"),
    ("passed", "no_csum"),
    ("passed", "fib_no_neigh"),
    ("passed", "fib_fwd_disabled"),
    ("passed", "fib_frag_needed"),
    ("passed", "fib_other"),
    ("passed", "adjust_head"),
    ("sent", "client_to_peer_tx"),
    ("sent", "client_to_peer_redirect"),
    ("sent", "peer_to_client_tx"),
    ("sent", "peer_to_client_redirect"),
];

/// Key of map `turnd_c2p`: ChannelData from a client (40 bytes). Addresses
/// are 16 bytes, IPv4 as IPv4-mapped IPv6; ports and channel in network
/// byte order; padding zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct C2pKey {
    client_addr: [u8; 16],
    listen_addr: [u8; 16],
    client_port: u16,
    listen_port: u16,
    channel: u16,
    pad: u16,
}

/// Value of map `turnd_c2p` (48 bytes): where the data goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct C2pVal {
    relay_addr: [u8; 16],
    peer_addr: [u8; 16],
    relay_port: u16,
    peer_port: u16,
    stats_idx: u32,
    deadline_ns: u64,
}

/// Key of map `turnd_p2c`: UDP from a peer to a relayed address (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct P2cKey {
    peer_addr: [u8; 16],
    relay_addr: [u8; 16],
    peer_port: u16,
    relay_port: u16,
    pad: u32,
}

/// Value of map `turnd_p2c` (56 bytes): the client and the channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct P2cVal {
    client_addr: [u8; 16],
    listen_addr: [u8; 16],
    client_port: u16,
    listen_port: u16,
    channel: u16,
    pad: u16,
    stats_idx: u32,
    pad2: u32,
    deadline_ns: u64,
}

/// One slot of map `turnd_stats` (per CPU, 32 bytes): what the kernel
/// relayed for one channel binding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SlotStats {
    c2p_packets: u64,
    c2p_bytes: u64,
    p2c_packets: u64,
    p2c_bytes: u64,
}

const _: () = assert!(std::mem::size_of::<C2pKey>() == 40);
const _: () = assert!(std::mem::size_of::<C2pVal>() == 48);
const _: () = assert!(std::mem::size_of::<P2cKey>() == 40);
const _: () = assert!(std::mem::size_of::<P2cVal>() == 56);
const _: () = assert!(std::mem::size_of::<SlotStats>() == 32);

/// 16 bytes, IPv4 as IPv4-mapped IPv6.
fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The two map entries of `e`, with statistics slot `slot` and deadline
/// `deadline_ns`.
fn map_entries(e: &FastPathEntry, slot: u32, deadline_ns: u64) -> (C2pKey, C2pVal, P2cKey, P2cVal) {
    let ft = e.five_tuple;
    let c2p_key = c2p_key(e);
    let c2p_val = C2pVal {
        relay_addr: octets(e.relay.ip()),
        peer_addr: octets(e.peer.ip()),
        relay_port: e.relay.port().to_be(),
        peer_port: e.peer.port().to_be(),
        stats_idx: slot,
        deadline_ns,
    };
    let p2c_key = p2c_key(e);
    let p2c_val = P2cVal {
        client_addr: octets(ft.client.ip()),
        listen_addr: octets(ft.server.ip()),
        client_port: ft.client.port().to_be(),
        listen_port: ft.server.port().to_be(),
        channel: e.channel.to_be(),
        stats_idx: slot,
        deadline_ns,
        ..P2cVal::default()
    };
    (c2p_key, c2p_val, p2c_key, p2c_val)
}

fn c2p_key(e: &FastPathEntry) -> C2pKey {
    let ft = e.five_tuple;
    C2pKey {
        client_addr: octets(ft.client.ip()),
        listen_addr: octets(ft.server.ip()),
        client_port: ft.client.port().to_be(),
        listen_port: ft.server.port().to_be(),
        channel: e.channel.to_be(),
        pad: 0,
    }
}

fn p2c_key(e: &FastPathEntry) -> P2cKey {
    P2cKey {
        peer_addr: octets(e.peer.ip()),
        relay_addr: octets(e.relay.ip()),
        peer_port: e.peer.port().to_be(),
        relay_port: e.relay.port().to_be(),
        pad: 0,
    }
}

/// The loaded program and its maps, shared by the workers (one lock per
/// worker tick, never per packet).
pub(super) struct FastPath {
    mode: XdpMode,
    /// The interfaces it is attached to.
    interfaces: Vec<String>,
    /// Channel bindings in the kernel maps now.
    entries: AtomicUsize,
    /// Entries the kernel refused (maps full): those stay in user space.
    refused: AtomicU64,
    maps: Mutex<imp::Maps>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("mode", &self.mode)
            .field("interfaces", &self.interfaces)
            .finish()
    }
}

impl FastPath {
    /// Loads and attaches the program when `config.xdp` is on; `None` when
    /// it is off. Call after the relay addresses are resolved.
    ///
    /// # Errors
    /// [`StartError::Xdp`] naming what is wrong: built without the `xdp`
    /// feature; an address on no interface or on loopback; forwarding off
    /// on an interface (`bpf_fib_lookup` needs it); the kernel refusing to
    /// load (privileges) or to attach (driver without native XDP).
    pub fn start(config: &Config) -> Result<Option<Arc<FastPath>>, StartError> {
        if config.xdp == XdpMode::Off {
            return Ok(None);
        }
        let mut ips: Vec<IpAddr> = config.listening_ips.clone();
        ips.extend(config.relay_ips.iter().copied());
        if let Some(ip) = ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(StartError::Xdp(format!(
                "the fast path needs specific listening and relay addresses, not the wildcard {ip}"
            )));
        }
        let interfaces = if config.xdp_interfaces.is_empty() {
            interfaces_of(&ips)?
        } else {
            config.xdp_interfaces.clone()
        };
        let (v4, v6) = (
            ips.iter().any(IpAddr::is_ipv4),
            ips.iter().any(IpAddr::is_ipv6),
        );
        for i in &interfaces {
            check_forwarding(i, v4, v6)?;
        }
        let maps = imp::Maps::load(config.xdp, &interfaces)?;
        info!(
            mode = config.xdp.as_str(),
            interfaces = %interfaces.join(","),
            "XDP fast path attached: ChannelData over UDP is relayed in the kernel"
        );
        Ok(Some(Arc::new(FastPath {
            mode: config.xdp,
            interfaces,
            entries: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            maps: Mutex::new(maps),
        })))
    }

    /// The attach mode.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Channel bindings in the kernel maps.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Entries the kernel refused since start (maps full).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The program's outcome counters, summed over CPUs, in the order of
    /// [`COUNTERS`].
    pub fn counters(&self) -> [u64; 16] {
        match self.maps.lock() {
            Ok(m) => m.counters(),
            Err(_) => [0; 16],
        }
    }
}

/// The interfaces that carry `ips`.
fn interfaces_of(ips: &[IpAddr]) -> Result<Vec<String>, StartError> {
    let addrs = if_addrs::get_if_addrs()
        .map_err(|e| StartError::Xdp(format!("cannot list the interfaces: {e}")))?;
    let mut names: Vec<String> = Vec::new();
    for ip in ips {
        let Some(i) = addrs.iter().find(|a| a.ip() == *ip) else {
            return Err(StartError::Xdp(format!(
                "no interface carries {ip}: name the interfaces with `xdp-interfaces`"
            )));
        };
        if i.is_loopback() {
            return Err(StartError::Xdp(format!(
                "{ip} is on the loopback interface {}: the fast path relays between real interfaces (keep xdp = \"off\" for loopback)",
                i.name
            )));
        }
        if !names.contains(&i.name) {
            names.push(i.name.clone());
        }
    }
    Ok(names)
}

/// Fails unless forwarding is on for `interface` in the families used:
/// the program's `bpf_fib_lookup` answers "forwarding disabled" otherwise
/// and every packet would stay in user space.
fn check_forwarding(interface: &str, v4: bool, v6: bool) -> Result<(), StartError> {
    for (on, family) in [(v4, "ipv4"), (v6, "ipv6")] {
        if !on {
            continue;
        }
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(v) => {
                return Err(StartError::Xdp(format!(
                    "forwarding is off on {interface} (net.{family}.conf.{interface}.forwarding = {}): the kernel's route lookup for the fast path needs it; set it to 1 and drop forwarded traffic in the firewall's forward chain if this host must not route",
                    v.trim()
                )))
            }
            Err(e) => {
                return Err(StartError::Xdp(format!(
                    "interface {interface}: cannot read {path}: {e}"
                )))
            }
        }
    }
    Ok(())
}

/// A kernel entry a worker wrote, and what it has read of its counters.
#[derive(Debug)]
struct Installed {
    entry: FastPathEntry,
    p2c: P2cKey,
    slot: u32,
    read: KernelRelayed,
    /// The sync round that last listed it.
    seen: u64,
}

/// A worker's side of the fast path: the entries it wrote.
#[derive(Debug)]
pub(super) struct FastPathSync {
    fast_path: Arc<FastPath>,
    installed: HashMap<C2pKey, Installed>,
    listed: Vec<FastPathEntry>,
    round: u64,
    next_sync: Instant,
    next_read: Instant,
    /// An [`Instant`] and the `CLOCK_MONOTONIC` nanoseconds at it.
    clock: (Instant, u64),
}

impl FastPathSync {
    /// A worker's handle on the shared fast path.
    pub fn new(fast_path: Arc<FastPath>) -> Self {
        let now = Instant::now();
        FastPathSync {
            fast_path,
            installed: HashMap::new(),
            listed: Vec::new(),
            round: 0,
            next_sync: now,
            next_read: now + READ_INTERVAL,
            clock: (now, crate::sys::monotonic_ns()),
        }
    }

    /// When [`FastPathSync::sync`] is due.
    pub fn next_sync(&self) -> Instant {
        self.next_sync
    }

    fn deadline_ns(&self, deadline: Instant) -> u64 {
        let d = deadline.saturating_duration_since(self.clock.0);
        self.clock
            .1
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Brings the kernel maps up to date with `core` and credits it with
    /// what the kernel relayed.
    pub fn sync(&mut self, core: &mut Server, now: Instant) {
        self.next_sync = now + SYNC_INTERVAL;
        self.round += 1;
        let round = self.round;
        let mut listed = std::mem::take(&mut self.listed);
        listed.clear();
        core.fast_path_entries(now, &mut listed);
        let read_all = now >= self.next_read;
        if read_all {
            self.next_read = now + READ_INTERVAL;
        }
        let limited = core.config().max_bps > 0 || core.config().bps_capacity > 0;
        let fast_path = self.fast_path.clone();
        let Ok(mut maps) = fast_path.maps.lock() else {
            return;
        };
        for e in listed.drain(..) {
            let key = c2p_key(&e);
            let deadline_ns = self.deadline_ns(e.deadline);
            match self.installed.get_mut(&key) {
                Some(i) if i.entry == e => i.seen = round,
                Some(i) => {
                    // A refresh moved a deadline (or the peer changed):
                    // the same slot, new values.
                    let (k, v, pk, pv) = map_entries(&e, i.slot, deadline_ns);
                    if pk != i.p2c {
                        maps.remove(&k, &i.p2c);
                    }
                    if let Err(err) = maps.insert(&k, &v, &pk, &pv) {
                        debug!(error = %err, "XDP entry not updated");
                    }
                    i.entry = e;
                    i.p2c = pk;
                    i.seen = round;
                }
                None => {
                    let Some(slot) = maps.take_slot() else {
                        fast_path.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let (k, v, pk, pv) = map_entries(&e, slot, deadline_ns);
                    match maps.insert(&k, &v, &pk, &pv) {
                        Ok(()) => {
                            self.installed.insert(
                                k,
                                Installed {
                                    entry: e,
                                    p2c: pk,
                                    slot,
                                    read: KernelRelayed::default(),
                                    seen: round,
                                },
                            );
                        }
                        Err(err) => {
                            maps.remove(&k, &pk);
                            maps.free_slot(slot);
                            fast_path.refused.fetch_add(1, Ordering::Relaxed);
                            debug!(error = %err, "XDP entry refused: this channel stays in user space");
                        }
                    }
                }
            }
        }
        self.listed = listed;
        let mut gone = Vec::new();
        for (k, i) in &mut self.installed {
            let ended = i.seen != round;
            if ended {
                maps.remove(k, &i.p2c);
            }
            if ended || read_all || limited {
                let now_read = maps.read_slot(i.slot);
                let delta = i.read.delta(&now_read);
                i.read = now_read;
                let e = &i.entry;
                core.credit_fast_path(now, &e.five_tuple, e.allocation, &e.user, delta);
            }
            if ended {
                maps.free_slot(i.slot);
                gone.push(*k);
            }
        }
        for k in gone {
            self.installed.remove(&k);
        }
        fast_path
            .entries
            .store(maps.slots_in_use(), Ordering::Relaxed);
    }

    /// Deletes every entry this worker wrote, crediting the last counts
    /// (the worker stops).
    pub fn clear(&mut self, core: &mut Server, now: Instant) {
        let Ok(mut maps) = self.fast_path.maps.lock() else {
            return;
        };
        for (k, i) in self.installed.drain() {
            maps.remove(&k, &i.p2c);
            let delta = i.read.delta(&maps.read_slot(i.slot));
            maps.free_slot(i.slot);
            let e = &i.entry;
            core.credit_fast_path(now, &e.five_tuple, e.allocation, &e.user, delta);
        }
        self.fast_path
            .entries
            .store(maps.slots_in_use(), Ordering::Relaxed);
    }
}

// The one `unsafe` outside `sys`: aya's `Pod` marker for the map layouts.
#[cfg(feature = "xdp")]
#[allow(unsafe_code)]
mod imp {
    //! The aya loader.
    use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
    use aya::programs::{Xdp, XdpMode as AyaMode};
    use aya::{Ebpf, EbpfLoader, Pod};

    use super::*;

    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with
    // no implicit padding (sizes asserted above).
    unsafe impl Pod for C2pKey {}
    unsafe impl Pod for C2pVal {}
    unsafe impl Pod for P2cKey {}
    unsafe impl Pod for P2cVal {}
    unsafe impl Pod for SlotStats {}

    /// Entries in each binding map and statistics slots
    /// (`TURND_MAX_BINDINGS`, `TURND_MAX_STATS` in `turnd_xdp.h`): channel
    /// bindings the kernel can relay at once; more stay in user space.
    const MAX_ENTRIES: u32 = 65_536;

    impl SlotStats {
        fn relayed(&self) -> KernelRelayed {
            KernelRelayed {
                packets_to_peer: self.c2p_packets,
                bytes_to_peer: self.c2p_bytes,
                packets_to_client: self.p2c_packets,
                bytes_to_client: self.p2c_bytes,
            }
        }
    }

    /// The BPF object built by build.rs from `xdp/turnd_xdp.c`.
    static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/turnd_xdp.o"));

    pub(super) struct Maps {
        /// Holds the program and its links: dropping it detaches.
        _ebpf: Ebpf,
        c2p: BpfHashMap<MapData, C2pKey, C2pVal>,
        p2c: BpfHashMap<MapData, P2cKey, P2cVal>,
        stats: PerCpuArray<MapData, SlotStats>,
        counters: PerCpuArray<MapData, u64>,
        cpus: usize,
        free: Vec<u32>,
        next: u32,
    }

    fn err(what: &str, e: impl std::fmt::Display) -> StartError {
        StartError::Xdp(format!("{what}: {e}"))
    }

    impl Maps {
        pub fn load(mode: XdpMode, interfaces: &[String]) -> Result<Maps, StartError> {
            crate::sys::raise_memlock_limit();
            let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| {
                err("cannot load the BPF program (needs root, or CAP_BPF and CAP_NET_ADMIN, and a kernel with BPF and BTF)", e)
            })?;
            let program: &mut Xdp = ebpf
                .program_mut("turnd_xdp")
                .ok_or_else(|| StartError::Xdp("the BPF object has no program turnd_xdp".into()))?
                .try_into()
                .map_err(|e| err("the BPF object's turnd_xdp is not an XDP program", e))?;
            program.load().map_err(|e| {
                err(
                    "the kernel refused the XDP program (needs root, or CAP_BPF and CAP_NET_ADMIN)",
                    e,
                )
            })?;
            let aya_mode = match mode {
                XdpMode::Native => AyaMode::Driver,
                _ => AyaMode::Skb,
            };
            for i in interfaces {
                program.attach(i, aya_mode).map_err(|e| {
                    let hint = if mode == XdpMode::Native {
                        " (native mode needs a driver with XDP support; xdp = \"generic\" works on every interface)"
                    } else {
                        ""
                    };
                    err(
                        &format!("cannot attach to {i} in {} mode{hint}", mode.as_str()),
                        e,
                    )
                })?;
            }
            let mut take = |name: &str| {
                ebpf.take_map(name)
                    .ok_or_else(|| StartError::Xdp(format!("the BPF object has no map {name}")))
            };
            let c2p = BpfHashMap::try_from(take("turnd_c2p")?).map_err(|e| err("turnd_c2p", e))?;
            let p2c = BpfHashMap::try_from(take("turnd_p2c")?).map_err(|e| err("turnd_p2c", e))?;
            let stats =
                PerCpuArray::try_from(take("turnd_stats")?).map_err(|e| err("turnd_stats", e))?;
            let counters = PerCpuArray::try_from(take("turnd_counters")?)
                .map_err(|e| err("turnd_counters", e))?;
            let cpus = aya::util::nr_cpus().map_err(|(what, e)| err(what, e))?;
            Ok(Maps {
                _ebpf: ebpf,
                c2p,
                p2c,
                stats,
                counters,
                cpus,
                free: Vec::new(),
                next: 0,
            })
        }

        pub fn insert(
            &mut self,
            k: &C2pKey,
            v: &C2pVal,
            pk: &P2cKey,
            pv: &P2cVal,
        ) -> Result<(), aya::maps::MapError> {
            // The client-to-peer entry last: a packet never finds a
            // client-to-peer entry without its way back.
            self.p2c.insert(pk, pv, 0)?;
            self.c2p.insert(k, v, 0)
        }

        pub fn remove(&mut self, k: &C2pKey, pk: &P2cKey) {
            let _ = self.c2p.remove(k);
            let _ = self.p2c.remove(pk);
        }

        /// A zeroed statistics slot, or none when all are taken.
        pub fn take_slot(&mut self) -> Option<u32> {
            let slot = match self.free.pop() {
                Some(s) => s,
                None if self.next < MAX_ENTRIES => {
                    self.next += 1;
                    self.next - 1
                }
                None => return None,
            };
            let zero = PerCpuValues::try_from(vec![SlotStats::default(); self.cpus]).ok()?;
            if self.stats.set(slot, zero, 0).is_err() {
                self.free.push(slot);
                return None;
            }
            Some(slot)
        }

        pub fn free_slot(&mut self, slot: u32) {
            self.free.push(slot);
        }

        pub fn slots_in_use(&self) -> usize {
            self.next as usize - self.free.len()
        }

        /// A slot's counters summed over CPUs.
        pub fn read_slot(&self, slot: u32) -> KernelRelayed {
            let mut sum = SlotStats::default();
            if let Ok(values) = self.stats.get(&slot, 0) {
                for v in values.iter() {
                    sum.c2p_packets += v.c2p_packets;
                    sum.c2p_bytes += v.c2p_bytes;
                    sum.p2c_packets += v.p2c_packets;
                    sum.p2c_bytes += v.p2c_bytes;
                }
            }
            sum.relayed()
        }

        pub fn counters(&self) -> [u64; 16] {
            let mut out = [0u64; 16];
            for (i, o) in out.iter_mut().enumerate() {
                if let Ok(values) = self.counters.get(&(i as u32), 0) {
                    *o = values.iter().sum();
                }
            }
            out
        }
    }
}

#[cfg(not(feature = "xdp"))]
mod imp {
    //! Built without the `xdp` feature: nothing can be loaded.
    use super::*;

    /// Never constructed.
    pub(super) enum Maps {}

    impl Maps {
        pub fn load(_mode: XdpMode, _interfaces: &[String]) -> Result<Maps, StartError> {
            Err(StartError::Xdp(
                "this turnd was built without the `xdp` feature (cargo build --release --features xdp, with clang-14 and libbpf-dev installed)".into(),
            ))
        }
        pub fn insert(
            &mut self,
            _: &C2pKey,
            _: &C2pVal,
            _: &P2cKey,
            _: &P2cVal,
        ) -> Result<(), String> {
            match *self {}
        }
        pub fn remove(&mut self, _: &C2pKey, _: &P2cKey) {
            match *self {}
        }
        pub fn take_slot(&mut self) -> Option<u32> {
            match *self {}
        }
        pub fn free_slot(&mut self, _: u32) {
            match *self {}
        }
        pub fn slots_in_use(&self) -> usize {
            match *self {}
        }
        pub fn read_slot(&self, _: u32) -> KernelRelayed {
            match *self {}
        }
        pub fn counters(&self) -> [u64; 16] {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::{FiveTuple, Transport};
    use std::net::SocketAddr;

    #[test]
    fn map_entries_use_mapped_ipv4_and_network_byte_order() {
        let now = Instant::now();
        let e = FastPathEntry {
            five_tuple: FiveTuple {
                client: "192.0.2.10:40000".parse().unwrap(),
                server: "192.0.2.1:3478".parse().unwrap(),
                transport: Transport::Udp,
            },
            allocation: 7,
            user: "alice".into(),
            channel: 0x4001,
            relay: "192.0.2.17:50000".parse().unwrap(),
            peer: "192.0.2.18:6000".parse().unwrap(),
            deadline: now,
        };
        let (k, v, pk, pv) = map_entries(&e, 3, 99);
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[192, 0, 2, 10]);
        assert_eq!(k.client_addr, mapped);
        assert_eq!(k.client_port.to_ne_bytes(), 40000u16.to_be_bytes());
        assert_eq!(k.channel.to_ne_bytes(), [0x40, 0x01]);
        assert_eq!(v.peer_port.to_ne_bytes(), 6000u16.to_be_bytes());
        assert_eq!((v.stats_idx, v.deadline_ns), (3, 99));
        assert_eq!(pk.relay_port.to_ne_bytes(), 50000u16.to_be_bytes());
        assert_eq!(pv.listen_port.to_ne_bytes(), 3478u16.to_be_bytes());
        assert_eq!(pv.channel.to_ne_bytes(), [0x40, 0x01]);
        let six: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        assert_eq!(
            octets(six.ip()),
            six.ip()
                .to_string()
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
