//! Changing the network of the test's own namespace: interfaces and
//! addresses with `ip` (iproute2), and named namespaces on a bridge
//! ([`Bridged`]). Only inside a private network namespace
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

/// Named network namespaces (`ip netns add`), each joined by a veth pair to
/// one bridge in this namespace: hosts on one link with the bridge as the
/// test's own address. Removed on drop, also when the test panics (drop
/// what runs inside them first). Names carry this process's ID, so two
/// runs never share one.
pub struct Bridged {
    /// The bridge, in this namespace.
    pub bridge: String,
    /// The namespaces, in the order of the hosts given.
    pub namespaces: Vec<String>,
}

impl Bridged {
    /// Bridge `flb<pid><tag>` holding `bridge_addrs` (CIDR, e.g.
    /// "192.0.2.17/28", "2001:db8:1::1/64"), and per entry of `hosts` a
    /// namespace `turnd-<pid>-<tag>-<i>` whose `eth0` holds those addresses
    /// (IPv6 without duplicate address detection), loopback up. `tag` is one
    /// character (interface names have 15). Panics (after undoing what it
    /// made) unless this namespace is private and `ip` works.
    #[track_caller]
    pub fn new(tag: char, bridge_addrs: &[&str], hosts: &[&[&str]]) -> Bridged {
        assert_private_namespace("fl");
        let pid = std::process::id();
        let net = Bridged {
            bridge: format!("flb{pid}{tag}"),
            namespaces: (0..hosts.len())
                .map(|i| format!("turnd-{pid}-{tag}-{i}"))
                .collect(),
        };
        net.remove(); // what a crashed run with this PID left
        let br = &net.bridge;
        ip(&format!("link add {br} type bridge"));
        for a in bridge_addrs {
            ip(&format!("addr add {a} dev {br}{}", nodad(a)));
        }
        ip(&format!("link set {br} up"));
        for (i, (ns, addrs)) in net.namespaces.iter().zip(hosts).enumerate() {
            let veth = format!("flv{pid}{tag}{i}");
            ip(&format!("netns add {ns}"));
            ip(&format!("link add {veth} type veth peer name {veth}p"));
            ip(&format!("link set {veth}p netns {ns}"));
            ip(&format!("-n {ns} link set {veth}p name eth0"));
            for a in *addrs {
                ip(&format!("-n {ns} addr add {a} dev eth0{}", nodad(a)));
            }
            ip(&format!("-n {ns} link set eth0 up"));
            ip(&format!("-n {ns} link set lo up"));
            ip(&format!("link set {veth} master {br}"));
            ip(&format!("link set {veth} up"));
        }
        net
    }

    /// Deletes the namespaces (their veth pairs go with them) and the bridge.
    fn remove(&self) {
        for ns in &self.namespaces {
            ip_quiet(&format!("netns del {ns}"));
        }
        ip_quiet(&format!("link del {}", self.bridge));
    }
}

/// " nodad" for an IPv6 address: usable at once, no duplicate detection.
fn nodad(cidr: &str) -> &'static str {
    if cidr.contains(':') {
        " nodad"
    } else {
        ""
    }
}

impl Drop for Bridged {
    fn drop(&mut self) {
        self.remove();
    }
}
