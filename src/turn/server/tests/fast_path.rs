//! The XDP fast path's core side: which channel bindings the kernel may
//! relay, until when, and what its counts do to counters and `max-bps`.

use super::*;

fn entries(h: &mut Harness) -> Vec<FastPathEntry> {
    let mut out = Vec::new();
    let now = h.now;
    h.server.fast_path_entries(now, &mut out);
    out
}

fn relayed(packets: u64, bytes: u64) -> KernelRelayed {
    KernelRelayed {
        packets_to_peer: packets,
        bytes_to_peer: bytes,
        packets_to_client: packets,
        bytes_to_client: bytes,
    }
}

#[test]
fn a_channel_with_a_permission_is_listed_until_its_earliest_expiry() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    let relay = h.relay_of(&c);
    assert!(entries(&mut h).is_empty(), "no channel yet");
    h.permit(&c, peer());
    assert!(
        entries(&mut h).is_empty(),
        "a permission alone is not a channel"
    );
    assert_eq!(h.bind(&c, 0x4001, peer()).class(), Class::Success);
    let listed = entries(&mut h);
    assert_eq!(listed.len(), 1);
    let e = &listed[0];
    assert_eq!(
        (e.five_tuple, e.channel, e.relay, e.peer),
        (c.ft, 0x4001, relay, peer())
    );
    assert_eq!(&*e.user, "alice");
    // ChannelBind installs a 300 s permission with its 600 s channel: the
    // permission ends first (RFC 8656 sections 9 and 12).
    assert_eq!(e.deadline, h.now + PERMISSION_LIFETIME);

    // Past the permission (the channel still bound), it is gone; a new
    // CreatePermission brings it back.
    h.advance(PERMISSION_LIFETIME + Duration::from_secs(1));
    assert!(entries(&mut h).is_empty());
    h.permit(&c, peer());
    assert_eq!(entries(&mut h).len(), 1);
}

#[test]
fn the_allocation_ending_removes_its_entries() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    h.bind(&c, 0x4001, peer());
    h.bind(&c, 0x4002, "192.0.2.11:6000".parse().unwrap());
    assert_eq!(entries(&mut h).len(), 2);
    let id = h.server.allocation(&c.ft).unwrap().id;
    assert!(h.server.delete_allocation_by_id(id, &mut h.io));
    assert!(entries(&mut h).is_empty());
}

#[test]
fn kernel_counts_reach_the_allocation_and_the_totals() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    h.bind(&c, 0x4001, peer());
    let id = h.server.allocation(&c.ft).unwrap().id;
    let user: std::sync::Arc<str> = "alice".into();
    let now = h.now;
    h.server
        .credit_fast_path(now, &c.ft, id, &user, relayed(10, 1000));
    let a = h.server.allocation(&c.ft).unwrap();
    assert_eq!((a.packets_to_peer, a.bytes_to_peer), (10, 1000));
    assert_eq!((a.packets_to_client, a.bytes_to_client), (10, 1000));
    let s = h.server.stats();
    assert_eq!((s.packets_to_peer, s.bytes_to_client), (10, 1000));
    assert_eq!(s.kernel, relayed(10, 1000));

    // Counts that arrive after the allocation ended go to the user's
    // ended totals.
    assert!(h.server.delete_allocation_by_id(id, &mut h.io));
    h.server.take_ended_user_bytes();
    h.server
        .credit_fast_path(now, &c.ft, id, &user, relayed(1, 5));
    let ended = h.server.take_ended_user_bytes();
    assert_eq!(ended.users[&user], (5, 5));
    assert_eq!(h.server.stats().kernel, relayed(11, 1005));
}

#[test]
fn an_allocation_over_max_bps_leaves_the_fast_path_until_its_bucket_refills() {
    let mut h = Harness::new(|c| c.max_bps = 100_000);
    let c = h.client(1, "alice", "secret");
    h.allocate(&c);
    h.bind(&c, 0x4001, peer());
    let id = h.server.allocation(&c.ft).unwrap().id;
    let user: std::sync::Arc<str> = "alice".into();
    assert_eq!(entries(&mut h).len(), 1);
    // The kernel relayed two seconds' worth at once: the bucket is in debt.
    let now = h.now;
    h.server
        .credit_fast_path(now, &c.ft, id, &user, relayed(200, 200_000));
    assert!(
        entries(&mut h).is_empty(),
        "over max-bps: user space decides"
    );
    // User space drops while the bucket is empty, as without the fast path.
    assert_eq!(h.channel_data(&c, 0x4001, &[0u8; 1000]), ClientOutput::None);
    // After the debt is paid back (at 100,000 bytes/s) it comes back.
    h.advance(Duration::from_millis(1_500));
    assert_eq!(entries(&mut h).len(), 1);
}

#[test]
fn only_udp_allocations_in_one_family_with_specific_addresses_are_listed() {
    // The listening address is a wildcard: the kernel cannot match it.
    let mut h = Harness::new(|_| {});
    let mut c = h.client(1, "alice", "secret");
    c.ft.server = "0.0.0.0:3478".parse().unwrap();
    h.allocate(&c);
    h.bind(&c, 0x4001, peer());
    assert!(entries(&mut h).is_empty());

    // A TCP client stays in user space.
    let mut h = Harness::new(|_| {});
    let mut c = h.client(2, "alice", "secret");
    c.ft.transport = Transport::Tcp;
    h.allocate(&c);
    h.bind(&c, 0x4001, peer());
    assert!(h.server.allocation(&c.ft).is_some());
    assert!(entries(&mut h).is_empty());
}
