//! A synchronous STUN/TURN client over `std::net::UdpSocket` ([`Client`])
//! built on the crate's own codec, request building and response reading,
//! and UDP peers ([`Peer`], [`EchoPeer`]).

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use turnd::stun::{
    decode_error_code, long_term_key, AttributeType, ChannelData, Class, Message, MessageType,
    MessageWriter, Method, TransactionId, PROTOCOL_UDP,
};

use super::{PASSWORD, REALM, RESPONSE_TIMEOUT, SILENCE, USER};

/// A fresh random transaction ID.
pub fn new_tid() -> TransactionId {
    rand::random()
}

/// One attribute of a request under construction.
#[derive(Clone, Debug)]
pub enum Attr {
    /// Raw value.
    Raw(AttributeType, Vec<u8>),
    /// 32-bit value.
    U32(AttributeType, u32),
    /// XOR-encoded address.
    XorAddr(AttributeType, SocketAddr),
}

impl Attr {
    /// REQUESTED-TRANSPORT UDP.
    pub fn transport_udp() -> Attr {
        Attr::transport(PROTOCOL_UDP)
    }
    /// REQUESTED-TRANSPORT with protocol number `p`.
    pub fn transport(p: u8) -> Attr {
        Attr::Raw(AttributeType::REQUESTED_TRANSPORT, vec![p, 0, 0, 0])
    }
    /// LIFETIME in seconds.
    pub fn lifetime(s: u32) -> Attr {
        Attr::U32(AttributeType::LIFETIME, s)
    }
    /// XOR-PEER-ADDRESS.
    pub fn peer(a: SocketAddr) -> Attr {
        Attr::XorAddr(AttributeType::XOR_PEER_ADDRESS, a)
    }
    /// CHANNEL-NUMBER (number, then RFFU zero).
    pub fn channel(n: u16) -> Attr {
        let b = n.to_be_bytes();
        Attr::Raw(AttributeType::CHANNEL_NUMBER, vec![b[0], b[1], 0, 0])
    }
    /// DATA.
    pub fn data(d: &[u8]) -> Attr {
        Attr::Raw(AttributeType::DATA, d.to_vec())
    }
}

/// Long-term credentials to sign a request with.
#[derive(Clone, Debug)]
pub struct Auth<'a> {
    /// USERNAME.
    pub username: &'a str,
    /// REALM.
    pub realm: &'a str,
    /// NONCE.
    pub nonce: &'a [u8],
    /// MD5(username:realm:password).
    pub key: [u8; 16],
}

/// Encodes a STUN message: `attrs` in order, then USERNAME/REALM/NONCE and
/// MESSAGE-INTEGRITY when `auth`, then FINGERPRINT when `fingerprint`.
pub fn build(
    method: Method,
    class: Class,
    tid: TransactionId,
    attrs: &[Attr],
    auth: Option<&Auth<'_>>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let mut w = MessageWriter::new(&mut buf, MessageType::new(method, class), tid).unwrap();
    for a in attrs {
        match a {
            Attr::Raw(t, v) => w.attribute(*t, v).unwrap(),
            Attr::U32(t, v) => w.u32(*t, *v).unwrap(),
            Attr::XorAddr(t, v) => w.xor_address(*t, *v).unwrap(),
        }
    }
    if let Some(a) = auth {
        w.attribute(AttributeType::USERNAME, a.username.as_bytes())
            .unwrap();
        w.attribute(AttributeType::REALM, a.realm.as_bytes())
            .unwrap();
        w.attribute(AttributeType::NONCE, a.nonce).unwrap();
        w.message_integrity(&a.key).unwrap();
    }
    if fingerprint {
        w.fingerprint().unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// An unauthenticated Allocate for a UDP relay (28 bytes: the header and
/// REQUESTED-TRANSPORT), as a client's first request is: answered 401.
pub fn unauthenticated_allocate(tid: TransactionId) -> Vec<u8> {
    build(
        Method::ALLOCATE,
        Class::Request,
        tid,
        &[Attr::transport_udp()],
        None,
        false,
    )
}

/// An owned STUN message received from the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// The datagram.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.msg();
        let mut d = f.debug_struct("Response");
        d.field("method", &m.method()).field("class", &m.class());
        if let Some(c) = self.error_code() {
            d.field("error", &c);
        }
        let attrs: Vec<u16> = m.attributes().map(|(t, _)| t.0).collect();
        d.field("attributes", &format_args!("{attrs:04x?}"));
        d.finish()
    }
}

impl Response {
    /// Wraps bytes that must parse as STUN (panics otherwise).
    pub fn new(bytes: Vec<u8>) -> Response {
        if let Err(e) = Message::parse(&bytes) {
            panic!("server sent an undecodable STUN message ({e}): {bytes:02x?}");
        }
        Response { bytes }
    }

    /// The parsed view.
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("checked in Response::new")
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.msg().class()
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.msg().method()
    }

    /// The transaction ID.
    pub fn tid(&self) -> TransactionId {
        self.msg().transaction_id()
    }

    /// The ERROR-CODE number of an error response (`None` for a success).
    pub fn error_code(&self) -> Option<u16> {
        self.msg()
            .get(AttributeType::ERROR_CODE)
            .map(|v| decode_error_code(v).expect("well-formed ERROR-CODE").0 .0)
    }

    /// The raw value of attribute `t`.
    pub fn get(&self, t: AttributeType) -> Option<Vec<u8>> {
        self.msg().get(t).map(<[u8]>::to_vec)
    }

    /// A 32-bit attribute.
    pub fn u32(&self, t: AttributeType) -> Option<u32> {
        self.msg().get_u32(t)
    }

    /// A well-formed XOR address attribute.
    pub fn xor_addr(&self, t: AttributeType) -> Option<SocketAddr> {
        self.msg()
            .get_xor_address(t)
            .map(|r| r.expect("well-formed XOR address"))
    }

    /// True for a success response.
    pub fn is_success(&self) -> bool {
        self.class() == Class::Success
    }

    /// Panics unless this is a success response.
    #[track_caller]
    pub fn expect_success(&self) -> &Self {
        assert!(
            self.is_success(),
            "expected a success response, got {self:?}"
        );
        self
    }

    /// Panics unless this is an error response with `code`.
    #[track_caller]
    pub fn expect_error(&self, code: u16) -> &Self {
        assert_eq!(
            self.class(),
            Class::Error,
            "expected error {code}, got {self:?}"
        );
        assert_eq!(
            self.error_code(),
            Some(code),
            "expected error {code}, got {self:?}"
        );
        self
    }

    /// True when MESSAGE-INTEGRITY is present and valid with `key`.
    pub fn integrity_ok(&self, key: &[u8]) -> bool {
        self.msg().check_integrity(key)
    }
}

/// What a client can receive besides responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A Data indication.
    Data {
        /// XOR-PEER-ADDRESS.
        peer: SocketAddr,
        /// DATA.
        data: Vec<u8>,
    },
    /// A ChannelData message.
    Channel {
        /// The channel number.
        channel: u16,
        /// The application data.
        data: Vec<u8>,
    },
    /// Any other STUN message.
    Stun(Response),
    /// Bytes that are neither.
    Other(Vec<u8>),
}

pub(crate) fn classify(bytes: Vec<u8>) -> Incoming {
    match bytes.first().map(|b| b >> 6) {
        Some(1) => match ChannelData::parse(&bytes) {
            Ok(cd) => Incoming::Channel {
                channel: cd.channel(),
                data: cd.data().to_vec(),
            },
            Err(_) => Incoming::Other(bytes),
        },
        Some(0) if Message::parse(&bytes).is_ok() => {
            let r = Response::new(bytes);
            let m = r.msg();
            if m.method() == Method::DATA && m.class() == Class::Indication {
                let peer = m.get_xor_address(AttributeType::XOR_PEER_ADDRESS);
                let data = m.get(AttributeType::DATA);
                if let (Some(Ok(peer)), Some(data)) = (peer, data) {
                    return Incoming::Data {
                        peer,
                        data: data.to_vec(),
                    };
                }
            }
            Incoming::Stun(r)
        }
        _ => Incoming::Other(bytes),
    }
}

/// A successful allocation.
#[derive(Clone, Debug)]
pub struct Allocated {
    /// XOR-RELAYED-ADDRESS.
    pub relay: SocketAddr,
    /// XOR-MAPPED-ADDRESS.
    pub mapped: SocketAddr,
    /// LIFETIME.
    pub lifetime: u32,
    /// The whole response.
    pub response: Response,
}

/// Long-term credentials, and the REALM and NONCE learnt from the server.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// USERNAME.
    pub username: String,
    /// Password for the long-term key.
    pub password: String,
    /// REALM learnt from a 401 ([`REALM`] until then).
    pub realm: Option<String>,
    /// NONCE learnt from a 401 or 438.
    pub nonce: Option<Vec<u8>>,
    /// Add FINGERPRINT to requests.
    pub fingerprint: bool,
}

impl Credentials {
    /// `username` and `password`, nothing learnt yet, no FINGERPRINT.
    pub fn new(username: &str, password: &str) -> Credentials {
        Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            realm: None,
            nonce: None,
            fingerprint: false,
        }
    }

    /// The long-term key for the credentials and the learnt (or test) realm.
    pub fn key(&self) -> [u8; 16] {
        long_term_key(
            &self.username,
            self.realm.as_deref().unwrap_or(REALM),
            &self.password,
        )
    }

    /// A request with a fresh transaction ID, signed with the credentials
    /// and nonce when `signed` (and a nonce is known).
    pub fn build_request(
        &self,
        method: Method,
        attrs: &[Attr],
        signed: bool,
    ) -> (TransactionId, Vec<u8>) {
        let tid = new_tid();
        let realm = self.realm.clone().unwrap_or_else(|| REALM.to_owned());
        let auth = match (&self.nonce, signed) {
            (Some(nonce), true) => Some(Auth {
                username: &self.username,
                realm: &realm,
                nonce,
                key: self.key(),
            }),
            _ => None,
        };
        let bytes = build(
            method,
            Class::Request,
            tid,
            attrs,
            auth.as_ref(),
            self.fingerprint,
        );
        (tid, bytes)
    }

    /// Learns REALM and NONCE from a 401 or 438 response; true when it had them.
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
}

/// A synchronous STUN/TURN client, over UDP ([`Client`]) or a stream
/// ([`StreamClient`](super::StreamClient)): an implementation gives its
/// credentials, one request/response exchange and what it receives; the
/// requests, the 401/438 dance and the expectations follow.
pub trait TurnClient {
    /// The credentials, REALM and NONCE.
    fn credentials(&self) -> &Credentials;

    /// The same, to change.
    fn credentials_mut(&mut self) -> &mut Credentials;

    /// The server's address.
    fn server(&self) -> SocketAddr;

    /// Sends `bytes` (a request with transaction ID `tid`) and waits for its
    /// response; other messages are kept for [`TurnClient::recv`]. `None`
    /// when none came within [`RESPONSE_TIMEOUT`].
    fn transact_raw(&mut self, bytes: &[u8], tid: TransactionId) -> Option<Response>;

    /// The next Data indication, ChannelData or other message within
    /// `timeout` (kept ones first).
    fn recv(&mut self, timeout: Duration) -> Option<Incoming>;

    /// Why the connection ended, for a stream that has (shown in panics).
    fn closed(&self) -> Option<&str> {
        None
    }

    /// Like [`TurnClient::transact_raw`] but panics when no response comes.
    #[track_caller]
    fn transact(&mut self, bytes: &[u8], tid: TransactionId) -> Response {
        match self.transact_raw(bytes, tid) {
            Some(r) => r,
            None => panic!(
                "no response from {} within {RESPONSE_TIMEOUT:?} (closed: {:?})",
                self.server(),
                self.closed()
            ),
        }
    }

    /// The long-term key for the current credentials.
    fn key(&self) -> [u8; 16] {
        self.credentials().key()
    }

    /// See [`Credentials::build_request`].
    fn build_request(
        &self,
        method: Method,
        attrs: &[Attr],
        signed: bool,
    ) -> (TransactionId, Vec<u8>) {
        self.credentials().build_request(method, attrs, signed)
    }

    /// See [`Credentials::learn_nonce`].
    fn learn_nonce(&mut self, r: &Response) -> bool {
        self.credentials_mut().learn_nonce(r)
    }

    /// Sends an unsigned request and returns the response.
    #[track_caller]
    fn request_unsigned(&mut self, method: Method, attrs: &[Attr]) -> Response {
        let (tid, b) = self.build_request(method, attrs, false);
        self.transact(&b, tid)
    }

    /// A Binding request; panics unless it succeeds.
    #[track_caller]
    fn binding(&mut self) -> Response {
        let r = self.request_unsigned(Method::BINDING, &[]);
        r.expect_success();
        r
    }

    /// Sends an unsigned Refresh to obtain REALM and NONCE (the first half of
    /// the 401 dance) without allocating. Panics unless the server answers
    /// 401 with both.
    #[track_caller]
    fn fetch_nonce(&mut self) {
        let r = self.request_unsigned(Method::REFRESH, &[]);
        r.expect_error(401);
        assert!(self.learn_nonce(&r), "401 without REALM and NONCE: {r:?}");
    }

    /// Sends a signed request, doing the 401 dance first when no nonce is
    /// known and retrying (at most twice) with the fresh nonce of a 438.
    /// A success response must carry a MESSAGE-INTEGRITY valid with the
    /// user's key.
    #[track_caller]
    fn request(&mut self, method: Method, attrs: &[Attr]) -> Response {
        if self.credentials().nonce.is_none() {
            let r = self.request_unsigned(method, attrs);
            if r.error_code() != Some(401) || !self.learn_nonce(&r) {
                return r;
            }
        }
        let mut r = self.signed_once(method, attrs);
        for _ in 0..2 {
            if r.error_code() == Some(438) && self.learn_nonce(&r) {
                r = self.signed_once(method, attrs);
            } else {
                break;
            }
        }
        if r.is_success() {
            assert!(
                r.integrity_ok(&self.key()),
                "success response without a MESSAGE-INTEGRITY valid with {}'s key: {r:?}",
                self.credentials().username
            );
        }
        r
    }

    /// One signed request with the current nonce; no retry.
    #[track_caller]
    fn signed_once(&mut self, method: Method, attrs: &[Attr]) -> Response {
        let (tid, b) = self.build_request(method, attrs, true);
        self.transact(&b, tid)
    }

    /// Allocate with the given attributes (include REQUESTED-TRANSPORT yourself).
    #[track_caller]
    fn allocate_with(&mut self, attrs: &[Attr]) -> Response {
        self.request(Method::ALLOCATE, attrs)
    }

    /// A UDP allocation; panics unless it succeeds with the mandatory attributes.
    #[track_caller]
    fn allocate(&mut self) -> Allocated {
        let r = self.allocate_with(&[Attr::transport_udp()]);
        Client::allocated(r)
    }

    /// Refresh with LIFETIME `lifetime` (none when `None`).
    #[track_caller]
    fn refresh(&mut self, lifetime: Option<u32>) -> Response {
        let attrs: Vec<Attr> = lifetime.map(Attr::lifetime).into_iter().collect();
        self.request(Method::REFRESH, &attrs)
    }

    /// CreatePermission for every peer (one XOR-PEER-ADDRESS each).
    #[track_caller]
    fn create_permission(&mut self, peers: &[SocketAddr]) -> Response {
        let attrs: Vec<Attr> = peers.iter().map(|p| Attr::peer(*p)).collect();
        self.request(Method::CREATE_PERMISSION, &attrs)
    }

    /// ChannelBind of channel `n` to `peer`.
    #[track_caller]
    fn channel_bind(&mut self, n: u16, peer: SocketAddr) -> Response {
        self.request(Method::CHANNEL_BIND, &[Attr::channel(n), Attr::peer(peer)])
    }

    /// The next Data indication within `timeout`; panics when something else
    /// (or nothing) arrives.
    #[track_caller]
    fn expect_data(&mut self, timeout: Duration) -> (SocketAddr, Vec<u8>) {
        match self.recv(timeout) {
            Some(Incoming::Data { peer, data }) => (peer, data),
            other => panic!(
                "expected a Data indication, got {other:?} (closed: {:?})",
                self.closed()
            ),
        }
    }

    /// The next ChannelData within `timeout` (padding stripped); panics when
    /// something else (or nothing) arrives.
    #[track_caller]
    fn expect_channel_data(&mut self, timeout: Duration) -> (u16, Vec<u8>) {
        match self.recv(timeout) {
            Some(Incoming::Channel { channel, data }) => (channel, data),
            other => panic!(
                "expected ChannelData, got {other:?} (closed: {:?})",
                self.closed()
            ),
        }
    }

    /// Panics when anything arrives within `wait`.
    #[track_caller]
    fn expect_silence(&mut self, wait: Duration) {
        if let Some(x) = self.recv(wait) {
            panic!("expected nothing from the server, got {x:?}");
        }
    }
}

/// A synchronous STUN/TURN client on its own UDP socket (its own 5-tuple).
pub struct Client {
    /// The socket (127.0.0.1, ephemeral port).
    pub sock: UdpSocket,
    /// The server it talks to.
    pub server: SocketAddr,
    /// Credentials, REALM and NONCE.
    pub credentials: Credentials,
    pending: VecDeque<Vec<u8>>,
}

/// Most datagrams kept aside while waiting for a response.
pub(crate) const MAX_PENDING: usize = 100_000;

impl Client {
    /// A client on a fresh 127.0.0.1 socket.
    pub fn new(server: SocketAddr, username: &str, password: &str) -> Client {
        Client::new_on("127.0.0.1", server, username, password)
    }

    /// A client on a fresh socket bound to `ip` (another 127.0.0.0/8
    /// address is another host as far as the server can tell).
    pub fn new_on(ip: &str, server: SocketAddr, username: &str, password: &str) -> Client {
        let sock = UdpSocket::bind((ip, 0)).expect("bind client socket");
        Client {
            sock,
            server,
            credentials: Credentials::new(username, password),
            pending: VecDeque::new(),
        }
    }

    /// The client's own transport address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Uses other credentials from now on (same socket, same nonce).
    pub fn set_credentials(&mut self, username: &str, password: &str) {
        self.credentials.username = username.to_owned();
        self.credentials.password = password.to_owned();
    }

    /// Sends raw bytes to the server.
    pub fn send_raw(&self, bytes: &[u8]) {
        self.sock
            .send_to(bytes, self.server)
            .expect("send_to server");
    }

    /// Receives one datagram from the server within `timeout` (queued ones first).
    pub fn recv_raw(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if let Some(b) = self.pending.pop_front() {
            return Some(b);
        }
        self.recv_socket(Instant::now() + timeout)
    }

    /// Receives from the socket until `deadline`, ignoring datagrams not from the server.
    fn recv_socket(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        // Bounded: each pass either returns or consumes time until the deadline.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => return Some(buf[..n].to_vec()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("recv_from: {e}"),
            }
        }
    }

    /// Sends a request built with [`TurnClient::build_request`] without waiting;
    /// collect the answer later with [`Client::finish_request`].
    pub fn start_request(&mut self, bytes: &[u8]) {
        self.send_raw(bytes);
    }

    /// The response to a request sent with [`Client::start_request`]
    /// (retransmitting it after 0.5 s, 1 s...). Panics when none comes.
    #[track_caller]
    pub fn finish_request(&mut self, bytes: &[u8], tid: TransactionId) -> Response {
        match self.await_response(bytes, tid, true) {
            Some(r) => r,
            None => panic!(
                "no response from {} within {RESPONSE_TIMEOUT:?}",
                self.server
            ),
        }
    }

    fn await_response(
        &mut self,
        bytes: &[u8],
        tid: TransactionId,
        already_sent: bool,
    ) -> Option<Response> {
        let start = Instant::now();
        let deadline = start + RESPONSE_TIMEOUT;
        let mut rto = Duration::from_millis(500);
        let mut next_send = if already_sent { start + rto } else { start };
        if already_sent {
            rto *= 2;
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if now >= next_send {
                self.send_raw(bytes);
                next_send = now + rto;
                rto *= 2;
            }
            let Some(b) = self.recv_socket(next_send.min(deadline)) else {
                continue;
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

    /// Reads a successful Allocate response; panics otherwise.
    #[track_caller]
    pub fn allocated(r: Response) -> Allocated {
        r.expect_success();
        let relay = r
            .xor_addr(AttributeType::XOR_RELAYED_ADDRESS)
            .expect("XOR-RELAYED-ADDRESS in Allocate success");
        let mapped = r
            .xor_addr(AttributeType::XOR_MAPPED_ADDRESS)
            .expect("XOR-MAPPED-ADDRESS in Allocate success");
        let lifetime = r
            .u32(AttributeType::LIFETIME)
            .expect("LIFETIME in Allocate success");
        Allocated {
            relay,
            mapped,
            lifetime,
            response: r,
        }
    }

    /// A Send indication carrying `data` to `peer`.
    pub fn send_indication(&self, peer: SocketAddr, data: &[u8]) {
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

    /// A ChannelData message on channel `n` (header and data, no padding).
    pub fn channel_data(&self, n: u16, data: &[u8]) {
        self.send_raw(&channel_data_bytes(n, data));
    }
}

impl TurnClient for Client {
    fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    fn credentials_mut(&mut self) -> &mut Credentials {
        &mut self.credentials
    }

    fn server(&self) -> SocketAddr {
        self.server
    }

    /// Retransmits the same bytes at 0.5 s, 1 s... until the response comes.
    fn transact_raw(&mut self, bytes: &[u8], tid: TransactionId) -> Option<Response> {
        self.await_response(bytes, tid, false)
    }

    fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        self.recv_raw(timeout).map(classify)
    }
}

/// A ChannelData message: header and data, no padding.
pub fn channel_data_bytes(n: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len());
    v.extend_from_slice(&n.to_be_bytes());
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A UDP "peer" on 127.0.0.x with read timeouts.
pub struct Peer {
    /// The socket.
    pub sock: UdpSocket,
}

impl Peer {
    /// A peer socket on `ip` (e.g. "127.0.0.1"), ephemeral port.
    pub fn bind(ip: &str) -> Peer {
        let sock = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        Peer { sock }
    }

    /// Its transport address.
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// One datagram within `timeout`, with its source.
    pub fn recv(&self, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => return Some((from, buf[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    /// Sends `data` to `to`.
    pub fn send_to(&self, data: &[u8], to: SocketAddr) {
        self.sock.send_to(data, to).expect("peer send_to");
    }

    /// Panics when anything arrives within `wait`.
    #[track_caller]
    pub fn expect_silence(&self, wait: Duration) {
        if let Some((from, d)) = self.recv(wait) {
            panic!(
                "peer {} expected nothing, got {} bytes from {from}",
                self.addr(),
                d.len()
            );
        }
    }
}

/// A UDP echo peer on 127.0.0.1 (its own thread; stopped on drop).
pub struct EchoPeer {
    /// Its address.
    pub addr: SocketAddr,
    /// Datagrams echoed so far.
    pub echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoPeer {
    /// Binds 127.0.0.1:0 and echoes every datagram to its sender.
    pub fn start() -> EchoPeer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind echo peer");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let echoed = echoed.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                        echoed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        EchoPeer {
            addr,
            echoed,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `data` on channel `n` and waits for the echo; panics unless the
/// same bytes come back on the same channel within [`RESPONSE_TIMEOUT`].
#[track_caller]
pub fn channel_round_trip(c: &mut Client, n: u16, data: &[u8]) {
    c.channel_data(n, data);
    let (ch, back) = c.expect_channel_data(RESPONSE_TIMEOUT);
    assert_eq!(ch, n, "echo on another channel");
    assert_eq!(back, data, "echo differs");
}

/// One Allocate as `user`/`password` from a fresh socket to `server`: true
/// when granted, false on 401; panics on anything else. A granted
/// allocation is deleted again (Refresh 0) before the socket closes: the OS
/// may give its port to a later attempt, whose Allocate on a 5-tuple that
/// still had an allocation would rightly get 437.
#[track_caller]
pub fn allocates(server: SocketAddr, user: &str, password: &str) -> bool {
    allocates_on("127.0.0.1", server, user, password)
}

/// [`allocates`] from a socket bound to `ip` (a namespace's address).
#[track_caller]
pub fn allocates_on(ip: &str, server: SocketAddr, user: &str, password: &str) -> bool {
    let mut c = Client::new_on(ip, server, user, password);
    let r = c.allocate_with(&[Attr::transport_udp()]);
    match r.error_code() {
        None => {
            Client::allocated(r);
            // A user deleted or revoked in between (a fleet's Redis) loses
            // the allocation and the right to refresh: 401, the server
            // ended it already.
            let end = c.refresh(Some(0));
            assert!(
                end.is_success() || end.error_code() == Some(401),
                "{user}: Refresh 0 answered {end:?}"
            );
            true
        }
        Some(401) => false,
        Some(code) => panic!("{user}: Allocate answered {code}: {r:?}"),
    }
}
