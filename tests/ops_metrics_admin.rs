//! Prometheus `/metrics` scraped over plain HTTP while traffic flows, and the
//! admin API (`--admin-token`, `--admin-listen`): token checks, readiness
//! while draining, the allocation list, deleting an allocation, minting REST
//! credentials.
//!
//! Relay ports: `Suite::OpsMetricsAdmin` in `support::ports`.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::*;

const TOKEN: &str = "admin-token-0123456789";

/// turnd with the standard arguments, the relay ports of `slot` and `extra`.
fn relay_server(slot: u16, extra: &[&str]) -> Turnd {
    let (min, max) = relay_ports(Suite::OpsMetricsAdmin, slot);
    Turnd::standard(min, max).args(extra)
}

const ADMIN: &[&str] = &["--admin-token", TOKEN, "--admin-listen", "127.0.0.1:0"];

/// Prometheus naming and format conventions on a whole page.
#[track_caller]
fn assert_conventions(m: &Metrics) {
    assert!(
        m.problems.is_empty(),
        "malformed exposition: {:#?}\n{}",
        m.problems,
        m.text
    );
    for (name, kind) in &m.types {
        assert!(
            name.starts_with("turnd_"),
            "{name} lacks the turnd_ namespace"
        );
        match kind.as_str() {
            "counter" => assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            ),
            _ => assert!(
                !name.ends_with("_total"),
                "{kind} {name} must not end in _total (that suffix is for counters)"
            ),
        }
        assert!(
            m.helps.iter().any(|h| h == name),
            "{name} has no # HELP line"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}: snake_case expected"
        );
    }
    for s in &m.samples {
        assert!(
            s.value >= 0.0 && s.value.is_finite(),
            "negative or non-finite: {}",
            s.line
        );
        if m.type_of(&s.name) == Some("counter") {
            assert_eq!(s.value.fract(), 0.0, "counter not an integer: {}", s.line);
        }
    }
    // Label values are short machine words (enum names, numbers, addresses),
    // never free text a client chose; user names are the one exception.
    for s in &m.samples {
        for (k, v) in &s.labels {
            if k == "user" {
                continue;
            }
            assert!(
                v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.:-".contains(c)),
                "label {k}={v:?} is not [a-z0-9_.:-]*: {}",
                s.line
            );
        }
    }
    // No duplicate series.
    let mut seen = std::collections::HashSet::new();
    for s in &m.samples {
        assert!(
            seen.insert((s.name.clone(), format!("{:?}", s.labels))),
            "duplicate series {}",
            s.line
        );
    }
}

fn udp_ipv4_allocations(m: &Metrics) -> f64 {
    m.get(
        "turnd_allocations",
        &[("transport", "udp"), ("family", "ipv4")],
    )
}

fn ports_free(m: &Metrics) -> f64 {
    m.get("turnd_relay_ports_free", &[("relay_ip", "127.0.0.1")])
}

fn c2p(m: &Metrics) -> f64 {
    m.get(
        "turnd_relayed_packets_total",
        &[("direction", "client_to_peer")],
    )
}

fn p2c(m: &Metrics) -> f64 {
    m.get(
        "turnd_relayed_packets_total",
        &[("direction", "peer_to_client")],
    )
}

/// Relays ping-pong on channel 0x4001 in a thread until `stop`; counts round trips.
fn pump(mut c: Client, stop: Arc<AtomicBool>, trips: Arc<AtomicU64>) -> thread::JoinHandle<Client> {
    thread::spawn(move || {
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            c.channel_data(0x4001, &i.to_be_bytes());
            match c.recv(Duration::from_secs(2)) {
                Some(Incoming::Channel { channel, data }) => {
                    assert_eq!(channel, 0x4001);
                    assert_eq!(data, i.to_be_bytes());
                    trips.fetch_add(1, Ordering::Relaxed);
                }
                other => panic!("pump: expected the echo of {i}, got {other:?}"),
            }
            thread::sleep(Duration::from_millis(2));
        }
        c
    })
}

#[test]
fn metrics_move_live_while_relaying() {
    let peer = EchoPeer::start();
    // Two slots: 20 relay ports.
    let (min, max) = relay_span(Suite::OpsMetricsAdmin, 0, 2);
    let mut server = Turnd::standard(min, max)
        .args(PROMETHEUS)
        .arg("--allow-loopback-peers")
        .start();
    let addr = server.udp();
    let prom = server.prometheus();
    assert!(prom.ip().is_loopback(), "{prom}");

    let m0 = scrape_metrics(prom);
    assert_conventions(&m0);
    let free0 = ports_free(&m0);
    assert_eq!(free0, 20.0, "20 relay ports configured ({min}-{max})");
    assert_eq!(udp_ipv4_allocations(&m0), 0.0);
    assert!(
        m0.find("turnd_user_relayed_bytes_total", &[]).is_empty(),
        "per-user series without --prometheus-username-labels"
    );
    for name in [
        "turnd_relayed_packets_total",
        "turnd_relayed_bytes_total",
        "turnd_allocations_created_total",
        "turnd_requests_total",
        "turnd_auth_failures_total",
    ] {
        assert_eq!(m0.type_of(name), Some("counter"), "{name}");
    }
    assert_eq!(m0.type_of("turnd_allocations"), Some("gauge"));
    assert_eq!(m0.type_of("turnd_relay_ports_free"), Some("gauge"));

    // A wrong password.
    let mut bad = Client::new(addr, USER, "not-the-password");
    bad.allocate_with(&[Attr::transport_udp()])
        .expect_error(401);
    let m1 = scrape_metrics(prom);
    assert_conventions(&m1);
    let failures: f64 = m1
        .find("turnd_auth_failures_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(
        failures >= 1.0,
        "no auth failure counted after a wrong password:\n{}",
        m1.text
    );
    assert!(
        m1.find("turnd_auth_failures_total", &[])
            .iter()
            .all(|s| s.labels.contains_key("reason") && s.labels.len() == 1),
        "turnd_auth_failures_total must be labelled by reason only:\n{}",
        m1.text
    );

    // Three allocations.
    let mut a = Client::new(addr, USER, PASSWORD);
    a.allocate();
    let mut b = Client::new(addr, USER, PASSWORD);
    b.allocate();
    let mut c = Client::new(addr, USER, PASSWORD);
    c.allocate();
    let m2 = scrape_metrics(prom);
    assert_conventions(&m2);
    assert_eq!(udp_ipv4_allocations(&m2), 3.0, "{}", m2.text);
    assert_eq!(
        ports_free(&m2),
        free0 - 3.0,
        "relay ports free after 3 allocations"
    );
    // (A retransmission under load may be answered, and counted, twice.)
    assert!(
        m2.get(
            "turnd_requests_total",
            &[("method", "allocate"), ("code", "200")]
        ) >= 3.0,
        "{}",
        m2.text
    );
    assert!(
        m2.get(
            "turnd_requests_total",
            &[("method", "allocate"), ("code", "401")]
        ) >= 4.0,
        "three challenges and one wrong password:\n{}",
        m2.text
    );
    assert_eq!(m2.get("turnd_allocations_created_total", &[]), 3.0);

    // Traffic flows in a thread while two scrapes are taken.
    a.channel_bind(0x4001, peer.addr).expect_success();
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicU64::new(0));
    let h = pump(a, stop.clone(), trips.clone());
    assert!(
        wait_until(Duration::from_secs(5), || trips.load(Ordering::Relaxed)
            >= 10),
        "relay does not flow"
    );
    let s1 = scrape_metrics(prom);
    let t1 = trips.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(5), || trips.load(Ordering::Relaxed)
            >= t1 + 20),
        "relay stalled"
    );
    let s2 = scrape_metrics(prom);
    let running = !h.is_finished();
    stop.store(true, Ordering::Relaxed);
    let mut a = h.join().expect("pump thread");
    assert!(running, "the pump stopped before the second scrape");
    assert!(
        c2p(&s2) > c2p(&s1),
        "client_to_peer did not move between scrapes: {} then {}",
        c2p(&s1),
        c2p(&s2)
    );
    assert!(
        p2c(&s2) > p2c(&s1),
        "peer_to_client did not move between scrapes: {} then {}",
        p2c(&s1),
        p2c(&s2)
    );
    assert!(
        s2.get(
            "turnd_relayed_bytes_total",
            &[("direction", "client_to_peer")]
        ) > s1.get(
            "turnd_relayed_bytes_total",
            &[("direction", "client_to_peer")]
        )
    );
    let done = trips.load(Ordering::Relaxed) as f64;
    let s3 = scrape_metrics(prom);
    assert!(
        c2p(&s3) >= done && p2c(&s3) >= done,
        "{done} round trips but counters {} / {}",
        c2p(&s3),
        p2c(&s3)
    );
    assert_eq!(s3.get("turnd_channels", &[]), 1.0);
    assert!(s3.get("turnd_permissions", &[]) >= 1.0);

    // Deleting one gives its port back.
    a.refresh(Some(0)).expect_success();
    let s4 = scrape_metrics(prom);
    assert_conventions(&s4);
    assert_eq!(udp_ipv4_allocations(&s4), 2.0);
    assert_eq!(ports_free(&s4), free0 - 2.0);
    assert!(s4.get("turnd_allocations_deleted_total", &[]) >= 1.0);
    assert_eq!(s4.get("turnd_channels", &[]), 0.0);
    drop((b, c));
    // Anything but /metrics is 404 on the metrics listener.
    assert_eq!(http(prom, "GET", "/", &[]).status, 404);
}

#[test]
fn per_user_byte_counters_with_username_labels() {
    let peer = EchoPeer::start();
    let mut server = relay_server(
        2,
        &[
            PROMETHEUS,
            ADMIN,
            &["--allow-loopback-peers", "--prometheus-username-labels"],
        ]
        .concat(),
    )
    .start();
    let addr = server.udp();
    let prom = server.prometheus();
    let mut a = Client::new(addr, USER, PASSWORD);
    a.allocate();
    a.channel_bind(0x4002, peer.addr).expect_success();
    for i in 0..10u8 {
        channel_round_trip(&mut a, 0x4002, &[i; 100]);
    }
    let m = scrape_metrics(prom);
    assert_conventions(&m);
    assert_eq!(m.type_of("turnd_user_relayed_bytes_total"), Some("counter"));
    let up = m.get(
        "turnd_user_relayed_bytes_total",
        &[("user", USER), ("direction", "client_to_peer")],
    );
    let down = m.get(
        "turnd_user_relayed_bytes_total",
        &[("user", USER), ("direction", "peer_to_client")],
    );
    assert_eq!(
        up, 1000.0,
        "10 x 100 payload bytes to the peer:\n{}",
        m.text
    );
    assert_eq!(down, 1000.0, "10 x 100 payload bytes back:\n{}", m.text);

    // The allocation ends: its bytes stay in the user's counters (they are
    // counters: they never go down), scrape after scrape, also when an admin
    // call took a snapshot in between.
    a.refresh(Some(0)).expect_success();
    for _ in 0..2 {
        let r = http_get_bearer(server.admin(), "/api/status", TOKEN);
        assert_eq!(r.status, 200, "{r:?}");
        let m = scrape_metrics(prom);
        assert_conventions(&m);
        for direction in ["client_to_peer", "peer_to_client"] {
            assert_eq!(
                m.get(
                    "turnd_user_relayed_bytes_total",
                    &[("user", USER), ("direction", direction)],
                ),
                1000.0,
                "{direction} after the allocation ended:\n{}",
                m.text
            );
        }
    }
}

/// `/metrics` listens on loopback unless `prometheus-address` says otherwise.
#[test]
fn prometheus_listens_on_loopback_by_default() {
    let mut server = relay_server(0, &["--prometheus", "--prometheus-port", "0"]).start();
    let prom = server.prometheus();
    assert!(prom.ip().is_loopback(), "metrics on {prom}");
    assert_eq!(scrape_metrics(prom).problems.len(), 0);
}

/// Requests of methods turnd does not know are counted without a duplicate
/// series: all under `method="unknown"`, one line per result code.
#[test]
fn unknown_methods_are_one_series_per_code() {
    let mut server = relay_server(1, PROMETHEUS).start();
    let addr = server.udp();
    let prom = server.prometheus();
    let mut c = Client::new(addr, USER, PASSWORD);
    for method in [0x0f0, 0x0f1, 0x2ab, 0x0f0] {
        let req = build(
            turnd::stun::Method(method),
            turnd::stun::Class::Request,
            new_tid(),
            &[],
            None,
            false,
        );
        c.send_raw(&req);
        assert!(
            c.recv_raw(Duration::from_secs(2)).is_some(),
            "no answer to method {method:#05x}"
        );
    }
    let m = scrape_metrics(prom);
    assert_conventions(&m);
    let unknown = m.find("turnd_requests_total", &[("method", "unknown")]);
    assert_eq!(unknown.len(), 1, "{}", m.text);
    assert_eq!(unknown[0].value, 4.0, "{}", m.text);
}

/// Both HTTP listeners refuse oversized request heads (431), drop
/// connections beyond their cap at once, and close a connection that sends
/// no complete request head within a few seconds.
#[test]
fn http_listeners_bound_heads_connections_and_slow_clients() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    let mut server = relay_server(8, &[PROMETHEUS, ADMIN].concat()).start();
    let prom = server.prometheus();
    let admin = server.admin();
    for (addr, path) in [(prom, "/metrics"), (admin, "/healthz")] {
        // A 32 KiB header.
        let big = "x".repeat(32 * 1024);
        let r = http(addr, "GET", path, &[("X-Filler", &big)]);
        assert_eq!(r.status, 431, "{path} with a 32 KiB header: {r:?}");

        // 200 idle connections: those beyond the cap are closed at once.
        let idle: Vec<TcpStream> = (0..200)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        thread::sleep(Duration::from_millis(500));
        let closed = idle
            .iter()
            .filter(|s| {
                let mut s: &TcpStream = s;
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                match s.read(&mut [0u8; 1]) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                }
            })
            .count();
        assert!(
            closed >= 100,
            "{path}: only {closed} of 200 idle connections closed at once"
        );

        // A slow client that never finishes its request head is let go
        // after a few seconds (once the idle ones are gone and the listener
        // answers again).
        drop(idle);
        assert!(
            wait_until(Duration::from_secs(5), || {
                http(
                    addr,
                    "GET",
                    path,
                    &[("Authorization", &format!("Bearer {TOKEN}"))],
                )
                .status
                    == 200
            }),
            "{path}: the listener does not answer after the idle connections left"
        );
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let t = Instant::now();
        let mut b = [0u8; 256];
        let _ = slow.read(&mut b);
        let held = t.elapsed();
        assert!(
            held > Duration::from_secs(2) && held < Duration::from_secs(12),
            "{path}: a half-sent request head held the connection {held:?}"
        );
        // And the listener still answers.
        assert_eq!(
            http(
                addr,
                "GET",
                path,
                &[("Authorization", &format!("Bearer {TOKEN}"))]
            )
            .status,
            200
        );
    }
}

/// Every admin endpoint but /healthz, /readyz and the two pages refuses a missing or
/// wrong token; the token is only taken from `Authorization: Bearer`, never
/// from the query string (it would land in browser history and logs).
#[test]
fn admin_token_is_required() {
    let mut server = relay_server(3, ADMIN).start();
    let admin = server.admin();
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{admin}");

    let h = http(admin, "GET", "/healthz", &[]);
    assert_eq!(h.status, 200, "/healthz without token: {h:?}");
    // Kubernetes probes and load-balancer health checks send no token.
    let r = http(admin, "GET", "/readyz", &[]);
    assert_eq!(r.status, 200, "/readyz without token: {r:?}");

    // (method, path, status with the right token)
    let endpoints: &[(&str, &str, u16)] = &[
        ("GET", "/api/status", 200),
        ("GET", "/api/allocations", 200),
        ("DELETE", "/api/allocations/12345", 404),
        ("POST", "/api/credentials?user=bob", 409),
        ("GET", "/no/such/page", 404),
    ];
    let wrong_same_len: String = TOKEN
        .chars()
        .map(|c| if c == 'a' { 'b' } else { c })
        .collect();
    assert_ne!(wrong_same_len, TOKEN);
    let join = |path: &str, tok: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}token={tok}")
    };
    for &(method, path, ok) in endpoints {
        let none = http(admin, method, path, &[]);
        assert_eq!(
            none.status, 401,
            "{method} {path} without a token: {none:?}"
        );
        assert!(
            none.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "401 without WWW-Authenticate: Bearer: {none:?}"
        );
        for wrong in [
            "wrong",
            wrong_same_len.as_str(),
            &TOKEN[..TOKEN.len() - 1],
            &format!("{TOKEN}x"),
        ] {
            let r = http(
                admin,
                method,
                path,
                &[("Authorization", &format!("Bearer {wrong}"))],
            );
            assert_eq!(r.status, 401, "{method} {path} Bearer {wrong}: {r:?}");
            let r = http(admin, method, &join(path, wrong), &[]);
            assert_eq!(r.status, 401, "{method} {path} ?token={wrong}: {r:?}");
        }
        // Not a bearer token at all.
        let r = http(admin, method, path, &[("Authorization", TOKEN)]);
        assert_eq!(
            r.status, 401,
            "{method} {path} Authorization without Bearer: {r:?}"
        );
        let r = http(
            admin,
            method,
            path,
            &[("Authorization", &format!("Basic {TOKEN}"))],
        );
        assert_eq!(r.status, 401, "{method} {path} Basic: {r:?}");
        // The right token in the query string is refused too.
        let r = http(admin, method, &join(path, TOKEN), &[]);
        assert_eq!(r.status, 401, "{method} {path} with ?token=: {r:?}");

        let r = http(
            admin,
            method,
            path,
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        );
        assert_eq!(r.status, ok, "{method} {path} with Bearer token: {r:?}");
    }
    // The pages a browser opens are HTML without data: served without the
    // token; their script asks for it and sends it as a bearer token.
    for path in ["/", "/selftest"] {
        let page = http(admin, "GET", path, &[]);
        assert_eq!(page.status, 200, "{path} without a token: {page:?}");
        assert!(
            page.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{page:?}"
        );
        assert!(page.body.contains("type=\"password\""), "{}", page.body);
        assert!(page.body.contains("src=\"admin.js\""), "{}", page.body);
        assert!(
            !page.body.contains(REALM),
            "{path} leaks data: {}",
            page.body
        );
    }
    let js = http(admin, "GET", "/admin.js", &[]);
    assert_eq!(js.status, 200, "/admin.js without a token: {js:?}");
    assert!(js.body.contains("sessionStorage"), "{}", js.body);
    assert!(js.body.contains("'Bearer '"), "{}", js.body);
    let page = http(admin, "GET", "/", &[]);
    assert!(page.body.contains("id=\"status\""), "{}", page.body);
    let s = http_get_bearer(admin, "/api/status", TOKEN).json();
    assert_eq!(s["allocations"], 0);
    assert_eq!(s["draining"], false);
    assert_eq!(s["realm"], REALM);
    assert_eq!(s["listening_port"], server.udp().port());
}

/// `admin-token` shorter than 16 characters is a configuration error naming
/// the option; an `admin-listen` off loopback starts with a warning.
#[test]
fn admin_token_length_and_listen_address_are_checked() {
    let out = run_turnd(
        relay_server(
            9,
            &[
                "--admin-token",
                "fifteen-chars!!",
                "--admin-listen",
                "127.0.0.1:0",
            ],
        )
        .arguments(),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(out.stderr.contains("admin-token"), "{}", out.stderr);
    assert!(out.stderr.contains("16"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let mut server =
        relay_server(9, &["--admin-token", TOKEN, "--admin-listen", "0.0.0.0:0"]).start();
    let _ = server.admin();
    assert!(
        server.wait_for_log("admin-listen", 1, Duration::from_secs(5)),
        "no warning about a non-loopback admin-listen: {}",
        server.log()
    );
}

fn list(admin: SocketAddr) -> Vec<serde_json::Value> {
    let r = http_get_bearer(admin, "/api/allocations", TOKEN);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{r:?}"
    );
    r.json().as_array().expect("a JSON array").clone()
}

#[test]
fn admin_lists_and_deletes_allocations() {
    let peer = EchoPeer::start();
    let mut server = relay_server(4, &[ADMIN, &["--allow-loopback-peers"]].concat()).start();
    let addr = server.udp();
    let admin = server.admin();
    assert!(list(admin).is_empty());

    let mut a = Client::new(addr, USER, PASSWORD);
    let alloc = a.allocate();
    a.channel_bind(0x4003, peer.addr).expect_success();
    for i in 0..5u8 {
        channel_round_trip(&mut a, 0x4003, &[i; 50]);
    }
    let l1 = list(admin);
    assert_eq!(l1.len(), 1, "{l1:?}");
    let e = &l1[0];
    assert_eq!(e["user"], USER, "{e}");
    assert_eq!(
        e["client"],
        a.local_addr().to_string(),
        "client address must be the client's socket address: {e}"
    );
    assert_eq!(e["relay"], alloc.relay.to_string(), "{e}");
    assert_eq!(e["transport"], "udp", "{e}");
    assert_eq!(e["channels"], 1, "{e}");
    let id = e["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("numeric id: {e}"));
    let to_peer1 = e["bytes_to_peer"].as_u64().expect("bytes_to_peer");
    let to_client1 = e["bytes_to_client"].as_u64().expect("bytes_to_client");
    assert_eq!(to_peer1, 250, "{e}");
    assert_eq!(to_client1, 250, "{e}");

    for i in 0..4u8 {
        channel_round_trip(&mut a, 0x4003, &[i; 25]);
    }
    let l2 = list(admin);
    let e2 = &l2[0];
    assert_eq!(e2["id"].as_u64(), Some(id));
    assert_eq!(e2["bytes_to_peer"].as_u64(), Some(to_peer1 + 100), "{e2}");
    assert_eq!(
        e2["bytes_to_client"].as_u64(),
        Some(to_client1 + 100),
        "{e2}"
    );

    // A second allocation shows up with its own id and address.
    let mut b = Client::new(addr, USER, PASSWORD);
    let balloc = b.allocate();
    let l3 = list(admin);
    assert_eq!(l3.len(), 2, "{l3:?}");
    let eb = l3
        .iter()
        .find(|x| x["client"] == b.local_addr().to_string())
        .unwrap_or_else(|| panic!("b not listed: {l3:?}"));
    assert_eq!(eb["relay"], balloc.relay.to_string());
    assert_ne!(eb["id"].as_u64(), Some(id));

    // DELETE ends it: 204, gone from the list, the client's Refresh gets 437.
    let auth = format!("Bearer {TOKEN}");
    let d = http(
        admin,
        "DELETE",
        &format!("/api/allocations/{id}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(d.status, 204, "{d:?}");
    let l4 = list(admin);
    assert_eq!(l4.len(), 1, "{l4:?}");
    assert_eq!(l4[0]["client"], b.local_addr().to_string());
    a.refresh(None).expect_error(437);
    // The relay no longer forwards for it.
    a.channel_data(0x4003, b"after delete");
    a.expect_silence(SILENCE);
    let d2 = http(
        admin,
        "DELETE",
        &format!("/api/allocations/{id}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(d2.status, 404, "second DELETE: {d2:?}");
    let bad = http(
        admin,
        "DELETE",
        "/api/allocations/not-a-number",
        &[("Authorization", &auth)],
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    // The other allocation is untouched.
    b.refresh(None).expect_success();
}

/// `/readyz` while draining, and Allocate answered 300 Try Alternate with
/// the configured alternate of the client's address family (RFC 8489
/// section 10): at `max-allocations` before the drain, while draining after
/// it; counted by reason in `turnd_allocations_shed_total`.
#[test]
fn readyz_is_503_while_draining() {
    let alternates = [
        "--drain-timeout",
        "5",
        "--max-allocations",
        "1",
        "--alternate-server",
        "[2001:db8::21]:3478",
        "--alternate-server",
        "127.0.0.21",
    ];
    let mut server = relay_server(5, &[ADMIN, PROMETHEUS, &alternates].concat()).start();
    let addr = server.udp();
    let admin = server.admin();
    let prom = server.prometheus();
    let r = http_get_bearer(admin, "/readyz", TOKEN);
    assert_eq!(r.status, 200, "{r:?}");
    let mut a = Client::new(addr, USER, PASSWORD);
    a.allocate();

    // At max-allocations a client holding a nonce gets an authenticated 300
    // naming the alternate of its family (127.0.0.21 with the default
    // port); a client's first, credential-less Allocate a bare one, before
    // any 401 (see `shed_before_challenge`).
    let alternate_of = |r: &Response| {
        r.get(turnd::stun::AttributeType::ALTERNATE_SERVER)
            .map(|v| turnd::stun::decode_address(&v))
    };
    let expected = Some(Ok("127.0.0.21:3478".parse().unwrap()));
    let signed_300 = |b: &mut Client| {
        let r = b.allocate_with(&[Attr::transport_udp()]);
        r.expect_error(300);
        assert!(
            r.integrity_ok(&b.key()),
            "the 300 carries MESSAGE-INTEGRITY"
        );
        assert_eq!(alternate_of(&r), expected, "ALTERNATE-SERVER");
    };
    let mut b = Client::new(addr, USER, PASSWORD);
    b.refresh(None).expect_error(437);
    signed_300(&mut b);
    let mut c = Client::new(addr, USER, PASSWORD);
    let r = c.allocate_with(&[Attr::transport_udp()]);
    r.expect_error(300);
    assert!(!r.integrity_ok(&c.key()), "a bare 300 before the challenge");
    assert_eq!(alternate_of(&r), expected, "ALTERNATE-SERVER");

    server.signal("TERM");
    let mut last = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = http_get_bearer(admin, "/readyz", TOKEN);
            let is503 = r.status == 503;
            last = Some(r);
            is503
        }),
        "/readyz not 503 after SIGTERM with --drain-timeout: {last:?}"
    );
    assert_eq!(http(admin, "GET", "/healthz", &[]).status, 200);
    // Without a token too, as a kubelet or load balancer asks.
    assert_eq!(http(admin, "GET", "/readyz", &[]).status, 503);
    let s = http_get_bearer(admin, "/api/status", TOKEN).json();
    assert_eq!(s["draining"], true, "{s}");
    assert_eq!(s["allocations"], 1, "{s}");
    // A new client is sent to the alternate of its family meanwhile.
    signed_300(&mut b);
    // The allocation made before keeps refreshing.
    a.refresh(None).expect_success();
    let m = scrape_metrics(prom);
    assert_eq!(m.type_of("turnd_allocations_shed_total"), Some("counter"));
    let shed = |reason| m.value("turnd_allocations_shed_total", &[("reason", reason)]);
    assert_eq!(shed("max_allocations"), Some(2.0), "{}", m.text);
    assert_eq!(shed("draining"), Some(1.0), "{}", m.text);
    assert_eq!(shed("relay_ports_low"), Some(0.0), "{}", m.text);
    let redirects = m.value(
        "turnd_requests_total",
        &[("method", "allocate"), ("code", "300")],
    );
    assert_eq!(redirects, Some(3.0), "{}", m.text);

    // Ending the last allocation through the admin API ends the drain.
    let id = list(admin)[0]["id"].as_u64().expect("id");
    let d = http(
        admin,
        "DELETE",
        &format!("/api/allocations/{id}"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(d.status, 204, "{d:?}");
    let st = server
        .wait_exit(Duration::from_secs(2))
        .expect("turnd did not exit within 2 s of its last allocation's deletion");
    assert!(st.success(), "{st}");
}

#[test]
fn credentials_409_without_a_secret() {
    let mut server = relay_server(6, ADMIN).start();
    let admin = server.admin();
    let r = http(
        admin,
        "POST",
        "/api/credentials?user=bob",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(r.status, 409, "{r:?}");
    let s = http_get_bearer(admin, "/api/status", TOKEN).json();
    assert_eq!(s["rest_credentials"], false);
}

#[test]
fn credentials_minted_with_a_secret_allocate() {
    let secret = "ops-rest-secret";
    let mut server = relay_server(7, &[ADMIN, &["--static-auth-secret", secret]].concat()).start();
    let addr = server.udp();
    let admin = server.admin();
    let r = http(
        admin,
        "POST",
        "/api/credentials?user=bob&ttl=600",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    let username = j["username"].as_str().expect("username").to_owned();
    let password = j["password"].as_str().expect("password").to_owned();
    let (expiry, user) = username
        .split_once(':')
        .unwrap_or_else(|| panic!("REST username EXPIRY:USER expected: {username}"));
    assert_eq!(user, "bob");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().expect("numeric expiry");
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "ttl=600 gives expiry {expiry}, now {now}"
    );
    assert_eq!(password, turnd::auth::rest_password(secret, &username));

    let mut c = Client::new(addr, &username, &password);
    let alloc = c.allocate();
    assert!(alloc.relay.ip().is_loopback());
    let l = list(admin);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["user"], username.as_str());

    // A bad user name is refused.
    let r = http(
        admin,
        "POST",
        "/api/credentials?user=a%20b",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(r.status, 400, "{r:?}");
}
