//! The pool of relay ports on one relay address: `min-port..=max-port`,
//! handed out at random (RFC 8656, section 7.2 asks for unpredictable ports).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rand::Rng;

/// Free ports of one relay address, O(1) random take and O(1) return.
///
/// Shape: a dense vector of free ports plus each port's index in it.
#[derive(Clone, Debug)]
pub struct PortPool {
    min: u16,
    free: Vec<u16>,
    /// `index[p - min]` is the position of port p in `free`, or `u32::MAX` when taken.
    index: Vec<u32>,
}

const TAKEN: u32 = u32::MAX;

impl PortPool {
    /// A pool holding every port in `min..=max` (`min <= max`).
    pub fn new(min: u16, max: u16) -> Self {
        let free: Vec<u16> = (min..=max).collect();
        let index = (0..free.len() as u32).collect();
        PortPool { min, free, index }
    }

    /// Ports still free.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Ports in the pool, free or taken (`max - min + 1`).
    pub fn size(&self) -> usize {
        self.index.len()
    }

    /// True when `port` belongs to this pool and is free.
    pub fn is_free(&self, port: u16) -> bool {
        port.checked_sub(self.min)
            .and_then(|i| self.index.get(i as usize))
            .is_some_and(|&i| i != TAKEN)
    }

    /// Takes a specific free port. Returns false when it is taken or outside the pool.
    pub fn take(&mut self, port: u16) -> bool {
        if !self.is_free(port) {
            return false;
        }
        let i = self.index[(port - self.min) as usize] as usize;
        self.free.swap_remove(i);
        if let Some(&moved) = self.free.get(i) {
            self.index[(moved - self.min) as usize] = i as u32;
        }
        self.index[(port - self.min) as usize] = TAKEN;
        true
    }

    /// Takes a random free port.
    pub fn take_random(&mut self, rng: &mut impl Rng) -> Option<u16> {
        if self.free.is_empty() {
            return None;
        }
        let p = self.free[rng.gen_range(0..self.free.len())];
        self.take(p);
        Some(p)
    }

    /// Takes a random even port; with `reserve_next`, also takes port + 1
    /// (EVEN-PORT with the R bit, RFC 8656 section 7.2). Returns the even port.
    pub fn take_random_even(&mut self, rng: &mut impl Rng, reserve_next: bool) -> Option<u16> {
        let ok = |pool: &Self, p: u16| {
            p % 2 == 0 && (!reserve_next || p.checked_add(1).is_some_and(|n| pool.is_free(n)))
        };
        // A few random probes, then a scan from a random start: bounded either way.
        for _ in 0..32 {
            if self.free.is_empty() {
                return None;
            }
            let p = self.free[rng.gen_range(0..self.free.len())];
            if ok(self, p) {
                return self.take_pair(p, reserve_next);
            }
        }
        let n = self.free.len();
        if n == 0 {
            return None;
        }
        let start = rng.gen_range(0..n);
        let found = (0..n)
            .map(|k| self.free[(start + k) % n])
            .find(|&p| ok(self, p))?;
        self.take_pair(found, reserve_next)
    }

    fn take_pair(&mut self, p: u16, reserve_next: bool) -> Option<u16> {
        self.take(p);
        if reserve_next {
            self.take(p + 1);
        }
        Some(p)
    }

    /// Returns a port to the pool (no effect when already free or outside).
    pub fn put(&mut self, port: u16) {
        let Some(i) = port.checked_sub(self.min).map(usize::from) else {
            return;
        };
        if self.index.get(i) == Some(&TAKEN) {
            self.index[i] = self.free.len() as u32;
            self.free.push(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn take_and_put() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = PortPool::new(50000, 50009);
        let mut got = Vec::new();
        while let Some(x) = p.take_random(&mut rng) {
            assert!((50000..=50009).contains(&x));
            assert!(!got.contains(&x));
            got.push(x);
        }
        assert_eq!(got.len(), 10);
        p.put(50003);
        p.put(50003);
        assert_eq!(p.free(), 1);
        assert_eq!(p.take_random(&mut rng), Some(50003));
        p.put(1);
        assert_eq!(p.free(), 0);
    }

    #[test]
    fn nearly_exhausted_below_five_percent_of_a_familys_ports() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        // 40 ports: 5 % is 2, so nearly exhausted at 1 free port.
        let ports = RelayPorts::new(&[v4, v6], 50000, 50039);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..38 {
            ports.take(v4, None, &mut rng).unwrap();
        }
        assert!(!ports.nearly_exhausted(false), "2 of 40 free");
        ports.take(v4, None, &mut rng).unwrap();
        assert!(ports.nearly_exhausted(false), "1 of 40 free");
        assert!(!ports.nearly_exhausted(true), "the IPv6 pool is untouched");
        ports.release(SocketAddr::new(v4, 50000));
        ports.release(SocketAddr::new(v4, 50001));
        assert!(!ports.nearly_exhausted(false), "ports came back");
        // A family without relay addresses is never exhausted; a range of
        // 10 ports only when every port is taken.
        let small = RelayPorts::new(&[v4], 50000, 50009);
        assert!(!small.nearly_exhausted(true));
        for _ in 0..9 {
            small.take(v4, None, &mut rng).unwrap();
        }
        assert!(!small.nearly_exhausted(false), "1 of 10 free");
        small.take(v4, None, &mut rng).unwrap();
        assert!(small.nearly_exhausted(false), "0 of 10 free");
    }

    #[test]
    fn even_port_with_reservation() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut p = PortPool::new(50000, 50005);
        let a = p.take_random_even(&mut rng, true).unwrap();
        assert_eq!(a % 2, 0);
        assert!(!p.is_free(a + 1));
        assert_eq!(p.free(), 4);
        p.take(50001);
        p.take(50003);
        p.take(50005);
        // Only even ports left and none has its successor free.
        assert_eq!(p.take_random_even(&mut rng, true), None);
        assert!(p.take_random_even(&mut rng, false).is_some());
    }
}

/// An EVEN-PORT R-bit reservation (RFC 8656 section 7.2): the relay address
/// held for a later Allocate with this RESERVATION-TOKEN, until `expires`.
#[derive(Clone, Debug)]
struct Reservation {
    /// The reserved relay address (its port is taken from the pool).
    relay: SocketAddr,
    /// When the reservation lapses and the port returns to the pool.
    expires: Instant,
    /// The user whose Allocate made it: a reservation holds one of that
    /// user's `user-quota` slots (and one of `total-quota`) until claimed
    /// or lapsed.
    owner: Arc<str>,
}

/// The pools of every relay address and the EVEN-PORT reservations.
#[derive(Debug, Default)]
struct Inner {
    /// Free ports per relay address.
    pools: HashMap<IpAddr, PortPool>,
    /// Reservations by RESERVATION-TOKEN (8 bytes).
    reservations: HashMap<[u8; 8], Reservation>,
}

impl Inner {
    fn release(&mut self, addr: SocketAddr) {
        if let Some(p) = self.pools.get_mut(&addr.ip()) {
            p.put(addr.port());
        }
    }
}

/// Below this share of a family's relay ports still free (percent of
/// `min-port..=max-port` times the relay addresses of that family), the
/// family's ports are nearly exhausted: an Allocate for a relayed address of
/// that family is shed to an `alternate-server` (300 Try Alternate) while
/// this node still has a few ports left for the EVEN-PORT reservations, the
/// busy ports skipped and the races between workers. 5 % of the default
/// range (16,384 ports) is 819 ports; a range of 20 ports or fewer is only
/// nearly exhausted when none is left.
pub const RELAY_PORTS_LOW_PERCENT: usize = 5;

/// Relay ports shared by every worker of a process: one pool per relay
/// address for the whole `min-port..=max-port` range, so no worker runs out
/// while another has ports, and a RESERVATION-TOKEN from one worker's
/// allocation can be claimed by an Allocate that lands on another. Locked
/// once per Allocate and per ended allocation, never per relayed packet.
#[derive(Clone, Debug, Default)]
pub struct RelayPorts(Arc<Mutex<Inner>>);

impl RelayPorts {
    /// A pool of `min..=max` on each of `ips`.
    pub fn new(ips: &[IpAddr], min: u16, max: u16) -> Self {
        let pools = ips
            .iter()
            .map(|ip| (*ip, PortPool::new(min, max)))
            .collect();
        RelayPorts(Arc::new(Mutex::new(Inner {
            pools,
            reservations: HashMap::new(),
        })))
    }

    /// Exclusive access (held for a few map operations, never across IO).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is one step: a panicked holder left it consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Free ports on `ip` (0 for an address that is not a relay address).
    pub fn free(&self, ip: IpAddr) -> usize {
        self.lock().pools.get(&ip).map_or(0, PortPool::free)
    }

    /// Every relay address and its free ports.
    pub fn free_by_ip(&self) -> Vec<(IpAddr, usize)> {
        let inner = self.lock();
        inner.pools.iter().map(|(ip, p)| (*ip, p.free())).collect()
    }

    /// True when fewer than [`RELAY_PORTS_LOW_PERCENT`] % of the relay ports
    /// of the IPv6 (`v6`) or IPv4 relay addresses are free. False for a
    /// family with no relay address (Allocate answers 440 there anyway).
    pub fn nearly_exhausted(&self, v6: bool) -> bool {
        let inner = self.lock();
        let (free, size) = inner
            .pools
            .iter()
            .filter(|(ip, _)| ip.is_ipv6() == v6)
            .fold((0, 0), |(free, size), (_, p)| {
                (free + p.free(), size + p.size())
            });
        free * 100 < size * RELAY_PORTS_LOW_PERCENT
    }

    /// Takes a random free port on `ip`: any port for `even_port` `None`,
    /// else an even one, with `Some(true)` (the R bit) also taking the next
    /// port. `None` when `ip` is not a
    /// relay address or has no suitable port left.
    pub fn take(&self, ip: IpAddr, even_port: Option<bool>, rng: &mut impl Rng) -> Option<u16> {
        let mut inner = self.lock();
        let pool = inner.pools.get_mut(&ip)?;
        match even_port {
            Some(reserve_next) => pool.take_random_even(rng, reserve_next),
            None => pool.take_random(rng),
        }
    }

    /// Returns `addr`'s port to its pool (no effect when it is free already).
    pub fn release(&self, addr: SocketAddr) {
        self.lock().release(addr);
    }

    /// Holds `relay` (its port already taken) for an Allocate with
    /// RESERVATION-TOKEN `token` until `expires`, on behalf of `owner`. See
    /// RFC 8656, section 7.2.
    pub fn reserve(&self, token: [u8; 8], relay: SocketAddr, expires: Instant, owner: Arc<str>) {
        self.lock().reservations.insert(
            token,
            Reservation {
                relay,
                expires,
                owner,
            },
        );
    }

    /// Claims the relay address reserved under `token`: `Some` (the address
    /// and the user who reserved it) while the reservation stands at `now`
    /// (the port stays taken, now the caller's). An unknown or lapsed token
    /// gives `None`; a lapsed reservation is left for
    /// [`RelayPorts::expire_reservation`] (its timer), which returns its port
    /// and names its owner.
    pub fn claim_reservation(
        &self,
        token: &[u8; 8],
        now: Instant,
    ) -> Option<(SocketAddr, Arc<str>)> {
        let mut inner = self.lock();
        if inner.reservations.get(token)?.expires <= now {
            return None;
        }
        let res = inner.reservations.remove(token)?;
        Some((res.relay, res.owner))
    }

    /// The EVEN-PORT reservations standing (RFC 8656, section 7.2): each
    /// reserved relay address and the user whose quota slot it holds, in no
    /// order. Read-only; for checks of the quota and port accounting (the
    /// fuzz targets), O(reservations).
    pub fn reservations(&self) -> Vec<(SocketAddr, Arc<str>)> {
        let inner = self.lock();
        inner
            .reservations
            .values()
            .map(|r| (r.relay, r.owner.clone()))
            .collect()
    }

    /// Ends the reservation under `token` if it lapsed at `now`, returning
    /// its port to the pool; `Some(owner)` when it did, so the caller gives
    /// back the owner's quota slot. A reservation claimed meanwhile (on any
    /// worker) is gone already.
    pub fn expire_reservation(&self, token: &[u8; 8], now: Instant) -> Option<Arc<str>> {
        let mut inner = self.lock();
        match inner.reservations.get(token) {
            Some(r) if r.expires <= now => {
                let r = inner.reservations.remove(token)?;
                inner.release(r.relay);
                Some(r.owner)
            }
            _ => None,
        }
    }
}
