//! The XDP fast path's network (issue 15, `tests/xdp_netns.rs`): three
//! named network namespaces in a row,
//!
//! ```text
//!  client ns            relay ns (turnd, XDP on r0 and r1)          peer ns
//!  c0 192.0.2.2/28  --  r0 192.0.2.1/28     r1 192.0.2.17/28  --  p0 192.0.2.18/28
//!     2001:db8:1::2/64     2001:db8:1::1/64    2001:db8:2::1/64      2001:db8:2::2/64
//! ```
//!
//! ([`XdpNet`]), a closure run with a thread inside one of them
//! ([`in_netns`]: sockets made there stay in that namespace, whichever
//! thread uses them later), commands run inside one ([`NsChild`],
//! [`ns_command`]) and the tools the test needs ([`tool`]: a missing one is
//! a failure, never a skip).
//!
//! Every namespace name carries this process's ID and a tag per test, so
//! tests of one file and runs of other sessions never share one; interface
//! names (`c0`, `r0`, `r1`, `p0`) live only inside those namespaces, so they
//! cannot collide with `tests/fleet_netns.rs`'s `flb*`/`flv*` either.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::netns::{ip, ip_quiet};
use super::process::run_with_timeout;

/// The client's veth end, in the client namespace.
pub const CLIENT_IF: &str = "c0";
/// The relay's veth towards the client (turnd's listening addresses).
pub const RELAY_CLIENT_IF: &str = "r0";
/// The relay's veth towards the peer (turnd's relay addresses).
pub const RELAY_PEER_IF: &str = "r1";
/// The peer's veth end, in the peer namespace.
pub const PEER_IF: &str = "p0";

/// The addresses of one family on the three namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// The client's address (on `c0`).
    pub client: &'static str,
    /// turnd's listening address (on `r0`).
    pub listen: &'static str,
    /// turnd's relay address (on `r1`).
    pub relay: &'static str,
    /// The peer's address (on `p0`).
    pub peer: &'static str,
    /// Prefix length of both links.
    pub prefix: u8,
    /// True for IPv6.
    pub v6: bool,
}

impl Family {
    /// `ip` in URL/socket-address form: `[v6]` in brackets.
    pub fn host(ip: &str) -> String {
        if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        }
    }

    /// An address of this family as [`IpAddr`].
    #[track_caller]
    pub fn addr(ip: &str) -> IpAddr {
        ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"))
    }

    /// "v4" or "v6".
    pub fn name(&self) -> &'static str {
        if self.v6 {
            "v6"
        } else {
            "v4"
        }
    }
}

/// IPv4: 192.0.2.0/28 between client and relay, 192.0.2.16/28 between
/// relay and peer.
pub const V4: Family = Family {
    client: "192.0.2.2",
    listen: "192.0.2.1",
    relay: "192.0.2.17",
    peer: "192.0.2.18",
    prefix: 28,
    v6: false,
};

/// IPv6: 2001:db8:1::/64 between client and relay, 2001:db8:2::/64 between
/// relay and peer.
pub const V6: Family = Family {
    client: "2001:db8:1::2",
    listen: "2001:db8:1::1",
    relay: "2001:db8:2::1",
    peer: "2001:db8:2::2",
    prefix: 64,
    v6: true,
};

/// Runs `f` on a fresh thread that joined the named network namespace
/// (`/run/netns/NAME`, made by `ip netns add`) and returns what it gives; a
/// panic in `f` is resumed here. Sockets it creates belong to that
/// namespace for good: return them and use them from any thread.
#[track_caller]
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("open {path}: {e} (made by `ip netns add`)"));
    let h = std::thread::spawn(move || {
        // SAFETY: setns(2) on a namespace file this thread owns; it changes
        // only the calling thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns({path}): {} (needs root)",
            std::io::Error::last_os_error()
        );
        f()
    });
    match h.join() {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// The path of tool `name` (`/usr/sbin`, `/sbin`, `/usr/bin`, `/bin`,
/// `/usr/local/bin`, then `PATH`); panics, naming the package, when it is
/// not installed: the test fails, never skips.
#[track_caller]
pub fn tool(name: &str) -> PathBuf {
    let dirs = ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"];
    for d in dirs {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let package = match name {
        "turnutils_uclient" | "turnutils_peer" => "coturn",
        "ip" => "iproute2",
        other => other,
    };
    panic!("{name} not found: it comes with the Debian package `{package}`; run scripts/install-deps.sh");
}

/// `ip netns exec NS PROGRAM` as a [`Command`] (`ip` execs the program, so
/// a spawned child's PID is the program's).
pub fn ns_command(ns: &str, program: &Path) -> Command {
    let mut c = Command::new(tool("ip"));
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs `ip netns exec NS PROGRAM ARGS` to completion (10 s at most);
/// panics with its output unless it exits 0. Its stdout.
#[track_caller]
pub fn ns_run(ns: &str, program: &Path, args: &[&str]) -> String {
    let out = run_with_timeout(ns_command(ns, program).args(args), Duration::from_secs(10));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "`ip netns exec {ns} {} {}` failed ({:?}): {}{}",
        program.display(),
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// A command running in a network namespace, killed (by its PID) on drop.
pub struct NsChild {
    child: Child,
    /// What it is, for messages.
    pub what: String,
}

impl NsChild {
    /// Starts `ip netns exec NS PROGRAM ARGS` with no input and its output
    /// discarded.
    #[track_caller]
    pub fn spawn(ns: &str, program: &Path, args: &[&str]) -> NsChild {
        let what = format!("{} {} (in {ns})", program.display(), args.join(" "));
        let child = ns_command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        NsChild { child, what }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three namespaces of the fast path's test network (see the module
/// docs). Removed on drop, also when the test panics: drop what runs inside
/// them first (declare the net first in a test, last in a struct).
pub struct XdpNet {
    /// The client namespace (`c0`).
    pub client: String,
    /// The relay namespace (`r0`, `r1`; turnd runs here).
    pub relay: String,
    /// The peer namespace (`p0`).
    pub peer: String,
}

impl XdpNet {
    /// Makes the namespaces `turnd-xdp-<pid>-<tag>-{client,relay,peer}`,
    /// the two veth pairs with both families' addresses (IPv6 without
    /// duplicate address detection), loopback up everywhere; in the relay
    /// namespace IPv4 and IPv6 forwarding set to `forwarding` on every
    /// interface (written either way: a new namespace may inherit the
    /// host's IPv4 setting); in the client and peer namespaces TX checksum
    /// offload off on `c0` and `p0` (locally generated UDP would cross the
    /// veth with a partial checksum, which XDP cannot see), and with
    /// `gro` GRO on there (native XDP on veth: frames redirected to a veth
    /// whose other end has no NAPI vanish). Panics (after undoing what it
    /// made) when `ip` or `ethtool` is missing or fails.
    #[track_caller]
    pub fn new(tag: &str, forwarding: bool, gro: bool) -> XdpNet {
        let pid = std::process::id();
        let name = |role: &str| format!("turnd-xdp-{pid}-{tag}-{role}");
        let net = XdpNet {
            client: name("client"),
            relay: name("relay"),
            peer: name("peer"),
        };
        net.remove(); // what a crashed run with this PID left
        let ethtool = tool("ethtool");
        let (c, r, p) = (&net.client, &net.relay, &net.peer);
        for ns in [c, r, p] {
            ip(&format!("netns add {ns}"));
            ip(&format!("-n {ns} link set lo up"));
        }
        ip(&format!(
            "-n {r} link add {RELAY_CLIENT_IF} type veth peer name {CLIENT_IF}"
        ));
        ip(&format!("-n {r} link set {CLIENT_IF} netns {c}"));
        ip(&format!(
            "-n {r} link add {RELAY_PEER_IF} type veth peer name {PEER_IF}"
        ));
        ip(&format!("-n {r} link set {PEER_IF} netns {p}"));
        let links = [
            (c, CLIENT_IF, [V4.client, V6.client]),
            (r, RELAY_CLIENT_IF, [V4.listen, V6.listen]),
            (r, RELAY_PEER_IF, [V4.relay, V6.relay]),
            (p, PEER_IF, [V4.peer, V6.peer]),
        ];
        for (ns, dev, addrs) in links {
            for (f, a) in [V4, V6].into_iter().zip(addrs) {
                let nodad = if f.v6 { " nodad" } else { "" };
                ip(&format!(
                    "-n {ns} addr add {}/{} dev {dev}{nodad}",
                    a, f.prefix
                ));
            }
            ip(&format!("-n {ns} link set {dev} up"));
        }
        let value = if forwarding { "1" } else { "0" };
        let ifs = ["all", "default", RELAY_CLIENT_IF, RELAY_PEER_IF];
        let files: Vec<String> = ["ipv4", "ipv6"]
            .iter()
            .flat_map(|fam| {
                ifs.iter()
                    .map(move |i| format!("/proc/sys/net/{fam}/conf/{i}/forwarding"))
            })
            .collect();
        let read_back = in_netns(r, move || {
            files
                .iter()
                .map(|f| {
                    std::fs::write(f, value).unwrap_or_else(|e| panic!("write {f}: {e}"));
                    let v = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {f}: {e}"));
                    (f.clone(), v.trim().to_owned())
                })
                .collect::<Vec<_>>()
        });
        for (f, v) in read_back {
            assert_eq!(v, value, "{f} in {r}");
        }
        for (ns, dev) in [(c, CLIENT_IF), (p, PEER_IF)] {
            ns_run(ns, &ethtool, &["-K", dev, "tx", "off"]);
            if gro {
                ns_run(ns, &ethtool, &["-K", dev, "gro", "on"]);
            }
            let k = ns_run(ns, &ethtool, &["-k", dev]);
            assert!(
                k.lines().any(|l| l.trim() == "tx-checksumming: off"),
                "TX checksum offload still on for {dev} in {ns}:\n{k}"
            );
            if gro {
                assert!(
                    k.lines()
                        .any(|l| l.trim().starts_with("generic-receive-offload: on")),
                    "GRO not on for {dev} in {ns}:\n{k}"
                );
            }
        }
        net
    }

    /// Deletes the namespaces (their veth pairs go with them).
    fn remove(&self) {
        for ns in [&self.client, &self.relay, &self.peer] {
            ip_quiet(&format!("netns del {ns}"));
        }
    }

    /// `ip -n RELAY ARGS`' output (for failure reports: `-s link`, `neigh`).
    pub fn relay_ip_output(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.relay])
            .args(args.split_whitespace())
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("ip -n {} {args}: {e}", self.relay),
        }
    }
}

impl Drop for XdpNet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Builds `xdp/xdp_pass.c` (a program that passes everything) with clang's
/// BPF target into `dir` and attaches it natively to `dev` in `ns`
/// (`ip link set dev DEV xdpdrv obj ...`; it goes with the namespace). On a
/// veth in native mode, frames the other end sends back out with `XDP_TX`
/// arrive only at an end that runs an XDP program of its own (GRO is enough
/// for redirected frames, not for those). Panics when clang or the attach
/// fails.
#[track_caller]
pub fn attach_pass_program(ns: &str, dev: &str, dir: &Path) {
    let clang = ["clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14"]
        .iter()
        .find_map(|c| {
            ["/usr/bin", "/usr/local/bin"]
                .iter()
                .map(|d| Path::new(d).join(c))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("no clang found: the Debian package `clang-14` builds xdp/xdp_pass.c; run scripts/install-deps.sh"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("xdp/xdp_pass.c");
    let obj = dir.join("xdp_pass.o");
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let out = run_with_timeout(
        Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-I", &multiarch, "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj),
        Duration::from_secs(60),
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{} failed to build {}: {}{}",
        clang.display(),
        src.display(),
        out.stdout,
        out.stderr
    );
    ip(&format!(
        "-n {ns} link set dev {dev} xdpdrv obj {} sec xdp",
        obj.display()
    ));
}
