//! Configuration: a TOML file and command-line flags; flags override the file.
//!
//! Option names are coturn's where coturn has one (`listening-port`,
//! `relay-ip`, `min-port`, `allow-loopback-peers`...), both as TOML keys and as
//! long flags. An unknown key, a malformed value or an inconsistent setting is
//! a [`ConfigError`] naming the file, the option and why.
//!
//! Each option is a field of [`Cli`] (the flag), of the file's table (the
//! TOML key, listed in [`TOML_KEYS`]) and of [`Config`] (the resolved value);
//! its default is in one place, [`Config::default`], which takes the core's
//! from [`ServerConfig::default`]. The tests check that the three lists and
//! the defaults stated in `--help` agree.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Credentials;
pub use crate::cli::{Cli, Command};
use crate::turn::{ClientPolicy, IpRange, PeerPolicy, ServerConfig};
use crate::untrusted::{opaque_string, LogSafe};

/// Default STUN/TURN port over UDP and TCP (and of `turn:` and `stun:`
/// URLs). See RFC 8489, section 9.
pub const DEFAULT_LISTENING_PORT: u16 = 3478;
/// Default STUN/TURN port over TLS (and of `turns:` URLs). See RFC 8489,
/// section 9.
pub const DEFAULT_TLS_LISTENING_PORT: u16 = 5349;
/// Default `max-connections`: concurrent TCP/TLS client connections in all.
/// Each holds a file descriptor and, until it authenticates, a few KiB
/// (TLS state and a small read buffer); ten thousand stay far below the
/// systemd unit's `LimitNOFILE` and cost tens of MiB at most.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default `socket-buffer`: 4 MiB per UDP listener socket and direction.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;
/// Default `rest-api-separator`, between expiry time and user id in TURN
/// REST usernames (coturn's).
pub const DEFAULT_REST_API_SEPARATOR: char = ':';
/// Default Prometheus listener when `prometheus` is on: coturn's port 9641
/// on loopback (`prometheus-address` opens it to the network; `/metrics`
/// has no authentication).
pub const DEFAULT_PROMETHEUS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9641));

/// The shortest `admin-token` accepted, in characters.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// The longest value any duration option takes: 7 days (604800 s). Larger
/// values are configuration errors, so deadlines computed from them cannot
/// overflow.
pub const MAX_DURATION_SECS: u64 = 86_400 * 7;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Ports {
    One(u16),
    Many(Vec<u16>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The TOML file as written: every key optional, unknown keys rejected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listening_ip: Option<OneOrMany>,
    listening_port: Option<u16>,
    relay_ip: Option<OneOrMany>,
    min_port: Option<u16>,
    max_port: Option<u16>,
    realm: Option<String>,
    user: Option<OneOrMany>,
    allow_loopback_peers: Option<bool>,
    allowed_peer_ip: Option<OneOrMany>,
    denied_peer_ip: Option<OneOrMany>,
    allowed_client_ip: Option<OneOrMany>,
    denied_client_ip: Option<OneOrMany>,
    fingerprint: Option<bool>,
    verbose: Option<bool>,
    lt_cred_mech: Option<bool>,
    user_quota: Option<u32>,
    total_quota: Option<u32>,
    max_allocations: Option<u32>,
    max_allocate_lifetime: Option<u64>,
    permission_lifetime: Option<u64>,
    channel_lifetime: Option<u64>,
    stale_nonce: Option<u64>,
    use_auth_secret: Option<bool>,
    static_auth_secret: Option<OneOrMany>,
    rest_api_separator: Option<String>,
    userdb: Option<PathBuf>,
    redis_userdb: Option<String>,
    redis_statsdb: Option<String>,
    max_bps: Option<u64>,
    bps_capacity: Option<u64>,
    stun_backward_compatibility: Option<bool>,
    reason_phrases: Option<bool>,
    unauth_rate: Option<u64>,
    unauth_burst: Option<u64>,
    auth_failures_per_minute: Option<u64>,
    ipv6_source_prefix: Option<u8>,
    peer_policy: Option<String>,
    tls_listening_port: Option<Ports>,
    cert: Option<PathBuf>,
    pkey: Option<PathBuf>,
    external_ip: Option<OneOrMany>,
    alternate_server: Option<OneOrMany>,
    tls_alternate_server: Option<OneOrMany>,
    no_udp: Option<bool>,
    no_tcp: Option<bool>,
    no_tls: Option<bool>,
    no_dtls: Option<bool>,
    stream_idle_timeout: Option<u64>,
    tls_handshake_timeout: Option<u64>,
    max_connections_per_ip: Option<u32>,
    stream_auth_timeout: Option<u64>,
    max_connections: Option<u32>,
    proxy_protocol: Option<bool>,
    proxy_protocol_trusted: Option<OneOrMany>,
    server_name: Option<String>,
    no_multicast_peers: Option<bool>,
    no_cli: Option<bool>,
    log_file: Option<PathBuf>,
    log_format: Option<String>,
    syslog: Option<bool>,
    pidfile: Option<PathBuf>,
    prometheus: Option<bool>,
    prometheus_port: Option<u16>,
    prometheus_address: Option<IpAddr>,
    prometheus_username_labels: Option<bool>,
    relay_threads: Option<u32>,
    socket_buffer: Option<usize>,
    no_stun: Option<bool>,
    stun_only: Option<bool>,
    drain_timeout: Option<u64>,
    admin_token: Option<String>,
    admin_listen: Option<SocketAddr>,
    xdp: Option<String>,
    xdp_interfaces: Option<OneOrMany>,
}

/// The TOML keys turnd reads (every one is documented in turnserver.toml.example):
/// the fields of the file's table, in their order (a test checks that they match).
pub const TOML_KEYS: &[&str] = &[
    "listening-ip",
    "listening-port",
    "relay-ip",
    "min-port",
    "max-port",
    "realm",
    "user",
    "allow-loopback-peers",
    "allowed-peer-ip",
    "denied-peer-ip",
    "allowed-client-ip",
    "denied-client-ip",
    "fingerprint",
    "verbose",
    "lt-cred-mech",
    "user-quota",
    "total-quota",
    "max-allocations",
    "max-allocate-lifetime",
    "permission-lifetime",
    "channel-lifetime",
    "stale-nonce",
    "use-auth-secret",
    "static-auth-secret",
    "rest-api-separator",
    "userdb",
    "redis-userdb",
    "redis-statsdb",
    "max-bps",
    "bps-capacity",
    "stun-backward-compatibility",
    "reason-phrases",
    "unauth-rate",
    "unauth-burst",
    "auth-failures-per-minute",
    "ipv6-source-prefix",
    "peer-policy",
    "tls-listening-port",
    "cert",
    "pkey",
    "external-ip",
    "alternate-server",
    "tls-alternate-server",
    "no-udp",
    "no-tcp",
    "no-tls",
    "no-dtls",
    "stream-idle-timeout",
    "tls-handshake-timeout",
    "max-connections-per-ip",
    "stream-auth-timeout",
    "max-connections",
    "proxy-protocol",
    "proxy-protocol-trusted",
    "server-name",
    "no-multicast-peers",
    "no-cli",
    "log-file",
    "log-format",
    "syslog",
    "pidfile",
    "prometheus",
    "prometheus-port",
    "prometheus-address",
    "prometheus-username-labels",
    "relay-threads",
    "socket-buffer",
    "no-stun",
    "stun-only",
    "drain-timeout",
    "admin-token",
    "admin-listen",
    "xdp",
    "xdp-interfaces",
];

/// One `external-ip` entry: the public address, and the relay address it
/// stands for (all relay addresses of its family when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalIp {
    /// Advertised to clients.
    pub public: IpAddr,
    /// The local relay address behind the NAT.
    pub private: Option<IpAddr>,
}

/// A configuration that could not be used: where, which option, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// The file path, or "command line".
    pub origin: String,
    /// What is wrong, naming the option.
    pub message: String,
}

/// A static user: name and password or key (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticUser {
    /// Username.
    pub name: String,
    /// Plaintext password, or the MD5 key in coturn's `0x<hex>` form.
    pub password: String,
}

impl StaticUser {
    /// The MD5 key when the password is given as `0x<32 hex digits>`.
    pub fn hashed_key(&self) -> Option<[u8; 16]> {
        crate::auth::parse_hex_key(&self.password)
    }
}

impl std::fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticUser({:?}, <password>)", self.name)
    }
}

/// `xdp`: whether and how the XDP fast path attaches (issue 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// No fast path: every packet is relayed in user space (the default).
    #[default]
    Off,
    /// Generic (SKB) mode: works on every interface, after the kernel has
    /// built its socket buffer.
    Generic,
    /// Native (driver) mode: the driver runs the program before any socket
    /// buffer exists; needs a driver with XDP support.
    Native,
}

impl XdpMode {
    /// The option's value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Off => "off",
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
        }
    }
}

/// The resolved configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP listening addresses.
    pub listening_ips: Vec<IpAddr>,
    /// UDP listening port (0: ephemeral).
    pub listening_port: u16,
    /// Relay addresses; empty means "derive at start" (see [`Cli::relay_ip`]).
    pub relay_ips: Vec<IpAddr>,
    /// Lowest relay port.
    pub min_port: u16,
    /// Highest relay port.
    pub max_port: u16,
    /// Realm.
    pub realm: String,
    /// Static users.
    pub users: Vec<StaticUser>,
    /// Peer policy.
    pub policy: PeerPolicy,
    /// FINGERPRINT on every response.
    pub fingerprint: bool,
    /// Debug logging.
    pub verbose: bool,
    /// Allocations per user (0 unlimited).
    pub user_quota: u32,
    /// Allocations in all (0 unlimited).
    pub total_quota: u32,
    /// `max-allocations`: allocations on this node above which Allocate is
    /// shed (300 Try Alternate, else 508); 0 is no limit.
    pub max_allocations: u32,
    /// Longest allocation lifetime.
    pub max_allocate_lifetime: Duration,
    /// Permission lifetime.
    pub permission_lifetime: Duration,
    /// Channel lifetime.
    pub channel_lifetime: Duration,
    /// Nonce lifetime.
    pub stale_nonce: Duration,
    /// TURN REST API on.
    pub use_auth_secret: bool,
    /// REST shared secrets.
    pub static_auth_secrets: Vec<Secret>,
    /// REST username separator.
    pub rest_api_separator: char,
    /// SQLite user database.
    pub userdb: Option<PathBuf>,
    /// `redis-userdb`: users, REST secrets and revocations in Redis
    /// (coturn's schema), shared by a fleet.
    pub redis_userdb: Option<crate::fleet::RedisTarget>,
    /// `redis-statsdb`: where the fleet's allocation registry and quota
    /// counts live (coturn's statsdb keys); `redis-userdb`'s server when
    /// unset.
    pub redis_statsdb: Option<crate::fleet::RedisTarget>,
    /// `server-name`: this node's name in the fleet registry (letters,
    /// digits, `.`, `-`, `_`; default the host name).
    pub server_name: String,
    /// Bytes/s per allocation and direction (0 unlimited).
    pub max_bps: u64,
    /// Bytes/s for the server (0 unlimited).
    pub bps_capacity: u64,
    /// MAPPED-ADDRESS in Binding responses.
    pub stun_backward_compatibility: bool,
    /// Reason phrases in ERROR-CODE.
    pub reason_phrases: bool,
    /// Unauthenticated answers per second per source (0 off).
    pub unauth_rate: u64,
    /// Burst of `unauth_rate`.
    pub unauth_burst: u64,
    /// Failed authentications per minute per source (0 off).
    pub auth_failures_per_minute: u64,
    /// Prefix length (bits, 0..=128) by which IPv6 sources share one budget
    /// of the per-source limits (`ipv6-source-prefix`, default 64).
    pub ipv6_source_prefix: u8,
    /// TLS ports.
    pub tls_listening_ports: Vec<u16>,
    /// TLS certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub pkey: Option<PathBuf>,
    /// Public addresses for 1:1 NAT.
    pub external_ips: Vec<ExternalIp>,
    /// `alternate-server`: other nodes for UDP and TCP clients, offered in
    /// 300 Try Alternate while draining (default port 3478).
    pub alternate_servers: Vec<SocketAddr>,
    /// `tls-alternate-server`: the same for TLS clients (default port 5349).
    pub tls_alternate_servers: Vec<SocketAddr>,
    /// `allowed-client-ip` and `denied-client-ip`.
    pub client_policy: ClientPolicy,
    /// UDP listener on.
    pub udp: bool,
    /// TCP listener on.
    pub tcp: bool,
    /// TLS listeners on (needs cert and pkey).
    pub tls: bool,
    /// Idle timeout of connections without an allocation.
    pub stream_idle_timeout: Duration,
    /// TLS handshake timeout.
    pub tls_handshake_timeout: Duration,
    /// Concurrent connections per source IP.
    pub max_connections_per_ip: u32,
    /// A TCP/TLS connection must get an allocation (or, as an RFC 6062 data
    /// connection, a successful ConnectionBind) within this long of being
    /// accepted, handshake included, or it is closed.
    pub stream_auth_timeout: Duration,
    /// Concurrent TCP/TLS client connections in all; beyond, new ones are
    /// closed at accept.
    pub max_connections: u32,
    /// `proxy-protocol`: every TCP/TLS connection starts with a PROXY
    /// protocol header (v1 or v2) whose client address is the client's.
    pub proxy_protocol: bool,
    /// `proxy-protocol-trusted`: the sources allowed to send PROXY headers
    /// (never empty while `proxy_protocol` is on).
    pub proxy_protocol_trusted: Vec<IpRange>,
    /// Relay existing allocations this long after SIGTERM.
    pub drain_timeout: Duration,
    /// `xdp`: the kernel fast path for ChannelData over UDP (issue 15;
    /// `src/server/xdp.rs`); [`XdpMode::Off`] by default.
    pub xdp: XdpMode,
    /// `xdp-interfaces`: the interfaces the fast path attaches to; empty
    /// means those that carry a listening or relay address.
    pub xdp_interfaces: Vec<String>,
    /// Relay workers (`relay-threads`); 0 means one per CPU the process may use.
    pub relay_threads: usize,
    /// SO_RCVBUF and SO_SNDBUF of UDP listener sockets (bytes).
    pub socket_buffer: usize,
    /// JSON logs.
    pub log_json: bool,
    /// Log file (reopened on SIGHUP).
    pub log_file: Option<PathBuf>,
    /// PID file.
    pub pidfile: Option<PathBuf>,
    /// Prometheus listener, when on.
    pub prometheus: Option<SocketAddr>,
    /// Per-user byte series in the metrics.
    pub prometheus_username_labels: bool,
    /// Admin API token (admin on when set).
    pub admin_token: Option<Secret>,
    /// Admin API address.
    pub admin_listen: SocketAddr,
    /// No STUN Binding answers.
    pub no_stun: bool,
    /// STUN only, no TURN.
    pub stun_only: bool,
    /// Warnings to log once logging is up (coturn options turnd ignores...).
    pub warnings: Vec<String>,
}

/// A shared secret; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// IANA special-purpose ranges denied by `peer-policy = "recommended"` in
/// addition to the defaults (RFC 6890 registries).
pub const RECOMMENDED_DENIED: &[&str] = &[
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.31.196.0/24",
    "192.52.193.0/24",
    "192.88.99.0/24",
    "192.175.48.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "2620:4f:8000::/48",
    "3fff::/20",
    "5f00::/16",
];

fn err(origin: &str, message: String) -> ConfigError {
    ConfigError {
        origin: origin.to_owned(),
        message,
    }
}

fn parse_ips(origin: &str, option: &str, v: Vec<String>) -> Result<Vec<IpAddr>, ConfigError> {
    v.iter()
        .map(|s| {
            s.trim().parse::<IpAddr>().map_err(|_| {
                err(
                    origin,
                    format!("option `{option}`: {s:?} is not an IP address"),
                )
            })
        })
        .collect()
}

fn parse_ranges(origin: &str, option: &str, v: &[String]) -> Result<Vec<IpRange>, ConfigError> {
    v.iter()
        .map(|s| {
            s.parse::<IpRange>()
                .map_err(|e| err(origin, format!("option `{option}`: {e}")))
        })
        .collect()
}

fn parse_user(origin: &str, s: &str) -> Result<StaticUser, ConfigError> {
    let Some((name, password)) = s
        .split_once(':')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
    else {
        return Err(err(
            origin,
            format!(
                "option `user`: expected NAME:PASSWORD, got {:?}",
                s.split_once(':').map_or(s, |(n, _)| n)
            ),
        ));
    };
    // RFC 8489 sections 9.2.2 and 14.3: names and passwords are prepared
    // with the PRECIS OpaqueString profile, as USERNAME is when it comes.
    let name = opaque_string(name).map_err(|e| {
        err(
            origin,
            format!(
                "option `user`: the name {:?} is refused: {e}",
                LogSafe(name)
            ),
        )
    })?;
    let password = opaque_string(password).map_err(|e| {
        err(
            origin,
            format!(
                "option `user`: the password of {:?} is refused: {e}",
                LogSafe(&name)
            ),
        )
    })?;
    Ok(StaticUser {
        name: name.into_owned(),
        password: password.into_owned(),
    })
}

/// One `alternate-server` value: `IP`, `IP:PORT` or `[IPv6]:PORT`, with
/// `default_port` when none is given; None when it is neither.
fn parse_server_address(v: &str, default_port: u16) -> Option<SocketAddr> {
    let v = v.trim();
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip: IpAddr = v
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, default_port))
}

/// One `external-ip` value, `PUBLIC` or `PUBLIC/PRIVATE` (one family); None
/// when malformed.
fn parse_external_ip(v: &str) -> Option<ExternalIp> {
    let (public, private) = match v.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (v, None),
    };
    let public: IpAddr = public.trim().parse().ok()?;
    let private: Option<IpAddr> = match private {
        Some(p) => Some(p.trim().parse().ok()?),
        None => None,
    };
    if private.is_some_and(|p| p.is_ipv4() != public.is_ipv4()) {
        return None;
    }
    Some(ExternalIp { public, private })
}

/// True when `path` names a coturn-format file (`*.conf`) rather than TOML.
pub fn is_coturn_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "conf")
}

/// Reads a config file: TOML, or coturn's format for `*.conf` files. The
/// second value lists coturn options turnd ignores (each a warning).
fn read_file(path: &Path) -> Result<(FileConfig, Vec<String>), ConfigError> {
    let origin = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| err(&origin, format!("cannot read: {e}")))?;
    parse_file_text(&origin, &text, is_coturn_file(path))
}

/// Reads the text of a config file named `origin`: TOML, or coturn's
/// format when `coturn`. The second value lists coturn options turnd
/// ignores (each a warning).
fn parse_file_text(
    origin: &str,
    text: &str,
    coturn: bool,
) -> Result<(FileConfig, Vec<String>), ConfigError> {
    if coturn {
        let conf = crate::coturn_conf::parse(text).map_err(|e| err(origin, e.to_string()))?;
        let (table, warnings) = crate::coturn_conf::split_supported(&conf, TOML_KEYS);
        let file = FileConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| err(origin, e.to_string().trim_end().replace('\n', " ")))?;
        let warnings = warnings
            .into_iter()
            .map(|w| format!("{origin}: {w}"))
            .collect();
        return Ok((file, warnings));
    }
    let file = toml::from_str(text)
        .map_err(|e| err(origin, e.to_string().trim_end().replace('\n', " ")))?;
    Ok((file, Vec::new()))
}

/// `turnd convert-config FILE`: the TOML equivalent of a coturn file.
///
/// # Errors
/// [`ConfigError`] when the file cannot be read or parsed.
pub fn convert_coturn_file(path: &Path) -> Result<String, ConfigError> {
    let origin = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| err(&origin, format!("cannot read: {e}")))?;
    let conf = crate::coturn_conf::parse(&text).map_err(|e| err(&origin, e.to_string()))?;
    Ok(crate::coturn_conf::to_toml(&conf, TOML_KEYS))
}

impl Default for Config {
    /// The configuration with no file and no flags: the one place every
    /// default is set. The core's options take [`ServerConfig::default`]'s.
    fn default() -> Self {
        let core = ServerConfig::default();
        Config {
            listening_ips: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            listening_port: DEFAULT_LISTENING_PORT,
            relay_ips: core.relay_ips,
            min_port: core.min_port,
            max_port: core.max_port,
            realm: core.realm,
            users: Vec::new(),
            policy: core.policy,
            fingerprint: core.fingerprint,
            verbose: false,
            user_quota: core.user_quota,
            total_quota: core.total_quota,
            max_allocations: core.max_allocations,
            max_allocate_lifetime: core.max_lifetime,
            permission_lifetime: core.permission_lifetime,
            channel_lifetime: core.channel_lifetime,
            stale_nonce: core.nonce_lifetime,
            use_auth_secret: false,
            static_auth_secrets: Vec::new(),
            rest_api_separator: DEFAULT_REST_API_SEPARATOR,
            userdb: None,
            redis_userdb: None,
            redis_statsdb: None,
            server_name: crate::fleet::default_node_name(),
            max_bps: core.max_bps,
            bps_capacity: core.bps_capacity,
            stun_backward_compatibility: core.mapped_address,
            reason_phrases: core.reason_phrases,
            unauth_rate: core.unauth_rate,
            unauth_burst: core.unauth_burst,
            auth_failures_per_minute: core.auth_failures_per_minute,
            ipv6_source_prefix: core.ipv6_source_prefix,
            tls_listening_ports: vec![DEFAULT_TLS_LISTENING_PORT],
            cert: None,
            pkey: None,
            external_ips: Vec::new(),
            alternate_servers: Vec::new(),
            tls_alternate_servers: Vec::new(),
            client_policy: ClientPolicy::default(),
            udp: true,
            tcp: true,
            tls: false,
            stream_idle_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections_per_ip: 256,
            stream_auth_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            proxy_protocol: false,
            proxy_protocol_trusted: Vec::new(),
            drain_timeout: Duration::ZERO,
            xdp: XdpMode::Off,
            xdp_interfaces: Vec::new(),
            relay_threads: 0,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            log_json: false,
            log_file: None,
            pidfile: None,
            prometheus: None,
            prometheus_username_labels: false,
            admin_token: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9642)),
            no_stun: core.no_stun,
            stun_only: core.stun_only,
            warnings: Vec::new(),
        }
    }
}

/// The two layers an option's value comes from, flags over file, and the
/// origin each names in a [`ConfigError`].
struct Layers<'a> {
    cli: &'a Cli,
    file: FileConfig,
    /// The file's path, or "defaults" without one.
    file_origin: String,
}

impl Layers<'_> {
    /// An error about an option set on the command line (`from_cli`) or in
    /// the file.
    fn error(&self, from_cli: bool, message: String) -> ConfigError {
        err(
            if from_cli {
                "command line"
            } else {
                &self.file_origin
            },
            message,
        )
    }

    /// An error reported against the file (also for values from flags, as
    /// turnd always has for these options).
    fn file_error(&self, message: String) -> ConfigError {
        self.error(false, message)
    }

    /// A list option given in the file: its entries, or none.
    fn file_list(list: &Option<OneOrMany>) -> Vec<String> {
        list.clone().map(OneOrMany::into_vec).unwrap_or_default()
    }

    /// Seconds from the flag, else the file, else `default`; 1 s to 7 days.
    fn seconds(
        &self,
        cli: Option<u64>,
        file: Option<u64>,
        default: Duration,
        option: &str,
    ) -> Result<Duration, ConfigError> {
        self.seconds_in(cli, file, default, option, 1..=MAX_DURATION_SECS)
    }

    /// Seconds from the flag, else the file, else `default`, within `range`
    /// (seconds): every duration option is checked at start, so no later
    /// `Instant + Duration` can overflow.
    fn seconds_in(
        &self,
        cli: Option<u64>,
        file: Option<u64>,
        default: Duration,
        option: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        let v = cli.or(file).map_or(default, Duration::from_secs);
        if !range.contains(&v.as_secs()) {
            return Err(self.error(
                cli.is_some(),
                format!(
                    "option `{option}`: {} seconds is outside {}..={}",
                    v.as_secs(),
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(v)
    }
}

/// A flag on the command line or in the file.
fn on(cli: bool, file: Option<bool>) -> bool {
    cli || file.unwrap_or(false)
}

/// Sets each named field of a [`Config`] from the flag of the same name in
/// [`Cli`], else the file's key, as one of:
/// - `value`: a value option; the default already in the field stays
///   when neither gives one;
/// - `flag`: a flag, on when either sets it;
/// - `path`: an optional path;
/// - `seconds`: a [`Duration`] given in seconds, 1 s to 7 days
///   (a [`ConfigError`] otherwise, so use inside a function returning one).
macro_rules! layered {
    ($config:expr, $layers:expr, value: $($field:ident),+ $(,)?) => {
        $($config.$field = $layers.cli.$field.or($layers.file.$field).unwrap_or($config.$field);)+
    };
    ($config:expr, $layers:expr, flag: $($field:ident),+ $(,)?) => {
        $($config.$field = on($layers.cli.$field, $layers.file.$field);)+
    };
    ($config:expr, $layers:expr, path: $($field:ident),+ $(,)?) => {
        $($config.$field = $layers.cli.$field.clone().or($layers.file.$field.clone());)+
    };
    ($config:expr, $layers:expr, seconds: $($field:ident),+ $(,)?) => {
        $($config.$field = $layers.seconds(
            $layers.cli.$field,
            $layers.file.$field,
            $config.$field,
            &stringify!($field).replace('_', "-"),
        )?;)+
    };
}

impl Config {
    /// Loads the file named by `cli.config` (if any) and applies the flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file (or "command line"), the option and why.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let (file, warnings) = match &cli.config {
            Some(p) if !cli.no_config_file => read_file(p)?,
            _ => (FileConfig::default(), Vec::new()),
        };
        let file_origin = cli
            .config
            .as_ref()
            .map_or("defaults".to_owned(), |p| p.display().to_string());
        Config::resolve(cli, file, file_origin, warnings)
    }

    /// Resolves the configuration a file of text `text` gives with no
    /// command-line flags, as [`Config::load`] would for a file named
    /// `origin` (TOML, or coturn's format when `coturn`), without reading
    /// any file: the config fuzz targets call it.
    ///
    /// # Errors
    /// [`ConfigError`] naming `origin`, the option and why.
    pub fn from_file_text(origin: &str, text: &str, coturn: bool) -> Result<Config, ConfigError> {
        let (file, warnings) = parse_file_text(origin, text, coturn)?;
        Config::resolve(&Cli::default(), file, origin.to_owned(), warnings)
    }

    /// The configuration from the flags `cli` over the parsed `file` (named
    /// `file_origin` in errors), with the file's `warnings`.
    fn resolve(
        cli: &Cli,
        file: FileConfig,
        file_origin: String,
        warnings: Vec<String>,
    ) -> Result<Config, ConfigError> {
        let layers = Layers {
            cli,
            file,
            file_origin,
        };
        let mut config = Config {
            warnings,
            ..Config::default()
        };
        config.load_listeners(&layers)?;
        config.load_auth(&layers)?;
        config.load_limits(&layers)?;
        config.load_tls(&layers)?;
        config.load_observability(&layers)?;
        Ok(config)
    }

    /// Listening and relay addresses and ports, listeners, workers, what is
    /// served.
    fn load_listeners(&mut self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let (cli, file, fo) = (layers.cli, &layers.file, layers.file_origin.as_str());
        let listening_ips = parse_ips(fo, "listening-ip", Layers::file_list(&file.listening_ip))?;
        if !cli.listening_ip.is_empty() {
            self.listening_ips = cli.listening_ip.clone();
        } else if !listening_ips.is_empty() {
            self.listening_ips = listening_ips;
        }
        let mut relay_ips = parse_ips(fo, "relay-ip", Layers::file_list(&file.relay_ip))?;
        if !cli.relay_ip.is_empty() {
            relay_ips = cli.relay_ip.clone();
        }
        if let Some(ip) = relay_ips
            .iter()
            .find(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(layers.error(!cli.relay_ip.is_empty(), format!("option `relay-ip`: {ip} cannot be a relay address (it must be a unicast address of this host)")));
        }
        self.relay_ips = relay_ips;

        layered!(self, layers, value: listening_port, min_port, max_port);
        let ports_from_cli = cli.min_port.is_some() || cli.max_port.is_some();
        if self.min_port == 0 {
            return Err(layers.error(
                ports_from_cli,
                "option `min-port`: must be at least 1".into(),
            ));
        }
        if self.min_port > self.max_port {
            return Err(layers.error(
                ports_from_cli,
                format!(
                    "option `min-port`: {} is greater than `max-port` {}",
                    self.min_port, self.max_port
                ),
            ));
        }

        let external_ips = Layers::file_list(&file.external_ip)
            .into_iter()
            .map(|v| (v, false))
            .chain(cli.external_ip.iter().map(|v| (v.clone(), true)));
        for (v, from_cli) in external_ips {
            let external_ip = parse_external_ip(&v)
                .ok_or_else(|| layers.error(from_cli, format!("option `external-ip`: expected PUBLIC or PUBLIC/PRIVATE addresses, got {v:?}")))?;
            self.external_ips.push(external_ip);
        }
        for (key, file_values, cli_values, default_port, out) in [
            (
                "alternate-server",
                &file.alternate_server,
                &cli.alternate_server,
                3478,
                &mut self.alternate_servers,
            ),
            (
                "tls-alternate-server",
                &file.tls_alternate_server,
                &cli.tls_alternate_server,
                5349,
                &mut self.tls_alternate_servers,
            ),
        ] {
            let values = Layers::file_list(file_values)
                .into_iter()
                .map(|v| (v, false))
                .chain(cli_values.iter().map(|v| (v.clone(), true)));
            for (v, from_cli) in values {
                let addr = parse_server_address(&v, default_port).ok_or_else(|| {
                    layers.error(
                        from_cli,
                        format!("option `{key}`: expected IP or IP:PORT ([IPv6]:PORT), got {v:?}"),
                    )
                })?;
                out.push(addr);
            }
        }
        self.udp = !on(cli.no_udp, file.no_udp);
        self.tcp = !on(cli.no_tcp, file.no_tcp);

        self.relay_threads = cli
            .relay_threads
            .or(file.relay_threads)
            .map_or(self.relay_threads, |n| n as usize);
        if self.relay_threads > 1024 {
            return Err(layers.file_error(format!(
                "option `relay-threads`: {} workers is more than 1024",
                self.relay_threads
            )));
        }
        layered!(self, layers, value: socket_buffer);
        if !(4096..=1 << 30).contains(&self.socket_buffer) {
            return Err(layers.file_error(format!(
                "option `socket-buffer`: {} bytes is outside 4096-1073741824",
                self.socket_buffer
            )));
        }

        layered!(self, layers, flag: fingerprint, reason_phrases, stun_backward_compatibility);
        layered!(self, layers, flag: stun_only, no_stun);
        if self.stun_only && self.no_stun {
            return Err(layers.file_error(
                "options `stun-only` and `no-stun`: together they leave nothing to serve".into(),
            ));
        }
        let _ = file.no_multicast_peers;
        Ok(())
    }

    /// Realm, static users, TURN REST secrets, the user database, nonces.
    fn load_auth(&mut self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let (cli, file, fo) = (layers.cli, &layers.file, layers.file_origin.as_str());
        self.realm = cli
            .realm
            .clone()
            .or(file.realm.clone())
            .or(file.server_name.clone())
            .unwrap_or(std::mem::take(&mut self.realm));
        if self.realm.is_empty() || self.realm.len() > 763 {
            return Err(layers.error(
                cli.realm.is_some(),
                "option `realm`: must be 1 to 763 bytes".into(),
            ));
        }

        for u in Layers::file_list(&file.user) {
            self.users.push(parse_user(fo, &u)?);
        }
        for u in &cli.user {
            self.users.push(parse_user("command line", u)?);
        }
        let _ = file.lt_cred_mech;

        self.static_auth_secrets = Layers::file_list(&file.static_auth_secret)
            .into_iter()
            .chain(cli.static_auth_secret.iter().cloned())
            .map(Secret)
            .collect();
        if self.static_auth_secrets.iter().any(|s| s.0.is_empty()) {
            return Err(
                layers.file_error("option `static-auth-secret`: a secret cannot be empty".into())
            );
        }
        layered!(self, layers, path: userdb);
        for (name, cli_value, file_value, slot) in [
            (
                "redis-userdb",
                &cli.redis_userdb,
                &file.redis_userdb,
                &mut self.redis_userdb,
            ),
            (
                "redis-statsdb",
                &cli.redis_statsdb,
                &file.redis_statsdb,
                &mut self.redis_statsdb,
            ),
        ] {
            if let Some(text) = cli_value.as_ref().or(file_value.as_ref()) {
                *slot = Some(crate::fleet::RedisTarget::parse(text).map_err(|why| {
                    layers.error(cli_value.is_some(), format!("option `{name}`: {why}"))
                })?);
            }
        }
        if self.userdb.is_some() && self.redis_userdb.is_some() {
            return Err(layers.error(
                cli.redis_userdb.is_some(),
                "option `redis-userdb`: cannot be used with `userdb` (one user database)".into(),
            ));
        }
        if let Some(name) = cli.server_name.as_ref().or(file.server_name.as_ref()) {
            if !crate::fleet::valid_node_name(name) {
                return Err(layers.error(
                    cli.server_name.is_some(),
                    "option `server-name`: 1 to 64 letters, digits, `.`, `-` or `_`".into(),
                ));
            }
            self.server_name = name.clone();
        }
        self.use_auth_secret =
            on(cli.use_auth_secret, file.use_auth_secret) || !self.static_auth_secrets.is_empty();
        if self.use_auth_secret
            && self.static_auth_secrets.is_empty()
            && self.userdb.is_none()
            && self.redis_userdb.is_none()
        {
            return Err(layers.error(cli.use_auth_secret, "option `use-auth-secret`: needs at least one `static-auth-secret` (or a `userdb` or `redis-userdb` holding secrets)".into()));
        }
        match (cli.rest_api_separator, file.rest_api_separator.as_deref()) {
            (Some(c), _) => self.rest_api_separator = c,
            (None, None) => {}
            (None, Some(s)) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => self.rest_api_separator = c,
                    _ => {
                        return Err(layers.file_error(format!(
                            "option `rest-api-separator`: expected one character, got {s:?}"
                        )))
                    }
                }
            }
        }
        layered!(self, layers, seconds: stale_nonce);
        Ok(())
    }

    /// Peer policy, quotas, rates, lifetimes and connection limits.
    fn load_limits(&mut self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let (cli, file, fo) = (layers.cli, &layers.file, layers.file_origin.as_str());
        let ranges = |option: &str, file_v: &Option<OneOrMany>, cli_v: &[String]| {
            let mut ranges = parse_ranges(fo, option, &Layers::file_list(file_v))?;
            ranges.extend(parse_ranges("command line", option, cli_v)?);
            Ok::<_, ConfigError>(ranges)
        };
        let allowed = ranges(
            "allowed-peer-ip",
            &file.allowed_peer_ip,
            &cli.allowed_peer_ip,
        )?;
        let mut denied = ranges("denied-peer-ip", &file.denied_peer_ip, &cli.denied_peer_ip)?;
        match cli.peer_policy.as_deref().or(file.peer_policy.as_deref()) {
            None | Some("default") => {}
            Some("recommended") => {
                denied.extend(
                    RECOMMENDED_DENIED
                        .iter()
                        .map(|r| r.parse::<IpRange>().expect("valid built-in range")),
                );
            }
            Some(other) => {
                return Err(layers.error(cli.peer_policy.is_some(), format!("option `peer-policy`: expected \"default\" or \"recommended\", got {other:?}")));
            }
        }
        self.policy = PeerPolicy {
            allow_loopback: on(cli.allow_loopback_peers, file.allow_loopback_peers),
            allowed,
            denied,
        };
        self.client_policy = ClientPolicy {
            allowed: ranges(
                "allowed-client-ip",
                &file.allowed_client_ip,
                &cli.allowed_client_ip,
            )?,
            denied: ranges(
                "denied-client-ip",
                &file.denied_client_ip,
                &cli.denied_client_ip,
            )?,
        };

        layered!(self, layers, value: user_quota, total_quota, max_allocations, max_bps, bps_capacity);
        layered!(self, layers, value: unauth_rate, unauth_burst, auth_failures_per_minute);
        if self.unauth_burst == 0 {
            return Err(layers.file_error("option `unauth-burst`: must be at least 1".into()));
        }
        layered!(self, layers, value: ipv6_source_prefix);
        if self.ipv6_source_prefix > 128 {
            return Err(layers.error(
                cli.ipv6_source_prefix.is_some(),
                format!(
                    "option `ipv6-source-prefix`: {} bits is outside 0..=128",
                    self.ipv6_source_prefix
                ),
            ));
        }

        layered!(self, layers, seconds: max_allocate_lifetime, permission_lifetime);
        layered!(self, layers, seconds: channel_lifetime, stream_idle_timeout);
        layered!(self, layers, value: max_connections_per_ip);
        self.max_connections_per_ip = self.max_connections_per_ip.max(1);
        layered!(self, layers, seconds: stream_auth_timeout);
        layered!(self, layers, value: max_connections);
        self.max_connections = self.max_connections.max(1);
        self.proxy_protocol = on(cli.proxy_protocol, file.proxy_protocol);
        self.proxy_protocol_trusted = ranges(
            "proxy-protocol-trusted",
            &file.proxy_protocol_trusted,
            &cli.proxy_protocol_trusted,
        )?;
        if self.proxy_protocol && self.proxy_protocol_trusted.is_empty() {
            return Err(layers.error(cli.proxy_protocol, "option `proxy-protocol`: needs `proxy-protocol-trusted`, the addresses of the load balancers allowed to send PROXY headers (an empty list would trust nobody)".into()));
        }
        if self.stream_auth_timeout.is_zero() {
            return Err(
                layers.file_error("option `stream-auth-timeout`: must be at least 1".into())
            );
        }
        self.drain_timeout = layers.seconds_in(
            cli.drain_timeout,
            file.drain_timeout,
            self.drain_timeout,
            "drain-timeout",
            0..=MAX_DURATION_SECS,
        )?;
        self.load_xdp(layers)
    }

    /// `xdp` and `xdp-interfaces`. The fast path needs the addresses the
    /// kernel sees: a wildcard listening or relay address is refused here
    /// (the interfaces' forwarding and the loading are checked at start).
    fn load_xdp(&mut self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let (cli, file) = (layers.cli, &layers.file);
        let from_cli = cli.xdp.is_some();
        self.xdp =
            match cli.xdp.as_deref().or(file.xdp.as_deref()) {
                None | Some("off") => XdpMode::Off,
                Some("generic") => XdpMode::Generic,
                Some("native") => XdpMode::Native,
                Some(other) => return Err(layers.error(
                    from_cli,
                    format!(
                        "option `xdp`: expected \"off\", \"generic\" or \"native\", got {other:?}"
                    ),
                )),
            };
        self.xdp_interfaces = if cli.xdp_interface.is_empty() {
            Layers::file_list(&file.xdp_interfaces)
        } else {
            cli.xdp_interface.clone()
        };
        if let Some(bad) = self
            .xdp_interfaces
            .iter()
            .find(|i| i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
        {
            return Err(layers.error(
                !cli.xdp_interface.is_empty(),
                format!("option `xdp-interfaces`: {bad:?} is not an interface name"),
            ));
        }
        if self.xdp == XdpMode::Off {
            return Ok(());
        }
        if let Some(ip) = self.listening_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(layers.error(from_cli, format!("option `xdp`: the fast path needs the addresses clients send to, but `listening-ip` is the wildcard {ip}: set listening-ip to this host's addresses")));
        }
        Ok(())
    }

    /// TLS listeners: ports, certificate and key; then the check that some
    /// listener is on.
    fn load_tls(&mut self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let (cli, file) = (layers.cli, &layers.file);
        let tls_listening_ports = if cli.tls_listening_port.is_empty() {
            match &file.tls_listening_port {
                None => vec![],
                Some(Ports::One(p)) => vec![*p],
                Some(Ports::Many(v)) => v.clone(),
            }
        } else {
            cli.tls_listening_port.clone()
        };
        let explicit_tls_ports = !tls_listening_ports.is_empty();
        if explicit_tls_ports {
            self.tls_listening_ports = tls_listening_ports;
        }
        layered!(self, layers, path: cert, pkey);
        let no_tls = on(cli.no_tls, file.no_tls);
        let _ = on(cli.no_dtls, file.no_dtls);
        self.tls = match (&self.cert, &self.pkey) {
            (Some(_), Some(_)) => !no_tls,
            (Some(_), None) => {
                return Err(
                    layers.file_error("option `cert`: needs `pkey` (the private key) too".into())
                )
            }
            (None, Some(_)) => {
                return Err(layers
                    .file_error("option `pkey`: needs `cert` (the certificate chain) too".into()))
            }
            (None, None) if explicit_tls_ports && !no_tls => {
                return Err(layers
                    .file_error("option `tls-listening-port`: needs `cert` and `pkey`".into()))
            }
            (None, None) => false,
        };
        layered!(self, layers, seconds: tls_handshake_timeout);
        if !self.udp && !self.tcp && !self.tls {
            return Err(layers
                .file_error("options `no-udp`, `no-tcp`, `no-tls`: every listener is off".into()));
        }
        Ok(())
    }

    /// Logs, PID file, metrics and the admin API; warnings about coturn
    /// options turnd does not follow.
    fn load_observability(&mut self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let (cli, file) = (layers.cli, &layers.file);
        if file.syslog.unwrap_or(false) {
            self.warnings.push("option `syslog`: turnd logs to stderr (journald under systemd) or `log-file`; syslog is not used".into());
        }
        if cli.daemon {
            self.warnings.push("option `daemon` (-o): turnd stays in the foreground; run it under systemd (systemd/turnd.service)".into());
        }
        let _ = file.no_cli;
        layered!(self, layers, flag: verbose, prometheus_username_labels);
        match cli.log_format.as_deref().or(file.log_format.as_deref()) {
            None => {}
            Some("text") => self.log_json = false,
            Some("json") => self.log_json = true,
            Some(other) => {
                return Err(layers.file_error(format!(
                    "option `log-format`: expected \"text\" or \"json\", got {other:?}"
                )))
            }
        }
        layered!(self, layers, path: log_file, pidfile);
        if on(cli.prometheus, file.prometheus) {
            self.prometheus = Some(SocketAddr::new(
                cli.prometheus_address
                    .or(file.prometheus_address)
                    .unwrap_or(DEFAULT_PROMETHEUS_LISTEN.ip()),
                cli.prometheus_port
                    .or(file.prometheus_port)
                    .unwrap_or(DEFAULT_PROMETHEUS_LISTEN.port()),
            ));
        }
        self.admin_token = cli
            .admin_token
            .clone()
            .or(file.admin_token.clone())
            .filter(|t| !t.is_empty())
            .map(Secret);
        layered!(self, layers, value: admin_listen);
        self.check_admin(layers)
    }

    /// Hardening of the HTTP listeners: `admin-token` of at least
    /// [`MIN_ADMIN_TOKEN_CHARS`] characters; a warning when the admin API or
    /// the metrics listen beyond loopback.
    fn check_admin(&mut self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let Some(token) = &self.admin_token else {
            return Ok(());
        };
        let n = token.0.chars().count();
        if n < MIN_ADMIN_TOKEN_CHARS {
            return Err(layers.error(
                layers.cli.admin_token.is_some(),
                format!(
                    "option `admin-token`: {n} characters is too short, at least {MIN_ADMIN_TOKEN_CHARS} are needed"
                ),
            ));
        }
        if !self.admin_listen.ip().is_loopback() {
            self.warnings.push(format!(
                "option `admin-listen`: {} is not a loopback address: the admin API (bearer token over plain HTTP) is reachable from the network",
                self.admin_listen
            ));
        }
        Ok(())
    }

    /// Checks one file on its own (what `turnd check-config FILE` does).
    ///
    /// # Errors
    /// [`ConfigError`] as for [`Config::load`].
    pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
        Config::load(&Cli {
            config: Some(path.to_owned()),
            ..Cli::default()
        })
    }

    /// The credentials: static users (plaintext or `0x` MD5 keys), users
    /// from the database (`db_users`, name and MD5 key), and, with
    /// `use-auth-secret`, the static secrets plus `db_secrets`.
    pub fn credentials(
        &self,
        db_users: &[(String, [u8; 16])],
        db_secrets: &[String],
    ) -> Credentials {
        let mut credentials = Credentials::new();
        for (name, key) in db_users {
            credentials.add_key(name, &self.realm, *key);
        }
        for u in &self.users {
            match u.hashed_key() {
                Some(k) => credentials.add_key(&u.name, &self.realm, k),
                None => credentials.add_user(&u.name, &self.realm, &u.password),
            }
        }
        if self.use_auth_secret {
            let mut secrets: Vec<String> = self
                .static_auth_secrets
                .iter()
                .map(|s| s.0.clone())
                .collect();
            secrets.extend(db_secrets.iter().cloned());
            credentials.set_rest_secrets(secrets, self.rest_api_separator);
        }
        credentials
    }

    /// The core's settings; `relay_ips` must be resolved (non-empty) by then.
    pub fn server_config(&self) -> ServerConfig {
        let credentials = self.credentials(&[], &[]);
        ServerConfig {
            realm: self.realm.clone(),
            credentials,
            relay_ips: self.relay_ips.clone(),
            min_port: self.min_port,
            max_port: self.max_port,
            policy: self.policy.clone(),
            max_lifetime: self.max_allocate_lifetime,
            permission_lifetime: self.permission_lifetime,
            channel_lifetime: self.channel_lifetime,
            nonce_lifetime: self.stale_nonce,
            user_quota: self.user_quota,
            total_quota: self.total_quota,
            max_allocations: self.max_allocations,
            fingerprint: self.fingerprint,
            reason_phrases: self.reason_phrases,
            mapped_address: self.stun_backward_compatibility,
            unauth_rate: self.unauth_rate,
            unauth_burst: self.unauth_burst,
            auth_failures_per_minute: self.auth_failures_per_minute,
            ipv6_source_prefix: self.ipv6_source_prefix,
            max_bps: self.max_bps,
            bps_capacity: self.bps_capacity,
            external_ips: self
                .external_ips
                .iter()
                .map(|e| (e.private, e.public))
                .collect(),
            no_stun: self.no_stun,
            stun_only: self.stun_only,
            user_byte_totals: self.prometheus_username_labels,
            alternate_servers: self.alternate_servers.clone(),
            client_policy: self.client_policy.clone(),
            tls_alternate_servers: self.tls_alternate_servers.clone(),
            ..ServerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "turnd-config-test-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn flags_override_file() {
        let p = write("override", "listening-port = 4000\nrealm = \"file.example\"\nuser = [\"a:b\"]\nmin-port = 50000\nmax-port = 50100\n");
        let cli = Cli::parse_from([
            "turnd",
            "--config",
            p.to_str().unwrap(),
            "--listening-port",
            "5000",
            "--user",
            "c:d",
        ]);
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.listening_port, 5000);
        assert_eq!(c.realm, "file.example");
        assert_eq!(c.users.len(), 2);
        assert_eq!((c.min_port, c.max_port), (50000, 50100));
    }

    #[test]
    fn stale_nonce_flag_reaches_the_core() {
        let cli = Cli::parse_from(["turnd", "--stale-nonce", "2", "--user", "a:b"]);
        let c = Config::load(&cli).unwrap();
        assert_eq!(
            c.server_config().nonce_lifetime,
            std::time::Duration::from_secs(2)
        );
    }

    #[test]
    fn unknown_option_is_named() {
        let p = write("unknown", "listening-prot = 4000\n");
        let e = Config::check_file(&p).unwrap_err();
        assert!(e.to_string().contains("listening-prot"), "{e}");
        assert!(e.to_string().contains(p.to_str().unwrap()), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        for (text, option) in [
            ("min-port = 60000\nmax-port = 50000\n", "min-port"),
            ("user = [\"nopassword\"]\n", "user"),
            ("allowed-peer-ip = [\"10.0.0.0/40\"]\n", "allowed-peer-ip"),
            ("relay-ip = \"0.0.0.0\"\n", "relay-ip"),
            ("listening-ip = \"not-an-ip\"\n", "listening-ip"),
            ("stale-nonce = 0\n", "stale-nonce"),
            ("listening-port = 70000\n", "listening-port"),
            ("ipv6-source-prefix = 129\n", "ipv6-source-prefix"),
            ("user = [\"bad\\u0007name:pw\"]\n", "user"),
            ("user = [\"name:pass\\u0000word\"]\n", "user"),
            ("ipv6-source-prefix = -1\n", "ipv6-source-prefix"),
            (
                "alternate-server = \"turn.example.com\"\n",
                "alternate-server",
            ),
            (
                "tls-alternate-server = [\"192.0.2.1:99999\"]\n",
                "tls-alternate-server",
            ),
        ] {
            let p = write(option, text);
            let e = Config::check_file(&p).unwrap_err().to_string();
            assert!(e.contains(option), "{text}: {e}");
        }
    }

    #[test]
    fn max_allocations_from_toml_coturn_conf_and_flag_reach_the_core() {
        assert_eq!(Config::default().server_config().max_allocations, 0);
        let p = write(
            "max-allocations",
            "user = [\"a:b\"]\nmax-allocations = 500\n",
        );
        let load = |args: &[&str]| {
            let cli = Cli::parse_from([&["turnd", "--config"][..], args].concat());
            Config::load(&cli).unwrap().server_config().max_allocations
        };
        let path = p.to_str().unwrap();
        assert_eq!(load(&[path]), 500);
        assert_eq!(load(&[path, "--max-allocations", "7"]), 7);
        let conf = std::env::temp_dir().join(format!(
            "turnd-config-test-{}-max-allocations.conf",
            std::process::id()
        ));
        std::fs::write(&conf, "user=a:b\nmax-allocations=3\n").unwrap();
        assert_eq!(load(&[conf.to_str().unwrap()]), 3);
        let bad = write("max-allocations-bad", "max-allocations = -1\n");
        let e = Config::check_file(&bad).unwrap_err().to_string();
        assert!(e.contains("max-allocations"), "{e}");
    }

    #[test]
    fn alternate_servers_take_default_ports_and_reach_the_core() {
        let p = write(
            "alternates",
            "user = [\"a:b\"]\nalternate-server = [\"192.0.2.21\", \"[2001:db8::21]:3480\"]\ntls-alternate-server = \"2001:db8::31\"\n",
        );
        let cli = Cli::parse_from([
            "turnd",
            "--config",
            p.to_str().unwrap(),
            "--alternate-server",
            "192.0.2.22:3479",
        ]);
        let c = Config::load(&cli).unwrap().server_config();
        let addrs =
            |v: &[&str]| -> Vec<SocketAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(
            c.alternate_servers,
            addrs(&["192.0.2.21:3478", "[2001:db8::21]:3480", "192.0.2.22:3479"])
        );
        assert_eq!(c.tls_alternate_servers, addrs(&["[2001:db8::31]:5349"]));
    }

    #[test]
    fn ipv6_source_prefix_reaches_the_core_and_is_checked() {
        assert_eq!(Config::default().server_config().ipv6_source_prefix, 64);
        let p = write("v6prefix", "ipv6-source-prefix = 56\n");
        let cli = Cli::parse_from(["turnd", "--config", p.to_str().unwrap()]);
        assert_eq!(
            Config::load(&cli)
                .unwrap()
                .server_config()
                .ipv6_source_prefix,
            56
        );
        let cli = Cli::parse_from(["turnd", "--ipv6-source-prefix", "128"]);
        assert_eq!(Config::load(&cli).unwrap().ipv6_source_prefix, 128);
        let cli = Cli::parse_from(["turnd", "--ipv6-source-prefix", "200"]);
        let e = Config::load(&cli).unwrap_err().to_string();
        assert!(
            e.contains("command line") && e.contains("ipv6-source-prefix"),
            "{e}"
        );
        assert!(Cli::try_parse_from(["turnd", "--ipv6-source-prefix", "300"]).is_err());
    }

    #[test]
    fn passwords_do_not_leak_through_debug() {
        let cli = Cli::parse_from(["turnd", "--user", "alice:hunter2"]);
        let c = Config::load(&cli).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    /// The field names a `Deserialize` impl asks for: what serde's derive
    /// passes to `deserialize_struct` (for `FileConfig`, its TOML keys).
    fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        use serde::de::{value::Error, Error as _, Visitor};
        struct Fields<'a>(&'a mut &'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for Fields<'_> {
            type Error = Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
                Err(Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Error> {
                *self.0 = fields;
                Err(Error::custom("fields read"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Fields(&mut fields));
        fields
    }

    #[test]
    fn toml_keys_are_the_file_fields() {
        assert_eq!(TOML_KEYS, struct_fields::<FileConfig>());
    }

    /// Every server flag is a TOML key and the other way round, but for
    /// the few that only make sense on one side.
    #[test]
    fn flags_and_toml_keys_are_the_same_options() {
        use clap::CommandFactory;
        const FLAGS_ONLY: &[&str] = &["config", "no-config-file", "daemon", "help", "version"];
        const FILE_ONLY: &[&str] = &["no-multicast-peers", "no-cli", "syslog"];
        let cli = Cli::command();
        let mut flags: Vec<&str> = cli
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !FLAGS_ONLY.contains(l))
            .collect();
        let mut keys: Vec<&str> = TOML_KEYS
            .iter()
            .copied()
            .filter(|k| !FILE_ONLY.contains(k))
            .collect();
        flags.sort_unstable();
        keys.sort_unstable();
        assert_eq!(flags, keys);
    }

    #[test]
    fn no_file_and_no_flags_give_the_defaults() {
        let loaded = Config::load(&Cli::default()).unwrap();
        assert_eq!(format!("{loaded:?}"), format!("{:?}", Config::default()));
    }

    /// The defaults `--help` states are [`Config::default`]'s.
    #[test]
    fn help_states_the_defaults() {
        use clap::CommandFactory;
        let d = Config::default();
        let secs = |t: Duration| t.as_secs().to_string();
        let prometheus = DEFAULT_PROMETHEUS_LISTEN;
        let stated = [
            ("listening-ip", d.listening_ips[0].to_string()),
            ("listening-port", d.listening_port.to_string()),
            ("min-port", d.min_port.to_string()),
            ("max-port", d.max_port.to_string()),
            ("realm", format!("{:?}", d.realm)),
            ("max-allocate-lifetime", secs(d.max_allocate_lifetime)),
            ("permission-lifetime", secs(d.permission_lifetime)),
            ("channel-lifetime", secs(d.channel_lifetime)),
            ("stale-nonce", secs(d.stale_nonce)),
            ("rest-api-separator", format!("{:?}", d.rest_api_separator)),
            ("unauth-rate", d.unauth_rate.to_string()),
            ("unauth-burst", d.unauth_burst.to_string()),
            (
                "auth-failures-per-minute",
                d.auth_failures_per_minute.to_string(),
            ),
            ("ipv6-source-prefix", d.ipv6_source_prefix.to_string()),
            ("tls-listening-port", d.tls_listening_ports[0].to_string()),
            ("stream-idle-timeout", secs(d.stream_idle_timeout)),
            ("tls-handshake-timeout", secs(d.tls_handshake_timeout)),
            (
                "max-connections-per-ip",
                d.max_connections_per_ip.to_string(),
            ),
            ("stream-auth-timeout", secs(d.stream_auth_timeout)),
            ("max-connections", d.max_connections.to_string()),
            ("drain-timeout", secs(d.drain_timeout)),
            ("prometheus-port", prometheus.port().to_string()),
            ("prometheus-address", prometheus.ip().to_string()),
            ("admin-listen", d.admin_listen.to_string()),
            ("socket-buffer", d.socket_buffer.to_string()),
        ];
        let cli = Cli::command();
        for (flag, value) in stated {
            let arg = cli
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("no --{flag}"));
            let help = format!(
                "{} {}",
                arg.get_help().map(ToString::to_string).unwrap_or_default(),
                arg.get_long_help()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )
            .to_lowercase();
            assert!(
                help.contains(&format!("default {value}")),
                "--{flag}: help says {help:?}, the default is {value}"
            );
        }
        assert!(!d.log_json, "--log-format: \"text\" is the default");
        assert_eq!(d.relay_threads, 0, "--relay-threads: unset is one per CPU");
    }
}
