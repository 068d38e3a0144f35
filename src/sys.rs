//! The small unsafe part of turnd and turnd-bench: batched UDP receive and
//! send (`recvmmsg`/`sendmmsg`), epoll with a nanosecond timeout ([`Epoll`],
//! the UDP workers' event loop) and its wake-up ([`EventFd`]), the open-file limit, CPU time and timer slack, plain
//! libc calls that std and socket2 do not expose, and the registration of
//! UDP sockets with tokio's reactor ([`register_udp`]) and heap trimming
//! ([`trim_heap`]). Nothing else in the library or its binaries uses
//! `unsafe`. The module is public only so that turnd-bench, a binary of this
//! package, shares it; it is not a stable API.
//!
//! Every public function is sound for any argument: sizes are clamped
//! ([`MAX_BATCH`], [`MAX_DATAGRAM`], [`MAX_EPOLL_EVENTS`]) before any
//! arithmetic, so no length given to the kernel exceeds the memory it
//! describes. Each call is given pointers to memory this module owns for the
//! whole call:
//!
//! - [`RecvBatch`] owns one contiguous buffer of `count` slots, one `iovec`,
//!   one `sockaddr_storage` and one `mmsghdr` per slot, allocated once in
//!   [`RecvBatch::new`] and never resized, so the raw pointers stored in the
//!   `mmsghdr`s (into those `Vec`s' heap memory) stay valid for the life of
//!   the batch even when the `RecvBatch` value moves. The raw pointers make
//!   it `!Send`: it stays on the worker thread that made it. Lengths given to
//!   the kernel never exceed the slots they describe.
//! - [`SendBatch`] fills its headers with pointers into the caller's slices
//!   and its own `iovec`/`sockaddr_storage` vectors inside one call of
//!   [`SendBatch::send`], whose borrows outlive the system call; the headers
//!   are not used after it returns.
//! - [`Epoll`] passes its own `Vec<epoll_event>` (length fixed at creation)
//!   and its own descriptor (an `OwnedFd`, closed on drop).
//! - [`EventFd`] reads and writes one `u64` of its own on its own descriptor.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Bytes kept free before each received datagram: room for a ChannelData
/// header (RFC 8656 section 12.4), so peer data is framed in place.
pub const HEADROOM: usize = crate::stun::CHANNEL_DATA_HEADER_LEN;
/// Bytes kept free after each received datagram: room for ChannelData
/// padding to a multiple of 4 over TCP and TLS (RFC 8656 section 12.5).
pub const TAILROOM: usize = 3;
/// Most datagrams one batch holds: the kernel's `UIO_MAXIOV`, beyond which
/// `recvmmsg`/`sendmmsg` handle no more per call anyway. Larger counts are
/// clamped to it.
pub const MAX_BATCH: usize = 1024;
/// Largest datagram capacity of a [`RecvBatch`] slot, in bytes: above every
/// UDP payload (65,527 bytes at most without IPv6 jumbograms). Larger
/// capacities are clamped to it.
pub const MAX_DATAGRAM: usize = 65_536;

/// Up to `count` received datagrams, each in its own slot:
/// `[HEADROOM bytes][datagram, at most cap bytes][TAILROOM bytes]`.
pub struct RecvBatch {
    bufs: Vec<u8>,
    slot: usize,
    cap: usize,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.hdrs.len())
            .field("cap", &self.cap)
            .field("len", &self.len)
            .finish()
    }
}

impl RecvBatch {
    /// Room for `count` datagrams of at most `cap` bytes each. `count` is
    /// clamped to `1..=`[`MAX_BATCH`] and `cap` to at most [`MAX_DATAGRAM`]
    /// (read the result back with [`RecvBatch::capacity`] and
    /// [`RecvBatch::datagram_capacity`]), so the buffer is at most about
    /// 64 MiB. It is zeroed lazily by the OS, so unused slot tails cost no RSS.
    pub fn new(count: usize, cap: usize) -> Self {
        let count = count.clamp(1, MAX_BATCH);
        let cap = cap.min(MAX_DATAGRAM);
        // Cannot overflow: at most 1024 * (65,536 + 7).
        let slot = HEADROOM + cap + TAILROOM;
        let mut b = RecvBatch {
            bufs: vec![0u8; count * slot],
            slot,
            cap,
            iovs: Vec::with_capacity(count),
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            names: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; count],
            hdrs: Vec::with_capacity(count),
            len: 0,
        };
        let base = b.bufs.as_mut_ptr();
        for i in 0..count {
            b.iovs.push(libc::iovec {
                // SAFETY: `i * slot + HEADROOM + cap <= count * slot`: inside `bufs`.
                iov_base: unsafe { base.add(i * slot + HEADROOM) }.cast(),
                iov_len: cap,
            });
        }
        for i in 0..count {
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut b.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(h);
        }
        b
    }

    /// Most datagrams one [`RecvBatch::recv`] returns.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Largest datagram a slot holds, in bytes (`cap` as clamped).
    pub fn datagram_capacity(&self) -> usize {
        self.cap
    }

    /// Receives up to [`RecvBatch::capacity`] datagrams from `fd` without
    /// blocking (one `recvmmsg`); returns how many, 0 when none was waiting.
    ///
    /// # Errors
    /// The socket's error (ICMP errors reported on the socket, EBADF...).
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        for i in 0..self.hdrs.len() {
            self.iovs[i].iov_len = self.cap;
            self.hdrs[i].msg_hdr.msg_namelen =
                size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            self.hdrs[i].msg_hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at this batch's own iovec, slot and
        // sockaddr_storage (see the module comment); vlen is their count.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.len = 0;
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        self.len = r as usize;
        Ok(self.len)
    }

    /// The whole slot `i` (see [`RecvBatch::slot_mut`] for its layout).
    ///
    /// # Panics
    /// When `i` is not below [`RecvBatch::capacity`].
    pub fn slot(&self, i: usize) -> &[u8] {
        assert!(
            i < self.capacity(),
            "slot {i} of a batch of {}",
            self.capacity()
        );
        let o = i * self.slot; // below bufs.len(): no overflow
        &self.bufs[o..o + self.slot]
    }

    /// Datagram `i` of the last receive: its source and its bytes. `None`
    /// as for [`RecvBatch::slot_mut`].
    pub fn datagram(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let (from, len) = self.received(i)?;
        let o = i * self.slot + HEADROOM;
        Some((from, &self.bufs[o..o + len]))
    }

    /// Datagram `i` of the last receive: its source, its length in bytes,
    /// and its whole slot, with the datagram at `HEADROOM..HEADROOM + len`.
    /// `None` when `i` is out of range, the source address is not IPv4 or
    /// IPv6, or the datagram was truncated (larger than the slot).
    pub fn slot_mut(&mut self, i: usize) -> Option<(SocketAddr, usize, &mut [u8])> {
        let (from, len) = self.received(i)?;
        let o = i * self.slot;
        Some((from, len, &mut self.bufs[o..o + self.slot]))
    }

    /// The source and length (at most `cap`) of datagram `i`, when it is
    /// one of the last receive's, complete, and from IPv4 or IPv6.
    fn received(&self, i: usize) -> Option<(SocketAddr, usize)> {
        if i >= self.len {
            return None;
        }
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(self.cap);
        Some((from_storage(&self.names[i], h.msg_hdr.msg_namelen)?, len))
    }
}

/// Reusable headers for `sendmmsg`: sends many datagrams from one socket
/// with one system call.
#[derive(Default)]
pub struct SendBatch {
    lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").finish_non_exhaustive()
    }
}

impl SendBatch {
    /// Sends each `(bytes, destination)` from `fd` without blocking, in
    /// order, with as few `sendmmsg` calls as the kernel allows. A datagram
    /// the kernel refuses (full socket buffer, unreachable) is dropped, as
    /// UDP would. Returns how many were sent.
    pub fn send<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        msgs: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
    ) -> usize {
        self.iovs.clear();
        self.names.clear();
        self.hdrs.clear();
        self.lens.clear();
        for (bytes, to) in msgs {
            self.iovs.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            let mut name: libc::sockaddr_storage = unsafe { zeroed() };
            self.lens.push(to_storage(to, &mut name));
            self.names.push(name);
        }
        // The vectors are complete: their heap memory no longer moves.
        for i in 0..self.iovs.len() {
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.lens[i];
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let count = self.hdrs.len();
        let (mut at, mut sent) = (0, 0);
        while at < count {
            // At most MAX_BATCH per call: fits a c_uint, and the kernel
            // takes no more.
            let vlen = (count - at).min(MAX_BATCH);
            // SAFETY: headers `at..at + vlen` (within `count`) point at
            // `self.iovs`/`self.names` (not resized since) and at the
            // callers' slices, borrowed for `'a`, which outlives this call.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(at),
                    vlen as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                at += 1; // drop the datagram that failed
            } else {
                at += r as usize;
                sent += r as usize;
            }
        }
        self.hdrs.clear();
        self.iovs.clear();
        sent
    }
}

/// An epoll instance (level-triggered) with its event buffer: the event
/// loop of turnd's UDP relay workers, and of turnd-bench's load generator
/// and forwarder.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// `epoll_pwait2` (nanosecond timeout, Linux 5.11) works here.
    pwait2: bool,
}

impl std::fmt::Debug for Epoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoll")
            .field("fd", &self.fd)
            .field("max_events", &self.events.len())
            .finish()
    }
}

/// Most events one [`Epoll::wait`] returns; larger `max_events` are clamped.
pub const MAX_EPOLL_EVENTS: usize = 65_536;
/// Epoll readiness flag: readable.
pub const EPOLL_IN: u32 = libc::EPOLLIN as u32;
/// Epoll readiness flag: writable.
pub const EPOLL_OUT: u32 = libc::EPOLLOUT as u32;

impl Epoll {
    /// A new epoll instance returning at most `max_events` per wait
    /// (clamped to `1..=`[`MAX_EPOLL_EVENTS`]).
    ///
    /// # Errors
    /// When the kernel refuses a new instance (descriptor limit).
    pub fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![
                libc::epoll_event { events: 0, u64: 0 };
                max_events.clamp(1, MAX_EPOLL_EVENTS)
            ],
            pwait2: true,
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` lives for the call; the kernel copies it. `fd` is only
        // a number to the kernel: a bad one is an error (EBADF), not UB.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for `events` ([`EPOLL_IN`], [`EPOLL_OUT`]), reported
    /// with `token`.
    ///
    /// # Errors
    /// The kernel's: EBADF, EEXIST (already watched), EPERM (a regular file).
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Changes the events watched on `fd`.
    ///
    /// # Errors
    /// The kernel's: EBADF, ENOENT (not watched).
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Stops watching `fd`.
    ///
    /// # Errors
    /// The kernel's: EBADF, ENOENT (not watched).
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (`None`: forever; a timeout beyond `i64::MAX`
    /// seconds is forever too) and returns how many events are ready; read
    /// them with [`Epoll::event`]. EINTR counts as zero events.
    ///
    /// # Errors
    /// The kernel's (EBADF, EINVAL).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        // At most MAX_EPOLL_EVENTS: fits an i32.
        let max = self.events.len() as i32;
        let epfd = self.fd.as_raw_fd();
        let timeout = timeout.filter(|t| t.as_secs() <= i64::MAX as u64);
        let r = if self.pwait2 {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            });
            let tsp = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `events` holds `max` entries; `tsp` is null or points to
            // `ts`, alive for the call; a null sigmask makes the size unused.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd,
                    self.events.as_mut_ptr(),
                    max,
                    tsp,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.pwait2 = false;
                return self.wait(timeout);
            }
            r as i32
        } else {
            // Millisecond timeout, rounded up so a short wait does not spin.
            let ms = timeout.map_or(-1, |t| {
                t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
            });
            // SAFETY: `events` holds `max` entries.
            unsafe { libc::epoll_wait(epfd, self.events.as_mut_ptr(), max, ms) }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(r as usize)
    }

    /// The token and event flags of ready event `i` (after [`Epoll::wait`]).
    ///
    /// # Panics
    /// When `i` is not below the clamped `max_events`.
    pub fn event(&self, i: usize) -> (u64, u32) {
        let e = self.events[i];
        (e.u64, e.events)
    }
}

/// An `eventfd` used as a wake-up for an [`Epoll`] loop on another thread:
/// [`EventFd::wake`] makes its descriptor readable, [`EventFd::reset`]
/// (on the loop's thread) makes it unreadable again. Nonblocking, counter
/// semantics: many wakes before one reset are one wake-up.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd, nonblocking and close-on-exec.
    ///
    /// # Errors
    /// When the kernel refuses a new descriptor (descriptor limit).
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The descriptor, to watch with [`Epoll::add`] for [`EPOLL_IN`].
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable (adds 1 to its counter; a counter at
    /// its maximum is already readable, so EAGAIN is ignored).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, alive for the call.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                size_of::<u64>(),
            );
        }
    }

    /// Clears the counter: the descriptor is unreadable until the next
    /// [`EventFd::wake`].
    pub fn reset(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into `n`, alive for the call.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut n as *mut u64).cast::<libc::c_void>(),
                size_of::<u64>(),
            );
        }
    }
}

/// This process's user + system CPU time so far (zero when unknown).
pub fn self_cpu() -> Duration {
    // SAFETY: rusage is plain old data; getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: `ru` lives for the call.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if r != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64)
            + Duration::from_micros(t.tv_usec.clamp(0, 999_999) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Clock ticks per second, the unit of utime and stime in /proc/PID/stat
/// (100 when unknown).
pub fn clock_ticks() -> u64 {
    // SAFETY: no pointer arguments.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Asks for 1 ns of timer slack (default 50 µs) so paced sends wake on time.
pub fn tight_timer_slack() {
    let slack_ns: libc::c_ulong = 1;
    // SAFETY: PR_SET_TIMERSLACK takes an integer; no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns);
    }
}

/// Writes `addr` as a `sockaddr_in` or `sockaddr_in6` at the start of `s`;
/// returns its length in bytes.
pub fn to_storage(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is larger than and aligned for both
    // sockaddr_in and sockaddr_in6; we write one of them at its start.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let p = (s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                *p = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                let p = (s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                *p = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

/// Reads the IPv4 or IPv6 address the kernel wrote in `s` (`len` bytes);
/// `None` for another family or a short length.
pub fn from_storage(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    // SAFETY: the family says which struct the kernel wrote, and `len`
    // confirms it is complete; both fit in sockaddr_storage.
    unsafe {
        match s.ss_family as i32 {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                let a = &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                let a = &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Registers a nonblocking UDP socket with the current tokio reactor.
///
/// # Errors
/// When the reactor refuses it (no runtime on this thread, epoll errors).
pub fn register_udp(
    socket: std::net::UdpSocket,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the `UdpSocket` owns a valid descriptor, and the `AsyncFd`
    // takes ownership of it: nothing else can close or replace the
    // descriptor while it is registered; it is closed only when the
    // `AsyncFd` is dropped, after deregistration.
    Ok(unsafe { tokio::io::unix::AsyncFd::register(socket) }?)
}

/// Returns the free memory of every malloc arena to the OS (glibc's
/// `malloc_trim(0)`, which also releases free pages inside the heap). After
/// many allocations ended, the allocator would otherwise keep their memory
/// for reuse and RSS would stay at its peak. Takes a few milliseconds on a
/// large heap: call it after a drop, not on a hot path.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments but a size; glibc walks its own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises this process's soft open-file limit (RLIMIT_NOFILE) to its hard
/// limit: every allocation holds a relay socket, so the common soft limit of
/// 1024 would cap a server at about a thousand allocations. Returns the
/// (old, new) soft limits.
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    // SAFETY: rlimit is plain old data; getrlimit fills the struct we pass.
    let mut rl: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `rl` lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = rl.rlim_cur;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` lives for the call; the kernel copies it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((old, rl.rlim_cur))
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of BPF's
/// `bpf_ktime_get_ns()` and of [`std::time::Instant`] on Linux.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Lifts `RLIMIT_MEMLOCK` to its hard limit, best effort: kernels before
/// 5.11 charge BPF maps to it (later ones to the memory cgroup).
#[cfg(feature = "xdp")]
pub fn raise_memlock_limit() {
    // SAFETY: rlimit is plain old data; getrlimit fills the struct we pass.
    let mut rl: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `rl` lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` lives for the call; the kernel copies it.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn batches_round_trip_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let mut sb = SendBatch::default();
        let sent = sb.send(a.as_fd(), payloads.iter().map(|p| (p.as_slice(), to)));
        assert_eq!(sent, 5);
        let mut rb = RecvBatch::new(4, 2048);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = rb.recv(b.as_fd()).unwrap();
            for i in 0..n {
                let (from, len, slot) = rb.slot_mut(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                got.push(slot[HEADROOM..HEADROOM + len].to_vec());
            }
            if got.len() == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, payloads, "a batch of 4 then 1, in order");
        assert_eq!(rb.recv(b.as_fd()).unwrap(), 0, "empty queue reads 0");
        assert!(rb.slot_mut(4).is_none());
    }

    #[test]
    fn a_datagram_larger_than_a_slot_is_refused() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        a.send_to(&[7u8; 300], b.local_addr().unwrap()).unwrap();
        let mut rb = RecvBatch::new(2, 100);
        let mut n = 0;
        for _ in 0..100 {
            n = rb.recv(b.as_fd()).unwrap();
            if n > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(n, 1);
        assert!(
            rb.slot_mut(0).is_none(),
            "truncated datagram must not be used"
        );
    }

    /// Issue 10: absurd sizes overflowed `HEADROOM + cap + TAILROOM` and
    /// `count * slot`, and the kernel was told about more memory than the
    /// batch had.
    #[test]
    fn absurd_batch_sizes_are_clamped() {
        for (count, cap) in [
            (usize::MAX, usize::MAX),
            (1, usize::MAX),
            (1, usize::MAX - HEADROOM - TAILROOM + 1),
            (usize::MAX / 2, 2),
        ] {
            let rb = RecvBatch::new(count, cap);
            assert!(
                rb.capacity() >= 1 && rb.capacity() <= MAX_BATCH,
                "{count} {cap}"
            );
            assert!(rb.cap <= MAX_DATAGRAM);
            assert_eq!(
                rb.bufs.len(),
                rb.capacity() * (HEADROOM + rb.cap + TAILROOM)
            );
            for iov in &rb.iovs {
                assert_eq!(iov.iov_len, rb.cap);
            }
        }
        assert_eq!(RecvBatch::new(0, 0).capacity(), 1);
    }

    #[test]
    #[should_panic(expected = "slot 18446744073709551615 of a batch of 2")]
    fn an_absurd_slot_index_panics_cleanly() {
        let _ = RecvBatch::new(2, 100).slot(usize::MAX);
    }

    #[test]
    fn absurd_epoll_and_send_arguments_are_clamped() {
        let mut ep = Epoll::new(usize::MAX).unwrap();
        assert_eq!(ep.events.len(), MAX_EPOLL_EVENTS);
        assert_eq!(ep.wait(Some(Duration::ZERO)).unwrap(), 0);
        assert!(
            ep.add(-1, 0, EPOLL_IN).is_err(),
            "a bad descriptor is an error"
        );
        assert!(ep.add(i32::MAX, 0, EPOLL_IN).is_err());
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        ep.add(b.as_raw_fd(), 7, EPOLL_IN).unwrap();
        // More datagrams than one sendmmsg takes.
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let sent =
            SendBatch::default().send(a.as_fd(), (0..3 * MAX_BATCH).map(|_| (&[1u8][..], to)));
        assert!((1..=3 * MAX_BATCH).contains(&sent), "{sent}");
        assert_eq!(ep.wait(Some(Duration::from_secs(5))).unwrap(), 1);
        assert_eq!(ep.event(0), (7, EPOLL_IN));
        let mut rb = RecvBatch::new(usize::MAX, 16);
        let n = rb.recv(b.as_fd()).unwrap();
        assert!((1..=MAX_BATCH.min(sent)).contains(&n), "{n}");
        assert_eq!(rb.datagram(0), Some((a.local_addr().unwrap(), &[1u8][..])));
        assert_eq!(rb.datagram(n), None);
        assert_eq!(rb.datagram(usize::MAX), None);
        assert!(self_cpu() > Duration::ZERO);
        assert!(clock_ticks() > 0);
    }
}
