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
        Client::new_on("127.0.0.1", server, username, password)
    }

    /// A client on a fresh socket bound to `ip` (another 127.0.0.0/8
    /// address is another host as far as the server can tell).
    pub fn new_on(ip: &str, server: SocketAddr, username: &str, password: &str) -> Client {
        let sock = UdpSocket::bind((ip, 0)).expect("bind client socket");
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

// ===========================================================================
// Stream (TCP/TLS) helpers: added for tests/tcp_tls.rs, tests/tls_reload.rs
// and tests/interop_turnutils_tcp.rs. Everything below is additive; nothing
// above depends on it.
// ===========================================================================

#[allow(unused_imports)] // only the stream tests use it
pub use stream_support::*;

/// TCP and TLS clients, test certificates and a turnd starter that reports
/// every listener.
pub mod stream_support {
    use super::*;

    use std::io::Write;
    use std::net::{Shutdown, TcpStream};
    use std::path::{Path, PathBuf};

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

    /// ALPN id of STUN/TURN over TLS (RFC 7443).
    pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

    /// The listening addresses turnd printed on stdout.
    #[derive(Clone, Debug, Default)]
    pub struct Listeners {
        /// `turnd: listening on udp ADDR`.
        pub udp: Option<SocketAddr>,
        /// `turnd: listening on tcp ADDR`.
        pub tcp: Option<SocketAddr>,
        /// `turnd: listening on tls ADDR` (one per TLS port, in order).
        pub tls: Vec<SocketAddr>,
    }

    impl Listeners {
        /// The TCP listener; panics when there is none.
        #[track_caller]
        pub fn tcp(&self) -> SocketAddr {
            self.tcp.expect("turnd printed no tcp listener")
        }
        /// The first TLS listener; panics when there is none.
        #[track_caller]
        pub fn tls(&self) -> SocketAddr {
            *self.tls.first().expect("turnd printed no tls listener")
        }
    }

    impl TestServer {
        /// Like [`TestServer::start`], but also waits for the `tcp` and `tls`
        /// listening lines that `extra` implies (`--no-udp`, `--no-tcp`,
        /// `--cert` with one `--tls-listening-port` each, `--no-tls`) and
        /// returns them. `addr` is the UDP listener, else the TCP one, else
        /// the first TLS one.
        pub fn start_with_streams(
            min_port: u16,
            max_port: u16,
            extra: &[&str],
        ) -> (TestServer, Listeners) {
            let want_udp = !extra.contains(&"--no-udp");
            let want_tcp = !extra.contains(&"--no-tcp");
            let want_tls = if extra.contains(&"--cert") && !extra.contains(&"--no-tls") {
                extra
                    .iter()
                    .filter(|a| **a == "--tls-listening-port")
                    .count()
                    .max(1)
            } else {
                0
            };
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
            drain_into(child.stderr.take().expect("piped stderr"), log.clone());
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, rx) = mpsc::channel::<String>();
            thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                while let Some(Ok(line)) = lines.next() {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut l = Listeners::default();
            let done = |l: &Listeners| {
                l.udp.is_some() == want_udp
                    && l.tcp.is_some() == want_tcp
                    && l.tls.len() == want_tls
            };
            let deadline = Instant::now() + START_TIMEOUT;
            while !done(&l) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        let Some(rest) = line.strip_prefix("turnd: listening on ") else {
                            continue;
                        };
                        let Some((proto, a)) = rest.split_once(' ') else {
                            continue;
                        };
                        let Ok(a) = a.trim().parse::<SocketAddr>() else {
                            continue;
                        };
                        assert!(a.ip().is_loopback() && a.port() != 0, "{line}");
                        match proto {
                            "udp" => l.udp = Some(a),
                            "tcp" => l.tcp = Some(a),
                            "tls" => l.tls.push(a),
                            _ => {}
                        }
                    }
                    Err(e) => {
                        let _ = child.kill();
                        let status = child.wait().ok();
                        thread::sleep(Duration::from_millis(100));
                        panic!(
                            "turnd {args:?} did not report its listeners (udp {want_udp}, tcp {want_tcp}, \
                             tls {want_tls}; got {l:?}; {e:?}; exit {status:?}); stderr:\n{}",
                            log.lock().unwrap()
                        );
                    }
                }
            }
            let addr = l
                .udp
                .or(l.tcp)
                .or(l.tls.first().copied())
                .expect("a listener");
            (
                TestServer {
                    child,
                    addr,
                    min_port,
                    max_port,
                    log,
                },
                l,
            )
        }

        /// The server's process ID.
        pub fn process_id(&self) -> u32 {
            self.child.id()
        }

        /// `kill -HUP <pid>`: this child only.
        #[track_caller]
        pub fn send_sighup(&self) {
            let pid = self.child.id().to_string();
            let out = run_with_timeout(
                Command::new("kill").args(["-HUP", &pid]),
                Duration::from_secs(5),
            );
            assert!(
                out.status.is_some_and(|s| s.success()),
                "kill -HUP {pid}: {out:?}"
            );
        }

        /// Waits (at most `timeout`) until the log contains `needle` at least
        /// `count` times; true when it did.
        pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
            let deadline = Instant::now() + timeout;
            loop {
                if self.log().matches(needle).count() >= count {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// A self-signed certificate and key made with `openssl req -x509` in a
    /// temporary directory (removed on drop).
    pub struct TestCert {
        /// The directory holding `cert.pem` and `key.pem`.
        pub dir: PathBuf,
        /// PEM certificate.
        pub cert: PathBuf,
        /// PEM private key.
        pub key: PathBuf,
        /// The certificate's DER.
        pub der: Vec<u8>,
    }

    impl TestCert {
        /// Makes a certificate for CN=`cn` (SAN IP:127.0.0.1, DNS:localhost)
        /// in a fresh directory named after `name`. Panics (a failure, never
        /// a skip) when openssl is missing.
        pub fn generate(name: &str, cn: &str) -> TestCert {
            let dir = temp_path(&format!("cert-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create cert dir");
            let (cert, key) = make_cert_files(&dir, "cert.pem", "key.pem", cn);
            let der = cert_der(&cert);
            TestCert {
                dir,
                cert,
                key,
                der,
            }
        }

        /// `--cert FILE --pkey FILE` for turnd.
        pub fn args(&self) -> Vec<String> {
            vec![
                "--cert".into(),
                self.cert.display().to_string(),
                "--pkey".into(),
                self.key.display().to_string(),
            ]
        }
    }

    impl Drop for TestCert {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Path of `openssl`; panics when it is not installed.
    pub fn openssl_bin() -> PathBuf {
        for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
            let p = Path::new(dir).join("openssl");
            if p.is_file() {
                return p;
            }
        }
        panic!("openssl not found: these tests make their certificates with `openssl req -x509` (apt-get install openssl)");
    }

    /// Writes `dir/cert_name` and `dir/key_name` (self-signed, RSA 2048, one day).
    pub fn make_cert_files(
        dir: &Path,
        cert_name: &str,
        key_name: &str,
        cn: &str,
    ) -> (PathBuf, PathBuf) {
        let cert = dir.join(cert_name);
        let key = dir.join(key_name);
        let subj = format!("/CN={cn}");
        let out = run_with_timeout(
            Command::new(openssl_bin()).args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
                "-days",
                "1",
                "-subj",
                &subj,
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ]),
            Duration::from_secs(30),
        );
        assert!(
            out.status.is_some_and(|s| s.success()) && cert.is_file() && key.is_file(),
            "openssl req -x509 failed: {out:?}"
        );
        (cert, key)
    }

    /// The DER of the first certificate in a PEM file.
    pub fn cert_der(pem: &Path) -> Vec<u8> {
        let bytes = std::fs::read(pem).unwrap_or_else(|e| panic!("read {}: {e}", pem.display()));
        let first = rustls_pemfile::certs(&mut bytes.as_slice())
            .next()
            .unwrap_or_else(|| panic!("no certificate in {}", pem.display()))
            .expect("well-formed PEM");
        first.as_ref().to_vec()
    }

    /// Accepts exactly the pinned certificates (by DER), with real handshake
    /// signature checks.
    #[derive(Debug)]
    struct PinnedCerts {
        pinned: Vec<Vec<u8>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for PinnedCerts {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if self
                .pinned
                .iter()
                .any(|p| p.as_slice() == end_entity.as_ref())
            {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A rustls client config (ring) that trusts exactly the certificates in
    /// `trusted` (DER), limited to `versions` (empty: TLS 1.2 and 1.3), and
    /// offers ALPN `alpn` (none when empty). Session resumption is off.
    pub fn tls_client_config(
        trusted: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = if versions.is_empty() {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            versions
        };
        let verifier = PinnedCerts {
            pinned: trusted.iter().map(|d| d.to_vec()).collect(),
            provider: provider.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("ring supports these versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        // Every connection does a full handshake: a resumed session would
        // report the certificate of the session it resumes, not the one the
        // server holds now.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

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
        pub fn await_response(
            &mut self,
            tid: TransactionId,
            timeout: Duration,
        ) -> Option<Response> {
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
}

// ===========================================================================
// Operations helpers: added for tests/ops_systemd.rs, tests/ops_metrics_admin.rs,
// tests/ops_logs.rs and tests/ops_coturn_conf.rs. Everything below is additive
// and self-contained (names start with `Ops`/`ops_`); nothing above depends on it.
// ===========================================================================

#[allow(unused_imports)] // only the ops tests use it
pub use ops_support::*;

/// A turnd process started with any arguments and environment, with its
/// stdout lines and stderr kept; a plain HTTP/1.1 client; a Prometheus text
/// parser; a UDP echo peer.
pub mod ops_support {
    use super::*;

    use std::collections::BTreeMap;
    use std::io::Write;
    use std::net::TcpStream;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Polls `cond` every 10 ms until it is true or `timeout` passed; true when it became true.
    pub fn ops_wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A port free on 127.0.0.1 for both UDP and TCP a moment ago (turnd
    /// listens on both on its listening port).
    pub fn ops_free_port() -> u16 {
        for _ in 0..100 {
            let u = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
            let port = u.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!("no port free for both UDP and TCP on 127.0.0.1 after 100 tries");
    }

    /// A fresh temporary directory (removed on drop).
    pub struct OpsTempDir {
        /// Its path.
        pub path: PathBuf,
    }

    impl OpsTempDir {
        /// Creates `$TMPDIR/turnd-ops-<pid>-<name>-<random>`.
        pub fn new(name: &str) -> OpsTempDir {
            let path = std::env::temp_dir().join(format!(
                "turnd-ops-{}-{name}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
            OpsTempDir { path }
        }

        /// `path/name`.
        pub fn join(&self, name: &str) -> PathBuf {
            self.path.join(name)
        }
    }

    impl Drop for OpsTempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    /// The arguments [`TestServer::start`] uses: loopback listener on port 0
    /// and relay, relay ports `min..=max`, realm [`REALM`], user alice:secret.
    pub fn ops_standard_args(min_port: u16, max_port: u16) -> Vec<String> {
        [
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            &min_port.to_string(),
            "--max-port",
            &max_port.to_string(),
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASSWORD}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// A turnd process: any arguments, any environment. Killed (by PID) on
    /// drop; its log is printed when the test panics.
    pub struct OpsServer {
        child: Child,
        args: Vec<String>,
        stdout: Arc<Mutex<Vec<String>>>,
        log: Arc<Mutex<String>>,
        status: Option<ExitStatus>,
    }

    impl OpsServer {
        /// Spawns `turnd args...` (RUST_LOG removed, NO_COLOR set, then
        /// `configure` may change the command, e.g. its environment) and
        /// returns at once; see [`OpsServer::start`] to wait for the listener.
        pub fn spawn(args: &[String], configure: impl FnOnce(&mut Command)) -> OpsServer {
            let mut cmd = Command::new(turnd_bin());
            cmd.args(args).env_remove("RUST_LOG").env("NO_COLOR", "1");
            if let Ok(filter) = std::env::var("TURND_TEST_LOG") {
                cmd.env("RUST_LOG", filter);
            }
            configure(&mut cmd);
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", turnd_bin()));
            let log = Arc::new(Mutex::new(String::new()));
            drain_into(child.stderr.take().expect("piped stderr"), log.clone());
            let stdout = Arc::new(Mutex::new(Vec::new()));
            let out = child.stdout.take().expect("piped stdout");
            {
                let stdout = stdout.clone();
                thread::spawn(move || {
                    let mut lines = BufReader::new(out).lines();
                    while let Some(Ok(line)) = lines.next() {
                        stdout.lock().unwrap().push(line);
                    }
                });
            }
            OpsServer {
                child,
                args: args.to_vec(),
                stdout,
                log,
                status: None,
            }
        }

        /// [`OpsServer::spawn`], then waits (at most [`START_TIMEOUT`]) for
        /// the UDP listening line.
        pub fn start(args: &[String], configure: impl FnOnce(&mut Command)) -> OpsServer {
            let mut s = OpsServer::spawn(args, configure);
            let _ = s.udp();
            s
        }

        /// The arguments it was started with.
        pub fn args(&self) -> &[String] {
            &self.args
        }

        /// The server's process ID.
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Every stdout line so far.
        pub fn stdout_lines(&self) -> Vec<String> {
            self.stdout.lock().unwrap().clone()
        }

        /// What it wrote on stderr so far.
        pub fn log(&self) -> String {
            self.log.lock().unwrap().clone()
        }

        /// Waits (at most `timeout`) for a stdout line starting with
        /// `prefix`; returns the rest of the line.
        pub fn wait_stdout(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
            let mut found = None;
            ops_wait_until(timeout, || {
                found = self
                    .stdout
                    .lock()
                    .unwrap()
                    .iter()
                    .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_owned()));
                found.is_some()
            });
            found
        }

        /// Like [`OpsServer::wait_stdout`] with [`START_TIMEOUT`], but panics
        /// (with the log) when the line does not come or turnd exits first.
        #[track_caller]
        fn wait_listening(&mut self, what: &str) -> String {
            let prefix = format!("turnd: listening on {what} ");
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(rest) = self.wait_stdout(&prefix, Duration::from_millis(50)) {
                    return rest;
                }
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.status = Some(st);
                    // The last stdout line may still be in the pipe reader.
                    if let Some(rest) = self.wait_stdout(&prefix, Duration::from_millis(200)) {
                        return rest;
                    }
                    thread::sleep(Duration::from_millis(100));
                    panic!(
                        "turnd {:?} exited ({st}) without printing `{prefix}ADDR`; stdout {:?}; stderr:\n{}",
                        self.args,
                        self.stdout_lines(),
                        self.log()
                    );
                }
                if Instant::now() >= deadline {
                    panic!(
                        "turnd {:?} did not print `{prefix}ADDR` within {START_TIMEOUT:?}; stdout {:?}; stderr:\n{}",
                        self.args,
                        self.stdout_lines(),
                        self.log()
                    );
                }
            }
        }

        /// The UDP listening address (`turnd: listening on udp ADDR`).
        #[track_caller]
        pub fn udp(&mut self) -> SocketAddr {
            let a = self.wait_listening("udp");
            a.parse()
                .unwrap_or_else(|e| panic!("bad udp listening address {a:?}: {e}"))
        }

        /// The Prometheus listener (`turnd: listening on prometheus http://ADDR/metrics`).
        #[track_caller]
        pub fn prometheus(&mut self) -> SocketAddr {
            let a = self.wait_listening("prometheus");
            let addr = a
                .strip_prefix("http://")
                .and_then(|a| a.strip_suffix("/metrics"))
                .unwrap_or_else(|| panic!("prometheus line not http://ADDR/metrics: {a:?}"));
            addr.parse()
                .unwrap_or_else(|e| panic!("bad prometheus address {addr:?}: {e}"))
        }

        /// The admin listener (`turnd: listening on admin http://ADDR/`).
        #[track_caller]
        pub fn admin(&mut self) -> SocketAddr {
            let a = self.wait_listening("admin");
            let addr = a
                .strip_prefix("http://")
                .and_then(|a| a.strip_suffix('/'))
                .unwrap_or_else(|| panic!("admin line not http://ADDR/: {a:?}"));
            addr.parse()
                .unwrap_or_else(|e| panic!("bad admin address {addr:?}: {e}"))
        }

        /// `kill -SIG <pid>` (`sig` like "TERM", "HUP"): this child only.
        #[track_caller]
        pub fn signal(&self, sig: &str) {
            let pid = self.child.id().to_string();
            let out = run_with_timeout(
                Command::new("kill").args([&format!("-{sig}"), &pid]),
                Duration::from_secs(5),
            );
            assert!(
                out.status.is_some_and(|s| s.success()),
                "kill -{sig} {pid}: {out:?}"
            );
        }

        /// The exit status, if it has exited.
        pub fn try_exit(&mut self) -> Option<ExitStatus> {
            if self.status.is_none() {
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.status = Some(st);
                }
            }
            self.status
        }

        /// Waits at most `timeout` for the process to exit.
        pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
            let mut st = None;
            ops_wait_until(timeout, || {
                st = self.try_exit();
                st.is_some()
            });
            st
        }

        /// True while the process runs.
        pub fn is_running(&mut self) -> bool {
            self.try_exit().is_none()
        }

        /// Waits (at most `timeout`) until the log holds `needle` at least
        /// `count` times.
        pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
            ops_wait_until(timeout, || self.log().matches(needle).count() >= count)
        }
    }

    impl Drop for OpsServer {
        fn drop(&mut self) {
            if self.status.is_none() {
                // Child::kill signals this child's PID only.
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            if thread::panicking() {
                eprintln!(
                    "---- turnd {:?} ----\nstdout: {:?}\nstderr:\n{}\n---- end of turnd log ----",
                    self.args,
                    self.stdout_lines(),
                    self.log()
                );
            }
        }
    }

    /// An HTTP response read by [`ops_http`].
    #[derive(Clone, Debug)]
    pub struct OpsHttpResponse {
        /// Status code.
        pub status: u16,
        /// Header fields, names lowercased, in order.
        pub headers: Vec<(String, String)>,
        /// The body (chunked encoding undone).
        pub body: String,
    }

    impl OpsHttpResponse {
        /// The first header `name` (lowercase).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }

        /// The body as JSON; panics when it is not.
        #[track_caller]
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
        }
    }

    /// One HTTP/1.1 request over a plain `TcpStream` (`Connection: close`),
    /// the response read to EOF within 10 s.
    #[track_caller]
    pub fn ops_http(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> OpsHttpResponse {
        let timeout = Duration::from_secs(10);
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(timeout)).unwrap();
        s.set_write_timeout(Some(timeout)).unwrap();
        let mut req =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if matches!(method, "POST" | "PUT" | "DELETE") {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("read from {addr} ({method} {target}): {e}"));
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in response: {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        if let Some((_, n)) = headers.iter().find(|(k, _)| k == "content-length") {
            let n: usize = n.parse().expect("numeric content-length");
            assert_eq!(body.len(), n, "body length vs content-length: {body:?}");
        }
        OpsHttpResponse {
            status,
            headers,
            body,
        }
    }

    fn dechunk(mut s: &str) -> String {
        let mut out = String::new();
        loop {
            let Some((size, rest)) = s.split_once("\r\n") else {
                return out;
            };
            let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|e| panic!("bad chunk size {size:?}: {e}"));
            if n == 0 {
                return out;
            }
            out.push_str(&rest[..n]);
            s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
        }
    }

    /// `GET target` with `Authorization: Bearer token`.
    #[track_caller]
    pub fn ops_get_bearer(addr: SocketAddr, target: &str, token: &str) -> OpsHttpResponse {
        let auth = format!("Bearer {token}");
        ops_http(addr, "GET", target, &[("Authorization", &auth)])
    }

    /// One sample of a Prometheus text exposition.
    #[derive(Clone, Debug, PartialEq)]
    pub struct OpsSample {
        /// Metric name.
        pub name: String,
        /// Label pairs.
        pub labels: BTreeMap<String, String>,
        /// Value.
        pub value: f64,
        /// The line it came from.
        pub line: String,
    }

    /// A parsed `/metrics` page (text format 0.0.4).
    #[derive(Clone, Debug, Default)]
    pub struct OpsMetrics {
        /// Every sample line, in order.
        pub samples: Vec<OpsSample>,
        /// `# TYPE name kind`, in order.
        pub types: Vec<(String, String)>,
        /// `# HELP name ...` names, in order.
        pub helps: Vec<String>,
        /// The page.
        pub text: String,
        /// Problems found while parsing (a sample before its `# TYPE`,
        /// a malformed line...): empty for a well-formed page.
        pub problems: Vec<String>,
    }

    fn valid_metric_name(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }

    fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
        // s is what is between { and }.
        let mut out = BTreeMap::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && (b[i] == b',' || b[i] == b' ') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let start = i;
            while i < b.len() && b[i] != b'=' {
                i += 1;
            }
            let key = s.get(start..i)?.trim().to_owned();
            if !valid_metric_name(&key) || key.contains(':') {
                return None;
            }
            i += 1;
            if b.get(i) != Some(&b'"') {
                return None;
            }
            i += 1;
            let mut v = String::new();
            loop {
                match b.get(i)? {
                    b'\\' => {
                        match b.get(i + 1)? {
                            b'n' => v.push('\n'),
                            b'\\' => v.push('\\'),
                            b'"' => v.push('"'),
                            _ => return None,
                        }
                        i += 2;
                    }
                    b'"' => {
                        i += 1;
                        break;
                    }
                    _ => {
                        let ch = s[i..].chars().next()?;
                        v.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.insert(key, v);
        }
        Some(out)
    }

    impl OpsMetrics {
        /// Parses `text`, recording what breaks the format's rules in `problems`.
        pub fn parse(text: &str) -> OpsMetrics {
            let mut m = OpsMetrics {
                text: text.to_owned(),
                ..OpsMetrics::default()
            };
            for line in text.lines() {
                if line.trim().is_empty() {
                    continue;
                }
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let mut p = rest.split_whitespace();
                    let (Some(n), Some(k), None) = (p.next(), p.next(), p.next()) else {
                        m.problems.push(format!("malformed TYPE line {line:?}"));
                        continue;
                    };
                    if m.types.iter().any(|(t, _)| t == n) {
                        m.problems.push(format!("second TYPE line for {n}"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&k) {
                        m.problems.push(format!("unknown type in {line:?}"));
                    }
                    m.types.push((n.to_owned(), k.to_owned()));
                    continue;
                }
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let n = rest.split_whitespace().next().unwrap_or_default();
                    m.helps.push(n.to_owned());
                    continue;
                }
                if line.starts_with('#') {
                    continue;
                }
                let (name_labels, value) = match line.rfind(' ') {
                    Some(i) => (&line[..i], line[i + 1..].trim()),
                    None => {
                        m.problems.push(format!("sample without value: {line:?}"));
                        continue;
                    }
                };
                let (name, labels) = match name_labels.find('{') {
                    Some(i) => {
                        let Some(inner) = name_labels[i + 1..].strip_suffix('}') else {
                            m.problems.push(format!("unclosed labels: {line:?}"));
                            continue;
                        };
                        let Some(l) = parse_labels(inner) else {
                            m.problems.push(format!("malformed labels: {line:?}"));
                            continue;
                        };
                        (&name_labels[..i], l)
                    }
                    None => (name_labels.trim(), BTreeMap::new()),
                };
                if !valid_metric_name(name) {
                    m.problems.push(format!("invalid metric name in {line:?}"));
                }
                let Ok(value) = value.parse::<f64>() else {
                    m.problems.push(format!("value not a number: {line:?}"));
                    continue;
                };
                // The sample's family must have been typed before it: the
                // last TYPE line so far names it.
                match m.types.last() {
                    Some((t, _)) if t == name => {}
                    Some((t, k))
                        if (k == "histogram" || k == "summary")
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|sfx| name.strip_suffix(sfx) == Some(t.as_str())) => {}
                    _ => m
                        .problems
                        .push(format!("sample {name} not preceded by its own # TYPE line")),
                }
                m.samples.push(OpsSample {
                    name: name.to_owned(),
                    labels,
                    value,
                    line: line.to_owned(),
                });
            }
            m
        }

        /// The type declared for `name`.
        pub fn type_of(&self, name: &str) -> Option<&str> {
            self.types
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, k)| k.as_str())
        }

        /// Samples named `name` whose labels include every pair of `labels`.
        pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&OpsSample> {
            self.samples
                .iter()
                .filter(|s| {
                    s.name == name
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .collect()
        }

        /// The value of the one sample `name{labels}` (labels exactly those given).
        pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            self.samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|s| s.value)
        }

        /// Like [`OpsMetrics::value`], panicking (with the page) when absent.
        #[track_caller]
        pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            self.value(name, labels)
                .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{}", self.text))
        }
    }

    /// `GET /metrics` from `addr`, checked (200, text/plain) and parsed.
    #[track_caller]
    pub fn ops_scrape(addr: SocketAddr) -> OpsMetrics {
        let r = ops_http(addr, "GET", "/metrics", &[]);
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
        OpsMetrics::parse(&r.body)
    }

    /// A UDP echo peer on 127.0.0.1 (its own thread; stopped on drop).
    pub struct OpsEchoPeer {
        /// Its address.
        pub addr: SocketAddr,
        /// Datagrams echoed so far.
        pub echoed: Arc<std::sync::atomic::AtomicU64>,
        stop: Arc<AtomicBool>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl OpsEchoPeer {
        /// Binds 127.0.0.1:0 and echoes every datagram to its sender.
        pub fn start() -> OpsEchoPeer {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind echo peer");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let addr = sock.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let echoed = Arc::new(std::sync::atomic::AtomicU64::new(0));
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
            OpsEchoPeer {
                addr,
                echoed,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for OpsEchoPeer {
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
    pub fn ops_channel_round_trip(c: &mut Client, n: u16, data: &[u8]) {
        c.channel_data(n, data);
        let (ch, back) = c.expect_channel_data(RESPONSE_TIMEOUT);
        assert_eq!(ch, n, "echo on another channel");
        assert_eq!(back, data, "echo differs");
    }

    /// Reads `path` as text ("" when it does not exist).
    pub fn ops_read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }
}
