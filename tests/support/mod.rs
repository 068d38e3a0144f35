//! Shared helpers of the integration tests: start the real `turnd` binary on
//! an ephemeral loopback port ([`TestServer`]), and a small synchronous
//! STUN/TURN client over `std::net::UdpSocket` ([`Client`]) built on the
//! crate's own codec.
//!
//! Every loop here is bounded and every wait has a timeout: a test that hangs
//! is a failed test, with the server's log printed.

#![allow(dead_code)] // each test file uses a part of it
#![allow(clippy::disallowed_methods)] // real-time helpers: they read the clock

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use turnd::stun::{
    decode_error_code, long_term_key, AttributeType, ChannelData, Class, Message, MessageType,
    MessageWriter, Method, TransactionId, PROTOCOL_UDP,
};

/// The test realm every server is started with.
pub const REALM: &str = "test.example";
/// The default user every server is started with.
pub const USER: &str = "alice";
/// Its password.
pub const PASSWORD: &str = "secret";

/// How long a [`TestServer`] may take to print its listening address.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for one response (retransmissions included).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the tests wait to be sure that nothing arrives.
pub const SILENCE: Duration = Duration::from_millis(400);

/// Most bytes of server log kept for failure reports.
const LOG_CAP: usize = 256 * 1024;

/// Path of the binary under test.
pub fn turnd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_turnd")
}

/// The `turnd` binary running on `127.0.0.1:<ephemeral>`, killed on drop.
pub struct TestServer {
    child: Child,
    /// The STUN/TURN listening address read from the server's stdout.
    pub addr: SocketAddr,
    /// Lowest relay port it was given.
    pub min_port: u16,
    /// Highest relay port it was given.
    pub max_port: u16,
    log: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts turnd with the standard test arguments (loopback listener and
    /// relay, relay ports `min_port..=max_port`, realm [`REALM`], user
    /// alice:secret) followed by `extra`. Panics (with the server's stderr)
    /// when it does not report its port within [`START_TIMEOUT`].
    pub fn start(min_port: u16, max_port: u16, extra: &[&str]) -> TestServer {
        let min = min_port.to_string();
        let max = max_port.to_string();
        let user = format!("{USER}:{PASSWORD}");
        let mut args: Vec<&str> = vec![
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            &min,
            "--max-port",
            &max,
            "--realm",
            REALM,
            "--user",
            &user,
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(turnd_bin());
        cmd.args(&args).env_remove("RUST_LOG").env("NO_COLOR", "1");
        // TURND_TEST_LOG=turnd=trace shows the packet log in failure reports.
        if let Ok(filter) = std::env::var("TURND_TEST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", turnd_bin()));

        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        drain_into(stderr, log.clone());

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // Forward every stdout line; ends when turnd exits.
            while let Some(Ok(line)) = lines.next() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line
                        .strip_prefix("turnd: listening on udp ")
                        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    {
                        break a;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    // Give the stderr reader a moment to collect the last lines.
                    thread::sleep(Duration::from_millis(100));
                    panic!(
                        "turnd {args:?} did not report its listening address ({e:?}; exit {status:?}); stderr:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        };
        assert!(addr.ip().is_loopback(), "listening on {addr}");
        assert_ne!(addr.port(), 0);
        TestServer {
            child,
            addr,
            min_port,
            max_port,
            log,
        }
    }

    /// What the server wrote on stderr so far (its log).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics unless `relay` is on 127.0.0.1 within the server's relay port range.
    pub fn assert_relay_in_range(&self, relay: SocketAddr) {
        assert_eq!(
            relay.ip(),
            std::net::IpAddr::from([127, 0, 0, 1]),
            "relay {relay}"
        );
        assert!(
            (self.min_port..=self.max_port).contains(&relay.port()),
            "relay port {} outside {}..={}",
            relay.port(),
            self.min_port,
            self.max_port
        );
    }

    /// A client with the default credentials, talking to this server.
    pub fn client(&self) -> Client {
        Client::new(self.addr, USER, PASSWORD)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- turnd log ({}) ----\n{}\n---- end of turnd log ----",
                self.addr,
                self.log.lock().unwrap()
            );
        }
    }
}

/// Copies `r` into `log` (capped at [`LOG_CAP`] bytes) on a thread until EOF.
fn drain_into(mut r: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut l = log.lock().unwrap();
                    if l.len() < LOG_CAP {
                        l.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }
        }
    });
}

/// Output of a command run with [`run_with_timeout`].
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status; `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    /// Everything written on stdout.
    pub stdout: String,
    /// Everything written on stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl RunOutput {
    /// True when it ran past the timeout and was killed.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
}

/// Runs `cmd` to completion, killing it (by PID) after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> RunOutput {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let out = Arc::new(Mutex::new(String::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let (o, e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let to = {
        let out = out.clone();
        thread::spawn(move || drain_to_end(o, out))
    };
    let te = {
        let err = err.clone();
        thread::spawn(move || drain_to_end(e, err))
    };
    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // The pipes close when the process (and anything it forked) is gone.
    let _ = to.join();
    let _ = te.join();
    let stdout = out.lock().unwrap().clone();
    let stderr = err.lock().unwrap().clone();
    RunOutput {
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

fn drain_to_end(mut r: impl Read, into: Arc<Mutex<String>>) {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    into.lock().unwrap().push_str(&String::from_utf8_lossy(&v));
}

/// A unique path in the temporary directory for this process and `name`.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("turnd-test-{}-{name}", std::process::id()))
}

/// A port that was free on 127.0.0.1 (UDP) a moment ago.
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    s.local_addr().unwrap().port()
}

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

fn classify(bytes: Vec<u8>) -> Incoming {
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

/// A synchronous STUN/TURN client on its own UDP socket (its own 5-tuple).
pub struct Client {
    /// The socket (127.0.0.1, ephemeral port).
    pub sock: UdpSocket,
    /// The server it talks to.
    pub server: SocketAddr,
    /// USERNAME.
    pub username: String,
    /// Password for the long-term key.
    pub password: String,
    /// REALM learnt from a 401.
    pub realm: Option<String>,
    /// NONCE learnt from a 401 or 438.
    pub nonce: Option<Vec<u8>>,
    /// Add FINGERPRINT to requests.
    pub fingerprint: bool,
    pending: VecDeque<Vec<u8>>,
}

/// Most datagrams kept aside while waiting for a response.
const MAX_PENDING: usize = 100_000;

impl Client {
    /// A client on a fresh 127.0.0.1 socket.
    pub fn new(server: SocketAddr, username: &str, password: &str) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
        Client {
            sock,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: None,
            nonce: None,
            fingerprint: false,
            pending: VecDeque::new(),
        }
    }

    /// The client's own transport address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Uses other credentials from now on (same socket, same nonce).
    pub fn set_credentials(&mut self, username: &str, password: &str) {
        self.username = username.to_owned();
        self.password = password.to_owned();
    }

    /// The long-term key for the current credentials and the learnt (or test) realm.
    pub fn key(&self) -> [u8; 16] {
        long_term_key(
            &self.username,
            self.realm.as_deref().unwrap_or(REALM),
            &self.password,
        )
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

    /// Receives the next Data indication, ChannelData or other message within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        self.recv_raw(timeout).map(classify)
    }

    /// Sends `bytes` (a request with transaction ID `tid`) and waits for the
    /// response with that ID, retransmitting the same bytes at 0.5 s, 1 s...
    /// Other datagrams that arrive meanwhile are kept for [`Client::recv`].
    /// `None` when no response came within [`RESPONSE_TIMEOUT`].
    pub fn transact_raw(&mut self, bytes: &[u8], tid: TransactionId) -> Option<Response> {
        self.await_response(bytes, tid, false)
    }

    /// Sends a request built with [`Client::build_request`] without waiting;
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

    /// Like [`Client::transact_raw`] but panics when no response comes.
    #[track_caller]
    pub fn transact(&mut self, bytes: &[u8], tid: TransactionId) -> Response {
        match self.transact_raw(bytes, tid) {
            Some(r) => r,
            None => panic!(
                "no response from {} within {RESPONSE_TIMEOUT:?}",
                self.server
            ),
        }
    }

    /// Builds a request with a fresh transaction ID, signed with the current
    /// credentials and nonce when `signed` (and a nonce is known).
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
                build(
                    method,
                    Class::Request,
                    tid,
                    attrs,
                    Some(&auth),
                    self.fingerprint,
                )
            }
            _ => build(method, Class::Request, tid, attrs, None, self.fingerprint),
        };
        (tid, bytes)
    }

    /// Sends an unsigned request and returns the response.
    #[track_caller]
    pub fn request_unsigned(&mut self, method: Method, attrs: &[Attr]) -> Response {
        let (tid, b) = self.build_request(method, attrs, false);
        self.transact(&b, tid)
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

    /// Sends an unsigned Refresh to obtain REALM and NONCE (the first half of
    /// the 401 dance) without allocating. Panics unless the server answers
    /// 401 with both.
    #[track_caller]
    pub fn fetch_nonce(&mut self) {
        let r = self.request_unsigned(Method::REFRESH, &[]);
        r.expect_error(401);
        assert!(self.learn_nonce(&r), "401 without REALM and NONCE: {r:?}");
    }

    /// Sends a signed request, doing the 401 dance first when no nonce is
    /// known and retrying (at most twice) with the fresh nonce of a 438.
    /// A success response must carry a MESSAGE-INTEGRITY valid with the
    /// user's key.
    #[track_caller]
    pub fn request(&mut self, method: Method, attrs: &[Attr]) -> Response {
        if self.nonce.is_none() {
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
                self.username
            );
        }
        r
    }

    /// One signed request with the current nonce; no retry.
    #[track_caller]
    pub fn signed_once(&mut self, method: Method, attrs: &[Attr]) -> Response {
        let (tid, b) = self.build_request(method, attrs, true);
        self.transact(&b, tid)
    }

    /// Allocate with the given attributes (include REQUESTED-TRANSPORT yourself).
    #[track_caller]
    pub fn allocate_with(&mut self, attrs: &[Attr]) -> Response {
        self.request(Method::ALLOCATE, attrs)
    }

    /// A UDP allocation; panics unless it succeeds with the mandatory attributes.
    #[track_caller]
    pub fn allocate(&mut self) -> Allocated {
        let r = self.allocate_with(&[Attr::transport_udp()]);
        Self::allocated(r)
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

    /// Refresh with LIFETIME `lifetime` (none when `None`).
    #[track_caller]
    pub fn refresh(&mut self, lifetime: Option<u32>) -> Response {
        let attrs: Vec<Attr> = lifetime.map(Attr::lifetime).into_iter().collect();
        self.request(Method::REFRESH, &attrs)
    }

    /// CreatePermission for every peer (one XOR-PEER-ADDRESS each).
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

    /// The next Data indication within `timeout`, skipping nothing: panics
    /// when something else arrives.
    #[track_caller]
    pub fn expect_data(&mut self, timeout: Duration) -> (SocketAddr, Vec<u8>) {
        match self.recv(timeout) {
            Some(Incoming::Data { peer, data }) => (peer, data),
            other => panic!("expected a Data indication, got {other:?}"),
        }
    }

    /// The next ChannelData within `timeout`; panics when something else arrives.
    #[track_caller]
    pub fn expect_channel_data(&mut self, timeout: Duration) -> (u16, Vec<u8>) {
        match self.recv(timeout) {
            Some(Incoming::Channel { channel, data }) => (channel, data),
            other => panic!("expected ChannelData, got {other:?}"),
        }
    }

    /// Panics when anything arrives within `wait`.
    #[track_caller]
    pub fn expect_silence(&mut self, wait: Duration) {
        if let Some(x) = self.recv(wait) {
            panic!("expected nothing from the server, got {:?}", x);
        }
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
