//! Allocation quotas shared by every worker (`user-quota`, `total-quota`).
//!
//! Each worker owns its allocations, but quotas count them all: a user with
//! `user-quota = 2` must get 486 on the third allocation whichever worker the
//! kernel's `SO_REUSEPORT` hash sends it to. The ledger is consulted only
//! when an allocation is created or ends, never on the relay path, so a
//! mutex is cheap here (one uncontended lock per Allocate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Default)]
struct Ledger {
    per_user: HashMap<Arc<str>, u32>,
    total: usize,
    /// Other nodes' live allocations per username (a fleet sharing Redis),
    /// counted against `user-quota` too.
    remote: HashMap<String, u32>,
    /// Bumped by every change of `per_user`.
    version: u64,
}

/// Live allocations per username and in all, shared by the workers of one
/// process (clone it to share). RFC 8656 section 7.2: a server that is over
/// quota answers 486 Allocation Quota Reached.
#[derive(Clone, Debug, Default)]
pub struct QuotaLedger(Arc<Mutex<Ledger>>);

impl QuotaLedger {
    /// A ledger with no allocations.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A worker that panicked while holding the lock left consistent
        // counts (every update is a single step), so keep going.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more allocation for `user` unless that would exceed
    /// `user_quota` allocations for the user or `total_quota` in all (0 is
    /// unlimited). Returns false, counting nothing, when over quota.
    pub fn try_acquire(&self, user: &Arc<str>, user_quota: u32, total_quota: u32) -> bool {
        self.try_acquire_many(user, 1, user_quota, total_quota)
    }

    /// Counts `slots` more for `user` at once (an Allocate with the EVEN-PORT
    /// R bit holds two: its allocation and the reserved port, RFC 8656
    /// section 7.2), or nothing when that would exceed either quota (0 is
    /// unlimited). Returns whether they were counted. Each slot is given back
    /// with one [`Self::release`].
    pub fn try_acquire_many(
        &self,
        user: &Arc<str>,
        slots: u32,
        user_quota: u32,
        total_quota: u32,
    ) -> bool {
        let mut l = self.lock();
        let n = l.per_user.get(user).copied().unwrap_or(0);
        let elsewhere = if user_quota > 0 && !l.remote.is_empty() {
            l.remote.get(&**user).copied().unwrap_or(0)
        } else {
            0
        };
        if (user_quota > 0 && n.saturating_add(elsewhere).saturating_add(slots) > user_quota)
            || (total_quota > 0 && l.total + slots as usize > total_quota as usize)
        {
            return false;
        }
        if slots > 0 {
            l.per_user.insert(user.clone(), n + slots);
            l.total += slots as usize;
            l.version += 1;
        }
        true
    }

    /// Uncounts one allocation of `user` (taken with [`Self::try_acquire`]).
    pub fn release(&self, user: &str) {
        let mut l = self.lock();
        if let Some(n) = l.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                l.per_user.remove(user);
            }
            l.total -= 1;
            l.version += 1;
        }
    }

    /// Replaces the other nodes' counts (username -> live allocations), as
    /// read from the fleet's Redis; they count against `user-quota`.
    pub fn set_remote(&self, counts: HashMap<String, u32>) {
        self.lock().remote = counts;
    }

    /// Other nodes' live allocations of `user`, as last read.
    pub fn remote_count(&self, user: &str) -> u32 {
        self.lock().remote.get(user).copied().unwrap_or(0)
    }

    /// A number that changes whenever this node's counts change.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// This node's live allocations per username, with the version they
    /// were read at.
    pub fn snapshot(&self) -> (u64, HashMap<String, u32>) {
        let l = self.lock();
        (
            l.version,
            l.per_user
                .iter()
                .map(|(u, n)| (u.to_string(), *n))
                .collect(),
        )
    }

    /// Live allocations of `user`.
    pub fn user_count(&self, user: &str) -> u32 {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }

    /// Live allocations in all.
    pub fn total(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_hold_across_clones() {
        let a = QuotaLedger::new();
        let b = a.clone();
        let u: Arc<str> = "alice".into();
        assert!(a.try_acquire(&u, 2, 0));
        assert!(b.try_acquire(&u, 2, 0));
        assert!(!a.try_acquire(&u, 2, 0), "third allocation over user quota");
        assert_eq!(b.user_count("alice"), 2);
        b.release("alice");
        assert!(a.try_acquire(&u, 2, 0));
        let v: Arc<str> = "bob".into();
        assert!(a.try_acquire(&v, 0, 3));
        assert!(!b.try_acquire(&v, 0, 3), "total quota counts every user");
        a.release("alice");
        a.release("alice");
        a.release("bob");
        a.release("nobody");
        assert_eq!(a.total(), 0);
    }

    #[test]
    fn other_nodes_count_against_the_user_quota_only() {
        let a = QuotaLedger::new();
        let u: Arc<str> = "alice".into();
        let v0 = a.version();
        a.set_remote(HashMap::from([("alice".to_owned(), 1)]));
        assert!(a.try_acquire(&u, 2, 0));
        assert!(a.version() > v0);
        assert!(!a.try_acquire(&u, 2, 0), "one here and one elsewhere");
        assert!(
            a.try_acquire(&u, 0, 0),
            "no user quota: remote counts ignored"
        );
        assert_eq!(a.snapshot().1["alice"], 2);
        assert_eq!(a.total(), 2, "total-quota counts this node only");
        a.set_remote(HashMap::new());
        assert!(a.try_acquire(&u, 3, 0));
    }
}
