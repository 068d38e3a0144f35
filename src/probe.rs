//! `turnd probe`: a command-line diagnostic for any TURN server (turnd,
//! coturn, ...), in the spirit of the Trickle ICE page.
//!
//! The probe plays two TURN clients against one server and prints each step
//! with its result and timing:
//!
//! 1. STUN Binding: the client's server-reflexive address.
//! 2. Allocate (401 challenge, then the authenticated request; a 438 Stale
//!    Nonce is retried once with the new nonce): the relayed address and its
//!    lifetime.
//! 3. A second allocation from a second client socket (or connection).
//! 4. CreatePermission on each allocation for the other's relayed address,
//!    and ChannelBind of channel 0x4000 on the first toward the second.
//! 5. A relayed round trip: client 1 sends ChannelData, which must reach
//!    client 2 as a Data indication from client 1's relayed address; client 2
//!    answers with a Send indication, which must come back to client 1 as
//!    ChannelData (or a Data indication). The round-trip time is measured.
//! 6. Refresh with LIFETIME 0 on both allocations.
//!
//! Transports: UDP (requests retransmitted within the step's timeout), TCP and
//! TLS (RFC 8656 section 12.5 framing; TLS with ALPN `stun.turn`, RFC 7443).
//! Failures are explained in plain words (wrong password, no answer, peer
//! policy, ...). Everything is synchronous and every wait is bounded by the
//! `--timeout` of a step. The probe is an IO shell of its own: it reads the
//! clock for its timeouts and timings.
//!
//! Messages are built and read with the crate's own codec ([`crate::stun`]);
//! `--secret` mints TURN REST credentials with [`crate::auth::rest_password`].

#![allow(clippy::disallowed_methods)] // an IO shell: reads the clock for timeouts and timings

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme, StreamOwned,
};

use crate::auth::{rest_password, rest_username, Key, PasswordAlgorithm};
use crate::config::{
    DEFAULT_LISTENING_PORT, DEFAULT_REST_API_SEPARATOR, DEFAULT_TLS_LISTENING_PORT,
};
use crate::stun::{
    decode_address, decode_error_code, stream_frame_len, write_channel_data_header, AttributeType,
    BufferFull, ChannelData, Class, FrameError, Message, MessageType, MessageWriter, Method,
    TransactionId, ALPN_STUN_TURN, CHANNEL_DATA_HEADER_LEN, HEADER_LEN, PROTOCOL_UDP,
};
use crate::turn::Transport;

/// Command-line arguments of `turnd probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// turn:HOST:PORT?transport=udp|tcp, turns:HOST:PORT (TLS), or stun:HOST:PORT
    pub url: String,
    /// User name of the long-term credentials
    #[arg(long)]
    pub user: Option<String>,
    /// Password of the long-term credentials
    #[arg(long)]
    pub password: Option<String>,
    /// TURN REST shared secret: mint credentials instead of --user/--password
    #[arg(long)]
    pub secret: Option<String>,
    /// Seconds to wait for each step
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// PEM CA certificate to trust for turns: (else the system roots)
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Don't verify the TLS certificate
    #[arg(long)]
    pub insecure: bool,
}

/// Runs the probe, printing each step on stdout; returns true only when every
/// step passed (for a `stun:` URL: when the Binding worked).
pub fn run(args: &ProbeArgs) -> bool {
    let stdout = io::stdout();
    let mut lock = stdout.lock();
    run_to(args, &mut lock)
}

/// Runs the probe, writing its report to `out`; returns true only when every
/// step passed. See the [module documentation](self) for the steps.
pub fn run_to(args: &ProbeArgs, out: &mut dyn Write) -> bool {
    let ctx = match Ctx::new(args) {
        Ok(ctx) => ctx,
        Err(why) => {
            say(out, format_args!("turnd probe: {why}"));
            return false;
        }
    };
    say(
        out,
        format_args!("turnd probe {}: {}", args.url, ctx.describe()),
    );
    let ok = probe(&ctx, out);
    if ok {
        if ctx.target.relay {
            say(out, format_args!("PASS: the relay works"));
        } else {
            say(
                out,
                format_args!("PASS: the server answers STUN (a stun: URL tests no relay)"),
            );
        }
    } else {
        say(out, format_args!("FAIL: see the failed step above"));
    }
    let _ = out.flush();
    ok
}

/// Channel number the probe binds on client 1. See RFC 8656, section 12.
const CHANNEL: u16 = 0x4000;
/// RFC 8489 section 6.2.1: the first retransmission timeout over UDP is 500 ms,
/// doubling after each retransmission.
const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Most transmissions of one request over UDP (RFC 8489 section 6.2.1: Rc = 7).
const MAX_UDP_SENDS: u32 = 7;
/// Most indications or ChannelData messages kept while waiting for a response.
const PENDING_CAP: usize = 64;
/// Most seconds a best-effort cleanup after a failure waits per request.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Lifetime of REST credentials minted from `--secret`: one hour.
const REST_LIFETIME_SECS: u64 = 3600;

fn say(out: &mut dyn Write, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
    let _ = out.write_all(b"\n");
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// URL and context
// ---------------------------------------------------------------------------

/// How the probe reaches the server, in words.
fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    }
}

/// What the URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `turn:`/`turns:` (true) or `stun:`/`stuns:` (false).
    relay: bool,
    transport: Transport,
    /// Host name or IP address, without brackets.
    host: String,
    port: u16,
}

impl Target {
    /// `HOST:PORT`, IPv6 addresses in brackets.
    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:`, `stun:` and
/// `stuns:` URLs (RFC 7064, RFC 7065).
fn parse_url(url: &str) -> Result<Target, String> {
    let url = url.trim();
    let bad = || {
        format!(
            "{url:?} is not a TURN or STUN URL: expected turn:HOST:PORT?transport=udp|tcp, \
             turns:HOST:PORT or stun:HOST:PORT"
        )
    };
    let (scheme, rest) = url.split_once(':').ok_or_else(bad)?;
    let (relay, tls) = match scheme.to_ascii_lowercase().as_str() {
        "turn" => (true, false),
        "turns" => (true, true),
        "stun" => (false, false),
        "stuns" => (false, true),
        _ => return Err(bad()),
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.trim_end_matches('/');
    let mut transport = if tls { Transport::Tls } else { Transport::Udp };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !k.eq_ignore_ascii_case("transport") {
            return Err(format!(
                "unknown URL parameter {k:?}: only transport=udp or transport=tcp is understood"
            ));
        }
        transport = match (v.to_ascii_lowercase().as_str(), tls) {
            ("udp", false) => Transport::Udp,
            ("tcp", false) => Transport::Tcp,
            ("tcp", true) => Transport::Tls,
            ("udp", true) => {
                return Err(
                    "a turns: URL over UDP means DTLS, which the probe does not speak: \
                     use turns:HOST:PORT?transport=tcp, or turn:HOST:PORT?transport=udp"
                        .into(),
                )
            }
            _ => return Err(format!("unknown transport {v:?}: expected udp or tcp")),
        };
    }
    // The default ports of `turns:`/`stuns:` and `turn:`/`stun:` URLs are
    // the servers' (RFC 7064 and RFC 7065).
    let default_port = if tls {
        DEFAULT_TLS_LISTENING_PORT
    } else {
        DEFAULT_LISTENING_PORT
    };
    let parse_port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(format!("bad port {p:?} in {url:?}: expected 1-65535")),
        }
    };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("missing ']' after the IPv6 address in {url:?}"))?;
        let port = match after {
            "" => default_port,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("expected ':PORT' after ']' in {url:?}"))?,
            )?,
        };
        (h, port)
    } else {
        match authority.split_once(':') {
            None => (authority, default_port),
            Some((h, p)) if !p.contains(':') => (h, parse_port(p)?),
            Some(_) => {
                return Err(format!(
                    "IPv6 addresses go in brackets, as in turn:[::1]:3478 (got {url:?})"
                ))
            }
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    Ok(Target {
        relay,
        transport,
        host: host.to_owned(),
        port,
    })
}

/// Long-term credentials the probe signs with.
#[derive(Clone)]
struct Creds {
    username: String,
    password: String,
    /// Minted from `--secret`.
    from_secret: bool,
}

/// The expiry (Unix seconds) a TURN REST user name carries: the first field
/// before ':' (coturn's `expiry:user`), else the last.
fn rest_expiry(username: &str) -> Option<u64> {
    let (first, _) = username.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(first) {
        return first.parse().ok();
    }
    let last = username.rsplit(':').next()?;
    if digits(last) {
        return last.parse().ok();
    }
    None
}

/// Everything the steps share.
struct Ctx {
    target: Target,
    /// The server's addresses, as resolved.
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    timeout_secs: u64,
    creds: Option<Creds>,
    tls: Option<Arc<ClientConfig>>,
}

impl Ctx {
    fn new(args: &ProbeArgs) -> Result<Ctx, String> {
        let target = parse_url(&args.url)?;
        let timeout_secs = args.timeout.max(1);
        let creds = match (&args.secret, &args.user, &args.password) {
            (Some(secret), user, _) => {
                let username = rest_username(
                    unix_now() + REST_LIFETIME_SECS,
                    DEFAULT_REST_API_SEPARATOR,
                    user.as_deref().unwrap_or("probe"),
                );
                let password = rest_password(secret, &username);
                Some(Creds {
                    username,
                    password,
                    from_secret: true,
                })
            }
            (None, Some(u), Some(p)) => Some(Creds {
                username: u.clone(),
                password: p.clone(),
                from_secret: false,
            }),
            (None, Some(_), None) => {
                return Err("--user needs --password (or use --secret to mint credentials)".into())
            }
            (None, None, Some(_)) => return Err("--password needs --user".into()),
            (None, None, None) => None,
        };
        let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} resolves to no address", target.host));
        }
        let tls = match target.transport {
            Transport::Tls => Some(tls_config(args.ca.as_deref(), args.insecure)?),
            _ => None,
        };
        Ok(Ctx {
            target,
            addrs,
            timeout: Duration::from_secs(timeout_secs),
            timeout_secs,
            creds,
            tls,
        })
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{} to {}",
            transport_name(self.target.transport),
            self.addrs[0]
        );
        if self.addrs.len() > 1 {
            let _ = write!(s, " (and {} more addresses)", self.addrs.len() - 1);
        }
        match &self.creds {
            Some(c) if c.from_secret => {
                let _ = write!(s, ", REST user {:?} minted from --secret", c.username);
            }
            Some(c) => {
                let _ = write!(s, ", user {:?}", c.username);
            }
            None => s.push_str(", no credentials"),
        }
        let _ = write!(s, ", timeout {} s per step", self.timeout_secs);
        s
    }

    fn host_port(&self) -> String {
        self.target.host_port()
    }

    fn no_answer(&self, refused: bool) -> String {
        match self.target.transport {
            Transport::Udp => {
                let mut s = format!(
                    "no answer from {} over UDP within {} s: is the server running, and is UDP \
                     blocked by a firewall?",
                    self.host_port(),
                    self.timeout_secs
                );
                if refused {
                    s.push_str(
                        " (the host answered \"port unreachable\": nothing listens on that UDP port)",
                    );
                }
                s
            }
            t => format!(
                "no answer from {} over {} within {} s: the connection is open but nothing \
                 answers STUN on it (is it a TURN server, and is it overloaded?)",
                self.host_port(),
                transport_name(t),
                self.timeout_secs
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// Verifies the server's certificate against the roots, and also accepts a
/// certificate that is byte for byte one given with `--ca` (a self-signed
/// server certificate, which WebPKI would refuse as "a CA used as an end
/// entity"), provided it names the host. With `--insecure` it accepts any
/// certificate. Handshake signatures are always checked.
#[derive(Debug)]
struct ProbeVerifier {
    /// `None` with `--insecure`.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ProbeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

/// The TLS client configuration: roots from `--ca` (else the system's, else
/// the bundled Mozilla roots), ALPN `stun.turn`. With `insecure` any server
/// certificate is accepted (handshake signatures are still checked): for
/// `turnd probe --insecure` and for `turnd-bench` against a throwaway
/// self-signed certificate on loopback.
///
/// # Errors
/// A message naming `--ca` when its file cannot be read or holds no usable
/// certificate.
pub fn tls_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    if let Some(path) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca {}: no PEM certificate in the file",
                path.display()
            ));
        }
        let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        if added == 0 {
            return Err(format!(
                "--ca {}: no usable certificate in the file",
                path.display()
            ));
        }
        pinned = certs;
    } else if !insecure {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    let webpki = if insecure {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("cannot set up TLS certificate checks: {e}"))?,
        )
    };
    let verifier = ProbeVerifier {
        webpki,
        pinned,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(Arc::new(config))
}

/// Plain words for a failed TLS handshake.
fn explain_tls(e: &io::Error, ctx: &Ctx) -> String {
    let host = &ctx.target.host;
    let Some(err) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => format!(
                "the server closed the connection during the TLS handshake: does {} speak TLS?",
                ctx.host_port()
            ),
            _ => format!("TLS handshake with {} failed: {e}", ctx.host_port()),
        };
    };
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "TLS certificate does not match {host}: connect with a name the certificate \
                     holds, or give the server a certificate for {host} ({c:?})"
                )
            }
            CertificateError::UnknownIssuer => {
                "the server's TLS certificate is not signed by a trusted certificate authority: \
                 pass the CA (or the server's self-signed certificate) with --ca FILE, or skip \
                 the check with --insecure"
                    .into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the server's TLS certificate has expired ({c:?})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!(
                    "the server's TLS certificate is not valid yet (are the clocks right?) ({c:?})"
                )
            }
            other if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "the server's TLS certificate is a self-signed CA certificate, which is not \
                 trusted as a server certificate: pass that certificate with --ca FILE to trust \
                 it, or skip the check with --insecure"
                    .into()
            }
            other => format!("the server's TLS certificate was refused: {other}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "the server aborted the TLS handshake (alert {alert:?}): it may not support TLS 1.2 or \
             1.3 with ALPN stun.turn, or may want a client certificate"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the server's answer is not TLS: does {} speak TLS on that port? ({err})",
            ctx.host_port()
        ),
        other => format!("TLS handshake with {} failed: {other}", ctx.host_port()),
    }
}

// ---------------------------------------------------------------------------
// Connections and framing
// ---------------------------------------------------------------------------

/// One client's socket or connection to the server.
enum Conn {
    /// A connected UDP socket; `refused` once an ICMP port unreachable came back.
    Udp {
        sock: UdpSocket,
        refused: bool,
    },
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Splits one message off the front of a stream buffer, framed as the server
/// frames them ([`stream_frame_len`]; RFC 8656, section 12.5).
fn take_frame(rx: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    match stream_frame_len(rx) {
        Ok(Some(total)) => Ok(Some(rx.drain(..total).collect())),
        Ok(None) => Ok(None),
        Err(FrameError::Garbage(first)) => Err(format!(
            "the server sent bytes that are neither STUN nor ChannelData (first byte {first:#04x}): \
             the stream is out of step"
        )),
        Err(FrameError::Unaligned(len)) => Err(format!(
            "the server sent a STUN message of length {len}, not a multiple of 4: \
             the stream is out of step"
        )),
    }
}

/// Authentication state of one client: what the 401 challenge said.
struct Auth {
    username: String,
    realm: String,
    nonce: Vec<u8>,
    key: Key,
}

/// What an Allocate success said.
struct Allocated {
    relayed: SocketAddr,
    mapped: Option<SocketAddr>,
    lifetime: Option<u32>,
}

/// One TURN client of the probe.
struct Client {
    conn: Conn,
    /// Bytes read from a stream and not yet framed.
    rx: Vec<u8>,
    /// Indications and ChannelData that came while waiting for a response.
    pending: VecDeque<Vec<u8>>,
    auth: Option<Auth>,
    buf: Vec<u8>,
}

fn connect_tcp(ctx: &Ctx) -> Result<TcpStream, String> {
    let mut first_err: Option<(SocketAddr, io::Error)> = None;
    for &addr in &ctx.addrs {
        match TcpStream::connect_timeout(&addr, ctx.timeout) {
            Ok(s) => {
                let setup = s
                    .set_nodelay(true)
                    .and_then(|()| s.set_write_timeout(Some(ctx.timeout)));
                if let Err(e) = setup {
                    return Err(format!("cannot set up the TCP connection: {e}"));
                }
                return Ok(s);
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some((addr, e));
                }
            }
        }
    }
    let what = if ctx.target.transport == Transport::Tls {
        "TCP (for TLS)"
    } else {
        "TCP"
    };
    let Some((addr, e)) = first_err else {
        return Err(format!("{} resolves to no address", ctx.target.host));
    };
    let resolved = if ctx.host_port() == addr.to_string() {
        String::new()
    } else {
        format!(" ({addr})")
    };
    Err(match e.kind() {
        io::ErrorKind::ConnectionRefused => format!(
            "connection refused: nothing listens on {}{resolved} over {what}",
            ctx.host_port()
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
            "no answer from {} over {what} within {} s: is the server running, and is TCP blocked \
             by a firewall?",
            ctx.host_port(),
            ctx.timeout_secs
        ),
        _ => format!("cannot connect to {} over {what}: {e}", ctx.host_port()),
    })
}

impl Client {
    /// Opens a socket (UDP) or connection (TCP, TLS with handshake) to the
    /// server. Returns the client and a few words on how it connected.
    fn connect(ctx: &Ctx) -> Result<(Client, String), String> {
        let start = Instant::now();
        let (conn, how) = match ctx.target.transport {
            Transport::Udp => {
                let server = ctx.addrs[0];
                let local: SocketAddr = match server {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let sock = UdpSocket::bind(local)
                    .and_then(|s| s.connect(server).map(|()| s))
                    .map_err(|e| format!("cannot open a UDP socket toward {server}: {e}"))?;
                (
                    Conn::Udp {
                        sock,
                        refused: false,
                    },
                    String::new(),
                )
            }
            Transport::Tcp => {
                let s = connect_tcp(ctx)?;
                let how = format!("TCP connected in {:.1} ms", millis(start.elapsed()));
                (Conn::Tcp(s), how)
            }
            Transport::Tls => {
                let mut tcp = connect_tcp(ctx)?;
                let config = ctx
                    .tls
                    .clone()
                    .ok_or_else(|| "internal error: no TLS configuration".to_string())?;
                let name = ServerName::try_from(ctx.target.host.clone())
                    .map_err(|_| format!("{:?} is not a valid TLS server name", ctx.target.host))?;
                let mut tls = ClientConnection::new(config, name)
                    .map_err(|e| format!("cannot start TLS: {e}"))?;
                let deadline = Instant::now() + ctx.timeout;
                while tls.is_handshaking() {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(format!(
                            "the TLS handshake with {} did not finish within {} s: does the \
                             server speak TLS on that port?",
                            ctx.host_port(),
                            ctx.timeout_secs
                        ));
                    }
                    tcp.set_read_timeout(Some(deadline - now))
                        .map_err(|e| format!("cannot set a read timeout: {e}"))?;
                    match tls.complete_io(&mut tcp) {
                        Ok((0, 0)) if tls.is_handshaking() => {
                            return Err(format!(
                                "the server closed the connection during the TLS handshake: \
                                 does {} speak TLS?",
                                ctx.host_port()
                            ))
                        }
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => {}
                        Err(e) => return Err(explain_tls(&e, ctx)),
                    }
                }
                let version = tls
                    .protocol_version()
                    .map(|v| format!("{v:?}").replace("TLSv1_", "TLS 1."))
                    .unwrap_or_else(|| "TLS".into());
                let alpn = match tls.alpn_protocol() {
                    Some(p) => format!("ALPN {}", String::from_utf8_lossy(p)),
                    None => "no ALPN".into(),
                };
                let how = format!(
                    "{version} ({alpn}) handshake done in {:.1} ms",
                    millis(start.elapsed())
                );
                (Conn::Tls(Box::new(StreamOwned::new(tls, tcp))), how)
            }
        };
        Ok((
            Client {
                conn,
                rx: Vec::new(),
                pending: VecDeque::new(),
                auth: None,
                buf: vec![0u8; 65536],
            },
            how,
        ))
    }

    fn is_stream(&self) -> bool {
        !matches!(self.conn, Conn::Udp { .. })
    }

    fn refused(&self) -> bool {
        matches!(self.conn, Conn::Udp { refused: true, .. })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let r = match &mut self.conn {
            Conn::Udp { sock, refused } => match sock.send(bytes) {
                Ok(_) => Ok(()),
                // An earlier ICMP port unreachable reported on this send.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    *refused = true;
                    Ok(())
                }
                Err(e) => return Err(format!("cannot send over UDP: {e}")),
            },
            Conn::Tcp(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        };
        r.map_err(|e| format!("the connection to the server broke while sending: {e}"))
    }

    /// The next message (STUN or ChannelData) from the server, or `None` once
    /// `deadline` passes.
    fn recv(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, String> {
        loop {
            if self.is_stream() {
                if let Some(frame) = take_frame(&mut self.rx)? {
                    return Ok(Some(frame));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            let set = |s: &TcpStream| {
                s.set_read_timeout(Some(left))
                    .map_err(|e| format!("cannot set a read timeout: {e}"))
            };
            let read = match &mut self.conn {
                Conn::Udp { sock, refused } => {
                    sock.set_read_timeout(Some(left))
                        .map_err(|e| format!("cannot set a read timeout: {e}"))?;
                    match sock.recv(&mut self.buf) {
                        Ok(n) => return Ok(Some(self.buf[..n].to_vec())),
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            *refused = true;
                            continue;
                        }
                        Err(e) if is_timeout(&e) => continue,
                        Err(e) => return Err(format!("cannot receive over UDP: {e}")),
                    }
                }
                Conn::Tcp(s) => {
                    set(s)?;
                    s.read(&mut self.buf)
                }
                Conn::Tls(s) => {
                    set(&s.sock)?;
                    s.read(&mut self.buf)
                }
            };
            match read {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.rx.extend_from_slice(&self.buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(format!("the connection to the server broke: {e}")),
            }
        }
    }

    fn keep_pending(&mut self, frame: Vec<u8>) {
        if self.pending.len() >= PENDING_CAP {
            self.pending.pop_front();
        }
        self.pending.push_back(frame);
    }

    /// Sends `req` (transaction `tid`) and waits up to `timeout` for its
    /// success or error response, retransmitting over UDP.
    fn transact(
        &mut self,
        ctx: &Ctx,
        req: &[u8],
        tid: TransactionId,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let start = Instant::now();
        let deadline = start + timeout;
        let udp = !self.is_stream();
        let mut rto = INITIAL_RTO.min(timeout / 4);
        let mut sends = 1;
        let mut next_send = start + rto;
        self.send(req)?;
        loop {
            let wait_until = if udp && sends < MAX_UDP_SENDS {
                next_send.min(deadline)
            } else {
                deadline
            };
            match self.recv(wait_until)? {
                Some(frame) => {
                    let Ok(msg) = Message::parse(&frame) else {
                        // ChannelData, or garbage: not our answer.
                        if ChannelData::parse(&frame).is_ok() {
                            self.keep_pending(frame);
                        }
                        continue;
                    };
                    match msg.class() {
                        Class::Success | Class::Error if msg.transaction_id() == tid => {
                            return Ok(frame)
                        }
                        Class::Indication => self.keep_pending(frame),
                        _ => {} // a late answer to an earlier transmission
                    }
                }
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ctx.no_answer(self.refused()));
                    }
                    if udp && now >= next_send && sends < MAX_UDP_SENDS {
                        self.send(req)?;
                        sends += 1;
                        rto *= 2;
                        next_send = now + rto;
                    }
                }
            }
        }
    }

    /// Waits until `deadline` for a message that `want` accepts (pending
    /// messages first); others are dropped.
    fn wait_for(
        &mut self,
        deadline: Instant,
        mut want: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, String> {
        if let Some(i) = self.pending.iter().position(|f| want(f)) {
            return Ok(self.pending.remove(i));
        }
        while let Some(frame) = self.recv(deadline)? {
            if want(&frame) {
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }

    /// Sends a request and returns the success response. Signs it with the
    /// long-term credentials once the server challenged (401 with REALM and
    /// NONCE); a 438 Stale Nonce is retried once with the new nonce.
    fn request(
        &mut self,
        ctx: &Ctx,
        method: Method,
        timeout: Duration,
        attrs: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), BufferFull>,
    ) -> Result<Vec<u8>, String> {
        let mut challenged = false;
        let mut stale_retried = false;
        loop {
            let tid: TransactionId = rand::random();
            let req = build_request(method, tid, self.auth.as_ref(), attrs)?;
            let resp = self.transact(ctx, &req, tid, timeout)?;
            let msg = Message::parse(&resp)
                .map_err(|e| format!("the server's answer is not valid STUN: {e}"))?;
            if msg.class() == Class::Success {
                if let Some(auth) = &self.auth {
                    if msg.has_integrity() && !msg.check_integrity(auth.key.as_bytes()) {
                        return Err(
                            "the server's answer carries a MESSAGE-INTEGRITY that does not match \
                             these credentials (a man in the middle, or a server bug)"
                                .into(),
                        );
                    }
                }
                return Ok(resp);
            }
            let (code, reason) = error_of(&msg);
            match code {
                401 | 438 if self.auth.is_none() && !challenged => {
                    challenged = true;
                    let realm = msg.get_str(AttributeType::REALM).ok_or_else(|| {
                        format!("the server answered {code} without a REALM (not a TURN server?)")
                    })?;
                    let nonce = msg.get(AttributeType::NONCE).ok_or_else(|| {
                        format!("the server answered {code} without a NONCE (not a TURN server?)")
                    })?;
                    let creds = ctx.creds.as_ref().ok_or_else(|| {
                        format!(
                            "the server asks for credentials (401, realm {realm:?}): pass --user \
                             and --password, or --secret"
                        )
                    })?;
                    self.auth = Some(Auth {
                        username: creds.username.clone(),
                        realm: realm.to_owned(),
                        nonce: nonce.to_vec(),
                        key: Key::derive(
                            PasswordAlgorithm::Md5,
                            &creds.username,
                            realm,
                            &creds.password,
                        ),
                    });
                }
                401 => return Err(explain_401(ctx, self.auth.as_ref())),
                438 if !stale_retried => {
                    stale_retried = true;
                    let nonce = msg.get(AttributeType::NONCE).ok_or_else(|| {
                        "the server answered 438 Stale Nonce without a new NONCE".to_string()
                    })?;
                    if let Some(auth) = &mut self.auth {
                        auth.nonce = nonce.to_vec();
                        if let Some(realm) = msg.get_str(AttributeType::REALM) {
                            if realm != auth.realm {
                                if let Some(c) = &ctx.creds {
                                    auth.key = Key::derive(
                                        PasswordAlgorithm::Md5,
                                        &c.username,
                                        realm,
                                        &c.password,
                                    );
                                }
                                auth.realm = realm.to_owned();
                            }
                        }
                    }
                }
                438 => {
                    return Err(
                        "the server answered 438 Stale Nonce twice in a row, even to its fresh \
                         nonce (is its clock jumping?)"
                            .into(),
                    )
                }
                _ => return Err(explain_error(method, code, reason, &msg)),
            }
        }
    }

    /// Step 1: Binding; the server-reflexive address.
    fn binding(&mut self, ctx: &Ctx) -> Result<SocketAddr, String> {
        let tid: TransactionId = rand::random();
        let req = build_request(Method::BINDING, tid, None, &|_| Ok(()))?;
        let resp = self.transact(ctx, &req, tid, ctx.timeout)?;
        let msg = Message::parse(&resp)
            .map_err(|e| format!("the server's answer is not valid STUN: {e}"))?;
        if msg.class() == Class::Error {
            let (code, reason) = error_of(&msg);
            return Err(explain_error(Method::BINDING, code, reason, &msg));
        }
        match msg.get_xor_address(AttributeType::XOR_MAPPED_ADDRESS) {
            Some(Ok(a)) => Ok(a),
            Some(Err(_)) => Err("the Binding answer carries a malformed XOR-MAPPED-ADDRESS".into()),
            None => match msg.get(AttributeType::MAPPED_ADDRESS).map(decode_address) {
                Some(Ok(a)) => Ok(a),
                _ => Err("the Binding answer carries no XOR-MAPPED-ADDRESS".into()),
            },
        }
    }

    /// Steps 2 and 3: Allocate a UDP relay.
    fn allocate(&mut self, ctx: &Ctx) -> Result<Allocated, String> {
        let resp = self.request(ctx, Method::ALLOCATE, ctx.timeout, &|w| {
            w.u32(
                AttributeType::REQUESTED_TRANSPORT,
                (PROTOCOL_UDP as u32) << 24,
            )
        })?;
        let msg = Message::parse(&resp)
            .map_err(|e| format!("the server's answer is not valid STUN: {e}"))?;
        let relayed = match msg.get_xor_address(AttributeType::XOR_RELAYED_ADDRESS) {
            Some(Ok(a)) => a,
            Some(Err(_)) => {
                return Err("the Allocate answer carries a malformed XOR-RELAYED-ADDRESS".into())
            }
            None => return Err("the Allocate answer carries no XOR-RELAYED-ADDRESS".into()),
        };
        if relayed.ip().is_unspecified() || relayed.port() == 0 {
            return Err(format!(
                "the server announced the unusable relayed address {relayed} (is its relay-ip or \
                 external-ip set?)"
            ));
        }
        Ok(Allocated {
            relayed,
            mapped: msg
                .get_xor_address(AttributeType::XOR_MAPPED_ADDRESS)
                .and_then(Result::ok),
            lifetime: msg.get_u32(AttributeType::LIFETIME),
        })
    }

    fn create_permission(&mut self, ctx: &Ctx, peer: SocketAddr) -> Result<(), String> {
        self.request(ctx, Method::CREATE_PERMISSION, ctx.timeout, &|w| {
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
        })
        .map(|_| ())
    }

    fn channel_bind(&mut self, ctx: &Ctx, channel: u16, peer: SocketAddr) -> Result<(), String> {
        self.request(ctx, Method::CHANNEL_BIND, ctx.timeout, &|w| {
            w.u32(AttributeType::CHANNEL_NUMBER, (channel as u32) << 16)?;
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
        })
        .map(|_| ())
    }

    /// Refresh with LIFETIME 0: deletes the allocation.
    fn release(&mut self, ctx: &Ctx, timeout: Duration) -> Result<(), String> {
        self.request(ctx, Method::REFRESH, timeout, &|w| {
            w.u32(AttributeType::LIFETIME, 0)
        })
        .map(|_| ())
    }

    fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> Result<(), String> {
        let padded = if self.is_stream() {
            (data.len() + 3) & !3
        } else {
            data.len()
        };
        let mut frame = vec![0u8; CHANNEL_DATA_HEADER_LEN + padded];
        write_channel_data_header(&mut frame, channel, data.len());
        frame[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + data.len()].copy_from_slice(data);
        self.send(&frame)
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), String> {
        let tid: TransactionId = rand::random();
        let mut buf = vec![0u8; HEADER_LEN + 64 + data.len()];
        let n = (|| -> Result<usize, BufferFull> {
            let mut w = MessageWriter::new(
                &mut buf,
                MessageType::new(Method::SEND, Class::Indication),
                tid,
            )?;
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)?;
            w.attribute(AttributeType::DATA, data)?;
            w.fingerprint()?;
            Ok(w.finish())
        })()
        .map_err(|_| "the Send indication does not fit in a STUN message".to_string())?;
        self.send(&buf[..n])
    }
}

/// Encodes a request, signed with `auth` when given, with FINGERPRINT.
fn build_request(
    method: Method,
    tid: TransactionId,
    auth: Option<&Auth>,
    attrs: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), BufferFull>,
) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 4096];
    let n = (|| -> Result<usize, BufferFull> {
        let mut w = MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), tid)?;
        attrs(&mut w)?;
        if let Some(a) = auth {
            w.attribute(AttributeType::USERNAME, a.username.as_bytes())?;
            w.attribute(AttributeType::REALM, a.realm.as_bytes())?;
            w.attribute(AttributeType::NONCE, &a.nonce)?;
            w.message_integrity(a.key.as_bytes())?;
        }
        w.fingerprint()?;
        Ok(w.finish())
    })()
    .map_err(|_| {
        "the request does not fit in a STUN message (user name, realm or nonce too long)"
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// ERROR-CODE of an error response: the code and the reason phrase.
fn error_of<'a>(msg: &Message<'a>) -> (u16, &'a str) {
    match msg.get(AttributeType::ERROR_CODE).map(decode_error_code) {
        Some(Ok((code, reason))) => (code.0, reason),
        _ => (0, ""),
    }
}

fn method_name(m: Method) -> String {
    match m.name() {
        Some(n) => n.to_owned(),
        None => format!("{m:?}"),
    }
}

/// Plain words for an error response other than the 401/438 handled by
/// [`Client::request`].
fn explain_error(method: Method, code: u16, reason: &str, msg: &Message<'_>) -> String {
    let peer_method = method == Method::CREATE_PERMISSION || method == Method::CHANNEL_BIND;
    let mut s = match code {
        0 => format!(
            "the server answered the {} request with an error but no (valid) ERROR-CODE",
            method_name(method)
        ),
        300 => {
            let alt = msg
                .get(AttributeType::ALTERNATE_SERVER)
                .and_then(|v| decode_address(v).ok());
            match alt {
                Some(a) => {
                    format!("the server redirects to {a} (300 Try Alternate): probe that one")
                }
                None => "the server redirects elsewhere (300 Try Alternate)".into(),
            }
        }
        400 => format!(
            "the server calls the {} request malformed (400 Bad Request)",
            method_name(method)
        ),
        403 if peer_method => "the server refuses to relay to this peer address (peer policy; for \
                               a server on loopback, it must allow loopback peers) (403 Forbidden)"
            .into(),
        403 => format!(
            "the server forbids the {} request (403 Forbidden)",
            method_name(method)
        ),
        420 => {
            let unknown: Vec<String> = msg
                .get(AttributeType::UNKNOWN_ATTRIBUTES)
                .unwrap_or(&[])
                .chunks_exact(2)
                .map(|c| format!("{:#06x}", u16::from_be_bytes([c[0], c[1]])))
                .collect();
            format!(
                "the server does not understand an attribute the probe requires (420 Unknown \
                 Attribute: {})",
                unknown.join(", ")
            )
        }
        437 if method == Method::ALLOCATE => "allocation mismatch (437): the server already has \
             an allocation for this client's address and port (retry from another port, or wait \
             for it to expire)"
            .into(),
        437 => "allocation mismatch (437): the server has no allocation for this client any more \
                (it expired or was deleted, or a NAT changed the client's address)"
            .into(),
        440 => "the server does not support the requested address family (440)".into(),
        441 => "wrong credentials (441): this request's user name is not the one that created \
                the allocation"
            .into(),
        442 => "the server does not relay UDP (442 Unsupported Transport Protocol)".into(),
        443 => "the peer's address family differs from the relayed address's (443 Peer Address \
                Family Mismatch)"
            .into(),
        486 => "allocation quota reached (486): this user, or the whole server, has too many \
                allocations (close some, or raise user-quota or total-quota)"
            .into(),
        500 => "the server had an internal error (500 Server Error)".into(),
        508 if method == Method::ALLOCATE => {
            "the server has no relay ports left (508 Insufficient Capacity)".into()
        }
        508 => "the server is out of capacity (508 Insufficient Capacity): too many permissions \
                or channels on this allocation"
            .into(),
        c => format!(
            "the server answered the {} request with error {c}",
            method_name(method)
        ),
    };
    if !reason.is_empty() {
        let _ = write!(s, " (server says: {reason:?})");
    }
    s
}

/// Plain words for a 401 to a signed request.
fn explain_401(ctx: &Ctx, auth: Option<&Auth>) -> String {
    let Some(auth) = auth else {
        return "the server answered 401 Unauthenticated".into();
    };
    if let Some(expiry) = rest_expiry(&auth.username) {
        let now = unix_now();
        if expiry < now {
            return format!(
                "wrong user name or password: the REST credentials have expired: user name {:?} \
                 says they expired at Unix time {expiry}, {} s ago (mint new ones, or check the \
                 clocks)",
                auth.username,
                now - expiry
            );
        }
    }
    match &ctx.creds {
        Some(c) if c.from_secret => format!(
            "wrong user name or password (or realm): the server refused REST credentials minted \
             from --secret in realm {:?}: is the shared secret right, and does the server use \
             REST credentials (use-auth-secret)?",
            auth.realm
        ),
        _ => format!(
            "wrong user name or password (or realm): the server answered 401 to the request \
             signed by user {:?} in realm {:?}",
            auth.username, auth.realm
        ),
    }
}

// ---------------------------------------------------------------------------
// The steps
// ---------------------------------------------------------------------------

/// Runs one step: prints its number, name, result, timing and details.
fn step<T>(
    out: &mut dyn Write,
    n: u8,
    name: &str,
    f: impl FnOnce() -> Result<(T, String), String>,
) -> Option<T> {
    let start = Instant::now();
    let r = f();
    let ms = millis(start.elapsed());
    match r {
        Ok((v, detail)) => {
            say(out, format_args!("{n}. {name}: ok in {ms:.1} ms: {detail}"));
            Some(v)
        }
        Err(why) => {
            say(
                out,
                format_args!("{n}. {name}: FAILED after {ms:.1} ms: {why}"),
            );
            None
        }
    }
}

/// Deletes allocations after a failed step, quietly and quickly.
fn cleanup(out: &mut dyn Write, ctx: &Ctx, clients: &mut [&mut Client]) {
    let mut released = 0;
    for c in clients.iter_mut() {
        if c.release(ctx, CLEANUP_TIMEOUT.min(ctx.timeout)).is_ok() {
            released += 1;
        }
    }
    if released > 0 {
        say(
            out,
            format_args!("   (deleted the {released} allocation(s) the probe had made)"),
        );
    }
}

fn describe_allocation(a: &Allocated, c: &Client) -> String {
    let mut s = format!("relayed address {}", a.relayed);
    match a.lifetime {
        Some(l) => {
            let _ = write!(s, ", lifetime {l} s");
        }
        None => s.push_str(", no LIFETIME given"),
    }
    if let Some(m) = a.mapped {
        let _ = write!(s, ", reflexive address {m}");
    }
    match &c.auth {
        Some(auth) => {
            let _ = write!(s, " (realm {:?})", auth.realm);
        }
        None => s.push_str(" (the server asked for no credentials)"),
    }
    s
}

fn probe(ctx: &Ctx, out: &mut dyn Write) -> bool {
    // 1. Binding.
    let Some(mut c1) = step(out, 1, "STUN Binding", || {
        let (mut c, how) = Client::connect(ctx)?;
        let reflexive = c.binding(ctx)?;
        let mut detail = format!("reflexive address {reflexive}");
        if !how.is_empty() {
            let _ = write!(detail, " ({how})");
        }
        Ok((c, detail))
    }) else {
        return false;
    };
    if !ctx.target.relay {
        return true;
    }

    // 2. Allocate.
    let Some(relay1) = step(out, 2, "Allocate", || {
        let a = c1.allocate(ctx)?;
        let detail = describe_allocation(&a, &c1);
        Ok((a.relayed, detail))
    }) else {
        return false;
    };

    // 3. A second allocation from a second socket or connection.
    let Some((mut c2, relay2)) = step(out, 3, "Second allocation", || {
        let (mut c, _) = Client::connect(ctx)?;
        let a = c.allocate(ctx)?;
        let detail = describe_allocation(&a, &c);
        Ok(((c, a.relayed), detail))
    }) else {
        cleanup(out, ctx, &mut [&mut c1]);
        return false;
    };

    // 4. Permissions both ways and a channel on client 1.
    let permissions = step(out, 4, "CreatePermission and ChannelBind", || {
        c1.create_permission(ctx, relay2)
            .map_err(|e| format!("client 1, CreatePermission for {relay2}: {e}"))?;
        c2.create_permission(ctx, relay1)
            .map_err(|e| format!("client 2, CreatePermission for {relay1}: {e}"))?;
        c1.channel_bind(ctx, CHANNEL, relay2)
            .map_err(|e| format!("client 1, ChannelBind {CHANNEL:#06x} to {relay2}: {e}"))?;
        Ok((
            (),
            format!(
                "client 1 may send to {relay2}, client 2 to {relay1}; channel {CHANNEL:#06x} on \
                 client 1 leads to {relay2}"
            ),
        ))
    });
    if permissions.is_none() {
        cleanup(out, ctx, &mut [&mut c1, &mut c2]);
        return false;
    }

    // 5. The relayed round trip.
    let round_trip = step(out, 5, "Relayed round trip", || {
        round_trip(ctx, &mut c1, &mut c2, relay1, relay2)
    });
    if round_trip.is_none() {
        cleanup(out, ctx, &mut [&mut c1, &mut c2]);
        return false;
    }

    // 6. Refresh with LIFETIME 0.
    step(out, 6, "Refresh with LIFETIME 0", || {
        let r1 = c1.release(ctx, ctx.timeout);
        let r2 = c2.release(ctx, ctx.timeout);
        match (r1, r2) {
            (Ok(()), Ok(())) => Ok(((), "both allocations deleted".to_string())),
            (Err(e), _) => Err(format!("client 1: {e}")),
            (_, Err(e)) => Err(format!("client 2: {e}")),
        }
    })
    .is_some()
}

/// True when `frame` is a Data indication from `peer` carrying `data`.
fn is_data_indication(frame: &[u8], peer: SocketAddr, data: &[u8]) -> bool {
    let Ok(msg) = Message::parse(frame) else {
        return false;
    };
    msg.class() == Class::Indication
        && msg.method() == Method::DATA
        && msg.get(AttributeType::DATA) == Some(data)
        && matches!(msg.get_xor_address(AttributeType::XOR_PEER_ADDRESS), Some(Ok(a)) if a == peer)
}

/// The source of a Data indication carrying `data`, whatever its peer.
fn data_indication_source(frame: &[u8], data: &[u8]) -> Option<SocketAddr> {
    let msg = Message::parse(frame).ok()?;
    if msg.class() != Class::Indication
        || msg.method() != Method::DATA
        || msg.get(AttributeType::DATA) != Some(data)
    {
        return None;
    }
    msg.get_xor_address(AttributeType::XOR_PEER_ADDRESS)?.ok()
}

/// Step 5: ChannelData from client 1 to client 2 (as a Data indication), a
/// Send indication back (as ChannelData or a Data indication). Over UDP the
/// exchange is tried up to three times within the timeout.
fn round_trip(
    ctx: &Ctx,
    c1: &mut Client,
    c2: &mut Client,
    relay1: SocketAddr,
    relay2: SocketAddr,
) -> Result<(Duration, String), String> {
    let tries: u32 = if c1.is_stream() { 1 } else { 3 };
    let per_try = ctx.timeout / tries;
    let tag: u32 = rand::random();
    let mut wrong_source: Option<SocketAddr> = None;
    let mut reached_c2 = false;
    for attempt in 0..tries {
        let ping = format!("turnd probe ping {tag:08x} {attempt}");
        let pong = format!("turnd probe pong {tag:08x} {attempt}");
        let start = Instant::now();
        let deadline = start + per_try;
        c1.send_channel_data(CHANNEL, ping.as_bytes())?;
        let got = c2.wait_for(deadline, |f| {
            if is_data_indication(f, relay1, ping.as_bytes()) {
                return true;
            }
            if let Some(src) = data_indication_source(f, ping.as_bytes()) {
                wrong_source = Some(src);
            }
            false
        })?;
        if got.is_none() {
            continue;
        }
        reached_c2 = true;
        c2.send_indication(relay1, pong.as_bytes())?;
        let back = c1.wait_for(deadline, |f| {
            if let Ok(cd) = ChannelData::parse(f) {
                return cd.channel() == CHANNEL && cd.data() == pong.as_bytes();
            }
            is_data_indication(f, relay2, pong.as_bytes())
        })?;
        let Some(back) = back else {
            continue;
        };
        let rtt = start.elapsed();
        let how = if ChannelData::parse(&back).is_ok() {
            format!("ChannelData on {CHANNEL:#06x}")
        } else {
            format!("a Data indication from {relay2}")
        };
        return Ok((
            rtt,
            format!(
                "RTT {:.2} ms: client 1's ChannelData ({CHANNEL:#06x}) reached client 2 as a Data \
                 indication from {relay1}; client 2's Send indication came back to client 1 as \
                 {how}",
                millis(rtt)
            ),
        ));
    }
    if let Some(src) = wrong_source {
        return Err(format!(
            "client 2 got client 1's data from {src}, not from client 1's relayed address \
             {relay1}: the server relays from an address other than the one it announced"
        ));
    }
    if !reached_c2 {
        return Err(format!(
            "client 2 received nothing within {} s after client 1 sent ChannelData on channel \
             {CHANNEL:#06x} toward {relay2}: the server did not relay it (can its relay \
             addresses reach each other? does its peer policy allow them?)",
            ctx.timeout_secs
        ));
    }
    Err(format!(
        "client 1 received nothing within {} s after client 2 sent a Send indication toward \
         {relay1}: the server relayed one way but not back",
        ctx.timeout_secs
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        parse_url(url).unwrap()
    }

    #[test]
    fn parses_turn_stun_and_turns_urls() {
        assert_eq!(
            t("turn:127.0.0.1:3478?transport=udp"),
            Target {
                relay: true,
                transport: Transport::Udp,
                host: "127.0.0.1".into(),
                port: 3478
            }
        );
        let tcp = t("turn:example.org?transport=tcp");
        assert_eq!((tcp.transport, tcp.port), (Transport::Tcp, 3478));
        let tls = t("turns:example.org");
        assert_eq!((tls.transport, tls.port), (Transport::Tls, 5349));
        let v6 = t("turn:[::1]:3479");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 3479));
        assert_eq!(v6.host_port(), "[::1]:3479");
        let stun = t("stun:stun.example.org:19302");
        assert!(!stun.relay);
        assert_eq!(stun.transport, Transport::Udp);
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "http://example.org",
            "turn:",
            "turn::3478",
            "turn:host:0",
            "turn:host:99999",
            "turn:::1:3478",
            "turn:[::1",
            "turn:host?transport=sctp",
            "turns:host?transport=udp",
            "turn:host?foo=bar",
            "example.org",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn frames_stun_and_padded_channel_data_from_a_stream() {
        let mut rx = Vec::new();
        // ChannelData with 5 bytes of data: 4 + 8 bytes on a stream.
        rx.extend_from_slice(&[
            0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
        ]);
        // A STUN header with 4 bytes of attributes.
        let mut stun = vec![0x01, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[0u8; 12]);
        stun.extend_from_slice(&[0, 0, 0, 0]);
        rx.extend_from_slice(&stun[..10]);
        let cd = take_frame(&mut rx).unwrap().unwrap();
        assert_eq!(cd.len(), 12);
        assert_eq!(take_frame(&mut rx).unwrap(), None);
        rx.extend_from_slice(&stun[10..]);
        assert_eq!(take_frame(&mut rx).unwrap().unwrap(), stun);
        assert!(rx.is_empty());
        rx.extend_from_slice(&[0xff, 0, 0, 0]);
        assert!(take_frame(&mut rx).is_err());
    }

    #[test]
    fn reads_rest_expiry() {
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice:1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry("alice:bob"), None);
    }

    #[test]
    fn explains_peer_policy_and_capacity_errors() {
        let mut buf = [0u8; 64];
        let w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::CREATE_PERMISSION, Class::Error),
            [0; 12],
        )
        .unwrap();
        let n = w.finish();
        let msg = Message::parse(&buf[..n]).unwrap();
        assert!(explain_error(Method::CREATE_PERMISSION, 403, "", &msg).contains("peer policy"));
        assert!(explain_error(Method::ALLOCATE, 508, "", &msg).contains("no relay ports left"));
        assert!(explain_error(Method::REFRESH, 437, "", &msg).contains("no allocation"));
    }

    #[test]
    fn missing_password_is_reported_before_any_traffic() {
        let args = ProbeArgs {
            url: "turn:127.0.0.1:9?transport=udp".into(),
            user: Some("alice".into()),
            password: None,
            secret: None,
            timeout: 1,
            ca: None,
            insecure: false,
        };
        let mut out = Vec::new();
        assert!(!run_to(&args, &mut out));
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("--user needs --password"));
    }
}
