//! The TURN requests the benchmark sends, encoded with turnd's own codec,
//! and the parts of the answers it reads.

use std::net::SocketAddr;

use turnd::stun::{
    decode_error_code, AttributeType, BufferFull, Class, Message, MessageType, MessageWriter,
    Method, TransactionId, PROTOCOL_UDP,
};

/// The channel every allocation binds to its echo peer.
pub const CHANNEL: u16 = 0x4000;

/// Long-term credentials as learned from the server's 401.
pub struct Auth<'a> {
    pub user: &'a str,
    pub realm: &'a str,
    pub nonce: &'a [u8],
    pub key: &'a [u8; 16],
}

fn request(
    method: Method,
    buf: &mut [u8],
    tid: TransactionId,
) -> Result<MessageWriter<'_>, BufferFull> {
    MessageWriter::new(buf, MessageType::new(method, Class::Request), tid)
}

fn sign(mut w: MessageWriter<'_>, auth: &Auth<'_>) -> Result<usize, BufferFull> {
    w.attribute(AttributeType::USERNAME, auth.user.as_bytes())?;
    w.attribute(AttributeType::REALM, auth.realm.as_bytes())?;
    w.attribute(AttributeType::NONCE, auth.nonce)?;
    w.message_integrity(auth.key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

/// Allocate without credentials: the server answers 401 with REALM and NONCE.
pub fn allocate_probe(buf: &mut [u8], tid: TransactionId) -> Result<usize, BufferFull> {
    let mut w = request(Method::ALLOCATE, buf, tid)?;
    w.u32(
        AttributeType::REQUESTED_TRANSPORT,
        u32::from(PROTOCOL_UDP) << 24,
    )?;
    w.fingerprint()?;
    Ok(w.finish())
}

/// Authenticated Allocate (UDP relay).
pub fn allocate(buf: &mut [u8], tid: TransactionId, auth: &Auth<'_>) -> Result<usize, BufferFull> {
    let mut w = request(Method::ALLOCATE, buf, tid)?;
    w.u32(
        AttributeType::REQUESTED_TRANSPORT,
        u32::from(PROTOCOL_UDP) << 24,
    )?;
    sign(w, auth)
}

/// ChannelBind of [`CHANNEL`] to `peer` (installs the permission too).
pub fn channel_bind(
    buf: &mut [u8],
    tid: TransactionId,
    auth: &Auth<'_>,
    peer: SocketAddr,
) -> Result<usize, BufferFull> {
    channel_bind_number(buf, tid, auth, CHANNEL, peer)
}

/// ChannelBind of `channel` (0x4000..=0x4FFF) to `peer`; binding it again
/// refreshes the binding and the permission.
pub fn channel_bind_number(
    buf: &mut [u8],
    tid: TransactionId,
    auth: &Auth<'_>,
    channel: u16,
    peer: SocketAddr,
) -> Result<usize, BufferFull> {
    let mut w = request(Method::CHANNEL_BIND, buf, tid)?;
    w.u32(AttributeType::CHANNEL_NUMBER, u32::from(channel) << 16)?;
    w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)?;
    sign(w, auth)
}

/// CreatePermission for the IP of `peer` (installs or refreshes it).
pub fn create_permission(
    buf: &mut [u8],
    tid: TransactionId,
    auth: &Auth<'_>,
    peer: SocketAddr,
) -> Result<usize, BufferFull> {
    let mut w = request(Method::CREATE_PERMISSION, buf, tid)?;
    w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)?;
    sign(w, auth)
}

/// Refresh asking for `lifetime` seconds (0 deletes the allocation).
pub fn refresh(
    buf: &mut [u8],
    tid: TransactionId,
    auth: &Auth<'_>,
    lifetime: u32,
) -> Result<usize, BufferFull> {
    let mut w = request(Method::REFRESH, buf, tid)?;
    w.u32(AttributeType::LIFETIME, lifetime)?;
    sign(w, auth)
}

/// Refresh with LIFETIME 0: deletes the allocation.
pub fn release(buf: &mut [u8], tid: TransactionId, auth: &Auth<'_>) -> Result<usize, BufferFull> {
    refresh(buf, tid, auth, 0)
}

/// Send indication carrying `data` to `peer` (needs a permission for its IP).
pub fn send_indication(
    buf: &mut [u8],
    tid: TransactionId,
    peer: SocketAddr,
    data: &[u8],
) -> Result<usize, BufferFull> {
    let mut w = MessageWriter::new(buf, MessageType::new(Method::SEND, Class::Indication), tid)?;
    w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)?;
    w.attribute(AttributeType::DATA, data)?;
    Ok(w.finish())
}

/// The DATA of a Data indication; `None` for anything else.
pub fn data_indication(bytes: &[u8]) -> Option<&[u8]> {
    let m = Message::parse(bytes).ok()?;
    (m.class() == Class::Indication && m.method() == Method::DATA)
        .then(|| m.get(AttributeType::DATA))
        .flatten()
}

/// What an answer to one of our requests said.
pub enum Reply {
    /// Success; XOR-RELAYED-ADDRESS when present.
    Success { relay: Option<SocketAddr> },
    /// Error response with its code, and REALM/NONCE when present.
    Error {
        code: u16,
        realm: Option<String>,
        nonce: Option<Vec<u8>>,
    },
}

/// Reads `bytes` as the answer to transaction `tid`; `None` for anything else.
pub fn reply(bytes: &[u8], tid: &TransactionId) -> Option<Reply> {
    let m = Message::parse(bytes).ok()?;
    if &m.transaction_id() != tid {
        return None;
    }
    match m.class() {
        Class::Success => Some(Reply::Success {
            relay: m
                .get_xor_address(AttributeType::XOR_RELAYED_ADDRESS)
                .and_then(Result::ok),
        }),
        Class::Error => {
            let code = m
                .get(AttributeType::ERROR_CODE)
                .and_then(|v| decode_error_code(v).ok())
                .map_or(0, |(c, _)| c.0);
            Some(Reply::Error {
                code,
                realm: m.get_str(AttributeType::REALM).map(str::to_owned),
                nonce: m.get(AttributeType::NONCE).map(<[u8]>::to_vec),
            })
        }
        _ => None,
    }
}
