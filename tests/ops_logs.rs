//! Logs for operators: `--log-format json` (every line a JSON object, the
//! allocation events with user, client and relay), `--log-file` reopened on
//! SIGHUP after logrotate renamed it, auth failures with the client address
//! and never a password.
//!
//! Relay ports: `Suite::OpsLogs` in `support::ports`.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use turnd::stun::Method;

/// turnd with the standard arguments, the relay ports of `slot` and `extra`.
fn relay_server(slot: u16, extra: &[&str]) -> Turnd {
    let (min, max) = relay_ports(Suite::OpsLogs, slot);
    Turnd::standard(min, max).args(extra)
}

/// Every non-empty line of `text` parsed as a JSON object; panics otherwise.
#[track_caller]
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("log line is not JSON ({e}): {l:?}\nwhole log:\n{text}")
            });
            assert!(v.is_object(), "log line is not a JSON object: {l}");
            v
        })
        .collect()
}

/// The JSON events whose message is `msg` (tracing-subscriber's JSON layout
/// puts it in `fields.message`).
fn events<'a>(lines: &'a [serde_json::Value], msg: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|v| v["fields"]["message"] == msg)
        .collect()
}

#[test]
fn json_log_lines() {
    let mut server = relay_server(0, &["--log-format", "json"]).start();
    let addr = server.udp();
    let mut c = Client::new(addr, USER, PASSWORD);
    let alloc = c.allocate();
    let mut bad = Client::new(addr, USER, "json-wrong-password");
    bad.allocate_with(&[Attr::transport_udp()])
        .expect_error(401);
    c.refresh(Some(0)).expect_success();
    assert!(server.wait_for_log("allocation deleted", 1, Duration::from_secs(5)));
    server.signal("TERM");
    let st = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(st.success(), "{st}");
    // Give the stderr reader a moment to reach EOF.
    assert!(server.wait_for_log("turnd stopped", 1, Duration::from_secs(2)));
    let log = server.log();
    let lines = json_lines(&log);
    assert!(lines.len() >= 5, "too few log lines: {log}");
    for v in &lines {
        assert!(v["timestamp"].is_string(), "no timestamp: {v}");
        assert!(v["level"].is_string(), "no level: {v}");
        assert!(v["fields"]["message"].is_string(), "no message: {v}");
    }
    let created = events(&lines, "allocation created");
    assert_eq!(created.len(), 1, "one allocation created event: {log}");
    let f = &created[0]["fields"];
    assert_eq!(f["user"], USER, "{f}");
    assert_eq!(f["client"], c.local_addr().to_string(), "{f}");
    assert_eq!(f["relay"], alloc.relay.to_string(), "{f}");
    assert_eq!(created[0]["level"], "INFO");
    let deleted = events(&lines, "allocation deleted");
    assert_eq!(deleted.len(), 1, "{log}");
    let failures: Vec<_> = lines
        .iter()
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("auth failure"))
        })
        .collect();
    assert!(!failures.is_empty(), "no auth failure event: {log}");
    assert_eq!(
        failures[0]["fields"]["client"],
        bad.local_addr().to_string(),
        "{}",
        failures[0]
    );
    assert!(!log.contains("json-wrong-password"), "password in the log");
    assert!(!log.contains(PASSWORD), "password in the log");
    // stdout keeps the plain listening lines scripts read.
    assert!(server
        .stdout_lines()
        .iter()
        .any(|l| l.starts_with("turnd: listening on udp ")));
}

/// `--log-file F`, logrotate's rename and SIGHUP: the old lines stay in
/// F.1, lines after the HUP go to a new F.
fn log_file_reopened(json: bool, slot: u16) {
    let dir = TempDir::new("logfile");
    let file = dir.join("turnd.log");
    let rotated = dir.join("turnd.log.1");
    let f = file.to_str().unwrap().to_owned();
    let mut extra = vec!["--log-file", f.as_str()];
    if json {
        extra.extend(["--log-format", "json"]);
    }
    let mut server = relay_server(slot, &extra).start();
    let addr = server.udp();
    let mut c1 = Client::new(addr, USER, PASSWORD);
    c1.allocate();
    let c1_addr = c1.local_addr().to_string();
    let has = |p: &Path, needle: &str| read_or_empty(p).lines().any(|l| l.contains(needle));
    let created = |p: &Path, client: &str| {
        read_or_empty(p)
            .lines()
            .any(|l| l.contains("allocation created") && l.contains(client))
    };
    assert!(
        wait_until(Duration::from_secs(5), || created(&file, &c1_addr)),
        "allocation of {c1_addr} not in {f}:\n{}",
        read_or_empty(&file)
    );
    assert!(has(&file, "turnd started"), "{}", read_or_empty(&file));
    assert!(
        !server.log().contains("allocation created"),
        "logs went to stderr too: {}",
        server.log()
    );

    // logrotate: rename, then SIGHUP.
    std::fs::rename(&file, &rotated).unwrap();
    assert!(!file.exists());
    server.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || file.exists()),
        "{f} not reopened (created) after SIGHUP; rotated file:\n{}",
        read_or_empty(&rotated)
    );
    let mut c2 = Client::new(addr, USER, PASSWORD);
    c2.allocate();
    let c2_addr = c2.local_addr().to_string();
    assert!(
        wait_until(Duration::from_secs(5), || created(&file, &c2_addr)),
        "allocation after SIGHUP ({c2_addr}) not in the new {f}:\n{}\nrotated:\n{}",
        read_or_empty(&file),
        read_or_empty(&rotated)
    );
    assert!(
        created(&rotated, &c1_addr),
        "the rotated file lost its lines"
    );
    assert!(
        !created(&rotated, &c2_addr),
        "a line after SIGHUP went to the rotated file:\n{}",
        read_or_empty(&rotated)
    );
    assert!(
        !created(&file, &c1_addr),
        "the new file has the old lines:\n{}",
        read_or_empty(&file)
    );
    // The HUP itself did not stop the server, and it still serves c1.
    c1.refresh(None).expect_success();
    if json {
        json_lines(&read_or_empty(&file));
        json_lines(&read_or_empty(&rotated));
    }
    server.signal("TERM");
    let st = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(st.success(), "{st}");
    assert!(has(&file, "turnd stopped"), "{}", read_or_empty(&file));
}

#[test]
fn log_file_reopened_on_sighup_text() {
    log_file_reopened(false, 1);
}

#[test]
fn log_file_reopened_on_sighup_json() {
    log_file_reopened(true, 2);
}

/// Auth failures name the client address; no password, key or secret is
/// ever logged, even at debug level.
#[test]
fn auth_failures_show_the_client_and_no_password() {
    let user_pw = "Corr3ct-Horse-Battery-77";
    let wrong_pw = "Wr0ng-Staple-Zebra-99";
    let secret = "Sh4red-REST-Secret-42";
    let user = format!("carol:{user_pw}");
    let mut server = relay_server(
        3,
        &["--verbose", "--user", &user, "--static-auth-secret", secret],
    )
    .start();
    let addr = server.udp();
    let mut bad = Client::new(addr, "carol", wrong_pw);
    bad.allocate_with(&[Attr::transport_udp()])
        .expect_error(401);
    let mut bad_rest = Client::new(addr, "4102444800:dave", "not-the-hmac");
    bad_rest
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(401);
    let mut good = Client::new(addr, "carol", user_pw);
    good.allocate();
    good.refresh(Some(0)).expect_success();
    let rest_user = "4102444800:erin";
    let rest_pw = turnd::auth::rest_password(secret, rest_user);
    let mut rest = Client::new(addr, rest_user, &rest_pw);
    rest.allocate();

    // The whole log, once turnd has stopped (its stderr read to the end).
    server.signal("TERM");
    let _ = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(
        server.wait_for_log("turnd stopped", 1, Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let needle = format!("client={}", bad.local_addr());
    let line = log
        .lines()
        .find(|l| l.contains(&needle) && l.contains("auth failure"))
        .unwrap_or_else(|| panic!("no auth failure line with {needle}:\n{log}"));
    assert!(line.contains("carol"), "the user is named: {line}");
    let rest_needle = format!("client={}", bad_rest.local_addr());
    assert!(
        log.lines()
            .any(|l| l.contains(&rest_needle) && l.contains("auth failure")),
        "no auth failure line for the bad REST password with {rest_needle}:\n{log}"
    );
    let log = server.log();
    let carol_key = hex(&turnd::stun::long_term_key("carol", REALM, user_pw));
    let alice_key = hex(&turnd::stun::long_term_key(USER, REALM, PASSWORD));
    for (what, s) in [
        ("carol's password", user_pw),
        ("the wrong password", wrong_pw),
        ("the wrong REST password", "not-the-hmac"),
        ("the REST secret", secret),
        ("erin's REST password", rest_pw.as_str()),
        ("carol's long-term key", carol_key.as_str()),
        ("alice's long-term key", alice_key.as_str()),
    ] {
        assert!(!log.contains(s), "{what} ({s}) appears in the log:\n{log}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Issue 10: strings from the wire cannot forge log lines. A USERNAME with
/// a line break is refused (400, RFC 8489 section 14.3: OpaqueString) and
/// logged once, escaped; a name the profile accepts reaches the auth
/// failure line with its backslash escaped.
#[test]
fn client_strings_cannot_forge_log_lines() {
    let mut server = relay_server(4, &[]).start();
    let addr = server.udp();
    let forged = "mallory\nINFO turnd: auth failure client=203.0.113.77:4242";
    let mut c = Client::new(addr, forged, "x");
    c.request(Method::ALLOCATE, &[Attr::transport_udp()])
        .expect_error(400);
    let backslash = r"eve\nINFO turnd: auth failure client=203.0.113.78:4242";
    let mut d = Client::new(addr, backslash, "x");
    d.request(Method::ALLOCATE, &[Attr::transport_udp()])
        .expect_error(401);
    assert!(server.wait_for_log("client=203.0.113.78", 1, Duration::from_secs(5)));
    let log = server.log();
    for (ip, escaped) in [
        (
            "203.0.113.77",
            r"mallory\nINFO turnd: auth failure client=203.0.113.77",
        ),
        (
            "203.0.113.78",
            r"eve\\nINFO turnd: auth failure client=203.0.113.78",
        ),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(ip)).collect();
        assert_eq!(lines.len(), 1, "one line names {ip}:\n{log}");
        assert!(lines[0].contains(escaped), "escaped in {:?}", lines[0]);
    }
}
