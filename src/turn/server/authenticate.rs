//! Long-term credentials (RFC 8489 section 9.2), the 401/438 challenge and
//! the per-source budget of unauthenticated answers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};

use super::*;
use crate::auth::{Key, LookupFailure, NonceCheck, PasswordAlgorithm, PASSWORD_ALGORITHMS_VALUE};
use crate::stun::{AttributeType, Class, ErrorCode};
use crate::turn::allocation::FiveTuple;

pub(super) struct Authenticated {
    pub(super) username: Arc<str>,
    pub(super) key: Key,
}

impl Server {
    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS, rate
    /// limited per source (turnd must not be a reflector).
    pub(super) fn challenge(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        code: ErrorCode,
    ) -> Transmit {
        if !self.allow_unauthenticated(ft.client.ip(), now) {
            return Transmit::None;
        }
        let nonce = self.nonces.issue(self.now_secs(now), ft.client);
        let phrases = self.config.reason_phrases;
        self.finish(ft, out, r, Class::Error, None, |w| {
            w.error_code_with_reason(code, phrases)?;
            w.attribute(AttributeType::REALM, self.config.realm.as_bytes())?;
            w.attribute(AttributeType::NONCE, &nonce)?;
            w.attribute(
                AttributeType::PASSWORD_ALGORITHMS,
                &PASSWORD_ALGORITHMS_VALUE,
            )
        })
    }

    /// Long-term credential check. See RFC 8489, section 9.2.4.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        r: &Reply<'_>,
        out: &mut [u8],
    ) -> Result<Authenticated, Transmit> {
        let msg = &r.msg;
        let ip = ft.client.ip();
        if !msg.has_integrity() && !msg.has_integrity_sha256() {
            return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
        }
        // Repeated failures from one source: no answers until its budget
        // refills. A 5-tuple that holds an allocation is exempt: its user is
        // proven, and requests there cannot try other usernames (441).
        if !self.allocations.contains_key(&ft) && self.failures.is_blocked(ip, now) {
            self.stats.rate_limited += 1;
            debug!(client = %ft.client, "too many authentication failures from this address: dropped");
            return Err(Transmit::None);
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
                return Err(self.challenge(now, ft, out, r, ErrorCode::STALE_NONCE));
            }
        }
        // RFC 8489 section 9.2.4: PASSWORD-ALGORITHMS must echo ours, and
        // PASSWORD-ALGORITHM pick one of them; neither means MD5.
        let algorithm = match (
            msg.get(AttributeType::PASSWORD_ALGORITHMS),
            msg.get(AttributeType::PASSWORD_ALGORITHM),
        ) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(offered), Some(&[a, b, _, _])) if offered == PASSWORD_ALGORITHMS_VALUE => {
                match PasswordAlgorithm::from_number(u16::from_be_bytes([a, b])) {
                    Some(alg) => alg,
                    None => {
                        return Err(self.unauthenticated_error(
                            now,
                            ft,
                            out,
                            r,
                            ErrorCode::BAD_REQUEST,
                        ))
                    }
                }
            }
            _ => return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST)),
        };
        let username: String = match (
            msg.get_str(AttributeType::USERNAME),
            msg.get(AttributeType::USERHASH),
        ) {
            (Some(u), _) => u.to_owned(),
            (None, Some(h)) => match self.config.credentials.username_for_userhash(h) {
                Some(u) => u.to_owned(),
                None => String::new(),
            },
            (None, None) => {
                return Err(self.unauthenticated_error(now, ft, out, r, ErrorCode::BAD_REQUEST))
            }
        };
        let failure = |this: &mut Self, why: &'static str| {
            this.stats.auth_failures += 1;
            *this.auth_failure_reasons.entry(why).or_insert(0) += 1;
            this.failures.record(ip, now);
            info!(client = %ft.client, user = %username, reason = why, "auth failure");
        };
        if realm != self.config.realm {
            failure(self, "wrong realm");
            return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
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
            (Ok(()), None) => {
                failure(self, "message-integrity mismatch (wrong password)");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
            (Err(LookupFailure::Expired), _) => {
                failure(self, "rest credentials expired");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
            (Err(LookupFailure::NoKeyForAlgorithm), _) => {
                failure(self, "no key for the requested password algorithm");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
            (Err(LookupFailure::UnknownUser), _) => {
                failure(self, "unknown user");
                return Err(self.challenge(now, ft, out, r, ErrorCode::UNAUTHENTICATED));
            }
        };
        // The allocation's owner must keep using the same username (441).
        if let Some(a) = self.allocations.get(&ft) {
            if *a.username != *username {
                info!(client = %ft.client, user = %username, owner = %a.username, "auth failure: wrong credentials for allocation");
                return Err(self.error(ft, out, r, ErrorCode::WRONG_CREDENTIALS, Some(&key)));
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

    /// Takes a token from the per-source budget of unauthenticated answers;
    /// false (counted as rate limited) when the source has none left.
    pub(super) fn allow_unauthenticated(&mut self, ip: IpAddr, now: Instant) -> bool {
        let allowed = self.unauth.allow(ip, now);
        if !allowed {
            self.stats.rate_limited += 1;
        }
        allowed
    }

    /// An error answer to a request that did not authenticate: rate limited
    /// per source like every unauthenticated answer.
    pub(super) fn unauthenticated_error(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        code: ErrorCode,
    ) -> Transmit {
        if !self.allow_unauthenticated(ft.client.ip(), now) {
            return Transmit::None;
        }
        self.error(ft, out, r, code, None)
    }

    pub(super) fn unix_now(&self, now: Instant) -> u64 {
        self.unix_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }
}
