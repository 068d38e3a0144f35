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
