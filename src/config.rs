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

use crate::auth::Credentials;
use crate::turn::{IpRange, PeerPolicy, ServerConfig};

/// Default STUN/TURN port over UDP and TCP. See RFC 8489, section 9.
pub const DEFAULT_LISTENING_PORT: u16 = 3478;
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
    /// (repeatable; first of each family used). Default: the listening IP, or the
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
    #[arg(long = "user-quota", value_name = "N")]
    pub user_quota: Option<u32>,
    /// Concurrent allocations in all; 0 is unlimited (486 when reached).
    #[arg(long = "total-quota", value_name = "N")]
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

/// A static user: name and password (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticUser {
    /// Username.
    pub name: String,
    /// Plaintext password.
    pub password: String,
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
}

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

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| err(&origin, format!("cannot read: {e}")))?;
    toml::from_str(&text).map_err(|e| err(&origin, e.to_string().trim_end().replace('\n', " ")))
}

impl Config {
    /// Loads the file named by `cli.config` (if any) and applies the flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file (or "command line"), the option and why.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
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
            .or(file.realm)
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
        let policy = PeerPolicy {
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
        Ok(Config {
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

    /// The core's settings; `relay_ips` must be resolved (non-empty) by then.
    pub fn server_config(&self) -> ServerConfig {
        let mut credentials = Credentials::new();
        for u in &self.users {
            credentials.add_user(&u.name, &self.realm, &u.password);
        }
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
