//! Live reload on SIGHUP against the real turnd binary started with only
//! `--config FILE`: a relayed ChannelData stream loses nothing across the
//! reload, new users and quotas apply at once, and a broken file is refused
//! (logged) while the server keeps running with the configuration it had.

#![allow(clippy::disallowed_methods)] // real-time tests: they read the clock

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// Packets streamed through the relay across the reload.
const PACKETS: u32 = 3000;
/// Most packets in flight at once.
const WINDOW: u32 = 32;
/// Packet at which the file is rewritten and SIGHUP sent.
const RELOAD_AT: u32 = 1000;
/// Longest wait for the server to log a reload (or its refusal).
const LOG_WAIT: Duration = Duration::from_secs(5);

/// Writes `text` to `path` atomically (write aside, then rename), so turnd
/// never reads a half-written file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn base_config(users: &str, extra: &str) -> String {
    let (min, max) = relay_ports(Suite::ReloadSighup, 0);
    format!(
        "listening-ip = \"127.0.0.1\"\n\
         listening-port = 0\n\
         relay-ip = \"127.0.0.1\"\n\
         min-port = {min}\n\
         max-port = {max}\n\
         realm = \"{REALM}\"\n\
         user = [{users}]\n\
         allow-loopback-peers = true\n\
         {extra}"
    )
}

fn payload(seq: u32) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.resize(160, (seq % 251) as u8);
    p
}

#[test]
fn sighup_reloads_users_and_quota_without_losing_relayed_packets() {
    let dir = TempDir::new("reload");
    let file = dir.join("turnd.toml");
    write_atomic(&file, &base_config("\"alice:secret\"", ""));

    let mut server = Turnd::bare()
        .arg("--config")
        .arg(file.to_str().unwrap())
        .start();
    let echo = EchoPeer::start();
    let mut c = Client::new(server.addr, USER, PASSWORD);
    c.allocate();
    const CH: u16 = 0x4001;
    c.channel_bind(CH, echo.addr).expect_success();
    // frank does not exist yet.
    Client::new(server.addr, "frank", "pw")
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(401);

    // Stream, windowed, with the reload in the middle.
    let mut received: HashSet<u32> = HashSet::new();
    let mut next = 0u32;
    let mut hup_sent = false;
    let mut reloaded_at: Option<u32> = None;
    let started = Instant::now();
    while received.len() < PACKETS as usize {
        while next < PACKETS && next - (received.len() as u32) < WINDOW {
            if next == RELOAD_AT && !hup_sent {
                write_atomic(
                    &file,
                    &base_config("\"alice:secret\", \"frank:pw\"", "user-quota = 5\n"),
                );
                server.signal("HUP");
                hup_sent = true;
            }
            // Make sure the reload completes while the stream is running.
            if next == PACKETS - 500 && reloaded_at.is_none() {
                assert!(
                    server.wait_for_log("configuration reloaded", 1, LOG_WAIT),
                    "no {} in turnd's log within {LOG_WAIT:?}:\n{}",
                    "configuration reloaded",
                    server.log()
                );
                reloaded_at = Some(next);
            }
            c.channel_data(CH, &payload(next));
            next += 1;
        }
        if hup_sent
            && reloaded_at.is_none()
            && received.len() % 16 == 0
            && server.log().contains("configuration reloaded")
        {
            reloaded_at = Some(next);
        }
        match c.recv(Duration::from_secs(2)) {
            Some(Incoming::Channel { channel, data }) => {
                assert_eq!(channel, CH);
                let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
                assert_eq!(data, payload(seq), "payload of packet {seq} altered");
                assert!(received.insert(seq), "packet {seq} delivered twice");
            }
            Some(other) => panic!("unexpected datagram during the stream: {other:?}"),
            None => {
                let lost = next - received.len() as u32;
                panic!(
                    "stream stalled: {lost} packet(s) in flight never came back \
                     ({} of {next} sent received; SIGHUP sent: {hup_sent}; reload logged at packet {reloaded_at:?})",
                    received.len()
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let reloaded_at = reloaded_at.expect("reload observed during the stream");
    eprintln!(
        "streamed {PACKETS} packets (window {WINDOW}) in {elapsed:?}; SIGHUP at packet {RELOAD_AT}, \
         reload logged by packet {reloaded_at}; 0 lost"
    );
    assert!(
        reloaded_at < PACKETS,
        "the reload happened during the stream"
    );
    assert!(server.is_running());

    // The new user works, and the new quota applies to him: 5, then 486.
    let mut franks: Vec<Client> = Vec::new();
    for i in 0..5 {
        let mut f = Client::new(server.addr, "frank", "pw");
        let r = f.allocate_with(&[Attr::transport_udp()]);
        assert!(r.is_success(), "frank's allocation #{}: {r:?}", i + 1);
        franks.push(f);
    }
    let mut sixth = Client::new(server.addr, "frank", "pw");
    sixth
        .allocate_with(&[Attr::transport_udp()])
        .expect_error(486);

    // A broken file: SIGHUP is refused and logged, the old config stays.
    write_atomic(
        &file,
        &base_config("\"alice:secret\"", "no-such-option = 1\n"),
    );
    server.signal("HUP");
    assert!(
        server.wait_for_log("not reloaded", 1, LOG_WAIT),
        "no {} in turnd's log within {LOG_WAIT:?}:\n{}",
        "not reloaded",
        server.log()
    );
    assert!(server.is_running(), "turnd exited on a bad reload");
    let log = server.log();
    assert!(
        log.contains("no-such-option"),
        "the refusal names the option:\n{log}"
    );
    assert_eq!(
        log.matches("configuration reloaded").count(),
        1,
        "the broken file was applied:\n{log}"
    );
    // alice still works, frank (from the last good config) too, and the
    // allocation made before both reloads still relays.
    Client::new(server.addr, USER, PASSWORD).allocate();
    // frank authenticates and his quota of 5 still holds: 486, not 401...
    let mut f = Client::new(server.addr, "frank", "pw");
    f.allocate_with(&[Attr::transport_udp()]).expect_error(486);
    // ...and once one of his allocations is deleted, he allocates again.
    franks[0].refresh(Some(0)).expect_success();
    f.allocate();
    for i in 0..10u32 {
        c.channel_data(CH, &payload(PACKETS + i));
        let (ch, data) = c.expect_channel_data(RESPONSE_TIMEOUT);
        assert_eq!(ch, CH);
        assert_eq!(data, payload(PACKETS + i));
    }
    drop(c);
    drop(echo);
    drop(server);
}
