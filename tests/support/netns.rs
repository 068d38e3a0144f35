//! Changing the network of the test's own namespace: interfaces and
//! addresses with `ip` (iproute2). Only inside a private network namespace
//! (the suite runs in `unshare --net`); a test that needs it fails, never
//! skips, when it is not root, `ip` is missing or the namespace is not
//! private.

use std::process::Command;

/// Panics unless this process's network namespace holds loopback only
/// and interfaces whose names start with `allowed_prefix`.
/// Asked over netlink: `/sys/class/net` shows the namespace sysfs was
/// mounted in.
#[track_caller]
pub fn assert_private_namespace(allowed_prefix: &str) {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("`ip -o link show` (the test needs iproute2)");
    let others: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .filter(|n| n != "lo" && !n.starts_with(allowed_prefix))
        .collect();
    assert!(
        others.is_empty(),
        "run this test inside a private network namespace (unshare --net): it changes the network, and this one has {others:?}"
    );
}

/// Runs `ip ARGS` (split on whitespace); panics with its error output when
/// it fails.
#[track_caller]
pub fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("`ip {args}`: {e} (the test needs iproute2)"));
    assert!(
        out.status.success(),
        "`ip {args}` failed (the test needs root in a private network namespace): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network set-up shared by the tests of one file, which run in parallel
/// threads: `up` runs when the first test enters, `down` when the last one
/// leaves, so the namespace is left as it was found (the suite runs every
/// test file in the same namespace, one after the other).
pub struct SharedSetup {
    users: std::sync::Mutex<usize>,
    up: fn(),
    down: fn(),
}

/// A test's hold on a [`SharedSetup`]; the last one dropped runs `down`.
pub struct SetupGuard(&'static SharedSetup);

impl SharedSetup {
    /// A set-up made by `up` and undone by `down`.
    pub const fn new(up: fn(), down: fn()) -> SharedSetup {
        SharedSetup {
            users: std::sync::Mutex::new(0),
            up,
            down,
        }
    }

    /// Holds the set-up (making it when no test holds it) until the guard
    /// is dropped. Declare the guard first in the test, so what uses the
    /// network (a server) is dropped before it.
    pub fn enter(&'static self) -> SetupGuard {
        let mut n = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *n == 0 {
            (self.down)(); // what a crashed earlier run left
            (self.up)();
        }
        *n += 1;
        SetupGuard(self)
    }
}

impl Drop for SetupGuard {
    fn drop(&mut self) {
        let mut n = self
            .0
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *n -= 1;
        if *n == 0 {
            (self.0.down)();
        }
    }
}

/// Runs `ip ARGS` and ignores the outcome (undoing what may not be there).
pub fn ip_quiet(args: &str) {
    let _ = Command::new("ip").args(args.split_whitespace()).output();
}
