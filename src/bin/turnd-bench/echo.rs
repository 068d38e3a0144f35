//! `turnd-bench echo`: a stand-alone UDP echo peer, for runs where the peer
//! must live somewhere else than the generator (another network namespace:
//! benches/compare-xdp.sh). One thread, one socket, epoll, and per readiness
//! event `recvmmsg` + `sendmmsg` batches of 64, exactly like the generator's
//! own echo sockets; each datagram goes back to its sender unchanged.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use turnd::sys::{Epoll, RecvBatch, SendBatch, EPOLL_IN};

/// Echoes every datagram arriving at `listen` until the process is killed.
pub fn run(listen: SocketAddr, buffer: usize) -> io::Result<()> {
    let s: UdpSocket = crate::engine::bind_udp_at(listen, buffer)?;
    let mut ep = Epoll::new(4)?;
    ep.add(s.as_raw_fd(), 0, EPOLL_IN)?;
    println!("turnd-bench echo: listening on udp {}", s.local_addr()?);
    let _ = io::stdout().flush();
    let mut batch = RecvBatch::new(64, 65_536);
    let mut out = SendBatch::default();
    let fd = s.as_fd();
    loop {
        if ep.wait(None)? == 0 {
            continue;
        }
        loop {
            // An error (an ICMP report) reads as nothing.
            let n = batch.recv(fd).unwrap_or(0);
            if n > 0 {
                let back = (0..n).filter_map(|m| batch.datagram(m));
                out.send(fd, back.map(|(from, bytes)| (bytes, from)));
            }
            if n < batch.capacity() {
                break;
            }
        }
    }
}
