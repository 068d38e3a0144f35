//! A relay fleet's shared state in Redis: users, REST secrets and
//! revocations in coturn's Redis schema, per-user allocation counts for a
//! fleet-wide `user-quota`, and a registry of every node's allocations.
//!
//! # Keys
//!
//! coturn's schema (`turndb/schema.userdb.redis`, `schema.stats.redis`), so
//! a coturn fleet's Redis works unchanged:
//!
//! | key | value |
//! | --- | --- |
//! | `turn/realm/<realm>/user/<name>/key` | hex MD5(name:realm:password), 32 digits |
//! | `turn/realm/<realm>/user/<name>/password` | the password in clear (coturn allows it) |
//! | `turn/realm/<realm>/secret/<id>` | a TURN REST API shared secret |
//! | `turn/realm/<realm>/user/<name>/allocation/<id>/status` | `new lifetime=N` or `refreshed lifetime=N`, expiring with the allocation; also published, with `deleted` |
//!
//! turnd's own, under `turnd/`:
//!
//! | key | value |
//! | --- | --- |
//! | `turnd/realm/<realm>/revoked/<name>` | a revoked username (any value), with an expiry |
//! | `turnd/node/<node>/users` | hash: username -> live allocations on that node; expires 15 s after the node's last heartbeat |
//! | `turnd/node/<node>/allocations` | hash: allocation id -> JSON [`RegistryEntry`]; same expiry |
//!
//! and the pub/sub channel [`EVENTS`], whose messages are `users <realm>`
//! (reload users and secrets), `revoke <realm> <name>` (end that user's
//! allocations), `quota <node>` (that node's counts changed) and
//! `delete <node> <id>` (end one allocation).
//!
//! Allocation ids are unique per node only; across the fleet an allocation
//! is `<node>-<id>` (the `<id>` of coturn's status key).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use redis::AsyncCommands;

/// The pub/sub channel every node subscribes to (see the module docs).
pub const EVENTS: &str = "turnd/events";
/// How long a node's `users` and `allocations` hashes outlive its last
/// heartbeat, so a crashed node's counts stop holding quota (seconds).
pub const NODE_TTL: u64 = 15;
/// How often a node refreshes its hashes' expiry.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A Redis server and database, from coturn's connection string
/// (`ip=127.0.0.1 dbname=2 password=turn port=6379 connect_timeout=30`,
/// every field optional) or a `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`
/// URL. The password is never printed.
#[derive(Clone)]
pub struct RedisTarget {
    info: redis::ConnectionInfo,
    connect_timeout: Duration,
    label: String,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl RedisTarget {
    /// Parses either form.
    ///
    /// # Errors
    /// Why the text is not a connection string (naming the field), never
    /// quoting a password.
    pub fn parse(text: &str) -> Result<RedisTarget, String> {
        let text = text.trim();
        let mut connect_timeout = Duration::from_secs(5);
        let info = if text.starts_with("redis://") || text.starts_with("rediss://") {
            if text.starts_with("rediss://") {
                return Err("TLS to Redis (rediss://) is not supported".into());
            }
            redis::IntoConnectionInfo::into_connection_info(text).map_err(|_| {
                "not a valid URL: expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]".to_owned()
            })?
        } else {
            let (mut host, mut port, mut db) = ("127.0.0.1".to_owned(), 6379u16, 0i64);
            let (mut user, mut password) = (None, None);
            for field in text.split_whitespace() {
                let Some((k, v)) = field.split_once('=') else {
                    return Err("expected `key=value` fields (ip, port, dbname, password, user, connect_timeout), found a field without `=`".into());
                };
                match k {
                    "ip" | "host" | "hostaddr" => host = v.to_owned(),
                    "port" => port = v.parse().map_err(|_| format!("port {v:?} is not a port number"))?,
                    "dbname" | "db" | "database" => {
                        db = v.parse().map_err(|_| format!("dbname {v:?} is not a database number"))?;
                    }
                    "password" | "pwd" => password = Some(v.to_owned()),
                    "user" | "username" => user = Some(v.to_owned()),
                    "connect_timeout" => {
                        let s: u64 = v
                            .parse()
                            .map_err(|_| format!("connect_timeout {v:?} is not a number of seconds"))?;
                        connect_timeout = Duration::from_secs(s.clamp(1, 300));
                    }
                    other => return Err(format!("unknown field `{other}` (ip, port, dbname, password, user, connect_timeout)")),
                }
            }
            if host.is_empty() {
                return Err("ip is empty".into());
            }
            redis::ConnectionInfo {
                addr: redis::ConnectionAddr::Tcp(host, port),
                redis: redis::RedisConnectionInfo {
                    db,
                    username: user,
                    password,
                    protocol: redis::ProtocolVersion::RESP2,
                },
            }
        };
        let label = match &info.addr {
            redis::ConnectionAddr::Tcp(h, p) => format!("redis {h}:{p} db {}", info.redis.db),
            redis::ConnectionAddr::Unix(path) => {
                format!("redis unix:{} db {}", path.display(), info.redis.db)
            }
            _ => format!("redis db {}", info.redis.db),
        };
        Ok(RedisTarget {
            info,
            connect_timeout,
            label,
        })
    }

    /// The database number (for keyspace notification channels).
    pub fn db(&self) -> i64 {
        self.info.redis.db
    }

    /// A client for this target.
    ///
    /// # Errors
    /// The client library's, for an address it cannot use.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.info.clone())
    }

    /// A multiplexed connection (cheap to clone) whose commands time out
    /// after `response_timeout`.
    ///
    /// # Errors
    /// Redis unreachable, refused authentication, a bad database number.
    pub async fn connect(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(response_timeout);
        self.client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// The host name, as the default node name (`turnd` when it has none).
pub fn default_node_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if valid_node_name(&name) {
        name
    } else {
        "turnd".to_owned()
    }
}

/// Whether `name` can name a node: 1 to 64 ASCII letters, digits, `.`, `-`
/// or `_` (it is part of Redis keys and allocation ids).
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// `text` with Redis glob characters escaped, for a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Key names (see the module docs).
pub mod keys {
    /// `turn/realm/<realm>/user/<name>/key`
    pub fn user_key(realm: &str, name: &str) -> String {
        format!("turn/realm/{realm}/user/{name}/key")
    }
    /// `turn/realm/<realm>/user/<name>/password`
    pub fn user_password(realm: &str, name: &str) -> String {
        format!("turn/realm/{realm}/user/{name}/password")
    }
    /// `turn/realm/<realm>/secret/<id>`
    pub fn secret(realm: &str, id: &str) -> String {
        format!("turn/realm/{realm}/secret/{id}")
    }
    /// `turnd/realm/<realm>/revoked/<name>`
    pub fn revoked(realm: &str, name: &str) -> String {
        format!("turnd/realm/{realm}/revoked/{name}")
    }
    /// `turnd/node/<node>/users`
    pub fn node_users(node: &str) -> String {
        format!("turnd/node/{node}/users")
    }
    /// `turnd/node/<node>/allocations`
    pub fn node_allocations(node: &str) -> String {
        format!("turnd/node/{node}/allocations")
    }
    /// coturn's `turn/realm/<realm>/user/<name>/allocation/<id>/status`.
    pub fn allocation_status(realm: &str, user: &str, id: &str) -> String {
        format!("turn/realm/{realm}/user/{user}/allocation/{id}/status")
    }
}

/// Every key matching `pattern` (SCAN, never KEYS: it does not block Redis).
///
/// # Errors
/// Redis's.
pub async fn scan(
    con: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    // Bounded: SCAN ends when the cursor comes back to 0; a server that
    // never says so is cut off after a million rounds.
    for _ in 0..1_000_000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        out.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The values of `keys` (MGET in batches of 500); a key gone meanwhile
/// gives `None`.
async fn mget(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> redis::RedisResult<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(con).await?;
        out.extend(values);
    }
    Ok(out)
}

/// What the user database in Redis holds for one realm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RealmUsers {
    /// (name, MD5 long-term key), sorted by name. A user stored with a clear
    /// password gets its key computed here; a 64-digit (SHA-256) key is
    /// skipped, as in the SQLite reader.
    pub users: Vec<(String, [u8; 16])>,
    /// The REST API shared secrets, sorted.
    pub secrets: Vec<String>,
    /// Revoked usernames (long-term or REST), sorted.
    pub revoked: Vec<String>,
}

/// Reads the users, secrets and revocations of `realm`.
///
/// # Errors
/// Redis's.
pub async fn read_realm(
    con: &mut redis::aio::MultiplexedConnection,
    realm: &str,
) -> redis::RedisResult<RealmUsers> {
    let prefix = format!("turn/realm/{realm}/user/");
    let user_keys = scan(con, &format!("{}*", glob_escape(&prefix))).await?;
    let wanted: Vec<String> = user_keys
        .into_iter()
        .filter(|k| k.ends_with("/key") || k.ends_with("/password"))
        .filter(|k| !k.contains("/allocation/"))
        .collect();
    let values = mget(con, &wanted).await?;
    let mut users: BTreeMap<String, [u8; 16]> = BTreeMap::new();
    let mut from_key: Vec<String> = Vec::new();
    for (k, v) in wanted.iter().zip(values) {
        let Some(v) = v else { continue };
        let rest = &k[prefix.len()..];
        if let Some(name) = rest.strip_suffix("/key") {
            // coturn's hmackey, read as the SQLite reader reads it.
            if let crate::userdb::StoredKey::Md5(key) = crate::userdb::parse_key(&v) {
                users.insert(name.to_owned(), key);
                from_key.push(name.to_owned());
            }
        } else if let Some(name) = rest.strip_suffix("/password") {
            // A key wins over a clear password for the same user.
            if !from_key.iter().any(|n| n == name) {
                users.insert(name.to_owned(), crate::stun::long_term_key(name, realm, &v));
            }
        }
    }
    let secret_keys = scan(con, &format!("{}*", glob_escape(&keys::secret(realm, "")))).await?;
    let mut secrets: Vec<String> = mget(con, &secret_keys)
        .await?
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    secrets.sort_unstable();
    secrets.dedup();
    let revoked_prefix = keys::revoked(realm, "");
    let revoked = scan(con, &format!("{}*", glob_escape(&revoked_prefix)))
        .await?
        .into_iter()
        .map(|k| k[revoked_prefix.len()..].to_owned())
        .collect();
    Ok(RealmUsers {
        users: users.into_iter().collect(),
        secrets,
        revoked,
    })
}

/// One allocation in the fleet registry (`turnd/node/<node>/allocations`),
/// as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryEntry {
    /// The node that holds it (`server-name`).
    pub node: String,
    /// Its id on that node (the admin API's).
    pub id: u64,
    /// The username it was allocated for.
    pub user: String,
    /// The client's address (its 5-tuple's source).
    pub client: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    /// The relayed transport address (XOR-RELAYED-ADDRESS).
    pub relay: String,
    /// Bytes relayed to peers and to the client so far.
    pub bytes_to_peer: u64,
    /// Bytes relayed to the client so far.
    pub bytes_to_client: u64,
    /// Seconds left of its lifetime when last published.
    pub lifetime_s: u64,
}

/// The hash at `key`; `None` when the key holds something else (a key
/// written by hand under `turnd/`): skipped, not an error that would end
/// the session. Connection errors are returned.
async fn hash_of(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<HashMap<String, String>>> {
    match con.hgetall(key).await {
        Ok(h) => Ok(Some(h)),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(_) => Ok(None),
    }
}

/// Every allocation the fleet's registry holds, nodes whose heartbeat
/// lapsed excluded (their hashes expired), sorted by node and id.
///
/// # Errors
/// Redis's.
pub async fn fleet_allocations(
    con: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<Vec<RegistryEntry>> {
    let mut out = Vec::new();
    for key in scan(con, "turnd/node/*/allocations").await? {
        let Some(all) = hash_of(con, &key).await? else {
            continue;
        };
        out.extend(
            all.values()
                .filter_map(|v| serde_json::from_str::<RegistryEntry>(v).ok()),
        );
    }
    out.sort_by(|a, b| (&a.node, a.id).cmp(&(&b.node, b.id)));
    Ok(out)
}

/// Live allocations per username on every node but `except`.
///
/// # Errors
/// Redis's.
pub async fn fleet_user_counts(
    con: &mut redis::aio::MultiplexedConnection,
    except: &str,
) -> redis::RedisResult<HashMap<String, u32>> {
    let own = keys::node_users(except);
    let mut out: HashMap<String, u32> = HashMap::new();
    for key in scan(con, "turnd/node/*/users").await? {
        if key == own {
            continue;
        }
        // Read as text: a field that is no count (written by hand, or a
        // broken node) is skipped, not an error that would end the session.
        let Some(counts) = hash_of(con, &key).await? else {
            continue;
        };
        for (user, n) in counts {
            if let Ok(n) = n.trim().parse::<u32>() {
                let e = out.entry(user).or_default();
                *e = e.saturating_add(n);
            }
        }
    }
    Ok(out)
}

/// The fleet's nonce key (`turnd/nonce-key`, 40 hex digits), made by the
/// first node that asks (SET NX of 20 random bytes), so that every node
/// accepts the nonces of the others: a client sent on by 300 Try Alternate,
/// or by DNS, keeps its nonce. Nonces are no secret (they prove freshness,
/// not identity): anyone who can read this Redis could mint them, and no
/// more.
///
/// # Errors
/// Redis's; a value that is not 40 hex digits is replaced.
pub async fn nonce_key(
    con: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<[u8; 20]> {
    const KEY: &str = "turnd/nonce-key";
    // Bounded: a second round finds the value the first wrote (or fixed).
    for _ in 0..3 {
        let current: Option<String> = con.get(KEY).await?;
        match current
            .as_deref()
            .map(|t| crate::auth::from_hex::<20>(t.trim()))
        {
            Some(Some(key)) => return Ok(key),
            Some(None) => {
                let _: () = con.del(KEY).await?;
            }
            None => {}
        }
        let mut fresh = [0u8; 20];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut fresh);
        let _: bool = con.set_nx(KEY, crate::auth::to_hex(&fresh)).await?;
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::TypeError,
        "turnd/nonce-key keeps changing",
    )))
}

/// Ends `name`'s allocations on every node and refuses the name for
/// `seconds` (a REST username: until its own expiry time is enough).
///
/// # Errors
/// Redis's.
pub async fn revoke(
    con: &mut redis::aio::MultiplexedConnection,
    realm: &str,
    name: &str,
    seconds: u64,
) -> redis::RedisResult<()> {
    let _: () = con
        .set_ex(keys::revoked(realm, name), "revoked", seconds.max(1))
        .await?;
    let _: () = con.publish(EVENTS, format!("users {realm}")).await?;
    let _: () = con
        .publish(EVENTS, format!("revoke {realm} {name}"))
        .await?;
    Ok(())
}

/// Ends one allocation of the fleet (`<node>-<id>` in the registry).
///
/// # Errors
/// Redis's.
pub async fn delete_allocation(
    con: &mut redis::aio::MultiplexedConnection,
    node: &str,
    id: u64,
) -> redis::RedisResult<()> {
    con.publish(EVENTS, format!("delete {node} {id}")).await
}

/// `turnd user|secret ... --redis-userdb`: what the SQLite commands do,
/// against Redis, returning the text to print.
///
/// # Errors
/// A line naming the target and what failed.
pub fn run_command(
    target: &RedisTarget,
    realm: &str,
    command: Command<'_>,
) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let mut con = target
            .connect(Duration::from_secs(10))
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let r = command_on(&mut con, realm, command).await;
        r.map_err(|e| format!("{target}: {e}"))?
    })
}

/// A user or secret command (see [`run_command`]).
#[derive(Clone, Copy, Debug)]
pub enum Command<'a> {
    /// Add or replace a user (only the MD5 key is stored).
    AddUser(&'a str, &'a str),
    /// Delete a user and end its allocations on every node.
    DeleteUser(&'a str),
    /// The user names, one per line.
    ListUsers,
    /// End a username's allocations and refuse it for so many seconds.
    Revoke(&'a str, u64),
    /// Add a REST secret.
    AddSecret(&'a str),
    /// Delete a REST secret.
    DeleteSecret(&'a str),
    /// The REST secrets, one per line.
    ListSecrets,
}

async fn command_on(
    con: &mut redis::aio::MultiplexedConnection,
    realm: &str,
    command: Command<'_>,
) -> redis::RedisResult<Result<String, String>> {
    let changed = format!("users {realm}");
    Ok(match command {
        Command::AddUser(name, password) => {
            if name.is_empty() || name.contains('\n') {
                return Ok(Err("a user name cannot be empty or hold a newline".into()));
            }
            let key = crate::stun::long_term_key(name, realm, password);
            let _: () = con
                .set(keys::user_key(realm, name), crate::auth::to_hex(&key))
                .await?;
            let _: () = con.del(keys::user_password(realm, name)).await?;
            let _: () = con.publish(EVENTS, &changed).await?;
            Ok(format!("added user {name:?} to realm {realm:?}"))
        }
        Command::DeleteUser(name) => {
            let n: u32 = con
                .del(&[
                    keys::user_key(realm, name),
                    keys::user_password(realm, name),
                ])
                .await?;
            let _: () = con.publish(EVENTS, &changed).await?;
            let _: () = con
                .publish(EVENTS, format!("revoke {realm} {name}"))
                .await?;
            if n == 0 {
                Err(format!("no user {name:?} in realm {realm:?}"))
            } else {
                Ok(format!(
                    "deleted user {name:?} from realm {realm:?}; its allocations end on every node"
                ))
            }
        }
        Command::ListUsers => Ok(read_realm(con, realm)
            .await?
            .users
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
            .join("\n")),
        Command::Revoke(name, seconds) => {
            revoke(con, realm, name, seconds).await?;
            Ok(format!(
                "revoked {name:?} in realm {realm:?} for {seconds} s; its allocations end on every node"
            ))
        }
        Command::AddSecret(secret) => {
            if secret.is_empty() {
                return Ok(Err("a secret cannot be empty".into()));
            }
            let existing = read_realm(con, realm).await?.secrets;
            if !existing.iter().any(|s| s == secret) {
                // coturn names a secret's key by any id; the time in
                // seconds, the first free one from there.
                #[allow(clippy::disallowed_methods)] // a CLI command, not the core
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                for id in now..now + 1000 {
                    let set: bool = con
                        .set_nx(keys::secret(realm, &id.to_string()), secret)
                        .await?;
                    if set {
                        break;
                    }
                }
            }
            let _: () = con.publish(EVENTS, &changed).await?;
            Ok(format!("added a secret to realm {realm:?}"))
        }
        Command::DeleteSecret(secret) => {
            let found = scan(con, &format!("{}*", glob_escape(&keys::secret(realm, "")))).await?;
            let values = mget(con, &found).await?;
            let mut n = 0u32;
            for (k, v) in found.iter().zip(values) {
                if v.as_deref() == Some(secret) {
                    let d: u32 = con.del(k).await?;
                    n += d;
                }
            }
            let _: () = con.publish(EVENTS, &changed).await?;
            if n == 0 {
                Err(format!("no such secret in realm {realm:?}"))
            } else {
                Ok(format!("deleted a secret from realm {realm:?}"))
            }
        }
        Command::ListSecrets => Ok(read_realm(con, realm).await?.secrets.join("\n")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_connection_strings_and_urls_parse() {
        let t =
            RedisTarget::parse("ip=192.0.2.1 dbname=2 password=turn port=6380 connect_timeout=30")
                .unwrap();
        assert_eq!(t.to_string(), "redis 192.0.2.1:6380 db 2");
        assert_eq!(t.info.redis.password.as_deref(), Some("turn"));
        assert_eq!(t.connect_timeout, Duration::from_secs(30));
        let t = RedisTarget::parse("").unwrap();
        assert_eq!(t.to_string(), "redis 127.0.0.1:6379 db 0");
        let t = RedisTarget::parse("redis://:pw@example.net:7000/3").unwrap();
        assert_eq!(t.to_string(), "redis example.net:7000 db 3");
        assert!(!format!("{t:?}").contains("pw"));
        let e = RedisTarget::parse("ip=1.2.3.4 color=blue").unwrap_err();
        assert!(e.contains("color"), "{e}");
        let e = RedisTarget::parse("port=99999").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e = RedisTarget::parse("password secret").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(RedisTarget::parse("rediss://h").is_err());
    }

    #[test]
    fn node_names_and_globs() {
        assert!(valid_node_name("relay-1.eu_west"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a/b"));
        assert!(!valid_node_name(&"x".repeat(65)));
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        let key = crate::auth::from_hex::<16>("7da2270ccfa49786e0115366d3a3d14D");
        assert_eq!(key.unwrap()[15], 0x4d);
        assert!(crate::auth::from_hex::<16>("7da2").is_none());
        assert!(crate::auth::from_hex::<20>("7da2270ccfa49786e0115366d3a3d14d").is_none());
        assert!(crate::auth::from_hex::<2>("7g00").is_none());
    }
}
