//! Relay port ranges, handed out from this one table.
//!
//! Each test file (a [`Suite`]) owns one block of relay ports, cut into
//! equal slots; a test asks for its slot with [`relay_ports`], so tests of
//! one file that run in parallel threads never share relay ports, and no
//! two files share a block (checked when this compiles). turnd skips busy
//! relay ports anyway; the blocks keep a test's relay addresses predictable.

/// A test file that starts relay servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// `tests/udp_binding.rs` (no allocation is made).
    UdpBinding,
    /// `tests/udp_allocate.rs`.
    UdpAllocate,
    /// `tests/udp_relay.rs`.
    UdpRelay,
    /// `tests/peer_policy.rs`.
    PeerPolicy,
    /// `tests/config_cli.rs` (no allocation is made).
    ConfigCli,
    /// `tests/interop_turnutils.rs`, UDP tests.
    InteropUdp,
    /// `tests/tcp_tls.rs`.
    TcpTls,
    /// `tests/tls_reload.rs`.
    TlsReload,
    /// `tests/interop_turnutils.rs`, TCP and TLS tests.
    InteropStream,
    /// `tests/ops_systemd.rs`.
    OpsSystemd,
    /// `tests/ops_metrics_admin.rs`.
    OpsMetricsAdmin,
    /// `tests/ops_logs.rs`.
    OpsLogs,
    /// `tests/ops_coturn_conf.rs`.
    OpsCoturnConf,
    /// `tests/workers.rs`.
    Workers,
    /// `tests/auth_rest_secret.rs`.
    AuthRestSecret,
    /// `tests/auth_userdb.rs`.
    AuthUserdb,
    /// `tests/abuse_limits.rs`.
    AbuseLimits,
    /// `tests/reload_sighup.rs`.
    ReloadSighup,
    /// `tests/stream_hostile.rs`.
    StreamHostile,
    /// `tests/probe.rs`, the turnd servers (they share one slot).
    ProbeTurnd,
    /// `tests/probe.rs`, the coturn servers.
    ProbeCoturn,
    /// `tests/own_address.rs`.
    OwnAddress,
    /// `tests/reflection.rs` (no allocation is made).
    Reflection,
    /// `tests/proxy_protocol.rs`.
    ProxyProtocol,
    /// `tests/faults.rs` (fault injection; slots 0-13) and
    /// `tests/faults_userdb.rs` (slots 14-19).
    Faults,
    /// `tests/soak.rs` (the short soak).
    Soak,
    /// `tests/fleet_redis.rs`.
    FleetRedis,
    /// `tests/fleet_netns.rs` (each node in its own network namespace).
    FleetNetns,
    /// `tests/browser/fleet.test.mjs` (reserved, as below).
    BrowserFleet,
    /// `tests/browser/tcp_tls.test.mjs` (reserved here; `RELAY_PORTS` in
    /// `tests/browser/harness.mjs` hands it out).
    BrowserTcpTls,
    /// `tests/browser/admin.test.mjs` (reserved, as above).
    BrowserAdmin,
    /// `tests/browser/webrtc.test.mjs` (reserved, as above).
    BrowserWebrtc,
    /// `tests/browser/rest.test.mjs` (reserved, as above).
    BrowserRest,
}

/// A block of relay ports: `slots` slots of `width` ports from `first`.
#[derive(Clone, Copy, Debug)]
struct Block {
    suite: Suite,
    first: u16,
    width: u16,
    slots: u16,
}

const fn block(suite: Suite, first: u16, width: u16, slots: u16) -> Block {
    Block {
        suite,
        first,
        width,
        slots,
    }
}

/// The table: every suite's block, in port order.
const BLOCKS: &[Block] = &[
    block(Suite::UdpBinding, 21000, 100, 1),      // 21000-21099
    block(Suite::UdpAllocate, 21100, 20, 20),     // 21100-21499
    block(Suite::UdpRelay, 21500, 20, 10),        // 21500-21699
    block(Suite::PeerPolicy, 21700, 20, 8),       // 21700-21859
    block(Suite::ConfigCli, 21900, 100, 1),       // 21900-21999
    block(Suite::InteropUdp, 22000, 200, 4),      // 22000-22799
    block(Suite::TcpTls, 23000, 20, 20),          // 23000-23399
    block(Suite::TlsReload, 23400, 100, 1),       // 23400-23499
    block(Suite::InteropStream, 23500, 60, 7),    // 23500-23919
    block(Suite::BrowserTcpTls, 23920, 80, 1),    // 23920-23999
    block(Suite::OwnAddress, 24000, 20, 5),       // 24000-24099
    block(Suite::Reflection, 24100, 50, 2),       // 24100-24199
    block(Suite::ProxyProtocol, 24200, 20, 14),   // 24200-24479
    block(Suite::OpsSystemd, 25000, 10, 10),      // 25000-25099
    block(Suite::OpsMetricsAdmin, 25100, 10, 10), // 25100-25199
    block(Suite::OpsLogs, 25200, 10, 10),         // 25200-25299
    block(Suite::OpsCoturnConf, 25300, 10, 10),   // 25300-25399
    block(Suite::BrowserAdmin, 25900, 100, 1),    // 25900-25999
    block(Suite::Workers, 26000, 100, 5),         // 26000-26499
    block(Suite::StreamHostile, 26500, 20, 10),   // 26500-26699
    block(Suite::FleetRedis, 26700, 20, 15),      // 26700-26999
    block(Suite::FleetNetns, 38000, 20, 15),      // 38000-38299
    block(Suite::BrowserFleet, 38300, 300, 1),    // 38300-38599
    block(Suite::BrowserWebrtc, 40000, 1000, 1),  // 40000-40999
    block(Suite::BrowserRest, 41000, 1000, 1),    // 41000-41999
    block(Suite::AuthRestSecret, 42000, 100, 10), // 42000-42999
    block(Suite::AuthUserdb, 43000, 100, 10),     // 43000-43999
    block(Suite::AbuseLimits, 44000, 100, 10),    // 44000-44999
    block(Suite::ReloadSighup, 45000, 100, 1),    // 45000-45099
    block(Suite::ProbeTurnd, 46000, 100, 1),      // 46000-46099
    block(Suite::ProbeCoturn, 46100, 25, 4),      // 46100-46199
    block(Suite::Faults, 47000, 50, 20),          // 47000-47999
    block(Suite::Soak, 48000, 1000, 2),           // 48000-49999
];

/// True when the blocks are in port order, none overlaps the next, none
/// passes 65535, and each suite has exactly one block.
const fn well_formed(blocks: &[Block]) -> bool {
    let mut i = 0;
    while i < blocks.len() {
        let b = blocks[i];
        let end = b.first as u32 + b.width as u32 * b.slots as u32;
        if b.width == 0 || b.slots == 0 || end > 65_536 {
            return false;
        }
        if i + 1 < blocks.len() && end > blocks[i + 1].first as u32 {
            return false;
        }
        let mut j = i + 1;
        while j < blocks.len() {
            if blocks[j].suite as u8 == b.suite as u8 {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

const _: () = assert!(well_formed(BLOCKS), "relay port blocks overlap");

fn block_of(suite: Suite) -> Block {
    *BLOCKS
        .iter()
        .find(|b| b.suite == suite)
        .unwrap_or_else(|| panic!("no relay port block for {suite:?}"))
}

/// The relay ports (`min`, `max`, inclusive) of slot `slot` of `suite`.
#[track_caller]
pub fn relay_ports(suite: Suite, slot: u16) -> (u16, u16) {
    relay_span(suite, slot, 1)
}

/// Slots `first_slot..first_slot + slots` of `suite` as one range
/// (`min`, `max`, inclusive), for a server that needs more ports than a slot.
#[track_caller]
pub fn relay_span(suite: Suite, first_slot: u16, slots: u16) -> (u16, u16) {
    let b = block_of(suite);
    assert!(
        slots > 0 && first_slot + slots <= b.slots,
        "{suite:?} has {} relay port slots, slots {first_slot}..{} asked",
        b.slots,
        first_slot + slots
    );
    let min = b.first + b.width * first_slot;
    (min, min + b.width * slots - 1)
}
