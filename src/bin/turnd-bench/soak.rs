//! `turnd-bench soak`: runs turnd for `--minutes` under churn and checks
//! that nothing leaks.
//!
//! ```text
//! turnd-bench soak --turnd target/release/turnd --minutes 30 --out soak-out
//! turnd-bench soak --attach-pid PID --server 127.0.0.1:3478 --metrics 127.0.0.1:9641 \
//!     --secret S --minutes 30 --out soak-out
//! ```
//!
//! With `--turnd` the tool writes a config (REST secret, loopback relay,
//! short lifetimes, TLS with a self-signed certificate made by `openssl`,
//! Prometheus on an ephemeral port, a log file) into `--out`, starts turnd
//! on it and stops it at the end. With `--attach-pid` it drives a turnd
//! already running (which must allow loopback peers and have its metrics on).
//!
//! Churn: `--clients` slots, each running one client life after another.
//! A life mints REST credentials, connects over UDP (7 slots in 10), TCP (2)
//! or TLS (1), allocates, binds channel 0x4000 to an echo peer (3 lives in 4)
//! or adds a permission and uses Send indications (1 in 4), adds a
//! permission for a third address it never refreshes (it expires), binds a
//! second channel half-way through that it never refreshes either (it
//! expires too when the life outlasts `--lifetime`), and sends `--pps`
//! packets/s of `--size` bytes, evenly paced, counting the echoes. Every
//! third of `--lifetime` it refreshes the allocation and its main channel or
//! permission. After `--hold-min..=--hold-max` seconds it waits for its last
//! echoes and then deletes the allocation (Refresh 0), or abandons it: a UDP
//! client drops its socket (1 life in 5; the allocation expires), a stream
//! client closes its connection without a Refresh (1 in 4). A SIGHUP goes to
//! turnd every `--sighup-secs`.
//!
//! Every `--sample-secs` turnd's VmRSS, open descriptors and its metrics
//! (live allocations, relay ports in use, permissions, channels, TCP/TLS
//! connections) go into `soak.csv`; `soak.png` plots them at the end.
//!
//! Checks (exit 1 and a `FAIL` line for each failed one):
//! - loss: every packet a client sent came back (0 loss, every life);
//! - errors: no transaction failed or timed out, no connection dropped;
//! - ports: once every client is gone and the abandoned allocations have
//!   expired, no allocation is left and the free relay ports are the full
//!   range again;
//! - fds: turnd's descriptors are back to their level before the first
//!   client (± `--fd-slack`);
//! - steady state, after `--warmup-minutes` and only when churn lasts longer
//!   than that: every sample's RSS within `--tolerance-pct` of the mean of
//!   the first fifth of the steady samples, and every sample's descriptors,
//!   less relay ports in use and connections (one descriptor each), within
//!   `--tolerance-pct` of that level.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use turnd::auth::{rest_password, rest_username};
use turnd::stun::{
    long_term_key, stream_frame_len, write_channel_data_header, ChannelData, TransactionId,
};

use crate::plot;
use crate::procstat;
use crate::proto::{self, Auth, Reply};

/// `turnd-bench soak` options.
#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// turnd binary to start with a config written into --out.
    #[arg(long, conflicts_with = "attach_pid")]
    turnd: Option<PathBuf>,
    /// PID of a turnd already running to soak instead (needs --server,
    /// --metrics and --secret; it must allow loopback peers).
    #[arg(long, requires_all = ["server", "metrics", "secret"])]
    attach_pid: Option<u32>,
    /// With --attach-pid: turnd's UDP and TCP address.
    #[arg(long)]
    server: Option<SocketAddr>,
    /// With --attach-pid: turnd's TLS address (no TLS clients without it).
    #[arg(long)]
    tls_server: Option<SocketAddr>,
    /// With --attach-pid: turnd's Prometheus listener (IP:PORT).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// With --attach-pid: the REST shared secret (static-auth-secret).
    #[arg(long)]
    secret: Option<String>,
    /// Minutes of churn (the drain and the checks come after).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Directory for soak.csv, soak.png and (with --turnd) turnd's config,
    /// certificate and log.
    #[arg(long)]
    out: PathBuf,
    /// Client slots: concurrent client lives.
    #[arg(long, default_value_t = 60)]
    clients: usize,
    /// Packets per second each client sends (and expects back).
    #[arg(long, default_value_t = 5.0)]
    pps: f64,
    /// Payload bytes per packet (a multiple of 4, 16..=1200).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Shortest client life, seconds.
    #[arg(long, default_value_t = 10)]
    hold_min: u64,
    /// Longest client life, seconds.
    #[arg(long, default_value_t = 90)]
    hold_max: u64,
    /// With --turnd: max-allocate-lifetime, permission-lifetime and
    /// channel-lifetime, seconds (clients refresh every third of it). With
    /// --attach-pid give the server's max-allocate-lifetime: abandoned
    /// allocations must expire within the drain.
    #[arg(long, default_value_t = 30)]
    lifetime: u32,
    /// Seconds between SIGHUPs (0: none).
    #[arg(long, default_value_t = 60)]
    sighup_secs: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// With --turnd: the relay port range.
    #[arg(long, default_value_t = 49152)]
    min_port: u16,
    /// With --turnd: the relay port range (inclusive).
    #[arg(long, default_value_t = 65535)]
    max_port: u16,
    /// Descriptors turnd may hold at the end beyond its level before the
    /// first client.
    #[arg(long, default_value_t = 2)]
    fd_slack: u64,
    /// Minutes of warm-up before the steady-state checks.
    #[arg(long, default_value_t = 5.0)]
    warmup_minutes: f64,
    /// Allowed deviation of RSS and descriptors in the steady state, percent.
    #[arg(long, default_value_t = 10.0)]
    tolerance_pct: f64,
    /// Longest wait for the allocations to go after the churn, seconds
    /// (default: twice --lifetime + 15).
    #[arg(long)]
    drain_secs: Option<u64>,
}

/// Which transport a client uses to reach turnd.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Udp,
    Tcp,
    Tls,
}

/// Counters shared by every client.
#[derive(Default)]
struct Stats {
    lives: AtomicU64,
    udp: AtomicU64,
    tcp: AtomicU64,
    tls: AtomicU64,
    deleted: AtomicU64,
    abandoned: AtomicU64,
    closed: AtomicU64,
    via_send: AtomicU64,
    refreshes: AtomicU64,
    sent: AtomicU64,
    echoed: AtomicU64,
    lost: AtomicU64,
    stale_nonces: AtomicU64,
    errors: AtomicU64,
    live: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// What every client task shares.
struct Shared {
    server: SocketAddr,
    tls_server: Option<SocketAddr>,
    tls: Arc<ClientConfig>,
    secret: String,
    /// Echo peer for ChannelData.
    peer_a: SocketAddr,
    /// Echo peer for Send indications.
    peer_b: SocketAddr,
    /// A peer address that only gets permissions and a channel, never traffic.
    peer_c: SocketAddr,
    pps: f64,
    size: usize,
    hold: (u64, u64),
    lifetime: u32,
    stop: AtomicBool,
    /// The start of the churn (loss reports give times from it).
    t0: tokio::time::Instant,
    stats: Stats,
    first_errors: Mutex<Vec<String>>,
}

/// One sample row.
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// Seconds since the start of the churn.
    pub t_s: f64,
    /// `warmup`, `steady`, `drain` or `end`.
    pub phase: &'static str,
    /// turnd's VmRSS, KiB.
    pub rss_kib: u64,
    /// turnd's open descriptors.
    pub fds: u64,
    /// Live allocations (metrics).
    pub allocations: u64,
    /// Relay ports in use: the range less `turnd_relay_ports_free`.
    pub ports_in_use: u64,
    /// Live permissions (metrics).
    pub permissions: u64,
    /// Live channel bindings (metrics).
    pub channels: u64,
    /// Open TCP/TLS client connections (metrics).
    pub connections: u64,
    /// Client lives in progress (this tool's count).
    pub clients: u64,
}

/// What the metrics endpoint said.
#[derive(Default, Debug, Clone, Copy)]
struct Metrics {
    allocations: u64,
    ports_free: u64,
    permissions: u64,
    channels: u64,
    connections: u64,
    /// Packets relayed client to peer and peer to client (counters).
    relayed: (u64, u64),
}

/// Runs the soak; the exit code says whether every check passed.
pub fn run(a: SoakArgs) -> Result<ExitCode, String> {
    if a.size % 4 != 0 || !(16..=1200).contains(&a.size) {
        return Err("--size must be a multiple of 4 in 16..=1200".into());
    }
    if a.hold_min == 0 || a.hold_min > a.hold_max {
        return Err("--hold-min must be at least 1 and at most --hold-max".into());
    }
    if a.clients == 0 || a.pps <= 0.0 || a.lifetime < 3 || a.sample_secs == 0 {
        return Err(
            "--clients, --pps and --sample-secs must be positive, --lifetime at least 3".into(),
        );
    }
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let mut server = match (&a.turnd, a.attach_pid) {
        (Some(bin), _) => Server::start(bin, &a)?,
        (None, Some(pid)) => Server {
            child: None,
            pid,
            udp: a.server.ok_or("--server is required with --attach-pid")?,
            tls: a.tls_server,
            metrics: a.metrics.ok_or("--metrics is required with --attach-pid")?,
            secret: a.secret.clone().unwrap_or_default(),
            range: None,
        },
        (None, None) => return Err("give --turnd BIN or --attach-pid PID".into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = rt.block_on(soak(&a, &server));
    server.stop();
    result
}

/// The turnd under test.
struct Server {
    child: Option<Child>,
    pid: u32,
    udp: SocketAddr,
    tls: Option<SocketAddr>,
    metrics: SocketAddr,
    secret: String,
    /// The relay port range size when this tool configured it.
    range: Option<u64>,
}

impl Server {
    /// Writes the config and certificate into `a.out` and starts `bin` on
    /// them; waits (at most 30 s) for its listeners.
    fn start(bin: &Path, a: &SoakArgs) -> Result<Server, String> {
        if a.min_port > a.max_port {
            return Err("--min-port is above --max-port".into());
        }
        let dir = std::fs::canonicalize(&a.out).map_err(|e| e.to_string())?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("openssl (needed for the TLS certificate): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl req -x509 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let secret = format!("soak-{:016x}", rand::random::<u64>());
        let l = a.lifetime;
        let config = format!(
            "# Written by turnd-bench soak.\n\
             listening-ip = [\"127.0.0.1\"]\nlistening-port = 0\nrelay-ip = [\"127.0.0.1\"]\n\
             min-port = {}\nmax-port = {}\nrealm = \"soak\"\n\
             use-auth-secret = true\nstatic-auth-secret = [\"{secret}\"]\n\
             allow-loopback-peers = true\n\
             max-allocate-lifetime = {l}\npermission-lifetime = {l}\nchannel-lifetime = {l}\n\
             tls-listening-port = [0]\ncert = {:?}\npkey = {:?}\n\
             prometheus = true\nprometheus-port = 0\nprometheus-address = \"127.0.0.1\"\n\
             log-file = {:?}\n",
            a.min_port,
            a.max_port,
            cert.display().to_string(),
            key.display().to_string(),
            dir.join("turnd.log").display().to_string(),
        );
        let conf = dir.join("turnd.toml");
        std::fs::write(&conf, config).map_err(|e| format!("{}: {e}", conf.display()))?;
        let stderr = std::fs::File::create(dir.join("turnd.stderr")).map_err(|e| e.to_string())?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Ends at EOF, when turnd exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            pid,
            udp: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: None,
            metrics: SocketAddr::from(([0, 0, 0, 0], 0)),
            secret,
            range: Some(u64::from(a.max_port - a.min_port) + 1),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut udp, mut tls, mut metrics) = (None, None, None);
        while udp.is_none() || tls.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                server.stop();
                return Err(format!(
                    "turnd did not print its listeners within 30 s (see {})",
                    dir.join("turnd.stderr").display()
                ));
            };
            let addr = |p: &str| line.strip_prefix(p).and_then(|r| r.trim().parse().ok());
            udp = udp.or(addr("turnd: listening on udp "));
            tls = tls.or(addr("turnd: listening on tls "));
            metrics = metrics.or(line
                .strip_prefix("turnd: listening on prometheus http://")
                .and_then(|r| r.trim().strip_suffix("/metrics"))
                .and_then(|r| r.parse().ok()));
        }
        server.udp = udp.expect("udp");
        server.tls = tls;
        server.metrics = metrics.expect("metrics");
        println!(
            "turnd-bench soak: started turnd pid {pid}: udp/tcp {}, tls {}, metrics {}, config {}",
            server.udp,
            tls.expect("tls"),
            server.metrics,
            conf.display()
        );
        Ok(server)
    }

    /// Sends `sig` (`HUP`, `TERM`) to turnd by its PID.
    fn signal(&self, sig: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the turnd this tool started: SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            self.signal("TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// Reads `/metrics` (HTTP/1.1, Connection: close), at most 5 s.
async fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
    let body = timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        io::Result::Ok(body)
    })
    .await
    .map_err(|_| "metrics: no answer in 5 s".to_string())?
    .map_err(|e| format!("metrics: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    let mut m = Metrics::default();
    let mut seen_ports = false;
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        let family = name.split('{').next().unwrap_or(name);
        match family {
            "turnd_allocations" => m.allocations += v,
            "turnd_relay_ports_free" => {
                m.ports_free += v;
                seen_ports = true;
            }
            "turnd_permissions" => m.permissions = v,
            "turnd_channels" => m.channels = v,
            "turnd_connections" => m.connections = v,
            "turnd_relayed_packets_total" if name.contains("client_to_peer") => m.relayed.0 = v,
            "turnd_relayed_packets_total" if name.contains("peer_to_client") => m.relayed.1 = v,
            _ => {}
        }
    }
    if !seen_ports {
        return Err("metrics: no turnd_relay_ports_free in the answer".into());
    }
    Ok(m)
}

/// A TCP or TLS connection.
enum StreamIo {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The connection of one client to turnd.
enum Link {
    Udp(UdpSocket),
    /// A stream and the bytes read from it not yet framed.
    Stream(StreamIo, Vec<u8>),
    /// Handed over (an abandoned UDP socket kept bound elsewhere).
    Closed,
}

impl Link {
    async fn connect(sh: &Shared, via: Via) -> io::Result<Link> {
        Ok(match via {
            Via::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").await?;
                s.connect(sh.server).await?;
                Link::Udp(s)
            }
            Via::Tcp => {
                let s = TcpStream::connect(sh.server).await?;
                s.set_nodelay(true)?;
                Link::Stream(StreamIo::Tcp(s), Vec::new())
            }
            Via::Tls => {
                let addr = sh.tls_server.expect("TLS slots only with a TLS listener");
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let name = ServerName::IpAddress(addr.ip().into());
                let t = TlsConnector::from(sh.tls.clone()).connect(name, s).await?;
                Link::Stream(StreamIo::Tls(Box::new(t)), Vec::new())
            }
        })
    }

    fn is_udp(&self) -> bool {
        matches!(self, Link::Udp(_))
    }

    async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Link::Udp(s) => s.send(frame).await.map(drop),
            Link::Stream(StreamIo::Tcp(s), _) => s.write_all(frame).await,
            Link::Stream(StreamIo::Tls(s), _) => {
                s.write_all(frame).await?;
                s.flush().await
            }
            Link::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The next datagram or stream frame. Cancel-safe: bytes read stay in
    /// the link's buffer.
    async fn recv(&mut self) -> io::Result<Vec<u8>> {
        let mut tmp = [0u8; 4096];
        match self {
            Link::Udp(s) => {
                let n = s.recv(&mut tmp).await?;
                Ok(tmp[..n].to_vec())
            }
            Link::Stream(io, rx) => loop {
                match stream_frame_len(rx) {
                    Ok(Some(n)) => return Ok(rx.drain(..n).collect()),
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
                let n = match io {
                    StreamIo::Tcp(s) => s.read(&mut tmp).await?,
                    StreamIo::Tls(s) => s.read(&mut tmp).await?,
                };
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                rx.extend_from_slice(&tmp[..n]);
            },
            Link::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// A request a client makes.
#[derive(Clone, Copy, Debug)]
enum Req {
    Allocate,
    Refresh(u32),
    Permission(SocketAddr),
    Bind(u16, SocketAddr),
}

/// One client life.
struct Client<'a> {
    sh: &'a Shared,
    link: Link,
    id: u32,
    user: String,
    password: String,
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
    sent: u64,
    echoed: u64,
    /// Packets not echoed yet: sequence number -> when sent.
    pending: std::collections::BTreeMap<u64, tokio::time::Instant>,
    buf: Vec<u8>,
}

impl Client<'_> {
    fn auth(&self) -> Auth<'_> {
        Auth {
            user: &self.user,
            realm: &self.realm,
            nonce: &self.nonce,
            key: &self.key,
        }
    }

    fn encode(&mut self, req: Req, tid: TransactionId) -> usize {
        let mut buf = std::mem::take(&mut self.buf);
        let auth = self.auth();
        let n = match req {
            Req::Allocate if self.realm.is_empty() => proto::allocate_probe(&mut buf, tid),
            Req::Allocate => proto::allocate(&mut buf, tid, &auth),
            Req::Refresh(l) => proto::refresh(&mut buf, tid, &auth, l),
            Req::Permission(p) => proto::create_permission(&mut buf, tid, &auth, p),
            Req::Bind(c, p) => proto::channel_bind_number(&mut buf, tid, &auth, c, p),
        }
        .expect("requests fit 1500 bytes");
        self.buf = buf;
        n
    }

    /// Counts a frame that is not an answer: an echo, or nothing.
    fn on_data(&mut self, frame: &[u8]) {
        let data = match frame.first() {
            Some(b) if b >> 6 == 1 => ChannelData::parse(frame).ok().map(|c| c.data()),
            _ => proto::data_indication(frame),
        };
        let Some(d) = data.filter(|d| d.len() >= 12 && d[..4] == self.id.to_be_bytes()) else {
            return;
        };
        let seq = u64::from_be_bytes(d[4..12].try_into().expect("8 bytes"));
        if self.pending.remove(&seq).is_some() {
            self.echoed += 1;
        }
    }

    /// Sends `req` and waits for its answer (UDP retransmits after 0.5, 1
    /// and 2 s; 5 s in all), learning the realm and nonce from 401 and a new
    /// nonce from 438. Echoes arriving meanwhile are counted.
    async fn transact(&mut self, req: Req) -> Result<Option<SocketAddr>, String> {
        for _attempt in 0..4 {
            let tid: TransactionId = rand::random();
            let n = self.encode(req, tid);
            let frame = self.buf[..n].to_vec();
            let start = tokio::time::Instant::now();
            let deadline = start + Duration::from_secs(5);
            let mut resend = [500u64, 1500, 3500]
                .map(|ms| start + Duration::from_millis(ms))
                .into_iter();
            let mut next_resend = if self.link.is_udp() {
                resend.next()
            } else {
                None
            };
            self.link
                .send(&frame)
                .await
                .map_err(|e| format!("{req:?}: send: {e}"))?;
            let reply = loop {
                let wake = next_resend.map_or(deadline, |r| r.min(deadline));
                match timeout_at(wake, self.link.recv()).await {
                    Ok(Ok(f)) => match proto::reply(&f, &tid) {
                        Some(r) => break r,
                        None => self.on_data(&f),
                    },
                    Ok(Err(e)) => return Err(format!("{req:?}: {e}")),
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return Err(format!("{req:?}: no answer in 5 s"))
                    }
                    Err(_) => {
                        next_resend = resend.next();
                        self.link
                            .send(&frame)
                            .await
                            .map_err(|e| format!("{req:?}: resend: {e}"))?;
                    }
                }
            };
            match reply {
                Reply::Success { relay } => return Ok(relay),
                Reply::Error {
                    code: 401,
                    realm: Some(realm),
                    nonce: Some(nonce),
                } if self.realm.is_empty() => {
                    self.key = long_term_key(&self.user, &realm, &self.password);
                    self.realm = realm;
                    self.nonce = nonce;
                }
                Reply::Error {
                    code: 438,
                    nonce: Some(nonce),
                    ..
                } => {
                    bump(&self.sh.stats.stale_nonces);
                    self.nonce = nonce;
                }
                // A retransmitted delete whose first copy was answered.
                Reply::Error { code: 437, .. } if matches!(req, Req::Refresh(0)) => {
                    return Ok(None)
                }
                Reply::Error { code, .. } => return Err(format!("{req:?}: error {code}")),
            }
        }
        Err(format!("{req:?}: still refused after 4 tries"))
    }

    /// Sends one traffic packet: ChannelData on 0x4000 or a Send indication.
    async fn send_packet(&mut self, via_send: bool) -> Result<(), String> {
        let size = self.sh.size;
        let mut payload = vec![0u8; size];
        payload[..4].copy_from_slice(&self.id.to_be_bytes());
        payload[4..12].copy_from_slice(&self.sent.to_be_bytes());
        let frame = if via_send {
            let mut buf = vec![0u8; size + 64];
            let n = proto::send_indication(&mut buf, rand::random(), self.sh.peer_b, &payload)
                .expect("fits");
            buf.truncate(n);
            buf
        } else {
            let mut buf = vec![0u8; 4 + size];
            write_channel_data_header(&mut buf, proto::CHANNEL, size);
            buf[4..].copy_from_slice(&payload);
            buf
        };
        self.link
            .send(&frame)
            .await
            .map_err(|e| format!("traffic: send: {e}"))?;
        self.pending.insert(self.sent, tokio::time::Instant::now());
        self.sent += 1;
        Ok(())
    }

    /// Receives until `until`, counting echoes.
    async fn pump(&mut self, until: tokio::time::Instant) -> Result<(), String> {
        loop {
            match timeout_at(until, self.link.recv()).await {
                Ok(Ok(f)) => self.on_data(&f),
                Ok(Err(e)) => return Err(format!("traffic: {e}")),
                Err(_) => return Ok(()),
            }
        }
    }
}

/// How a life ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    /// Refresh with lifetime 0.
    Delete,
    /// UDP: drop the socket, the allocation expires.
    Abandon,
    /// TCP/TLS: close the connection without a Refresh.
    Close,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One client life from connect to delete (or abandonment).
async fn life(sh: &Shared, via: Via, id: u32, rng: &mut SmallRng) -> Result<(), String> {
    let st = &sh.stats;
    let user = rest_username(unix_now() + 3600, ':', &format!("soak{id}"));
    let password = rest_password(&sh.secret, &user);
    let link = Link::connect(sh, via)
        .await
        .map_err(|e| format!("connect {via:?}: {e}"))?;
    bump(&st.lives);
    bump(match via {
        Via::Udp => &st.udp,
        Via::Tcp => &st.tcp,
        Via::Tls => &st.tls,
    });
    let mut c = Client {
        sh,
        link,
        id,
        user,
        password,
        realm: String::new(),
        nonce: Vec::new(),
        key: [0; 16],
        sent: 0,
        echoed: 0,
        pending: Default::default(),
        buf: vec![0u8; 1500],
    };
    c.transact(Req::Allocate).await?; // the 401
    if c.realm.is_empty() {
        return Err("Allocate without credentials was not refused with 401".into());
    }
    st.live.fetch_add(1, Ordering::Relaxed);
    let result = live_allocation(&mut c, via, rng).await;
    st.live.fetch_sub(1, Ordering::Relaxed);
    st.sent.fetch_add(c.sent, Ordering::Relaxed);
    st.echoed.fetch_add(c.echoed, Ordering::Relaxed);
    result
}

async fn live_allocation(c: &mut Client<'_>, via: Via, rng: &mut SmallRng) -> Result<(), String> {
    let sh = c.sh;
    let st = &sh.stats;
    let via_send = rng.gen_bool(0.25);
    if via_send {
        bump(&st.via_send);
    }
    let fate = match via {
        Via::Udp if rng.gen_bool(0.2) => Fate::Abandon,
        Via::Tcp | Via::Tls if rng.gen_bool(0.25) => Fate::Close,
        _ => Fate::Delete,
    };
    let main = if via_send {
        Req::Permission(sh.peer_b)
    } else {
        Req::Bind(proto::CHANNEL, sh.peer_a)
    };
    c.transact(main).await?;
    // Never refreshed: expires after permission-lifetime.
    c.transact(Req::Permission(sh.peer_c)).await?;
    let now = tokio::time::Instant::now();
    let hold = Duration::from_secs(rng.gen_range(sh.hold.0..=sh.hold.1));
    let end = now + hold;
    let period = Duration::from_secs_f64(1.0 / sh.pps);
    let mut next_send = now + period.mul_f64(rng.gen::<f64>());
    let refresh_every = Duration::from_secs(u64::from(sh.lifetime) / 3).max(Duration::from_secs(1));
    let mut next_refresh = now + refresh_every;
    // A second channel, never refreshed: expires after channel-lifetime.
    let mut extra_channel = Some(now + hold / 2);
    while !sh.stop.load(Ordering::Relaxed) {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        if now >= next_refresh {
            c.transact(Req::Refresh(sh.lifetime)).await?;
            c.transact(main).await?;
            bump(&st.refreshes);
            next_refresh += refresh_every;
            continue;
        }
        if extra_channel.is_some_and(|t| now >= t) {
            extra_channel = None;
            c.transact(Req::Bind(proto::CHANNEL + 1, sh.peer_c)).await?;
            continue;
        }
        if now >= next_send {
            c.send_packet(via_send).await?;
            next_send += period;
            if next_send + Duration::from_secs(1) < now {
                next_send = now + period; // far behind (a stalled runtime): don't burst
            }
            continue;
        }
        let wake = next_send
            .min(next_refresh)
            .min(end)
            .min(extra_channel.unwrap_or(end));
        c.pump(wake).await?;
    }
    // The last echoes: up to 2 s.
    let traffic_end = tokio::time::Instant::now();
    let grace = traffic_end + Duration::from_secs(2);
    while c.echoed < c.sent && tokio::time::Instant::now() < grace {
        c.pump((tokio::time::Instant::now() + Duration::from_millis(20)).min(grace))
            .await?;
    }
    let lost = c.sent.saturating_sub(c.echoed);
    st.lost.fetch_add(lost, Ordering::Relaxed);
    match fate {
        Fate::Delete => {
            c.transact(Req::Refresh(0)).await?;
            bump(&st.deleted);
        }
        Fate::Abandon => {
            bump(&st.abandoned);
            // The socket stays bound (unread) until the allocation has
            // expired: a new client on the same port would get 441 from
            // the old allocation's 5-tuple.
            let link = std::mem::replace(&mut c.link, Link::Closed);
            let linger = Duration::from_secs(u64::from(sh.lifetime) + 5);
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                drop(link);
            });
        }
        Fate::Close => bump(&st.closed),
    }
    if lost > 0 {
        let at: Vec<String> = c
            .pending
            .values()
            .take(8)
            .map(|t| format!("{:.1}", t.duration_since(sh.t0).as_secs_f64()))
            .collect();
        return Err(format!(
            "client {} over {via:?} ({}): {lost} of {} packets lost, sent at t = {} s; traffic ended at {:.1} s",
            c.id,
            if via_send { "Send" } else { "ChannelData" },
            c.sent,
            at.join(", "),
            traffic_end.duration_since(sh.t0).as_secs_f64()
        ));
    }
    Ok(())
}

/// Slot `i`'s transport: 1 in 10 TLS, 2 TCP, 7 UDP (UDP only without TLS
/// listener for TLS slots).
fn slot_via(i: usize, tls: bool) -> Via {
    match i % 10 {
        0 if tls => Via::Tls,
        3 | 7 => Via::Tcp,
        _ => Via::Udp,
    }
}

/// A slot: lives one after another until the stop flag.
async fn slot(sh: Arc<Shared>, i: usize, start_after: Duration) {
    let mut rng = SmallRng::seed_from_u64(0x50a6 ^ i as u64);
    tokio::time::sleep(start_after).await;
    let via = slot_via(i, sh.tls_server.is_some());
    let mut n: u32 = 0;
    while !sh.stop.load(Ordering::Relaxed) {
        let id = (i as u32) << 16 | (n & 0xffff);
        n = n.wrapping_add(1);
        if let Err(e) = life(&sh, via, id, &mut rng).await {
            bump(&sh.stats.errors);
            {
                let mut first = sh.first_errors.lock().expect("errors");
                if first.len() < 100 {
                    first.push(e);
                }
            }
            // Not a hot loop when turnd is down.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A UDP echo peer on `ip`; `echoes` counts the datagrams it answered.
async fn echo_peer(ip: [u8; 4], echoes: Arc<AtomicU64>) -> io::Result<SocketAddr> {
    let s = UdpSocket::bind(SocketAddr::from((ip, 0))).await?;
    let addr = s.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            bump(&echoes);
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    Ok(addr)
}

/// Takes one sample.
async fn sample(server: &Server, range: u64, t_s: f64, phase: &'static str, live: u64) -> Row {
    // Descriptors first: the scrape's own connection is then not counted.
    let fds = fd_count(server.pid).unwrap_or(0);
    let rss = procstat::rss_kib(server.pid).unwrap_or(0);
    let m = scrape(server.metrics).await.unwrap_or_else(|e| {
        eprintln!("turnd-bench soak: {e}");
        Metrics {
            ports_free: range,
            ..Metrics::default()
        }
    });
    Row {
        t_s,
        phase,
        rss_kib: rss,
        fds,
        allocations: m.allocations,
        ports_in_use: range.saturating_sub(m.ports_free),
        permissions: m.permissions,
        channels: m.channels,
        connections: m.connections,
        clients: live,
    }
}

const CSV_HEADER: &str =
    "t_s,phase,rss_kib,fds,allocations,relay_ports_in_use,permissions,channels,connections,clients";

fn csv_line(r: &Row) -> String {
    format!(
        "{:.1},{},{},{},{},{},{},{},{},{}",
        r.t_s,
        r.phase,
        r.rss_kib,
        r.fds,
        r.allocations,
        r.ports_in_use,
        r.permissions,
        r.channels,
        r.connections,
        r.clients
    )
}

fn print_row(r: &Row) {
    println!(
        "  t={:>7.1}s {:<7} rss {:>7} KiB  fds {:>4}  allocations {:>4}  ports {:>4}  perms {:>4}  channels {:>4}  conns {:>3}  clients {:>3}",
        r.t_s, r.phase, r.rss_kib, r.fds, r.allocations, r.ports_in_use, r.permissions, r.channels, r.connections, r.clients
    );
}

async fn soak(a: &SoakArgs, server: &Server) -> Result<ExitCode, String> {
    let m0 = scrape(server.metrics).await?;
    let range = server.range.unwrap_or(m0.ports_free);
    if m0.allocations > 0 {
        return Err(format!(
            "turnd has {} allocations before the soak: attach to an idle one",
            m0.allocations
        ));
    }
    let peer_echoes = Arc::new(AtomicU64::new(0));
    let peer_a = echo_peer([127, 0, 0, 1], peer_echoes.clone())
        .await
        .map_err(|e| format!("echo peer: {e}"))?;
    let peer_b = echo_peer([127, 0, 0, 2], peer_echoes.clone())
        .await
        .map_err(|e| format!("echo peer on 127.0.0.2: {e}"))?;
    let sh = Arc::new(Shared {
        server: server.udp,
        tls_server: server.tls,
        tls: crate::stream::insecure_tls_config().map_err(|e| e.to_string())?,
        secret: server.secret.clone(),
        peer_a,
        peer_b,
        peer_c: SocketAddr::from(([127, 0, 0, 3], 9)),
        pps: a.pps,
        size: a.size,
        hold: (a.hold_min, a.hold_max),
        lifetime: a.lifetime,
        stop: AtomicBool::new(false),
        t0: tokio::time::Instant::now(),
        stats: Stats::default(),
        first_errors: Mutex::new(Vec::new()),
    });
    let t0 = sh.t0;
    let base = sample(server, range, 0.0, "start", 0).await;
    println!(
        "turnd-bench soak: {} client slots, {} pkt/s x {} B each, lives of {}..={} s, lifetime {} s, SIGHUP every {} s, {} min of churn",
        a.clients, a.pps, a.size, a.hold_min, a.hold_max, a.lifetime, a.sighup_secs, a.minutes
    );
    print_row(&base);
    let mut rows = vec![base.clone()];
    let churn = Duration::from_secs_f64(a.minutes.max(0.0) * 60.0);
    let warmup = Duration::from_secs_f64(a.warmup_minutes.max(0.0) * 60.0);
    // Slots start spread over the shortest life, so the churn is steady.
    let stagger = Duration::from_secs(a.hold_min).div_f64(a.clients as f64);
    let mut slots = Vec::new();
    for i in 0..a.clients {
        slots.push(tokio::spawn(slot(sh.clone(), i, stagger.mul_f64(i as f64))));
    }
    let sample_every = Duration::from_secs(a.sample_secs);
    let hup_every = Duration::from_secs(a.sighup_secs);
    let mut next_sample = t0 + sample_every;
    let mut next_hup = (a.sighup_secs > 0).then(|| t0 + hup_every);
    let mut hups = 0u32;
    let churn_end = t0 + churn;
    let csv_path = a.out.join("soak.csv");
    let mut csv = format!("{CSV_HEADER}\n{}\n", csv_line(&base));
    let mut server_died = false;
    loop {
        let now = tokio::time::Instant::now();
        if now >= churn_end {
            break;
        }
        let wake = next_sample
            .min(churn_end)
            .min(next_hup.unwrap_or(churn_end));
        sleep_until(wake).await;
        let now = tokio::time::Instant::now();
        if next_hup.is_some_and(|t| now >= t) {
            if server.signal("HUP") {
                hups += 1;
                println!("  t={:>7.1}s SIGHUP", now.duration_since(t0).as_secs_f64());
            }
            next_hup = next_hup.map(|t| t + hup_every);
        }
        if now >= next_sample {
            next_sample += sample_every;
            let t = now.duration_since(t0);
            let phase = if t < warmup { "warmup" } else { "steady" };
            let r = sample(server, range, t.as_secs_f64(), phase, get(&sh.stats.live)).await;
            print_row(&r);
            let _ = writeln!(csv, "{}", csv_line(&r));
            let _ = std::fs::write(&csv_path, &csv);
            rows.push(r);
            if !Path::new(&format!("/proc/{}", server.pid)).exists() {
                server_died = true;
                break;
            }
        }
    }
    // Drain: every life ends (deleting, abandoning or closing), then the
    // abandoned allocations expire.
    sh.stop.store(true, Ordering::Relaxed);
    let drain_start = tokio::time::Instant::now();
    for s in slots {
        // A life ends within a transaction (5 s x 4) and the 2 s grace.
        let _ = timeout(Duration::from_secs(30), s).await;
    }
    let drain_limit = Duration::from_secs(a.drain_secs.unwrap_or(2 * u64::from(a.lifetime) + 15));
    let fd_target = rows[0].fds + a.fd_slack;
    let mut last;
    loop {
        let now = tokio::time::Instant::now();
        let t = now.duration_since(t0).as_secs_f64();
        last = sample(server, range, t, "drain", get(&sh.stats.live)).await;
        let done = last.allocations == 0 && last.ports_in_use == 0 && last.fds <= fd_target;
        if done || now.duration_since(drain_start) >= drain_limit || server_died {
            break;
        }
        if now >= next_sample {
            next_sample += sample_every;
            print_row(&last);
            let _ = writeln!(csv, "{}", csv_line(&last));
            rows.push(last.clone());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last.phase = "end";
    print_row(&last);
    let _ = writeln!(csv, "{}", csv_line(&last));
    rows.push(last.clone());
    std::fs::write(&csv_path, &csv).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let png_path = a.out.join("soak.png");
    plot::soak_png(&png_path, &rows, warmup.as_secs_f64(), churn.as_secs_f64())
        .map_err(|e| format!("{}: {e}", png_path.display()))?;

    // Checks.
    let st = &sh.stats;
    let mut fails = Vec::new();
    let mut ok = Vec::new();
    let mut check = |pass: bool, what: String| {
        if pass {
            ok.push(what)
        } else {
            fails.push(what)
        }
    };
    check(!server_died, "turnd ran to the end".into());
    check(
        get(&st.lost) == 0 && get(&st.sent) > 0,
        format!("loss: {} of {} packets lost", get(&st.lost), get(&st.sent)),
    );
    let errors = sh.first_errors.lock().expect("errors").clone();
    let errors_path = a.out.join("soak-errors.txt");
    let _ = std::fs::write(&errors_path, errors.join("\n") + "\n");
    let errors = &errors[..errors.len().min(10)];
    check(
        get(&st.errors) == 0,
        format!("errors: {} lives failed {:?}", get(&st.errors), errors),
    );
    check(
        last.allocations == 0 && last.ports_in_use == 0,
        format!(
            "ports: {} allocations and {} relay ports in use at the end (range {range})",
            last.allocations, last.ports_in_use
        ),
    );
    check(
        last.fds <= fd_target,
        format!(
            "fds: {} at the end, {} before the first client (slack {})",
            last.fds, rows[0].fds, a.fd_slack
        ),
    );
    let steady: Vec<&Row> = rows.iter().filter(|r| r.phase == "steady").collect();
    if steady.len() >= 5 {
        let k = (steady.len() / 5).max(1);
        let reference = &steady[..k];
        let mean = |f: &dyn Fn(&Row) -> f64| reference.iter().map(|r| f(r)).sum::<f64>() / k as f64;
        let rss_ref = mean(&|r| r.rss_kib as f64);
        let fd_rest = |r: &Row| r.fds as f64 - (r.ports_in_use + r.connections) as f64;
        let fd_ref = mean(&fd_rest);
        let fd_level = mean(&|r| r.fds as f64);
        let tol = a.tolerance_pct / 100.0;
        let rss_dev = steady
            .iter()
            .map(|r| (r.rss_kib as f64 - rss_ref).abs())
            .fold(0.0, f64::max);
        let fd_dev = steady
            .iter()
            .map(|r| (fd_rest(r) - fd_ref).abs())
            .fold(0.0, f64::max);
        check(
            rss_dev <= tol * rss_ref,
            format!(
                "steady RSS: at most {:.1} % from {rss_ref:.0} KiB over {} samples",
                100.0 * rss_dev / rss_ref,
                steady.len()
            ),
        );
        check(
            fd_dev <= tol * fd_level,
            format!(
                "steady fds: at most {fd_dev:.0} descriptors ({:.1} % of {fd_level:.0}) from the level at the same load ({fd_ref:.0} + relay ports + connections)",
                100.0 * fd_dev / fd_level
            ),
        );
    } else {
        println!(
            "  steady-state checks skipped: {} samples after the {:.1}-minute warm-up (5 needed)",
            steady.len(),
            a.warmup_minutes
        );
    }
    println!(
        "turnd-bench soak: {} lives (udp {}, tcp {}, tls {}; {} via Send indications): {} deleted, {} abandoned to expire, {} closed without delete; {} refreshes, {} stale nonces, {} SIGHUPs; {} packets sent, {} echoed",
        get(&st.lives), get(&st.udp), get(&st.tcp), get(&st.tls), get(&st.via_send),
        get(&st.deleted), get(&st.abandoned), get(&st.closed),
        get(&st.refreshes), get(&st.stale_nonces), hups, get(&st.sent), get(&st.echoed)
    );
    if let Ok(m) = scrape(server.metrics).await {
        println!(
            "turnd-bench soak: where packets went: {} sent by the clients, {} relayed to the peers by turnd (from its start), {} answered by the echo peers, {} relayed back to the clients, {} echoes received",
            get(&st.sent),
            m.relayed.0,
            get(&peer_echoes),
            m.relayed.1,
            get(&st.echoed)
        );
    }
    for o in &ok {
        println!("  PASS {o}");
    }
    for f in &fails {
        println!("  FAIL {f}");
    }
    println!(
        "turnd-bench soak: wrote {} and {}",
        csv_path.display(),
        png_path.display()
    );
    crate::report::emit(&serde_json::json!({
        "mode": "soak",
        "minutes": a.minutes,
        "lives": get(&st.lives),
        "sent": get(&st.sent),
        "lost": get(&st.lost),
        "errors": get(&st.errors),
        "sighups": hups,
        "start": {"rss_kib": rows[0].rss_kib, "fds": rows[0].fds},
        "end": {"rss_kib": last.rss_kib, "fds": last.fds, "allocations": last.allocations, "ports_in_use": last.ports_in_use},
        "pass": fails.is_empty(),
    }));
    Ok(if fails.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
