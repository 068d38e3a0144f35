//! Building answers: success and error responses with MESSAGE-INTEGRITY and
//! FINGERPRINT, 400 to malformed requests, and the count of result codes.

use std::time::Instant;

use super::*;
use crate::auth::Key;
use crate::stun::{
    AttributeType, Class, ErrorCode, Message, MessageType, MessageWriter, Method, MAGIC_COOKIE,
};
use crate::turn::allocation::FiveTuple;

#[derive(Clone, Debug)]
pub(super) struct CachedResponse {
    pub(super) bytes: Vec<u8>,
    pub(super) expires: Instant,
}

/// Everything a request handler needs to answer.
pub(super) struct Reply<'m> {
    pub(super) msg: Message<'m>,
    pub(super) fingerprint: bool,
    /// Answer with MESSAGE-INTEGRITY-SHA256 (the request had it) instead of MESSAGE-INTEGRITY.
    pub(super) sha256: bool,
}

impl Server {
    /// A request whose header is sound but whose attributes are not gets 400;
    /// anything else (including a FINGERPRINT mismatch) is dropped silently.
    pub(super) fn reply_to_malformed(
        &mut self,
        ft: FiveTuple,
        input: &[u8],
        out: &mut [u8],
        e: crate::stun::DecodeError,
    ) -> Transmit {
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
            return Transmit::None;
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&input[8..20]);
        let written = (|| {
            let mut w =
                MessageWriter::new(out, MessageType::new(t.method, Class::Error), tid).ok()?;
            w.error_code(ErrorCode::BAD_REQUEST).ok()?;
            if self.config.fingerprint {
                w.fingerprint().ok()?;
            }
            Some(w.finish())
        })();
        written.map_or(Transmit::None, |len| Transmit::Reply { to: ft, len })
    }

    /// Writes a response of `class` with the attributes `body` adds, then
    /// MESSAGE-INTEGRITY (when `key`) and FINGERPRINT (when due).
    pub(super) fn finish(
        &self,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        class: Class,
        key: Option<&Key>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), crate::stun::BufferFull>,
    ) -> Transmit {
        let written = (|| {
            let mut w = MessageWriter::new(
                out,
                MessageType::new(r.msg.method(), class),
                r.msg.transaction_id(),
            )
            .ok()?;
            body(&mut w).ok()?;
            if let Some(s) = &self.config.software {
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
        written.map_or(Transmit::None, |len| Transmit::Reply { to: ft, len })
    }

    pub(super) fn error(
        &self,
        ft: FiveTuple,
        out: &mut [u8],
        r: &Reply<'_>,
        code: ErrorCode,
        key: Option<&Key>,
    ) -> Transmit {
        let phrases = self.config.reason_phrases;
        self.finish(ft, out, r, Class::Error, key, |w| {
            w.error_code_with_reason(code, phrases)
        })
    }

    pub(super) fn count_answer(&mut self, method: Method, reply: &[u8]) {
        let code = match Message::parse(reply) {
            Ok(m) if m.class() == Class::Success => 200,
            Ok(m) => m
                .get(AttributeType::ERROR_CODE)
                .and_then(|v| crate::stun::decode_error_code(v).ok())
                .map_or(500, |(c, _)| c.0),
            Err(_) => 500,
        };
        *self.requests.entry((method, code)).or_insert(0) += 1;
    }
}
