//! The small unsafe part of turnd: batched UDP receive and send
//! (`recvmmsg`/`sendmmsg`) and the open-file limit, plain libc calls that std
//! and socket2 do not expose, and the registration of UDP sockets with
//! tokio's reactor ([`register_udp`]) and heap trimming ([`trim_heap`]).
//! Nothing else in the library uses
//! `unsafe`.
//!
//! Each call is given pointers to memory this module owns for the whole
//! call:
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
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes kept free before each received datagram: room for a ChannelData
/// header (RFC 8656 section 12.4), so peer data is framed in place.
pub const HEADROOM: usize = crate::stun::CHANNEL_DATA_HEADER_LEN;
/// Bytes kept free after each received datagram: room for ChannelData
/// padding to a multiple of 4 over TCP and TLS (RFC 8656 section 12.5).
pub const TAILROOM: usize = 3;

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
    /// Room for `count` datagrams (at least 1) of at most `cap` bytes. The
    /// buffer is zeroed lazily by the OS, so unused slot tails cost no RSS.
    pub fn new(count: usize, cap: usize) -> Self {
        let count = count.max(1);
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
        let o = i * self.slot;
        &self.bufs[o..o + self.slot]
    }

    /// Datagram `i` of the last receive: its source, its length in bytes,
    /// and its whole slot, with the datagram at `HEADROOM..HEADROOM + len`.
    /// `None` when `i` is out of range, the source address is not IPv4 or
    /// IPv6, or the datagram was truncated (larger than the slot).
    pub fn slot_mut(&mut self, i: usize) -> Option<(SocketAddr, usize, &mut [u8])> {
        if i >= self.len {
            return None;
        }
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(self.cap);
        let from = from_storage(&self.names[i], h.msg_hdr.msg_namelen)?;
        let o = i * self.slot;
        Some((from, len, &mut self.bufs[o..o + self.slot]))
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
            // SAFETY: headers `at..count` point at `self.iovs`/`self.names`
            // (not resized since) and at the callers' slices, borrowed for
            // `'a`, which outlives this call.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(at),
                    (count - at) as libc::c_uint,
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
}
