//! Configuration: a TOML file and command-line flags; flags override the file.
//!
//! Option names are coturn's where coturn has one (`listening-port`,
//! `relay-ip`, `min-port`, `allow-loopback-peers`...), both as TOML keys and as
//! long flags. An unknown key, a malformed value or an inconsistent setting is
//! a [`ConfigError`] naming the file, the option and why.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;

use crate::auth::Credentials;
use crate::turn::{IpRange, PeerPolicy, ServerConfig};

/// Default STUN/TURN port over UDP and TCP. See RFC 8489, section 9.
pub const DEFAULT_LISTENING_PORT: u16 = 3478;
/// Default STUN/TURN port over TLS. See RFC 8489, section 9.
pub const DEFAULT_TLS_LISTENING_PORT: u16 = 5349;
/// Default lowest relay port (RFC 8656 section 7.2 suggests 49152-65535).
pub const DEFAULT_MIN_PORT: u16 = 49152;
/// Default highest relay port.
pub const DEFAULT_MAX_PORT: u16 = 65535;

/// turnd command line.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "turnd",
    version,
    about = "STUN/TURN relay server (RFC 8489, RFC 8656)",
    long_about = "STUN/TURN relay server (RFC 8489, RFC 8656).\n\n\
        Options come from the TOML file given with --config, then from these flags, which \
        override the file. Option names are coturn's."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for STUN/TURN over UDP (repeatable). Default 0.0.0.0.
    #[arg(short = 'L', long = "listening-ip", value_name = "IP")]
    pub listening_ip: Vec<IpAddr>,
    /// Port to listen on (UDP). Default 3478; 0 picks a free port and prints it.
    #[arg(short = 'p', long = "listening-port", value_name = "N")]
    pub listening_port: Option<u16>,
    /// Address relay sockets are bound on and advertised as XOR-RELAYED-ADDRESS
    /// (repeatable; allocations spread over the addresses of a family). Default: the listening IP, or the
    /// address of the default route's interface when listening on 0.0.0.0.
    #[arg(short = 'E', long = "relay-ip", value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,
    /// Lowest relay port (default 49152).
    #[arg(long = "min-port", value_name = "N")]
    pub min_port: Option<u16>,
    /// Highest relay port (default 65535).
    #[arg(long = "max-port", value_name = "N")]
    pub max_port: Option<u16>,
    /// Realm of the long-term credentials (default "turnd").
    #[arg(short = 'r', long, value_name = "R")]
    pub realm: Option<String>,
    /// A static user as NAME:PASSWORD (repeatable; added to the file's users).
    #[arg(short = 'u', long = "user", value_name = "NAME:PASSWORD")]
    pub user: Vec<String>,
    /// Allow relaying to loopback peers (127.0.0.0/8, ::1). For tests only.
    #[arg(long = "allow-loopback-peers")]
    pub allow_loopback_peers: bool,
    /// Peer addresses allowed even if denied by default: IP, a-b range or CIDR (repeatable).
    #[arg(long = "allowed-peer-ip", value_name = "RANGE")]
    pub allowed_peer_ip: Vec<String>,
    /// Peer addresses denied in addition to the defaults: IP, a-b range or CIDR (repeatable).
    #[arg(long = "denied-peer-ip", value_name = "RANGE")]
    pub denied_peer_ip: Vec<String>,
    /// Add FINGERPRINT to every response (otherwise only when the request had one).
    #[arg(short = 'f', long)]
    pub fingerprint: bool,
    /// Log at debug level (RUST_LOG overrides).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Accepted for coturn compatibility: long-term credentials are always on.
    #[arg(short = 'a', long = "lt-cred-mech")]
    pub lt_cred_mech: bool,
    /// Concurrent allocations per user; 0 is unlimited (486 when reached).
    #[arg(short = 'q', long = "user-quota", value_name = "N")]
    pub user_quota: Option<u32>,
    /// Concurrent allocations in all; 0 is unlimited (486 when reached).
    #[arg(short = 'Q', long = "total-quota", value_name = "N")]
    pub total_quota: Option<u32>,
    /// Longest allocation lifetime in seconds (default 3600).
    #[arg(long = "max-allocate-lifetime", value_name = "SECONDS")]
    pub max_allocate_lifetime: Option<u64>,
    /// Permission lifetime in seconds (default 300).
    #[arg(long = "permission-lifetime", value_name = "SECONDS")]
    pub permission_lifetime: Option<u64>,
    /// Channel binding lifetime in seconds (default 600).
    #[arg(long = "channel-lifetime", value_name = "SECONDS")]
    pub channel_lifetime: Option<u64>,
    /// Nonce lifetime in seconds before 438 Stale Nonce (default 600).
    #[arg(long = "stale-nonce", value_name = "SECONDS")]
    pub stale_nonce: Option<u64>,
    /// Turn on the TURN REST API: usernames "<expiry unix time>:<user>",
    /// passwords base64(HMAC-SHA1(secret, username)).
    #[arg(long = "use-auth-secret")]
    pub use_auth_secret: bool,
    /// A TURN REST API shared secret (repeatable; every secret is tried, so
    /// secrets rotate without downtime). Implies --use-auth-secret.
    #[arg(long = "static-auth-secret", value_name = "SECRET")]
    pub static_auth_secret: Vec<String>,
    /// Separator between expiry time and user id in REST usernames (default ':').
    #[arg(short = 'C', long = "rest-api-separator", value_name = "CHAR")]
    pub rest_api_separator: Option<char>,
    /// SQLite user database (coturn's schema: turnusers_lt, turn_secret);
    /// changes are picked up by a running server within about a second.
    #[arg(short = 'b', long = "userdb", value_name = "FILE")]
    pub userdb: Option<PathBuf>,
    /// Bytes per second per allocation and direction; 0 is unlimited.
    #[arg(short = 's', long = "max-bps", value_name = "BYTES")]
    pub max_bps: Option<u64>,
    /// Bytes per second for the whole server; 0 is unlimited.
    #[arg(short = 'B', long = "bps-capacity", value_name = "BYTES")]
    pub bps_capacity: Option<u64>,
    /// Also send MAPPED-ADDRESS in Binding responses (RFC 3489 clients).
    #[arg(long = "stun-backward-compatibility")]
    pub stun_backward_compatibility: bool,
    /// Put reason phrases in ERROR-CODE (off: smaller error answers).
    #[arg(long = "reason-phrases")]
    pub reason_phrases: bool,
    /// Answers to unauthenticated requests per second per source IP (default 50; 0 disables).
    #[arg(long = "unauth-rate", value_name = "N")]
    pub unauth_rate: Option<u64>,
    /// Burst for --unauth-rate (default 100).
    #[arg(long = "unauth-burst", value_name = "N")]
    pub unauth_burst: Option<u64>,
    /// Failed authentications per minute per source IP before it gets no
    /// answers until the budget refills (default 10; 0 disables).
    #[arg(long = "auth-failures-per-minute", value_name = "N")]
    pub auth_failures_per_minute: Option<u64>,
    /// Peer policy preset: "default" (loopback, private, link-local,
    /// multicast... denied) or "recommended" (also every other IANA
    /// special-purpose range).
    #[arg(long = "peer-policy", value_name = "PRESET")]
    pub peer_policy: Option<String>,
    /// TLS listening port (repeatable: several TLS ports, e.g. 5349 and 443). Default 5349.
    #[arg(long = "tls-listening-port", value_name = "N")]
    pub tls_listening_port: Vec<u16>,
    /// PEM certificate chain for TLS (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key for TLS (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub pkey: Option<PathBuf>,
    /// Public address advertised in XOR-RELAYED-ADDRESS, as PUBLIC or
    /// PUBLIC/PRIVATE (the relay address it stands for), for hosts behind 1:1
    /// NAT (repeatable).
    #[arg(short = 'X', long = "external-ip", value_name = "IP[/IP]")]
    pub external_ip: Vec<String>,
    /// Do not listen on UDP.
    #[arg(long = "no-udp")]
    pub no_udp: bool,
    /// Do not listen on TCP.
    #[arg(long = "no-tcp")]
    pub no_tcp: bool,
    /// Do not listen on TLS.
    #[arg(long = "no-tls")]
    pub no_tls: bool,
    /// Accepted for coturn compatibility: turnd has no DTLS listener.
    #[arg(long = "no-dtls")]
    pub no_dtls: bool,
    /// Seconds a TCP/TLS connection may stay idle without an allocation (default 30).
    #[arg(long = "stream-idle-timeout", value_name = "SECONDS")]
    pub stream_idle_timeout: Option<u64>,
    /// Seconds a TLS handshake may take (default 10).
    #[arg(long = "tls-handshake-timeout", value_name = "SECONDS")]
    pub tls_handshake_timeout: Option<u64>,
    /// Concurrent TCP/TLS connections per source IP address (default 256).
    #[arg(long = "max-connections-per-ip", value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// Seconds to keep relaying existing allocations after SIGTERM while
    /// refusing new ones (0: close at once). Default 0.
    #[arg(long = "drain-timeout", value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,
    /// Log format: "text" (default) or "json".
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Write logs to this file instead of stderr (reopened on SIGHUP, for logrotate).
    #[arg(short = 'l', long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Write the process id to this file.
    #[arg(long = "pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Serve Prometheus metrics on /metrics (port 9641, coturn's).
    #[arg(long)]
    pub prometheus: bool,
    /// Port of the Prometheus listener (default 9641).
    #[arg(long = "prometheus-port", value_name = "N")]
    pub prometheus_port: Option<u16>,
    /// Address of the Prometheus listener (default 0.0.0.0).
    #[arg(long = "prometheus-address", value_name = "IP")]
    pub prometheus_address: Option<IpAddr>,
    /// Per-user byte counters in the metrics (one series per user).
    #[arg(long = "prometheus-username-labels")]
    pub prometheus_username_labels: bool,
    /// Bearer token of the admin API and status page; setting it turns them on.
    #[arg(long = "admin-token", value_name = "TOKEN", env = "TURND_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Address of the admin API and status page (default 127.0.0.1:9642).
    #[arg(long = "admin-listen", value_name = "IP:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Do not answer STUN Binding requests (TURN only).
    #[arg(long = "no-stun")]
    pub no_stun: bool,
    /// Answer only STUN Binding requests (no TURN).
    #[arg(short = 'S', long = "stun-only")]
    pub stun_only: bool,
    /// Relay workers: threads, each with its own event loop, SO_REUSEPORT
    /// UDP listeners, allocations and slice of the relay port range
    /// (0 or unset: one per CPU this process may run on).
    #[arg(
        short = 'm',
        long = "relay-threads",
        visible_alias = "workers",
        value_name = "N"
    )]
    pub relay_threads: Option<u32>,
    /// Kernel receive and send buffer of each UDP listener socket, bytes
    /// (default 4194304; capped by net.core.rmem_max and wmem_max).
    #[arg(long = "socket-buffer", value_name = "BYTES")]
    pub socket_buffer: Option<usize>,
    /// Accepted for coturn compatibility and ignored with a warning: turnd
    /// stays in the foreground (run it under systemd).
    #[arg(short = 'o', long = "daemon")]
    pub daemon: bool,
    /// Ignore the configuration file named by --config (coturn's -n).
    #[arg(short = 'n', long = "no-config-file")]
    pub no_config_file: bool,
    /// Subcommand; none runs the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// turnd subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Validate a configuration file and exit (0 when valid, 2 otherwise).
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Mint TURN REST API credentials from a shared secret and print them
    /// with a ready `iceServers` snippet.
    Credentials {
        /// The shared secret (as in static-auth-secret).
        #[arg(long)]
        secret: String,
        /// The user id part of the username.
        #[arg(long)]
        user: String,
        /// Validity in seconds from now.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Separator between expiry and user id.
        #[arg(long, default_value_t = ':')]
        separator: char,
        /// TURN URL for the snippet.
        #[arg(long, default_value = "turn:127.0.0.1:3478?transport=udp")]
        url: String,
    },
    /// Print the long-term key MD5(user:realm:password) as coturn's
    /// `turnadmin -k` does, for `user = ["name:0x..."]`.
    HashKey {
        /// User name.
        #[arg(long)]
        user: String,
        /// Realm.
        #[arg(long)]
        realm: String,
        /// Password.
        #[arg(long)]
        password: String,
    },
    /// Check any TURN server end to end, like the Trickle ICE page: Binding,
    /// two allocations, permissions, a relayed round trip, Refresh to 0.
    /// Exit 0 only when the relay works.
    Probe(crate::probe::ProbeArgs),
    /// Print the TOML equivalent of a coturn turnserver.conf.
    ConvertConfig {
        /// The coturn configuration file.
        file: PathBuf,
    },
    /// Manage users in the SQLite user database (like coturn's turnadmin).
    User {
        /// The database file.
        #[arg(long, short = 'b')]
        userdb: PathBuf,
        /// The realm.
        #[arg(long, short = 'r')]
        realm: String,
        /// What to do.
        #[command(subcommand)]
        command: crate::userdb::UserCommand,
    },
    /// Manage TURN REST API secrets in the SQLite user database.
    Secret {
        /// The database file.
        #[arg(long, short = 'b')]
        userdb: PathBuf,
        /// The realm.
        #[arg(long, short = 'r')]
        realm: String,
        /// What to do.
        #[command(subcommand)]
        command: crate::userdb::SecretCommand,
    },
}

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
    fingerprint: Option<bool>,
    verbose: Option<bool>,
    lt_cred_mech: Option<bool>,
    user_quota: Option<u32>,
    total_quota: Option<u32>,
    max_allocate_lifetime: Option<u64>,
    permission_lifetime: Option<u64>,
    channel_lifetime: Option<u64>,
    stale_nonce: Option<u64>,
    use_auth_secret: Option<bool>,
    static_auth_secret: Option<OneOrMany>,
    rest_api_separator: Option<String>,
    userdb: Option<PathBuf>,
    max_bps: Option<u64>,
    bps_capacity: Option<u64>,
    stun_backward_compatibility: Option<bool>,
    reason_phrases: Option<bool>,
    unauth_rate: Option<u64>,
    unauth_burst: Option<u64>,
    auth_failures_per_minute: Option<u64>,
    peer_policy: Option<String>,
    tls_listening_port: Option<Ports>,
    cert: Option<PathBuf>,
    pkey: Option<PathBuf>,
    external_ip: Option<OneOrMany>,
    no_udp: Option<bool>,
    no_tcp: Option<bool>,
    no_tls: Option<bool>,
    no_dtls: Option<bool>,
    stream_idle_timeout: Option<u64>,
    tls_handshake_timeout: Option<u64>,
    max_connections_per_ip: Option<u32>,
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
}

/// Default `socket-buffer`: 4 MiB per UDP listener socket and direction.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;

/// The TOML keys turnd reads (every one is documented in turnserver.toml.example).
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
    "fingerprint",
    "verbose",
    "lt-cred-mech",
    "user-quota",
    "total-quota",
    "max-allocate-lifetime",
    "permission-lifetime",
    "channel-lifetime",
    "stale-nonce",
    "use-auth-secret",
    "static-auth-secret",
    "rest-api-separator",
    "userdb",
    "max-bps",
    "bps-capacity",
    "stun-backward-compatibility",
    "reason-phrases",
    "unauth-rate",
    "unauth-burst",
    "auth-failures-per-minute",
    "peer-policy",
    "tls-listening-port",
    "cert",
    "pkey",
    "external-ip",
    "no-udp",
    "no-tcp",
    "no-tls",
    "no-dtls",
    "stream-idle-timeout",
    "tls-handshake-timeout",
    "max-connections-per-ip",
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
    /// TLS ports.
    pub tls_listening_ports: Vec<u16>,
    /// TLS certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub pkey: Option<PathBuf>,
    /// Public addresses for 1:1 NAT.
    pub external_ips: Vec<ExternalIp>,
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
    /// Relay existing allocations this long after SIGTERM.
    pub drain_timeout: Duration,
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
    match s.split_once(':') {
        Some((name, password)) if !name.is_empty() && !password.is_empty() => Ok(StaticUser {
            name: name.to_owned(),
            password: password.to_owned(),
        }),
        _ => Err(err(
            origin,
            format!(
                "option `user`: expected NAME:PASSWORD, got {:?}",
                s.split_once(':').map_or(s, |(n, _)| n)
            ),
        )),
    }
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
    if is_coturn_file(path) {
        let conf = crate::coturn_conf::parse(&text).map_err(|e| err(&origin, e.to_string()))?;
        let (table, warnings) = crate::coturn_conf::split_supported(&conf, TOML_KEYS);
        let file = FileConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| err(&origin, e.to_string().trim_end().replace('\n', " ")))?;
        let warnings = warnings
            .into_iter()
            .map(|w| format!("{origin}: {w}"))
            .collect();
        return Ok((file, warnings));
    }
    let file = toml::from_str(&text)
        .map_err(|e| err(&origin, e.to_string().trim_end().replace('\n', " ")))?;
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

impl Config {
    /// Loads the file named by `cli.config` (if any) and applies the flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file (or "command line"), the option and why.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let (file, mut file_warnings) = match &cli.config {
            Some(p) if !cli.no_config_file => read_file(p)?,
            _ => (FileConfig::default(), Vec::new()),
        };
        let f_origin = cli
            .config
            .as_ref()
            .map_or("defaults".to_owned(), |p| p.display().to_string());
        let fo = f_origin.as_str();
        let co = "command line";

        let mut listening_ips = parse_ips(
            fo,
            "listening-ip",
            file.listening_ip
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        )?;
        if !cli.listening_ip.is_empty() {
            listening_ips = cli.listening_ip.clone();
        }
        if listening_ips.is_empty() {
            listening_ips.push(IpAddr::from([0, 0, 0, 0]));
        }
        let mut relay_ips = parse_ips(
            fo,
            "relay-ip",
            file.relay_ip.map(OneOrMany::into_vec).unwrap_or_default(),
        )?;
        if !cli.relay_ip.is_empty() {
            relay_ips = cli.relay_ip.clone();
        }
        for ip in &relay_ips {
            if ip.is_unspecified() || ip.is_multicast() {
                let o = if cli.relay_ip.is_empty() { fo } else { co };
                return Err(err(o, format!("option `relay-ip`: {ip} cannot be a relay address (it must be a unicast address of this host)")));
            }
        }

        let listening_port = cli
            .listening_port
            .or(file.listening_port)
            .unwrap_or(DEFAULT_LISTENING_PORT);
        let min_port = cli.min_port.or(file.min_port).unwrap_or(DEFAULT_MIN_PORT);
        let max_port = cli.max_port.or(file.max_port).unwrap_or(DEFAULT_MAX_PORT);
        let port_origin = if cli.min_port.is_some() || cli.max_port.is_some() {
            co
        } else {
            fo
        };
        if min_port == 0 {
            return Err(err(
                port_origin,
                "option `min-port`: must be at least 1".into(),
            ));
        }
        if min_port > max_port {
            return Err(err(
                port_origin,
                format!("option `min-port`: {min_port} is greater than `max-port` {max_port}"),
            ));
        }

        let realm = cli
            .realm
            .clone()
            .or(file.realm.clone())
            .or(file.server_name.clone())
            .unwrap_or_else(|| "turnd".to_owned());
        if realm.is_empty() || realm.len() > 763 {
            return Err(err(
                if cli.realm.is_some() { co } else { fo },
                "option `realm`: must be 1 to 763 bytes".into(),
            ));
        }

        let mut users = Vec::new();
        for u in file.user.map(OneOrMany::into_vec).unwrap_or_default() {
            users.push(parse_user(fo, &u)?);
        }
        for u in &cli.user {
            users.push(parse_user(co, u)?);
        }

        let mut allowed = parse_ranges(
            fo,
            "allowed-peer-ip",
            &file
                .allowed_peer_ip
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        )?;
        allowed.extend(parse_ranges(co, "allowed-peer-ip", &cli.allowed_peer_ip)?);
        let mut denied = parse_ranges(
            fo,
            "denied-peer-ip",
            &file
                .denied_peer_ip
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        )?;
        denied.extend(parse_ranges(co, "denied-peer-ip", &cli.denied_peer_ip)?);
        let mut policy = PeerPolicy {
            allow_loopback: cli.allow_loopback_peers || file.allow_loopback_peers.unwrap_or(false),
            allowed,
            denied,
        };

        let secs = |cli_v: Option<u64>,
                    file_v: Option<u64>,
                    default: u64,
                    option: &str|
         -> Result<Duration, ConfigError> {
            let v = cli_v.or(file_v).unwrap_or(default);
            if v == 0 || v > 86_400 * 7 {
                let o = if cli_v.is_some() { co } else { fo };
                return Err(err(
                    o,
                    format!("option `{option}`: {v} seconds is outside 1..=604800"),
                ));
            }
            Ok(Duration::from_secs(v))
        };
        let _ = file.lt_cred_mech;

        let mut static_auth_secrets: Vec<Secret> = file
            .static_auth_secret
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(Secret)
            .collect();
        static_auth_secrets.extend(cli.static_auth_secret.iter().cloned().map(Secret));
        if static_auth_secrets.iter().any(|s| s.0.is_empty()) {
            return Err(err(
                fo,
                "option `static-auth-secret`: a secret cannot be empty".into(),
            ));
        }
        let userdb = cli.userdb.clone().or(file.userdb);
        let use_auth_secret = cli.use_auth_secret
            || file.use_auth_secret.unwrap_or(false)
            || !static_auth_secrets.is_empty();
        if use_auth_secret && static_auth_secrets.is_empty() && userdb.is_none() {
            let o = if cli.use_auth_secret { co } else { fo };
            return Err(err(o, "option `use-auth-secret`: needs at least one `static-auth-secret` (or a `userdb` holding secrets)".into()));
        }
        let rest_api_separator = match (cli.rest_api_separator, file.rest_api_separator.as_deref())
        {
            (Some(c), _) => c,
            (None, None) => ':',
            (None, Some(s)) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => c,
                    _ => {
                        return Err(err(
                            fo,
                            format!(
                                "option `rest-api-separator`: expected one character, got {s:?}"
                            ),
                        ))
                    }
                }
            }
        };
        match cli.peer_policy.as_deref().or(file.peer_policy.as_deref()) {
            None | Some("default") => {}
            Some("recommended") => {
                policy.denied.extend(
                    RECOMMENDED_DENIED
                        .iter()
                        .map(|r| r.parse::<IpRange>().expect("valid built-in range")),
                );
            }
            Some(other) => {
                let o = if cli.peer_policy.is_some() { co } else { fo };
                return Err(err(o, format!("option `peer-policy`: expected \"default\" or \"recommended\", got {other:?}")));
            }
        }
        let unauth_burst = cli.unauth_burst.or(file.unauth_burst).unwrap_or(100);
        if unauth_burst == 0 {
            return Err(err(fo, "option `unauth-burst`: must be at least 1".into()));
        }

        let mut tls_listening_ports = match file.tls_listening_port {
            None => vec![],
            Some(Ports::One(p)) => vec![p],
            Some(Ports::Many(v)) => v,
        };
        if !cli.tls_listening_port.is_empty() {
            tls_listening_ports = cli.tls_listening_port.clone();
        }
        let explicit_tls_ports = !tls_listening_ports.is_empty();
        if tls_listening_ports.is_empty() {
            tls_listening_ports.push(DEFAULT_TLS_LISTENING_PORT);
        }
        let cert = cli.cert.clone().or(file.cert);
        let pkey = cli.pkey.clone().or(file.pkey);
        let no_tls = cli.no_tls || file.no_tls.unwrap_or(false);
        let _ = cli.no_dtls || file.no_dtls.unwrap_or(false);
        let tls = match (&cert, &pkey) {
            (Some(_), Some(_)) => !no_tls,
            (Some(_), None) => {
                return Err(err(
                    fo,
                    "option `cert`: needs `pkey` (the private key) too".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    fo,
                    "option `pkey`: needs `cert` (the certificate chain) too".into(),
                ))
            }
            (None, None) if explicit_tls_ports && !no_tls => {
                return Err(err(
                    fo,
                    "option `tls-listening-port`: needs `cert` and `pkey`".into(),
                ))
            }
            (None, None) => false,
        };
        let mut external_ips = Vec::new();
        let ext: Vec<(String, &str)> = file
            .external_ip
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v, fo))
            .chain(cli.external_ip.iter().map(|v| (v.clone(), co)))
            .collect();
        for (v, o) in ext {
            let (public, private) = match v.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (v.as_str(), None),
            };
            let bad = || {
                err(o, format!("option `external-ip`: expected PUBLIC or PUBLIC/PRIVATE addresses, got {v:?}"))
            };
            let public: IpAddr = public.trim().parse().map_err(|_| bad())?;
            let private: Option<IpAddr> = match private {
                Some(p) => Some(p.trim().parse().map_err(|_| bad())?),
                None => None,
            };
            if private.is_some_and(|p| p.is_ipv4() != public.is_ipv4()) {
                return Err(bad());
            }
            external_ips.push(ExternalIp { public, private });
        }
        let udp = !(cli.no_udp || file.no_udp.unwrap_or(false));
        let tcp = !(cli.no_tcp || file.no_tcp.unwrap_or(false));
        if !udp && !tcp && !tls {
            return Err(err(
                fo,
                "options `no-udp`, `no-tcp`, `no-tls`: every listener is off".into(),
            ));
        }

        let mut warnings = std::mem::take(&mut file_warnings);
        if file.syslog.unwrap_or(false) {
            warnings.push("option `syslog`: turnd logs to stderr (journald under systemd) or `log-file`; syslog is not used".into());
        }
        if cli.daemon {
            warnings.push("option `daemon` (-o): turnd stays in the foreground; run it under systemd (systemd/turnd.service)".into());
        }
        let relay_threads = cli.relay_threads.or(file.relay_threads).unwrap_or(0);
        if relay_threads > 1024 {
            return Err(err(
                fo,
                format!("option `relay-threads`: {relay_threads} workers is more than 1024"),
            ));
        }
        let socket_buffer = cli
            .socket_buffer
            .or(file.socket_buffer)
            .unwrap_or(DEFAULT_SOCKET_BUFFER);
        if !(4096..=1 << 30).contains(&socket_buffer) {
            return Err(err(
                fo,
                format!("option `socket-buffer`: {socket_buffer} bytes is outside 4096-1073741824"),
            ));
        }
        let _ = (file.no_multicast_peers, file.no_cli);
        let log_format = cli
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        let log_json = match log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(err(
                    fo,
                    format!("option `log-format`: expected \"text\" or \"json\", got {other:?}"),
                ))
            }
        };
        let prometheus_on = cli.prometheus || file.prometheus.unwrap_or(false);
        let prometheus = prometheus_on.then(|| {
            SocketAddr::new(
                cli.prometheus_address
                    .or(file.prometheus_address)
                    .unwrap_or(IpAddr::from([0, 0, 0, 0])),
                cli.prometheus_port.or(file.prometheus_port).unwrap_or(9641),
            )
        });
        let admin_token = cli
            .admin_token
            .clone()
            .or(file.admin_token)
            .filter(|t| !t.is_empty())
            .map(Secret);
        let stun_only = cli.stun_only || file.stun_only.unwrap_or(false);
        let no_stun = cli.no_stun || file.no_stun.unwrap_or(false);
        if stun_only && no_stun {
            return Err(err(
                fo,
                "options `stun-only` and `no-stun`: together they leave nothing to serve".into(),
            ));
        }

        Ok(Config {
            relay_threads: relay_threads as usize,
            socket_buffer,
            drain_timeout: Duration::from_secs(
                cli.drain_timeout.or(file.drain_timeout).unwrap_or(0),
            ),
            log_json,
            log_file: cli.log_file.clone().or(file.log_file),
            pidfile: cli.pidfile.clone().or(file.pidfile),
            prometheus,
            prometheus_username_labels: cli.prometheus_username_labels
                || file.prometheus_username_labels.unwrap_or(false),
            admin_token,
            admin_listen: cli
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9642))),
            no_stun,
            stun_only,
            warnings,
            tls_listening_ports,
            cert,
            pkey,
            external_ips,
            udp,
            tcp,
            tls,
            stream_idle_timeout: secs(
                cli.stream_idle_timeout,
                file.stream_idle_timeout,
                30,
                "stream-idle-timeout",
            )?,
            tls_handshake_timeout: secs(
                cli.tls_handshake_timeout,
                file.tls_handshake_timeout,
                10,
                "tls-handshake-timeout",
            )?,
            max_connections_per_ip: cli
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(256)
                .max(1),
            use_auth_secret,
            static_auth_secrets,
            rest_api_separator,
            userdb,
            max_bps: cli.max_bps.or(file.max_bps).unwrap_or(0),
            bps_capacity: cli.bps_capacity.or(file.bps_capacity).unwrap_or(0),
            stun_backward_compatibility: cli.stun_backward_compatibility
                || file.stun_backward_compatibility.unwrap_or(false),
            reason_phrases: cli.reason_phrases || file.reason_phrases.unwrap_or(false),
            unauth_rate: cli.unauth_rate.or(file.unauth_rate).unwrap_or(50),
            unauth_burst,
            auth_failures_per_minute: cli
                .auth_failures_per_minute
                .or(file.auth_failures_per_minute)
                .unwrap_or(10),
            listening_ips,
            listening_port,
            relay_ips,
            min_port,
            max_port,
            realm,
            users,
            policy,
            fingerprint: cli.fingerprint || file.fingerprint.unwrap_or(false),
            verbose: cli.verbose || file.verbose.unwrap_or(false),
            user_quota: cli.user_quota.or(file.user_quota).unwrap_or(0),
            total_quota: cli.total_quota.or(file.total_quota).unwrap_or(0),
            max_allocate_lifetime: secs(
                cli.max_allocate_lifetime,
                file.max_allocate_lifetime,
                3600,
                "max-allocate-lifetime",
            )?,
            permission_lifetime: secs(
                cli.permission_lifetime,
                file.permission_lifetime,
                300,
                "permission-lifetime",
            )?,
            channel_lifetime: secs(
                cli.channel_lifetime,
                file.channel_lifetime,
                600,
                "channel-lifetime",
            )?,
            stale_nonce: secs(cli.stale_nonce, file.stale_nonce, 600, "stale-nonce")?,
        })
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
            fingerprint: self.fingerprint,
            reason_phrases: self.reason_phrases,
            mapped_address: self.stun_backward_compatibility,
            unauth_rate: self.unauth_rate,
            unauth_burst: self.unauth_burst,
            auth_failures_per_minute: self.auth_failures_per_minute,
            max_bps: self.max_bps,
            bps_capacity: self.bps_capacity,
            external_ips: self
                .external_ips
                .iter()
                .map(|e| (e.private, e.public))
                .collect(),
            no_stun: self.no_stun,
            stun_only: self.stun_only,
            ..ServerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            let p = write(option, text);
            let e = Config::check_file(&p).unwrap_err().to_string();
            assert!(e.contains(option), "{text}: {e}");
        }
    }

    #[test]
    fn passwords_do_not_leak_through_debug() {
        let cli = Cli::parse_from(["turnd", "--user", "alice:hunter2"]);
        let c = Config::load(&cli).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
