//! Rate limits: per-source token buckets for unauthenticated answers and
//! failed authentications, and byte buckets for bandwidth limits.
//!
//! Time comes in as an argument; nothing here reads a clock.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

/// A token bucket: `rate` tokens per second up to `burst`.
///
/// Used with tokens = packets (request limits) or tokens = bytes (bandwidth).
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens per second up to `burst`.
    pub fn new(rate: f64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f64,
            rate,
            burst: burst as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if available; false (and nothing taken) otherwise.
    #[inline]
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens whether or not they are there: for bytes already
    /// sent (the XDP fast path relays first and reports after). The bucket
    /// may go into debt, at most one burst deep; [`TokenBucket::take`]
    /// refuses until it has refilled.
    pub fn consume(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - n as f64).max(-self.burst);
    }

    /// True when `n` tokens are available (nothing is taken).
    pub fn has(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }

    /// True when fewer than one token is available.
    pub fn is_empty(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens < 1.0
    }

    /// Changes rate and burst (live reload), keeping the tokens it has.
    pub fn set_rate(&mut self, rate: f64, burst: u64) {
        self.rate = rate;
        self.burst = burst as f64;
        self.tokens = self.tokens.min(self.burst);
    }
}

/// Default length in bits of the IPv6 prefix that counts as one source
/// (`ipv6-source-prefix`): a /64 is what one subscriber or one host usually
/// gets, so every address in it shares one budget.
pub const DEFAULT_IPV6_SOURCE_PREFIX: u8 = 64;

/// Token buckets per source, in a bounded table.
///
/// A source is an IPv4 address (an IPv4-mapped IPv6 address counts as the
/// IPv4 address it maps) or an IPv6 prefix of [`SourceLimiter::ipv6_prefix`]
/// bits (default [`DEFAULT_IPV6_SOURCE_PREFIX`], 64): one host cannot dodge
/// its limit by changing the low bits of its IPv6 address.
///
/// The table holds at most `max_sources` sources. A new source in a full
/// table evicts the oldest one (the first tracked), in constant time, and is
/// tracked and limited itself: the table never fails open (a new source that
/// is never blocked) nor closed (a new source never answered). An attacker
/// can reset its own budget only by bringing `max_sources` other sources in
/// between (that many IPv4 addresses or IPv6 prefixes).
#[derive(Clone, Debug)]
pub struct SourceLimiter {
    buckets: HashMap<IpAddr, TokenBucket>,
    /// The keys of `buckets`, oldest first (each exactly once).
    order: VecDeque<IpAddr>,
    rate: f64,
    burst: u64,
    max_sources: usize,
    ipv6_prefix: u8,
    /// Sources evicted from a full table (tests check the cost).
    #[cfg(test)]
    evictions: u64,
    /// Entries looked at to evict them.
    #[cfg(test)]
    examined: u64,
}

impl SourceLimiter {
    /// `rate` tokens per second and `burst` tokens per source (at least 1),
    /// for at most `max_sources` sources (at least 1); `rate` 0 disables the
    /// limit. IPv6 sources are keyed by their /64
    /// ([`DEFAULT_IPV6_SOURCE_PREFIX`]); see [`SourceLimiter::with_ipv6_prefix`].
    pub fn new(rate: f64, burst: u64, max_sources: usize) -> Self {
        SourceLimiter {
            buckets: HashMap::new(),
            order: VecDeque::new(),
            rate,
            burst: burst.max(1),
            max_sources: max_sources.max(1),
            ipv6_prefix: DEFAULT_IPV6_SOURCE_PREFIX,
            #[cfg(test)]
            evictions: 0,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// Keys IPv6 sources by their first `bits` bits (`ipv6-source-prefix`;
    /// 0 to 128, more counts as 128; 128 keys each address on its own).
    /// IPv4 sources are always keyed by their full address.
    pub fn with_ipv6_prefix(mut self, bits: u8) -> Self {
        self.set_ipv6_prefix(bits);
        self
    }

    /// Changes the IPv6 prefix length in bits (live reload; see
    /// [`SourceLimiter::with_ipv6_prefix`]). A change forgets every tracked
    /// source, whose keys no longer apply.
    pub fn set_ipv6_prefix(&mut self, bits: u8) {
        let bits = bits.min(128);
        if bits != self.ipv6_prefix {
            self.ipv6_prefix = bits;
            self.buckets.clear();
            self.order.clear();
        }
    }

    /// The length in bits of the IPv6 prefix that is one source.
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    /// True when limiting is on.
    pub fn is_enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// The key `ip` is counted under: the IPv4 address, or the IPv6 prefix
    /// (host bits zero).
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let mask = match self.ipv6_prefix {
                    0 => 0,
                    n => u128::MAX << (128 - u32::from(n)),
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// The bucket of `key`, made (evicting the oldest source when the table
    /// is full) if it has none.
    fn bucket(&mut self, key: IpAddr, now: Instant) -> &mut TokenBucket {
        if !self.buckets.contains_key(&key) {
            if self.buckets.len() >= self.max_sources {
                if let Some(oldest) = self.order.pop_front() {
                    self.buckets.remove(&oldest);
                    #[cfg(test)]
                    {
                        self.evictions += 1;
                        self.examined += 1;
                    }
                }
            }
            self.order.push_back(key);
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
    }

    /// Takes one token for the source of `ip`; false when it is over its
    /// limit. Call once per answer to an unauthenticated request.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let key = self.key(ip);
        self.bucket(key, now).take(1, now)
    }

    /// True when the source of `ip` has no token left (nothing is taken).
    pub fn is_blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.is_enabled() {
            return false;
        }
        let key = self.key(ip);
        match self.buckets.get_mut(&key) {
            Some(b) => b.is_empty(now),
            None => false,
        }
    }

    /// Takes one token for the source of `ip` whether or not one is left (a
    /// failure happened, such as a failed authentication).
    pub fn record(&mut self, ip: IpAddr, now: Instant) {
        if self.is_enabled() {
            let key = self.key(ip);
            let _ = self.bucket(key, now).take(1, now);
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Changes the limits (live reload): `rate` per second, `burst` tokens.
    pub fn set_rate(&mut self, rate: f64, burst: u64) {
        self.rate = rate;
        self.burst = burst.max(1);
        for b in self.buckets.values_mut() {
            b.set_rate(rate, self.burst);
        }
    }
}

/// A [`SourceLimiter`] shared by every worker of a process, so a limit "per
/// source IP" holds whichever worker each of the source's ports is hashed
/// to. It is consulted only for requests (unauthenticated answers,
/// authentication failures), never for relayed data; one uncontended mutex
/// lock per request.
#[derive(Clone, Debug)]
pub struct SharedLimiter(std::sync::Arc<std::sync::Mutex<SourceLimiter>>);

impl SharedLimiter {
    /// Shares `limiter`.
    pub fn new(limiter: SourceLimiter) -> Self {
        SharedLimiter(std::sync::Arc::new(std::sync::Mutex::new(limiter)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceLimiter> {
        // Every update is one step: a panicked holder left it consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`SourceLimiter::allow`].
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock().allow(ip, now)
    }

    /// [`SourceLimiter::is_blocked`].
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock().is_blocked(ip, now)
    }

    /// [`SourceLimiter::record`].
    pub fn record(&self, ip: IpAddr, now: Instant) {
        self.lock().record(ip, now);
    }

    /// [`SourceLimiter::set_rate`].
    pub fn set_rate(&self, rate: f64, burst: u64) {
        self.lock().set_rate(rate, burst);
    }

    /// [`SourceLimiter::set_ipv6_prefix`].
    pub fn set_ipv6_prefix(&self, bits: u8) {
        self.lock().set_ipv6_prefix(bits);
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Burst of a bandwidth bucket for `bytes_per_sec`: one second of traffic,
/// at least 64 KiB so one large datagram always fits.
pub fn bandwidth_burst(bytes_per_sec: u64) -> u64 {
    bytes_per_sec.max(65_536)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary epoch
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        for _ in 0..5 {
            assert!(b.take(1, t0));
        }
        assert!(!b.take(1, t0));
        assert!(b.take(1, t0 + Duration::from_millis(100)));
        assert!(!b.take(1, t0 + Duration::from_millis(100)));
        assert!(b.take(5, t0 + Duration::from_secs(10)));
        assert!(
            !b.take(6, t0 + Duration::from_secs(20)),
            "never above burst"
        );
    }

    #[test]
    fn limiter_is_per_source_and_bounded() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut l = SourceLimiter::new(1.0, 3, 2);
        assert!(l.allow(a, t0) && l.allow(a, t0) && l.allow(a, t0));
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0), "another source is not affected");
        // Table full (2 sources): a third evicts the oldest, `a`, and is limited.
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(l.allow(c, t0) && l.allow(c, t0) && l.allow(c, t0));
        assert!(!l.allow(c, t0));
        assert_eq!(l.len(), 2);
        assert!(l.allow(a, t0), "`a` was forgotten");
        assert!(
            SourceLimiter::new(0.0, 0, 1).allow(a, t0),
            "rate 0 disables"
        );
    }

    /// Issue 10: limits were keyed on the full IPv6 address.
    #[test]
    fn one_ipv6_64_shares_one_budget() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1.0, 3, 65_536);
        let allowed = (0..1000u16)
            .filter(|&i| {
                l.allow(
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, 0, 0, 1)),
                    t0,
                )
            })
            .count();
        assert_eq!(allowed, 3, "one /64, one budget");
        assert_eq!(l.len(), 1);
        assert!(
            l.allow("2001:db8:1:3::1".parse().unwrap(), t0),
            "the next /64 is another source"
        );
    }

    /// Issue 10: a full table let new sources fail authentication forever.
    #[test]
    fn fresh_sources_beyond_the_cap_are_still_limited() {
        let t0 = Instant::now();
        let mut failures = SourceLimiter::new(1.0 / 60.0, 2, 16);
        for i in 0..1000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0xC000_0200 + i));
            assert!(!failures.is_blocked(ip, t0));
            failures.record(ip, t0);
            failures.record(ip, t0);
            assert!(failures.is_blocked(ip, t0), "source {i} must be blocked");
            assert!(failures.len() <= 16);
        }
        let mut unauth = SourceLimiter::new(1.0, 2, 16);
        for i in 0..1000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0xC000_0200 + i));
            assert!(unauth.allow(ip, t0), "a new source gets its budget");
            assert!(unauth.allow(ip, t0));
            assert!(!unauth.allow(ip, t0), "and no more");
        }
    }

    #[test]
    fn ipv4_mapped_sources_are_ipv4() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1.0, 2, 16);
        assert!(l.allow("192.0.2.1".parse().unwrap(), t0));
        assert!(l.allow("::ffff:192.0.2.1".parse().unwrap(), t0));
        assert!(!l.allow("192.0.2.1".parse().unwrap(), t0));
        assert!(
            l.allow("192.0.2.2".parse().unwrap(), t0),
            "IPv4 keyed by full address"
        );
    }

    #[test]
    fn ipv6_prefix_is_configurable() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1.0, 1, 16).with_ipv6_prefix(128);
        assert!(l.allow("2001:db8::1".parse().unwrap(), t0));
        assert!(l.allow("2001:db8::2".parse().unwrap(), t0));
        let mut l = SourceLimiter::new(1.0, 1, 16).with_ipv6_prefix(48);
        assert!(l.allow("2001:db8:1:1::1".parse().unwrap(), t0));
        assert!(!l.allow("2001:db8:1:ffff::2".parse().unwrap(), t0));
        assert!(l.allow("2001:db8:2::1".parse().unwrap(), t0));
        l.set_ipv6_prefix(128);
        assert!(l.is_empty(), "a new prefix forgets the old keys");
        assert!(l.allow("2001:db8:1:1::1".parse().unwrap(), t0));
        assert!(l.allow("2001:db8:1:1::2".parse().unwrap(), t0));
    }

    #[test]
    fn a_full_table_evicts_in_constant_time() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1.0, 1, 1000);
        for i in 0..100_000u32 {
            l.record(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert_eq!(l.len(), 1000);
        assert_eq!(l.evictions, 99_000);
        assert_eq!(l.examined, 99_000, "one entry looked at per eviction");
        // The oldest went first: the last 1000 are the ones tracked.
        assert!(l.is_blocked(IpAddr::V4(Ipv4Addr::from(99_999)), t0));
        assert!(l.is_blocked(IpAddr::V4(Ipv4Addr::from(99_000)), t0));
        assert!(!l.is_blocked(IpAddr::V4(Ipv4Addr::from(98_999)), t0));
    }
}
