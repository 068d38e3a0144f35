//! Long-term credentials (RFC 8489, section 9.2), TURN REST API shared
//! secrets (coturn's `use-auth-secret`) and stateless nonces.
//!
//! The key of each static user is computed once when the users are loaded,
//! for both password algorithms: MD5(username ":" realm ":" password) and
//! SHA-256 of the same string (RFC 8489, section 18.5). Users given only as an
//! MD5 key (coturn's `0x...` form) support MD5 only.
//!
//! Nonces carry their own issue time and an HMAC over (issue time, client
//! address) with a per-process random key, so no state exists for a client
//! before it authenticates. They start with RFC 8489's nonce cookie
//! `obMatJos2` and the security feature set (password algorithms and username
//! anonymity), which older clients treat as opaque text.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::Sha256;

use crate::stun::long_term_key;

/// Default validity of a nonce: 600 s, after which the server answers 438 Stale Nonce.
/// See RFC 8489, section 9.2.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);

/// Password algorithm of the long-term credential mechanism.
/// See RFC 8489, section 18.5 (IANA registry: 0x0001 MD5, 0x0002 SHA-256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// 0x0001: key = MD5(username:realm:password), 16 bytes.
    Md5,
    /// 0x0002: key = SHA-256(username:realm:password), 32 bytes.
    Sha256,
}

impl PasswordAlgorithm {
    /// The IANA number.
    pub fn number(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 1,
            PasswordAlgorithm::Sha256 => 2,
        }
    }

    /// From the IANA number.
    pub fn from_number(n: u16) -> Option<Self> {
        match n {
            1 => Some(PasswordAlgorithm::Md5),
            2 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// The value of PASSWORD-ALGORITHMS turnd sends: MD5 then SHA-256, no
/// parameters. Wire layout (RFC 8489, section 14.11): per algorithm, number
/// (2 bytes), parameters length (2 bytes), parameters.
pub const PASSWORD_ALGORITHMS_VALUE: [u8; 8] = [0, 1, 0, 0, 0, 2, 0, 0];

/// A long-term key: 16 bytes (MD5) or 32 bytes (SHA-256).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 32],
    len: u8,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes>)", self.len)
    }
}

impl Key {
    /// A 16-byte MD5 key.
    pub fn md5(k: [u8; 16]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&k);
        Key { bytes, len: 16 }
    }

    /// A 32-byte SHA-256 key.
    pub fn sha256(k: [u8; 32]) -> Self {
        Key { bytes: k, len: 32 }
    }

    /// Derives the key of `algorithm` from a plaintext password.
    pub fn derive(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Self {
        match algorithm {
            PasswordAlgorithm::Md5 => Key::md5(long_term_key(username, realm, password)),
            PasswordAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                for (i, part) in [username, realm, password].iter().enumerate() {
                    if i > 0 {
                        h.update(b":");
                    }
                    h.update(part.as_bytes());
                }
                Key::sha256(h.finalize().into())
            }
        }
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// USERHASH of a user: SHA-256(username ":" realm). See RFC 8489, section 14.4.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret, username)).
/// See draft-uberti-behave-turn-rest-00, section 2.2, as coturn implements it.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// A TURN REST API username: `<expiry><separator><user>`, the expiry in Unix
/// seconds (`1700000000:alice` with coturn's separator `:`), as servers read
/// it back with [`Credentials::rest_expiry`]. Its password is
/// [`rest_password`]. See draft-uberti-behave-turn-rest-00, section 2.2.
pub fn rest_username(expiry_unix_secs: u64, separator: char, user: &str) -> String {
    format!("{expiry_unix_secs}{separator}{user}")
}

/// Parses the coturn `0x<32 hex digits>` form of an MD5 key.
pub fn parse_hex_key(s: &str) -> Option<[u8; 16]> {
    from_hex(s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?)
}

/// Exactly `N` bytes written as `2N` hex digits (either case), else None.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        // Checked above: both are ASCII hex digits.
        let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        *o = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Some(out)
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy)]
struct UserKeys {
    md5: [u8; 16],
    sha256: Option<[u8; 32]>,
}

/// Why no key could be found for a username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupFailure {
    /// Neither a static user nor a REST username.
    UnknownUser,
    /// A REST username whose expiry time has passed.
    Expired,
    /// The user has no key for the requested algorithm (MD5-only user, SHA-256 asked).
    NoKeyForAlgorithm,
    /// The username is revoked ([`Credentials::set_revoked`]).
    Revoked,
}

/// The credentials a server accepts: static users of one realm and TURN REST
/// API secrets (every secret is tried, so secrets rotate without downtime).
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, UserKeys>,
    by_userhash: HashMap<[u8; 32], String>,
    secrets: Vec<String>,
    separator: Option<char>,
    revoked: std::collections::HashSet<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print keys or secrets.
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Credentials {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user with a plaintext password; both keys are derived once here.
    pub fn add_user(&mut self, username: &str, realm: &str, password: &str) {
        let md5 = long_term_key(username, realm, password);
        let sha = Key::derive(PasswordAlgorithm::Sha256, username, realm, password);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(sha.as_bytes());
        self.users.insert(
            username.to_owned(),
            UserKeys {
                md5,
                sha256: Some(sha256),
            },
        );
        self.by_userhash
            .insert(userhash(username, realm), username.to_owned());
    }

    /// Adds a user by precomputed MD5 key (MD5(username:realm:password)).
    pub fn add_key(&mut self, username: &str, realm: &str, key: [u8; 16]) {
        self.users.insert(
            username.to_owned(),
            UserKeys {
                md5: key,
                sha256: None,
            },
        );
        self.by_userhash
            .insert(userhash(username, realm), username.to_owned());
    }

    /// Turns on the TURN REST API with these secrets and the separator between
    /// expiry time and user id in usernames (coturn's `rest-api-separator`, ':').
    pub fn set_rest_secrets(&mut self, secrets: Vec<String>, separator: char) {
        self.secrets = secrets;
        self.separator = Some(separator);
    }

    /// Usernames refused whatever their key (a fleet's revocations, from
    /// Redis): static users and REST usernames alike.
    pub fn set_revoked(&mut self, names: impl IntoIterator<Item = String>) {
        self.revoked = names.into_iter().collect();
    }

    /// Whether `username` is revoked.
    pub fn is_revoked(&self, username: &str) -> bool {
        self.revoked.contains(username)
    }

    /// True when REST secrets are configured.
    pub fn has_rest_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Number of static users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when neither users nor secrets are configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.secrets.is_empty()
    }

    /// The username whose USERHASH is `hash`, among static users.
    pub fn username_for_userhash(&self, hash: &[u8]) -> Option<&str> {
        let h: [u8; 32] = hash.try_into().ok()?;
        self.by_userhash.get(&h).map(String::as_str)
    }

    /// The expiry time (Unix seconds) a REST username carries: the first
    /// field before the separator (coturn's `expiry:user`), else the last.
    pub fn rest_expiry(&self, username: &str) -> Option<u64> {
        let sep = self.separator?;
        let first = username.split(sep).next()?;
        if let Ok(t) = first.parse() {
            return Some(t);
        }
        username.rsplit(sep).next()?.parse().ok()
    }

    /// The candidate keys for `username` under `algorithm`, pushed into `out`:
    /// one for a static user, one per secret for a REST username. The caller
    /// checks MESSAGE-INTEGRITY against each.
    ///
    /// # Errors
    /// [`LookupFailure`] when there is no candidate.
    pub fn keys(
        &self,
        username: &str,
        realm: &str,
        algorithm: PasswordAlgorithm,
        unix_now: u64,
        out: &mut Vec<Key>,
    ) -> Result<(), LookupFailure> {
        if !self.revoked.is_empty() && self.revoked.contains(username) {
            return Err(LookupFailure::Revoked);
        }
        if let Some(u) = self.users.get(username) {
            match algorithm {
                PasswordAlgorithm::Md5 => out.push(Key::md5(u.md5)),
                PasswordAlgorithm::Sha256 => match u.sha256 {
                    Some(k) => out.push(Key::sha256(k)),
                    None => return Err(LookupFailure::NoKeyForAlgorithm),
                },
            }
            return Ok(());
        }
        if self.secrets.is_empty() {
            return Err(LookupFailure::UnknownUser);
        }
        let Some(expiry) = self.rest_expiry(username) else {
            return Err(LookupFailure::UnknownUser);
        };
        if expiry < unix_now {
            return Err(LookupFailure::Expired);
        }
        for secret in &self.secrets {
            let password = rest_password(secret, username);
            out.push(Key::derive(algorithm, username, realm, &password));
        }
        Ok(())
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

/// RFC 8489 section 9.2: nonces that advertise security features start with this.
pub const NONCE_COOKIE: &[u8; 9] = b"obMatJos2";
/// The security feature set turnd advertises: bit 0 (password algorithms)
/// and bit 1 (username anonymity), 24 bits as 4 base64 characters ("wAAA").
pub const SECURITY_FEATURES: &[u8; 4] = b"wAAA";
/// Length of a nonce in bytes: cookie (9) + features (4) + base64 of
/// issue time (4 bytes) and tag (8 bytes) (16).
pub const NONCE_LEN: usize = 29;

/// Issues and checks stateless nonces.
///
/// Shape: `obMatJos2` `wAAA` then base64 of 12 bytes: the issue time in
/// seconds since the issuer's epoch (4 bytes, big endian) and the first 8
/// bytes of HMAC-SHA1(key, issue-time || client IP address).
///
/// The key can be replaced ([`NonceIssuer::set_key`]: a fleet's shared key,
/// read from Redis after start); nonces of the key before stay valid for
/// their lifetime.
#[derive(Clone)]
pub struct NonceIssuer {
    key: [u8; 20],
    previous: Option<[u8; 20]>,
    lifetime_secs: u64,
}

impl fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish()
    }
}

impl NonceIssuer {
    /// Creates an issuer with a random `key` and a lifetime (whole seconds, at least 1).
    pub fn new(key: [u8; 20], lifetime: Duration) -> Self {
        NonceIssuer {
            key,
            previous: None,
            lifetime_secs: lifetime.as_secs().max(1),
        }
    }

    /// Issues nonces with `key` from now on; nonces of the key before are
    /// still accepted (until their lifetime ends). No change when `key` is
    /// the current one.
    pub fn set_key(&mut self, key: [u8; 20]) {
        if key != self.key {
            self.previous = Some(std::mem::replace(&mut self.key, key));
        }
    }

    /// Changes the lifetime (live reload); nonces already issued are judged by it.
    pub fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime_secs = lifetime.as_secs().max(1);
    }

    fn tag(key: &[u8; 20], issued: u32, client: SocketAddr) -> [u8; 8] {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(&issued.to_be_bytes());
        // The IP only, not the port: RFC 6062 data connections come from new
        // ports and reuse the nonce of the control connection.
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        let out = mac.finalize().into_bytes();
        let mut t = [0u8; 8];
        t.copy_from_slice(&out[..8]);
        t
    }

    /// A nonce for `client`, issued at `now_secs` (seconds since the issuer's epoch).
    pub fn issue(&self, now_secs: u64, client: SocketAddr) -> [u8; NONCE_LEN] {
        let issued = now_secs as u32;
        let mut raw = [0u8; 12];
        raw[..4].copy_from_slice(&issued.to_be_bytes());
        raw[4..].copy_from_slice(&Self::tag(&self.key, issued, client));
        let mut out = [0u8; NONCE_LEN];
        out[..9].copy_from_slice(NONCE_COOKIE);
        out[9..13].copy_from_slice(SECURITY_FEATURES);
        BASE64
            .encode_slice(raw, &mut out[13..])
            .expect("16 base64 characters fit");
        out
    }

    /// Checks a nonce presented by `client` at `now_secs`.
    pub fn check(&self, nonce: &[u8], now_secs: u64, client: SocketAddr) -> NonceCheck {
        if nonce.len() != NONCE_LEN
            || &nonce[..9] != NONCE_COOKIE
            || &nonce[9..13] != SECURITY_FEATURES
        {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; 12];
        match BASE64.decode_slice(&nonce[13..], &mut raw) {
            Ok(12) => {}
            _ => return NonceCheck::Invalid,
        }
        let issued = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        // Constant-time comparison of the tag.
        let matches = |key: &[u8; 20]| {
            Self::tag(key, issued, client)
                .iter()
                .zip(&raw[4..])
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
        };
        if !matches(&self.key) && !self.previous.as_ref().is_some_and(matches) {
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

/// MD5 of bytes, for callers that print coturn-style keys.
pub fn md5_hex(s: &str) -> String {
    to_hex(&Md5::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_valid_stale_invalid() {
        let n = NonceIssuer::new([9; 20], Duration::from_secs(600));
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let nonce = n.issue(100, c);
        assert!(nonce.starts_with(b"obMatJos2wAAA"));
        assert_eq!(n.check(&nonce, 100, c), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 699, c), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 700, c), NonceCheck::Stale);
        assert_eq!(
            n.check(&nonce, 100, "192.0.2.1:5001".parse().unwrap()),
            NonceCheck::Valid,
            "another port of the same host"
        );
        assert_eq!(
            n.check(&nonce, 100, "192.0.2.2:5000".parse().unwrap()),
            NonceCheck::Invalid
        );
        let mut forged = nonce;
        forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(n.check(&forged, 100, c), NonceCheck::Invalid);
        assert_eq!(n.check(b"short", 100, c), NonceCheck::Invalid);
        let other = NonceIssuer::new([8; 20], Duration::from_secs(600));
        assert_eq!(other.check(&nonce, 100, c), NonceCheck::Invalid);
    }

    /// A fleet's key replaces a node's own: nonces of both are accepted
    /// (the old ones until they go stale), those of an older key are not.
    #[test]
    fn a_new_nonce_key_keeps_the_last_one_valid() {
        let mut n = NonceIssuer::new([1; 20], Duration::from_secs(600));
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let own = n.issue(100, c);
        n.set_key([2; 20]);
        let fleet = n.issue(101, c);
        assert_eq!(n.check(&own, 102, c), NonceCheck::Valid);
        assert_eq!(n.check(&own, 700, c), NonceCheck::Stale);
        assert_eq!(n.check(&fleet, 102, c), NonceCheck::Valid);
        let other_node = NonceIssuer::new([2; 20], Duration::from_secs(600));
        assert_eq!(other_node.check(&fleet, 102, c), NonceCheck::Valid);
        n.set_key([2; 20]);
        assert_eq!(
            n.check(&own, 102, c),
            NonceCheck::Valid,
            "same key: no change"
        );
        n.set_key([3; 20]);
        assert_eq!(n.check(&own, 102, c), NonceCheck::Invalid);
        assert_eq!(n.check(&fleet, 102, c), NonceCheck::Valid);
    }

    #[test]
    fn debug_never_prints_keys() {
        let mut c = Credentials::new();
        c.add_user("alice", "r", "pw");
        c.set_rest_secrets(vec!["topsecret".into()], ':');
        let s = format!("{c:?}");
        assert!(!s.contains("pw") && !s.contains("topsecret"), "{s}");
    }

    #[test]
    fn rest_credentials_like_coturn() {
        // coturn: password = base64(hmac-sha1(secret, "expiry:user")).
        let pw = rest_password("north", "1700000000:alice");
        assert_eq!(pw.len(), 28);
        let mut c = Credentials::new();
        c.set_rest_secrets(vec!["old".into(), "north".into()], ':');
        let mut keys = Vec::new();
        c.keys(
            "1700000000:alice",
            "r",
            PasswordAlgorithm::Md5,
            1_600_000_000,
            &mut keys,
        )
        .unwrap();
        assert_eq!(keys.len(), 2, "every secret is a candidate");
        assert!(keys.contains(&Key::md5(long_term_key("1700000000:alice", "r", &pw))));
        assert_eq!(
            c.keys(
                "1700000000:alice",
                "r",
                PasswordAlgorithm::Md5,
                1_700_000_001,
                &mut keys
            ),
            Err(LookupFailure::Expired)
        );
        assert_eq!(
            c.keys("alice", "r", PasswordAlgorithm::Md5, 0, &mut keys),
            Err(LookupFailure::UnknownUser)
        );
        assert_eq!(c.rest_expiry("alice:1700000000"), Some(1_700_000_000));
    }

    #[test]
    fn hex_keys_and_userhash() {
        let k = long_term_key("bob", "example.org", "pw");
        let hex = format!("0x{}", to_hex(&k));
        assert_eq!(parse_hex_key(&hex), Some(k));
        assert_eq!(parse_hex_key("0x1234"), None);
        assert_eq!(parse_hex_key(&hex[2..]), None);
        let mut c = Credentials::new();
        c.add_key("bob", "example.org", k);
        assert_eq!(
            c.username_for_userhash(&userhash("bob", "example.org")),
            Some("bob")
        );
        let mut keys = Vec::new();
        assert_eq!(
            c.keys(
                "bob",
                "example.org",
                PasswordAlgorithm::Sha256,
                0,
                &mut keys
            ),
            Err(LookupFailure::NoKeyForAlgorithm)
        );
        assert_eq!(md5_hex("bob:example.org:pw"), to_hex(&k));
    }
}
