//! The TLS certificate is reloaded on SIGHUP without dropping connections:
//! a TLS client keeps relaying ChannelData (no loss, same connection) while
//! the certificate files are replaced and SIGHUP is sent; new connections get
//! the new certificate; broken files are refused and logged, and the
//! certificate in force stays.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const PACKETS: u32 = 2000;
const WINDOW: u32 = 16;
/// Packet at which the files are replaced with cert B and SIGHUP sent.
const SWAP_AT: u32 = 500;
/// Packet at which a new connection checks it gets cert B.
const CHECK_AT: u32 = 1000;
const CHANNEL: u16 = 0x4321;
const WAIT: Duration = Duration::from_secs(3);
const RELOADED: &str = "TLS certificate reloaded";
const NOT_RELOADED: &str = "TLS certificate not reloaded";

/// Replaces `dest` with `src`'s contents atomically (write aside, rename).
fn replace_file(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

fn write_file(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

fn payload(seq: u32) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    // Varying lengths, so padding is exercised too.
    v.extend(std::iter::repeat_n(0xA5, (seq % 7) as usize + 60));
    v
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_a_relaying_connection() {
    // Cert A is served from dir/cert.pem + dir/key.pem; cert B is made aside.
    let a = TestCert::generate("reload-a", "turnd-reload-a");
    let (b_cert, b_key) = make_cert_files(&a.dir.path, "b-cert.pem", "b-key.pem", "turnd-reload-b");
    let b_der = cert_der(&b_cert);
    assert_ne!(a.der, b_der);

    let (min, max) = relay_ports(Suite::TlsReload, 0);
    let mut server = Turnd::standard(min, max)
        .args(a.args())
        .args(["--tls-listening-port", "0", "--allow-loopback-peers"])
        .listen_implied()
        .start();
    let l = server.listeners.clone();
    let trust_both = tls_client_config(&[&a.der, &b_der], &[], &[ALPN_STUN_TURN]);

    let echo = EchoPeer::start();
    let mut c = StreamClient::connect_tls(l.tls(), trust_both.clone()).expect("TLS to cert A");
    assert_eq!(c.peer_cert_der(), Some(a.der.clone()), "starts with cert A");
    let alloc = c.allocate();
    server.assert_relay_in_range(alloc.relay);
    c.channel_bind(CHANNEL, echo.addr).expect_success();

    let mut outstanding: BTreeSet<u32> = BTreeSet::new();
    let mut received = 0u32;
    let mut next = 0u32;
    let mut swapped = false;
    let mut checked = false;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while received < PACKETS {
        assert!(
            Instant::now() < deadline,
            "relay stalled: {received} of {PACKETS} echoed, {} outstanding, closed: {:?}",
            outstanding.len(),
            c.closed()
        );
        while next < PACKETS && outstanding.len() < WINDOW as usize {
            c.channel_data(CHANNEL, &payload(next));
            outstanding.insert(next);
            next += 1;
        }
        if !swapped && next >= SWAP_AT {
            replace_file(&b_cert, &a.cert);
            replace_file(&b_key, &a.key);
            server.signal("HUP");
            swapped = true;
        }
        if swapped && !checked && next >= CHECK_AT {
            assert!(
                server.wait_for_log(RELOADED, 1, Duration::from_secs(5)),
                "no '{RELOADED}' in the log within 5 s of SIGHUP:\n{}",
                server.log()
            );
            let mut fresh =
                StreamClient::connect_tls(l.tls(), trust_both.clone()).expect("TLS after reload");
            assert_eq!(
                fresh.peer_cert_der(),
                Some(b_der.clone()),
                "a new connection after SIGHUP must see cert B"
            );
            fresh.binding();
            fresh.allocate();
            checked = true;
        }
        let (ch, data) = c.expect_channel_data(WAIT);
        assert_eq!(ch, CHANNEL);
        let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
        assert_eq!(data, payload(seq), "echo of packet {seq} corrupted");
        assert!(
            outstanding.remove(&seq),
            "packet {seq} echoed twice or never sent"
        );
        received += 1;
    }
    assert!(swapped && checked);
    assert!(outstanding.is_empty(), "lost: {outstanding:?}");
    assert!(
        c.closed().is_none(),
        "the relaying connection was closed: {:?}",
        c.closed()
    );
    assert_eq!(
        c.peer_cert_der(),
        Some(a.der.clone()),
        "the old connection keeps its session"
    );
    eprintln!(
        "relayed {PACKETS} packets (window {WINDOW}) over TLS in {:?} with a certificate swap",
        started.elapsed()
    );

    // Broken files: SIGHUP is refused and logged; cert B stays in force.
    write_file(&a.cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n");
    write_file(&a.key, b"garbage");
    server.signal("HUP");
    assert!(
        server.wait_for_log(NOT_RELOADED, 1, Duration::from_secs(5)),
        "no '{NOT_RELOADED}' in the log after SIGHUP with broken files:\n{}",
        server.log()
    );
    let mut after = StreamClient::connect_tls(l.tls(), trust_both.clone())
        .expect("TLS still works after a refused reload");
    assert_eq!(
        after.peer_cert_der(),
        Some(b_der.clone()),
        "cert B stays in force"
    );
    after.binding();
    // Missing files too.
    std::fs::remove_file(&a.cert).unwrap();
    server.signal("HUP");
    assert!(
        server.wait_for_log(NOT_RELOADED, 2, Duration::from_secs(5)),
        "missing certificate file not reported:\n{}",
        server.log()
    );
    let mut after2 =
        StreamClient::connect_tls(l.tls(), trust_both).expect("TLS after a missing file");
    assert_eq!(after2.peer_cert_der(), Some(b_der.clone()));
    after2.binding();

    // The first connection still relays.
    for seq in 0..20 {
        c.channel_data(CHANNEL, &payload(seq));
        let (_, data) = c.expect_channel_data(WAIT);
        assert_eq!(data, payload(seq));
    }
    assert!(server.is_running(), "turnd died");
    assert!(!server.log().contains("panicked"), "{}", server.log());
    drop(echo);
}
