//! A synchronous STUN/TURN client over one TCP or TLS connection
//! ([`StreamClient`]).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use turnd::stun::{Class, Method, TransactionId};

use super::client::MAX_PENDING;
use super::{
    build, channel_data_bytes, classify, new_tid, Attr, Credentials, Incoming, Response,
    TurnClient, PASSWORD, RESPONSE_TIMEOUT, USER,
};

/// ALPN id of STUN/TURN over TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// How a [`StreamClient`] reaches the server.
enum Link {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

/// A synchronous STUN/TURN client over one TCP or TLS connection (its
/// own 5-tuple). Frames are split with the crate's `stream_frame_len`.
pub struct StreamClient {
    link: Link,
    /// A handle on the same socket, for timeouts and shutdown.
    sock: TcpStream,
    /// The server address connected to.
    pub server: SocketAddr,
    /// Credentials, REALM and NONCE.
    pub credentials: Credentials,
    /// Bytes read but not yet framed.
    inbuf: Vec<u8>,
    /// Frames kept aside while waiting for a response.
    pending: VecDeque<Vec<u8>>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

/// What one read of a frame gave.
enum Read1 {
    Frame(Vec<u8>),
    Timeout,
    Closed,
}

impl StreamClient {
    /// A TCP connection to `server` with the default credentials.
    #[track_caller]
    pub fn connect_tcp(server: SocketAddr) -> StreamClient {
        let sock = TcpStream::connect_timeout(&server, RESPONSE_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect tcp {server}: {e}"));
        StreamClient::over_tcp(sock, server)
    }

    /// A TCP client on `sock`, already connected to `server` (and maybe
    /// already written to: a PROXY protocol header), with the default
    /// credentials.
    #[track_caller]
    pub fn over_tcp(sock: TcpStream, server: SocketAddr) -> StreamClient {
        sock.set_nodelay(true).unwrap();
        let handle = sock.try_clone().unwrap();
        StreamClient::with_link(Link::Tcp(sock), handle, server)
    }

    /// A TLS connection to `server` with `config`; the handshake is
    /// finished (within [`RESPONSE_TIMEOUT`]) before it returns.
    pub fn connect_tls(
        server: SocketAddr,
        config: Arc<ClientConfig>,
    ) -> Result<StreamClient, String> {
        let sock = TcpStream::connect_timeout(&server, RESPONSE_TIMEOUT)
            .map_err(|e| format!("connect tcp {server}: {e}"))?;
        StreamClient::over_tls(sock, server, config)
    }

    /// [`StreamClient::connect_tls`] on `sock`, already connected to
    /// `server` (and maybe already written to: a PROXY protocol header).
    pub fn over_tls(
        sock: TcpStream,
        server: SocketAddr,
        config: Arc<ClientConfig>,
    ) -> Result<StreamClient, String> {
        sock.set_nodelay(true).unwrap();
        let handle = sock.try_clone().unwrap();
        let name = ServerName::IpAddress(server.ip().into());
        let mut conn =
            ClientConnection::new(config, name).map_err(|e| format!("rustls client: {e}"))?;
        let mut s = sock;
        s.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        while conn.is_handshaking() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "TLS handshake with {server} took over {RESPONSE_TIMEOUT:?}"
                ));
            }
            match conn.complete_io(&mut s) {
                Ok((0, 0)) if conn.is_handshaking() => {
                    return Err(format!("TLS handshake with {server}: connection closed"))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("TLS handshake with {server}: {e}")),
            }
        }
        s.set_write_timeout(None).unwrap();
        Ok(StreamClient::with_link(
            Link::Tls(Box::new(rustls::StreamOwned::new(conn, s))),
            handle,
            server,
        ))
    }

    fn with_link(link: Link, sock: TcpStream, server: SocketAddr) -> StreamClient {
        StreamClient {
            link,
            sock,
            server,
            credentials: Credentials::new(USER, PASSWORD),
            inbuf: Vec::new(),
            pending: VecDeque::new(),
            closed: None,
        }
    }

    /// The client's own transport address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// The rustls connection (TLS clients only).
    pub fn tls(&self) -> Option<&ClientConnection> {
        match &self.link {
            Link::Tls(s) => Some(&s.conn),
            Link::Tcp(_) => None,
        }
    }

    /// The negotiated ALPN protocol (TLS only).
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.tls()
            .and_then(|c| c.alpn_protocol().map(<[u8]>::to_vec))
    }

    /// The negotiated TLS version.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls().and_then(|c| c.protocol_version())
    }

    /// The DER of the server's end-entity certificate (TLS only).
    pub fn peer_cert_der(&self) -> Option<Vec<u8>> {
        self.tls()
            .and_then(|c| c.peer_certificates())
            .and_then(|certs| certs.first())
            .map(|c| c.as_ref().to_vec())
    }

    /// Writes `bytes` (all of them); false when the connection is gone.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        let r = match &mut self.link {
            Link::Tcp(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Link::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        };
        r.is_ok()
    }

    /// Writes `bytes`; panics when the connection is gone.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let r = match &mut self.link {
            Link::Tcp(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Link::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        };
        if let Err(e) = r {
            panic!("write to {}: {e}", self.server);
        }
    }

    /// Writes `bytes` one at a time, sleeping `gap` between them.
    #[track_caller]
    pub fn send_trickle(&mut self, bytes: &[u8], gap: Duration) {
        for b in bytes {
            self.send_raw(std::slice::from_ref(b));
            thread::sleep(gap);
        }
    }

    /// True when a new TCP connection to `server` is closed unanswered (a
    /// Binding on it gets no response within 500 ms, then it is closed
    /// within `timeout`): a connection limit refused it.
    pub fn refused_at_accept(server: SocketAddr, timeout: Duration) -> bool {
        let mut c = StreamClient::connect_tcp(server);
        let (tid, b) = c.build_request(Method::BINDING, &[], false);
        let _ = c.try_send_raw(&b);
        c.await_response(tid, Duration::from_millis(500)).is_none() && c.wait_closed(timeout)
    }

    /// True when, within `timeout`, a new TCP connection to `server` gets
    /// its Binding answered (a connection limit made room again).
    pub fn wait_for_room(server: SocketAddr, timeout: Duration) -> bool {
        super::wait_until(timeout, || {
            let mut c = StreamClient::connect_tcp(server);
            let (tid, b) = c.build_request(Method::BINDING, &[], false);
            c.try_send_raw(&b) && c.await_response(tid, Duration::from_millis(300)).is_some()
        })
    }

    /// The plain TCP socket under a TCP client, for raw bytes (an RFC 6062
    /// data connection after its ConnectionBind). Panics over TLS or when
    /// bytes were read but not yet framed.
    #[track_caller]
    pub fn into_raw_tcp(self) -> TcpStream {
        assert!(
            self.inbuf.is_empty() && self.pending.is_empty(),
            "unread bytes"
        );
        match self.link {
            Link::Tcp(s) => s,
            Link::Tls(_) => panic!("into_raw_tcp on a TLS client"),
        }
    }

    /// Half-closes (write side) or fully closes the socket.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = self.sock.shutdown(how);
    }

    /// Reads one frame (STUN message or padded ChannelData, padding
    /// included) before `deadline`.
    fn read_frame(&mut self, deadline: Instant) -> Read1 {
        let mut buf = vec![0u8; 65_536];
        // Bounded: each pass either returns or reads until the deadline.
        loop {
            match turnd::stun::stream_frame_len(&self.inbuf) {
                Ok(Some(n)) => return Read1::Frame(self.inbuf.drain(..n).collect()),
                Ok(None) => {}
                Err(e) => panic!(
                    "server sent bytes that are not a frame ({e:?}): {:02x?}",
                    &self.inbuf[..self.inbuf.len().min(64)]
                ),
            }
            if self.closed.is_some() {
                return Read1::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read1::Timeout;
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let r = match &mut self.link {
                Link::Tcp(s) => s.read(&mut buf),
                Link::Tls(s) => s.read(&mut buf),
            };
            match r {
                Ok(0) => self.closed = Some("EOF".into()),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Read1::Timeout;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("read error: {e}")),
            }
        }
    }

    /// The next frame (kept ones first) within `timeout`, padding
    /// included; `None` on timeout or when the connection is closed.
    pub fn recv_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        match self.read_frame(Instant::now() + timeout) {
            Read1::Frame(f) => Some(f),
            Read1::Timeout | Read1::Closed => None,
        }
    }

    /// True when the server closes the connection within `timeout`
    /// (frames that arrive meanwhile are discarded).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        self.pending.clear();
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame(deadline) {
                Read1::Frame(_) => continue,
                Read1::Closed => return true,
                Read1::Timeout => return false,
            }
        }
    }

    /// Waits up to `timeout` for the response with `tid`.
    pub fn await_response(&mut self, tid: TransactionId, timeout: Duration) -> Option<Response> {
        let deadline = Instant::now() + timeout;
        loop {
            let b = match self.read_frame(deadline) {
                Read1::Frame(b) => b,
                Read1::Timeout | Read1::Closed => return None,
            };
            if b.len() >= 20 && b[0] >> 6 == 0 && b[8..20] == tid {
                let r = Response::new(b);
                if matches!(r.class(), Class::Success | Class::Error) {
                    return Some(r);
                }
            } else if self.pending.len() < MAX_PENDING {
                self.pending.push_back(b);
            }
        }
    }

    /// A Send indication carrying `data` to `peer`.
    #[track_caller]
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let b = build(
            Method::SEND,
            Class::Indication,
            new_tid(),
            &[Attr::peer(peer), Attr::data(data)],
            None,
            false,
        );
        self.send_raw(&b);
    }

    /// A ChannelData message on channel `n`, padded to a multiple of 4
    /// bytes as RFC 8656 section 12.5 asks over streams.
    #[track_caller]
    pub fn channel_data(&mut self, n: u16, data: &[u8]) {
        self.send_raw(&padded_channel_data(n, data));
    }
}

impl TurnClient for StreamClient {
    fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    fn credentials_mut(&mut self) -> &mut Credentials {
        &mut self.credentials
    }

    fn server(&self) -> SocketAddr {
        self.server
    }

    /// No retransmission: the stream is reliable. `None` also when the
    /// connection is gone.
    fn transact_raw(&mut self, bytes: &[u8], tid: TransactionId) -> Option<Response> {
        if !self.try_send_raw(bytes) {
            return None;
        }
        self.await_response(tid, RESPONSE_TIMEOUT)
    }

    /// ChannelData comes with its padding stripped.
    fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        self.recv_frame(timeout).map(classify)
    }

    /// Why the connection ended, when it has (EOF or an error on read).
    fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }
}

/// A ChannelData message padded with zeros to a multiple of 4 bytes.
pub fn padded_channel_data(n: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel_data_bytes(n, data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}
