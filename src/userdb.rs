//! SQLite user database, compatible with coturn's default SQLite backend.
//!
//! coturn keeps its long-term users and TURN REST API shared secrets in an
//! SQLite file (by default `/var/lib/turn/turndb`) with this schema:
//!
//! ```sql
//! CREATE TABLE turnusers_lt ( realm varchar(127) default '', name varchar(512), hmackey char(128), PRIMARY KEY (realm,name));
//! CREATE TABLE turn_secret ( realm varchar(127) default '', value varchar(256), primary key (realm,value));
//! ```
//!
//! `turnusers_lt.hmackey` is the lowercase hex of the long-term key
//! MD5(name ":" realm ":" password) (RFC 8489, section 9.2.2); passwords are
//! never stored. coturn may also store 64 hex digits (a SHA-256 key); those
//! rows are skipped here, since turnd only speaks the MD5 key. `turn_secret`
//! holds the shared secrets of the TURN REST API.
//!
//! [`UserDb`] reads and writes that file, so a coturn database can be pointed
//! at turnd unchanged and `turnd user ...` / `turnd secret ...` (see
//! [`UserCommand`], [`SecretCommand`]) manage it like coturn's `turnadmin`.
//! The server reloads users without a restart by polling
//! [`UserDb::data_version`], which changes whenever another process commits.
//!
//! Realm `''` is coturn's default realm: [`UserDb::users`] and
//! [`UserDb::secrets`] return the rows of the asked realm together with those
//! of realm `''`, the asked realm winning for a name stored under both.
//!
//! Every statement is parameterised; no value is ever formatted into SQL.
//! Neither passwords, keys nor secrets are logged or put in error messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags};
use tracing::{debug, warn};

use crate::auth::{from_hex, to_hex};
use crate::untrusted::{opaque_string, LogSafe};

/// How long a statement waits for another connection's lock (a concurrent
/// `turnd user add`, the server's reload) before failing with "database is
/// locked": 2 s.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// coturn's schema, made idempotent: creates the two tables only where they
/// are missing, so an existing coturn database is left as it is.
const CREATE_TABLES: &str = "\
CREATE TABLE IF NOT EXISTS turnusers_lt ( realm varchar(127) default '', name varchar(512), hmackey char(128), PRIMARY KEY (realm,name));
CREATE TABLE IF NOT EXISTS turn_secret ( realm varchar(127) default '', value varchar(256), primary key (realm,value));";

/// An error of the user database; every message names the database file and
/// the operation that failed, and none carries a password, key or secret.
#[derive(Debug, thiserror::Error)]
pub enum UserDbError {
    /// The file could not be opened (missing directory, no permission, not a
    /// database, missing file for [`UserDb::open_existing`]).
    #[error("cannot open user database {}: {cause}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        cause: rusqlite::Error,
    },
    /// A statement failed (locked past [`BUSY_TIMEOUT`], read-only file,
    /// corrupt database, unexpected schema).
    #[error("user database {}: {operation} failed: {cause}", .path.display())]
    Sql {
        /// The database file.
        path: PathBuf,
        /// What was being done, e.g. `"add user"`.
        operation: &'static str,
        /// What SQLite said.
        cause: rusqlite::Error,
    },
    /// A delete found no such row.
    #[error("user database {}: {what}", .path.display())]
    NotFound {
        /// The database file.
        path: PathBuf,
        /// What was missing, e.g. `no user "bob" in realm "example.org"`
        /// (never the value of a secret).
        what: String,
    },
    /// A user name or secret was empty.
    #[error("user database {}: {operation}: expected a non-empty {field}, got an empty one", .path.display())]
    Empty {
        /// The database file.
        path: PathBuf,
        /// What was being done, e.g. `"add user"`.
        operation: &'static str,
        /// The empty argument: `"user name"` or `"secret"`.
        field: &'static str,
    },
}

/// A connection to a coturn-compatible SQLite user database.
///
/// One connection, not shared between threads (`Send`, not `Sync`); every
/// call is a short blocking SQLite statement, so call it from a blocking
/// context (e.g. `tokio::task::spawn_blocking` or a dedicated thread), never
/// on the packet path. Load the keys with [`UserDb::users`] at start, then
/// poll [`UserDb::data_version`] about once a second and reload when it
/// changes.
#[derive(Debug)]
pub struct UserDb {
    conn: Connection,
    path: PathBuf,
}

/// What an `hmackey` column holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoredKey {
    /// 32 hex digits: the MD5 long-term key.
    Md5([u8; 16]),
    /// 64 hex digits: a SHA-256 key (coturn's `--sha256` variants).
    Sha256,
    /// Anything else.
    Invalid,
}

impl UserDb {
    /// Opens the database at `path`, creating the file and coturn's two tables
    /// (`turnusers_lt`, `turn_secret`) if they do not exist; tables that exist
    /// are left untouched. For `turnd user ...` and tests.
    ///
    /// # Errors
    /// [`UserDbError::Open`] when the file cannot be opened or created (for
    /// instance its directory is missing), [`UserDbError::Sql`] when the tables
    /// cannot be created.
    pub fn open(path: &Path) -> Result<UserDb, UserDbError> {
        let db = Self::open_with(path, OpenFlags::default())?;
        db.conn
            .execute_batch(CREATE_TABLES)
            .map_err(|e| db.sql("create tables", e))?;
        Ok(db)
    }

    /// Opens an existing database read-only, for the server: never creates
    /// the file or a table and never writes. A missing table reads as empty,
    /// so a database that `turnd user add` will fill later can be opened now.
    ///
    /// # Errors
    /// [`UserDbError::Open`] when the file does not exist or cannot be read.
    pub fn open_existing(path: &Path) -> Result<UserDb, UserDbError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Self::open_with(path, flags)?;
        // SQLite opens lazily: read the schema now so that a file that is not a
        // database fails here rather than at the first query.
        db.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|cause| UserDbError::Open {
                path: path.to_owned(),
                cause,
            })?;
        Ok(db)
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<UserDb, UserDbError> {
        let open_error = |cause| UserDbError::Open {
            path: path.to_owned(),
            cause,
        };
        let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        Ok(UserDb {
            conn,
            path: path.to_owned(),
        })
    }

    /// The file this database was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The long-term users the server accepts in `realm`: `(name, key)` with
    /// `key` the 16-byte MD5(name:realm:password) (RFC 8489, section 9.2.2),
    /// sorted by name. Rows of realm `''` (coturn's default realm) are included;
    /// where a name has a row in both, the row of `realm` wins. Rows whose key
    /// is not 32 hex digits (SHA-256 keys, damaged rows) are skipped and logged
    /// by name, never by key. A missing table reads as no users.
    ///
    /// # Errors
    /// [`UserDbError::Sql`] when the table cannot be read.
    pub fn users(&self, realm: &str) -> Result<Vec<(String, [u8; 16])>, UserDbError> {
        const OP: &str = "read users";
        if !self.table_exists("turnusers_lt", OP)? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, hmackey, realm = ?1 FROM turnusers_lt \
                 WHERE realm = ?1 OR realm = '' ORDER BY name",
            )
            .map_err(|e| self.sql(OP, e))?;
        let mut rows = stmt.query(params![realm]).map_err(|e| self.sql(OP, e))?;
        // name -> (key, from the exact realm)
        let mut users: BTreeMap<String, ([u8; 16], bool)> = BTreeMap::new();
        while let Some(row) = rows.next().map_err(|e| self.sql(OP, e))? {
            let exact: bool = row.get(2).map_err(|e| self.sql(OP, e))?;
            let row_realm = if exact { realm } else { "" };
            let Some(name) = text(row.get_ref(0).map_err(|e| self.sql(OP, e))?) else {
                warn!(target: "turnd::userdb", path = %self.path.display(), realm = row_realm,
                    "skipping a user whose name is not text");
                continue;
            };
            // Prepared as USERNAME is when it comes (RFC 8489 section 14.3).
            let name = match opaque_string(name) {
                Ok(n) => n,
                Err(e) => {
                    warn!(target: "turnd::userdb", path = %self.path.display(), realm = row_realm,
                        user = %LogSafe(name), error = %e, "skipping a user whose name the OpaqueString profile refuses");
                    continue;
                }
            };
            let key = match text(row.get_ref(1).map_err(|e| self.sql(OP, e))?) {
                Some(hex) => parse_key(hex),
                None => StoredKey::Invalid,
            };
            let key = match key {
                StoredKey::Md5(key) => key,
                StoredKey::Sha256 => {
                    debug!(target: "turnd::userdb", path = %self.path.display(), realm = row_realm,
                        user = %LogSafe(&name), "skipping a user with a SHA-256 key; only MD5 keys are supported");
                    continue;
                }
                StoredKey::Invalid => {
                    warn!(target: "turnd::userdb", path = %self.path.display(), realm = row_realm,
                        user = %LogSafe(&name), "skipping a user whose hmackey is not 32 hex digits");
                    continue;
                }
            };
            match users.get(&*name) {
                Some(&(_, true)) if !exact => {}
                _ => {
                    users.insert(name.into_owned(), (key, exact));
                }
            }
        }
        Ok(users
            .into_iter()
            .map(|(name, (key, _))| (name, key))
            .collect())
    }

    /// The TURN REST API shared secrets the server accepts in `realm`: those
    /// of `realm` first, then those of realm `''` (coturn's default realm) not
    /// already listed, each group sorted. A missing table reads as no secrets.
    ///
    /// # Errors
    /// [`UserDbError::Sql`] when the table cannot be read.
    pub fn secrets(&self, realm: &str) -> Result<Vec<String>, UserDbError> {
        const OP: &str = "read secrets";
        if !self.table_exists("turn_secret", OP)? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT value FROM turn_secret WHERE realm = ?1 OR realm = '' \
                 ORDER BY realm = ?1 DESC, value",
            )
            .map_err(|e| self.sql(OP, e))?;
        let mut rows = stmt.query(params![realm]).map_err(|e| self.sql(OP, e))?;
        let mut secrets: Vec<String> = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sql(OP, e))? {
            match text(row.get_ref(0).map_err(|e| self.sql(OP, e))?) {
                Some("") => {}
                Some(s) => {
                    if !secrets.iter().any(|known| known == s) {
                        secrets.push(s.to_owned());
                    }
                }
                None => warn!(target: "turnd::userdb", path = %self.path.display(),
                    "skipping a secret that is not text"),
            }
        }
        Ok(secrets)
    }

    /// Adds user `name` to `realm` with the key MD5(name:realm:password), or
    /// replaces the key of an existing one. Stores only the lowercase hex key,
    /// never the password.
    ///
    /// The key is bound to `realm`: a user added to realm `''` only
    /// authenticates on a server whose realm is `''`.
    ///
    /// # Errors
    /// [`UserDbError::Empty`] for an empty name, [`UserDbError::Sql`] when the
    /// row cannot be written (read-only file, lock held past [`BUSY_TIMEOUT`]).
    pub fn add_user(&self, realm: &str, name: &str, password: &str) -> Result<(), UserDbError> {
        let key = crate::stun::long_term_key(name, realm, password);
        self.add_user_key(realm, name, key)
    }

    /// Adds user `name` to `realm` with a precomputed long-term `key`
    /// (MD5(name:realm:password), 16 bytes), or replaces an existing key.
    ///
    /// # Errors
    /// [`UserDbError::Empty`] for an empty name, [`UserDbError::Sql`] when the
    /// row cannot be written.
    pub fn add_user_key(&self, realm: &str, name: &str, key: [u8; 16]) -> Result<(), UserDbError> {
        const OP: &str = "add user";
        self.non_empty(name, OP, "user name")?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO turnusers_lt (realm, name, hmackey) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![realm, name, to_hex(&key)]))
            .map_err(|e| self.sql(OP, e))?;
        Ok(())
    }

    /// Deletes user `name` of `realm` (exactly that realm, not `''`).
    /// Returns whether a row was deleted.
    ///
    /// # Errors
    /// [`UserDbError::Sql`] when the row cannot be deleted.
    pub fn delete_user(&self, realm: &str, name: &str) -> Result<bool, UserDbError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM turnusers_lt WHERE realm = ?1 AND name = ?2")
            .and_then(|mut s| s.execute(params![realm, name]))
            .map_err(|e| self.sql("delete user", e))?;
        Ok(n > 0)
    }

    /// The names of the users stored under exactly `realm` (not `''`),
    /// sorted, whatever their key kind; what `turnd user list` prints.
    ///
    /// # Errors
    /// [`UserDbError::Sql`] when the table cannot be read.
    pub fn list_users(&self, realm: &str) -> Result<Vec<String>, UserDbError> {
        self.list(
            "list users",
            "turnusers_lt",
            "SELECT name FROM turnusers_lt WHERE realm = ?1 ORDER BY name",
            realm,
        )
    }

    /// Adds a TURN REST API shared secret to `realm`; adding one that is
    /// already there does nothing.
    ///
    /// # Errors
    /// [`UserDbError::Empty`] for an empty secret, [`UserDbError::Sql`] when
    /// the row cannot be written.
    pub fn add_secret(&self, realm: &str, secret: &str) -> Result<(), UserDbError> {
        const OP: &str = "add secret";
        self.non_empty(secret, OP, "secret")?;
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO turn_secret (realm, value) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![realm, secret]))
            .map_err(|e| self.sql(OP, e))?;
        Ok(())
    }

    /// Deletes a shared secret of exactly `realm`. Returns whether a row was
    /// deleted.
    ///
    /// # Errors
    /// [`UserDbError::Sql`] when the row cannot be deleted.
    pub fn delete_secret(&self, realm: &str, secret: &str) -> Result<bool, UserDbError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM turn_secret WHERE realm = ?1 AND value = ?2")
            .and_then(|mut s| s.execute(params![realm, secret]))
            .map_err(|e| self.sql("delete secret", e))?;
        Ok(n > 0)
    }

    /// The shared secrets stored under exactly `realm` (not `''`), sorted;
    /// what `turnd secret list` prints.
    ///
    /// # Errors
    /// [`UserDbError::Sql`] when the table cannot be read.
    pub fn list_secrets(&self, realm: &str) -> Result<Vec<String>, UserDbError> {
        self.list(
            "list secrets",
            "turn_secret",
            "SELECT value FROM turn_secret WHERE realm = ?1 ORDER BY value",
            realm,
        )
    }

    /// SQLite's `PRAGMA data_version`: a number that changes when another
    /// connection (another process, e.g. `turnd user add`) commits to the
    /// file, and stays the same across this connection's own reads and
    /// writes. Poll it about once a second and reload [`UserDb::users`] and
    /// [`UserDb::secrets`] when it differs from the last value.
    ///
    /// # Errors
    /// [`UserDbError::Sql`] when the pragma cannot be read.
    pub fn data_version(&self) -> Result<u64, UserDbError> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.sql("read data_version", e))?;
        // Opaque and never negative; only compared for equality.
        Ok(v as u64)
    }

    fn list(
        &self,
        op: &'static str,
        table: &str,
        sql: &str,
        realm: &str,
    ) -> Result<Vec<String>, UserDbError> {
        if !self.table_exists(table, op)? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql(op, e))?;
        let mut rows = stmt.query(params![realm]).map_err(|e| self.sql(op, e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sql(op, e))? {
            if let Some(s) = text(row.get_ref(0).map_err(|e| self.sql(op, e))?) {
                out.push(s.to_owned());
            }
        }
        Ok(out)
    }

    fn table_exists(&self, table: &str, op: &'static str) -> Result<bool, UserDbError> {
        self.conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .and_then(|mut s| s.exists(params![table]))
            .map_err(|e| self.sql(op, e))
    }

    fn non_empty(
        &self,
        value: &str,
        operation: &'static str,
        field: &'static str,
    ) -> Result<(), UserDbError> {
        if value.is_empty() {
            return Err(UserDbError::Empty {
                path: self.path.clone(),
                operation,
                field,
            });
        }
        Ok(())
    }

    fn sql(&self, operation: &'static str, cause: rusqlite::Error) -> UserDbError {
        UserDbError::Sql {
            path: self.path.clone(),
            operation,
            cause,
        }
    }
}

/// A column's value as UTF-8 text, or `None` for NULL, numbers, blobs and
/// invalid UTF-8.
fn text(v: ValueRef<'_>) -> Option<&str> {
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t).ok(),
        _ => None,
    }
}

/// Reads an `hmackey`: 32 hex digits (either case, surrounding blanks
/// ignored) is an MD5 key, 64 a SHA-256 one, anything else is invalid.
pub(crate) fn parse_key(hex: &str) -> StoredKey {
    let hex = hex.trim();
    if let Some(key) = from_hex::<16>(hex) {
        StoredKey::Md5(key)
    } else if from_hex::<32>(hex).is_some() {
        StoredKey::Sha256
    } else {
        StoredKey::Invalid
    }
}

/// `turnd user ...`: manage long-term users in the database.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user, or replace the password of an existing one (only the key
    /// MD5(name:realm:password) is stored)
    Add {
        /// User name, as the client sends it in USERNAME
        name: String,
        /// Password (visible to other local users in the process list while
        /// the command runs)
        password: String,
    },
    /// Delete a user of the realm
    Delete {
        /// User name
        name: String,
    },
    /// List the user names of the realm, one per line
    List,
    /// End the allocations of a username (long-term or TURN REST) on every
    /// node and refuse it for a while (Redis user database only)
    Revoke {
        /// User name, as the client sends it in USERNAME
        name: String,
        /// How long the name stays refused, in seconds
        #[arg(long, default_value_t = 86_400)]
        seconds: u64,
    },
}

/// `turnd secret ...`: manage TURN REST API shared secrets in the database.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SecretCommand {
    /// Add a shared secret to the realm
    Add {
        /// The shared secret
        secret: String,
    },
    /// Delete a shared secret of the realm
    Delete {
        /// The shared secret
        secret: String,
    },
    /// List the shared secrets of the realm, one per line
    List,
}

/// Runs a `turnd user ...` command against the database at `db` (created with
/// coturn's tables if missing) for `realm`, and returns the text to print:
/// a one-line confirmation (never the password), or the names one per line
/// with no trailing newline (empty when there are none).
///
/// # Errors
/// Those of [`UserDb::open`] and the operation; [`UserDbError::NotFound`]
/// when deleting a user that is not there.
pub fn run_user_command(db: &Path, realm: &str, cmd: &UserCommand) -> Result<String, UserDbError> {
    let udb = UserDb::open(db)?;
    match cmd {
        UserCommand::Add { name, password } => {
            udb.add_user(realm, name, password)?;
            Ok(format!("added user {name:?} to realm {realm:?}"))
        }
        UserCommand::Delete { name } => {
            if udb.delete_user(realm, name)? {
                Ok(format!("deleted user {name:?} from realm {realm:?}"))
            } else {
                Err(UserDbError::NotFound {
                    path: db.to_owned(),
                    what: format!("no user {name:?} in realm {realm:?}"),
                })
            }
        }
        UserCommand::List => Ok(udb.list_users(realm)?.join("\n")),
        UserCommand::Revoke { .. } => Err(UserDbError::NotFound {
            path: db.to_owned(),
            what: "`revoke` needs the Redis user database (--redis-userdb): a node reading SQLite ends a user's allocations when the user is deleted".into(),
        }),
    }
}

/// Runs a `turnd secret ...` command against the database at `db` (created
/// with coturn's tables if missing) for `realm`, and returns the text to
/// print: a one-line confirmation (never the secret), or the secrets one per
/// line with no trailing newline (empty when there are none).
///
/// # Errors
/// Those of [`UserDb::open`] and the operation; [`UserDbError::NotFound`]
/// when deleting a secret that is not there.
pub fn run_secret_command(
    db: &Path,
    realm: &str,
    cmd: &SecretCommand,
) -> Result<String, UserDbError> {
    let udb = UserDb::open(db)?;
    match cmd {
        SecretCommand::Add { secret } => {
            udb.add_secret(realm, secret)?;
            Ok(format!("added a secret to realm {realm:?}"))
        }
        SecretCommand::Delete { secret } => {
            if udb.delete_secret(realm, secret)? {
                Ok(format!("deleted a secret from realm {realm:?}"))
            } else {
                Err(UserDbError::NotFound {
                    path: db.to_owned(),
                    what: format!("no such secret in realm {realm:?}"),
                })
            }
        }
        SecretCommand::List => Ok(udb.list_secrets(realm)?.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::long_term_key;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// coturn's schema, verbatim (no IF NOT EXISTS).
    const COTURN_SCHEMA: &str = "\
CREATE TABLE turnusers_lt ( realm varchar(127) default '', name varchar(512), hmackey char(128), PRIMARY KEY (realm,name));
CREATE TABLE turn_secret ( realm varchar(127) default '', value varchar(256), primary key (realm,value));";

    /// A unique database path under the temp dir, removed (with SQLite's
    /// side files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(tag: &str) -> TempDb {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("turnd-userdb-{}-{tag}-{n}.sqlite", std::process::id());
            let path = std::env::temp_dir().join(name);
            let t = TempDb(path);
            t.remove();
            t
        }

        fn remove(&self) {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            self.remove();
        }
    }

    fn stored_hmackey(path: &Path, realm: &str, name: &str) -> String {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT hmackey FROM turnusers_lt WHERE realm = ?1 AND name = ?2",
                params![realm, name],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn add_list_delete_users() {
        let t = TempDb::new("users");
        let db = UserDb::open(&t.0).unwrap();
        assert!(db.users("example.org").unwrap().is_empty());
        db.add_user("example.org", "bob", "secret1").unwrap();
        db.add_user("example.org", "alice", "pw").unwrap();
        db.add_user("other.org", "carol", "pw").unwrap();
        assert_eq!(db.list_users("example.org").unwrap(), ["alice", "bob"]);
        assert_eq!(db.list_users("other.org").unwrap(), ["carol"]);
        assert_eq!(
            db.users("example.org").unwrap(),
            [
                (
                    "alice".to_owned(),
                    long_term_key("alice", "example.org", "pw")
                ),
                (
                    "bob".to_owned(),
                    long_term_key("bob", "example.org", "secret1")
                ),
            ]
        );

        // Replacing keeps one row with the new key.
        db.add_user("example.org", "bob", "secret2").unwrap();
        assert_eq!(db.list_users("example.org").unwrap(), ["alice", "bob"]);
        assert_eq!(
            db.users("example.org").unwrap()[1],
            (
                "bob".to_owned(),
                long_term_key("bob", "example.org", "secret2")
            )
        );

        let key = [7u8; 16];
        db.add_user_key("example.org", "dave", key).unwrap();
        assert_eq!(
            db.users("example.org").unwrap()[2],
            ("dave".to_owned(), key)
        );

        assert!(db.delete_user("example.org", "bob").unwrap());
        assert!(!db.delete_user("example.org", "bob").unwrap());
        assert!(!db.delete_user("example.org", "carol").unwrap());
        assert_eq!(db.list_users("example.org").unwrap(), ["alice", "dave"]);
        assert_eq!(db.list_users("other.org").unwrap(), ["carol"]);
    }

    /// Issue 10: names are prepared with OpaqueString as USERNAME is; a
    /// name it refuses (a control character) is skipped.
    #[test]
    fn user_names_are_prepared_with_opaque_string() {
        let t = TempDb::new("precis");
        let db = UserDb::open(&t.0).unwrap();
        let key = [7u8; 16];
        db.add_user_key("example.org", "bad\nname", key).unwrap();
        db.add_user_key("example.org", "e\u{301}", key).unwrap();
        db.add_user_key("example.org", "ok", key).unwrap();
        assert_eq!(
            db.users("example.org").unwrap(),
            [("ok".to_owned(), key), ("\u{e9}".to_owned(), key)]
        );
    }

    #[test]
    fn stored_hmackey_is_hex_of_long_term_key_never_the_password() {
        let t = TempDb::new("hmackey");
        let db = UserDb::open(&t.0).unwrap();
        db.add_user("example.org", "bob", "hunter2").unwrap();
        let stored = stored_hmackey(&t.0, "example.org", "bob");
        assert_eq!(
            stored,
            to_hex(&long_term_key("bob", "example.org", "hunter2"))
        );
        assert_eq!(stored.len(), 32);
        assert_eq!(stored, stored.to_lowercase());
        // md5sum of "bob:example.org:hunter2", computed outside Rust.
        assert_eq!(stored, "ef57bc8d8c15ddbbe601ea638397ef72");
        drop(db);
        let bytes = std::fs::read(&t.0).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn add_list_delete_secrets() {
        let t = TempDb::new("secrets");
        let db = UserDb::open(&t.0).unwrap();
        assert!(db.secrets("example.org").unwrap().is_empty());
        db.add_secret("example.org", "s2").unwrap();
        db.add_secret("example.org", "s1").unwrap();
        db.add_secret("example.org", "s1").unwrap(); // idempotent
        db.add_secret("other.org", "s3").unwrap();
        assert_eq!(db.list_secrets("example.org").unwrap(), ["s1", "s2"]);
        assert_eq!(db.secrets("example.org").unwrap(), ["s1", "s2"]);
        assert!(db.delete_secret("example.org", "s1").unwrap());
        assert!(!db.delete_secret("example.org", "s1").unwrap());
        assert!(!db.delete_secret("example.org", "s3").unwrap());
        assert_eq!(db.list_secrets("example.org").unwrap(), ["s2"]);
        assert_eq!(db.list_secrets("other.org").unwrap(), ["s3"]);
    }

    #[test]
    fn reads_a_database_made_by_coturn() {
        let t = TempDb::new("coturn");
        let bob = long_term_key("bob", "example.org", "youhavetoberealistic");
        {
            let c = Connection::open(&t.0).unwrap();
            c.execute_batch(COTURN_SCHEMA).unwrap();
            // As turnadmin writes them: plain SQL, lowercase hex.
            c.execute_batch(&format!(
                "INSERT INTO turnusers_lt (realm,name,hmackey) VALUES ('example.org','bob','{}');
                 INSERT INTO turnusers_lt (realm,name,hmackey) VALUES ('example.org','upper','{}');
                 INSERT INTO turnusers_lt (realm,name,hmackey) VALUES ('example.org','sha','{}');
                 INSERT INTO turnusers_lt (realm,name,hmackey) VALUES ('example.org','broken','xyz');
                 INSERT INTO turnusers_lt (realm,name,hmackey) VALUES ('example.org','null',NULL);
                 INSERT INTO turn_secret (realm,value) VALUES ('example.org','logen');",
                to_hex(&bob),
                to_hex(&[0xab; 16]).to_uppercase(),
                "0123456789abcdef".repeat(4),
            ))
            .unwrap();
        }
        // The server's read-only open.
        let ro = UserDb::open_existing(&t.0).unwrap();
        let expected = vec![("bob".to_owned(), bob), ("upper".to_owned(), [0xab; 16])];
        assert_eq!(ro.users("example.org").unwrap(), expected);
        assert_eq!(ro.secrets("example.org").unwrap(), ["logen"]);
        assert_eq!(
            ro.list_users("example.org").unwrap(),
            ["bob", "broken", "null", "sha", "upper"]
        );
        // A write through the read-only connection fails, naming the file.
        let err = ro.add_user("example.org", "eve", "x").unwrap_err();
        assert!(
            err.to_string().contains(&t.0.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("add user"), "{err}");
        drop(ro);

        // The read-write open leaves coturn's tables as they are.
        let rw = UserDb::open(&t.0).unwrap();
        assert_eq!(rw.users("example.org").unwrap(), expected);
        rw.add_user("example.org", "carol", "pw").unwrap();
        assert_eq!(rw.users("example.org").unwrap().len(), 3);
    }

    #[test]
    fn parse_key_kinds() {
        let k = long_term_key("a", "b", "c");
        assert_eq!(parse_key(&to_hex(&k)), StoredKey::Md5(k));
        assert_eq!(
            parse_key(&format!(" {} ", to_hex(&k).to_uppercase())),
            StoredKey::Md5(k)
        );
        assert_eq!(parse_key(&"0f".repeat(32)), StoredKey::Sha256);
        assert_eq!(parse_key(&"0f".repeat(15)), StoredKey::Invalid);
        assert_eq!(parse_key(&"g0".repeat(16)), StoredKey::Invalid);
        assert_eq!(parse_key(""), StoredKey::Invalid);
    }

    #[test]
    fn default_realm_fallback() {
        let t = TempDb::new("fallback");
        let db = UserDb::open(&t.0).unwrap();
        db.add_user_key("", "alice", [1; 16]).unwrap();
        db.add_user_key("example.org", "bob", [2; 16]).unwrap();
        db.add_user_key("", "carol", [3; 16]).unwrap();
        db.add_user_key("example.org", "carol", [4; 16]).unwrap();
        assert_eq!(
            db.users("example.org").unwrap(),
            [
                ("alice".to_owned(), [1; 16]),
                ("bob".to_owned(), [2; 16]),
                ("carol".to_owned(), [4; 16]),
            ]
        );
        assert_eq!(
            db.users("other.org").unwrap(),
            [("alice".to_owned(), [1; 16]), ("carol".to_owned(), [3; 16])]
        );
        assert_eq!(db.list_users("example.org").unwrap(), ["bob", "carol"]);

        db.add_secret("", "zz-default").unwrap();
        db.add_secret("", "shared").unwrap();
        db.add_secret("example.org", "shared").unwrap();
        db.add_secret("example.org", "exact").unwrap();
        assert_eq!(
            db.secrets("example.org").unwrap(),
            ["exact", "shared", "zz-default"]
        );
        assert_eq!(db.secrets("other.org").unwrap(), ["shared", "zz-default"]);
        assert_eq!(db.list_secrets("example.org").unwrap(), ["exact", "shared"]);
    }

    #[test]
    fn data_version_changes_on_another_connections_commit_only() {
        let t = TempDb::new("version");
        let reader = UserDb::open(&t.0).unwrap();
        let v0 = reader.data_version().unwrap();
        reader.users("example.org").unwrap();
        reader.secrets("example.org").unwrap();
        assert_eq!(reader.data_version().unwrap(), v0);

        let writer = UserDb::open(&t.0).unwrap();
        writer.add_user("example.org", "bob", "pw").unwrap();
        let v1 = reader.data_version().unwrap();
        assert_ne!(v1, v0);
        assert_eq!(reader.users("example.org").unwrap().len(), 1);
        assert_eq!(reader.data_version().unwrap(), v1);

        // The reader's own commits do not move it.
        reader.add_secret("example.org", "s").unwrap();
        assert_eq!(reader.data_version().unwrap(), v1);

        // A read-only server connection sees the CLI's commits too.
        let server = UserDb::open_existing(&t.0).unwrap();
        let s0 = server.data_version().unwrap();
        writer.delete_user("example.org", "bob").unwrap();
        assert_ne!(server.data_version().unwrap(), s0);
        assert!(server.users("example.org").unwrap().is_empty());
    }

    #[test]
    fn hostile_names_round_trip() {
        let t = TempDb::new("quotes");
        let db = UserDb::open(&t.0).unwrap();
        let name = "o'brien; DROP TABLE turnusers_lt;--";
        let realm = "ex\"am'ple; DROP TABLE turn_secret;--";
        db.add_user(realm, name, "p'w\";--").unwrap();
        db.add_secret(realm, name).unwrap();
        assert_eq!(db.list_users(realm).unwrap(), [name]);
        assert_eq!(
            db.users(realm).unwrap(),
            [(name.to_owned(), long_term_key(name, realm, "p'w\";--"))]
        );
        assert_eq!(db.secrets(realm).unwrap(), [name]);
        assert!(db.delete_user(realm, name).unwrap());
        assert!(db.delete_secret(realm, name).unwrap());
        assert!(db.table_exists("turnusers_lt", "t").unwrap());
        assert!(db.table_exists("turn_secret", "t").unwrap());
        assert!(db.list_users(realm).unwrap().is_empty());
    }

    #[test]
    fn missing_directory_names_the_path() {
        let dir = std::env::temp_dir().join(format!("turnd-userdb-missing-{}", std::process::id()));
        let path = dir.join("sub").join("turndb");
        for open in [UserDb::open, UserDb::open_existing] {
            let err = open(&path).unwrap_err();
            assert!(matches!(err, UserDbError::Open { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.starts_with("cannot open user database"), "{msg}");
        }
        assert!(!dir.exists());
    }

    #[test]
    fn open_existing_does_not_create() {
        let t = TempDb::new("nocreate");
        assert!(UserDb::open_existing(&t.0).is_err());
        assert!(!t.0.exists());

        // An empty database (no tables yet) reads as empty, and is not written.
        Connection::open(&t.0)
            .unwrap()
            .execute_batch("CREATE TABLE other (x)")
            .unwrap();
        let ro = UserDb::open_existing(&t.0).unwrap();
        assert!(ro.users("example.org").unwrap().is_empty());
        assert!(ro.secrets("example.org").unwrap().is_empty());
        assert!(ro.list_users("example.org").unwrap().is_empty());
        assert!(!ro.table_exists("turnusers_lt", "t").unwrap());

        // A file that is not a database fails at open.
        std::fs::write(&t.0, b"this is not an sqlite database, just some text....").unwrap();
        let err = UserDb::open_existing(&t.0).unwrap_err();
        assert!(matches!(err, UserDbError::Open { .. }), "{err:?}");
    }

    #[test]
    fn empty_name_or_secret_is_refused() {
        let t = TempDb::new("empty");
        let db = UserDb::open(&t.0).unwrap();
        let err = db.add_user("example.org", "", "pw").unwrap_err();
        assert!(matches!(
            err,
            UserDbError::Empty {
                field: "user name",
                ..
            }
        ));
        let err = db.add_secret("example.org", "").unwrap_err();
        assert!(matches!(
            err,
            UserDbError::Empty {
                field: "secret",
                ..
            }
        ));
        assert!(db.list_users("example.org").unwrap().is_empty());
    }

    #[test]
    fn cli_commands() {
        let t = TempDb::new("cli");
        let add = UserCommand::Add {
            name: "bob".into(),
            password: "hunter2".into(),
        };
        let out = run_user_command(&t.0, "example.org", &add).unwrap();
        assert_eq!(out, "added user \"bob\" to realm \"example.org\"");
        assert!(!out.contains("hunter2"));
        let add = UserCommand::Add {
            name: "alice".into(),
            password: "pw".into(),
        };
        run_user_command(&t.0, "example.org", &add).unwrap();
        assert_eq!(
            run_user_command(&t.0, "example.org", &UserCommand::List).unwrap(),
            "alice\nbob"
        );
        assert_eq!(
            run_user_command(&t.0, "other.org", &UserCommand::List).unwrap(),
            ""
        );
        let del = UserCommand::Delete { name: "bob".into() };
        assert_eq!(
            run_user_command(&t.0, "example.org", &del).unwrap(),
            "deleted user \"bob\" from realm \"example.org\""
        );
        let err = run_user_command(&t.0, "example.org", &del).unwrap_err();
        assert!(matches!(err, UserDbError::NotFound { .. }));
        assert!(err
            .to_string()
            .contains("no user \"bob\" in realm \"example.org\""));

        let add = SecretCommand::Add {
            secret: "topsecret".into(),
        };
        let out = run_secret_command(&t.0, "example.org", &add).unwrap();
        assert!(!out.contains("topsecret"), "{out}");
        assert_eq!(
            run_secret_command(&t.0, "example.org", &SecretCommand::List).unwrap(),
            "topsecret"
        );
        let del = SecretCommand::Delete {
            secret: "topsecret".into(),
        };
        let out = run_secret_command(&t.0, "example.org", &del).unwrap();
        assert!(!out.contains("topsecret"), "{out}");
        let err = run_secret_command(&t.0, "example.org", &del).unwrap_err();
        assert!(matches!(err, UserDbError::NotFound { .. }));
        assert!(!err.to_string().contains("topsecret"));

        let db = UserDb::open(&t.0).unwrap();
        assert_eq!(
            db.users("example.org").unwrap(),
            [(
                "alice".to_owned(),
                long_term_key("alice", "example.org", "pw")
            )]
        );
    }

    #[test]
    fn clap_parses_the_subcommands() {
        use clap::{Parser, Subcommand};
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: Cmd,
        }
        #[derive(Debug, Subcommand)]
        enum Cmd {
            User {
                #[command(subcommand)]
                cmd: UserCommand,
            },
            Secret {
                #[command(subcommand)]
                cmd: SecretCommand,
            },
        }
        let cli = Cli::try_parse_from(["turnd", "user", "add", "bob", "pw"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::User { cmd: UserCommand::Add { ref name, ref password } } if name == "bob" && password == "pw"
        ));
        let cli = Cli::try_parse_from(["turnd", "secret", "delete", "s"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Secret { cmd: SecretCommand::Delete { ref secret } } if secret == "s"
        ));
        assert!(Cli::try_parse_from(["turnd", "user", "add", "bob"]).is_err());
    }
}
