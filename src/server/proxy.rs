//! The PROXY protocol (HAProxy's, versions 1 and 2) in front of the TCP and
//! TLS listeners (`proxy-protocol`, `proxy-protocol-trusted`): a load
//! balancer opens each connection with a header that names the client's
//! transport address, and turnd takes that address as the client's.
//!
//! Wire layout (see <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>):
//! - v1, text, 15 to 107 bytes ending in CRLF:
//!   `PROXY TCP4 <src ip> <dst ip> <src port> <dst port>\r\n` (`TCP6`
//!   alike), or `PROXY UNKNOWN ...\r\n`;
//! - v2, binary: the 12-byte signature `\r\n\r\n\0\r\nQUIT\n`, a version
//!   and command byte (0x20 LOCAL, 0x21 PROXY), an address family and
//!   protocol byte, a 16-bit big-endian length, then that many bytes:
//!   addresses (12 bytes for IPv4, 36 for IPv6, 216 for UNIX) and TLVs.
//!
//! The header is read on the acceptor thread straight from the TCP socket,
//! without reading a byte past it ([`frame`] says how many bytes may be read
//! next), so what follows (a STUN message, or a TLS ClientHello) is read by
//! the usual code as if the connection had just been accepted. The fields
//! are parsed by the `ppp` crate ([`parse`]).
//!
//! This module is sans-IO but for [`read_header`], its one async function.

use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::turn::{embedded_ipv4, IpRange};

/// The v2 signature, the first 12 bytes of a binary header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The start of a v1 (text) header.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Bytes of a v1 header at most, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Bytes of the fixed part of a v2 header (signature, version and command,
/// family and protocol, length).
pub const V2_FIXED_LEN: usize = 16;
/// Bytes of the shortest header: `PROXY UNKNOWN\r\n` (a v2 header has at
/// least [`V2_FIXED_LEN`]).
pub const MIN_LEN: usize = 15;
/// Bytes peeked at once to find a header that arrived whole (the common
/// case: one read, no byte-wise scan): a v1 header, or a v2 header with
/// IPv6 addresses and a few TLVs.
const PEEK_LEN: usize = 256;

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The first bytes start neither a v1 nor a v2 header.
    #[error("expected a PROXY protocol header, got bytes starting {0:02x?}")]
    Missing(Vec<u8>),
    /// A v1 header without CRLF within [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 header longer than {V1_MAX_LEN} bytes")]
    TooLong,
    /// The header is complete but wrong (bad address, unknown command...).
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// The connection closed before the header was complete.
    #[error("connection closed inside the PROXY header")]
    Closed,
    /// Reading failed.
    #[error("read error in the PROXY header: {0}")]
    Read(String),
}

/// How much of a PROXY header a buffer holds (see [`frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The header is the first `n` bytes.
    Complete(usize),
    /// Incomplete: at most this many more bytes may be read without reading
    /// past the header's end (at least 1).
    Need(usize),
}

/// Where a PROXY header says the connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    /// A proxied client (v1 `TCP4`/`TCP6`, v2 PROXY with IPv4 or IPv6): its
    /// transport address.
    Client(SocketAddr),
    /// The connection's own address is to be used: v2 LOCAL (the load
    /// balancer's health check), v1 `UNKNOWN`, or v2 PROXY with an
    /// unspecified or UNIX address family.
    Local,
}

/// Frames a PROXY header at the start of `buf`: whether `buf` holds a whole
/// header, or how many more bytes may be read without passing its end
/// (whatever follows the header must be left in the socket).
///
/// # Errors
/// [`ProxyError::Missing`] as soon as the first bytes cannot start a
/// header, [`ProxyError::TooLong`] for a v1 line without CRLF within
/// [`V1_MAX_LEN`] bytes, [`ProxyError::Malformed`] for a v1 line with a CR
/// not followed by LF.
pub fn frame(buf: &[u8]) -> Result<Framing, ProxyError> {
    if buf.is_empty() {
        return Ok(Framing::Need(MIN_LEN));
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        if buf.len() < V2_FIXED_LEN {
            return Ok(Framing::Need(V2_FIXED_LEN - buf.len()));
        }
        let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        return Ok(if buf.len() >= total {
            Framing::Complete(total)
        } else {
            Framing::Need(total - buf.len())
        });
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyError::Missing(buf[..buf.len().min(8)].to_vec()));
    }
    let line = &buf[..buf.len().min(V1_MAX_LEN)];
    if let Some(cr) = line.iter().position(|&b| b == b'\r') {
        match line.get(cr + 1) {
            Some(b'\n') => return Ok(Framing::Complete(cr + 2)),
            Some(_) => return Err(ProxyError::Malformed("CR without LF in a v1 header".into())),
            None => {}
        }
    }
    if buf.len() >= V1_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    // The header ends with CRLF: after a CR one more byte may end it, else
    // two; and no v1 header is shorter than MIN_LEN.
    let need = if buf.len() < MIN_LEN {
        MIN_LEN - buf.len()
    } else if buf.ends_with(b"\r") {
        1
    } else {
        2
    };
    Ok(Framing::Need(need.min(V1_MAX_LEN - buf.len())))
}

/// Parses a whole header, as framed by [`frame`], with the `ppp` crate.
///
/// # Errors
/// [`ProxyError::Malformed`] naming what is wrong; [`ProxyError::Missing`]
/// when `header` is no header at all.
pub fn parse(header: &[u8]) -> Result<ProxySource, ProxyError> {
    use ppp::{v1, v2};
    let malformed = |what: String| ProxyError::Malformed(what);
    if header.starts_with(&V2_SIGNATURE) {
        let h = v2::Header::try_from(header).map_err(|e| malformed(format!("v2: {e}")))?;
        if h.len() != header.len() {
            return Err(malformed("v2: length mismatch".into()));
        }
        return Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => ProxySource::Local,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                ProxySource::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                ProxySource::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => {
                ProxySource::Local
            }
        });
    }
    if header.starts_with(V1_PREFIX) {
        let h = v1::Header::try_from(header).map_err(|e| malformed(format!("v1: {e}")))?;
        if h.header.len() != header.len() {
            return Err(malformed("v1: trailing bytes after CRLF".into()));
        }
        return Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => {
                ProxySource::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            v1::Addresses::Tcp6(a) => {
                ProxySource::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            v1::Addresses::Unknown => ProxySource::Local,
        });
    }
    Err(ProxyError::Missing(header[..header.len().min(8)].to_vec()))
}

/// The load balancers allowed to send PROXY headers
/// (`proxy-protocol-trusted`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<IpRange>,
}

impl TrustedProxies {
    /// Trusts the sources in `ranges`.
    pub fn new(ranges: Vec<IpRange>) -> Self {
        TrustedProxies { ranges }
    }

    /// True when a connection from `ip` may carry a PROXY header. Exact:
    /// an IPv4 range does not trust an IPv6 address that merely embeds an
    /// IPv4 address in it (6to4, NAT64, IPv4-compatible), only IPv4 and
    /// IPv4-mapped addresses.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6),
            IpAddr::V4(_) => None,
        };
        self.ranges
            .iter()
            .any(|r| r.contains(ip) && embedded.is_none_or(|e| !r.contains(e.into())))
    }
}

/// Reads one PROXY header from `stream` and not a byte more; returns where
/// it says the connection comes from. Call it on a freshly accepted
/// connection, under a timeout: a peer that sends nothing waits forever.
///
/// A header that arrived whole (the usual case) costs one `peek` and one
/// read; otherwise it is read in the pieces [`frame`] allows.
///
/// # Errors
/// [`ProxyError`]: no header, a malformed one, or the connection closed or
/// failed first.
pub async fn read_header(stream: &mut TcpStream) -> Result<ProxySource, ProxyError> {
    let read_err = |e: std::io::Error| ProxyError::Read(e.to_string());
    let mut peeked = [0u8; PEEK_LEN];
    let n = stream.peek(&mut peeked).await.map_err(read_err)?;
    if n == 0 {
        return Err(ProxyError::Closed);
    }
    let mut buf = Vec::new();
    if let Framing::Complete(len) = frame(&peeked[..n])? {
        buf.resize(len, 0);
        stream.read_exact(&mut buf).await.map_err(read_err)?;
        return parse(&buf);
    }
    loop {
        match frame(&buf)? {
            Framing::Complete(_) => return parse(&buf),
            Framing::Need(more) => {
                let old = buf.len();
                buf.resize(old + more, 0);
                let got = stream.read(&mut buf[old..]).await.map_err(read_err)?;
                if got == 0 {
                    return Err(ProxyError::Closed);
                }
                buf.truncate(old + got);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(command: u8, family_protocol: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(command);
        h.push(family_protocol);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    /// A v2 PROXY header, TCP over IPv4, from 192.0.2.7:4242 to 198.51.100.1:443.
    fn v2_tcp4() -> Vec<u8> {
        v2(
            0x21,
            0x11,
            &[192, 0, 2, 7, 198, 51, 100, 1, 0x10, 0x92, 0x01, 0xbb],
        )
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\n";
        assert_eq!(frame(h), Ok(Framing::Complete(h.len())));
        assert_eq!(
            parse(h),
            Ok(ProxySource::Client("192.0.2.7:4242".parse().unwrap()))
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n";
        assert_eq!(
            parse(h),
            Ok(ProxySource::Client("[2001:db8::7]:4242".parse().unwrap()))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(ProxySource::Local));
    }

    #[test]
    fn v2_proxy_local_and_unspecified() {
        let h = v2_tcp4();
        assert_eq!(frame(&h), Ok(Framing::Complete(28)));
        assert_eq!(
            parse(&h),
            Ok(ProxySource::Client("192.0.2.7:4242".parse().unwrap()))
        );
        let mut six = vec![0x20, 0x01, 0x0d, 0xb8];
        six.extend_from_slice(&[0; 11]);
        six.push(7);
        six.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        six.extend_from_slice(&[0; 11]);
        six.push(1);
        six.extend_from_slice(&[0x10, 0x92, 0x01, 0xbb]);
        assert_eq!(
            parse(&v2(0x21, 0x21, &six)),
            Ok(ProxySource::Client("[2001:db8::7]:4242".parse().unwrap()))
        );
        // LOCAL, with or without addresses; PROXY with AF_UNSPEC.
        assert_eq!(parse(&v2(0x20, 0x00, &[])), Ok(ProxySource::Local));
        assert_eq!(parse(&v2(0x20, 0x11, &[0; 12])), Ok(ProxySource::Local));
        assert_eq!(parse(&v2(0x21, 0x00, &[])), Ok(ProxySource::Local));
    }

    #[test]
    fn v2_with_tlvs_is_framed_by_its_length() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1, 0x10, 0x92, 0x01, 0xbb];
        body.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]); // PP2_TYPE_NOOP
        let mut h = v2(0x21, 0x11, &body);
        let len = h.len();
        h.extend_from_slice(b"\x00\x01 STUN follows");
        assert_eq!(frame(&h), Ok(Framing::Complete(len)));
        assert_eq!(
            parse(&h[..len]),
            Ok(ProxySource::Client("192.0.2.7:4242".parse().unwrap()))
        );
    }

    #[test]
    fn framing_never_reads_past_the_header() {
        // Fed one allowed read at a time, every header is found at its
        // exact end, whatever follows it.
        let stun_after = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        for header in [
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            v2_tcp4(),
            v2(0x20, 0x00, &[]),
        ] {
            let mut wire = header.clone();
            wire.extend_from_slice(&stun_after);
            let mut got = 0;
            loop {
                match frame(&wire[..got]).unwrap() {
                    Framing::Complete(n) => {
                        assert_eq!(n, header.len());
                        assert_eq!(n, got);
                        break;
                    }
                    Framing::Need(more) => {
                        assert!(more >= 1);
                        assert!(got + more <= header.len(), "{header:?}: {got}+{more}");
                        // Take the bytes in the smallest pieces: one.
                        got += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn no_header_is_refused_at_the_first_byte() {
        // A STUN Binding request, a TLS ClientHello, HTTP.
        for start in [&[0x00u8, 0x01][..], &[0x16, 0x03, 0x01], b"GET / HTTP/1.1"] {
            assert!(
                matches!(frame(&start[..1]), Err(ProxyError::Missing(_))),
                "{start:02x?}"
            );
        }
        assert!(matches!(frame(b"PROXX"), Err(ProxyError::Missing(_))));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert_eq!(frame(long.as_bytes()), Err(ProxyError::TooLong));
        assert!(matches!(
            frame(b"PROXY TCP4 1.2.3.4\rX"),
            Err(ProxyError::Malformed(_))
        ));
        for bad in [
            &b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // v2: version 1, command 3, address family 4, too short for IPv4.
        for bad in [
            v2(0x11, 0x11, &[0; 12]),
            v2(0x23, 0x11, &[0; 12]),
            v2(0x21, 0x41, &[0; 12]),
            v2(0x21, 0x11, &[0; 4]),
        ] {
            assert!(
                matches!(parse(&bad), Err(ProxyError::Malformed(_))),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn trust_is_exact() {
        let t = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(t.trusts("10.1.2.3".parse().unwrap()));
        assert!(t.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(t.trusts("2001:db8::1".parse().unwrap()));
        assert!(!t.trusts("11.0.0.1".parse().unwrap()));
        // 6to4 and NAT64 forms of 10.1.2.3 are someone else.
        assert!(!t.trusts("2002:a01:203::1".parse().unwrap()));
        assert!(!t.trusts("64:ff9b::a01:203".parse().unwrap()));
        assert!(!TrustedProxies::default().trusts("10.1.2.3".parse().unwrap()));
    }

    proptest! {
        /// Arbitrary bytes, after either prefix or none, never panic and
        /// never ask to read past the longest header.
        #[test]
        fn arbitrary_bytes_never_panic(
            prefix in 0usize..3,
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = match prefix {
                0 => Vec::new(),
                1 => V1_PREFIX.to_vec(),
                _ => V2_SIGNATURE.to_vec(),
            };
            buf.extend_from_slice(&tail);
            for end in 0..=buf.len() {
                match frame(&buf[..end]) {
                    Ok(Framing::Complete(n)) => {
                        prop_assert!(n <= end);
                        let _ = parse(&buf[..n]);
                        break;
                    }
                    Ok(Framing::Need(more)) => {
                        prop_assert!(more >= 1);
                        prop_assert!(end + more <= V2_FIXED_LEN + usize::from(u16::MAX));
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
