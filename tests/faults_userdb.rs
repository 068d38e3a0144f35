//! Fault injection on the SQLite user database (`userdb`) while turnd runs:
//! the file locked by another connection, deleted, overwritten with
//! garbage, or made unreadable. turnd keeps authenticating with the last
//! users it read, says so in one warning that names the file (not one a
//! poll), keeps relaying without a stall, and takes the file up again
//! once it is fixed.
//!
//! Unreadable: root reads a `chmod 000` file anyway (CAP_DAC_OVERRIDE), and
//! these tests run as root, so the unreadable form tested is a directory
//! where the file was.
//!
//! Relay ports: `Suite::Faults` slots 14-19 (slots 0-13 are
//! `tests/faults.rs`'s).

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

/// Longest wait for a fixed database to reach the running server.
const PROPAGATION: Duration = Duration::from_secs(5);
/// How long a fault lasts: a few of turnd's 1 s polls.
const FAULT: Duration = Duration::from_millis(3500);
/// The warning turnd gives once per fault.
const WARNING: &str = "keeping the last users read";
/// Longest channel round trip while the database is broken: the main thread
/// polls the database, and neither it nor a UDP worker may stall on it (SQLite's busy timeout is 2 s).
const MAX_ROUND_TRIP: Duration = Duration::from_millis(500);

fn user_cmd(db: &Path, args: &[&str]) {
    let db = db.to_str().unwrap();
    let mut all = vec!["user", "--userdb", db, "--realm", REALM];
    all.extend_from_slice(args);
    run_turnd_ok(&all);
}

/// A running turnd on a database holding dave:pw1, one worker (which also
/// polls the database), and a client relaying through an echo peer.
struct Setup {
    _dir: TempDir,
    db: PathBuf,
    server: TestServer,
    relaying: Client,
    _echo: EchoPeer,
}

impl Setup {
    fn start(slot: u16, name: &str) -> Setup {
        let dir = TempDir::new(&format!("faults-userdb-{name}"));
        let db = dir.join("turndb");
        user_cmd(&db, &["add", "dave", "pw1"]);
        let (min, max) = relay_ports(Suite::Faults, slot);
        let mut server = Turnd::standard(min, max)
            .args([
                "--userdb",
                db.to_str().unwrap(),
                "--auth-failures-per-minute",
                "0",
                "--relay-threads",
                "1",
                "--allow-loopback-peers",
            ])
            .start();
        let addr = server.udp();
        assert!(allocates(addr, "dave", "pw1"), "dave from the database");
        let echo = EchoPeer::start();
        let mut relaying = Client::new(addr, USER, PASSWORD);
        relaying.allocate();
        relaying.channel_bind(0x4000, echo.addr).expect_success();
        channel_round_trip(&mut relaying, 0x4000, b"before");
        Setup {
            _dir: dir,
            db,
            server,
            relaying,
            _echo: echo,
        }
    }

    /// For [`FAULT`]: relays round trips (each within [`MAX_ROUND_TRIP`])
    /// and checks that dave still authenticates; then that turnd warned
    /// exactly `warnings` times in all, naming the file.
    #[track_caller]
    fn holds_through_the_fault(&mut self, warnings: usize) {
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut round = 0u32;
        while start.elapsed() < FAULT {
            let t = Instant::now();
            channel_round_trip(&mut self.relaying, 0x4000, &round.to_be_bytes());
            slowest = slowest.max(t.elapsed());
            round += 1;
            if round % 10 == 0 {
                assert!(
                    allocates(self.server.addr, "dave", "pw1"),
                    "dave refused while the database is broken: the last good users must stay"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{round} round trips during the fault, the slowest {slowest:?}");
        assert!(
            slowest < MAX_ROUND_TRIP,
            "a round trip took {slowest:?} while the database was broken: a stall"
        );
        assert!(self.server.is_running(), "turnd died");
        // A poll of a locked file waits out SQLite's 2 s busy timeout before
        // it warns: give the warning that long (and the pipe a moment).
        self.server.wait_for_log(WARNING, warnings, PROPAGATION);
        let log = self.server.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(WARNING)).collect();
        assert_eq!(lines.len(), warnings, "warnings:\n{log}");
        let db = self.db.display().to_string();
        assert!(lines.iter().all(|l| l.contains(&db)), "{lines:?}");
    }

    /// Within [`PROPAGATION`], erin (added to the fixed database) is
    /// accepted and, when `dave_gone`, dave is refused.
    #[track_caller]
    fn recovers(&mut self, dave_gone: bool) {
        let addr = self.server.addr;
        assert!(
            wait_until(PROPAGATION, || allocates(addr, "erin", "pw2")),
            "the fixed database was not taken up:\n{}",
            self.server.log()
        );
        if dave_gone {
            assert!(!allocates(addr, "dave", "pw1"), "dave from the old file");
        }
        channel_round_trip(&mut self.relaying, 0x4000, b"after");
        assert!(!self.server.log().contains("panicked"));
    }
}

/// A good database holding erin:pw2 only, made aside in `dir`.
fn good_db_aside(dir: &Path) -> PathBuf {
    let aside = dir.join("good-aside");
    let _ = std::fs::remove_file(&aside);
    user_cmd(&aside, &["add", "erin", "pw2"]);
    aside
}

#[test]
fn a_locked_database_keeps_the_last_users_without_stalling_the_worker() {
    let mut s = Setup::start(14, "locked");
    let mut conn = rusqlite::Connection::open(&s.db).expect("open db");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .expect("BEGIN EXCLUSIVE");
    tx.execute(
        "INSERT INTO turnusers_lt (realm, name, hmackey) VALUES (?1, 'erin', ?2)",
        rusqlite::params![
            REALM,
            turnd::auth::to_hex(&turnd::stun::long_term_key("erin", REALM, "pw2"))
        ],
    )
    .expect("insert erin");
    s.holds_through_the_fault(1);
    assert!(
        !allocates(s.server.addr, "erin", "pw2"),
        "erin before the commit"
    );
    tx.commit().expect("COMMIT");
    s.recovers(false);
}

#[test]
fn a_deleted_database_keeps_the_last_users_until_a_new_one_comes() {
    let mut s = Setup::start(15, "deleted");
    std::fs::remove_file(&s.db).unwrap();
    s.holds_through_the_fault(1);
    let aside = good_db_aside(s.db.parent().unwrap());
    std::fs::rename(&aside, &s.db).unwrap();
    s.recovers(true);
}

#[test]
fn a_database_overwritten_with_garbage_keeps_the_last_users_until_fixed() {
    let mut s = Setup::start(16, "garbage");
    // In place (the same file, as a botched copy would leave it).
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&s.db, &garbage).unwrap();
    s.holds_through_the_fault(1);
    // Fixed in place too.
    let aside = good_db_aside(s.db.parent().unwrap());
    std::fs::write(&s.db, std::fs::read(&aside).unwrap()).unwrap();
    s.recovers(true);
}

#[test]
fn an_unreadable_database_keeps_the_last_users_until_fixed() {
    let mut s = Setup::start(17, "unreadable");
    let moved = s.db.with_extension("moved");
    std::fs::rename(&s.db, &moved).unwrap();
    std::fs::create_dir(&s.db).unwrap();
    s.holds_through_the_fault(1);
    std::fs::remove_dir(&s.db).unwrap();
    let aside = good_db_aside(s.db.parent().unwrap());
    std::fs::rename(&aside, &s.db).unwrap();
    s.recovers(true);
}

#[test]
fn sighup_with_a_locked_database_keeps_the_configuration_without_stalling() {
    let mut s = Setup::start(18, "sighup-locked");
    let mut conn = rusqlite::Connection::open(&s.db).expect("open db");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .expect("BEGIN EXCLUSIVE");
    s.server.signal("HUP");
    // SQLite waits up to 2 s for the lock: not on the worker.
    s.holds_through_the_fault(1);
    let refused = "SIGHUP: user database unreadable; configuration not reloaded";
    assert!(
        s.server.wait_for_log(refused, 1, PROPAGATION),
        "{}",
        s.server.log()
    );
    assert_eq!(s.server.log().matches(refused).count(), 1);
    tx.rollback().expect("ROLLBACK");
    s.server.signal("HUP");
    assert!(
        s.server
            .wait_for_log("configuration reloaded", 1, PROPAGATION),
        "{}",
        s.server.log()
    );
    assert!(allocates(s.server.addr, "dave", "pw1"));
}
