//! The bare UDP forwarder: the floor a relay cannot beat.
//!
//! A client sends `BIND <peer ip:port>` to the control address; the forwarder
//! binds one relay socket for that client on the control IP (port chosen by
//! the kernel) and answers `OK <port>` from the control socket. From then on a
//! datagram the client sends to its relay socket goes to the peer, and any
//! other datagram arriving there goes to the client: no framing, no
//! permission check, no lookup beyond the socket itself. `FREE <port>` closes
//! the relay socket (no answer).
//!
//! I/O: one thread, one epoll instance (level-triggered), and on each
//! readable relay socket one `recvmmsg` of up to 64 datagrams, then the
//! destinations are written in place and one `sendmmsg` sends them all
//! back out of the same socket. The unsafe libc calls are in `turnd::sys`.
//!
//! With `--no-batch` (`batch == false`): one `recvfrom` and one `sendto` per
//! readiness event, nothing else; a socket with more waiting stays readable
//! (level-triggered) and is served again on the next `epoll_wait`. That is
//! the plainest relay: one system call in, one out, one wake-up per datagram
//! when they come one at a time.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use socket2::{Domain, Protocol, Socket, Type};

use turnd::sys::{self, Epoll, RecvBatch, SendBatch, EPOLL_IN};

struct Relay {
    socket: UdpSocket,
    client: SocketAddr,
    peer: SocketAddr,
}

const CONTROL: u64 = u64::MAX;
const BATCH: usize = 64;

fn bind(addr: SocketAddr, buffer: Option<usize>) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(b) = buffer {
        let _ = s.set_recv_buffer_size(b);
        let _ = s.set_send_buffer_size(b);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Runs the forwarder on `listen` until the process is killed; `batch`:
/// recvmmsg/sendmmsg, otherwise one recvfrom + one sendto per event;
/// `buffer`: SO_RCVBUF/SO_SNDBUF of the relay sockets (None: the kernel's).
pub fn run(listen: SocketAddr, batch_io: bool, buffer: Option<usize>) -> io::Result<()> {
    let _ = sys::raise_nofile_limit();
    let control = bind(listen, Some(4 << 20))?;
    let local = control.local_addr()?;
    let mut ep = Epoll::new(1024)?;
    ep.add(control.as_raw_fd(), CONTROL, EPOLL_IN)?;
    println!(
        "turnd-bench forwarder: listening on udp {local} ({})",
        if batch_io {
            "recvmmsg/sendmmsg"
        } else {
            "recvfrom/sendto"
        }
    );
    let _ = io::stdout().flush();

    let mut relays: Vec<Option<Relay>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut by_port: HashMap<u16, usize> = HashMap::new();
    let mut batch = RecvBatch::new(BATCH, 65_536);
    let mut out = SendBatch::default();
    let mut ctl = [0u8; 256];
    let mut one = vec![0u8; 65_536];
    loop {
        let n = ep.wait(None)?;
        for e in 0..n {
            let (tok, _) = ep.event(e);
            if tok == CONTROL {
                loop {
                    let (len, from) = match control.recv_from(&mut ctl) {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    };
                    let text = std::str::from_utf8(&ctl[..len]).unwrap_or("");
                    if let Some(peer) = text.strip_prefix("BIND ") {
                        let Ok(peer) = peer.trim().parse::<SocketAddr>() else {
                            continue;
                        };
                        let idx = match by_client.get(&from) {
                            Some(&i) => i, // a retransmitted BIND
                            None => {
                                let socket = bind(SocketAddr::new(local.ip(), 0), buffer)?;
                                let i = free.pop().unwrap_or_else(|| {
                                    relays.push(None);
                                    relays.len() - 1
                                });
                                ep.add(socket.as_raw_fd(), i as u64, EPOLL_IN)?;
                                by_port.insert(socket.local_addr()?.port(), i);
                                relays[i] = Some(Relay {
                                    socket,
                                    client: from,
                                    peer,
                                });
                                by_client.insert(from, i);
                                i
                            }
                        };
                        if let Some(r) = &relays[idx] {
                            let port = r.socket.local_addr()?.port();
                            let _ = control.send_to(format!("OK {port}").as_bytes(), from);
                        }
                    } else if let Some(port) = text.strip_prefix("FREE ") {
                        let Ok(port) = port.trim().parse::<u16>() else {
                            continue;
                        };
                        if let Some(i) = by_port.remove(&port) {
                            if let Some(r) = relays[i].take() {
                                let _ = ep.delete(r.socket.as_raw_fd());
                                by_client.remove(&r.client);
                                free.push(i);
                            }
                        }
                    }
                }
                continue;
            }
            let Some(r) = relays.get(tok as usize).and_then(Option::as_ref) else {
                continue;
            };
            if !batch_io {
                // An error (an ICMP report for a client that went away) reads as nothing.
                if let Ok((len, from)) = r.socket.recv_from(&mut one) {
                    let dest = if from == r.client { r.peer } else { r.client };
                    let _ = r.socket.send_to(&one[..len], dest);
                }
                continue;
            }
            let fd = r.socket.as_fd();
            loop {
                // An error (an ICMP report for a client that went away) reads as nothing.
                let k = batch.recv(fd).unwrap_or(0);
                if k > 0 {
                    let msgs = (0..k)
                        .filter_map(|m| batch.datagram(m))
                        .map(|(from, bytes)| {
                            let dest = if from == r.client { r.peer } else { r.client };
                            (bytes, dest)
                        });
                    out.send(fd, msgs);
                }
                if k < batch.capacity() {
                    break;
                }
            }
        }
    }
}
