//! coturn's `turnserver.conf` and command lines as tutorials publish them
//! (`tests/fixtures/coturn/`), and Debian's stock `/etc/turnserver.conf`
//! (coturn 4.6.1), read by `turnd::coturn_conf` with the meaning coturn gives
//! them; then loaded as turnd's configuration.

use std::path::{Path, PathBuf};

use turnd::coturn_conf::{self, expand_short_flags, CoturnConf, SHORT_FLAGS};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/coturn")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(name: &str) -> CoturnConf {
    coturn_conf::parse(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn str_of<'a>(c: &'a CoturnConf, key: &str) -> &'a str {
    c.table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{key}: {:?}", c.table.get(key)))
}

fn int_of(c: &CoturnConf, key: &str) -> i64 {
    c.table
        .get(key)
        .and_then(toml::Value::as_integer)
        .unwrap_or_else(|| panic!("{key}: {:?}", c.table.get(key)))
}

fn bool_of(c: &CoturnConf, key: &str) -> bool {
    c.table
        .get(key)
        .and_then(toml::Value::as_bool)
        .unwrap_or_else(|| panic!("{key}: {:?}", c.table.get(key)))
}

fn list_of(c: &CoturnConf, key: &str) -> Vec<String> {
    c.table
        .get(key)
        .and_then(toml::Value::as_array)
        .unwrap_or_else(|| panic!("{key}: {:?}", c.table.get(key)))
        .iter()
        .map(|v| v.as_str().expect("string entries").to_owned())
        .collect()
}

/// A fixed set of supported options (turnd's TOML keys before it took TLS,
/// `external-ip` and logging options), so the warning counts below do not
/// move as turnd grows; `turnd::config::TOML_KEYS` is the live list.
const TURND_OPTIONS: &[&str] = &[
    "listening-ip",
    "listening-port",
    "relay-ip",
    "min-port",
    "max-port",
    "realm",
    "user",
    "allow-loopback-peers",
    "allowed-peer-ip",
    "denied-peer-ip",
    "fingerprint",
    "verbose",
    "lt-cred-mech",
    "user-quota",
    "total-quota",
    "max-allocate-lifetime",
    "permission-lifetime",
    "channel-lifetime",
    "stale-nonce",
    "use-auth-secret",
    "static-auth-secret",
    "rest-api-separator",
    "userdb",
    "max-bps",
    "bps-capacity",
    "stun-backward-compatibility",
    "reason-phrases",
    "unauth-rate",
    "unauth-burst",
    "auth-failures-per-minute",
    "peer-policy",
];

#[test]
fn tutorial_a_centos_yum() {
    let c = parse("tutorial-a.conf");
    assert_eq!(int_of(&c, "listening-port"), 3478);
    assert_eq!(list_of(&c, "external-ip"), ["203.0.113.10"]);
    assert_eq!(list_of(&c, "user"), ["yourusername:yourpassword"]);
    assert_eq!(str_of(&c, "realm"), "turn.example.com");
    assert_eq!(int_of(&c, "min-port"), 65530);
    assert_eq!(int_of(&c, "max-port"), 65535);
    assert_eq!(str_of(&c, "log-file"), "/var/log/coturn/turnserver.log");
    assert!(bool_of(&c, "fingerprint"));
    // Commented out in the tutorial: relay-ip, cert, pkey, no-stun.
    for key in ["relay-ip", "cert", "pkey", "no-stun"] {
        assert!(!c.table.contains_key(key), "{key}");
    }
    assert!(c.unknown.is_empty(), "{:?}", c.unknown);
    assert_eq!(c.table.len(), 8, "{:?}", c.table.keys().collect::<Vec<_>>());

    let (table, warnings) = coturn_conf::split_supported(&c, TURND_OPTIONS);
    assert_eq!(table.len(), 6, "{table:?}");
    assert_eq!(
        warnings.len(),
        2,
        "external-ip and log-file are not supported: {warnings:#?}"
    );
    assert!(warnings[0].contains("`external-ip`"), "{warnings:?}");
    assert!(warnings[1].contains("`log-file`"), "{warnings:?}");
}

#[test]
fn tutorial_b_ubuntu_apt_with_trailing_comments() {
    let c = parse("tutorial-b.conf");
    assert_eq!(str_of(&c, "server-name"), "turn.webrtc.example.com");
    assert_eq!(str_of(&c, "realm"), "turn.webrtc.example.com");
    assert!(bool_of(&c, "fingerprint"));
    // Trailing comments after values are not part of them.
    assert_eq!(str_of(&c, "relay-device"), "eth0");
    assert_eq!(list_of(&c, "listening-ip"), ["192.0.2.186"]);
    assert_eq!(int_of(&c, "listening-port"), 3478);
    assert_eq!(int_of(&c, "tls-listening-port"), 5349);
    assert_eq!(list_of(&c, "relay-ip"), ["192.0.2.186"]);
    assert_eq!(list_of(&c, "external-ip"), ["203.0.113.109"]);
    assert_eq!(int_of(&c, "relay-threads"), 50);
    assert!(bool_of(&c, "lt-cred-mech"));
    assert!(bool_of(&c, "no-cli"));
    assert!(bool_of(&c, "verbose"));
    assert_eq!(str_of(&c, "cert"), "/etc/turn_server_cert.pem");
    assert_eq!(str_of(&c, "pkey"), "/etc/turn_server_pkey.pem");
    assert!(!c.table.contains_key("pidfile"));
    assert_eq!(int_of(&c, "min-port"), 49152);
    assert_eq!(int_of(&c, "max-port"), 65535);
    assert_eq!(list_of(&c, "user"), ["jun:123456"]);
    assert!(c.unknown.is_empty(), "{:?}", c.unknown);

    let (table, warnings) = coturn_conf::split_supported(&c, TURND_OPTIONS);
    for key in [
        "realm",
        "fingerprint",
        "listening-ip",
        "listening-port",
        "relay-ip",
        "lt-cred-mech",
        "verbose",
        "min-port",
        "max-port",
        "user",
    ] {
        assert!(table.contains_key(key), "{key}");
    }
    let warned: Vec<&str> = [
        "server-name",
        "relay-device",
        "tls-listening-port",
        "external-ip",
        "relay-threads",
        "cert",
        "pkey",
    ]
    .into_iter()
    .filter(|k| warnings.iter().any(|w| w.contains(&format!("`{k}`"))))
    .collect();
    assert_eq!(warned.len(), 7, "{warnings:#?}");
    // no-cli asks for what turnd does anyway: no warning.
    assert_eq!(warnings.len(), 7, "{warnings:#?}");
    assert!(!warnings.iter().any(|w| w.contains("123456")));
}

#[test]
fn tutorial_c_built_from_source() {
    let c = parse("tutorial-c.conf");
    assert_eq!(int_of(&c, "listening-port"), 3478);
    assert_eq!(list_of(&c, "listening-ip"), ["192.0.2.57"]);
    assert_eq!(list_of(&c, "external-ip"), ["203.0.113.34"]);
    assert_eq!(list_of(&c, "user"), ["yubao:000000"]);
    assert_eq!(c.table.len(), 4);
    assert!(c.unknown.is_empty(), "{:?}", c.unknown);
}

#[test]
fn debian_stock_file_parses() {
    let c = parse("debian-turnserver.conf");
    assert!(c.unknown.is_empty(), "{:?}", c.unknown);
    // The only lines not commented out in coturn 4.6.1's Debian package.
    assert!(bool_of(&c, "syslog"));
    assert!(bool_of(&c, "no-rfc5780"));
    assert!(bool_of(&c, "no-stun-backward-compatibility"));
    assert!(bool_of(&c, "response-origin-only-with-rfc5780"));
    assert_eq!(c.table.len(), 4, "{:?}", c.table.keys().collect::<Vec<_>>());
    let (table, warnings) = coturn_conf::split_supported(&c, TURND_OPTIONS);
    assert!(table.is_empty(), "{table:?}");
    assert_eq!(warnings.len(), 1, "only syslog matters: {warnings:#?}");
    assert!(warnings[0].contains("`syslog`"));
}

/// Every option the Debian file documents (as a commented-out example line,
/// `#option` or `#option=value`) is one this reader knows.
#[test]
fn debian_documented_options_are_all_known() {
    let text = read("debian-turnserver.conf");
    let mut seen = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let key_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        let (key, after) = rest.split_at(key_end);
        // An example line is `#key`, `#key=...` or `#key "..."`; prose is not.
        let example = !key.is_empty()
            && (after.is_empty() || after.starts_with('=') || after.starts_with(" \""));
        if !example {
            continue;
        }
        seen += 1;
        assert!(coturn_conf::is_known_option(key), "`{key}` in {line:?}");
    }
    assert!(seen > 100, "{seen} example lines");
}

/// Debian's file with its examples switched on reads without unknown keys
/// (except `ne=[1|2|3]` and bare `cli-max-output-sessions`, placeholders
/// that coturn itself would reject).
#[test]
fn debian_examples_switched_on_parse() {
    let text = read("debian-turnserver.conf");
    let mut on = String::new();
    for line in text.lines() {
        let uncommented = line.strip_prefix('#').unwrap_or(line);
        let key: String = uncommented
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if !key.is_empty()
            && coturn_conf::is_known_option(&key)
            && !["ne", "cli-max-output-sessions"].contains(&key.as_str())
        {
            on.push_str(uncommented);
        }
        on.push('\n');
    }
    let c = coturn_conf::parse(&on).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.unknown.is_empty(), "{:?}", c.unknown);
    assert_eq!(
        list_of(&c, "listening-ip"),
        ["172.17.19.101", "10.207.21.238", "2607:f0d0:1002:51::4"]
    );
    assert_eq!(
        list_of(&c, "external-ip"),
        [
            "60.70.80.91",
            "60.70.80.91/172.17.19.101",
            "60.70.80.92/172.17.19.102"
        ]
    );
    assert_eq!(int_of(&c, "stale-nonce"), 600);
    assert_eq!(int_of(&c, "min-port"), 49152);
    assert_eq!(str_of(&c, "cipher-list"), "DEFAULT");
    assert_eq!(str_of(&c, "new-log-timestamp-format"), "%FT%T%z");
    assert_eq!(str_of(&c, "pidfile"), "/var/run/turnserver.pid");
    assert!(
        list_of(&c, "user").contains(&"ninefingers:0xbc807ee29df3c9ffa736523fb2c4e8ee".to_owned())
    );
    assert!(bool_of(&c, "Verbose") && bool_of(&c, "verbose"));

    // The conversion reads back as TOML and keeps no secret it drops.
    let toml_text = coturn_conf::to_toml(&c, TURND_OPTIONS);
    let back: toml::Table =
        toml::from_str(&toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
    assert_eq!(back, coturn_conf::split_supported(&c, TURND_OPTIONS).0);
    assert!(!toml_text.contains("qwerty"), "cli-password leaked");
}

fn short(flag: char) -> &'static str {
    SHORT_FLAGS
        .iter()
        .find(|(f, _)| *f == flag)
        .unwrap_or_else(|| panic!("-{flag}"))
        .1
}

#[test]
fn short_flags_mean_what_turnserver_help_says() {
    for (flag, long) in [
        ('c', "config"),
        ('L', "listening-ip"),
        ('E', "relay-ip"),
        ('X', "external-ip"),
        ('p', "listening-port"),
        ('r', "realm"),
        ('u', "user"),
        ('a', "lt-cred-mech"),
        ('f', "fingerprint"),
        ('v', "verbose"),
        ('V', "Verbose"),
        ('m', "relay-threads"),
        ('q', "user-quota"),
        ('Q', "total-quota"),
        ('s', "max-bps"),
        ('B', "bps-capacity"),
        ('b', "userdb"),
        ('S', "stun-only"),
        ('C', "rest-api-separator"),
        ('l', "log-file"),
        ('o', "daemon"),
        ('z', "no-auth"),
    ] {
        assert_eq!(short(flag), long, "-{flag}");
    }
    assert!(!SHORT_FLAGS.iter().any(|(f, _)| *f == 'n'));
}

/// Tokenises each coturn command line of `command-lines.txt` (split on
/// whitespace, as a shell would here) and maps coturn's short flags.
fn command_lines() -> Vec<Vec<String>> {
    read("command-lines.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let args: Vec<&str> = l.split_whitespace().collect();
            expand_short_flags(args)
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn tutorial_command_lines() {
    let lines = command_lines();
    assert_eq!(lines.len(), 3);
    // turnserver -L 0.0.0.0 -a -u lqf:123456 -v -f -r nohup.out
    assert_eq!(
        lines[0],
        [
            "turnserver",
            "--listening-ip",
            "0.0.0.0",
            "--lt-cred-mech",
            "--user",
            "lqf:123456",
            "--verbose",
            "--fingerprint",
            "--realm",
            "nohup.out"
        ]
    );
    // turnserver -v -r 203.0.113.34:3478 -a -o
    // (-r is the realm, whatever the tutorial meant by an address there.)
    assert_eq!(
        lines[1],
        [
            "turnserver",
            "--verbose",
            "--realm",
            "203.0.113.34:3478",
            "--lt-cred-mech",
            "--daemon"
        ]
    );
    // turnserver -c /etc/turnserver.conf
    assert_eq!(lines[2], ["turnserver", "--config", "/etc/turnserver.conf"]);
}

/// `Config::check_file` on a coturn `.conf` file: waits on the wiring of
/// `coturn_conf` into `Config::load`.
#[test]
fn check_file_loads_a_coturn_conf() {
    let c = turnd::config::Config::check_file(&fixture("tutorial-a.conf"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listening_port, 3478);
    assert_eq!(c.min_port, 65530);
    assert_eq!(c.max_port, 65535);
    assert_eq!(c.realm, "turn.example.com");
    assert_eq!(c.users.len(), 1);
    assert_eq!(c.users[0].name, "yourusername");
    assert_eq!(c.users[0].password, "yourpassword");
    assert!(c.fingerprint);
}

/// Every key turnd's TOML file takes is read from a `.conf` file too, so one
/// file can mix coturn's options and turnd's own.
#[test]
fn every_turnd_option_is_known() {
    for key in turnd::config::TOML_KEYS {
        assert!(coturn_conf::is_known_option(key), "`{key}`");
    }
}
