//! The SQLite user database (coturn's schema) against the real turnd binary:
//! users and REST secrets managed with `turnd user ...` / `turnd secret ...`
//! while the server runs are seen within a bounded time (README: "changes
//! seen by a running server within a second"), and a database written with
//! coturn's own schema and key format is accepted unchanged.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;
use turnd::auth::{rest_password, to_hex};
use turnd::stun::long_term_key;

/// Longest wait for a database change to reach the running server.
const PROPAGATION: Duration = Duration::from_secs(5);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(100);

/// A fresh database path in a fresh directory for this test (removed when
/// the returned directory drops).
fn db_path(name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(&format!("userdb-{name}"));
    let db = dir.join("turndb");
    (dir, db)
}

/// turnd on relay ports `min..=max` with the user database `db`, the
/// per-source auth failure limit off (the tests poll with failing attempts
/// on purpose) and `extra`.
fn with_userdb(min: u16, max: u16, db: &str, extra: &[&str]) -> TestServer {
    Turnd::standard(min, max)
        .args(["--userdb", db, "--auth-failures-per-minute", "0"])
        .args(extra)
        .start()
}

fn user_cmd(db: &Path, args: &[&str]) -> String {
    let db = db.to_str().unwrap();
    let mut all = vec!["user", "--userdb", db, "--realm", REALM];
    all.extend_from_slice(args);
    run_turnd_ok(&all)
}

fn secret_cmd(db: &Path, args: &[&str]) -> String {
    let db = db.to_str().unwrap();
    let mut all = vec!["secret", "--userdb", db, "--realm", REALM];
    all.extend_from_slice(args);
    run_turnd_ok(&all)
}

/// [`allocates`] on `server`'s address.
fn try_allocate(server: &TestServer, user: &str, password: &str) -> bool {
    allocates(server.addr, user, password)
}

/// Polls `try_allocate` until it returns `want`, for at most [`PROPAGATION`];
/// returns how long it took. Panics with `what` when it never does.
fn wait_until_allocate(
    server: &TestServer,
    user: &str,
    password: &str,
    want: bool,
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        if try_allocate(server, user, password) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "{what}: not seen by the running server within {PROPAGATION:?}"
        );
        std::thread::sleep(POLL);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn users_added_and_deleted_while_running_are_seen_within_bounded_time() {
    let (min, max) = relay_ports(Suite::AuthUserdb, 0);
    let (_dir, db) = db_path("users");
    user_cmd(&db, &["add", "dave", "pw1"]);
    // Polling makes failed attempts on purpose: switch off the per-source
    // failure limit so that the polls themselves are not blocked.
    let dbs = db.to_str().unwrap();
    let server = with_userdb(min, max, dbs, &[]);

    assert!(try_allocate(&server, "dave", "pw1"), "dave from the db");
    assert!(
        !try_allocate(&server, "dave", "wrong"),
        "dave, wrong password"
    );
    assert!(
        !try_allocate(&server, "erin", "pw2"),
        "erin before she is added"
    );
    // The static user of the command line is still there beside the db.
    server.client().allocate();

    user_cmd(&db, &["add", "erin", "pw2"]);
    let t = wait_until_allocate(&server, "erin", "pw2", true, "`turnd user add erin`");
    eprintln!("user add reached the running server in {t:?}");

    let listed = user_cmd(&db, &["list"]);
    assert!(
        listed.lines().any(|l| l.trim() == "erin") && listed.lines().any(|l| l.trim() == "dave"),
        "user list: {listed}"
    );

    user_cmd(&db, &["delete", "dave"]);
    let t = wait_until_allocate(&server, "dave", "pw1", false, "`turnd user delete dave`");
    eprintln!("user delete reached the running server in {t:?}");
    // erin is untouched by dave's deletion.
    assert!(try_allocate(&server, "erin", "pw2"));

    // Changing a password replaces the key.
    user_cmd(&db, &["add", "erin", "pw3"]);
    wait_until_allocate(&server, "erin", "pw3", true, "erin's new password");
    assert!(!try_allocate(&server, "erin", "pw2"), "erin's old password");
}

#[test]
fn rest_secrets_from_the_user_database() {
    let (min, max) = relay_ports(Suite::AuthUserdb, 1);
    let (_dir, db) = db_path("secrets");
    secret_cmd(&db, &["add", "dbsecret"]);
    let dbs = db.to_str().unwrap();
    let server = with_userdb(min, max, dbs, &["--use-auth-secret"]);
    let username = format!("{}:bob", unix_now() + 3600);
    let ok = rest_password("dbsecret", &username);
    assert!(
        try_allocate(&server, &username, &ok),
        "REST creds from dbsecret"
    );
    let other = rest_password("othersecret", &username);
    assert!(!try_allocate(&server, &username, &other), "unknown secret");

    // A secret added while the server runs is accepted within bounded time...
    secret_cmd(&db, &["add", "othersecret"]);
    let t = wait_until_allocate(&server, &username, &other, true, "`turnd secret add`");
    eprintln!("secret add reached the running server in {t:?}");
    // ...and a deleted one stops working.
    secret_cmd(&db, &["delete", "dbsecret"]);
    wait_until_allocate(&server, &username, &ok, false, "`turnd secret delete`");
    assert!(try_allocate(&server, &username, &other));
}

/// coturn's SQLite schema (turnserver's `schema.sql`), as coturn creates it.
const COTURN_SCHEMA: &str = "
CREATE TABLE turnusers_lt ( realm varchar(127) default '', name varchar(512), hmackey char(128), PRIMARY KEY (realm,name));
CREATE TABLE turn_secret ( realm varchar(127) default '', value varchar(256), primary key (realm,value));
CREATE TABLE allowed_peer_ip ( realm varchar(127) default '', ip_range varchar(256), primary key (realm,ip_range));
CREATE TABLE denied_peer_ip ( realm varchar(127) default '', ip_range varchar(256), primary key (realm,ip_range));
CREATE TABLE turn_origin_to_realm ( origin varchar(127), realm varchar(127), primary key (origin));
CREATE TABLE turn_realm_option ( realm varchar(127) default '', opt varchar(32), value varchar(128), primary key (realm,opt));
CREATE TABLE oauth_key ( kid varchar(256), ikm_key varchar(256), timestamp bigint default 0, lifetime integer default 0, as_rs_alg varchar(64) default '', realm varchar(127) default '', primary key (kid));
CREATE TABLE admin_user ( name varchar(32), realm varchar(127), password varchar(127), primary key (name));
";

#[test]
fn database_written_with_coturns_schema_is_accepted_unchanged() {
    let (min, max) = relay_ports(Suite::AuthUserdb, 2);
    let (_dir, db) = db_path("coturn");
    {
        let conn = rusqlite::Connection::open(&db).expect("create db");
        conn.execute_batch(COTURN_SCHEMA).expect("coturn schema");
        // What `turnadmin -a -u gina -r test.example -p pw3` stores: hex MD5 key.
        let gina = to_hex(&long_term_key("gina", REALM, "pw3"));
        conn.execute(
            "INSERT INTO turnusers_lt (realm, name, hmackey) VALUES (?1, ?2, ?3)",
            rusqlite::params![REALM, "gina", gina],
        )
        .unwrap();
        // A user of coturn's default realm '' (key still bound to the realm used by clients).
        let hank = to_hex(&long_term_key("hank", REALM, "pw4"));
        conn.execute(
            "INSERT INTO turnusers_lt (realm, name, hmackey) VALUES ('', ?1, ?2)",
            rusqlite::params!["hank", hank],
        )
        .unwrap();
        // A user of another realm must not be accepted in ours.
        let ivan = to_hex(&long_term_key("ivan", "other.example", "pw5"));
        conn.execute(
            "INSERT INTO turnusers_lt (realm, name, hmackey) VALUES ('other.example', ?1, ?2)",
            rusqlite::params!["ivan", ivan],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO turn_secret (realm, value) VALUES (?1, 'coturn-secret')",
            rusqlite::params![REALM],
        )
        .unwrap();
    }
    let dbs = db.to_str().unwrap();
    let server = with_userdb(min, max, dbs, &["--use-auth-secret"]);
    assert!(try_allocate(&server, "gina", "pw3"), "gina (realm row)");
    assert!(try_allocate(&server, "hank", "pw4"), "hank (realm '' row)");
    assert!(
        !try_allocate(&server, "ivan", "pw5"),
        "ivan is of another realm"
    );
    let username = format!("{}:jo", unix_now() + 600);
    let pw = rest_password("coturn-secret", &username);
    assert!(
        try_allocate(&server, &username, &pw),
        "REST creds from turn_secret"
    );

    // `turnd user add` writes what coturn writes: hex MD5 key, realm, name.
    user_cmd(&db, &["add", "kim", "pw6"]);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored: String = conn
        .query_row(
            "SELECT hmackey FROM turnusers_lt WHERE realm = ?1 AND name = 'kim'",
            rusqlite::params![REALM],
            |r| r.get(0),
        )
        .expect("kim's row");
    assert_eq!(stored, to_hex(&long_term_key("kim", REALM, "pw6")));
    // The other coturn tables are left alone.
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 8, "coturn's eight tables, no more, no less");
    drop(conn);
    wait_until_allocate(&server, "kim", "pw6", true, "kim added to a coturn db");
}
