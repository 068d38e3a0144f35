//! The command line: `turnd [OPTIONS]` runs the server, and the subcommands
//! (`check-config`, `credentials`, `probe`, `user`...) are tools around it.
//!
//! Every server option here has a TOML key of the same name (see
//! [`crate::config`], which merges the two, flags over file, and holds the
//! defaults the help text states).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{DEFAULT_LISTENING_PORT, DEFAULT_REST_API_SEPARATOR};

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
    /// Allocations on this node (all workers) beyond which Allocate is shed:
    /// 300 Try Alternate naming an `alternate-server`, or 508 without one; 0
    /// is no limit.
    #[arg(long = "max-allocations", value_name = "N")]
    pub max_allocations: Option<u32>,
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
    /// secrets rotate without downtime). Implies --use-auth-secret. Also
    /// read from TURND_STATIC_AUTH_SECRET (one secret), which keeps it out
    /// of the process list.
    #[arg(
        long = "static-auth-secret",
        value_name = "SECRET",
        env = "TURND_STATIC_AUTH_SECRET",
        hide_env_values = true
    )]
    pub static_auth_secret: Vec<String>,
    /// Separator between expiry time and user id in REST usernames (default ':').
    #[arg(short = 'C', long = "rest-api-separator", value_name = "CHAR")]
    pub rest_api_separator: Option<char>,
    /// SQLite user database (coturn's schema: turnusers_lt, turn_secret);
    /// changes are picked up by a running server within about a second.
    #[arg(short = 'b', long = "userdb", value_name = "FILE")]
    pub userdb: Option<PathBuf>,
    /// Users, REST secrets and revocations in Redis, coturn's schema
    /// (`redis://[:PASSWORD@]HOST[:PORT][/DB]` or coturn's
    /// "ip=HOST port=PORT dbname=DB password=PW connect_timeout=SECONDS").
    #[arg(short = 'N', long = "redis-userdb", value_name = "CONNECTION")]
    pub redis_userdb: Option<String>,
    /// Where the fleet's allocation registry and user-quota counts live
    /// (same forms; default: the `redis-userdb` server).
    #[arg(short = 'O', long = "redis-statsdb", value_name = "CONNECTION")]
    pub redis_statsdb: Option<String>,
    /// This node's name in the fleet (default: the host name).
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_name: Option<String>,
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
    /// IPv6 sources share the per-source limits (--unauth-rate,
    /// --auth-failures-per-minute) by this prefix length in bits, 0 to 128
    /// (default 64: one /64, what one host or subscriber usually gets; 128
    /// counts each address on its own).
    #[arg(long = "ipv6-source-prefix", value_name = "BITS")]
    pub ipv6_source_prefix: Option<u8>,
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
    /// Another node of the fleet for UDP and TCP clients: while this one
    /// drains, Allocate is answered 300 Try Alternate with ALTERNATE-SERVER
    /// pointing at one of these (same address family as the client, round
    /// robin; default port 3478; repeatable).
    #[arg(long = "alternate-server", value_name = "IP[:PORT]")]
    pub alternate_server: Vec<String>,
    /// The same for TLS clients (default port 5349; repeatable).
    #[arg(long = "tls-alternate-server", value_name = "IP[:PORT]")]
    pub tls_alternate_server: Vec<String>,
    /// Only these clients are answered (IP, CIDR or FIRST-LAST; repeatable):
    /// anyone else's messages are dropped unanswered.
    #[arg(long = "allowed-client-ip", value_name = "RANGE")]
    pub allowed_client_ip: Vec<String>,
    /// Clients never answered, even inside `allowed-client-ip` (IP, CIDR or
    /// FIRST-LAST; repeatable).
    #[arg(long = "denied-client-ip", value_name = "RANGE")]
    pub denied_client_ip: Vec<String>,
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
    /// Seconds a TCP/TLS connection has, from accept, to get an allocation
    /// or bind an RFC 6062 data connection before it is closed (default 10).
    #[arg(long = "stream-auth-timeout", value_name = "SECONDS")]
    pub stream_auth_timeout: Option<u64>,
    /// Concurrent TCP/TLS client connections in all; more are closed at
    /// accept (default 10000).
    #[arg(long = "max-connections", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Every TCP/TLS connection starts with a PROXY protocol header (v1 or
    /// v2, HAProxy's) from a load balancer in `proxy-protocol-trusted`; the
    /// client address it carries is the client's. Needs
    /// `--proxy-protocol-trusted`.
    #[arg(long = "proxy-protocol")]
    pub proxy_protocol: bool,
    /// Load balancers allowed to send PROXY headers (IP, CIDR or
    /// FIRST-LAST; repeatable); connections from anyone else are closed
    /// unanswered while `proxy-protocol` is on.
    #[arg(long = "proxy-protocol-trusted", value_name = "RANGE")]
    pub proxy_protocol_trusted: Vec<String>,
    /// The XDP fast path for ChannelData over UDP: "off" (default),
    /// "generic" or "native" (needs the `xdp` build feature, root or
    /// CAP_BPF + CAP_NET_ADMIN, specific listening-ip and relay-ip, and
    /// forwarding on the interfaces).
    #[arg(long = "xdp", value_name = "MODE")]
    pub xdp: Option<String>,
    /// An interface the XDP fast path attaches to (repeatable). Default:
    /// every interface that carries a listening or relay address.
    #[arg(long = "xdp-interface", value_name = "NAME")]
    pub xdp_interface: Vec<String>,
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
    /// Address of the Prometheus listener (default 127.0.0.1; `/metrics` has no authentication).
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
        #[arg(long, default_value_t = DEFAULT_REST_API_SEPARATOR)]
        separator: char,
        /// TURN URL for the snippet.
        #[arg(long, default_value_t = format!("turn:127.0.0.1:{DEFAULT_LISTENING_PORT}?transport=udp"))]
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
    /// Manage users in the SQLite or Redis user database (like coturn's turnadmin).
    User {
        /// Which database, and the realm.
        #[command(flatten)]
        db: UserDbArgs,
        /// What to do.
        #[command(subcommand)]
        command: crate::userdb::UserCommand,
    },
    /// Manage TURN REST API secrets in the SQLite or Redis user database.
    Secret {
        /// Which database, and the realm.
        #[command(flatten)]
        db: UserDbArgs,
        /// What to do.
        #[command(subcommand)]
        command: crate::userdb::SecretCommand,
    },
}

/// The user database `turnd user` and `turnd secret` work on: a SQLite
/// file or a Redis server, and the realm.
#[derive(Debug, Clone, clap::Args)]
pub struct UserDbArgs {
    /// The SQLite database file.
    #[arg(
        long,
        short = 'b',
        required_unless_present = "redis_userdb",
        conflicts_with = "redis_userdb"
    )]
    pub userdb: Option<PathBuf>,
    /// The Redis user database (coturn's schema; `redis://...` or coturn's
    /// "ip=... port=... dbname=... password=..."); changes reach every node
    /// of the fleet within a second.
    #[arg(long = "redis-userdb", short = 'N', value_name = "CONNECTION")]
    pub redis_userdb: Option<String>,
    /// The realm.
    #[arg(long, short = 'r')]
    pub realm: String,
}
