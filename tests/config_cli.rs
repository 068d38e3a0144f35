//! The command line and configuration file of the real turnd binary: help,
//! `check-config`, error messages that name the file and the option, and a
//! clean failure when the listening port is taken.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};

use support::*;

fn code(out: &RunOutput) -> Option<i32> {
    out.status.and_then(|s| s.code())
}

/// A temporary TOML file in a directory of its own, removed on drop.
struct TempFile {
    path: PathBuf,
    _dir: TempDir,
}

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = TempDir::new("config");
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile { path, _dir: dir }
    }
    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// A valid configuration, with this file's relay ports (no allocation is
/// made here).
fn valid() -> String {
    let (min, max) = relay_ports(Suite::ConfigCli, 0);
    format!(
        "\
listening-ip = \"127.0.0.1\"
listening-port = 0
relay-ip = \"127.0.0.1\"
min-port = {min}
max-port = {max}
realm = \"test.example\"
user = [\"alice:secret\"]
"
    )
}

/// `valid()` with its `min-port` line replaced by `min-port = {value}`.
fn valid_with_min_port(value: &str) -> String {
    let (min, _) = relay_ports(Suite::ConfigCli, 0);
    valid().replace(&format!("min-port = {min}"), &format!("min-port = {value}"))
}

#[test]
fn help_lists_every_documented_flag() {
    let out = run_turnd(&["--help"]);
    assert_eq!(code(&out), Some(0), "{out:?}");
    for flag in [
        "--config",
        "--listening-ip",
        "--listening-port",
        "--relay-ip",
        "--min-port",
        "--max-port",
        "--realm",
        "--user",
        "--allow-loopback-peers",
        "--allowed-peer-ip",
        "--denied-peer-ip",
        "--fingerprint",
        "--verbose",
        "--user-quota",
        "--total-quota",
        "--stale-nonce",
        "check-config",
    ] {
        assert!(
            out.stdout.contains(flag),
            "--help does not mention {flag}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("turnserver.toml.example");
    assert!(
        example.is_file(),
        "{} is missing: the repository must ship an example configuration",
        example.display()
    );
    let out = run_turnd(&["check-config", "turnserver.toml.example"]);
    assert_eq!(
        code(&out),
        Some(0),
        "check-config turnserver.toml.example: {out:?}"
    );
}

#[test]
fn valid_file_passes_check_config() {
    let f = TempFile::new("valid.toml", &valid());
    let out = run_turnd(&["check-config", f.path()]);
    assert_eq!(code(&out), Some(0), "{out:?}");
}

#[test]
fn unknown_key_is_rejected_naming_key_and_file() {
    let f = TempFile::new("unknown.toml", &format!("{}bogus-option = 1\n", valid()));
    let out = run_turnd(&["check-config", f.path()]);
    assert_eq!(code(&out), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("bogus-option"),
        "key not named: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(f.path()),
        "file not named: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // Starting the server with that file fails the same way, before binding.
    let out = run_turnd(&["--config", f.path()]);
    assert_eq!(code(&out), Some(2), "{out:?}");
    assert!(out.stderr.contains("bogus-option"), "{}", out.stderr);
    assert!(out.stderr.contains(f.path()), "{}", out.stderr);
    assert!(!out.stdout.contains("listening on"), "{}", out.stdout);
}

#[test]
fn min_port_above_max_port_names_the_option() {
    let text = valid_with_min_port("30000");
    let f = TempFile::new("ports.toml", &text);
    let out = run_turnd(&["check-config", f.path()]);
    assert_eq!(code(&out), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("min-port"),
        "option not named: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(f.path()),
        "file not named: {}",
        out.stderr
    );

    // The same on the command line.
    let args = Turnd::standard(30000, 20000);
    let out = run_turnd(args.arguments());
    assert_eq!(code(&out), Some(2), "{out:?}");
    assert!(out.stderr.contains("min-port"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn malformed_values_name_the_option() {
    for (name, text, option) in [
        (
            "badport.toml",
            valid().replace("listening-port = 0", "listening-port = 70000"),
            "listening-port",
        ),
        ("badtype.toml", valid_with_min_port("\"low\""), "min-port"),
        (
            "badip.toml",
            valid().replace("relay-ip = \"127.0.0.1\"", "relay-ip = \"not-an-ip\""),
            "relay-ip",
        ),
        (
            "baduser.toml",
            valid().replace("alice:secret", "alice"),
            "user",
        ),
        (
            "badnonce.toml",
            format!("{}stale-nonce = 0\n", valid()),
            "stale-nonce",
        ),
    ] {
        let f = TempFile::new(name, &text);
        let out = run_turnd(&["check-config", f.path()]);
        assert_eq!(code(&out), Some(2), "{name}: {out:?}");
        assert!(
            out.stderr.contains(option),
            "{name}: option {option} not named: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
    }
    // A missing file is an error naming it, not a panic.
    let dir = TempDir::new("missing");
    let missing = dir.join("does-not-exist.toml");
    let missing = missing.to_str().unwrap();
    let out = run_turnd(&["check-config", missing]);
    assert_eq!(code(&out), Some(2), "{out:?}");
    assert!(out.stderr.contains(missing), "{}", out.stderr);
}

#[test]
fn listening_port_in_use_fails_cleanly() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let port = addr.port().to_string();
    let (min, max) = relay_ports(Suite::ConfigCli, 0);
    let args = Turnd::standard(min, max).set("--listening-port", &port);
    let out = run_turnd(args.arguments());
    let status = out.status.expect("exited");
    assert!(!status.success(), "turnd started on a taken port: {out:?}");
    assert!(status.code().is_some(), "killed by a signal: {out:?}");
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("in use") || err.contains("addrinuse"),
        "no 'address in use' message: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&addr.to_string()),
        "the address {addr} is not named: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!out.stdout.contains("listening on"), "{}", out.stdout);
    drop(taken);
}

#[test]
fn no_users_is_an_error_not_a_silent_start() {
    let out = run_turnd(&[
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        "0",
        "--relay-ip",
        "127.0.0.1",
    ]);
    let status = out.status.expect("exited");
    assert!(!status.success(), "{out:?}");
    assert!(out.stderr.contains("user"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// Every duration option refuses a value outside its range, from the file
/// and from the command line, with an error naming the option, where it
/// came from and the allowed range; `drain-timeout` near `u64::MAX` used to
/// be accepted and panicked on SIGTERM (`Instant + Duration` overflow).
#[test]
fn duration_options_out_of_range_are_clean_start_errors() {
    // u64::MAX on the command line; TOML integers are i64, so i64::MAX in
    // the file.
    const HUGE: &str = "18446744073709551615";
    const HUGE_TOML: &str = "9223372036854775807";
    for option in [
        "drain-timeout",
        "max-allocate-lifetime",
        "permission-lifetime",
        "channel-lifetime",
        "stale-nonce",
        "stream-idle-timeout",
        "tls-handshake-timeout",
    ] {
        let f = TempFile::new("huge.toml", &format!("{}{option} = {HUGE_TOML}\n", valid()));
        let out = run_turnd(&["check-config", f.path()]);
        assert_eq!(code(&out), Some(2), "{option} in a file: {out:?}");
        for want in [option, f.path(), "..="] {
            assert!(
                out.stderr.contains(want),
                "{option} in a file: {want:?} not named: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

        let (min, max) = relay_ports(Suite::ConfigCli, 0);
        let args = Turnd::standard(min, max).set(&format!("--{option}"), HUGE);
        let out = run_turnd(args.arguments());
        assert_eq!(code(&out), Some(2), "--{option} {HUGE}: {out:?}");
        for want in [option, "command line", "..="] {
            assert!(
                out.stderr.contains(want),
                "--{option}: {want:?} not named: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(!out.stdout.contains("listening on"), "{}", out.stdout);
    }
}
