//! The fleet task: keeps this node in step with the fleet's Redis
//! ([`crate::fleet`] has the keys) on the main thread, never on a relay
//! worker's, and never in the relay path.
//!
//! - Users, REST secrets and revocations of the realm are read whole at
//!   start, on every `users` event and keyspace notification, and polled
//!   (every second when Redis will not send keyspace notifications, every
//!   30 s when it does); a change is handed to every core.
//! - This node's per-user allocation counts are written to
//!   `turnd/node/<node>/users` whenever they change (checked every 100 ms)
//!   and announced with `quota <node>`; the other nodes' counts are read
//!   back on those events and every 5 s, and count against `user-quota`.
//! - Every second the node's allocations are diffed against what it last
//!   published: coturn's status keys and events (`new`, `refreshed`,
//!   `deleted`, `total_traffic`) and the registry hash are updated.
//! - `revoke <realm> <name>` and `delete <node> <id>` events end
//!   allocations here.
//!
//! When Redis is unreachable the node keeps the last users and secrets it
//! read and the other nodes' last counts, says so once in the log (and in
//! `/readyz`'s body and `turnd_redis_up`), and reconnects with backoff
//! (0.5 s doubling to 10 s); on reconnecting it republishes everything, so
//! the fleet's counts recover.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tracing::{debug, info, warn};

use super::http::{self, HttpState};
use crate::fleet::{self, keys, RealmUsers, RedisTarget, RegistryEntry, EVENTS};
use crate::turn::QuotaLedger;
use crate::untrusted::LogSafe;

/// How long one Redis command may take before the session is given up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll of users and secrets without keyspace notifications.
const POLL_FAST: Duration = Duration::from_secs(1);
/// Poll of users and secrets as a safety net beside keyspace notifications.
const POLL_SLOW: Duration = Duration::from_secs(30);
/// How often the registry is brought up to date (new, refreshed and ended
/// allocations).
const REGISTRY_EVERY: Duration = Duration::from_secs(1);
/// How often an allocation's byte counts are rewritten in the registry at
/// most (a relaying allocation would otherwise cost a write every second).
const REGISTRY_BYTES_EVERY: Duration = Duration::from_secs(10);
/// The task's tick.
const TICK: Duration = Duration::from_millis(100);

/// What the HTTP handlers and metrics read of the fleet task.
pub(super) struct FleetStatus {
    /// This node's name (`server-name`).
    pub node: String,
    /// The realm whose users are read.
    pub realm: RefCell<String>,
    /// Connected to every Redis server configured.
    pub up: Cell<bool>,
    /// When the last session ended (None while up, or before the first).
    pub down_since: Cell<Option<Instant>>,
    /// Sessions that failed (connection lost, a command timed out).
    pub failures: Cell<u64>,
    /// Users last read (0 before the first read).
    pub users: Cell<usize>,
    /// The last rows read, for a SIGHUP reload (which must not wait on
    /// Redis).
    pub rows: RefCell<Option<RealmUsers>>,
    /// The user database's connection, while up (admin API revocations).
    pub userdb: RefCell<Option<MultiplexedConnection>>,
    /// The stats database's connection, while up (the fleet list).
    pub statsdb: RefCell<Option<MultiplexedConnection>>,
    /// Whether a users database is in Redis (else users come from the
    /// configuration and only the registry and quotas are shared).
    pub has_userdb: bool,
    /// The fleet's nonce key as last read (None before the first read).
    pub nonce_key: Cell<Option<[u8; 20]>>,
}

impl FleetStatus {
    pub fn new(node: String, realm: String, has_userdb: bool, rows: Option<RealmUsers>) -> Self {
        FleetStatus {
            node,
            realm: RefCell::new(realm),
            up: Cell::new(false),
            down_since: Cell::new(None),
            failures: Cell::new(0),
            users: Cell::new(rows.as_ref().map_or(0, |r| r.users.len())),
            rows: RefCell::new(rows),
            userdb: RefCell::new(None),
            statsdb: RefCell::new(None),
            has_userdb,
            nonce_key: Cell::new(None),
        }
    }
}

/// Hands the fleet's nonce key to every core, when it is not theirs yet.
async fn install_nonce_key(status: &FleetStatus, http: &Rc<HttpState>, key: [u8; 20]) {
    if status.nonce_key.get() == Some(key) {
        return;
    }
    status.nonce_key.set(Some(key));
    http.core.borrow_mut().set_nonce_key(key);
    http.workers
        .broadcast(|_| super::worker::Control::NonceKey(key))
        .await;
    info!("the fleet's nonce key is in use: nonces from any node are accepted");
}

/// What a node reads from Redis before it serves: the realm's users (with
/// `redis-userdb`) and the fleet's nonce key (from the stats database),
/// waiting 10 s at most for both together. What cannot be read is `None`
/// (logged): the node starts with the configuration's users and a nonce key
/// of its own, and takes the fleet's when Redis is back.
pub(super) async fn initial_read(
    userdb: Option<&RedisTarget>,
    statsdb: &RedisTarget,
    realm: &str,
) -> (Option<RealmUsers>, Option<[u8; 20]>) {
    let read = async {
        let rows = match userdb {
            Some(t) => {
                let mut con = t.connect(RESPONSE_TIMEOUT).await?;
                Some(fleet::read_realm(&mut con, realm).await?)
            }
            None => None,
        };
        let mut con = statsdb.connect(RESPONSE_TIMEOUT).await?;
        let key = fleet::nonce_key(&mut con).await?;
        Ok::<_, redis::RedisError>((rows, key))
    };
    let why = match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok((rows, key))) => {
            if let Some(r) = &rows {
                info!(redis = %statsdb, users = r.users.len(), secrets = r.secrets.len(), revoked = r.revoked.len(), "users read from Redis");
            }
            return (rows, Some(key));
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 10 s".to_owned(),
    };
    warn!(redis = %statsdb, error = %why, "Redis unreachable at start: serving the configuration's users, and nonces of this node's own, until it is back");
    (None, None)
}

/// The task: one session after another, with backoff between them.
pub(super) async fn run(
    status: Rc<FleetStatus>,
    userdb: Option<RedisTarget>,
    statsdb: RedisTarget,
    http: Rc<HttpState>,
    ledger: QuotaLedger,
) {
    let mut backoff = Duration::from_millis(500);
    let mut published = Published::default();
    // Bounded by the process's life: the task ends with the runtime.
    loop {
        let started = Instant::now();
        let why = match session(
            &status,
            userdb.as_ref(),
            &statsdb,
            &http,
            &ledger,
            &mut published,
        )
        .await
        {
            Ok(()) => "the event subscription ended".to_owned(),
            Err(e) => e,
        };
        let was_up = status.up.replace(false);
        status.userdb.replace(None);
        status.statsdb.replace(None);
        status.failures.set(status.failures.get() + 1);
        if status.down_since.get().is_none() {
            status.down_since.set(Some(Instant::now()));
        }
        if was_up {
            warn!(error = %why, "Redis unreachable: serving with the last users, secrets and quota counts read; reconnecting");
        } else {
            debug!(error = %why, "Redis still unreachable");
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// What this node last wrote to Redis.
#[derive(Default)]
struct Published {
    /// The ledger version of the counts written (None: write them).
    counts: Option<u64>,
    /// The allocations in the registry, by id.
    allocations: HashMap<u64, Registered>,
}

/// One allocation as last written to the registry.
struct Registered {
    entry: RegistryEntry,
    /// Its expiry (Unix seconds) as last published in its status key.
    expiry: u64,
    /// When its registry entry was last written.
    written: Instant,
}

fn err(e: redis::RedisError) -> String {
    e.to_string()
}

async fn session(
    status: &FleetStatus,
    userdb: Option<&RedisTarget>,
    statsdb: &RedisTarget,
    http: &Rc<HttpState>,
    ledger: &QuotaLedger,
    published: &mut Published,
) -> Result<(), String> {
    let node = status.node.clone();
    let mut stats = statsdb.connect(RESPONSE_TIMEOUT).await.map_err(err)?;
    let mut users_con = match userdb {
        Some(t) => Some(t.connect(RESPONSE_TIMEOUT).await.map_err(err)?),
        None => None,
    };
    // Subscriptions: the events channel on each server, and keyspace
    // notifications of the realm's keys on the users' server when Redis
    // sends them (or will after CONFIG SET).
    let mut streams = Vec::new();
    let mut keyspace = false;
    let realm = status.realm.borrow().clone();
    let targets: Vec<&RedisTarget> = match userdb {
        Some(u) if u.to_string() != statsdb.to_string() => vec![u, statsdb],
        Some(u) => vec![u],
        None => vec![statsdb],
    };
    for (i, t) in targets.iter().enumerate() {
        let client = t.client().map_err(err)?;
        let mut ps = tokio::time::timeout(RESPONSE_TIMEOUT * 2, client.get_async_pubsub())
            .await
            .map_err(|_| "subscription timed out".to_owned())?
            .map_err(err)?;
        ps.subscribe(EVENTS).await.map_err(err)?;
        if i == 0 && userdb.is_some() {
            if let Some(con) = users_con.as_mut() {
                keyspace = enable_keyspace_events(con).await;
            }
            if keyspace {
                let db = t.db();
                ps.psubscribe(format!("__keyspace@{db}__:turn/realm/{realm}/*"))
                    .await
                    .map_err(err)?;
                ps.psubscribe(format!("__keyspace@{db}__:turnd/realm/{realm}/*"))
                    .await
                    .map_err(err)?;
            }
        }
        streams.push(ps.into_on_message());
    }
    let mut events = futures_util::stream::select_all(streams);
    // Up: read everything anew and republish what this node holds.
    let key = fleet::nonce_key(&mut stats).await.map_err(err)?;
    install_nonce_key(status, http, key).await;
    if let Some(con) = users_con.as_mut() {
        reload_users(status, con, http).await?;
    }
    published.counts = None;
    publish_counts(&mut stats, &node, ledger, published).await?;
    read_remote(&mut stats, &node, ledger).await?;
    republish_registry(&mut stats, &node, published).await?;
    sync_registry(&mut stats, status, http, published).await?;
    status.userdb.replace(users_con.clone());
    status.statsdb.replace(Some(stats.clone()));
    status.up.set(true);
    if let Some(since) = status.down_since.take() {
        info!(
            down_s = since.elapsed().as_secs(),
            "Redis reachable again: users reread, quota counts republished"
        );
    } else {
        info!(node = %node, keyspace_notifications = keyspace, "connected to Redis");
    }
    let poll_every = if keyspace { POLL_SLOW } else { POLL_FAST };
    let now = Instant::now();
    let (mut next_poll, mut next_heartbeat, mut next_registry) = (
        now + poll_every,
        now + fleet::HEARTBEAT,
        now + REGISTRY_EVERY,
    );
    let (mut users_dirty, mut remote_dirty) = (false, false);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded by the session: it ends on the first Redis error.
    loop {
        tokio::select! {
            msg = events.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let channel = msg.get_channel_name().to_owned();
                if channel.starts_with("__keyspace@") {
                    // An allocation status key under the realm is no user change.
                    if !channel.contains("/allocation/") {
                        users_dirty = true;
                    }
                    continue;
                }
                let payload: String = msg.get_payload().unwrap_or_default();
                let mut words = payload.splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("users"), Some(r), None) if r == realm => users_dirty = true,
                    (Some("quota"), Some(n), None) if n != node => remote_dirty = true,
                    (Some("revoke"), Some(r), Some(name)) if r == realm => {
                        users_dirty = true;
                        revoke_here(http, name).await;
                        // The registry says so at the next tick.
                        next_registry = Instant::now();
                    }
                    (Some("delete"), Some(n), Some(id)) if n == node => {
                        if let Ok(id) = id.parse::<u64>() {
                            delete_here(http, id).await;
                            next_registry = Instant::now();
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(con) = users_con.as_mut() {
                    if users_dirty || now >= next_poll {
                        users_dirty = false;
                        next_poll = now + poll_every;
                        reload_users(status, con, http).await?;
                    }
                }
                publish_counts(&mut stats, &node, ledger, published).await?;
                if remote_dirty || now >= next_heartbeat {
                    remote_dirty = false;
                    read_remote(&mut stats, &node, ledger).await?;
                }
                if now >= next_heartbeat {
                    next_heartbeat = now + fleet::HEARTBEAT;
                    let mut p = redis::pipe();
                    p.expire(keys::node_users(&node), fleet::NODE_TTL as i64).ignore();
                    p.expire(keys::node_allocations(&node), fleet::NODE_TTL as i64).ignore();
                    let () = p.query_async(&mut stats).await.map_err(err)?;
                }
                if now >= next_registry {
                    next_registry = now + REGISTRY_EVERY;
                    sync_registry(&mut stats, status, http, published).await?;
                }
            }
        }
    }
}

/// Asks Redis for keyspace notifications of generic, string and expiry
/// events when it does not send them yet; false when it refuses (a managed
/// Redis may forbid CONFIG): the task then polls every second.
async fn enable_keyspace_events(con: &mut MultiplexedConnection) -> bool {
    let current: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(con)
        .await;
    let flags = match current {
        Ok(v) => v.get(1).cloned().unwrap_or_default(),
        Err(_) => return false,
    };
    let has = |c: char| flags.contains(c) || (c != 'K' && c != 'E' && flags.contains('A'));
    if has('K') && has('g') && has('$') && has('x') {
        return true;
    }
    let mut wanted: String = flags;
    for c in ['K', 'g', '$', 'x'] {
        if !wanted.contains(c) {
            wanted.push(c);
        }
    }
    let set: Result<(), _> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(con)
        .await;
    set.is_ok()
}

/// Reads the realm's users and hands them to every core when they changed.
async fn reload_users(
    status: &FleetStatus,
    con: &mut MultiplexedConnection,
    http: &Rc<HttpState>,
) -> Result<(), String> {
    let realm = status.realm.borrow().clone();
    let rows = fleet::read_realm(con, &realm).await.map_err(err)?;
    if status.rows.borrow().as_ref() == Some(&rows) {
        return Ok(());
    }
    info!(
        users = rows.users.len(),
        secrets = rows.secrets.len(),
        revoked = rows.revoked.len(),
        "users read from Redis"
    );
    status.users.set(rows.users.len());
    let credentials = credentials_of(&http.config.borrow(), &rows);
    status.rows.replace(Some(rows));
    http.workers
        .broadcast(|_| super::worker::Control::Credentials(Box::new(credentials.clone())))
        .await;
    http.core.borrow_mut().set_credentials(credentials);
    Ok(())
}

/// The configuration's credentials plus the rows read from Redis.
pub(super) fn credentials_of(
    config: &crate::config::Config,
    rows: &RealmUsers,
) -> crate::auth::Credentials {
    let mut c = config.credentials(&rows.users, &rows.secrets);
    c.set_revoked(rows.revoked.iter().cloned());
    c
}

/// Writes this node's per-user counts when they changed since last written.
async fn publish_counts(
    con: &mut MultiplexedConnection,
    node: &str,
    ledger: &QuotaLedger,
    published: &mut Published,
) -> Result<(), String> {
    if published.counts == Some(ledger.version()) {
        return Ok(());
    }
    let (version, counts) = ledger.snapshot();
    let key = keys::node_users(node);
    let mut p = redis::pipe();
    p.atomic().del(&key).ignore();
    if !counts.is_empty() {
        let fields: Vec<(&String, &u32)> = counts.iter().collect();
        p.hset_multiple(&key, &fields).ignore();
        p.expire(&key, fleet::NODE_TTL as i64).ignore();
    }
    p.publish(EVENTS, format!("quota {node}")).ignore();
    let () = p.query_async(con).await.map_err(err)?;
    published.counts = Some(version);
    Ok(())
}

/// Reads the other nodes' counts into the ledger.
async fn read_remote(
    con: &mut MultiplexedConnection,
    node: &str,
    ledger: &QuotaLedger,
) -> Result<(), String> {
    let counts = fleet::fleet_user_counts(con, node).await.map_err(err)?;
    ledger.set_remote(counts);
    Ok(())
}

/// After a reconnect: the registry hash and status keys as this node
/// last knew them (Redis may have restarted empty).
async fn republish_registry(
    con: &mut MultiplexedConnection,
    node: &str,
    published: &mut Published,
) -> Result<(), String> {
    let mut p = redis::pipe();
    p.del(keys::node_allocations(node)).ignore();
    let () = p.query_async(con).await.map_err(err)?;
    published.allocations.clear();
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Diffs the node's allocations against the registry and writes the
/// difference in one pipeline.
async fn sync_registry(
    con: &mut MultiplexedConnection,
    status: &FleetStatus,
    http: &Rc<HttpState>,
    published: &mut Published,
) -> Result<(), String> {
    let Ok(view) = http::gather(http, true).await else {
        // A worker's control queue is full: try again next round.
        return Ok(());
    };
    let realm = status.realm.borrow().clone();
    let node = &status.node;
    let (now, unix) = (Instant::now(), unix_now());
    let hash = keys::node_allocations(node);
    let mut p = redis::pipe();
    let mut writes = 0usize;
    let mut seen: HashMap<u64, Registered> = HashMap::with_capacity(view.allocations.len());
    for a in &view.allocations {
        let left = a.expires.saturating_duration_since(now).as_secs().max(1);
        let entry = RegistryEntry {
            node: node.clone(),
            id: a.id,
            user: a.user.to_string(),
            client: a.client.to_string(),
            transport: format!("{:?}", a.transport).to_lowercase(),
            relay: a.relay.to_string(),
            bytes_to_peer: a.bytes_to_peer,
            bytes_to_client: a.bytes_to_client,
            lifetime_s: left,
        };
        let expiry = unix + left;
        let prev = published.allocations.remove(&a.id);
        // A refresh moves the expiry by more than a second's rounding.
        let status = match &prev {
            None => Some("new"),
            Some(r) if expiry.abs_diff(r.expiry) > 2 => Some("refreshed"),
            Some(_) => None,
        };
        if let Some(kind) = status {
            let key = keys::allocation_status(&realm, &entry.user, &format!("{node}-{}", a.id));
            let v = format!("{kind} lifetime={left}");
            p.set_ex(&key, &v, left).ignore();
            p.publish(&key, &v).ignore();
            writes += 1;
        }
        // Byte counts alone are rewritten at most every REGISTRY_BYTES_EVERY.
        let due = match &prev {
            None => true,
            Some(r) => {
                status.is_some()
                    || ((r.entry.bytes_to_peer, r.entry.bytes_to_client)
                        != (entry.bytes_to_peer, entry.bytes_to_client)
                        && now.duration_since(r.written) >= REGISTRY_BYTES_EVERY)
            }
        };
        let registered = match prev {
            Some(r) if !due => r,
            _ => {
                if let Ok(json) = serde_json::to_string(&entry) {
                    p.hset(&hash, a.id, json).ignore();
                    writes += 1;
                }
                Registered {
                    entry,
                    expiry,
                    written: now,
                }
            }
        };
        seen.insert(a.id, registered);
    }
    // What is left was published and has ended.
    for (id, gone) in published.allocations.drain() {
        let status_key = keys::allocation_status(&realm, &gone.entry.user, &format!("{node}-{id}"));
        p.del(&status_key).ignore();
        p.publish(&status_key, "deleted").ignore();
        let traffic = status_key.replace("/status", "/total_traffic");
        p.publish(
            &traffic,
            format!(
                "rcvb={}, sentb={}",
                gone.entry.bytes_to_peer, gone.entry.bytes_to_client
            ),
        )
        .ignore();
        p.hdel(&hash, id).ignore();
        writes += 1;
    }
    if writes > 0 {
        p.expire(&hash, fleet::NODE_TTL as i64).ignore();
        let () = p.query_async(con).await.map_err(err)?;
    }
    published.allocations = seen;
    Ok(())
}

/// Ends `name`'s allocations on this node (every core).
async fn revoke_here(http: &Rc<HttpState>, name: &str) {
    let here = {
        let mut io = super::ShellIo {
            shell: &http.shell,
            core: &http.core,
        };
        http.core
            .borrow_mut()
            .delete_allocations_of_user(name, &mut io)
    };
    let ended = here + http.workers.revoke_user(name).await;
    info!(user = %LogSafe(name), allocations = ended, "user revoked fleet-wide: its allocations here ended");
}

/// Ends allocation `id` here (a fleet admin API's delete).
async fn delete_here(http: &Rc<HttpState>, id: u64) {
    let deleted = {
        let mut io = super::ShellIo {
            shell: &http.shell,
            core: &http.core,
        };
        http.core.borrow_mut().delete_allocation_by_id(id, &mut io)
    } || http.workers.delete(id).await;
    if deleted {
        info!(
            allocation = id,
            "allocation deleted through the fleet admin API"
        );
    }
}
