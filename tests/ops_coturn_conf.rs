//! The coturn configurations people copy from tutorials, made runnable on
//! loopback, relay for real: `turnd --config tutorial-X.conf` with only the
//! addresses, ports and log path changed (and `allow-loopback-peers` added),
//! coturn's short flags from a tutorial's command line, and
//! `turnd convert-config` output accepted by `turnd check-config`.
//!
//! Relay ports: `Suite::OpsCoturnConf` in `support::ports`.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;
use turnd::stun::{AttributeType, Method};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/coturn")
        .join(name)
}

/// The key of a coturn config line (`key=value`, `key value`, bare `key`),
/// or `None` for blank and comment lines.
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let end = t.find(['=', ' ', '\t']).unwrap_or(t.len());
    Some(t[..end].trim_start_matches('-'))
}

/// The value of the first `key` line (trailing ` # comment` removed).
fn value_of(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        if key_of(l)? != key {
            return None;
        }
        let t = l.trim_start();
        let v = t[key.len()..].trim_start_matches([' ', '\t', '=']);
        let v = match v.find(" #").or_else(|| v.find("\t#")) {
            Some(i) => &v[..i],
            None => v,
        };
        Some(v.trim().to_owned())
    })
}

/// Where a loopback copy of a tutorial config runs.
struct Loopback {
    port: u16,
    min_port: u16,
    max_port: u16,
    log_file: PathBuf,
}

/// `text` made runnable on loopback: listening/relay/external addresses
/// become 127.0.0.1, the listening port and the relay range the given ones,
/// `log-file` a temporary file; every other line is kept as it is. Missing
/// address and range lines are added (a file without `listening-ip` would
/// listen on every interface), and `allow-loopback-peers` at the end.
fn loopbackify(text: &str, lb: &Loopback) -> String {
    let mut out = String::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let Some(key) = key_of(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        seen.insert(key.to_owned());
        let replaced = match key {
            "listening-ip" | "relay-ip" | "external-ip" => Some(format!("{key}=127.0.0.1")),
            "listening-port" => Some(format!("listening-port={}", lb.port)),
            "min-port" => Some(format!("min-port={}", lb.min_port)),
            "max-port" => Some(format!("max-port={}", lb.max_port)),
            "log-file" => Some(format!("log-file={}", lb.log_file.display())),
            // Host-specific: the test host has no such device or files.
            "relay-device" | "listening-device" | "cert" | "pkey" | "tls-listening-port" => {
                Some(format!("# (loopback test) {line}"))
            }
            _ => None,
        };
        match replaced {
            Some(r) => {
                out.push_str(&format!("# (loopback test) was: {line}\n"));
                out.push_str(&r);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("\n# Added by the loopback test:\n");
    for (key, value) in [
        ("listening-ip", "127.0.0.1".to_owned()),
        ("relay-ip", "127.0.0.1".to_owned()),
        ("listening-port", lb.port.to_string()),
        ("min-port", lb.min_port.to_string()),
        ("max-port", lb.max_port.to_string()),
    ] {
        if !seen.contains(key) {
            out.push_str(&format!("{key}={value}\n"));
        }
    }
    out.push_str("allow-loopback-peers\n");
    out
}

/// Starts `turnd --config <loopback copy of fixture>` and relays through it
/// with the fixture's user: Binding, Allocate, ChannelBind to an echo peer,
/// ChannelData round trips, a Send/Data round trip, Refresh 0.
fn relay_through_tutorial(name: &str, slot: u16) {
    let (min_port, max_port) = relay_ports(Suite::OpsCoturnConf, slot);
    let original = std::fs::read_to_string(fixture(name)).expect("read fixture");
    let user_line = value_of(&original, "user").expect("fixture has a user");
    let (user, password) = user_line.split_once(':').expect("user=NAME:PASSWORD");
    let realm = value_of(&original, "realm");
    let fingerprint = original.lines().any(|l| key_of(l) == Some("fingerprint"));

    let dir = TempDir::new(name);
    let lb = Loopback {
        port: free_port(),
        min_port,
        max_port,
        log_file: dir.join("turnserver.log"),
    };
    let conf_text = loopbackify(&original, &lb);
    // Nothing but addresses, ports and paths changed: the other option lines are there verbatim.
    for line in original.lines() {
        if let Some(k) = key_of(line) {
            if ![
                "listening-ip",
                "relay-ip",
                "external-ip",
                "listening-port",
                "min-port",
                "max-port",
                "log-file",
                "relay-device",
                "listening-device",
                "cert",
                "pkey",
                "tls-listening-port",
            ]
            .contains(&k)
            {
                assert!(conf_text.lines().any(|l| l == line), "line {line:?} lost");
            }
        }
    }
    let conf = dir.join(name);
    std::fs::write(&conf, &conf_text).unwrap();
    let conf_s = conf.to_str().unwrap().to_owned();

    let check = run_with_timeout(
        Command::new(turnd_bin()).args(["check-config", &conf_s]),
        Duration::from_secs(10),
    );
    assert!(
        check.status.is_some_and(|s| s.success()),
        "check-config {conf_s}:\n{conf_text}\n{check:?}"
    );

    let log_file = lb.log_file.clone();
    let mut server = Turnd::bare().arg("--config").arg(&conf_s).start();
    let addr = server.udp();
    let show = |server: &TestServer| {
        format!(
            "config:\n{conf_text}\nlog file:\n{}\nstderr:\n{}",
            read_or_empty(&log_file),
            server.log()
        )
    };
    assert_eq!(
        addr,
        std::net::SocketAddr::from(([127, 0, 0, 1], lb.port)),
        "{}",
        show(&server)
    );
    assert!(
        server.stdout_lines().iter().all(|l| !l.contains("0.0.0.0")),
        "listening beyond loopback: {:?}",
        server.stdout_lines()
    );

    // STUN.
    let mut c = Client::new(addr, user, password);
    let b = c.request_unsigned(Method::BINDING, &[]);
    b.expect_success();
    assert_eq!(
        b.xor_addr(AttributeType::XOR_MAPPED_ADDRESS),
        Some(c.local_addr())
    );
    if fingerprint {
        assert!(
            b.msg().has_fingerprint(),
            "`fingerprint` in the file: every response carries FINGERPRINT: {b:?}"
        );
    }

    // TURN with the file's user.
    let peer = EchoPeer::start();
    let alloc = c.allocate();
    if let Some(realm) = &realm {
        assert_eq!(
            c.credentials.realm.as_deref(),
            Some(realm.as_str()),
            "realm from the file"
        );
    }
    assert_eq!(alloc.relay.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert!(
        (min_port..=max_port).contains(&alloc.relay.port()),
        "relay {} outside {min_port}-{max_port}",
        alloc.relay
    );
    assert_eq!(alloc.mapped, c.local_addr());
    c.channel_bind(0x4000, peer.addr).expect_success();
    for i in 0..5u8 {
        channel_round_trip(&mut c, 0x4000, &[i; 64]);
    }
    // Send indication to the channel's peer: the echo comes back as
    // ChannelData, since a channel is bound to that peer (RFC 8656 12.7).
    c.send_indication(peer.addr, b"via send indication");
    let (ch, data) = c.expect_channel_data(RESPONSE_TIMEOUT);
    assert_eq!(ch, 0x4000);
    assert_eq!(data, b"via send indication");
    // A peer with a permission only: Send there, Data indication back; the
    // peer sees the advertised relay address as the source.
    let direct = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let direct_addr = direct.local_addr().unwrap();
    c.create_permission(&[direct_addr]).expect_success();
    c.send_indication(direct_addr, b"who");
    direct.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    let (n, src) = direct.recv_from(&mut buf).expect("datagram at the peer");
    assert_eq!(&buf[..n], b"who");
    assert_eq!(src, alloc.relay, "peer sees the advertised relay address");
    direct.send_to(b"back", src).unwrap();
    let (from, data) = c.expect_data(RESPONSE_TIMEOUT);
    assert_eq!(from, direct_addr);
    assert_eq!(data, b"back");

    // A wrong password is refused.
    let mut bad = Client::new(addr, user, "definitely-wrong");
    bad.allocate_with(&[Attr::transport_udp()])
        .expect_error(401);

    c.refresh(Some(0)).expect_success();

    if original.lines().any(|l| key_of(l) == Some("log-file")) {
        // The file's log-file is honoured (with the path moved to the temp dir).
        assert!(
            wait_until(Duration::from_secs(5), || read_or_empty(&log_file)
                .contains("allocation created")),
            "no allocation in the log-file: {}",
            show(&server)
        );
    }
    server.signal("TERM");
    let st = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(st.success(), "{st}: {}", show(&server));
}

#[test]
fn tutorial_a_conf_relays_on_loopback() {
    relay_through_tutorial("tutorial-a.conf", 0);
}

#[test]
fn tutorial_c_conf_relays_on_loopback() {
    relay_through_tutorial("tutorial-c.conf", 1);
}

/// `turnserver -L 0.0.0.0 -a -u lqf:123456 -v -f -r nohup.out` (the first
/// line of command-lines.txt) with -L moved to loopback and the port, relay
/// address and range added: turnd starts, and lqf allocates in realm
/// "nohup.out".
#[test]
fn coturn_short_flags_from_a_tutorial() {
    let text = std::fs::read_to_string(fixture("command-lines.txt")).unwrap();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a command line");
    let mut words: Vec<String> = first.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words.remove(0), "turnserver");
    assert_eq!(
        words.join(" "),
        "-L 0.0.0.0 -a -u lqf:123456 -v -f -r nohup.out"
    );
    for w in &mut words {
        if w == "0.0.0.0" {
            *w = "127.0.0.1".into();
        }
    }
    let port = free_port();
    let (min, max) = relay_ports(Suite::OpsCoturnConf, 2);
    words.extend(
        [
            "-p",
            &port.to_string(),
            "-E",
            "127.0.0.1",
            "--min-port",
            &min.to_string(),
            "--max-port",
            &max.to_string(),
            "--allow-loopback-peers",
        ]
        .map(str::to_owned),
    );
    let mut server = Turnd::bare().args(&words).start();
    let addr = server.udp();
    assert_eq!(addr, std::net::SocketAddr::from(([127, 0, 0, 1], port)));

    // -f: FINGERPRINT on every response.
    let mut c = Client::new(addr, "lqf", "123456");
    let b = c.request_unsigned(Method::BINDING, &[]);
    b.expect_success();
    assert!(b.msg().has_fingerprint(), "-f: {b:?}");
    // -u lqf:123456 -r nohup.out
    let peer = EchoPeer::start();
    let alloc = c.allocate();
    assert_eq!(c.credentials.realm.as_deref(), Some("nohup.out"));
    assert!((min..=max).contains(&alloc.relay.port()), "{}", alloc.relay);
    c.channel_bind(0x4000, peer.addr).expect_success();
    channel_round_trip(&mut c, 0x4000, b"short flags");
    // -v: debug logging.
    assert!(
        server.wait_for_log(" DEBUG ", 1, Duration::from_secs(5)),
        "-v should log at debug level:\n{}",
        server.log()
    );
    server.signal("TERM");
    let st = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(st.success(), "{st}");
}

/// `turnd convert-config tutorial-b.conf` prints TOML that `check-config`
/// accepts, describing the same server as the .conf itself.
#[test]
fn convert_config_output_passes_check_config() {
    let conf = fixture("tutorial-b.conf");
    let out = run_with_timeout(
        Command::new(turnd_bin()).arg("convert-config").arg(&conf),
        Duration::from_secs(10),
    );
    assert!(out.status.is_some_and(|s| s.success()), "{out:?}");
    let toml_text = out.stdout;
    let table: toml::Table = toml::from_str(&toml_text)
        .unwrap_or_else(|e| panic!("convert-config output is not TOML ({e}):\n{toml_text}"));
    assert_eq!(
        table
            .get("user")
            .and_then(|v| v.as_array())
            .map(|a| a.len()),
        Some(1),
        "{toml_text}"
    );
    assert_eq!(
        table.get("realm").and_then(|v| v.as_str()),
        Some("turn.webrtc.example.com")
    );
    assert_eq!(
        table.get("fingerprint").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(
        table.get("min-port").and_then(|v| v.as_integer()),
        Some(49152)
    );
    // The unsupported option is kept as a comment naming it, not dropped silently.
    assert!(
        toml_text
            .lines()
            .any(|l| l.starts_with('#') && l.contains("relay-device")),
        "{toml_text}"
    );

    let dir = TempDir::new("convert");
    let toml_path = dir.join("turnd.toml");
    std::fs::write(&toml_path, &toml_text).unwrap();
    let check = |p: &Path| {
        run_with_timeout(
            Command::new(turnd_bin()).arg("check-config").arg(p),
            Duration::from_secs(10),
        )
    };
    let from_toml = check(&toml_path);
    assert!(
        from_toml.status.is_some_and(|s| s.success()),
        "check-config rejects convert-config's output:\n{toml_text}\n{from_toml:?}"
    );
    let from_conf = check(&conf);
    assert!(
        from_conf.status.is_some_and(|s| s.success()),
        "{from_conf:?}"
    );
    // Both describe the same server: the summary after `PATH: ` matches.
    let summary = |o: &RunOutput, p: &Path| {
        let prefix = format!("{}: ", p.display());
        o.stdout
            .lines()
            .chain(o.stderr.lines())
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no `{prefix}...` summary in {o:?}"))
    };
    assert_eq!(
        summary(&from_toml, &toml_path),
        summary(&from_conf, &conf),
        "the converted TOML describes another server"
    );
}
