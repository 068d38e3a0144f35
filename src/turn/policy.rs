//! Which peer addresses an allocation may relay to: secure by default.
//!
//! Denied unless opened explicitly: loopback, unspecified (0.0.0.0/8, ::),
//! link-local (169.254.0.0/16 with the 169.254.169.254 metadata service,
//! fe80::/10), private (10/8, 172.16/12, 192.168/16, 100.64/10 shared address
//! space, fc00::/7, fec0::/10), multicast (224/4, ff00::/8), reserved 240/4 and
//! broadcast, and the NAT64 local-use prefix 64:ff9b:1::/48. IPv6 forms that
//! embed an IPv4 address (IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96,
//! NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the embedded address too.
//!
//! The addresses of this host are denied too ([`OwnAddresses`]): a relay
//! reaching them would give clients a pipe from the host itself to services
//! bound on `0.0.0.0`, and to turnd's own listeners. Only another
//! allocation's relayed address (a relay address with a port in the relay
//! range) passes.
//!
//! Ranges (`allowed-peer-ip`, `denied-peer-ip`) have a family: an IPv6 range,
//! even `::/0`, never matches an IPv4 address, and an IPv4 range matches an
//! IPv6 peer only through the embedded forms above.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An inclusive range of addresses of one family: IPv4 or IPv6.
///
/// Parsed from a single address (`192.0.2.7`), an inclusive range
/// (`192.0.2.1-192.0.2.9`, coturn's syntax) or CIDR (`192.0.2.0/24`,
/// `2001:db8::/32`). An IPv6 range written inside the IPv4-mapped block
/// `::ffff:0:0/96` (`::ffff:10.0.0.0/104`) is the IPv4 range it maps; any
/// other IPv6 range, `::/0` included, holds IPv6 addresses only and never
/// matches an IPv4 peer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    family: Family,
    /// First address: an IPv4 address as its `u32` value, IPv6 as `u128`.
    start: u128,
    /// Last address, same encoding as `start`.
    end: u128,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
}

/// The IPv4-mapped block ::ffff:0:0/96, as the top 96 bits of a `u128`.
const MAPPED_PREFIX: u128 = 0xffff;

impl IpRange {
    /// True when `ip` lies in the range.
    ///
    /// An IPv4 range matches IPv4 addresses and IPv6 addresses that embed
    /// one in it (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4
    /// 2002::/16; see [`embedded_ipv4`]). An IPv6 range matches IPv6
    /// addresses only, and never an IPv4-mapped one (that is an IPv4 peer).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.contains_exact(ip)
            || match ip {
                IpAddr::V6(v6) => embedded_ipv4(v6).is_some_and(|e| self.contains_exact(e.into())),
                IpAddr::V4(_) => false,
            }
    }

    /// True when `ip` (canonical: IPv4-mapped already made IPv4) is of the
    /// range's family and inside it; embedded IPv4 addresses are not looked at.
    fn contains_exact(&self, ip: IpAddr) -> bool {
        let v = match (self.family, ip) {
            (Family::V4, IpAddr::V4(v4)) => u128::from(u32::from(v4)),
            (Family::V6, IpAddr::V6(v6)) => u128::from(v6),
            _ => return false,
        };
        self.start <= v && v <= self.end
    }

    /// The range of `start..=end` (IPv6 as `u128`), made IPv4 when it lies
    /// inside ::ffff:0:0/96.
    fn v6(start: u128, end: u128) -> Self {
        if start >> 32 == MAPPED_PREFIX && end >> 32 == MAPPED_PREFIX {
            IpRange {
                family: Family::V4,
                start: start & 0xffff_ffff,
                end: end & 0xffff_ffff,
            }
        } else {
            IpRange {
                family: Family::V6,
                start,
                end,
            }
        }
    }

    /// The range from `a` to `b`, both of one family.
    fn between(a: IpAddr, b: IpAddr) -> Option<Self> {
        match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) => Some(IpRange {
                family: Family::V4,
                start: u32::from(a).into(),
                end: u32::from(b).into(),
            }),
            (IpAddr::V6(a), IpAddr::V6(b)) => Some(IpRange::v6(a.into(), b.into())),
            _ => None,
        }
    }
}

impl fmt::Debug for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            // The values came from `u32`s.
            Family::V4 => write!(
                f,
                "{}-{}",
                Ipv4Addr::from(self.start as u32),
                Ipv4Addr::from(self.end as u32)
            ),
            Family::V6 => write!(
                f,
                "{}-{}",
                Ipv6Addr::from(self.start),
                Ipv6Addr::from(self.end)
            ),
        }
    }
}

/// Why an address range could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address range {input:?}: {why} (expected an address, `a-b` or CIDR `a/n`)")]
pub struct IpRangeError {
    input: String,
    why: &'static str,
}

impl FromStr for IpRange {
    type Err = IpRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| IpRangeError {
            input: s.to_owned(),
            why,
        };
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| err("bad start address"))?;
            let b: IpAddr = b.trim().parse().map_err(|_| err("bad end address"))?;
            let r = IpRange::between(a, b)
                .ok_or_else(|| err("start and end are of different families"))?;
            if r.start > r.end {
                return Err(err("start is after end"));
            }
            return Ok(r);
        }
        if let Some((a, n)) = s.split_once('/') {
            let ip: IpAddr = a.trim().parse().map_err(|_| err("bad address"))?;
            let n: u32 = n.trim().parse().map_err(|_| err("bad prefix length"))?;
            let (v, width) = match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            };
            if n > width {
                return Err(err("prefix length too long"));
            }
            // Host bits: the low `width - n` bits of the address.
            let host: u128 = match width - n {
                128 => u128::MAX,
                h => (1u128 << h) - 1,
            };
            let (start, end) = (v & !host, v | host);
            return Ok(match ip {
                IpAddr::V4(_) => IpRange {
                    family: Family::V4,
                    start,
                    end,
                },
                IpAddr::V6(_) => IpRange::v6(start, end),
            });
        }
        let ip: IpAddr = s.parse().map_err(|_| err("bad address"))?;
        Ok(IpRange::between(ip, ip).expect("one family"))
    }
}

/// The peer policy of a server: which addresses relays may reach.
///
/// Checked on every path that names a peer: CreatePermission, ChannelBind,
/// Send (RFC 8656, sections 9-12) and Connect (RFC 6062 section 5.2); a
/// denied peer gets 403 Forbidden. The host's own addresses are judged
/// besides, by [`OwnAddresses`].
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// Opens 127.0.0.0/8 and ::1 (coturn's `allow-loopback-peers`). For tests.
    pub allow_loopback: bool,
    /// Addresses opened even when denied otherwise (`allowed-peer-ip`).
    pub allowed: Vec<IpRange>,
    /// Addresses denied in addition to the defaults (`denied-peer-ip`).
    pub denied: Vec<IpRange>,
}

/// Which clients may use the server at all (`allowed-client-ip`,
/// `denied-client-ip`): a client is served when `allowed` is empty or holds
/// its address, and `denied` does not. A refused client's messages are
/// dropped before any answer.
#[derive(Clone, Debug, Default)]
pub struct ClientPolicy {
    /// When not empty, the only addresses served.
    pub allowed: Vec<IpRange>,
    /// Addresses never served, even inside `allowed`.
    pub denied: Vec<IpRange>,
}

impl ClientPolicy {
    /// True when a client at `ip` may be answered.
    pub fn admits(&self, ip: IpAddr) -> bool {
        (self.allowed.is_empty() || self.allowed.iter().any(|r| r.contains(ip)))
            && !self.denied.iter().any(|r| r.contains(ip))
    }
}

/// The IPv4 address embedded in an IPv6 address by IPv4-mapped,
/// IPv4-compatible, NAT64 (64:ff9b::/96) or 6to4 (2002::/16) forms.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let s = v6.segments();
    let last4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[0..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        // ::ffff:a.b.c.d and ::a.b.c.d (:: and ::1 excluded: they are IPv6's own).
        if s[5] == 0 && s[6] == 0 && s[7] <= 1 {
            return None;
        }
        return Some(last4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(last4);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

fn v4_denied_by_default(ip: Ipv4Addr, allow_loopback: bool) -> bool {
    let o = ip.octets();
    if ip.is_loopback() {
        return !allow_loopback;
    }
    o[0] == 0 // 0.0.0.0/8 "this network"
        || o[0] == 10
        || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64/10 shared address space
        || (o[0] == 169 && o[1] == 254) // link-local, cloud metadata
        || (o[0] == 172 && (o[1] & 0xF0) == 16)
        || (o[0] == 192 && o[1] == 168)
        || o[0] >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn v6_denied_by_default(ip: Ipv6Addr, allow_loopback: bool) -> bool {
    let s = ip.segments();
    if ip.is_loopback() {
        return !allow_loopback;
    }
    ip.is_unspecified()
        || (s[0] & 0xFFC0) == 0xFE80 // link-local
        || (s[0] & 0xFFC0) == 0xFEC0 // site-local (deprecated)
        || (s[0] & 0xFE00) == 0xFC00 // unique local fc00::/7
        || (s[0] & 0xFF00) == 0xFF00 // multicast
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // NAT64 local use 64:ff9b:1::/48
}

impl PeerPolicy {
    /// True when relaying to `ip` is allowed.
    ///
    /// An IPv4-mapped address (::ffff:a.b.c.d) is the IPv4 address it maps.
    /// An IPv6 address that embeds an IPv4 address (IPv4-compatible, NAT64,
    /// 6to4; see [`embedded_ipv4`]) reaches both, so both must be allowed.
    /// Each address is judged against ranges of its own family only: an
    /// IPv6 range such as `::/0` neither opens nor closes an IPv4 address.
    /// Precedence for each: `allowed` opens it; otherwise `denied` or the
    /// defaults listed in the module doc close it.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match ip {
            IpAddr::V4(_) => self.allows_one(ip),
            IpAddr::V6(v6) => {
                self.allows_one(ip) && embedded_ipv4(v6).is_none_or(|e| self.allows_one(e.into()))
            }
        }
    }

    /// True when `ip` is opened explicitly: inside an `allowed` range, or a
    /// loopback address under `allow_loopback`. Such an address of this host
    /// is a peer like any other (see [`OwnAddresses`]).
    pub fn opens_explicitly(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        (self.allow_loopback && ip.is_loopback()) || self.allowed.iter().any(|r| r.contains(ip))
    }

    /// The verdict on `ip` alone (canonical), without its embedded address.
    fn allows_one(&self, ip: IpAddr) -> bool {
        if self.allowed.iter().any(|r| r.contains_exact(ip)) {
            return true;
        }
        if self.denied.iter().any(|r| r.contains_exact(ip)) {
            return false;
        }
        !match ip {
            IpAddr::V4(v4) => v4_denied_by_default(v4, self.allow_loopback),
            IpAddr::V6(v6) => v6_denied_by_default(v6, self.allow_loopback),
        }
    }
}

/// The addresses of this host as the peer policy sees them (issue 10): a
/// peer that is one of them would let a client reach services bound on this
/// host (`0.0.0.0:22`, the admin API, turnd's own listeners: TURN in TURN,
/// forwarding loops) from the host itself.
///
/// Every address of the host is denied as a peer on every path
/// (CreatePermission, ChannelBind, Send, Connect, peer datagrams and RFC 6062
/// peer connections) but for the one exception relaying needs: a relay
/// address, or the public address it is advertised as (`external-ip`), with a
/// port inside `min-port..=max-port`, that is another allocation's relayed
/// address (two clients of this server relaying to each other). Permissions
/// are per IP address (RFC 8656 section 9), so a permission to a relay
/// address is allowed and the port rule falls on each relayed datagram.
///
/// Opened explicitly, and so not denied here: addresses inside an
/// `allowed-peer-ip` range, and loopback addresses under
/// `allow-loopback-peers` (the other defaults of [`PeerPolicy`] still apply
/// to them). IPv4-mapped and other embedding forms of an own address (see
/// [`embedded_ipv4`]) are own addresses too.
///
/// Lookups are a binary search in a small sorted `Vec`: no allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    /// Own addresses denied as peers: canonical, sorted, deduplicated.
    denied: Vec<IpAddr>,
    /// Relay addresses and their advertised public addresses: canonical,
    /// sorted, deduplicated.
    relay: Vec<IpAddr>,
    /// Relay port range, inclusive.
    min_port: u16,
    /// Relay port range, inclusive.
    max_port: u16,
}

/// Where an own address is checked: what a denial is counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnAddressPath {
    /// CreatePermission (RFC 8656 section 9).
    CreatePermission,
    /// ChannelBind (RFC 8656 section 11).
    ChannelBind,
    /// Send indication (RFC 8656 section 10.2).
    Send,
    /// Connect (RFC 6062 section 5.2).
    Connect,
    /// A datagram arriving at a relay address (RFC 8656 section 10.3).
    PeerDatagram,
    /// An incoming RFC 6062 peer connection (section 5.3).
    PeerConnection,
}

impl OwnAddresses {
    /// The own addresses `host` (interfaces, listening addresses), `relay`
    /// (relay addresses and their advertised public addresses: also own
    /// addresses, open on `min_port..=max_port`) under `policy`'s explicit
    /// openings. Unspecified addresses in either list are ignored.
    pub fn new(
        host: impl IntoIterator<Item = IpAddr>,
        relay: impl IntoIterator<Item = IpAddr>,
        min_port: u16,
        max_port: u16,
        policy: &PeerPolicy,
    ) -> Self {
        let mut relay: Vec<IpAddr> = relay
            .into_iter()
            .map(|ip| ip.to_canonical())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        relay.sort_unstable();
        relay.dedup();
        let mut denied: Vec<IpAddr> = host
            .into_iter()
            .map(|ip| ip.to_canonical())
            .chain(relay.iter().copied())
            .filter(|ip| !ip.is_unspecified())
            .filter(|ip| !policy.opens_explicitly(*ip))
            .collect();
        denied.sort_unstable();
        denied.dedup();
        OwnAddresses {
            denied,
            relay,
            min_port,
            max_port,
        }
    }

    /// True when `ip` (or the IPv4 address it embeds) is an address of this
    /// host that is not opened explicitly.
    #[inline]
    pub fn is_own(&self, ip: IpAddr) -> bool {
        if self.denied.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.denied.binary_search(&ip).is_ok()
            || match ip {
                IpAddr::V6(v6) => embedded_ipv4(v6)
                    .is_some_and(|e| self.denied.binary_search(&IpAddr::V4(e)).is_ok()),
                IpAddr::V4(_) => false,
            }
    }

    /// True when a permission to `ip` may be installed (CreatePermission):
    /// not an own address, or a relay address.
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        !self.is_own(ip) || self.relay.binary_search(&ip.to_canonical()).is_ok()
    }

    /// True when relaying to or from `peer` is allowed (ChannelBind, Send,
    /// Connect, each relayed datagram): not an own address, or a relay
    /// address with a port in `min-port..=max-port`.
    #[inline]
    pub fn permits(&self, peer: SocketAddr) -> bool {
        !self.is_own(peer.ip())
            || ((self.min_port..=self.max_port).contains(&peer.port())
                && self.relay.binary_search(&peer.ip().to_canonical()).is_ok())
    }

    /// The own addresses denied as peers (sorted).
    pub fn denied(&self) -> &[IpAddr] {
        &self.denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const DENIED: &[&str] = &[
        "127.0.0.1",
        "127.255.255.254",
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.255",
        "169.254.169.254",
        "169.254.0.1",
        "224.0.0.251",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "fec0::1",
        // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of denied IPv4 addresses.
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::10.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::c0a8:101",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::",
        "2002:c0a8:0101::5",
        "64:ff9b:1::1",
        "::ffff:0.0.0.0",
        "::ffff:224.0.0.1",
    ];

    const ALLOWED: &[&str] = &[
        "192.0.2.1",
        "8.8.8.8",
        "172.15.255.255",
        "172.32.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "169.253.1.1",
        "2001:db8::1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ];

    #[test]
    fn defaults_deny_special_addresses_in_every_form() {
        let p = PeerPolicy::default();
        for a in DENIED {
            assert!(!p.is_allowed(ip(a)), "{a} must be denied");
        }
        for a in ALLOWED {
            assert!(p.is_allowed(ip(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn allow_loopback_opens_only_loopback() {
        let p = PeerPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(p.is_allowed(ip(a)), "{a}");
        }
        for a in [
            "10.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::",
            "fe80::1",
            "::ffff:192.168.0.1",
        ] {
            assert!(!p.is_allowed(ip(a)), "{a}");
        }
    }

    #[test]
    fn allowed_and_denied_lists() {
        let p = PeerPolicy {
            allow_loopback: false,
            allowed: vec![
                "10.1.0.0/16".parse().unwrap(),
                "192.168.5.5".parse().unwrap(),
            ],
            denied: vec![
                "8.8.8.0-8.8.8.255".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
        };
        assert!(p.is_allowed(ip("10.1.2.3")));
        assert!(p.is_allowed(ip("::ffff:10.1.2.3")));
        assert!(!p.is_allowed(ip("10.2.0.1")));
        assert!(p.is_allowed(ip("192.168.5.5")));
        assert!(!p.is_allowed(ip("192.168.5.6")));
        assert!(!p.is_allowed(ip("8.8.8.8")));
        assert!(!p.is_allowed(ip("64:ff9b::808:808")));
        assert!(!p.is_allowed(ip("2001:db8::5")));
        assert!(p.is_allowed(ip("8.8.9.1")));
    }

    /// Issue 10: IPv4 used to be stored as IPv4-mapped IPv6, so an IPv6
    /// range covering ::ffff:0:0/96 matched every IPv4 peer.
    #[test]
    fn ipv6_ranges_never_open_or_close_ipv4_peers() {
        for range in ["::/0", "::/1", "::-ffff::"] {
            let allow = PeerPolicy {
                allowed: vec![range.parse().unwrap()],
                ..Default::default()
            };
            for v4 in ["127.0.0.1", "169.254.169.254", "10.0.0.1"] {
                assert!(!allow.is_allowed(ip(v4)), "allowed {range} opened {v4}");
                let mapped = format!("::ffff:{v4}");
                assert!(
                    !allow.is_allowed(ip(&mapped)),
                    "allowed {range} opened {mapped}"
                );
            }
            assert!(allow.is_allowed(ip("8.8.8.8")));
            let deny = PeerPolicy {
                denied: vec![range.parse().unwrap()],
                ..Default::default()
            };
            for v4 in ["8.8.8.8", "192.0.2.1", "::ffff:8.8.8.8"] {
                assert!(deny.is_allowed(ip(v4)), "denied {range} closed {v4}");
            }
            assert!(!deny.is_allowed(ip("2001:db8::1")), "denied {range}");
            for v4 in ["127.0.0.1", "169.254.169.254", "10.0.0.1"] {
                assert!(!deny.is_allowed(ip(v4)), "defaults still apply");
            }
        }
    }

    #[test]
    fn mapped_ranges_are_ipv4_and_embedded_addresses_must_pass_both_ways() {
        let mapped: IpRange = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, "10.0.0.0/8".parse().unwrap());
        assert_eq!(
            "::ffff:1.1.1.1-::ffff:1.1.1.9".parse::<IpRange>().unwrap(),
            "1.1.1.1-1.1.1.9".parse().unwrap()
        );
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(mapped.contains(ip("64:ff9b::a00:1")));
        assert!(!"::/0"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("::ffff:1.1.1.1")));
        // Opening the 6to4 or NAT64 block does not open the IPv4 addresses
        // they lead to.
        let p = PeerPolicy {
            allowed: vec![
                "2002::/16".parse().unwrap(),
                "64:ff9b::/96".parse().unwrap(),
            ],
            ..Default::default()
        };
        assert!(!p.is_allowed(ip("2002:7f00:1::1")));
        assert!(!p.is_allowed(ip("64:ff9b::a9fe:a9fe")));
        assert!(p.is_allowed(ip("64:ff9b::808:808")));
        // Opening the IPv4 address opens its NAT64 form.
        let p = PeerPolicy {
            allowed: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        assert!(p.is_allowed(ip("64:ff9b::a00:1")));
        assert!(p.is_allowed(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn own_addresses_in_every_form_but_relayed_addresses() {
        let policy = PeerPolicy {
            allow_loopback: true,
            allowed: vec!["198.51.100.9".parse().unwrap()],
            ..Default::default()
        };
        let own = OwnAddresses::new(
            [
                ip("192.0.2.1"),
                ip("2001:db8::1"),
                ip("127.0.0.1"),
                ip("198.51.100.9"),
                ip("0.0.0.0"),
            ],
            [ip("::ffff:192.0.2.2")],
            50000,
            50999,
            &policy,
        );
        assert_eq!(
            own.denied(),
            &[ip("192.0.2.1"), ip("192.0.2.2"), ip("2001:db8::1")]
        );
        for a in [
            "192.0.2.1",
            "::ffff:192.0.2.1",
            "64:ff9b::c000:201",
            "2002:c000:201::1",
            "2001:db8::1",
            "192.0.2.2",
        ] {
            assert!(own.is_own(ip(a)), "{a}");
        }
        for a in ["127.0.0.1", "198.51.100.9", "192.0.2.3", "2001:db8::2"] {
            assert!(!own.is_own(ip(a)), "{a}");
        }
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(!own.permits_ip(ip("192.0.2.1")));
        assert!(own.permits_ip(ip("192.0.2.2")));
        assert!(own.permits_ip(ip("::ffff:192.0.2.2")));
        assert!(own.permits(sock("192.0.2.2:50000")));
        assert!(own.permits(sock("[::ffff:192.0.2.2]:50999")));
        assert!(!own.permits(sock("192.0.2.2:22")));
        assert!(!own.permits(sock("192.0.2.2:51000")));
        assert!(!own.permits(sock("192.0.2.1:50000")));
        assert!(own.permits(sock("192.0.2.3:22")));
    }

    #[test]
    fn range_parsing() {
        assert!("1.2.3.4".parse::<IpRange>().is_ok());
        assert!("1.2.3.0/24"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("1.2.3.255")));
        assert!(!"1.2.3.0/24"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("1.2.4.0")));
        assert!("::/0"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("2001:db8::1")));
        assert!("0.0.0.0/0"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("255.1.1.1")));
        assert!("0.0.0.0/0"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("::ffff:1.1.1.1")));
        assert!(!"0.0.0.0/0"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("2001:db8::1")));
        for bad in [
            "1.2.3",
            "1.2.3.4/33",
            "2.2.2.2-1.1.1.1",
            "1.1.1.1-::1",
            "x",
            "::/129",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod client_policy_tests {
    use super::*;

    fn ranges(v: &[&str]) -> Vec<IpRange> {
        v.iter().map(|r| r.parse().unwrap()).collect()
    }

    #[test]
    fn allowed_narrows_denied_removes() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let open = ClientPolicy::default();
        assert!(open.admits(ip("198.51.100.7")) && open.admits(ip("2001:db8::7")));

        let p = ClientPolicy {
            allowed: ranges(&["198.51.100.0/24", "2001:db8::/32"]),
            denied: ranges(&["198.51.100.66"]),
        };
        assert!(p.admits(ip("198.51.100.7")));
        assert!(p.admits(ip("2001:db8::7")));
        assert!(!p.admits(ip("198.51.100.66")), "denied inside allowed");
        assert!(!p.admits(ip("::ffff:198.51.100.66")), "IPv4-mapped form");
        assert!(!p.admits(ip("203.0.113.1")), "outside allowed");

        let deny_only = ClientPolicy {
            allowed: Vec::new(),
            denied: ranges(&["203.0.113.0/24"]),
        };
        assert!(!deny_only.admits(ip("203.0.113.9")));
        assert!(deny_only.admits(ip("198.51.100.7")));
    }
}
