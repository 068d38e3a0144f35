//! Reader for coturn's `turnserver.conf`, so a coturn deployment moves to
//! turnd with its configuration file unchanged.
//!
//! # The format
//!
//! coturn reads one option per line, named as its long command-line option
//! (`src/apps/relay/mainrelay.c`, `read_config_file` and `parse_arg_string`):
//!
//! - `key=value`, `key = value` and `key value`: the key ends at the first
//!   space, tab or `=`, and every space, tab and `=` after it is skipped.
//! - a bare key is a flag set to true (`fingerprint`, `lt-cred-mech`); a flag
//!   also takes a boolean value (`fingerprint=0`, `no-tls=yes`).
//! - a line whose first non-blank character is `#` is a comment.
//! - a value in double quotes has them stripped (`cipher-list="DEFAULT"`).
//! - a repeated key adds to list options (`user`, `listening-ip`,
//!   `static-auth-secret`...); for the others the last line wins.
//! - keys are case-sensitive: `verbose` and `Verbose` are different options.
//!
//! turnd is more lenient than coturn 4.6 in two ways, both for files
//! written from tutorials:
//!
//! - A `#` preceded by a space or tab (outside double quotes) starts a
//!   comment: `min-port=49152   # relay ports` is `min-port=49152`. coturn
//!   keeps such text in the value (so `realm=a.example  #comment` becomes the
//!   realm `a.example  #comment` there); a `#` not preceded by a blank
//!   (`cli-password=ab#c`) stays part of the value.
//! - Leading dashes on keys are stripped (`--fingerprint`); coturn logs
//!   "Bad configuration format" and ignores such a line.
//!
//! turnd is stricter in one: a value that is not of the option's type
//! (`min-port=abc`, `fingerprint=maybe`) is a [`CoturnConfError`] naming the
//! line and the option, where coturn's `atoi` would read 0.
//!
//! # Use
//!
//! [`parse`] gives every recognised option as a typed TOML value keyed by its
//! coturn name ([`CoturnConf::table`]), which is turnd's own TOML key where
//! turnd has the option. [`split_supported`] keeps the keys turnd supports and
//! turns the rest into warnings; [`to_toml`] writes the equivalent TOML file.
//! [`SHORT_FLAGS`] and [`expand_short_flags`] translate coturn's short
//! command-line flags (`-a -u user:pw -r realm`).

use std::ffi::OsString;
use std::fmt::Write as _;

/// A coturn config read into typed TOML values keyed by coturn option name.
///
/// Flags are booleans, ports, quotas and lifetimes integers, repeatable
/// options (see the module docs) arrays of strings, the rest strings. `Debug`
/// prints `<redacted>` for passwords, secrets and database connection strings.
#[derive(Clone, Default, PartialEq)]
pub struct CoturnConf {
    /// Every recognised option, typed: booleans for flags, integers for
    /// ports/quotas/lifetimes, strings, arrays for repeatable options.
    pub table: toml::Table,
    /// Options present in the file that are not coturn options we recognise
    /// at all: (line number, counted from 1; key, without leading dashes).
    pub unknown: Vec<(usize, String)>,
}

impl std::fmt::Debug for CoturnConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut table = self.table.clone();
        for (key, value) in table.iter_mut() {
            if is_secret(key) {
                *value = redacted(value);
            }
        }
        f.debug_struct("CoturnConf")
            .field("table", &table)
            .field("unknown", &self.unknown)
            .finish()
    }
}

/// A line of a coturn config that cannot be read. The message names the line
/// (counted from 1) and the option, and never contains a password or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoturnConfError {
    /// The option's value is not of the type coturn gives it, or is missing.
    #[error("line {line}: option `{option}`: {why}")]
    InvalidValue {
        /// Line number, from 1.
        line: usize,
        /// The option, as coturn names it.
        option: String,
        /// What was expected and what came (the value is shown only for
        /// numbers and booleans).
        why: String,
    },
    /// The line is not `key`, `key=value` or `key value`.
    #[error("line {line}: {why}: {text:?}")]
    Syntax {
        /// Line number, from 1.
        line: usize,
        /// The line as written (only for lines that name no option).
        text: String,
        /// What is wrong.
        why: String,
    },
}

/// The type coturn gives an option's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A flag: bare means true; takes coturn's boolean spellings.
    Bool,
    /// A port number, 0 to 65535.
    Port,
    /// A non-negative integer.
    Int,
    /// Seconds; bare means coturn's default (`stale-nonce` alone is 600).
    Seconds(i64),
    /// A string.
    Str,
    /// A string that may be given many times.
    List,
}

/// Every option coturn 4.6 reads from its config file (its `long_options`
/// table, minus `version`), in coturn's order, plus the few options that
/// only turnd has (marked), so one `.conf` file can hold both.
const OPTIONS: &[(&str, Kind)] = &[
    ("listening-device", Kind::Str),
    ("listening-port", Kind::Port),
    ("tls-listening-port", Kind::Port),
    ("alt-listening-port", Kind::Port),
    ("alt-tls-listening-port", Kind::Port),
    ("tcp-proxy-port", Kind::Port),
    ("listening-ip", Kind::List),
    ("relay-device", Kind::Str),
    ("relay-ip", Kind::List),
    ("external-ip", Kind::List),
    ("relay-threads", Kind::Int),
    ("min-port", Kind::Port),
    ("max-port", Kind::Port),
    ("lt-cred-mech", Kind::Bool),
    ("no-auth", Kind::Bool),
    ("user", Kind::List),
    ("userdb", Kind::Str),
    ("psql-userdb", Kind::Str),
    ("mysql-userdb", Kind::Str),
    ("mongo-userdb", Kind::Str),
    ("redis-userdb", Kind::Str),
    ("redis-statsdb", Kind::Str),
    ("prometheus", Kind::Bool),
    ("prometheus-port", Kind::Port),
    ("prometheus-address", Kind::Str),
    ("prometheus-username-labels", Kind::Bool),
    ("use-auth-secret", Kind::Bool),
    ("static-auth-secret", Kind::List),
    ("no-auth-pings", Kind::Bool),
    ("no-dynamic-ip-list", Kind::Bool),
    ("no-dynamic-realms", Kind::Bool),
    ("realm", Kind::Str),
    ("server-name", Kind::Str),
    ("oauth", Kind::Bool),
    ("user-quota", Kind::Int),
    ("total-quota", Kind::Int),
    ("max-bps", Kind::Int),
    ("bps-capacity", Kind::Int),
    ("verbose", Kind::Bool),
    ("Verbose", Kind::Bool),
    ("daemon", Kind::Bool),
    ("no-software-attribute", Kind::Bool),
    ("software-attribute", Kind::Bool),
    ("fingerprint", Kind::Bool),
    ("check-origin-consistency", Kind::Bool),
    ("no-udp", Kind::Bool),
    ("no-tcp", Kind::Bool),
    ("no-tls", Kind::Bool),
    ("no-dtls", Kind::Bool),
    ("no-udp-relay", Kind::Bool),
    ("no-tcp-relay", Kind::Bool),
    ("stale-nonce", Kind::Seconds(600)),
    ("max-allocate-lifetime", Kind::Seconds(3600)),
    ("channel-lifetime", Kind::Seconds(600)),
    ("permission-lifetime", Kind::Seconds(300)),
    ("stun-only", Kind::Bool),
    ("no-stun", Kind::Bool),
    ("cert", Kind::Str),
    ("raw-public-keys", Kind::Bool),
    ("pkey", Kind::Str),
    ("pkey-pwd", Kind::Str),
    ("log-file", Kind::Str),
    ("no-stdout-log", Kind::Bool),
    ("syslog", Kind::Bool),
    ("simple-log", Kind::Bool),
    ("new-log-timestamp", Kind::Bool),
    ("new-log-timestamp-format", Kind::Str),
    ("aux-server", Kind::List),
    ("udp-self-balance", Kind::Bool),
    ("alternate-server", Kind::List),
    ("tls-alternate-server", Kind::List),
    ("rest-api-separator", Kind::Str),
    ("max-allocate-timeout", Kind::Int),
    ("no-multicast-peers", Kind::Bool),
    ("allow-loopback-peers", Kind::Bool),
    ("allowed-peer-ip", Kind::List),
    ("denied-peer-ip", Kind::List),
    ("cipher-list", Kind::Str),
    ("pidfile", Kind::Str),
    ("secure-stun", Kind::Bool),
    ("CA-file", Kind::Str),
    ("dh-file", Kind::Str),
    ("proc-user", Kind::Str),
    ("proc-group", Kind::Str),
    ("mobility", Kind::Bool),
    ("no-cli", Kind::Bool),
    ("cli-ip", Kind::Str),
    ("cli-port", Kind::Port),
    ("cli-password", Kind::Str),
    ("web-admin", Kind::Bool),
    ("web-admin-ip", Kind::Str),
    ("web-admin-port", Kind::Port),
    ("web-admin-listen-on-workers", Kind::Bool),
    ("server-relay", Kind::Bool),
    ("cli-max-output-sessions", Kind::Int),
    ("ec-curve-name", Kind::Str),
    ("dh566", Kind::Bool),
    ("dh1066", Kind::Bool),
    ("ne", Kind::Int),
    ("no-tlsv1", Kind::Bool),
    ("no-tlsv1_1", Kind::Bool),
    ("no-tlsv1_2", Kind::Bool),
    ("secret-key-file", Kind::Str),
    ("keep-address-family", Kind::Bool),
    ("allocation-default-address-family", Kind::Str),
    ("acme-redirect", Kind::Str),
    ("log-binding", Kind::Bool),
    ("no-rfc5780", Kind::Bool),
    ("no-stun-backward-compatibility", Kind::Bool),
    ("response-origin-only-with-rfc5780", Kind::Bool),
    ("respond-http-unsupported", Kind::Bool),
    ("syslog-facility", Kind::Str),
    // turnd's own options (not coturn's).
    ("stun-backward-compatibility", Kind::Bool),
    ("reason-phrases", Kind::Bool),
    ("peer-policy", Kind::Str),
    ("allowed-client-ip", Kind::List),
    ("denied-client-ip", Kind::List),
    ("max-allocations", Kind::Int),
    ("unauth-rate", Kind::Int),
    ("unauth-burst", Kind::Int),
    ("auth-failures-per-minute", Kind::Int),
    ("ipv6-source-prefix", Kind::Int),
    ("stream-idle-timeout", Kind::Int),
    ("tls-handshake-timeout", Kind::Int),
    ("max-connections-per-ip", Kind::Int),
    ("stream-auth-timeout", Kind::Int),
    ("max-connections", Kind::Int),
    ("proxy-protocol", Kind::Bool),
    ("proxy-protocol-trusted", Kind::List),
    ("log-format", Kind::Str),
    ("drain-timeout", Kind::Int),
    ("socket-buffer", Kind::Int),
    ("admin-token", Kind::Str),
    ("admin-listen", Kind::Str),
    ("xdp", Kind::Str),
    ("xdp-interfaces", Kind::List),
];

/// Other names coturn accepts for an option: (alias, option).
const ALIASES: &[(&str, &str)] = &[
    ("db", "userdb"),
    ("sql-userdb", "psql-userdb"),
    // coturn's --help: "--no-software-attribute ... (formerly --prod)".
    ("prod", "no-software-attribute"),
];

/// Options whose values are passwords, secrets or connection strings (which
/// may hold database passwords): never shown in `Debug`, warnings or comments.
const SECRETS: &[&str] = &[
    "user",
    "static-auth-secret",
    "pkey-pwd",
    "cli-password",
    "psql-userdb",
    "mysql-userdb",
    "mongo-userdb",
    "redis-userdb",
    "redis-statsdb",
    "admin-token",
];

/// Flags that, when on, ask for what turnd does anyway, with why: no
/// warning for them.
const ALREADY_SO: &[(&str, &str)] = &[
    ("lt-cred-mech", "turnd always uses long-term credentials"),
    ("no-cli", "turnd has no telnet CLI"),
    ("no-rfc5780", "turnd does not implement RFC 5780"),
    (
        "response-origin-only-with-rfc5780",
        "turnd does not implement RFC 5780",
    ),
    (
        "no-stun-backward-compatibility",
        "turnd sends MAPPED-ADDRESS only with `stun-backward-compatibility`",
    ),
    ("no-software-attribute", "turnd sends no SOFTWARE attribute"),
    (
        "no-multicast-peers",
        "turnd denies multicast peers by default",
    ),
    ("no-tcp-relay", "turnd has no TCP relays"),
    (
        "no-tlsv1",
        "turnd's TLS listeners take only TLS 1.2 and 1.3",
    ),
    (
        "no-tlsv1_1",
        "turnd's TLS listeners take only TLS 1.2 and 1.3",
    ),
];

/// Why an unsupported option matters, for the options where that is worth a
/// sentence. (Only for options turnd does not take: the tests check that no
/// hint outlives the option's support.)
const HINTS: &[(&str, &str)] = &[
    ("no-auth", "turnd always requires credentials"),
    (
        "alt-tls-listening-port",
        "list every TLS port in `tls-listening-port`",
    ),
    (
        "no-stdout-log",
        "turnd logs to stderr (the journal under systemd) or to `log-file`",
    ),
    (
        "simple-log",
        "turnd logs to stderr (the journal under systemd) or to `log-file`",
    ),
    (
        "daemon",
        "run turnd under systemd (systemd/turnd.service) instead",
    ),
    (
        "proc-user",
        "run turnd under systemd (systemd/turnd.service), which sets the user",
    ),
    (
        "proc-group",
        "run turnd under systemd (systemd/turnd.service), which sets the group",
    ),
    (
        "psql-userdb",
        "only SQLite (`userdb`) and Redis (`redis-userdb`) user databases are supported",
    ),
    (
        "mysql-userdb",
        "only SQLite (`userdb`) and Redis (`redis-userdb`) user databases are supported",
    ),
    (
        "mongo-userdb",
        "only SQLite (`userdb`) and Redis (`redis-userdb`) user databases are supported",
    ),
    (
        "listening-device",
        "use `listening-ip` with the device's address",
    ),
    ("relay-device", "use `relay-ip` with the device's address"),
];

fn kind_of(name: &str) -> Option<Kind> {
    OPTIONS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The option's name as `'static` (None for a key this reader does not know).
fn static_name(name: &str) -> Option<&'static str> {
    OPTIONS.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)
}

fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, option)| option)
}

fn is_secret(name: &str) -> bool {
    SECRETS.contains(&name)
}

fn redacted(value: &toml::Value) -> toml::Value {
    match value {
        toml::Value::Array(a) => toml::Value::Array(
            a.iter()
                .map(|_| toml::Value::String("<redacted>".into()))
                .collect(),
        ),
        _ => toml::Value::String("<redacted>".into()),
    }
}

/// Whether `name` (or an alias of it, such as `db` for `userdb`) is an option
/// this reader recognises: every coturn 4.6 config option, plus turnd's own.
pub fn is_known_option(name: &str) -> bool {
    kind_of(canonical(name)).is_some()
}

/// The line without its comment: from a `#` at the start or after a space or
/// tab, outside double quotes. Trimmed.
fn strip_comment(line: &str) -> &str {
    let mut in_quotes = false;
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '#' if !in_quotes && prev_blank => return line[..i].trim(),
            _ => {}
        }
        prev_blank = c == ' ' || c == '\t';
    }
    line.trim()
}

/// coturn's `parse_arg_string`: the key ends at the first space, tab or `=`;
/// then every space, tab and `=` is skipped.
fn split_key_value(line: &str) -> (&str, &str) {
    let is_sep = |c: char| c == ' ' || c == '\t' || c == '=';
    match line.find(is_sep) {
        Some(i) => (&line[..i], line[i..].trim_start_matches(is_sep)),
        None => (line, ""),
    }
}

/// coturn's `get_bool_value`: empty is true; then by the first character
/// (`0`, `n`, `f` false; `1`-`9`, `y`, `t` true) or `on`/`off`.
fn parse_bool(value: &str) -> Option<bool> {
    let first = value.chars().next()?;
    match first {
        '0' | 'n' | 'N' | 'f' | 'F' => Some(false),
        '1'..='9' | 'y' | 'Y' | 't' | 'T' => Some(true),
        _ if value.eq_ignore_ascii_case("on") => Some(true),
        _ if value.eq_ignore_ascii_case("off") => Some(false),
        _ => None,
    }
}

/// Reads a coturn `turnserver.conf` (see the module docs for the format).
///
/// Unknown keys are collected in [`CoturnConf::unknown`], not errors: coturn
/// itself warns and goes on.
///
/// # Errors
/// [`CoturnConfError`] for the first line whose value is not of its option's
/// type (`min-port=abc`: integer expected), a string or list option without
/// a value, an unterminated double quote, or a line with no key (`=x`).
pub fn parse(text: &str) -> Result<CoturnConf, CoturnConfError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut conf = CoturnConf::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = strip_comment(raw);
        if content.is_empty() {
            continue;
        }
        let (key, value) = split_key_value(content);
        let key = key.trim_start_matches('-');
        if key.is_empty() {
            return Err(CoturnConfError::Syntax {
                line,
                text: if content.contains(['=', ' ', '\t']) {
                    "<line without an option name>".to_owned()
                } else {
                    content.to_owned()
                },
                why: "expected `option`, `option=value` or `option value`".into(),
            });
        }
        let key = canonical(key);
        let Some(kind) = kind_of(key) else {
            conf.unknown.push((line, key.to_owned()));
            continue;
        };
        let invalid = |why: String| CoturnConfError::InvalidValue {
            line,
            option: key.to_owned(),
            why,
        };
        let value = match value.strip_prefix('"') {
            Some(rest) => rest
                .strip_suffix('"')
                .ok_or_else(|| invalid("unterminated double quote".into()))?,
            None => value,
        };
        let typed = match kind {
            Kind::Bool if value.is_empty() => toml::Value::Boolean(true),
            Kind::Bool => toml::Value::Boolean(parse_bool(value).ok_or_else(|| {
                invalid(format!(
                    "expected a boolean (on/off, yes/no, true/false, 1/0), got {value:?}"
                ))
            })?),
            Kind::Seconds(default) if value.is_empty() => toml::Value::Integer(default),
            Kind::Int | Kind::Port | Kind::Seconds(_) => {
                let n: i64 = value.parse().map_err(|_| {
                    if value.is_empty() {
                        invalid("expected an integer, got nothing".into())
                    } else {
                        invalid(format!("expected an integer, got {value:?}"))
                    }
                })?;
                if n < 0 {
                    return Err(invalid(format!("expected a non-negative integer, got {n}")));
                }
                if kind == Kind::Port && n > 65535 {
                    return Err(invalid(format!("expected a port number 0-65535, got {n}")));
                }
                toml::Value::Integer(n)
            }
            Kind::Str | Kind::List if value.is_empty() => {
                return Err(invalid("expected a value, got nothing".into()));
            }
            Kind::Str | Kind::List => toml::Value::String(value.to_owned()),
        };
        if kind == Kind::List {
            let entry = conf
                .table
                .entry(key.to_owned())
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(list) = entry {
                list.push(typed);
            }
        } else {
            conf.table.insert(key.to_owned(), typed);
        }
    }
    Ok(conf)
}

/// The table's keys in coturn's option order, then any others by name.
fn ordered_keys(table: &toml::Table) -> Vec<&str> {
    let mut keys: Vec<&str> = OPTIONS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| table.contains_key(*name))
        .collect();
    keys.extend(
        table
            .keys()
            .map(String::as_str)
            .filter(|k| kind_of(k).is_none()),
    );
    keys
}

/// What became of one option of the file.
enum Fate {
    /// Kept under this key (`Verbose` becomes `verbose`).
    Keep(&'static str, toml::Value),
    /// Dropped silently: turnd does this anyway, or the flag is off.
    Moot(String),
    /// Dropped with a warning; the note is the short form for comments.
    Ignored { warning: String, note: String },
}

fn fate(key: &str, value: &toml::Value, table: &toml::Table, supported: &[&str]) -> Fate {
    let is_supported = |k: &str| supported.contains(&k);
    if key == "stale-nonce" && value.as_integer() == Some(0) && is_supported(key) {
        let lifetime = crate::auth::DEFAULT_NONCE_LIFETIME.as_secs();
        return Fate::Ignored {
            warning: format!("coturn option `stale-nonce=0` (nonces never expire) is not supported by turnd and is ignored: nonces last {lifetime} s"),
            note: format!("nonces that never expire are not supported by turnd: nonces last {lifetime} s"),
        };
    }
    if is_supported(key) {
        if let Some(name) = static_name(key) {
            return Fate::Keep(name, value.clone());
        }
    }
    // Translations to turnd's equivalent option.
    if key == "Verbose" && value.as_bool() == Some(true) && is_supported("verbose") {
        if !table.contains_key("verbose") {
            return Fate::Keep("verbose", toml::Value::Boolean(true));
        }
        return Fate::Moot(
            "extra verbose: turnd's `verbose` is set; RUST_LOG=trace gives more".into(),
        );
    }
    if key == "no-stun-backward-compatibility"
        && value.as_bool() == Some(false)
        && is_supported("stun-backward-compatibility")
        && !table.contains_key("stun-backward-compatibility")
    {
        return Fate::Keep("stun-backward-compatibility", toml::Value::Boolean(true));
    }
    if value.as_bool() == Some(false) {
        return Fate::Moot("off, as without it".into());
    }
    if value.as_bool() == Some(true) {
        if let Some((_, why)) = ALREADY_SO.iter().find(|(name, _)| *name == key) {
            return Fate::Moot(format!("not needed: {why}"));
        }
    }
    let hint = HINTS
        .iter()
        .find(|(name, _)| *name == key)
        .map_or(String::new(), |(_, why)| format!(": {why}"));
    Fate::Ignored {
        warning: format!("coturn option `{key}` is not supported by turnd and is ignored{hint}"),
        note: format!("not supported by turnd{hint}"),
    }
}

/// Splits `conf.table` into the keys turnd supports (`supported`) and the
/// rest, which become warnings naming each option; returns (supported-only
/// table, warnings as human sentences like "coturn option `cli-password` is
/// not supported by turnd and is ignored").
///
/// Besides the keys in `supported`:
/// - a flag that is off (`no-udp=0`), or on where turnd does that anyway
///   (`no-cli`, `no-rfc5780`, `no-stun-backward-compatibility`,
///   `lt-cred-mech`...), is dropped without a warning;
/// - `Verbose` (coturn's extra verbose) becomes `verbose`, and
///   `no-stun-backward-compatibility=0` becomes
///   `stun-backward-compatibility = true`, where those are supported and not
///   set;
/// - `stale-nonce=0` (coturn: nonces never expire) is dropped with a warning;
/// - every line in [`CoturnConf::unknown`] gets a warning too
///   ("line 12: `foo` is not a coturn option and is ignored").
///
/// Warnings name options, never their values.
pub fn split_supported(conf: &CoturnConf, supported: &[&str]) -> (toml::Table, Vec<String>) {
    let mut table = toml::Table::new();
    let mut warnings = Vec::new();
    for key in ordered_keys(&conf.table) {
        let value = &conf.table[key];
        match fate(key, value, &conf.table, supported) {
            Fate::Keep(k, v) => {
                table.insert(k.to_owned(), v);
            }
            Fate::Moot(_) => {}
            Fate::Ignored { warning, .. } => warnings.push(warning),
        }
    }
    for (line, key) in &conf.unknown {
        warnings.push(format!(
            "line {line}: `{key}` is not a coturn option and is ignored"
        ));
    }
    (table, warnings)
}

fn toml_line(key: &str, value: &toml::Value) -> String {
    format!("{key} = {value}")
}

/// The TOML equivalent (for `turnd convert-config FILE`): supported keys as
/// TOML, plus a comment line per unsupported option.
///
/// The supported keys are those [`split_supported`] keeps, in coturn's option
/// order; every other option becomes a commented-out line saying why
/// (`# external-ip = ["203.0.113.10"]  # not supported by turnd: ...`), with
/// passwords, secrets and connection strings shown as `<redacted>`; unknown
/// lines are listed last. The output reads back as TOML into exactly
/// `split_supported(conf, supported).0`.
pub fn to_toml(conf: &CoturnConf, supported: &[&str]) -> String {
    let mut kept = String::new();
    let mut dropped = String::new();
    let mut moot = String::new();
    for key in ordered_keys(&conf.table) {
        let value = &conf.table[key];
        let shown = if is_secret(key) {
            redacted(value)
        } else {
            value.clone()
        };
        match fate(key, value, &conf.table, supported) {
            Fate::Keep(k, v) => {
                if k != key {
                    let _ = writeln!(kept, "# from coturn's `{}`", toml_line(key, value));
                }
                let _ = writeln!(kept, "{}", toml_line(k, &v));
            }
            Fate::Moot(why) => {
                let _ = writeln!(moot, "# {}  # {why}", toml_line(key, &shown));
            }
            Fate::Ignored { note, .. } => {
                let _ = writeln!(dropped, "# {}  # {note}", toml_line(key, &shown));
            }
        }
    }
    let mut out = String::from("# turnd configuration converted from a coturn turnserver.conf.\n");
    out.push_str(&kept);
    if !dropped.is_empty() {
        out.push_str("\n# coturn options turnd does not support (ignored):\n");
        out.push_str(&dropped);
    }
    if !moot.is_empty() {
        out.push_str("\n# coturn options with no effect in turnd:\n");
        out.push_str(&moot);
    }
    if !conf.unknown.is_empty() {
        out.push_str("\n# lines that name no coturn option (ignored):\n");
        for (line, key) in &conf.unknown {
            // Escaped: the line is any text, and TOML comments may not
            // hold control characters.
            let _ = writeln!(out, "# line {line}: `{}`", key.escape_debug());
        }
    }
    out
}

/// coturn's short command-line flags and the long option each stands for,
/// as in coturn 4.6's getopt string
/// `c:d:p:L:E:X:i:m:l:r:u:b:B:e:M:J:N:O:q:Q:s:C:K:A:vVofhznaS` and its
/// `turnserver -h` text.
///
/// `-c FILE` (the config file) has no long form in coturn; it maps to turnd's
/// `config`. `-n` (read no config file) has none anywhere and is not listed:
/// [`expand_short_flags`] drops it. Note `-s` is `max-bps` and `-S`
/// `stun-only` (not `static-auth-secret`), `-b` is `userdb`, `-V` is
/// `Verbose` (extra verbose), `-o` is `daemon`.
pub const SHORT_FLAGS: &[(char, &str)] = &[
    ('c', "config"),
    ('d', "listening-device"),
    ('p', "listening-port"),
    ('L', "listening-ip"),
    ('E', "relay-ip"),
    ('X', "external-ip"),
    ('i', "relay-device"),
    ('m', "relay-threads"),
    ('l', "log-file"),
    ('r', "realm"),
    ('u', "user"),
    ('b', "userdb"),
    ('B', "bps-capacity"),
    ('e', "psql-userdb"),
    ('M', "mysql-userdb"),
    ('J', "mongo-userdb"),
    ('N', "redis-userdb"),
    ('O', "redis-statsdb"),
    ('q', "user-quota"),
    ('Q', "total-quota"),
    ('s', "max-bps"),
    ('C', "rest-api-separator"),
    ('K', "keep-address-family"),
    ('A', "allocation-default-address-family"),
    ('v', "verbose"),
    ('V', "Verbose"),
    ('o', "daemon"),
    ('f', "fingerprint"),
    ('h', "help"),
    ('z', "no-auth"),
    ('a', "lt-cred-mech"),
    ('S', "stun-only"),
];

/// The short flags that take a value (a `:` after them in coturn's getopt
/// string). `-K` takes one there although `--keep-address-family` is a flag.
const SHORT_WITH_VALUE: &str = "cdpLEXimlrubBeMJNOqQsCKA";

/// Whether long option `name` is followed by a value in a separate argument.
/// `Some(true)`: always; `Some(false)`: never; `None`: only if the next
/// argument does not start with `-` (coturn's optional seconds).
fn long_takes_value(name: &str) -> Option<bool> {
    if name == "config" {
        return Some(true);
    }
    match kind_of(canonical(name)) {
        Some(Kind::Bool) | None => Some(false),
        Some(Kind::Seconds(_)) => None,
        Some(_) => Some(true),
    }
}

/// Rewrites coturn's short flags in a command line (`args[0]` is the program
/// name) into long options: `-a -u lqf:123456 -r example.org` becomes
/// `--lt-cred-mech --user lqf:123456 --realm example.org`.
///
/// Follows getopt: flags group (`-avf`), a value is attached (`-ualice:pw`)
/// or the next argument; `-n` is dropped (turnd reads a config file only
/// when given one). Long options and their values pass unchanged, an
/// argument with a short flag coturn does not have stays as written (so the
/// parser reports it), and rewriting stops at `--` or at the first argument
/// that is not an option (a subcommand), so subcommands keep their own flags.
pub fn expand_short_flags<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into).peekable();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let Some(s) = arg.to_str() else {
            out.push(arg);
            out.extend(args);
            break;
        };
        if s == "--" || !s.starts_with('-') || s == "-" {
            out.push(arg);
            out.extend(args);
            break;
        }
        if let Some(long) = s.strip_prefix("--") {
            let takes = if long.contains('=') {
                Some(false)
            } else {
                long_takes_value(long)
            };
            out.push(arg.clone());
            match takes {
                Some(false) => {}
                Some(true) => out.extend(args.next()),
                None => {
                    if args
                        .peek()
                        .is_some_and(|next| !next.to_str().is_some_and(|n| n.starts_with('-')))
                    {
                        out.extend(args.next());
                    }
                }
            }
            continue;
        }
        match expand_cluster(&s[1..]) {
            Some((longs, needs_next)) => {
                out.extend(longs.into_iter().map(OsString::from));
                if needs_next {
                    out.extend(args.next());
                }
            }
            None => out.push(arg),
        }
    }
    out
}

/// One group of short flags (without its `-`): the long arguments, and
/// whether the last flag's value is the next argument. `None` when a flag is
/// not coturn's.
fn expand_cluster(cluster: &str) -> Option<(Vec<String>, bool)> {
    let mut out = Vec::new();
    for (i, c) in cluster.char_indices() {
        if c == 'n' {
            continue;
        }
        let long = SHORT_FLAGS.iter().find(|(f, _)| *f == c)?.1;
        out.push(format!("--{long}"));
        if SHORT_WITH_VALUE.contains(c) {
            let attached = &cluster[i + c.len_utf8()..];
            if attached.is_empty() {
                return Some((out, true));
            }
            out.push(attached.to_owned());
            return Some((out, false));
        }
    }
    Some((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        parse(text).unwrap().table
    }

    fn strings(v: &[&str]) -> toml::Value {
        toml::Value::Array(v.iter().map(|s| toml::Value::String((*s).into())).collect())
    }

    #[test]
    fn key_value_separators() {
        for text in [
            "realm=a.example",
            "realm = a.example",
            "realm a.example",
            "realm\t=\ta.example",
            "  realm==a.example  ",
        ] {
            assert_eq!(table(text)["realm"].as_str(), Some("a.example"), "{text:?}");
        }
    }

    #[test]
    fn comments_on_their_own_line_and_after_values() {
        let t = table(
            "# a comment\n  # indented comment\n#listening-port=1\nmin-port=49152 # lowest\nmax-port=65535\t#\thighest\nrealm=a.example    #内网IP\n",
        );
        assert_eq!(t["min-port"].as_integer(), Some(49152));
        assert_eq!(t["max-port"].as_integer(), Some(65535));
        assert_eq!(t["realm"].as_str(), Some("a.example"));
        assert!(!t.contains_key("listening-port"));
    }

    #[test]
    fn hash_inside_a_value_is_kept() {
        let t = table("cli-password=ab#cd\nserver-name=\"x #y\" # comment\n");
        assert_eq!(t["cli-password"].as_str(), Some("ab#cd"));
        assert_eq!(t["server-name"].as_str(), Some("x #y"));
    }

    #[test]
    fn bare_flags_are_true_and_take_boolean_values() {
        let t = table("fingerprint\nno-tls\nno-udp=0\nsyslog off\nno-dtls=yes\nlt-cred-mech # on\nverbose=true\nno-cli=false\n");
        assert_eq!(t["fingerprint"].as_bool(), Some(true));
        assert_eq!(t["no-tls"].as_bool(), Some(true));
        assert_eq!(t["no-udp"].as_bool(), Some(false));
        assert_eq!(t["syslog"].as_bool(), Some(false));
        assert_eq!(t["no-dtls"].as_bool(), Some(true));
        assert_eq!(t["lt-cred-mech"].as_bool(), Some(true));
        assert_eq!(t["verbose"].as_bool(), Some(true));
        assert_eq!(t["no-cli"].as_bool(), Some(false));
    }

    #[test]
    fn verbose_and_extra_verbose_are_different_options() {
        let t = table("Verbose\n");
        assert_eq!(t["Verbose"].as_bool(), Some(true));
        assert!(!t.contains_key("verbose"));
    }

    #[test]
    fn repeated_list_options_accumulate_and_scalars_take_the_last() {
        let t = table("user=a:1\nuser=b:0xbc807ee29df3c9ffa736523fb2c4e8ee\nlistening-ip=192.0.2.1\nlistening-ip=2001:db8::1\nrealm=one\nrealm=two\nexternal-ip=203.0.113.10/10.0.0.5\n");
        assert_eq!(
            t["user"],
            strings(&["a:1", "b:0xbc807ee29df3c9ffa736523fb2c4e8ee"])
        );
        assert_eq!(t["listening-ip"], strings(&["192.0.2.1", "2001:db8::1"]));
        assert_eq!(t["realm"].as_str(), Some("two"));
        assert_eq!(t["external-ip"], strings(&["203.0.113.10/10.0.0.5"]));
    }

    #[test]
    fn quotes_are_stripped() {
        let t = table("cipher-list=\"DEFAULT\"\nnew-log-timestamp-format \"%FT%T%z\"\npidfile=\"/var/run/turnserver.pid\"\n");
        assert_eq!(t["cipher-list"].as_str(), Some("DEFAULT"));
        assert_eq!(t["new-log-timestamp-format"].as_str(), Some("%FT%T%z"));
        assert_eq!(t["pidfile"].as_str(), Some("/var/run/turnserver.pid"));
    }

    #[test]
    fn leading_dashes_are_stripped() {
        let t = table("--fingerprint\n-realm=a.example\n--min-port 50000\n");
        assert_eq!(t["fingerprint"].as_bool(), Some(true));
        assert_eq!(t["realm"].as_str(), Some("a.example"));
        assert_eq!(t["min-port"].as_integer(), Some(50000));
    }

    #[test]
    fn aliases_become_the_option() {
        let t = table("db=/var/lib/turn/turndb\n");
        assert_eq!(t["userdb"].as_str(), Some("/var/lib/turn/turndb"));
    }

    #[test]
    fn bare_lifetimes_take_coturn_defaults() {
        let t = table(
            "stale-nonce\nmax-allocate-lifetime\nchannel-lifetime=\npermission-lifetime = 120\n",
        );
        assert_eq!(t["stale-nonce"].as_integer(), Some(600));
        assert_eq!(t["max-allocate-lifetime"].as_integer(), Some(3600));
        assert_eq!(t["channel-lifetime"].as_integer(), Some(600));
        assert_eq!(t["permission-lifetime"].as_integer(), Some(120));
    }

    #[test]
    fn crlf_and_bom() {
        let t = table("\u{feff}listening-port=3478\r\nfingerprint\r\n");
        assert_eq!(t["listening-port"].as_integer(), Some(3478));
        assert_eq!(t["fingerprint"].as_bool(), Some(true));
    }

    #[test]
    fn unknown_options_are_listed_with_their_line() {
        let c = parse("fingerprint\nlistening-prot=3478\n--bogus\n").unwrap();
        assert_eq!(
            c.unknown,
            vec![(2, "listening-prot".to_owned()), (3, "bogus".to_owned())]
        );
        assert_eq!(c.table.len(), 1);
    }

    #[test]
    fn malformed_integer_names_the_line_and_option() {
        let e = parse("fingerprint\n\nmin-port=abc\n").unwrap_err();
        assert_eq!(
            e,
            CoturnConfError::InvalidValue {
                line: 3,
                option: "min-port".into(),
                why: "expected an integer, got \"abc\"".into()
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("line 3") && msg.contains("min-port"), "{msg}");
    }

    #[test]
    fn other_malformed_values() {
        for (text, option, line) in [
            ("listening-port=70000", "listening-port", 1),
            ("\nuser-quota=-1", "user-quota", 2),
            ("fingerprint=maybe", "fingerprint", 1),
            ("realm=", "realm", 1),
            ("user", "user", 1),
            ("min-port=", "min-port", 1),
            ("listening-port=3478;", "listening-port", 1),
            ("cli-password=\"abc", "cli-password", 1),
        ] {
            match parse(text) {
                Err(CoturnConfError::InvalidValue {
                    line: l, option: o, ..
                }) => {
                    assert_eq!((l, o.as_str()), (line, option), "{text:?}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("=value"),
            Err(CoturnConfError::Syntax { line: 1, .. })
        ));
    }

    #[test]
    fn errors_do_not_show_secrets() {
        let e = parse("cli-password=\"hunter2").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse("=hunter2").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let c = parse("user=alice:hunter2\nstatic-auth-secret=s3cret\n").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("s3cret"), "{d}");
    }

    const SUPPORTED: &[&str] = &[
        "listening-port",
        "listening-ip",
        "relay-ip",
        "min-port",
        "max-port",
        "realm",
        "user",
        "fingerprint",
        "verbose",
        "stale-nonce",
        "stun-backward-compatibility",
    ];

    #[test]
    fn split_keeps_supported_and_warns_about_the_rest() {
        let c = parse("listening-port=3478\nexternal-ip=203.0.113.10\ncli-password=qwerty\nno-cli\nno-rfc5780\nsyslog\nno-udp=0\nfingerprint\nfoo=1\n").unwrap();
        let (t, warnings) = split_supported(&c, SUPPORTED);
        assert_eq!(t.len(), 2);
        assert_eq!(t["listening-port"].as_integer(), Some(3478));
        assert_eq!(t["fingerprint"].as_bool(), Some(true));
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0]
            .starts_with("coturn option `external-ip` is not supported by turnd and is ignored"));
        assert_eq!(
            warnings[2],
            "coturn option `cli-password` is not supported by turnd and is ignored"
        );
        assert!(
            warnings[1].starts_with("coturn option `syslog`"),
            "{warnings:?}"
        );
        assert_eq!(
            warnings[3],
            "line 9: `foo` is not a coturn option and is ignored"
        );
        assert!(!warnings.iter().any(|w| w.contains("qwerty")));
    }

    #[test]
    fn split_translates_to_turnd_equivalents() {
        let c = parse("Verbose\nno-stun-backward-compatibility=0\n").unwrap();
        let (t, warnings) = split_supported(&c, SUPPORTED);
        assert_eq!(t["verbose"].as_bool(), Some(true));
        assert_eq!(t["stun-backward-compatibility"].as_bool(), Some(true));
        assert!(warnings.is_empty(), "{warnings:?}");
        let (t, warnings) = split_supported(&parse("stale-nonce=0\n").unwrap(), SUPPORTED);
        assert!(t.is_empty());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn to_toml_reads_back_as_the_supported_table() {
        let c = parse("realm=a.example\nuser=alice:pw\nuser=bob:0xbc807ee29df3c9ffa736523fb2c4e8ee\nfingerprint\nexternal-ip=203.0.113.10\ncli-password=qwerty\nno-cli\nVerbose\nbogus\n").unwrap();
        let text = to_toml(&c, SUPPORTED);
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back, split_supported(&c, SUPPORTED).0, "{text}");
        assert!(
            text.contains("# external-ip = [\"203.0.113.10\"]"),
            "{text}"
        );
        assert!(text.contains("cli-password = \"<redacted>\""), "{text}");
        assert!(!text.contains("qwerty"), "{text}");
        assert!(text.contains("`bogus`"), "{text}");
    }

    #[test]
    fn every_short_flag_is_a_known_option() {
        for (flag, long) in SHORT_FLAGS {
            assert!(
                is_known_option(long) || ["config", "help"].contains(long),
                "-{flag} --{long}"
            );
        }
        for c in SHORT_WITH_VALUE.chars() {
            assert!(SHORT_FLAGS.iter().any(|(f, _)| *f == c), "{c}");
        }
    }

    fn expand(args: &[&str]) -> Vec<String> {
        expand_short_flags(args.iter().copied())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn short_flags_expand_like_getopt() {
        assert_eq!(
            expand(&[
                "turnd",
                "-avf",
                "-ualice:pw",
                "-r",
                "a.example",
                "-n",
                "-p3479"
            ]),
            [
                "turnd",
                "--lt-cred-mech",
                "--verbose",
                "--fingerprint",
                "--user",
                "alice:pw",
                "--realm",
                "a.example",
                "--listening-port",
                "3479"
            ]
        );
        assert_eq!(
            expand(&["turnd", "--config", "-x.conf", "-s", "1000", "-S"]),
            [
                "turnd",
                "--config",
                "-x.conf",
                "--max-bps",
                "1000",
                "--stun-only"
            ]
        );
        // Unknown short flags stay; subcommands and `--` stop the rewriting.
        assert_eq!(
            expand(&["turnd", "-x", "user", "-b", "db"]),
            ["turnd", "-x", "user", "-b", "db"]
        );
        assert_eq!(expand(&["turnd", "--", "-a"]), ["turnd", "--", "-a"]);
        assert_eq!(
            expand(&["turnd", "--stale-nonce", "-a", "--stale-nonce", "300", "-f"]),
            [
                "turnd",
                "--stale-nonce",
                "--lt-cred-mech",
                "--stale-nonce",
                "300",
                "--fingerprint"
            ]
        );
    }

    /// A hint is for an option turnd does not take: once it does, the
    /// option is kept and the hint (such as "turnd has no TLS listener yet")
    /// would only go stale.
    #[test]
    fn hints_are_only_for_options_turnd_does_not_take() {
        for (key, why) in HINTS {
            assert!(
                !crate::config::TOML_KEYS.contains(key),
                "`{key}` is a turnd option; drop its hint {why:?}"
            );
            assert!(kind_of(key).is_some(), "`{key}` is not an option");
        }
    }

    /// A line naming no option with control characters in it (NUL here)
    /// is listed in a comment escaped, so the output stays TOML (found by
    /// the coturn_conf fuzz target).
    #[test]
    fn unknown_lines_with_control_characters_stay_valid_toml() {
        let conf = parse("/\0\0 and edited\nrealm=example.org\nfoo\rbar\n").unwrap();
        let text = to_toml(&conf, &["realm"]);
        let table: toml::Table = text.parse().expect("convert-config prints TOML");
        assert_eq!(table, split_supported(&conf, &["realm"]).0);
        assert!(text.contains("# line 1: `/\\0\\0`"), "{text}");
    }
}
