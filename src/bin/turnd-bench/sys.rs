//! The small unsafe part of turnd-bench: epoll with a nanosecond timeout,
//! `recvmmsg`/`sendmmsg` batches, `getrusage`, the timer slack and the
//! open-file limit.
//!
//! Why unsafe: these are plain libc calls that std does not expose. Each one
//! is given pointers to memory this module owns for the whole call:
//!
//! - [`Epoll`] passes its own `Vec<epoll_event>` (capacity fixed at creation)
//!   and its own file descriptor (an `OwnedFd`, closed on drop).
//! - [`Batch`] owns one contiguous payload buffer, one `iovec`, one
//!   `sockaddr_storage` and one `mmsghdr` per message, allocated once in
//!   [`Batch::new`] and never resized, so the raw pointers stored inside the
//!   `mmsghdr`s (into those `Vec`s' heap memory) stay valid for the life of the
//!   `Batch`, even when the `Batch` itself moves. The raw pointers also make
//!   `Batch` `!Send`, so it stays on the thread that made it. Lengths given to
//!   the kernel never exceed the buffers they describe.
//!
//! Nothing else in the binary uses `unsafe`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use turnd::sys::{from_storage, to_storage};

/// An epoll instance (level-triggered) with its event buffer.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// `epoll_pwait2` (nanosecond timeout, Linux 5.11) works here.
    pwait2: bool,
}

/// Readable.
pub const IN: u32 = libc::EPOLLIN as u32;
/// Writable.
pub const OUT: u32 = libc::EPOLLOUT as u32;

impl Epoll {
    /// A new epoll instance returning at most `max_events` per wait.
    pub fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)],
            pwait2: true,
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` lives for the call; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for `events` ([`IN`], [`OUT`]), reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Changes the events watched on `fd`.
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (`None`: forever) and returns how many events
    /// are ready; read them with [`Epoll::event`]. EINTR counts as zero events.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let max = self.events.len() as i32;
        let epfd = self.fd.as_raw_fd();
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
    pub fn event(&self, i: usize) -> (u64, u32) {
        let e = self.events[i];
        (e.u64, e.events)
    }
}

/// A batch of datagrams for `recvmmsg`/`sendmmsg`, with its own buffers.
pub struct Batch {
    bufs: Vec<u8>,
    cap: usize,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    /// Messages held after [`Batch::recv`], or to send with [`Batch::send`].
    pub len: usize,
}

impl Batch {
    /// `count` messages of at most `cap` bytes each.
    pub fn new(count: usize, cap: usize) -> Self {
        let count = count.max(1);
        let mut b = Batch {
            bufs: vec![0u8; count * cap],
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
                // SAFETY: `i * cap` is inside `bufs` (count * cap bytes).
                iov_base: unsafe { base.add(i * cap) }.cast(),
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

    /// How many messages the batch holds at most.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Receives up to [`Batch::capacity`] datagrams without blocking; returns
    /// how many (0 when none is waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.hdrs.len() {
            self.iovs[i].iov_len = self.cap;
            self.hdrs[i].msg_hdr.msg_namelen =
                size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            self.hdrs[i].msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at this batch's own iovec, buffer slice
        // and sockaddr_storage (see the module comment); vlen is their count.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            self.len = 0;
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        self.len = r as usize;
        for i in 0..self.len {
            self.iovs[i].iov_len = self.hdrs[i].msg_len as usize;
        }
        Ok(self.len)
    }

    /// The bytes of message `i` (as received).
    pub fn data(&self, i: usize) -> &[u8] {
        let o = i * self.cap;
        &self.bufs[o..o + self.iovs[i].iov_len]
    }

    /// The source address of received message `i`.
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        from_storage(&self.names[i], self.hdrs[i].msg_hdr.msg_namelen)
    }

    /// Sets message `i`'s destination (the source address stays there after a
    /// receive, so an echo needs no call).
    pub fn set_addr(&mut self, i: usize, addr: SocketAddr) {
        self.hdrs[i].msg_hdr.msg_namelen = to_storage(addr, &mut self.names[i]);
    }

    /// Sends messages `0..count` (their lengths and destinations as set)
    /// without blocking. A datagram the kernel refuses (full buffer) is
    /// dropped, as UDP would. Returns how many were sent.
    pub fn send(&mut self, fd: RawFd, count: usize) -> usize {
        let count = count.min(self.hdrs.len());
        let mut at = 0;
        let mut sent = 0;
        while at < count {
            // SAFETY: as in `recv`; `at + (count - at) <= hdrs.len()`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr().add(at),
                    (count - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                at += 1; // drop the message that failed
            } else {
                at += r as usize;
                sent += r as usize;
            }
        }
        sent
    }
}

/// This process's user + system CPU time so far.
pub fn self_cpu() -> Duration {
    // SAFETY: rusage is plain old data; getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: `ru` lives for the call.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if r != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Clock ticks per second, the unit of utime and stime in /proc/PID/stat.
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

/// Raises the soft open-file limit to the hard limit (one socket per
/// allocation, plus the server's side in the forwarder).
pub fn raise_nofile() -> u64 {
    // SAFETY: rlimit is plain old data; the calls fill / read the struct we pass.
    unsafe {
        let mut rl: libc::rlimit = zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        }
        rl.rlim_cur as u64
    }
}
