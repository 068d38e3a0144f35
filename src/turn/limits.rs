//! Rate limits: per-source token buckets for unauthenticated answers and
//! failed authentications, and byte buckets for bandwidth limits.
//!
//! Time comes in as an argument; nothing here reads a clock.

use std::collections::HashMap;
use std::net::IpAddr;
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

    /// True when fewer than one token is available.
    pub fn is_empty(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens < 1.0
    }

    /// True when the bucket would be full at `now` (idle long enough to forget).
    fn is_full_at(&self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * self.rate >= self.burst
    }

    /// Changes rate and burst (live reload), keeping the tokens it has.
    pub fn set_rate(&mut self, rate: f64, burst: u64) {
        self.rate = rate;
        self.burst = burst as f64;
        self.tokens = self.tokens.min(self.burst);
    }
}

/// Token buckets per source IP address, in a bounded table.
///
/// When the table is full, buckets that have refilled completely (idle
/// sources) are forgotten; if it is still full, new sources are refused
/// (fail closed: under a spoofed flood turnd answers less, never more).
#[derive(Clone, Debug)]
pub struct SourceLimiter {
    buckets: HashMap<IpAddr, TokenBucket>,
    rate: f64,
    burst: u64,
    max_sources: usize,
}

impl SourceLimiter {
    /// `rate` per second and `burst` per source; `rate` 0 disables the limit.
    pub fn new(rate: f64, burst: u64, max_sources: usize) -> Self {
        SourceLimiter {
            buckets: HashMap::new(),
            rate,
            burst: burst.max(1),
            max_sources,
        }
    }

    /// True when limiting is on.
    pub fn is_enabled(&self) -> bool {
        self.rate > 0.0
    }

    fn bucket(&mut self, ip: IpAddr, now: Instant) -> Option<&mut TokenBucket> {
        if !self.buckets.contains_key(&ip) {
            if self.buckets.len() >= self.max_sources {
                self.buckets.retain(|_, b| !b.is_full_at(now));
                if self.buckets.len() >= self.max_sources {
                    return None;
                }
            }
            self.buckets
                .insert(ip, TokenBucket::new(self.rate, self.burst, now));
        }
        self.buckets.get_mut(&ip)
    }

    /// Takes one token for `ip`; false when the source is over its limit.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.is_enabled() {
            return true;
        }
        self.bucket(ip, now).is_some_and(|b| b.take(1, now))
    }

    /// True when `ip` has no token left (nothing is taken).
    pub fn is_blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.is_enabled() {
            return false;
        }
        match self.buckets.get_mut(&ip) {
            Some(b) => b.is_empty(now),
            None => false,
        }
    }

    /// Takes one token for `ip` whether or not one is left (a failure happened).
    pub fn record(&mut self, ip: IpAddr, now: Instant) {
        if self.is_enabled() {
            if let Some(b) = self.bucket(ip, now) {
                let _ = b.take(1, now);
            }
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

    /// Changes the limits (live reload).
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
        // Table full (2 sources, neither idle): a third is refused.
        assert!(!l.allow("192.0.2.3".parse().unwrap(), t0));
        // Once the others are idle (full again), there is room.
        assert!(l.allow("192.0.2.3".parse().unwrap(), t0 + Duration::from_secs(10)));
        assert!(l.len() <= 2);
        assert!(
            SourceLimiter::new(0.0, 0, 1).allow(a, t0),
            "rate 0 disables"
        );
    }
}
