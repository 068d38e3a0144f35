//! Long-term credentials (RFC 8489, section 9.2) and stateless nonces.
//!
//! The key for each static user, MD5(username ":" realm ":" password), is
//! computed once when the users are loaded. Nonces carry their own issue time
//! and an HMAC over (issue time, client address) with a per-process random key,
//! so no state exists for a client before it authenticates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::stun::long_term_key;

/// Default validity of a nonce: 600 s, after which the server answers 438 Stale Nonce.
/// See RFC 8489, section 9.2.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);

/// Static long-term credentials: username to 16-byte key, for one realm.
#[derive(Clone, Default)]
pub struct Credentials {
    keys: HashMap<String, [u8; 16]>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("Credentials")
            .field("users", &self.keys.len())
            .finish()
    }
}

impl Credentials {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user with a plaintext password; the key is derived once here.
    pub fn add_user(&mut self, username: &str, realm: &str, password: &str) {
        self.keys.insert(
            username.to_owned(),
            long_term_key(username, realm, password),
        );
    }

    /// Adds a user by precomputed key (MD5(username:realm:password)).
    pub fn add_key(&mut self, username: &str, key: [u8; 16]) {
        self.keys.insert(username.to_owned(), key);
    }

    /// The key of `username`, if known.
    pub fn key(&self, username: &str) -> Option<&[u8; 16]> {
        self.keys.get(username)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no user is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Result of checking a NONCE attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by this process for this client and younger than the lifetime.
    Valid,
    /// Issued by this process for this client but older than the lifetime (438).
    Stale,
    /// Not one of ours, or for another client address (438 too, with a fresh nonce).
    Invalid,
}

/// Issues and checks stateless nonces.
///
/// Shape: 24 lowercase hex characters: the issue time in seconds since the
/// issuer was created (8 hex digits), then the first 8 bytes of
/// HMAC-SHA1(key, issue-time || client address) (16 hex digits).
#[derive(Clone)]
pub struct NonceIssuer {
    key: [u8; 20],
    lifetime_secs: u64,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish()
    }
}

/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 24;

impl NonceIssuer {
    /// Creates an issuer with a random `key` and a lifetime (whole seconds, at least 1).
    pub fn new(key: [u8; 20], lifetime: Duration) -> Self {
        NonceIssuer {
            key,
            lifetime_secs: lifetime.as_secs().max(1),
        }
    }

    fn tag(&self, issued: u32, client: SocketAddr) -> [u8; 8] {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(&issued.to_be_bytes());
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let out = mac.finalize().into_bytes();
        let mut t = [0u8; 8];
        t.copy_from_slice(&out[..8]);
        t
    }

    /// A nonce for `client`, issued at `now_secs` (seconds since the issuer's epoch).
    pub fn issue(&self, now_secs: u64, client: SocketAddr) -> [u8; NONCE_LEN] {
        let issued = now_secs as u32;
        let mut out = [0u8; NONCE_LEN];
        hex_into(&issued.to_be_bytes(), &mut out[..8]);
        hex_into(&self.tag(issued, client), &mut out[8..]);
        out
    }

    /// Checks a nonce presented by `client` at `now_secs`.
    pub fn check(&self, nonce: &[u8], now_secs: u64, client: SocketAddr) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let Some(issued) = parse_hex_u32(&nonce[..8]) else {
            return NonceCheck::Invalid;
        };
        let mut want = [0u8; 16];
        hex_into(&self.tag(issued, client), &mut want);
        // Constant-time comparison of the tag.
        let diff = want
            .iter()
            .zip(&nonce[8..])
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return NonceCheck::Invalid;
        }
        let age = (now_secs as u32).wrapping_sub(issued) as u64;
        if age >= self.lifetime_secs {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

fn parse_hex_u32(s: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(s).ok()?;
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_valid_stale_invalid() {
        let n = NonceIssuer::new([9; 20], Duration::from_secs(600));
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let nonce = n.issue(100, c);
        assert_eq!(n.check(&nonce, 100, c), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 699, c), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 700, c), NonceCheck::Stale);
        assert_eq!(
            n.check(&nonce, 100, "192.0.2.1:5001".parse().unwrap()),
            NonceCheck::Invalid
        );
        let mut forged = nonce;
        forged[2] = b'f';
        assert_eq!(n.check(&forged, 100, c), NonceCheck::Invalid);
        assert_eq!(n.check(b"short", 100, c), NonceCheck::Invalid);
        let other = NonceIssuer::new([8; 20], Duration::from_secs(600));
        assert_eq!(other.check(&nonce, 100, c), NonceCheck::Invalid);
    }

    #[test]
    fn debug_never_prints_keys() {
        let mut c = Credentials::new();
        c.add_user("alice", "r", "pw");
        assert!(!format!("{c:?}").contains("pw"));
    }
}
