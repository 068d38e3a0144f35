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
use turnd::stun::{long_term_key, AttributeType, Class, Method, TransactionId};

use super::client::MAX_PENDING;
use super::{
    build, channel_data_bytes, classify, new_tid, Allocated, Attr, Auth, Client, Incoming,
    Response, PASSWORD, REALM, RESPONSE_TIMEOUT, USER,
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
    /// USERNAME.
    pub username: String,
    /// Password for the long-term key.
    pub password: String,
    /// REALM learnt from a 401.
    pub realm: Option<String>,
    /// NONCE learnt from a 401 or 438.
    pub nonce: Option<Vec<u8>>,
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
            username: USER.to_owned(),
            password: PASSWORD.to_owned(),
            realm: None,
            nonce: None,
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

    /// Why the connection ended, when it has (EOF or an error on read).
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
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

    /// The next Data indication, ChannelData (padding stripped) or other
    /// message within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        self.recv_frame(timeout).map(classify)
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

    /// Sends `bytes` (a request with `tid`) and waits for its response;
    /// other frames are kept for [`StreamClient::recv`]. No
    /// retransmission: the stream is reliable.
    pub fn transact_raw(&mut self, bytes: &[u8], tid: TransactionId) -> Option<Response> {
        if !self.try_send_raw(bytes) {
            return None;
        }
        self.await_response(tid, RESPONSE_TIMEOUT)
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

    /// Like [`StreamClient::transact_raw`] but panics when no response comes.
    #[track_caller]
    pub fn transact(&mut self, bytes: &[u8], tid: TransactionId) -> Response {
        match self.transact_raw(bytes, tid) {
            Some(r) => r,
            None => panic!(
                "no response from {} within {RESPONSE_TIMEOUT:?} (closed: {:?})",
                self.server, self.closed
            ),
        }
    }

    /// The long-term key for the current credentials.
    pub fn key(&self) -> [u8; 16] {
        long_term_key(
            &self.username,
            self.realm.as_deref().unwrap_or(REALM),
            &self.password,
        )
    }

    /// A request with a fresh transaction ID, signed when `signed` and a
    /// nonce is known.
    pub fn build_request(
        &self,
        method: Method,
        attrs: &[Attr],
        signed: bool,
    ) -> (TransactionId, Vec<u8>) {
        let tid = new_tid();
        let realm = self.realm.clone().unwrap_or_else(|| REALM.to_owned());
        let bytes = match (&self.nonce, signed) {
            (Some(nonce), true) => {
                let auth = Auth {
                    username: &self.username,
                    realm: &realm,
                    nonce,
                    key: self.key(),
                };
                build(method, Class::Request, tid, attrs, Some(&auth), false)
            }
            _ => build(method, Class::Request, tid, attrs, None, false),
        };
        (tid, bytes)
    }

    /// A Binding request; panics unless it succeeds.
    #[track_caller]
    pub fn binding(&mut self) -> Response {
        let (tid, b) = self.build_request(Method::BINDING, &[], false);
        let r = self.transact(&b, tid);
        r.expect_success();
        r
    }

    /// Learns REALM and NONCE from a 401 or 438; true when it had them.
    pub fn learn_nonce(&mut self, r: &Response) -> bool {
        let realm = r.msg().get_str(AttributeType::REALM).map(str::to_owned);
        let nonce = r.get(AttributeType::NONCE);
        match (realm, nonce) {
            (Some(realm), Some(nonce)) => {
                self.realm = Some(realm);
                self.nonce = Some(nonce);
                true
            }
            _ => false,
        }
    }

    /// A signed request, with the 401 dance first when no nonce is known
    /// and at most two retries on 438.
    #[track_caller]
    pub fn request(&mut self, method: Method, attrs: &[Attr]) -> Response {
        if self.nonce.is_none() {
            let (tid, b) = self.build_request(method, attrs, false);
            let r = self.transact(&b, tid);
            if r.error_code() != Some(401) || !self.learn_nonce(&r) {
                return r;
            }
        }
        let (tid, b) = self.build_request(method, attrs, true);
        let mut r = self.transact(&b, tid);
        for _ in 0..2 {
            if r.error_code() == Some(438) && self.learn_nonce(&r) {
                let (tid, b) = self.build_request(method, attrs, true);
                r = self.transact(&b, tid);
            } else {
                break;
            }
        }
        if r.is_success() {
            assert!(
                r.integrity_ok(&self.key()),
                "success response without a valid MESSAGE-INTEGRITY: {r:?}"
            );
        }
        r
    }

    /// Sends an unsigned Refresh to learn REALM and NONCE (401 expected).
    #[track_caller]
    pub fn fetch_nonce(&mut self) {
        let (tid, b) = self.build_request(Method::REFRESH, &[], false);
        let r = self.transact(&b, tid);
        r.expect_error(401);
        assert!(self.learn_nonce(&r), "401 without REALM and NONCE: {r:?}");
    }

    /// An Allocate with `attrs`, signed (after the 401 dance).
    #[track_caller]
    pub fn allocate_with(&mut self, attrs: &[Attr]) -> Response {
        self.request(Method::ALLOCATE, attrs)
    }

    /// A UDP relay allocation; panics unless it succeeds.
    #[track_caller]
    pub fn allocate(&mut self) -> Allocated {
        let r = self.allocate_with(&[Attr::transport_udp()]);
        Client::allocated(r)
    }

    /// CreatePermission for every peer.
    #[track_caller]
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Response {
        let attrs: Vec<Attr> = peers.iter().map(|p| Attr::peer(*p)).collect();
        self.request(Method::CREATE_PERMISSION, &attrs)
    }

    /// ChannelBind of channel `n` to `peer`.
    #[track_caller]
    pub fn channel_bind(&mut self, n: u16, peer: SocketAddr) -> Response {
        self.request(Method::CHANNEL_BIND, &[Attr::channel(n), Attr::peer(peer)])
    }

    /// Refresh with LIFETIME `lifetime` (none when `None`).
    #[track_caller]
    pub fn refresh(&mut self, lifetime: Option<u32>) -> Response {
        let attrs: Vec<Attr> = lifetime.map(Attr::lifetime).into_iter().collect();
        self.request(Method::REFRESH, &attrs)
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

    /// The next Data indication within `timeout`; panics on anything else.
    #[track_caller]
    pub fn expect_data(&mut self, timeout: Duration) -> (SocketAddr, Vec<u8>) {
        match self.recv(timeout) {
            Some(Incoming::Data { peer, data }) => (peer, data),
            other => panic!(
                "expected a Data indication, got {other:?} (closed: {:?})",
                self.closed
            ),
        }
    }

    /// The next ChannelData within `timeout`; panics on anything else.
    #[track_caller]
    pub fn expect_channel_data(&mut self, timeout: Duration) -> (u16, Vec<u8>) {
        match self.recv(timeout) {
            Some(Incoming::Channel { channel, data }) => (channel, data),
            other => panic!(
                "expected ChannelData, got {other:?} (closed: {:?})",
                self.closed
            ),
        }
    }

    /// Panics when anything arrives within `wait`.
    #[track_caller]
    pub fn expect_silence(&mut self, wait: Duration) {
        if let Some(x) = self.recv(wait) {
            panic!("expected nothing from the server, got {x:?}");
        }
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
