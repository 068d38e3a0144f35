//! Long-term credentials (RFC 8489 section 9.2), the 401/438 challenge and
//! the per-source budget of unauthenticated answers.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};

use super::*;
use crate::auth::{Key, LookupFailure, NonceCheck, PasswordAlgorithm, PASSWORD_ALGORITHMS_VALUE};
use crate::stun::{AttributeType, ErrorCode};
use crate::turn::allocation::FiveTuple;
use crate::untrusted::{opaque_string, LogSafe};

/// Why a request failed authentication (each answered 401 and counted).
/// [`AuthFailure::as_str`] names it in logs and in the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuthFailure {
    /// REALM is not the server's.
    WrongRealm,
    /// MESSAGE-INTEGRITY(-SHA256) matches no key of the user: a wrong password.
    IntegrityMismatch,
    /// The TURN REST API username's expiry time has passed.
    RestExpired,
    /// The user has no key for the PASSWORD-ALGORITHM asked for (RFC 8489
    /// section 14.11).
    NoKeyForAlgorithm,
    /// No such user (and no REST secret to derive one).
    UnknownUser,
    /// The username was revoked fleet-wide (`turnd user revoke`, the admin
    /// API's `DELETE /api/fleet/users/NAME`).
    Revoked,
}

impl AuthFailure {
    /// Short snake_case name for logs and metric labels: `wrong_realm`,
    /// `integrity_mismatch`, `rest_expired`, `no_key_for_algorithm`,
    /// `unknown_user`, `revoked`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthFailure::WrongRealm => "wrong_realm",
            AuthFailure::IntegrityMismatch => "integrity_mismatch",
            AuthFailure::RestExpired => "rest_expired",
            AuthFailure::NoKeyForAlgorithm => "no_key_for_algorithm",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Revoked => "revoked",
        }
    }

    /// The reason in words, for the log line's message.
    pub const fn describe(self) -> &'static str {
        match self {
            AuthFailure::WrongRealm => "wrong realm",
            AuthFailure::IntegrityMismatch => "message-integrity mismatch (wrong password)",
            AuthFailure::RestExpired => "rest credentials expired",
            AuthFailure::NoKeyForAlgorithm => "no key for the requested password algorithm",
            AuthFailure::UnknownUser => "unknown user",
            AuthFailure::Revoked => "revoked user",
        }
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) struct Authenticated {
    pub(super) username: Arc<str>,
    pub(super) key: Key,
}

impl Server {
    /// Long-term credential check. See RFC 8489, section 9.2.4.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Transaction<'_>,
        out: &mut [u8],
    ) -> Result<Authenticated, ClientOutput> {
        let msg = &r.msg;
        let ip = ft.client.ip();
        if !msg.has_integrity() && !msg.has_integrity_sha256() {
            return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
        }
        // Repeated failures from one source: no answers until its budget
        // refills. A 5-tuple that holds an allocation is exempt: its user is
        // proven, and requests there cannot try other usernames (441).
        if !self.allocations.contains_key(&ft) && self.failures.is_blocked(ip, now) {
            self.stats.rate_limited += 1;
            debug!(client = %ft.client, "too many authentication failures from this address: dropped");
            return Err(ClientOutput::None);
        }
        let (Some(realm), Some(nonce)) = (
            msg.get_str(AttributeType::REALM),
            msg.get(AttributeType::NONCE),
        ) else {
            return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST));
        };
        match self.nonces.check(nonce, self.now_secs(now), ft.client) {
            NonceCheck::Valid => {}
            check => {
                debug!(client = %ft.client, ?check, "nonce not valid: 438");
                return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::STALE_NONCE));
            }
        }
        // RFC 8489 section 9.2.4: PASSWORD-ALGORITHMS must echo ours, and
        // PASSWORD-ALGORITHM pick one of them; neither means MD5.
        let algorithm = match (
            msg.get(AttributeType::PASSWORD_ALGORITHMS),
            msg.password_algorithm(),
        ) {
            (None, None) => Some(PasswordAlgorithm::Md5),
            (Some(offered), Some(Ok(number))) if offered == PASSWORD_ALGORITHMS_VALUE => {
                PasswordAlgorithm::from_number(number)
            }
            _ => None,
        };
        let Some(algorithm) = algorithm else {
            return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST));
        };
        let username: String = match (
            msg.get_str(AttributeType::USERNAME),
            msg.get(AttributeType::USERHASH),
        ) {
            // RFC 8489 section 14.3: USERNAME is prepared with the PRECIS
            // OpaqueString profile (RFC 8265 section 4.2), as configured
            // names are; one it refuses (control characters...) gets 400.
            (Some(u), _) => match opaque_string(u) {
                Ok(prepared) => prepared.into_owned(),
                Err(e) => {
                    let answer =
                        self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST);
                    // Logged when answered: a flood logs no more than it draws.
                    if answer != ClientOutput::None {
                        info!(client = %ft.client, user = %LogSafe(u), error = %e, "username refused: 400");
                    }
                    return Err(answer);
                }
            },
            (None, Some(h)) => match self.config.credentials.username_for_userhash(h) {
                Some(u) => u.to_owned(),
                None => String::new(),
            },
            (None, None) => {
                return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST))
            }
        };
        // Counted, logged and answered with a fresh challenge (401).
        let mut failure = |this: &mut Self, why: AuthFailure| {
            this.stats.auth_failures += 1;
            *this.auth_failure_reasons.entry(why).or_insert(0) += 1;
            this.failures.record(ip, now);
            info!(client = %ft.client, user = %LogSafe(&username), reason = why.as_str(), "auth failure: {}", why.describe());
            this.unauthenticated_error(now, ft, out, r, ErrorCode::UNAUTHENTICATED)
        };
        if realm != self.config.realm {
            return Err(failure(self, AuthFailure::WrongRealm));
        }
        let mut keys = std::mem::take(&mut self.key_scratch);
        keys.clear();
        let unix_now = self.unix_now(now);
        let looked_up = self
            .config
            .credentials
            .keys(&username, realm, algorithm, unix_now, &mut keys);
        let matched = keys.iter().copied().find(|k| {
            if msg.has_integrity_sha256() {
                msg.check_integrity_sha256(k.as_bytes())
            } else {
                msg.check_integrity(k.as_bytes())
            }
        });
        self.key_scratch = keys;
        let key = match (looked_up, matched) {
            (Ok(()), Some(k)) => k,
            (Ok(()), None) => return Err(failure(self, AuthFailure::IntegrityMismatch)),
            (Err(LookupFailure::Expired), _) => {
                return Err(failure(self, AuthFailure::RestExpired))
            }
            (Err(LookupFailure::NoKeyForAlgorithm), _) => {
                return Err(failure(self, AuthFailure::NoKeyForAlgorithm))
            }
            (Err(LookupFailure::UnknownUser), _) => {
                return Err(failure(self, AuthFailure::UnknownUser))
            }
            (Err(LookupFailure::Revoked), _) => return Err(failure(self, AuthFailure::Revoked)),
        };
        // The allocation's owner must keep using the same username (441).
        if let Some(a) = self.allocations.get(&ft) {
            if *a.username != *username {
                info!(client = %ft.client, user = %LogSafe(&username), owner = %LogSafe(&a.username), "auth failure: wrong credentials for allocation");
                return Err(self.error_with(
                    ft,
                    out,
                    r,
                    ErrorCode::WRONG_CREDENTIALS,
                    Some(&key),
                    |_, _| Ok(()),
                ));
            }
            return Ok(Authenticated {
                username: a.username.clone(),
                key,
            });
        }
        Ok(Authenticated {
            username: Arc::from(username.as_str()),
            key,
        })
    }

    /// Takes a token from the per-source budget of unauthenticated answers
    /// (`unauth-rate`, `unauth-burst`; IPv6 sources by their
    /// `ipv6-source-prefix`); false (counted as rate limited) when the
    /// source has none left. Every answer to a request that did not
    /// authenticate (Binding, 400, 401, 420, 438, malformed requests) goes
    /// through it, so turnd cannot be used as a reflector.
    ///
    /// Spared: a `signed` request (with MESSAGE-INTEGRITY or
    /// MESSAGE-INTEGRITY-SHA256, so at least as large as its answer) on a
    /// 5-tuple that holds an allocation. Its user is proven, and an
    /// attacker spoofing the address of a carrier-grade NAT must not be able
    /// to empty the budget its allocations need for their 438 Stale Nonce
    /// challenges, as the failure limit spares them too.
    pub(super) fn allow_unauthenticated(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        signed: bool,
    ) -> bool {
        if signed && self.allocations.contains_key(&ft) {
            return true;
        }
        let allowed = self.unauth.allow(ft.client.ip(), now);
        if !allowed {
            self.stats.rate_limited += 1;
        }
        allowed
    }

    /// An error answer to a request that did not authenticate, rate limited
    /// per source like every unauthenticated answer (turnd must not be a
    /// reflector). 401 and 438 are challenges: they carry REALM, a fresh
    /// NONCE and PASSWORD-ALGORITHMS (RFC 8489 section 9.2.4).
    pub(super) fn unauthenticated_error(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Transaction<'_>,
        code: ErrorCode,
    ) -> ClientOutput {
        if !self.allow_unauthenticated(
            now,
            ft,
            r.msg.has_integrity() || r.msg.has_integrity_sha256(),
        ) {
            return ClientOutput::None;
        }
        if code != ErrorCode::UNAUTHENTICATED && code != ErrorCode::STALE_NONCE {
            return self.error_with(ft, out, r, code, None, |_, _| Ok(()));
        }
        let nonce = self.nonces.issue(self.now_secs(now), ft.client);
        self.error_with(ft, out, r, code, None, |w, config| {
            w.attribute(AttributeType::REALM, config.realm.as_bytes())?;
            w.attribute(AttributeType::NONCE, &nonce)?;
            w.attribute(
                AttributeType::PASSWORD_ALGORITHMS,
                &PASSWORD_ALGORITHMS_VALUE,
            )
        })
    }

    pub(super) fn unix_now(&self, now: Instant) -> u64 {
        self.unix_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }
}
