//! STUN/TURN over TCP and TLS (RFC 8656 section 3.1): one task per
//! connection reads frames (STUN messages and padded ChannelData, RFC 8656
//! section 12.5) into the core; a second task writes what the core and the
//! relay sockets queue for the client.
//!
//! A connection is the allocation's 5-tuple: closing it deletes the
//! allocation. Garbage or an oversized frame closes that connection only.
//! A connection without an allocation is closed after `stream-idle-timeout`;
//! TLS handshakes must finish within `tls-handshake-timeout`; each source
//! address has at most `max-connections-per-ip` connections; what waits to be
//! written to a slow client is capped at [`MAX_PENDING_BYTES`] (beyond, relayed
//! datagrams for it are dropped, as UDP would be), so a slow or hostile
//! client never stalls anyone else.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{Shell, ShellIo, OUT_BUFFER};
use crate::stun::stream_frame_len;
use crate::turn::{FiveTuple, Server, Transport};

/// Most bytes queued for one client before relayed data for it is dropped.
pub const MAX_PENDING_BYTES: usize = 512 * 1024;
/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Limits of stream connections.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Close a connection without an allocation after this long without data.
    pub idle_timeout: Duration,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Concurrent connections per source IP address.
    pub max_per_ip: u32,
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

/// Accepts TCP (or, with `tls`, TLS) connections on `listener` forever.
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shell: Rc<Shell>,
    core: Rc<RefCell<Server>>,
) {
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(?local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !shell.admit_connection(peer.ip()) {
            debug!(%peer, "too many connections from this address: refused");
            continue;
        }
        let Ok(server) = stream.local_addr() else {
            shell.release_connection(peer.ip());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shell = shell.clone();
        let core = core.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            match tls {
                None => {
                    let ft = FiveTuple {
                        client: peer,
                        server,
                        transport: Transport::Tcp,
                    };
                    serve(stream, ft, &shell, &core).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(
                        shell.limits.handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls_stream)) => {
                            let ft = FiveTuple {
                                client: peer,
                                server,
                                transport: Transport::Tls,
                            };
                            serve(tls_stream, ft, &shell, &core).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => debug!(%peer, "tls handshake timed out"),
                    }
                }
            }
            shell.release_connection(peer.ip());
        });
    }
}

/// Serves one client connection until it closes, then deletes its allocation.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    ft: FiveTuple,
    shell: &Rc<Shell>,
    core: &Rc<RefCell<Server>>,
) {
    let (mut reader, write_half) = tokio::io::split(stream);
    let conn = Rc::new(StreamConn::default());
    shell.conns.borrow_mut().insert(ft, conn.clone());
    let writer_task = tokio::task::spawn_local(writer(write_half, conn.clone()));
    debug!(client = %ft.client, transport = ?ft.transport, "connection opened");

    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = vec![0u8; OUT_BUFFER];
    let reason: String = 'conn: loop {
        loop {
            match stream_frame_len(&buf) {
                Ok(Some(n)) => {
                    let frame = buf.split_to(n);
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
                    if let Some(id) = shell.perform(output, &frame, &out) {
                        // RFC 6062 section 5.4: from now on raw bytes to and from the peer.
                        shell.conns.borrow_mut().remove(&ft);
                        conn.handover.set(true);
                        conn.wake.notify_one();
                        let write_half = writer_task.await.ok().flatten();
                        let peer_stream = shell.tcp_pending.borrow_mut().remove(&id);
                        match (write_half, peer_stream) {
                            (Some(w), Some(peer)) => {
                                let client = reader.unsplit(w);
                                pipe(id, client, peer, buf, shell).await;
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
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let has_allocation = core.borrow().allocation(&ft).is_some();
        let read = reader.read_buf(&mut buf);
        let result = if has_allocation {
            Ok(read.await)
        } else {
            tokio::time::timeout(shell.limits.idle_timeout, read).await
        };
        match result {
            Ok(Ok(0)) => break "closed by client".into(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break format!("read error: {e}"),
            Err(_) => break "idle without an allocation".into(),
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
/// until either side closes or the allocation goes. Back-pressure, not loss:
/// a side that does not read stops the other side's reads.
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
    id: u32,
    mut client: S,
    mut peer: tokio::net::TcpStream,
    leftover: BytesMut,
    shell: &Rc<Shell>,
) {
    let cut = Rc::new(Notify::new());
    shell.tcp_piped.borrow_mut().insert(id, cut.clone());
    if !leftover.is_empty() && peer.write_all(&leftover).await.is_err() {
        shell.tcp_piped.borrow_mut().remove(&id);
        return;
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut peer) => {
            debug!(connection_id = id, result = ?r, "tcp relay connection ended");
        }
        _ = cut.notified() => debug!(connection_id = id, "tcp relay connection cut: allocation gone"),
    }
    shell.tcp_piped.borrow_mut().remove(&id);
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
                warn!(%relay, error = %e, "tcp relay accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
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
    TcpListener::from_std(s.into())
}
