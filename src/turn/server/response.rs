//! Building answers: success and error responses with MESSAGE-INTEGRITY and
//! FINGERPRINT, 400 to malformed requests, the retransmission cache, and the
//! count of result codes (recorded as each answer is written).

use std::time::Instant;

use super::*;
use crate::auth::Key;
use crate::stun::{
    AttributeType, BufferFull, Class, ErrorCode, Message, MessageType, MessageWriter, Method,
    MAGIC_COOKIE,
};
use crate::turn::allocation::FiveTuple;

/// A response kept for retransmissions of its request (RFC 8489 section 6.3.4).
#[derive(Clone, Debug)]
pub(super) struct CachedResponse {
    pub(super) bytes: Vec<u8>,
    /// Its result code (200 for success), counted again when it is resent.
    pub(super) code: u16,
    pub(super) expires: Instant,
}

/// The request being answered and how its answer is written.
pub(super) struct Transaction<'m> {
    pub(super) msg: Message<'m>,
    /// Add FINGERPRINT (configured, or the request had one).
    pub(super) fingerprint: bool,
    /// Answer with MESSAGE-INTEGRITY-SHA256 (the request had it) instead of MESSAGE-INTEGRITY.
    pub(super) sha256: bool,
    /// Keep the answer for retransmissions until then (authenticated TURN
    /// requests only).
    pub(super) cache_until: Option<Instant>,
}

/// An authenticated TURN request being answered: what every handler of a
/// TURN method (Allocate, Refresh, CreatePermission, ChannelBind, Connect,
/// ConnectionBind) is given, besides the `out` buffer its answer is written
/// into (and the relay sockets, where it opens or closes some).
pub(super) struct Request<'a, 'm> {
    /// When it arrived.
    pub(super) now: Instant,
    /// The 5-tuple it came on.
    pub(super) ft: FiveTuple,
    /// The message and how its answer is written.
    pub(super) tx: &'a Transaction<'m>,
    /// Its user and key (the answer's MESSAGE-INTEGRITY key).
    pub(super) auth: &'a Authenticated,
}

/// Result code of a success response in the request counts.
const SUCCESS: u16 = 200;

impl Server {
    /// A request whose header is sound but whose attributes are not gets 400
    /// (an empty reason phrase unless `reason-phrases`, FINGERPRINT with
    /// `fingerprint`), out of the source's budget of unauthenticated answers
    /// like every answer to a request that did not authenticate; anything
    /// else (including a FINGERPRINT mismatch) is dropped silently.
    pub(super) fn reply_to_malformed(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        input: &[u8],
        out: &mut [u8],
        e: crate::stun::DecodeError,
    ) -> ClientOutput {
        use crate::stun::DecodeError as D;
        self.stats.dropped_from_client += 1;
        let header_ok = input.len() >= 20
            && input[0] & 0xC0 == 0
            && u32::from_be_bytes([input[4], input[5], input[6], input[7]]) == MAGIC_COOKIE;
        let t = MessageType::from_u16(u16::from_be_bytes([
            input.first().copied().unwrap_or(0xff),
            input.get(1).copied().unwrap_or(0),
        ]));
        let answerable = matches!(
            e,
            D::AttributeOverrun { .. }
                | D::BadFingerprint
                | D::BadMessageIntegrity
                | D::Truncated { .. }
        );
        if !header_ok || t.class != Class::Request || !answerable {
            return ClientOutput::None;
        }
        // Malformed: whatever it claims, it proved nothing.
        if !self.allow_unauthenticated(now, ft, false) {
            return ClientOutput::None;
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&input[8..20]);
        let (phrases, fingerprint) = (self.config.reason_phrases, self.config.fingerprint);
        let written = (|| {
            let mut w =
                MessageWriter::new(out, MessageType::new(t.method, Class::Error), tid).ok()?;
            w.error_code_with_reason(ErrorCode::BAD_REQUEST, phrases)
                .ok()?;
            if fingerprint {
                w.fingerprint().ok()?;
            }
            Some(w.finish())
        })();
        let Some(len) = written else {
            return ClientOutput::None;
        };
        self.count_answer(t.method, ErrorCode::BAD_REQUEST.0);
        ClientOutput::Reply { to: ft, len }
    }

    /// A success response to the authenticated request `q` with the
    /// attributes `body` adds, then SOFTWARE, MESSAGE-INTEGRITY (with the
    /// user's key) and FINGERPRINT (when due). Counted as 200.
    pub(super) fn success(
        &mut self,
        q: &Request<'_, '_>,
        out: &mut [u8],
        body: impl FnOnce(&mut MessageWriter<'_>, &ServerConfig) -> Result<(), BufferFull>,
    ) -> ClientOutput {
        self.respond(q.ft, out, q.tx, None, Some(&q.auth.key), body)
    }

    /// An error response to the authenticated request `q` with ERROR-CODE
    /// `code` only, then as [`Server::success`]. Counted as `code`.
    pub(super) fn error(
        &mut self,
        q: &Request<'_, '_>,
        out: &mut [u8],
        code: ErrorCode,
    ) -> ClientOutput {
        self.respond(
            q.ft,
            out,
            q.tx,
            Some(code),
            Some(&q.auth.key),
            |_, _| Ok(()),
        )
    }

    /// An error response: ERROR-CODE `code`, the attributes `body` adds, then
    /// as [`Server::respond`]. Counted as `code`.
    pub(super) fn error_with(
        &mut self,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Transaction<'_>,
        code: ErrorCode,
        key: Option<&Key>,
        body: impl FnOnce(&mut MessageWriter<'_>, &ServerConfig) -> Result<(), BufferFull>,
    ) -> ClientOutput {
        self.respond(ft, out, r, Some(code), key, body)
    }

    /// Any response to `r`: success, or an error with ERROR-CODE `code`; the
    /// attributes `body` adds, then SOFTWARE, MESSAGE-INTEGRITY (when `key`)
    /// and FINGERPRINT (when due). Counted as `code` (200 for success) and
    /// kept for retransmissions when `r` says so.
    pub(super) fn respond(
        &mut self,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Transaction<'_>,
        code: Option<ErrorCode>,
        key: Option<&Key>,
        body: impl FnOnce(&mut MessageWriter<'_>, &ServerConfig) -> Result<(), BufferFull>,
    ) -> ClientOutput {
        let config = &self.config;
        let written = (|| {
            let class = if code.is_some() {
                Class::Error
            } else {
                Class::Success
            };
            let mut w = MessageWriter::new(
                out,
                MessageType::new(r.msg.method(), class),
                r.msg.transaction_id(),
            )
            .ok()?;
            if let Some(c) = code {
                w.error_code_with_reason(c, config.reason_phrases).ok()?;
            }
            body(&mut w, config).ok()?;
            if let Some(s) = &config.software {
                w.attribute(AttributeType::SOFTWARE, s.as_bytes()).ok()?;
            }
            match key {
                Some(k) if r.sha256 => w.message_integrity_sha256(k.as_bytes()).ok()?,
                Some(k) => w.message_integrity(k.as_bytes()).ok()?,
                None => {}
            }
            if r.fingerprint {
                w.fingerprint().ok()?;
            }
            Some(w.finish())
        })();
        let Some(len) = written else {
            return ClientOutput::None;
        };
        let code = code.map_or(SUCCESS, |c| c.0);
        self.count_answer(r.msg.method(), code);
        if let Some(expires) = r.cache_until {
            self.cache_response(ft, r.msg.transaction_id(), &out[..len], code, expires);
        }
        ClientOutput::Reply { to: ft, len }
    }

    fn cache_response(
        &mut self,
        ft: FiveTuple,
        tid: TransactionId,
        bytes: &[u8],
        code: u16,
        expires: Instant,
    ) {
        if self.responses.len() < MAX_CACHED_RESPONSES {
            self.responses.insert(
                (ft, tid),
                CachedResponse {
                    bytes: bytes.to_vec(),
                    code,
                    expires,
                },
            );
            self.push_timer(expires, TimerKind::Transaction { ft, tid });
        }
    }

    /// The cached answer to a retransmitted request, copied into `out` and
    /// counted again (RFC 8489 section 6.3.4).
    pub(super) fn cached_answer(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Option<ClientOutput> {
        let cached = self.responses.get(&(ft, msg.transaction_id()))?;
        let n = cached.bytes.len();
        if n > out.len() {
            return None;
        }
        out[..n].copy_from_slice(&cached.bytes);
        let code = cached.code;
        self.count_answer(msg.method(), code);
        Some(ClientOutput::Reply { to: ft, len: n })
    }

    fn count_answer(&mut self, method: Method, code: u16) {
        *self.requests.entry((method, code)).or_insert(0) += 1;
    }
}
