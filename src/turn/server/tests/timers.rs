//! The deadline heap under refreshes.

use super::*;

#[test]
fn refreshes_do_not_pile_up_timers_and_shorter_lifetimes_still_expire() {
    let mut h = Harness::new(|_| {});
    let c = h.client(1, "alice", "secret");
    let a = h.request(&c, Method::ALLOCATE, |w| {
        w.u32(AttributeType::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        w.u32(AttributeType::LIFETIME, 3600).unwrap();
    });
    assert_eq!(a.msg().get_u32(AttributeType::LIFETIME), Some(3600));
    h.bind(&c, 0x4000, peer());
    let before = h.server.scheduled_timers();
    for _ in 0..2000 {
        h.permit(&c, peer());
        h.bind(&c, 0x4000, peer());
        h.request(&c, Method::REFRESH, |w| {
            w.u32(AttributeType::LIFETIME, 3600).unwrap()
        });
    }
    // Cached answers hold one timer each (40 s); entity timers do not grow.
    let cached = 3 * 2000;
    assert!(
        h.server.scheduled_timers() <= before + cached + 2,
        "{} timers",
        h.server.scheduled_timers()
    );
    h.advance(TRANSACTION_LIFETIME + Duration::from_secs(1));
    assert!(
        h.server.scheduled_timers() <= 4,
        "{} timers after the cache emptied",
        h.server.scheduled_timers()
    );
    // Refreshed at 41 s, the permission outlives its first timer (300 s) by
    // a re-armed one, and then expires at 341 s.
    h.permit(&c, peer());
    h.advance(Duration::from_secs(279));
    assert!(matches!(
        h.channel_data(&c, 0x4000, b"x"),
        ClientOutput::ToPeer { .. }
    ));
    h.advance(Duration::from_secs(25));
    assert!(
        h.server.allocation(&c.ft).unwrap().permissions.is_empty(),
        "expired at 341 s"
    );
    assert_eq!(h.channel_data(&c, 0x4000, b"x"), ClientOutput::None);
    // A shorter lifetime takes effect: 600 s, not the 3600 s granted first.
    let mut c = c;
    c.nonce = h.client(1, "alice", "secret").nonce;
    h.request(&c, Method::REFRESH, |w| {
        w.u32(AttributeType::LIFETIME, 600).unwrap()
    });
    h.advance(Duration::from_secs(601));
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.io.open.is_empty());
}
